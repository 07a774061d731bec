//! The local spool: a directory beside pg_wal (or `spool_path`) where archive-push records
//! which WAL files its look-ahead made durable in the repository (`push-…`), and where
//! archive-get's prefetcher leaves verified segments for the calls that follow (`get-…`).
//!
//! Each repository gets its own subdirectory, named by a hash of its URL, so that marks or
//! segments of one repository are never taken for another's.
//!
//! A push mark is a small JSON file named after its WAL file. It is written only after the
//! file is durable in the repository, under a temporary name that is fsynced, renamed into
//! place and made durable by an fsync of the directory: a mark that exists under a WAL file's
//! name is whole, and a temporary one is never read (the next run removes it).

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pg::WalFileName;
use crate::sys::LockKind;

/// Name of the default spool directory, inside the WAL file's directory (pg_wal).
pub const DEFAULT_SPOOL_DIR: &str = ".pitr-spool";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpoolKind {
    /// archive-push's marks of WAL files already durable in the repository.
    Push,
    /// archive-get's prefetched segments.
    Get,
    /// receive-wal's segments on their way to the repository.
    Receive,
    /// archive-push's copies of WAL files for a repository that could not be reached.
    Queue,
}

/// The spool directory of `kind` for the repository `repo_url`: under `configured` when the
/// user set `spool_path`, else under `wal_dir/.pitr-spool` (`wal_dir`: the directory of the
/// `%p` PostgreSQL passed, pg_wal, so renames from the spool into it stay on one filesystem).
pub fn spool_dir(
    configured: Option<&Path>,
    wal_dir: &Path,
    kind: SpoolKind,
    repo_url: &str,
) -> PathBuf {
    let root = match configured {
        Some(dir) => dir.to_owned(),
        None => wal_dir.join(DEFAULT_SPOOL_DIR),
    };
    let digest = Sha256::digest(repo_url.as_bytes());
    let tag = match kind {
        SpoolKind::Push => "push",
        SpoolKind::Get => "get",
        SpoolKind::Receive => "receive",
        SpoolKind::Queue => "queue",
    };
    root.join(format!("{tag}-{}", hex::encode(&digest[..8])))
}

/// The directory of a WAL path as PostgreSQL passes it (`pg_wal/…`, relative to the data
/// directory, which is the working directory of archive and restore commands).
pub fn wal_dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The local file a mark speaks for, as `stat` saw it: PostgreSQL never changes a WAL file
/// once it is ready, so a file that still has all four is the file that was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub device: u64,
}

impl FileStat {
    pub fn of(meta: &Metadata) -> Self {
        FileStat {
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            inode: meta.ino(),
            device: meta.dev(),
        }
    }

    pub fn read(path: &Path) -> io::Result<Self> {
        std::fs::metadata(path).map(|meta| Self::of(&meta))
    }
}

/// What archive-push's look-ahead made durable: this file, in this repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushMark {
    /// The repository, as [`crate::config::RepoConfig::spool_key`] names it.
    pub repository: String,
    pub file: FileStat,
}

impl PushMark {
    /// Whether the mark proves `file`, as it is now, durable in `repository`.
    pub fn proves(&self, repository: &str, file: &FileStat) -> bool {
        self.repository == repository && self.file == *file
    }
}

/// Temporary mark files; never read, removed once their writer is gone.
const MARK_STAGING_PREFIX: &str = ".mark-";

/// archive-push's marks for one repository.
#[derive(Clone, Debug)]
pub struct PushSpool {
    dir: PathBuf,
    repository: String,
}

