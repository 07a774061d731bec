//! A repository in a local directory.
//!
//! Writes are atomic and durable: the bytes go to a file in `<root>/.tmp/`, which is fsynced,
//! then linked (create) or renamed (overwrite) into place, and the directory is fsynced. A
//! writer killed at any point leaves at most a file in `.tmp/`, which no read ever serves.
//!
//! Every file written is 0600 and every directory created 0700, whatever the umask: the
//! objects hold the cluster's data (`crate::private_fs`). Run as root, every entry created
//! is given to the owner of the repository's root directory, so that a root run leaves
//! nothing the cluster's owner cannot read or remove (`crate::ownership`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use bytes::Bytes;

use crate::ownership::{Owner, give_to};
use crate::private_fs;

use super::{
    HeldBy, HeldLock, LockAttempt, ObjectBody, ObjectMeta, PutBody, PutMode, PutPayload, Storage,
    StorageError,
};

const STAGING: &str = ".tmp";

#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
    staging: PathBuf,
}

impl FsStorage {
    pub fn new(root: PathBuf) -> Self {
        let staging = root.join(STAGING);
        FsStorage { root, staging }
    }

    /// Creates the repository's directory and any missing ancestor, each given to `owner`
    /// (pitr run as root makes a repository that another user archives into).
    pub fn create_root(&self, owner: Option<&Owner>) -> io::Result<()> {
        create_dirs_durably(&self.root, owner)
    }

    /// Whom the entries a root run creates are given to: the root directory's owner.
    fn owner(&self) -> Option<Owner> {
        Owner::for_entries_under(&self.root)
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        super::validate_key(key)?;
        Ok(self.root.join(key))
    }
}

/// A unique name in the staging directory for this process.
fn staging_name(staging: &Path, key: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let leaf = key.rsplit('/').next().unwrap_or(key);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    staging.join(format!("{leaf}.{}.{n}", std::process::id()))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing ancestors (0700, given to `owner`), making each new entry
/// durable.
fn create_dirs_durably(dir: &Path, owner: Option<&Owner>) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs_durably(parent, owner)?;
    }
    match private_fs::create_dir(dir) {
        Ok(()) => give_to(dir, owner)?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

/// Removes a staged file on every path out of `put`, success or not.
struct StagedFile(PathBuf);

impl Drop for StagedFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn put_blocking(
    store: &FsStorage,
    key: &str,
    payload: PutPayload,
    mode: PutMode,
) -> Result<(), StorageError> {
    let target = store.path_of(key)?;
    let io_err = |op, e| StorageError::io(op, target.display(), e);
    let owner = store.owner();
    create_dirs_durably(&store.staging, owner.as_ref()).map_err(|e| io_err("create", e))?;
    let parent = target.parent().expect("keys have a parent");

    // Our own name for the bytes, fsynced, in the same filesystem as the target.
    let staged = StagedFile(staging_name(&store.staging, key));
    match &payload.body {
        PutBody::Bytes(bytes) => {
            let mut file = private_fs::file_options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&staged.0)
                .and_then(|file| private_fs::make_private(&file).map(|()| file))
                .map_err(|e| io_err("stage", e))?;
            file.write_all(bytes).map_err(|e| io_err("stage", e))?;
            file.sync_all().map_err(|e| io_err("fsync", e))?;
        }
        PutBody::File(source) => {
            // A link shares the source's mode: only a private source is linked, the caller's
            // file is never chmod'ed.
            let linked = fs::hard_link(source, &staged.0).is_ok()
                && fs::metadata(&staged.0)
                    .is_ok_and(|m| m.permissions().mode() & 0o7777 == private_fs::FILE_MODE);
            if !linked {
                // Another filesystem, or a file others may read: copy instead.
                let _ = fs::remove_file(&staged.0);
                fs::copy(source, &staged.0)
                    .and_then(|_| {
                        fs::set_permissions(
                            &staged.0,
                            fs::Permissions::from_mode(private_fs::FILE_MODE),
                        )
                    })
                    .map_err(|e| io_err("copy", e))?;
            }
            File::open(&staged.0)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_err("fsync", e))?;
        }
    }
    give_to(&staged.0, owner.as_ref()).map_err(|e| io_err("chown", e))?;
    // A delete removes the directories it empties: one may vanish between their creation
    // and the link, then they are made again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let placed = create_dirs_durably(parent, owner.as_ref())
            .map_err(|e| ("create", e))
            .and_then(|()| match mode {
                PutMode::Create => fs::hard_link(&staged.0, &target).map_err(|e| ("link", e)),
                PutMode::Overwrite => fs::rename(&staged.0, &target).map_err(|e| ("rename", e)),
            });
        match placed {
            Ok(()) => break,
            Err((_, e)) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => {}
            Err(("link", e)) if e.kind() == io::ErrorKind::AlreadyExists => {
                // The object may have been linked by a writer that died before its directory
                // fsync: make the entry durable before anyone takes it as stored.
                fsync_dir(parent).map_err(|e| io_err("fsync", e))?;
                return Err(StorageError::AlreadyExists {
                    key: key.to_owned(),
                });
            }
            Err((op, e)) => return Err(io_err(op, e)),
        }
    }
    fsync_dir(parent).map_err(|e| io_err("fsync", e))
}

