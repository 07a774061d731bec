//! Retries and timeouts for any store: a throttled or stalled repository must neither fail a
//! command at its first hiccup nor hang it (PostgreSQL's archiver waits on archive_command).
//!
//! Each attempt runs under a timeout; an error that is worth another try
//! ([`StorageError::is_transient`]: throttling, 5xx, dropped connections, timeouts) is retried
//! with exponential backoff and full jitter for at most the policy's total time, and each
//! retry is logged at warn with its attempt number. A body that fails while being read after
//! `get` returned is the caller's to handle: the stream is not restarted.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use bytes::Bytes;

use super::{
    HeldBy, HeldLock, LockAttempt, ObjectBody, ObjectMeta, ObjectVersion, Protected, PutIf,
    PutMode, PutPayload, Storage, StorageError,
};

/// How long one request may take, and how long retrying may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// One attempt; past it the attempt counts as a transient failure.
    pub attempt_timeout: Duration,
    /// Retries stop once this much time has passed since the first attempt.
    pub total: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Retries of a refused connection stop once this much time has passed: nothing
    /// listening is far more often a wrong endpoint than a server restarting, and must not
    /// hold archive-get (and the server's recovery) for minutes.
    pub refused_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(60),
            total: Duration::from_secs(120),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            refused_total: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1`: exponential, capped, with full jitter so that
    /// many clients throttled together do not come back together.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .first_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        ceiling.mul_f64(fastrand::f64())
    }
}

#[derive(Debug)]
pub struct RetryingStorage {
    inner: Arc<dyn Storage>,
    policy: RetryPolicy,
}

impl RetryingStorage {
    pub fn new(inner: Arc<dyn Storage>, policy: RetryPolicy) -> Self {
        RetryingStorage { inner, policy }
    }

    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        attempt: F,
    ) -> Result<T, StorageError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let started = Instant::now();
        for number in 1u32.. {
            let result = match tokio::time::timeout(self.policy.attempt_timeout, attempt()).await {
                Ok(result) => result,
                Err(_) => Err(StorageError::io(
                    op,
                    format!("{}/{key}", self.inner.location()),
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no answer within {} s",
                            self.policy.attempt_timeout.as_secs_f64()
                        ),
                    ),
                )),
            };
            let error = match result {
                Err(error) if error.is_transient() => error,
                other => return other,
            };
            let pause = self.policy.backoff(number - 1);
            let budget = if error.is_refused() {
                self.policy.refused_total.min(self.policy.total)
            } else {
                self.policy.total
            };
            if started.elapsed() + pause >= budget {
                return Err(error);
            }
            tracing::warn!("{error}; retrying (attempt {} in {pause:.1?})", number + 1);
            tokio::time::sleep(pause).await;
        }
        unreachable!("the loop returns")
    }
}

#[async_trait]
impl Storage for RetryingStorage {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(&self, key: &str, payload: PutPayload, mode: PutMode) -> Result<(), StorageError> {
        // A create whose earlier attempt was stored but reported failed comes back as
        // AlreadyExists: the caller's "already there" path (compare, then succeed) covers it.
        self.run("put", key, || self.inner.put(key, payload.clone(), mode))
            .await
    }

    async fn get(&self, key: &str) -> Result<ObjectBody, StorageError> {
        self.run("get", key, || self.inner.get(key)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.run("head", key, || self.inner.head(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.run("list", prefix, || self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.run("delete", key, || self.inner.delete(key)).await
    }

    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.run("list", prefix, || self.inner.list_folders(prefix))
            .await
    }

    fn staging_dir(&self) -> Option<&Path> {
        self.inner.staging_dir()
    }

    // The inner store's lock methods, each retried as a whole: they tolerate a step that was
    // done but reported failed (see `storage::lock`).
    async fn lock(&self, key: &str, record: Bytes) -> Result<LockAttempt, StorageError> {
        self.run("lock", key, || self.inner.lock(key, record.clone()))
            .await
    }

    async fn refresh_lock(&self, lock: &mut HeldLock, record: Bytes) -> Result<(), StorageError> {
        // One attempt at a time holds the lock; the timeout drops an attempt before the next.
        let lock = tokio::sync::Mutex::new(lock);
        let key = lock.lock().await.key.clone();
        self.run("lock", &key, || async {
            let mut lock = lock.lock().await;
            self.inner.refresh_lock(&mut lock, record.clone()).await
        })
        .await
    }

    async fn unlock(&self, lock: HeldLock) -> Result<(), StorageError> {
        self.inner.unlock(lock).await
    }

    async fn take_over_lock(
        &self,
        key: &str,
        stale: &HeldBy,
        record: Bytes,
    ) -> Result<Option<HeldLock>, StorageError> {
        self.run("lock", key, || {
            self.inner.take_over_lock(key, stale, record.clone())
        })
        .await
    }

    // Versioned operations, each retried: a conditional write that was done but reported
    // failed comes back as `Changed`/`AlreadyExists`, which the lock code reads back.
    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ObjectVersion), StorageError> {
        self.run("get", key, || self.inner.get_versioned(key)).await
    }

    async fn put_if(
        &self,
        key: &str,
        payload: PutPayload,
        condition: PutIf,
    ) -> Result<ObjectVersion, StorageError> {
        self.run("put", key, || {
            self.inner.put_if(key, payload.clone(), condition.clone())
        })
        .await
    }

    async fn delete_if(&self, key: &str, version: &ObjectVersion) -> Result<bool, StorageError> {
        self.run("delete", key, || self.inner.delete_if(key, version))
            .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Protected>, StorageError> {
        let first = keys.first().map_or("", String::as_str);
        self.run("delete", first, || self.inner.delete_many(keys))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::storage::MemoryStorage;
    use crate::storage::fault::{Fault, FaultKind, FaultStorage, Op};

    fn quick(total_ms: u64, attempt_ms: u64) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_millis(attempt_ms),
            total: Duration::from_millis(total_ms),
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            refused_total: Duration::from_millis(total_ms),
        }
    }

    fn stores(policy: RetryPolicy) -> (Arc<FaultStorage>, RetryingStorage) {
        let faults = Arc::new(FaultStorage::new(Arc::new(MemoryStorage::default())));
        let retrying = RetryingStorage::new(faults.clone(), policy);
        (faults, retrying)
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_one_succeeds() {
        let (faults, store) = stores(quick(5_000, 1_000));
        let throttled = faults.inject(Fault::on(Op::Put).nth(1).fail(FaultKind::SlowDown));
        let reset = faults.inject(
            Fault::on(Op::Put)
                .nth(2)
                .fail(FaultKind::Io(io::ErrorKind::ConnectionReset)),
        );
        store
            .put("k", PutPayload::from_bytes("v"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!((throttled.fired(), reset.fired()), (1, 1));
        assert_eq!(faults.calls(Op::Put), 3);
    }

    #[tokio::test]
    async fn a_stalled_attempt_times_out_and_is_retried() {
        let (faults, store) = stores(quick(5_000, 50));
        faults.inject(Fault::on(Op::List).nth(1).delay(Duration::from_secs(30)));
        let started = Instant::now();
        store.list("").await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(faults.calls(Op::List), 2);
    }

    #[tokio::test]
    async fn retrying_stops_within_the_total_time_with_the_last_error() {
        let (faults, store) = stores(quick(200, 1_000));
        faults.inject(Fault::on(Op::Get).fail(FaultKind::SlowDown));
        let started = Instant::now();
        let err = store.get("k").await.err().unwrap();
        assert!(err.to_string().contains("SlowDown"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(faults.calls(Op::Get) > 1);
    }

    #[tokio::test]
    async fn lasting_failures_are_not_retried() {
        let (faults, store) = stores(quick(5_000, 1_000));
        faults.inject(Fault::on(Op::Get).fail(FaultKind::Forbidden));
        assert!(store.get("k").await.is_err());
        assert!(matches!(
            store.head("missing").await,
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(faults.calls(Op::Get), 1);
        assert_eq!(faults.calls(Op::Head), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_has_its_own_shorter_budget() {
        let policy = RetryPolicy {
            refused_total: Duration::ZERO,
            ..quick(5_000, 1_000)
        };
        let (faults, store) = stores(policy);
        faults.inject(
            Fault::on(Op::List)
                .nth(1)
                .fail(FaultKind::Io(io::ErrorKind::ConnectionRefused)),
        );
        let err = store.list("").await.err().unwrap();
        assert!(err.is_refused(), "{err}");
        assert_eq!(faults.calls(Op::List), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn it_conforms() {
        let (_, store) = stores(RetryPolicy::default());
        crate::storage::conformance::run_all(Arc::new(store), "retry").await;
    }
}
