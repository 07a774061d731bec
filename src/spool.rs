//! The local spool: a directory beside pg_wal (or `spool_path`) where archive-push records
//! which WAL files its look-ahead made durable in the repository (`push-…`), and where
//! archive-get's prefetcher leaves verified segments for the calls that follow (`get-…`).
//!
//! Each repository gets its own subdirectory, named by a hash of its URL, so that marks or
//! segments of one repository are never taken for another's.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Name of the default spool directory, inside the WAL file's directory (pg_wal).
pub const DEFAULT_SPOOL_DIR: &str = ".pitr-spool";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpoolKind {
    /// archive-push's marks of WAL files already durable in the repository.
    Push,
    /// archive-get's prefetched segments.
    Get,
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

/// `<name>.<crc>` split, if `file_name` is an entry's name.
fn parse_entry(file_name: &str) -> Option<(&str, u32)> {
    let (name, crc) = file_name.rsplit_once('.')?;
    if crc.len() != 8 || name.starts_with('.') || name.contains('.') {
        return None;
    }
    Some((name, u32::from_str_radix(crc, 16).ok()?))
}

impl GetSpool {
    pub fn new(dir: PathBuf) -> Self {
        GetSpool { dir }
    }

    pub fn entry_path(&self, name: &str, crc32: u32) -> PathBuf {
        self.dir.join(format!("{name}.{crc32:08x}"))
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
                    .sum()
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
        std::fs::write(&staged, name)?;
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
        std::fs::write(self.dir.join(IDENTITY_FILE), system_identifier.to_string())
    }

    /// Whether a prefetcher holds the spool's lock.
    pub fn prefetcher_running(&self) -> bool {
        let Ok(file) = File::open(self.dir.join(LOCK_FILE)) else {
            return false;
        };
        // A shared lock is refused only while the prefetcher holds its exclusive one.
        // SAFETY: flock on a descriptor we own.
        let refused = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0;
        // Closing the descriptor drops a shared lock we got.
        refused
    }

    /// Takes the prefetcher's lock: `None` while another prefetcher holds it. A caller of
    /// [`GetSpool::prefetcher_running`] holds a shared lock for an instant, hence the retries.
    pub fn lock_prefetcher(&self) -> io::Result<Option<File>> {
        std::fs::create_dir_all(&self.dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK_FILE))?;
        for _ in 0..20 {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
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

/// Whether the file at `path` still holds the bytes whose CRC-32C is `crc32`. Mapped, not
/// read: a 16 MB segment is checked in about a millisecond, with no copy.
pub fn holds_crc(path: &Path, crc32: u32) -> io::Result<bool> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(crc32 == 0);
    }
    // SAFETY: spooled files are only ever renamed or removed, never written in place.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    Ok(crc32c::crc32c(&map) == crc32)
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
}
