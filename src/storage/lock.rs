//! Exclusive locks in a store: the mechanics only. What a holder record says, and when a
//! holder counts as gone, is the catalog's business (`catalog::lock`).
//!
//! Two kinds:
//! - a lock object (S3, memory; the trait's default): created with [`PutMode::Create`]
//!   (`If-None-Match: *` on S3), so exactly one writer gets it. Its holder keeps rewriting it
//!   (a heartbeat), and a holder that died leaves it behind: others may break it once it has
//!   gone stale. Rewrites and removals first check that the object still holds exactly what we
//!   wrote, so a lock taken over by someone else is never overwritten or removed by us.
//! - a kernel lock (fs): `flock` on a lock file. The kernel lets go when the holder's process
//!   dies, however it dies, so such a lock is never stale and never broken.

use bytes::Bytes;

use tokio::io::AsyncReadExt;

use super::{ObjectBody, PutMode, PutPayload, Storage, StorageError};

/// A lock this process holds. Hand it back to the store that gave it for
/// [`Storage::refresh_lock`] and [`Storage::unlock`].
#[derive(Debug)]
pub struct HeldLock {
    pub(crate) key: String,
    /// What we last wrote: the lock is still ours while the object holds exactly this.
    pub(crate) record: Bytes,
    /// fs: the open lock file whose `flock` we hold; closing it lets the lock go.
    pub(crate) file: Option<std::fs::File>,
}

impl HeldLock {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What the holder record says now.
    pub fn record(&self) -> &Bytes {
        &self.record
    }
}

#[derive(Debug)]
pub enum LockAttempt {
    Acquired(HeldLock),
    /// Someone holds the lock; `record` is what they wrote (empty if nothing yet).
    Held {
        record: Bytes,
        /// Whether [`Storage::break_lock`] may remove it: lock objects yes, kernel locks no
        /// (their holder is alive by definition).
        breakable: bool,
    },
}

/// How many times a lock object that vanished between our create and our read is tried again.
const VANISHED_RETRIES: u32 = 3;

/// [`Storage::lock`] with a lock object.
pub(crate) async fn create_lock_object<S: Storage + ?Sized>(
    store: &S,
    key: &str,
    record: Bytes,
) -> Result<LockAttempt, StorageError> {
    for _ in 0..VANISHED_RETRIES {
        match store
            .put(key, PutPayload::from_bytes(record.clone()), PutMode::Create)
            .await
        {
            Ok(()) => return Ok(acquired(key, record)),
            Err(StorageError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        match read_record(store, key).await {
            // Our own create, stored but reported failed and retried.
            Ok(current) if current == record => return Ok(acquired(key, record)),
            Ok(current) => {
                return Ok(LockAttempt::Held {
                    record: current.into(),
                    breakable: true,
                });
            }
            // Released in between: try again.
            Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Err(StorageError::io(
        "lock",
        format!("{}/{key}", store.location()),
        std::io::Error::other("the lock kept changing hands: try again"),
    ))
}

fn acquired(key: &str, record: Bytes) -> LockAttempt {
    LockAttempt::Acquired(HeldLock {
        key: key.to_owned(),
        record,
        file: None,
    })
}

fn lost(store_location: &str, key: &str) -> StorageError {
    StorageError::io(
        "lock",
        format!("{store_location}/{key}"),
        std::io::Error::other("the lock is no longer ours: another process took it over"),
    )
}

/// [`Storage::refresh_lock`] with a lock object: overwrite it only while it is still ours.
pub(crate) async fn refresh_lock_object<S: Storage + ?Sized>(
    store: &S,
    lock: &mut HeldLock,
    record: Bytes,
) -> Result<(), StorageError> {
    let current = match read_record(store, &lock.key).await {
        Ok(current) => current,
        Err(StorageError::NotFound { .. }) => return Err(lost(&store.location(), &lock.key)),
        Err(e) => return Err(e),
    };
    // The new record already there: an earlier attempt of this refresh went through.
    if current != lock.record && current != record {
        return Err(lost(&store.location(), &lock.key));
    }
    store
        .put(
            &lock.key,
            PutPayload::from_bytes(record.clone()),
            PutMode::Overwrite,
        )
        .await?;
    lock.record = record;
    Ok(())
}

/// [`Storage::unlock`] and [`Storage::break_lock`] with a lock object: remove it only if it
/// holds `record`. Returns whether it was removed.
pub(crate) async fn remove_lock_object_if<S: Storage + ?Sized>(
    store: &S,
    key: &str,
    record: &[u8],
) -> Result<bool, StorageError> {
    match read_record(store, key).await {
        Ok(current) if current == record => {
            store.delete(key).await?;
            Ok(true)
        }
        Ok(_) | Err(StorageError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`super::read_all`] for any store, sized or not.
async fn read_record<S: Storage + ?Sized>(store: &S, key: &str) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    match store.get(key).await? {
        ObjectBody::File(file) => tokio::fs::File::from_std(file).read_to_end(&mut out).await,
        ObjectBody::Stream(mut stream) => stream.read_to_end(&mut out).await,
    }
    .map_err(|e| StorageError::io("read", key, e))?;
    Ok(out)
}
