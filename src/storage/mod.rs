//! Object storage: one small async trait, implemented for a local directory and for S3.
//!
//! Storage knows keys and bytes, never what they mean: the catalog names objects, the codec
//! shapes them. Every backend passes the same `conformance` suite.
//!
//! For tests: `MemoryStorage` keeps a repository in memory, and `fault::FaultStorage` wraps
//! any store to inject failures, delays and corrupted reads. These three are test code, built
//! only for the crate's unit tests or with the `test-support` feature (which the integration
//! tests enable), never into the product.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
#[cfg(any(test, feature = "test-support"))]
pub mod fault;
mod fs;
pub mod lock;
#[cfg(any(test, feature = "test-support"))]
mod memory;
pub mod retry;
mod s3;

#[cfg(any(test, feature = "test-support"))]
pub use fault::{Fault, FaultHandle, FaultKind, FaultStorage, FaultTarget, Op};
pub use fs::FsStorage;
pub use lock::{HeldBy, HeldLock, LockAttempt};
#[cfg(any(test, feature = "test-support"))]
pub use memory::MemoryStorage;
pub use s3::{S3Options, S3Storage};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{key}: not found in the repository")]
    NotFound { key: String },
    #[error("{key}: already exists in the repository")]
    AlreadyExists { key: String },
    #[error("{op} {location}: {source}")]
    Io {
        op: &'static str,
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error("S3 {op} {location}: {message}")]
    S3 {
        op: &'static str,
        location: String,
        message: String,
        /// The HTTP status, when a response came.
        status: Option<u16>,
        /// Worth trying again: throttling, a 5xx, a timeout, a dropped connection.
        transient: bool,
    },
    #[error("invalid object key '{0}'")]
    InvalidKey(String),
    /// A conditional put or delete found another version than the one it was given.
    #[error("{key}: changed in the repository since it was read")]
    Changed { key: String },
    /// The repository cannot be reached as configured (no credentials, credentials refused,
    /// an endpoint that does not resolve): trying again cannot help, the settings must change.
    #[error("{0}")]
    Config(String),
}

impl StorageError {
    pub fn io(op: &'static str, location: impl fmt::Display, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            location: location.to_string(),
            source,
        }
    }

    /// Nothing listened where the repository was looked for (a transient error, retried
    /// only briefly: see [`retry::RetryPolicy::refused_total`]).
    pub fn is_refused(&self) -> bool {
        match self {
            StorageError::S3 { message, .. } => message.contains("Connection refused"),
            StorageError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::ConnectionRefused
            }
            _ => false,
        }
    }

    /// Whether the same request may well succeed if tried again.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            StorageError::S3 { transient, .. } => *transient,
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                TimedOut
                    | ConnectionReset
                    | ConnectionAborted
                    | ConnectionRefused
                    | BrokenPipe
                    | Interrupted
            ),
            _ => false,
        }
    }
}

/// Whether a put may replace an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with [`StorageError::AlreadyExists`] if the key exists, atomically.
    Create,
    /// Replace whatever is there, atomically.
    Overwrite,
}

/// An object's version as its store names it (S3: the ETag; memory: a generation number):
/// what a conditional put or delete compares with. Opaque: only equality means anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectVersion(String);

