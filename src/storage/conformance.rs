//! The contract every [`Storage`] backend keeps, as one suite run against each of them: the
//! fs store and a real S3-compatible server (from `tests/it/storage_conformance.rs`), the memory
//! store, and the fault wrapper with no rules over each kind of store.
//!
//! Each check panics with a message on failure; all keys live under `prefix` so that runs
//! can share a bucket.

use std::sync::Arc;

use super::{
    HeldBy, HeldLock, LockAttempt, PutIf, PutMode, PutPayload, Storage, StorageError, read_all,
};
use bytes::Bytes;

/// Runs every check but [`concurrent_creates_have_one_winner`], which needs a server whose
/// conditional writes are atomic (AWS S3 and MinIO are; s3s-fs 0.14.1 checks `If-None-Match`
/// before it writes, so two racing creates can both succeed there).
pub async fn run_all(storage: Arc<dyn Storage>, prefix: &str) {
    put_get_head_round_trip(&*storage, prefix).await;
    create_never_overwrites(&*storage, prefix).await;
    overwrite_replaces(&*storage, prefix).await;
    missing_objects_are_not_found(&*storage, prefix).await;
    list_by_prefix(&*storage, prefix).await;
    list_folders_one_level(&*storage, prefix).await;
    delete_is_idempotent(&*storage, prefix).await;
    delete_many_removes_every_key(&*storage, prefix).await;
    file_payloads_stream(&*storage, prefix).await;
    locks_are_exclusive(&*storage, prefix).await;
    locks_are_taken_over_only_as_read(&*storage, prefix).await;
}

