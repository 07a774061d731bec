//! Exclusive locks in a store: the mechanics only. What a holder record says, and when a
//! holder counts as gone, is the catalog's business (`catalog::lock`).
//!
//! Two kinds:
//! - a lock object (S3, memory; the trait's default): created with [`PutIf::Absent`]
//!   (`If-None-Match: *` on S3), so exactly one writer gets it. Its holder keeps rewriting it
//!   (a heartbeat), and a holder that died leaves it behind: others may take it over once it
//!   has gone stale. Every rewrite is compare-and-swap on the version last seen
//!   ([`PutIf::Matches`], `If-Match: <ETag>` on S3): a heartbeat fails once someone took the
//!   lock over, and of two processes taking over the same stale lock exactly one succeeds.
//!   So at most one holder exists at any instant, on any store that honours the condition.
//! - a kernel lock (fs): `flock` on a lock file. The kernel lets go when the holder's process
//!   dies, however it dies, so such a lock is never stale and never taken over.

use bytes::Bytes;

use super::{ObjectVersion, PutIf, PutPayload, Storage, StorageError};

/// A lock this process holds. Hand it back to the store that gave it for
/// [`Storage::refresh_lock`] and [`Storage::unlock`].
#[derive(Debug)]
pub struct HeldLock {
    pub(crate) key: String,
    /// What we last wrote.
    pub(crate) record: Bytes,
    /// Lock objects: the version we last wrote; the lock is ours while the object is it.
    pub(crate) version: Option<ObjectVersion>,
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
    Held(HeldBy),
}

/// A lock someone else holds, as read: what [`Storage::take_over_lock`] replaces, if it is
/// still exactly this.
#[derive(Debug, Clone)]
pub struct HeldBy {
    pub record: Bytes,
    /// Lock objects: the version read. Kernel locks have none: their holder is alive by
    /// definition, and they are never taken over.
    pub(crate) version: Option<ObjectVersion>,
}

impl HeldBy {
    /// Whether [`Storage::take_over_lock`] may replace it (lock objects yes, kernel locks no).
    pub fn breakable(&self) -> bool {
        self.version.is_some()
    }
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
            .put_if(key, PutPayload::from_bytes(record.clone()), PutIf::Absent)
            .await
        {
            Ok(version) => return Ok(acquired(key, record, version)),
            Err(StorageError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        match store.get_versioned(key).await {
            // Our own create, stored but reported failed and retried.
            Ok((current, version)) if current == record => {
                return Ok(acquired(key, record, version));
            }
            Ok((current, version)) => {
                return Ok(LockAttempt::Held(HeldBy {
                    record: current,
                    version: Some(version),
                }));
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

fn acquired(key: &str, record: Bytes, version: ObjectVersion) -> LockAttempt {
    LockAttempt::Acquired(HeldLock {
        key: key.to_owned(),
        record,
        version: Some(version),
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

/// [`Storage::refresh_lock`] with a lock object: replace it only while it is the version we
/// wrote last.
pub(crate) async fn refresh_lock_object<S: Storage + ?Sized>(
    store: &S,
    lock: &mut HeldLock,
    record: Bytes,
) -> Result<(), StorageError> {
    let Some(ours) = lock.version.clone() else {
        return Err(lost(&store.location(), &lock.key));
    };
    let put = store
        .put_if(
            &lock.key,
            PutPayload::from_bytes(record.clone()),
            PutIf::Matches(ours),
        )
        .await;
    let version = match put {
        Ok(version) => version,
        // An earlier attempt of this refresh stored it but was reported failed: the object
        // holds exactly the new record, and no one else writes our record.
        Err(StorageError::Changed { .. }) | Err(StorageError::NotFound { .. }) => {
            match version_if_ours(store, &lock.key, &record).await? {
                Some(version) => version,
                None => return Err(lost(&store.location(), &lock.key)),
            }
        }
        Err(e) => return Err(e),
    };
    lock.record = record;
    lock.version = Some(version);
    Ok(())
}

/// [`Storage::unlock`] with a lock object: remove it only while it is the version we wrote
/// last. A lock taken over by someone else is theirs.
pub(crate) async fn remove_lock_object<S: Storage + ?Sized>(
    store: &S,
    lock: &HeldLock,
) -> Result<(), StorageError> {
    let Some(ours) = &lock.version else {
        return Ok(());
    };
    // Compare first as well: a store that ignores If-Match on DELETE (AWS honours it since
    // 2025) then still leaves a lock it can see is someone else's.
    match store.get_versioned(&lock.key).await {
        Ok((_, current)) if &current == ours => store.delete_if(&lock.key, ours).await.map(drop),
        Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// [`Storage::take_over_lock`] with a lock object: replace the stale holder's object with
/// ours if it is still exactly the version read. `None`: it changed (refreshed, released or
/// taken over by someone else): look again.
pub(crate) async fn take_over_lock_object<S: Storage + ?Sized>(
    store: &S,
    key: &str,
    stale: &HeldBy,
    record: Bytes,
) -> Result<Option<HeldLock>, StorageError> {
    let Some(version) = &stale.version else {
        return Ok(None);
    };
    let put = store
        .put_if(
            key,
            PutPayload::from_bytes(record.clone()),
            PutIf::Matches(version.clone()),
        )
        .await;
    match put {
        Ok(version) => Ok(Some(HeldLock {
            key: key.to_owned(),
            record,
            version: Some(version),
            file: None,
        })),
        // Our own take-over, stored but reported failed and retried, or someone else's.
        Err(StorageError::Changed { .. }) | Err(StorageError::NotFound { .. }) => {
            let version = version_if_ours(store, key, &record).await?;
            Ok(version.map(|version| HeldLock {
                key: key.to_owned(),
                record,
                version: Some(version),
                file: None,
            }))
        }
        Err(e) => Err(e),
    }
}

/// After a conditional write answered "changed": the object's version if it holds exactly
/// `record` (our own write, done but reported failed; no one else writes our record), else
/// `None`.
async fn version_if_ours<S: Storage + ?Sized>(
    store: &S,
    key: &str,
    record: &[u8],
) -> Result<Option<ObjectVersion>, StorageError> {
    match store.get_versioned(key).await {
        Ok((current, version)) if current == record => Ok(Some(version)),
        Ok(_) | Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