impl ObjectVersion {
    pub fn new(version: impl Into<String>) -> Self {
        ObjectVersion(version.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// When a conditional put ([`Storage::put_if`]) may store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutIf {
    /// Only if the key does not exist (else [`StorageError::AlreadyExists`]).
    Absent,
    /// Only if the object is still exactly this version (else [`StorageError::Changed`]).
    Matches(ObjectVersion),
}

/// The bytes of a put, with their length and CRC-32 known up front so that S3 can verify
/// them on receipt and retries can resend them.
#[derive(Clone, Debug)]
pub struct PutPayload {
    pub body: PutBody,
    pub len: u64,
    pub crc32: u32,
}

#[derive(Clone, Debug)]
pub enum PutBody {
    Bytes(Bytes),
    /// A complete local file; for the fs store, best written in [`Storage::staging_dir`].
    File(PathBuf),
}

impl PutPayload {
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        PutPayload {
            len: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
            body: PutBody::Bytes(bytes),
        }
    }

    pub fn from_file(path: PathBuf, len: u64, crc32: u32) -> Self {
        PutPayload {
            body: PutBody::File(path),
            len,
            crc32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// When the object was written, where the store says (a file's mtime, S3's
    /// LastModified).
    pub modified: Option<std::time::SystemTime>,
}

/// An object's content, readable as a stream.
pub enum ObjectBody {
    /// A local file: read it directly, without going through the async runtime.
    File(std::fs::File),
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

impl ObjectBody {
    /// A blocking reader; call it from a blocking context (`spawn_blocking`) in a runtime.
    pub fn into_blocking_reader(self) -> Box<dyn Read + Send> {
        match self {
            ObjectBody::File(file) => Box::new(file),
            ObjectBody::Stream(stream) => Box::new(tokio_util::io::SyncIoBridge::new(stream)),
        }
    }
}

#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Where the repository is, for messages: `file:///…` or `s3://bucket/prefix`.
    fn location(&self) -> String;

    async fn put(&self, key: &str, payload: PutPayload, mode: PutMode) -> Result<(), StorageError>;

    async fn get(&self, key: &str) -> Result<ObjectBody, StorageError>;

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Removes the object; removing a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// The distinct `prefix<name>/` under which objects sit one level or more below
    /// `prefix` (which ends with `/`), sorted: S3's `CommonPrefixes` with delimiter `/`. Lets
    /// a reader see which folders exist without listing the objects in them. May also name
    /// a folder whose objects were all deleted (the fs store keeps empty directories).
    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut folders: Vec<String> = Vec::new();
        for meta in self.list(prefix).await? {
            let rest = &meta.key[prefix.len()..];
            if let Some(slash) = rest.find('/') {
                let folder = &meta.key[..prefix.len() + slash + 1];
                if folders.last().is_none_or(|last| last != folder) {
                    folders.push(folder.to_owned());
                }
            }
        }
        Ok(folders)
    }

    /// Reads a small object whole, with its version, for a later [`Storage::put_if`] or
    /// [`Storage::delete_if`]. Stores without versions (fs: its locks are kernel locks)
    /// answer [`unsupported`].
    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ObjectVersion), StorageError> {
        Err(unsupported(self, "get_versioned", key))
    }

    /// Stores `payload` at `key` only if `condition` holds, atomically with the check (S3:
    /// `If-None-Match: *` or `If-Match: <ETag>`); returns the version stored.
    async fn put_if(
        &self,
        key: &str,
        payload: PutPayload,
        condition: PutIf,
    ) -> Result<ObjectVersion, StorageError> {
        let _ = (payload, condition);
        Err(unsupported(self, "put_if", key))
    }

    /// Removes the object only while it is `version` (S3: `If-Match` on DELETE). Returns
    /// whether it was removed; another version, or none, is left alone (`false`).
    async fn delete_if(&self, key: &str, version: &ObjectVersion) -> Result<bool, StorageError> {
        let _ = version;
        Err(unsupported(self, "delete_if", key))
    }

    /// A directory where a file can be staged so that `put` takes it without a copy.
    fn staging_dir(&self) -> Option<&Path> {
        None
    }

    /// Takes the exclusive lock named `key`, writing `record` (who holds it) into it, or says
    /// who holds it. At once: never waits for the holder. Default: a lock object created
    /// create-only (see [`lock`]); the fs store uses a kernel lock instead.
    async fn lock(&self, key: &str, record: Bytes) -> Result<LockAttempt, StorageError> {
        lock::create_lock_object(self, key, record).await
    }

    /// Replaces the record of a lock we hold (the heartbeat); fails if the lock is no longer
    /// ours.
    async fn refresh_lock(&self, lock: &mut HeldLock, record: Bytes) -> Result<(), StorageError> {
        lock::refresh_lock_object(self, lock, record).await
    }

    /// Lets a lock we hold go; a lock taken over by someone else is left to them.
    async fn unlock(&self, lock: HeldLock) -> Result<(), StorageError> {
        lock::remove_lock_object(self, &lock).await
    }

    /// Replaces a lock whose holder the caller has decided is gone with ours (`record`), if
    /// it is still exactly as read (`stale`): of several processes taking over the same lock,
    /// one gets it. `None`: it changed since, or it cannot be taken over (a kernel lock).
    async fn take_over_lock(
        &self,
        key: &str,
        stale: &HeldBy,
        record: Bytes,
    ) -> Result<Option<HeldLock>, StorageError> {
        lock::take_over_lock_object(self, key, stale, record).await
    }

    /// Removes many objects (missing ones count as removed), in batches where the store has
    /// them (S3: DeleteObjects, 1000 keys a request). A key that a retention lock (S3 Object
    /// Lock) refuses is returned as [`Protected`], not an error: it is left for a later run.
    /// Any other failure is an error; keys before it may be gone.
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Protected>, StorageError> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(Vec::new())
    }
}

