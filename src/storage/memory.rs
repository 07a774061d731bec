//! A repository in memory, for tests: the same contract as the fs and S3 stores, no I/O.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ObjectBody, ObjectMeta, ObjectVersion, PutBody, PutIf, PutMode, PutPayload, Storage,
    StorageError,
};

#[derive(Debug)]
pub struct MemoryStorage {
    name: String,
    objects: Mutex<BTreeMap<String, Bytes>>,
    /// Each key's version: a number that every put of it raises.
    generations: Mutex<(u64, BTreeMap<String, u64>)>,
}

impl MemoryStorage {
    /// An empty store whose location is `memory://<name>`.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryStorage {
            name: name.into(),
            objects: Mutex::new(BTreeMap::new()),
            generations: Mutex::new((0, BTreeMap::new())),
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
        let mut objects = self.objects();
        let before = objects.get(key).cloned();
        Self::store(&mut objects, &mut self.generations(), key, bytes.into());
        before
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Bytes>> {
        // Every change is a single map operation, so a panic elsewhere cannot leave the map
        // half-updated: a poisoned lock is safe to use.
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The body of a put, checked against its length and CRC-32 as S3 does.
    async fn body_of(&self, key: &str, payload: &PutPayload) -> Result<Bytes, StorageError> {
        let bytes: Bytes = match &payload.body {
            PutBody::Bytes(bytes) => bytes.clone(),
            PutBody::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| StorageError::io("read", path.display(), e))?
                .into(),
        };
        if bytes.len() as u64 != payload.len || crc32fast::hash(&bytes) != payload.crc32 {
            let mismatch = io::Error::new(
                io::ErrorKind::InvalidData,
                "body does not match its length and CRC-32",
            );
            return Err(StorageError::io("put", self.url(key), mismatch));
        }
        Ok(bytes)
    }

    /// Stores `bytes` at `key` with a new generation, while both maps are held.
    fn store(
        objects: &mut BTreeMap<String, Bytes>,
        generations: &mut (u64, BTreeMap<String, u64>),
        key: &str,
        bytes: Bytes,
    ) -> ObjectVersion {
        generations.0 += 1;
        generations.1.insert(key.to_owned(), generations.0);
        objects.insert(key.to_owned(), bytes);
        ObjectVersion::new(generations.0.to_string())
    }

    fn generations(&self) -> MutexGuard<'_, (u64, BTreeMap<String, u64>)> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn version_of(generations: &(u64, BTreeMap<String, u64>), key: &str) -> ObjectVersion {
        ObjectVersion::new(generations.1.get(key).copied().unwrap_or(0).to_string())
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
        let bytes = self.body_of(key, &payload).await?;
        let mut objects = self.objects();
        if mode == PutMode::Create && objects.contains_key(key) {
            return Err(StorageError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        Self::store(&mut objects, &mut self.generations(), key, bytes);
        Ok(())
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ObjectVersion), StorageError> {
        super::validate_key(key)?;
        let objects = self.objects();
        let bytes = objects
            .get(key)
            .cloned()
            .ok_or_else(|| Self::not_found(key))?;
        Ok((bytes, Self::version_of(&self.generations(), key)))
    }

    async fn put_if(
        &self,
        key: &str,
        payload: PutPayload,
        condition: PutIf,
    ) -> Result<ObjectVersion, StorageError> {
        super::validate_key(key)?;
        let bytes = self.body_of(key, &payload).await?;
        // Check and store under the objects' lock: atomic, as S3's conditional put is.
        let mut objects = self.objects();
        let mut generations = self.generations();
        match condition {
            PutIf::Absent if objects.contains_key(key) => {
                return Err(StorageError::AlreadyExists {
                    key: key.to_owned(),
                });
            }
            PutIf::Matches(version)
                if !objects.contains_key(key) || Self::version_of(&generations, key) != version =>
            {
                return Err(StorageError::Changed {
                    key: key.to_owned(),
                });
            }
            _ => {}
        }
        Ok(Self::store(&mut objects, &mut generations, key, bytes))
    }

    async fn delete_if(&self, key: &str, version: &ObjectVersion) -> Result<bool, StorageError> {
        super::validate_key(key)?;
        let mut objects = self.objects();
        let generations = self.generations();
        if !objects.contains_key(key) || &Self::version_of(&generations, key) != version {
            return Ok(false);
        }
        objects.remove(key);
        Ok(true)
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
            modified: None,
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
                modified: None,
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
        conformance::conditional_writes_compare_versions(&*storage, "suite").await;
        conformance::concurrent_take_overs_have_one_winner(storage.clone(), "suite").await;
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