impl PushSpool {
    pub fn new(dir: PathBuf, repository: String) -> Self {
        PushSpool { dir, repository }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn mark_path(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// Whether a mark proves `name`, now `file`, durable. A mark that does not (another
    /// file took the name, or it does not parse) is removed.
    pub fn proves_durable(&self, name: &WalFileName, file: &FileStat) -> bool {
        let path = self.mark_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(e) => {
                tracing::warn!("cannot read the spool mark {}: {e}", path.display());
                return false;
            }
        };
        let mark: Option<PushMark> = serde_json::from_slice(&bytes).ok();
        if mark.is_some_and(|mark| mark.proves(&self.repository, file)) {
            return true;
        }
        tracing::debug!(
            "the spool mark {} does not match {name}; it is removed",
            path.display()
        );
        let _ = std::fs::remove_file(&path);
        false
    }

    /// Records that `name`, as `file`, is durable in the repository. Call only once it is.
    pub fn mark(&self, name: &WalFileName, file: &FileStat) -> io::Result<()> {
        let mark = PushMark {
            repository: self.repository.clone(),
            file: *file,
        };
        let json = serde_json::to_vec(&mark).expect("a mark serialises");
        let mut staged = tempfile::Builder::new()
            .prefix(&crate::staging::prefix_for_this_process(
                MARK_STAGING_PREFIX,
            ))
            .tempfile_in(&self.dir)?;
        staged.write_all(&json)?;
        staged.as_file().sync_all()?;
        staged.persist(self.mark_path(name)).map_err(|e| e.error)?;
        File::open(&self.dir)?.sync_all()
    }

    /// Creates the spool directory; false (with a warning) when it cannot be.
    pub fn prepare(&self) -> bool {
        match crate::private_fs::create_dir_all(&self.dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "cannot create the spool directory {}: {e}; archiving goes on without \
                     look-ahead (set spool_path to a writable directory)",
                    self.dir.display()
                );
                false
            }
        }
    }

    /// Removes marks whose WAL file is gone from `wal_dir` (PostgreSQL removed or recycled
    /// it), and temporary marks of runs that were killed. Best effort: returns how many went.
    pub fn clean(&self, wal_dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if WalFileName::parse(name).is_err() {
                continue;
            }
            let gone = matches!(
                std::fs::symlink_metadata(wal_dir.join(name)),
                Err(e) if e.kind() == io::ErrorKind::NotFound
            );
            if gone && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed + crate::staging::remove_leftovers(&self.dir, MARK_STAGING_PREFIX, true)
    }
}

/// The get spool: verified segments named `<WAL file name>.<CRC-32C of the bytes, 8 hex>`, so
/// that a segment and its checksum appear together in one rename; `<name>.fetching` while
/// the prefetcher fetches `name`; `cursor`, the last segment archive-get served; and
/// `prefetch.lock`, held (flock) by the running prefetcher.
#[derive(Clone, Debug)]
pub struct GetSpool {
    pub dir: PathBuf,
}

/// Prefix of the prefetcher's staging files in the get spool.
pub const PREFETCH_STAGING_PREFIX: &str = ".pitr-prefetch-";
const FETCHING_SUFFIX: &str = ".fetching";
const CURSOR_FILE: &str = "cursor";
const LOCK_FILE: &str = "prefetch.lock";
const IDENTITY_FILE: &str = "system_identifier";

/// A verified segment in the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    pub name: String,
    pub crc32: u32,
    pub path: PathBuf,
}

/// `<name>.<CRC-32C, 8 hex>` split, the names of the get spool's and the push queue's
/// copies; None for other files (staging files start with a dot).
fn split_crc_suffix(file_name: &str) -> Option<(&str, u32)> {
    let (name, crc) = file_name.rsplit_once('.')?;
    if crc.len() != 8 || name.starts_with('.') {
        return None;
    }
    Some((name, u32::from_str_radix(crc, 16).ok()?))
}

/// The path of `name`'s copy whose bytes have CRC-32C `crc32` in `dir`.
fn crc_named(dir: &Path, name: &str, crc32: u32) -> PathBuf {
    dir.join(format!("{name}.{crc32:08x}"))
}

/// `<name>.<crc>` split, if `file_name` is a get spool entry's name (a segment's).
fn parse_entry(file_name: &str) -> Option<(&str, u32)> {
    split_crc_suffix(file_name).filter(|(name, _)| !name.contains('.'))
}

/// Checksums (CRC-32C) what passes through: for copies whose name carries their checksum.
pub struct CrcWriter<W> {
    pub inner: W,
    pub crc32c: u32,
}