/// The error of a versioned operation on a store that has no versions.
pub fn unsupported<S: Storage + ?Sized>(store: &S, op: &'static str, key: &str) -> StorageError {
    StorageError::io(
        op,
        format!("{}/{key}", store.location()),
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this store has no object versions",
        ),
    )
}

/// An object a retention lock keeps from deletion.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Protected {
    pub key: String,
    /// When the lock ends (RFC 3339), if the store says; none for a legal hold or unknown.
    pub until: Option<String>,
}

/// Reads a whole (small) object into memory.
pub async fn read_all(storage: &dyn Storage, key: &str) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    match storage.get(key).await? {
        ObjectBody::File(file) => {
            let mut file = tokio::fs::File::from_std(file);
            file.read_to_end(&mut out).await
        }
        ObjectBody::Stream(mut stream) => stream.read_to_end(&mut out).await,
    }
    .map_err(|e| StorageError::io("read", key, e))?;
    Ok(out)
}

/// Keys are relative, `/`-separated, and never climb out of the repository.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == ".." || part.starts_with('.'));
    if bad {
        Err(StorageError::InvalidKey(key.to_owned()))
    } else {
        Ok(())
    }
}

/// Where a repository lives, from `--repo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoLocation {
    Fs(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl RepoLocation {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "repository '{url}' names no bucket: use s3://BUCKET/PREFIX"
                ));
            }
            return Ok(RepoLocation::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if url.contains("://") && !url.starts_with("file://") {
            return Err(format!(
                "repository '{url}' has an unknown scheme: use file:///PATH, /PATH or s3://BUCKET/PREFIX"
            ));
        }
        if !Path::new(path).is_absolute() {
            return Err(format!(
                "repository path '{url}' is not absolute: archive_command runs in the data \
                 directory, so give a full path such as /var/lib/pitr"
            ));
        }
        Ok(RepoLocation::Fs(PathBuf::from(path)))
    }

    pub async fn open(&self, s3: &S3Options) -> Result<Arc<dyn Storage>, StorageError> {
        Ok(match self {
            RepoLocation::Fs(path) => Arc::new(FsStorage::new(path.clone())),
            RepoLocation::S3 { bucket, prefix } => {
                Arc::new(S3Storage::connect(bucket, prefix, s3).await?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_urls() {
        assert_eq!(
            RepoLocation::parse("/var/lib/pitr").unwrap(),
            RepoLocation::Fs("/var/lib/pitr".into())
        );
        assert_eq!(
            RepoLocation::parse("file:///var/lib/pitr").unwrap(),
            RepoLocation::Fs("/var/lib/pitr".into())
        );
        assert_eq!(
            RepoLocation::parse("s3://bucket/a/b/").unwrap(),
            RepoLocation::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            RepoLocation::parse("s3://bucket").unwrap(),
            RepoLocation::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        for bad in ["relative/dir", "file://relative", "s3://", "gs://x/y"] {
            assert!(RepoLocation::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_stay_inside_the_repository() {
        assert!(validate_key("wal/0000000100000000/000000010000000000000001.lz4").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "..", "a/./b", ".tmp/x", "a/"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
