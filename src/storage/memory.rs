//! A repository in memory, for tests: the same contract as the fs and S3 stores, no I/O.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectBody, ObjectMeta, PutBody, PutMode, PutPayload, Storage, StorageError};

#[derive(Debug)]
pub struct MemoryStorage {
    name: String,
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStorage {
    /// An empty store whose location is `memory://<name>`.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryStorage {
            name: name.into(),
            objects: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every stored key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.objects().keys().cloned().collect()
    }

    /// The stored bytes of `key`, bypassing the `Storage` interface.
    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.objects().get(key).cloned()
    }

    /// Stores `bytes` under `key` as they are, without any check: for tampering in tests.
    /// Returns what was there before.
    pub fn replace_object(&self, key: &str, bytes: impl Into<Bytes>) -> Option<Bytes> {
        self.objects().insert(key.to_owned(), bytes.into())
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Bytes>> {
        // Every change is a single map operation, so a panic elsewhere cannot leave the map
        // half-updated: a poisoned lock is safe to use.
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.location())
    }

    fn not_found(key: &str) -> StorageError {
        StorageError::NotFound {
            key: key.to_owned(),
        }
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new("default")
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn location(&self) -> String {
        format!("memory://{}", self.name)
    }

    async fn put(&self, key: &str, payload: PutPayload, mode: PutMode) -> Result<(), StorageError> {
        super::validate_key(key)?;
        let bytes = match &payload.body {
            PutBody::Bytes(bytes) => bytes.clone(),
            PutBody::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| StorageError::io("read", path.display(), e))?
                .into(),
        };
        // Like S3, refuse a body that does not match the length and CRC-32 it came with.
        if bytes.len() as u64 != payload.len || crc32fast::hash(&bytes) != payload.crc32 {
            let mismatch = io::Error::new(
                io::ErrorKind::InvalidData,
                "body does not match its length and CRC-32",
            );
            return Err(StorageError::io("put", self.url(key), mismatch));
        }
        let mut objects = self.objects();
        if mode == PutMode::Create && objects.contains_key(key) {
            return Err(StorageError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        objects.insert(key.to_owned(), bytes);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<ObjectBody, StorageError> {
        super::validate_key(key)?;
        let bytes = self.object(key).ok_or_else(|| Self::not_found(key))?;
        Ok(ObjectBody::Stream(Box::new(io::Cursor::new(bytes))))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        super::validate_key(key)?;
        let bytes = self.object(key).ok_or_else(|| Self::not_found(key))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: bytes.len() as u64,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let objects = self.objects();
        let found = objects
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, bytes)| ObjectMeta {
                key: key.clone(),
                size: bytes.len() as u64,
            })
            .collect();
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        super::validate_key(key)?;
        self.objects().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::{conformance, read_all};

    #[tokio::test(flavor = "multi_thread")]
    async fn memory_storage_conforms() {
        let storage = Arc::new(MemoryStorage::new("conformance"));
        conformance::run_all(storage.clone(), "suite").await;
        conformance::concurrent_creates_have_one_winner(storage, "suite").await;
    }

    #[tokio::test]
    async fn helpers_inspect_and_tamper_with_stored_bytes() {
        let storage = MemoryStorage::default();
        assert_eq!(storage.location(), "memory://default");
        assert_eq!(MemoryStorage::new("repo").location(), "memory://repo");
        for key in ["b/2", "a/1"] {
            let payload = PutPayload::from_bytes(key.to_owned());
            storage.put(key, payload, PutMode::Create).await.unwrap();
        }
        assert_eq!(storage.keys(), ["a/1", "b/2"]);
        assert_eq!(storage.object("a/1").unwrap(), "a/1");
        assert_eq!(storage.object("c/3"), None);

        let previous = storage.replace_object("a/1", "tampered");
        assert_eq!(previous.unwrap(), "a/1");
        assert_eq!(read_all(&storage, "a/1").await.unwrap(), b"tampered");
        assert_eq!(storage.head("a/1").await.unwrap().size, 8);
    }

    #[tokio::test]
    async fn refuses_invalid_keys_and_mismatched_bodies() {
        let storage = MemoryStorage::default();
        let put = storage
            .put("../x", PutPayload::from_bytes("x"), PutMode::Create)
            .await;
        assert!(matches!(put, Err(StorageError::InvalidKey(_))), "{put:?}");
        assert!(matches!(
            storage.get("/abs").await,
            Err(StorageError::InvalidKey(_))
        ));

        let mut payload = PutPayload::from_bytes("some bytes");
        payload.crc32 ^= 1;
        let put = storage.put("object", payload, PutMode::Create).await;
        assert!(matches!(put, Err(StorageError::Io { .. })), "{put:?}");
        assert_eq!(storage.keys(), Vec::<String>::new());
    }
}