pub async fn put_get_head_round_trip(storage: &dyn Storage, prefix: &str) {
    let key = format!("{prefix}/round-trip/object");
    let data = Bytes::from_static(b"the quick brown fox");
    storage
        .put(&key, PutPayload::from_bytes(data.clone()), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(read_all(storage, &key).await.unwrap(), data);
    let meta = storage.head(&key).await.unwrap();
    assert_eq!(
        (meta.key.as_str(), meta.size),
        (key.as_str(), data.len() as u64)
    );
    // An empty object is an object too.
    let empty = format!("{prefix}/round-trip/empty");
    storage
        .put(
            &empty,
            PutPayload::from_bytes(Bytes::new()),
            PutMode::Create,
        )
        .await
        .unwrap();
    assert_eq!(read_all(storage, &empty).await.unwrap(), b"");
}

pub async fn create_never_overwrites(storage: &dyn Storage, prefix: &str) {
    let key = format!("{prefix}/create/object");
    storage
        .put(&key, PutPayload::from_bytes("first"), PutMode::Create)
        .await
        .unwrap();
    let second = storage
        .put(&key, PutPayload::from_bytes("second"), PutMode::Create)
        .await;
    assert!(
        matches!(second, Err(StorageError::AlreadyExists { .. })),
        "create over an existing object gave {second:?}"
    );
    assert_eq!(read_all(storage, &key).await.unwrap(), b"first");
}

pub async fn overwrite_replaces(storage: &dyn Storage, prefix: &str) {
    let key = format!("{prefix}/overwrite/object");
    for content in ["one", "two"] {
        storage
            .put(&key, PutPayload::from_bytes(content), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(read_all(storage, &key).await.unwrap(), content.as_bytes());
    }
}

pub async fn missing_objects_are_not_found(storage: &dyn Storage, prefix: &str) {
    let key = format!("{prefix}/missing/object");
    assert!(matches!(
        storage.get(&key).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        storage.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(
        storage
            .list(&format!("{prefix}/missing/"))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn list_by_prefix(storage: &dyn Storage, prefix: &str) {
    let keys = ["list/a/1", "list/a/2", "list/ab/3", "list/b/4"].map(|k| format!("{prefix}/{k}"));
    for key in &keys {
        storage
            .put(key, PutPayload::from_bytes(key.clone()), PutMode::Create)
            .await
            .unwrap();
    }
    let listed =
        |found: Vec<super::ObjectMeta>| found.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        listed(storage.list(&format!("{prefix}/list/")).await.unwrap()),
        keys.to_vec()
    );
    assert_eq!(
        listed(storage.list(&format!("{prefix}/list/a/")).await.unwrap()),
        keys[..2].to_vec()
    );
    // A prefix is a string prefix, not a directory.
    assert_eq!(
        listed(storage.list(&format!("{prefix}/list/a")).await.unwrap()),
        keys[..3].to_vec()
    );
    let sizes: Vec<u64> = storage
        .list(&format!("{prefix}/list/b/"))
        .await
        .unwrap()
        .iter()
        .map(|m| m.size)
        .collect();
    assert_eq!(sizes, vec![keys[3].len() as u64]);
}

pub async fn list_folders_one_level(storage: &dyn Storage, prefix: &str) {
    let keys = [
        "folders/a/1",
        "folders/a/2",
        "folders/b/c/3",
        "folders/d",
        "folders/e/4",
    ]
    .map(|k| format!("{prefix}/{k}"));
    for key in &keys {
        storage
            .put(key, PutPayload::from_bytes("x"), PutMode::Create)
            .await
            .unwrap();
    }
    let folders = storage
        .list_folders(&format!("{prefix}/folders/"))
        .await
        .unwrap();
    let expected: Vec<String> = ["a/", "b/", "e/"]
        .iter()
        .map(|f| format!("{prefix}/folders/{f}"))
        .collect();
    assert_eq!(
        folders, expected,
        "objects directly under the prefix are no folder"
    );
    assert_eq!(
        storage
            .list_folders(&format!("{prefix}/folders/b/"))
            .await
            .unwrap(),
        vec![format!("{prefix}/folders/b/c/")]
    );
    assert!(
        storage
            .list_folders(&format!("{prefix}/no-such-folder/"))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn delete_is_idempotent(storage: &dyn Storage, prefix: &str) {
    let key = format!("{prefix}/delete/object");
    storage
        .put(&key, PutPayload::from_bytes("x"), PutMode::Create)
        .await
        .unwrap();
    storage.delete(&key).await.unwrap();
    assert!(matches!(
        storage.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));
    storage.delete(&key).await.unwrap();
    // Deleted objects can be created again.
    storage
        .put(&key, PutPayload::from_bytes("y"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(read_all(storage, &key).await.unwrap(), b"y");
}

/// A multi-megabyte file body, staged where the backend asks, streams back intact.
pub async fn file_payloads_stream(storage: &dyn Storage, prefix: &str) {
    let key = format!("{prefix}/file/object");
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let dir = match storage.staging_dir() {
        Some(dir) => {
            std::fs::create_dir_all(dir).unwrap();
            tempfile::tempdir_in(dir).unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    };
    let path = dir.path().join("payload");
    std::fs::write(&path, &data).unwrap();
    let payload = PutPayload::from_file(path.clone(), data.len() as u64, crc32fast::hash(&data));
    storage.put(&key, payload, PutMode::Create).await.unwrap();
    // The caller's file is still the caller's.
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(read_all(storage, &key).await.unwrap(), data);
    assert_eq!(storage.head(&key).await.unwrap().size, data.len() as u64);
}

pub async fn concurrent_creates_have_one_winner(storage: Arc<dyn Storage>, prefix: &str) {
    let key = format!("{prefix}/race/object");
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let (storage, key) = (storage.clone(), key.clone());
            tokio::spawn(async move {
                let body = format!("writer {i}");
                let result = storage
                    .put(&key, PutPayload::from_bytes(body.clone()), PutMode::Create)
                    .await;
                (body, result)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        let (body, result) = attempt.await.unwrap();
        match result {
            Ok(()) => winners.push(body),
            Err(StorageError::AlreadyExists { .. }) => {}
            Err(e) => panic!("concurrent create failed: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(
        read_all(&*storage, &key).await.unwrap(),
        winners[0].as_bytes()
    );
    let listed = storage.list(&format!("{prefix}/race/")).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
}

fn expect_acquired(attempt: LockAttempt) -> HeldLock {
    match attempt {
        LockAttempt::Acquired(lock) => lock,
        held => panic!("the lock was not acquired: {held:?}"),
    }
}

fn expect_held(attempt: LockAttempt) -> HeldBy {
    match attempt {
        LockAttempt::Held(held) => held,
        LockAttempt::Acquired(lock) => panic!("a held lock was acquired again: {lock:?}"),
    }
}

/// One holder at a time; others read its record, refreshed or not; unlock lets the next in.
pub async fn locks_are_exclusive(storage: &dyn Storage, prefix: &str) {
    let key = format!("{prefix}/lock/exclusive");
    let mut first = expect_acquired(storage.lock(&key, "first".into()).await.unwrap());
    assert_eq!(first.record(), "first");
    let held = expect_held(storage.lock(&key, "second".into()).await.unwrap());
    assert_eq!(held.record, "first");
    storage
        .refresh_lock(&mut first, "first, later".into())
        .await
        .unwrap();
    let held = expect_held(storage.lock(&key, "second".into()).await.unwrap());
    assert_eq!(held.record, "first, later");
    storage.unlock(first).await.unwrap();
    let second = expect_acquired(storage.lock(&key, "second".into()).await.unwrap());
    assert_eq!(second.key(), key);
    storage.unlock(second).await.unwrap();
}

/// A dropped holder: a kernel lock lets go at once; a lock object stays until taken over,
/// and only as it was read: a heartbeat since makes the take-over fail, and of two processes
/// that read the same stale lock one gets it. The old holder then neither refreshes nor
/// removes the new holder's lock.
pub async fn locks_are_taken_over_only_as_read(storage: &dyn Storage, prefix: &str) {
    let key = format!("{prefix}/lock/taken-over");
    let mut old = expect_acquired(storage.lock(&key, "old".into()).await.unwrap());
    let read = expect_held(storage.lock(&key, "new".into()).await.unwrap());
    assert_eq!(read.record, "old");
    if !read.breakable() {
        let taken = storage.take_over_lock(&key, &read, "new".into()).await;
        assert!(taken.unwrap().is_none(), "a kernel lock was taken over");
        drop(old);
        let new = expect_acquired(storage.lock(&key, "new".into()).await.unwrap());
        storage.unlock(new).await.unwrap();
        return;
    }
    // A heartbeat after the read: the holder is alive, the take-over changes nothing.
    storage
        .refresh_lock(&mut old, "old, later".into())
        .await
        .unwrap();
    let taken = storage.take_over_lock(&key, &read, "new".into()).await;
    assert!(taken.unwrap().is_none(), "a refreshed lock was taken over");

    // Two processes read the same stale lock: one takes it, the other finds it changed.
    let stale = expect_held(storage.lock(&key, "new".into()).await.unwrap());
    assert_eq!(stale.record, "old, later");
    let new = storage.take_over_lock(&key, &stale, "new".into()).await;
    let new = new.unwrap().expect("the stale lock was not taken over");
    let other = storage.take_over_lock(&key, &stale, "other".into()).await;
    assert!(other.unwrap().is_none(), "a lock was taken over twice");
    assert_eq!(read_all(storage, &key).await.unwrap(), b"new");

    let refreshed = storage
        .refresh_lock(&mut old, "old, later still".into())
        .await;
    assert!(refreshed.is_err(), "a taken-over lock was refreshed");
    storage.unlock(old).await.unwrap();
    let held = expect_held(storage.lock(&key, "third".into()).await.unwrap());
    assert_eq!(held.record, "new");
    storage.unlock(new).await.unwrap();
    expect_acquired(storage.lock(&key, "third".into()).await.unwrap());
}

/// Conditional puts and deletes compare versions: an object changed since it was read is
/// neither replaced nor removed. Needs a store with versions that honours `If-Match` on PUT
/// and DELETE (the memory store, AWS S3, moto; not s3s-fs 0.14.1, which ignores it on
/// DELETE).
pub async fn conditional_writes_compare_versions(storage: &dyn Storage, prefix: &str) {
    let key = format!("{prefix}/conditional/object");
    let put = |bytes: &'static str, condition: PutIf| {
        storage.put_if(&key, PutPayload::from_bytes(bytes), condition)
    };
    let first = put("first", PutIf::Absent).await.unwrap();
    assert!(matches!(
        put("again", PutIf::Absent).await,
        Err(StorageError::AlreadyExists { .. })
    ));
    let (bytes, version) = storage.get_versioned(&key).await.unwrap();
    assert_eq!((&bytes[..], &version), (&b"first"[..], &first));

    let second = put("second", PutIf::Matches(first.clone())).await.unwrap();
    assert_ne!(second, first);
    let stale = put("stale", PutIf::Matches(first.clone())).await;
    assert!(
        matches!(stale, Err(StorageError::Changed { .. })),
        "{stale:?}"
    );
    assert!(!storage.delete_if(&key, &first).await.unwrap());
    assert_eq!(read_all(storage, &key).await.unwrap(), b"second");

    assert!(storage.delete_if(&key, &second).await.unwrap());
    assert!(matches!(
        storage.get_versioned(&key).await,
        Err(StorageError::NotFound { .. })
    ));
    let gone = put("gone", PutIf::Matches(second)).await;
    assert!(
        matches!(gone, Err(StorageError::Changed { .. })),
        "{gone:?}"
    );
    assert!(!storage.delete_if(&key, &first).await.unwrap());
}

/// Many processes take over the same stale lock at once, many times: exactly one wins each
/// round. Needs atomic conditional writes (as [`concurrent_creates_have_one_winner`]).
pub async fn concurrent_take_overs_have_one_winner(storage: Arc<dyn Storage>, prefix: &str) {
    for round in 0..20 {
        let key = format!("{prefix}/lock/race-{round}");
        let gone = expect_acquired(storage.lock(&key, "gone".into()).await.unwrap());
        // Each taker has read the lock as `stale` and decided its holder is gone.
        let stale = expect_held(storage.lock(&key, "reader".into()).await.unwrap());
        let takers: Vec<_> = (0..6)
            .map(|n| {
                let (storage, key, stale) = (storage.clone(), key.clone(), stale.clone());
                tokio::spawn(async move {
                    let record = Bytes::from(format!("taker {n}"));
                    storage.take_over_lock(&key, &stale, record).await.unwrap()
                })
            })
            .collect();
        let mut winners = Vec::new();
        for taker in takers {
            winners.extend(taker.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "round {round}: holders {winners:?}");
        assert_eq!(
            &read_all(&*storage, &key).await.unwrap()[..],
            &winners[0].record()[..]
        );
        drop(gone);
    }
}

/// `delete_many` removes every key, batches larger than one request included, and counts a
/// missing key as removed.
pub async fn delete_many_removes_every_key(storage: &dyn Storage, prefix: &str) {
    let keys: Vec<String> = (0..1003)
        .map(|n| format!("{prefix}/delete-many/{n:05}"))
        .collect();
    for key in keys.iter().step_by(50) {
        storage
            .put(key, PutPayload::from_bytes("x"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let protected = storage.delete_many(&keys).await.unwrap();
    assert!(protected.is_empty(), "{protected:?}");
    let left = storage
        .list(&format!("{prefix}/delete-many/"))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(storage.delete_many(&[]).await.unwrap().is_empty());
    // No empty prefix stays behind (the fs store removes the directories it empties), and a
    // put under the removed prefix works again.
    let deep = format!("{prefix}/delete-many/deep/er/object");
    storage
        .put(&deep, PutPayload::from_bytes("x"), PutMode::Create)
        .await
        .unwrap();
    storage
        .delete_many(std::slice::from_ref(&deep))
        .await
        .unwrap();
    let folders = storage
        .list_folders(&format!("{prefix}/delete-many/"))
        .await
        .unwrap();
    assert!(folders.is_empty(), "{folders:?}");
    storage
        .put(&deep, PutPayload::from_bytes("y"), PutMode::Create)
        .await
        .unwrap();
    storage.delete(&deep).await.unwrap();
}