impl<W> CrcWriter<W> {
    pub fn new(inner: W) -> Self {
        CrcWriter { inner, crc32c: 0 }
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc32c = crc32c::crc32c_append(self.crc32c, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl GetSpool {
    pub fn new(dir: PathBuf) -> Self {
        GetSpool { dir }
    }

    pub fn entry_path(&self, name: &str, crc32: u32) -> PathBuf {
        crc_named(&self.dir, name, crc32)
    }

    /// The verified segments the spool holds (a missing spool holds none).
    pub fn entries(&self) -> Vec<SpoolEntry> {
        let Ok(read) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        read.flatten()
            .filter_map(|entry| {
                let file_name = entry.file_name();
                let (name, crc32) = parse_entry(file_name.to_str()?)?;
                Some(SpoolEntry {
                    name: name.to_owned(),
                    crc32,
                    path: entry.path(),
                })
            })
            .collect()
    }

    /// The spooled copy of `name`, if there is one.
    pub fn find(&self, name: &str) -> Option<SpoolEntry> {
        self.entries().into_iter().find(|entry| entry.name == name)
    }

    /// Bytes of everything in the spool (entries, staging files, small bookkeeping).
    pub fn bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|read| {
                read.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .fold(0, u64::saturating_add)
            })
            .unwrap_or(0)
    }

    pub fn fetching_marker(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{FETCHING_SUFFIX}"))
    }

    /// Removes every `.fetching` marker (a dead prefetcher's).
    pub fn remove_fetching_markers(&self) {
        if let Ok(read) = std::fs::read_dir(&self.dir) {
            for entry in read.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .ends_with(FETCHING_SUFFIX)
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Records `name` as the last segment served: written whole, then renamed.
    pub fn write_cursor(&self, name: &str) -> io::Result<()> {
        let staged = self
            .dir
            .join(format!(".{CURSOR_FILE}-{}", std::process::id()));
        crate::private_fs::write(&staged, name)?;
        std::fs::rename(&staged, self.dir.join(CURSOR_FILE))
    }

    pub fn read_cursor(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(CURSOR_FILE)).ok()?;
        Some(text.trim().to_owned())
    }

    /// The system identifier whose segments the spool holds, as the prefetcher recorded it.
    pub fn read_identity(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(IDENTITY_FILE)).ok()
    }

    pub fn write_identity(&self, system_identifier: u64) -> io::Result<()> {
        crate::private_fs::write(self.dir.join(IDENTITY_FILE), system_identifier.to_string())
    }

    /// Whether a prefetcher holds the spool's lock.
    pub fn prefetcher_running(&self) -> bool {
        let Ok(file) = File::open(self.dir.join(LOCK_FILE)) else {
            return false;
        };
        // A shared lock is refused only while the prefetcher holds its exclusive one; closing
        // the descriptor drops a shared lock we got.
        !crate::sys::try_lock(&file, LockKind::Shared).unwrap_or(true)
    }

    /// Takes the prefetcher's lock: `None` while another prefetcher holds it. A caller of
    /// [`GetSpool::prefetcher_running`] holds a shared lock for an instant, hence the retries.
    pub fn lock_prefetcher(&self) -> io::Result<Option<File>> {
        crate::private_fs::create_dir_all(&self.dir)?;
        let file = crate::private_fs::file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK_FILE))?;
        for _ in 0..20 {
            if crate::sys::try_lock(&file, LockKind::Exclusive)? {
                return Ok(Some(file));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(None)
    }

    /// Removes the spool and all it holds (the end of recovery, or a new restore), and the
    /// spool root too when nothing else is left in it.
    pub fn remove(&self) {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove the spool {}: {e}", self.dir.display()),
        }
        if let Some(root) = self.dir.parent() {
            // Fails, as it should, while the root holds anything.
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// Whether the file at `path` still holds the bytes whose CRC-32C is `crc32`. Read, not
/// mapped: whatever happens to the file meanwhile, a read cannot fault.
pub fn holds_crc(path: &Path, crc32: u32) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut crc = 0;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return Ok(crc == crc32),
            Ok(n) => crc = crc32c::crc32c_append(crc, &buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Temporary queue files; never read, removed once their writer is gone.
const QUEUE_STAGING_PREFIX: &str = ".queue-";

/// archive-push's queue for one repository it could not reach while others stored the
/// file: copies named `<WAL file name>.<CRC-32C, 8 hex>`, each written whole and durable
/// (staged, fsynced, renamed, directory fsynced) before archive-push reports success, and
/// removed once the repository holds it.
#[derive(Clone, Debug)]
pub struct PushQueue {
    pub dir: PathBuf,
}

/// One queued copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedFile {
    pub name: WalFileName,
    pub path: PathBuf,
    pub crc32: u32,
    pub len: u64,
}

impl PushQueue {
    pub fn new(dir: PathBuf) -> Self {
        PushQueue { dir }
    }

    /// The queued copies, in name order (the order archiving produced them).
    pub fn entries(&self) -> Vec<QueuedFile> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut queued: Vec<QueuedFile> = entries
            .flatten()
            .filter_map(|entry| {
                let file = entry.file_name();
                let (name, crc32) = split_crc_suffix(file.to_str()?)?;
                Some(QueuedFile {
                    name: WalFileName::parse(name).ok()?,
                    path: entry.path(),
                    crc32,
                    len: entry.metadata().ok()?.len(),
                })
            })
            .collect();
        queued.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        queued
    }

    /// Bytes queued.
    pub fn bytes(&self) -> u64 {
        self.entries().iter().map(|entry| entry.len).sum()
    }

    /// Queues a durable copy of `path` as `name` (a copy already queued under that name and
    /// checksum is kept). Returns its length.
    pub fn add(&self, name: &WalFileName, path: &Path) -> io::Result<u64> {
        crate::private_fs::create_dir_all(&self.dir)?;
        crate::staging::remove_leftovers(&self.dir, QUEUE_STAGING_PREFIX, true);
        let staged = tempfile::Builder::new()
            .prefix(&crate::staging::prefix_for_this_process(
                QUEUE_STAGING_PREFIX,
            ))
            .tempfile_in(&self.dir)?;
        let mut writer = CrcWriter::new(staged);
        let len = io::copy(&mut File::open(path)?, &mut writer)?;
        let (staged, crc) = (writer.inner, writer.crc32c);
        staged.as_file().sync_all()?;
        staged
            .persist(crc_named(&self.dir, name.as_str(), crc))
            .map_err(|e| e.error)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(len)
    }

    /// Removes a copy once the repository holds its file.
    pub fn remove(&self, entry: &QueuedFile) {
        if let Err(e) = std::fs::remove_file(&entry.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {} from the queue: {e}", entry.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_per_repository_and_kind() {
        let wal = Path::new("pg_wal");
        let a = spool_dir(None, wal, SpoolKind::Get, "s3://bucket/a");
        let b = spool_dir(None, wal, SpoolKind::Get, "s3://bucket/b");
        let push = spool_dir(None, wal, SpoolKind::Push, "s3://bucket/a");
        assert!(a.starts_with("pg_wal/.pitr-spool"));
        assert_ne!(a, b);
        assert_ne!(a, push);
        let configured = spool_dir(
            Some(Path::new("/var/spool/pitr")),
            wal,
            SpoolKind::Push,
            "x",
        );
        assert!(
            configured
                .to_str()
                .unwrap()
                .starts_with("/var/spool/pitr/push-")
        );
        assert_eq!(
            wal_dir_of(Path::new("pg_wal/RECOVERYXLOG")),
            Path::new("pg_wal")
        );
        assert_eq!(wal_dir_of(Path::new("RECOVERYXLOG")), Path::new("."));
    }

    fn stat(size: u64) -> FileStat {
        FileStat {
            size,
            mtime_ns: 1_700_000_000_123_456_789,
            inode: 42,
            device: 7,
        }
    }

    #[test]
    fn a_mark_proves_only_the_same_file_in_the_same_repository() {
        let mark = PushMark {
            repository: "s3://bucket/a".into(),
            file: stat(16 << 20),
        };
        assert!(mark.proves("s3://bucket/a", &stat(16 << 20)));
        assert!(!mark.proves("s3://bucket/b", &stat(16 << 20)));
        assert!(!mark.proves("s3://bucket/a", &stat(1 << 20)));
        for changed in [
            FileStat {
                mtime_ns: 1_700_000_000_123_456_790,
                ..stat(16 << 20)
            },
            FileStat {
                inode: 43,
                ..stat(16 << 20)
            },
            FileStat {
                device: 8,
                ..stat(16 << 20)
            },
        ] {
            assert!(!mark.proves("s3://bucket/a", &changed));
        }
    }

    #[test]
    fn marks_are_written_whole_checked_and_cleaned() {
        let root = tempfile::tempdir().unwrap();
        let wal_dir = root.path().join("pg_wal");
        std::fs::create_dir(&wal_dir).unwrap();
        let spool = PushSpool::new(root.path().join("spool"), "repo-a".into());
        assert!(spool.prepare());
        let name = WalFileName::parse("000000010000000000000002").unwrap();
        let wal = wal_dir.join(name.as_str());
        std::fs::write(&wal, b"segment").unwrap();
        let file = FileStat::read(&wal).unwrap();

        assert!(!spool.proves_durable(&name, &file));
        spool.mark(&name, &file).unwrap();
        assert!(spool.proves_durable(&name, &file));
        // Another repository's view of the same spool directory trusts nothing in it.
        let other = PushSpool::new(spool.dir().to_owned(), "repo-b".into());
        assert!(!other.proves_durable(&name, &file));
        assert!(!spool.dir().join(name.as_str()).exists(), "removed");

        // A torn mark (it cannot be one of ours, but a disk can do this) is not trusted.
        spool.mark(&name, &file).unwrap();
        let json = std::fs::read(spool.dir().join(name.as_str())).unwrap();
        std::fs::write(spool.dir().join(name.as_str()), &json[..json.len() - 1]).unwrap();
        assert!(!spool.proves_durable(&name, &file));

        // Cleaning: marks of files gone from pg_wal, and temporary marks of dead writers.
        spool.mark(&name, &file).unwrap();
        let gone = WalFileName::parse("000000010000000000000001").unwrap();
        spool.mark(&gone, &file).unwrap();
        std::fs::write(spool.dir().join(".mark-2147483646-x"), b"{").unwrap();
        assert_eq!(spool.clean(&wal_dir), 2);
        let left: Vec<_> = std::fs::read_dir(spool.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [name.as_str()]);
    }

    #[test]
    fn get_spool_entries_cursor_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let spool = GetSpool::new(dir.path().join("get"));
        assert!(spool.entries().is_empty());
        assert!(!spool.prefetcher_running());
        let lock = spool.lock_prefetcher().unwrap().expect("free");
        assert!(spool.prefetcher_running());
        assert!(spool.lock_prefetcher().unwrap().is_none());
        drop(lock);
        assert!(!spool.prefetcher_running());

        let bytes = b"segment bytes";
        let crc = crc32c::crc32c(bytes);
        let name = "000000010000000000000005";
        std::fs::write(spool.entry_path(name, crc), bytes).unwrap();
        for other in [
            ".pitr-prefetch-1-x",
            "000000010000000000000006.fetching",
            "cursor",
            "00000002.history.zz",
        ] {
            std::fs::write(spool.dir.join(other), b"x").unwrap();
        }
        let entries = spool.entries();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let found = spool.find(name).unwrap();
        assert_eq!(found.crc32, crc);
        assert!(holds_crc(&found.path, crc).unwrap());
        assert!(!holds_crc(&found.path, crc ^ 1).unwrap());

        spool.write_cursor(name).unwrap();
        assert_eq!(spool.read_cursor().as_deref(), Some(name));
        spool.remove_fetching_markers();
        assert!(!spool.fetching_marker("000000010000000000000006").exists());
        spool.remove();
        assert!(!spool.dir.exists());
    }

    /// Queued copies come back in name order (a history file between its timelines'
    /// segments), each named by its CRC-32C; staging files and strangers are not copies.
    #[test]
    fn the_push_queue_keeps_durable_copies_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let queue = PushQueue::new(dir.path().join("queue"));
        assert!(queue.entries().is_empty());
        let source = dir.path().join("source");
        for (name, content) in [
            ("000000020000000000000001", &b"timeline two"[..]),
            (
                "00000002.history",
                b"1\t0/1000000\tno recovery target specified\n",
            ),
            ("000000010000000000000009", b"timeline one"),
        ] {
            std::fs::write(&source, content).unwrap();
            let len = queue
                .add(&WalFileName::parse(name).unwrap(), &source)
                .unwrap();
            assert_eq!(len, content.len() as u64);
        }
        std::fs::write(queue.dir.join(".queue-1-x"), b"staging").unwrap();
        std::fs::write(queue.dir.join("notes.txt"), b"stranger").unwrap();
        let entries = queue.entries();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "000000010000000000000009",
                "00000002.history",
                "000000020000000000000001"
            ]
        );
        for entry in &entries {
            assert!(holds_crc(&entry.path, entry.crc32).unwrap(), "{entry:?}");
        }
        assert_eq!(queue.bytes(), entries.iter().map(|e| e.len).sum::<u64>());
        queue.remove(&entries[0]);
        assert_eq!(queue.entries().len(), 2);
    }
}