/// Removes the directories between `dir` and `root` (not `root`) that are empty, deepest
/// first, as S3 keeps no empty prefix: a removed backup leaves no `backup/<id>/` behind.
fn remove_empty_dirs(root: &Path, dir: &Path) {
    let mut current = dir;
    while current != root && current.starts_with(root) {
        // Fails on a directory that is not empty (or already gone): that ends the climb.
        if fs::remove_dir(current).is_err() {
            return;
        }
        match current.parent() {
            Some(parent) => {
                let _ = fsync_dir(parent);
                current = parent;
            }
            None => return,
        }
    }
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
    // Walk from the deepest directory the prefix names; filter the rest by string.
    let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
    let start = root.join(dir_part);
    let mut found = Vec::new();
    let mut pending = vec![(start, dir_part.to_owned())];
    while let Some((dir, key_prefix)) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io("list", dir.display(), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("list", dir.display(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // staging area and other temporary files
            }
            let key = if key_prefix.is_empty() {
                name
            } else {
                format!("{key_prefix}/{name}")
            };
            // The entry's type needs no stat; only objects the prefix takes are stat'ed.
            let is_dir = entry
                .file_type()
                .map_err(|e| StorageError::io("stat", entry.path().display(), e))?
                .is_dir();
            if is_dir {
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    pending.push((entry.path(), key));
                }
            } else if key.starts_with(prefix) {
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Deleted since the directory was read: not there any more.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io("stat", entry.path().display(), e)),
                };
                found.push(ObjectMeta {
                    key,
                    size: meta.len(),
                    modified: meta.modified().ok(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

/// Takes `flock(LOCK_EX | LOCK_NB)` on the lock file at `path`, then writes `record` into it;
/// or reads what the holder wrote.
fn lock_blocking(
    path: PathBuf,
    key: String,
    record: Bytes,
    owner: Option<Owner>,
) -> Result<LockAttempt, StorageError> {
    let io_err = |op, e| StorageError::io(op, path.display(), e);
    create_dirs_durably(path.parent().expect("keys have a parent"), owner.as_ref())
        .map_err(|e| io_err("create", e))?;
    // The file stays once created: removing it would let a process that opened the old file
    // and one that created a new one each hold "the" lock.
    let file = private_fs::file_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("open", e))?;
    // Also a lock file an earlier pitr left with the umask's mode (best effort: it may be
    // another user's).
    let _ = private_fs::make_private(&file);
    give_to(&path, owner.as_ref()).map_err(|e| io_err("chown", e))?;
    if !crate::sys::try_lock(&file, crate::sys::LockKind::Exclusive)
        .map_err(|e| io_err("lock", e))?
    {
        let current = fs::read(&path).map_err(|e| io_err("read", e))?;
        return Ok(LockAttempt::Held(HeldBy {
            record: current.into(),
            version: None,
        }));
    }
    write_record(&file, &record).map_err(|e| io_err("write", e))?;
    Ok(LockAttempt::Acquired(HeldLock {
        key,
        record,
        version: None,
        file: Some(file),
    }))
}

/// Replaces the lock file's content. Readers may see it empty for a moment: they then name
/// no holder, which is all an empty record means.
fn write_record(mut file: &File, record: &[u8]) -> io::Result<()> {
    use std::io::Seek;
    file.set_len(0)?;
    file.seek(io::SeekFrom::Start(0))?;
    file.write_all(record)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    crate::run_blocking(f).await
}

#[async_trait]
impl Storage for FsStorage {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, payload: PutPayload, mode: PutMode) -> Result<(), StorageError> {
        let (store, key) = (self.clone(), key.to_owned());
        blocking(move || put_blocking(&store, &key, payload, mode)).await
    }

    async fn get(&self, key: &str) -> Result<ObjectBody, StorageError> {
        let path = self.path_of(key)?;
        match File::open(&path) {
            Ok(file) => Ok(ObjectBody::File(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound {
                key: key.to_owned(),
            }),
            Err(e) => Err(StorageError::io("read", path.display(), e)),
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let path = self.path_of(key)?;
        // Opened, not only stat'ed: like S3's HEAD, it fails on an object this user may not
        // read (a root run's leftover), which a pre-flight must catch before writing.
        match File::open(&path).and_then(|file| file.metadata()) {
            Ok(meta) if meta.is_file() => Ok(ObjectMeta {
                key: key.to_owned(),
                size: meta.len(),
                modified: meta.modified().ok(),
            }),
            Ok(_) => Err(StorageError::NotFound {
                key: key.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound {
                key: key.to_owned(),
            }),
            Err(e) => Err(StorageError::io("stat", path.display(), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let (root, prefix) = (self.root.clone(), prefix.to_owned());
        blocking(move || list_blocking(&root, &prefix)).await
    }

    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let prefix = prefix.to_owned();
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StorageError::io("list", dir.display(), e)),
            };
            let mut folders = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| StorageError::io("list", dir.display(), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // The directory entry's type: no stat per entry.
                let is_dir = entry
                    .file_type()
                    .map_err(|e| StorageError::io("stat", entry.path().display(), e))?
                    .is_dir();
                if is_dir && !name.starts_with('.') {
                    folders.push(format!("{prefix}{name}/"));
                }
            }
            folders.sort();
            Ok(folders)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let (path, root) = (self.path_of(key)?, self.root.clone());
        blocking(move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(StorageError::io("delete", path.display(), e)),
            }
            let parent = path.parent().expect("keys have a parent");
            fsync_dir(parent).map_err(|e| StorageError::io("fsync", parent.display(), e))?;
            remove_empty_dirs(&root, parent);
            Ok(())
        })
        .await
    }

    fn staging_dir(&self) -> Option<&Path> {
        Some(&self.staging)
    }

    async fn lock(&self, key: &str, record: Bytes) -> Result<LockAttempt, StorageError> {
        let (path, key, owner) = (self.path_of(key)?, key.to_owned(), self.owner());
        blocking(move || lock_blocking(path, key, record, owner)).await
    }

    async fn refresh_lock(&self, lock: &mut HeldLock, record: Bytes) -> Result<(), StorageError> {
        let path = self.path_of(&lock.key)?;
        let file = lock.file.as_ref().expect("fs locks hold their file");
        // A few bytes into the page cache: not worth a blocking task.
        write_record(file, &record).map_err(|e| StorageError::io("write", path.display(), e))?;
        lock.record = record;
        Ok(())
    }

    async fn unlock(&self, lock: HeldLock) -> Result<(), StorageError> {
        // Empty the record so that no one names us afterwards; closing the file unlocks.
        if let Some(file) = &lock.file {
            let path = self.path_of(&lock.key)?;
            file.set_len(0)
                .map_err(|e| StorageError::io("write", path.display(), e))?;
        }
        Ok(())
    }

    async fn take_over_lock(
        &self,
        key: &str,
        _stale: &HeldBy,
        _record: Bytes,
    ) -> Result<Option<HeldLock>, StorageError> {
        // A kernel lock's holder is alive: there is nothing to take over.
        let _ = self.path_of(key)?;
        Ok(None)
    }
}
