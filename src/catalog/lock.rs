//! The repository lock: one `backup` or `expire` at a time.
//!
//! `lock.json` at the top of the repository records who holds it ([`LockHolder`]). On a file
//! repository the holder keeps a `flock` on that file, which the kernel drops when the process
//! dies; on S3 `lock.json` is a lock object created with `If-None-Match: *`, whose holder
//! rewrites its `heartbeat` every [`heartbeat_interval`]. A lock object whose heartbeat is
//! older than `lock_stale_after` belonged to a process that died: the next run takes it over
//! with a warning naming it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};
use crate::storage::{HeldLock, LockAttempt, Storage};

pub(super) const LOCK_KEY: &str = "lock.json";
/// How old a lock object's heartbeat may grow before its holder counts as gone.
pub const DEFAULT_LOCK_STALE_AFTER: Duration = Duration::from_secs(300);
/// A holder refreshes its heartbeat at most this far apart.
const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// How often a lock that keeps changing hands is tried again before giving up.
const ATTEMPTS: u32 = 3;

/// Who holds the repository lock: the content of `lock.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Random, unique to one holding: tells our record from another's.
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub command: String,
    pub started: DateTime<Utc>,
    pub heartbeat: DateTime<Utc>,
}

impl LockHolder {
    /// This process, running `command`, from `now`.
    pub fn this_process(command: &str, now: DateTime<Utc>) -> Self {
        LockHolder {
            owner: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            host: crate::host_name().unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            command: command.to_owned(),
            started: now,
            heartbeat: now,
        }
    }

    fn record(&self) -> Bytes {
        let mut json = serde_json::to_vec_pretty(self).expect("a lock holder serialises");
        json.push(b'\n');
        json.into()
    }

    /// The holder a record names; `None` when it is empty or unreadable.
    pub fn parse(record: &[u8]) -> Option<Self> {
        serde_json::from_slice(record).ok()
    }
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`pitr {}` on host {}, pid {}, since {}",
            self.command,
            self.host,
            self.pid,
            self.started.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }
}

/// Why a lock is refused: the message a second run prints.
#[derive(Debug)]
pub struct LockedBy {
    pub location: String,
    /// `None`: the holder has not written its record yet (or wrote an unreadable one).
    pub holder: Option<LockHolder>,
    /// The lock object goes stale (S3); otherwise the lock goes when its process exits.
    pub breakable: bool,
    pub stale_after: Duration,
    pub now: DateTime<Utc>,
}

impl fmt::Display for LockedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "repository {} is locked by ", self.location)?;
        match &self.holder {
            Some(holder) => {
                write!(f, "{holder}")?;
                if self.breakable {
                    let age = (self.now - holder.heartbeat).num_seconds().max(0);
                    write!(f, " (heartbeat {age} s ago)")?;
                }
            }
            None => write!(f, "another pitr process")?,
        }
        if self.breakable {
            write!(
                f,
                ": wait for it to finish; if that process is gone, the next run takes the lock \
                 over once its heartbeat is older than lock_stale_after ({} s)",
                self.stale_after.as_secs()
            )
        } else {
            write!(
                f,
                ": wait for it to finish (the lock goes when that process exits)"
            )
        }
    }
}

/// What to do about a lock someone holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockDecision {
    Refuse,
    /// The holder is gone: break its lock and take it.
    TakeOver,
}

/// A held lock is taken over only if it can be broken (a lock object) and its holder is
/// gone: its heartbeat is older than `stale_after`, or it has no readable record (a lock
/// object is written whole, so an unreadable one is no one's).
pub fn decide(
    holder: Option<&LockHolder>,
    breakable: bool,
    now: DateTime<Utc>,
    stale_after: Duration,
) -> LockDecision {
    if !breakable {
        return LockDecision::Refuse;
    }
    let stale = match holder {
        None => true,
        Some(holder) => (now - holder.heartbeat)
            .to_std()
            .is_ok_and(|age| age > stale_after),
    };
    if stale {
        LockDecision::TakeOver
    } else {
        LockDecision::Refuse
    }
}

/// How often a holder rewrites its heartbeat: well inside `stale_after`.
pub fn heartbeat_interval(stale_after: Duration) -> Duration {
    (stale_after / 4).clamp(Duration::from_millis(100), MAX_HEARTBEAT_INTERVAL)
}

/// The repository lock, held until [`RepoLock::release`] (or, best effort, until dropped).
/// While held, a task rewrites its heartbeat.
#[must_use = "the lock is released when dropped"]
#[derive(Debug)]
pub struct RepoLock {
    storage: Arc<dyn Storage>,
    held: Arc<tokio::sync::Mutex<Option<HeldLock>>>,
    heartbeat: tokio::task::JoinHandle<()>,
    holder: LockHolder,
}

impl RepoLock {
    fn start(
        storage: Arc<dyn Storage>,
        held: HeldLock,
        holder: LockHolder,
        stale_after: Duration,
    ) -> Self {
        let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
        let heartbeat = tokio::spawn(keep_heartbeat(
            storage.clone(),
            held.clone(),
            holder.clone(),
            heartbeat_interval(stale_after),
        ));
        RepoLock {
            storage,
            held,
            heartbeat,
            holder,
        }
    }

    /// Who we are, as the lock records it.
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }

    /// Lets the lock go. A failure is only logged: the command's outcome stands, and a lock
    /// left behind goes stale.
    pub async fn release(self) {
        // The lock first, then the task: a heartbeat in flight holds it and completes, and is
        // never cut off mid-request (a put the store finishes after the unlock would leave
        // the lock object behind); the task finds nothing held and ends.
        let held = self.held.lock().await.take();
        self.heartbeat.abort();
        if let Some(held) = held {
            if let Err(e) = self.storage.unlock(held).await {
                tracing::warn!("could not release the repository lock: {e}");
            }
        }
    }
}

impl Drop for RepoLock {
    /// Best effort: a lock object is removed by a task if the runtime still runs one; a kernel
    /// lock goes with its file either way.
    fn drop(&mut self) {
        self.heartbeat.abort();
        let Ok(mut held) = self.held.try_lock() else {
            return;
        };
        let Some(held) = held.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let storage = self.storage.clone();
            runtime.spawn(async move { storage.unlock(held).await });
        }
    }
}

async fn keep_heartbeat(
    storage: Arc<dyn Storage>,
    held: Arc<tokio::sync::Mutex<Option<HeldLock>>>,
    mut holder: LockHolder,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        holder.heartbeat = Utc::now();
        let mut held = held.lock().await;
        let Some(lock) = held.as_mut() else {
            return;
        };
        if let Err(e) = storage.refresh_lock(lock, holder.record()).await {
            tracing::warn!("could not refresh the repository lock's heartbeat: {e}");
        }
    }
}

impl Catalog {
    /// Takes the repository lock for `command` (`backup`, `expire`), at once or not at all:
    /// a lock held by a live process is refused with [`CatalogError::Locked`] naming it; a
    /// stale one is taken over with a warning. Hold the returned guard for the whole run and
    /// end with [`RepoLock::release`].
    pub async fn lock(&self, command: &str) -> Result<RepoLock, CatalogError> {
        let holder = LockHolder::this_process(command, Utc::now());
        let mut attempt = 1;
        loop {
            let stale = match self.storage.lock(LOCK_KEY, holder.record()).await? {
                LockAttempt::Acquired(held) => {
                    return Ok(RepoLock::start(
                        self.storage.clone(),
                        held,
                        holder,
                        self.lock_stale_after,
                    ));
                }
                LockAttempt::Held(stale) => stale,
            };
            let (record, breakable) = (&stale.record, stale.breakable());
            let other = LockHolder::parse(record);
            let now = Utc::now();
            let decision = decide(other.as_ref(), breakable, now, self.lock_stale_after);
            if decision == LockDecision::Refuse || attempt == ATTEMPTS {
                return Err(CatalogError::Locked(Box::new(LockedBy {
                    location: self.location(),
                    holder: other,
                    breakable,
                    stale_after: self.lock_stale_after,
                    now,
                })));
            }
            match &other {
                Some(other) => tracing::warn!(
                    "taking over the repository lock of {other}: its heartbeat is {} s old, \
                     older than lock_stale_after ({} s), so that process is taken as gone",
                    (now - other.heartbeat).num_seconds(),
                    self.lock_stale_after.as_secs()
                ),
                None => tracing::warn!(
                    "taking over a repository lock with an unreadable record ({} bytes)",
                    record.len()
                ),
            }
            // Compare-and-swap on the version read: if another process took it over (or the
            // holder refreshed it) first, this changes nothing and the next attempt sees them.
            let taken = self
                .storage
                .take_over_lock(LOCK_KEY, &stale, holder.record())
                .await?;
            if let Some(held) = taken {
                return Ok(RepoLock::start(
                    self.storage.clone(),
                    held,
                    holder,
                    self.lock_stale_after,
                ));
            }
            attempt += 1;
        }
    }

    /// How old a lock object's heartbeat may grow before [`Catalog::lock`] takes it over.
    pub fn with_lock_stale_after(mut self, stale_after: Duration) -> Self {
        self.lock_stale_after = stale_after;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemoryStorage, PutMode, PutPayload};

    fn holder_at(heartbeat: DateTime<Utc>) -> LockHolder {
        LockHolder {
            heartbeat,
            ..LockHolder::this_process("backup", heartbeat)
        }
    }

    #[test]
    fn only_a_stale_or_unreadable_lock_object_is_taken_over() {
        let now = Utc::now();
        let limit = Duration::from_secs(300);
        let fresh = holder_at(now - chrono::Duration::seconds(299));
        let stale = holder_at(now - chrono::Duration::seconds(301));
        let future = holder_at(now + chrono::Duration::seconds(3600));
        use LockDecision::*;
        assert_eq!(decide(Some(&fresh), true, now, limit), Refuse);
        assert_eq!(decide(Some(&future), true, now, limit), Refuse);
        assert_eq!(decide(Some(&stale), true, now, limit), TakeOver);
        assert_eq!(decide(None, true, now, limit), TakeOver);
        // A kernel lock's holder is alive, whatever its record says.
        assert_eq!(decide(Some(&stale), false, now, limit), Refuse);
        assert_eq!(decide(None, false, now, limit), Refuse);
    }

    #[test]
    fn heartbeats_come_well_inside_the_limit() {
        assert_eq!(
            heartbeat_interval(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn the_refusal_names_the_holder_and_what_to_do() {
        let now = Utc::now();
        let holder = LockHolder {
            host: "db1".into(),
            pid: 4242,
            started: "2026-11-22T01:02:03Z".parse().unwrap(),
            ..holder_at(now - chrono::Duration::seconds(12))
        };
        let locked = LockedBy {
            location: "s3://bucket/repo".into(),
            holder: Some(holder),
            breakable: true,
            stale_after: Duration::from_secs(300),
            now,
        };
        assert_eq!(
            locked.to_string(),
            "repository s3://bucket/repo is locked by `pitr backup` on host db1, pid 4242, \
             since 2026-11-22T01:02:03Z (heartbeat 12 s ago): wait for it to finish; if that \
             process is gone, the next run takes the lock over once its heartbeat is older \
             than lock_stale_after (300 s)"
        );
        let kernel = LockedBy {
            holder: None,
            breakable: false,
            ..locked
        };
        assert!(
            kernel
                .to_string()
                .ends_with("locked by another pitr process: wait for it to finish (the lock goes when that process exits)"),
            "{kernel}"
        );
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_stale_holders_are_taken_over() {
        let storage = Arc::new(MemoryStorage::new("lock"));
        let catalog = Catalog::new(storage.clone());
        let first = catalog.lock("backup").await.unwrap();
        assert_eq!(first.holder().command, "backup");
        let refused = catalog.lock("expire").await.unwrap_err();
        let CatalogError::Locked(locked) = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!(locked.holder.as_ref(), Some(first.holder()));
        first.release().await;
        assert_eq!(storage.keys(), Vec::<String>::new());

        // A holder that died an hour ago.
        let gone = holder_at(Utc::now() - chrono::Duration::hours(1));
        let planted = PutPayload::from_bytes(gone.record());
        storage
            .put(LOCK_KEY, planted, PutMode::Create)
            .await
            .unwrap();
        let second = catalog.lock("expire").await.unwrap();
        let record = LockHolder::parse(&storage.object(LOCK_KEY).unwrap()).unwrap();
        assert_eq!(&record, second.holder());
        second.release().await;
    }

    /// A store that applies a conditional put at once but answers it late, as S3 does when
    /// a request is cut off on the client's side after the server took it.
    #[derive(Debug)]
    struct LateAnswers {
        inner: Arc<MemoryStorage>,
        answering: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Storage for LateAnswers {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn put(
            &self,
            key: &str,
            payload: PutPayload,
            mode: PutMode,
        ) -> Result<(), crate::storage::StorageError> {
            self.inner.put(key, payload, mode).await
        }
        async fn get(
            &self,
            key: &str,
        ) -> Result<crate::storage::ObjectBody, crate::storage::StorageError> {
            self.inner.get(key).await
        }
        async fn head(
            &self,
            key: &str,
        ) -> Result<crate::storage::ObjectMeta, crate::storage::StorageError> {
            self.inner.head(key).await
        }
        async fn list(
            &self,
            prefix: &str,
        ) -> Result<Vec<crate::storage::ObjectMeta>, crate::storage::StorageError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), crate::storage::StorageError> {
            self.inner.delete(key).await
        }
        async fn get_versioned(
            &self,
            key: &str,
        ) -> Result<(Bytes, crate::storage::ObjectVersion), crate::storage::StorageError> {
            self.inner.get_versioned(key).await
        }
        async fn put_if(
            &self,
            key: &str,
            payload: PutPayload,
            condition: crate::storage::PutIf,
        ) -> Result<crate::storage::ObjectVersion, crate::storage::StorageError> {
            let version = self.inner.put_if(key, payload, condition).await;
            if version.is_ok() {
                self.answering
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            version
        }
        async fn delete_if(
            &self,
            key: &str,
            version: &crate::storage::ObjectVersion,
        ) -> Result<bool, crate::storage::StorageError> {
            self.inner.delete_if(key, version).await
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_release_during_a_heartbeat_leaves_no_lock_behind() {
        let inner = Arc::new(MemoryStorage::new("late"));
        let storage = Arc::new(LateAnswers {
            inner: inner.clone(),
            answering: Default::default(),
        });
        let catalog =
            Catalog::new(storage.clone()).with_lock_stale_after(Duration::from_millis(400));
        let lock = catalog.lock("backup").await.unwrap();
        // The acquiring put was answered late too; wait for a heartbeat's.
        storage
            .answering
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !storage.answering.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "no heartbeat came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The heartbeat's put is stored, its answer still on the way.
        lock.release().await;
        assert!(inner.object(LOCK_KEY).is_none(), "the lock object stayed");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_holder_keeps_its_heartbeat_fresh() {
        let storage = Arc::new(MemoryStorage::new("heartbeat"));
        let catalog =
            Catalog::new(storage.clone()).with_lock_stale_after(Duration::from_millis(400));
        let lock = catalog.lock("backup").await.unwrap();
        let started = lock.holder().heartbeat;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let record = LockHolder::parse(&storage.object(LOCK_KEY).unwrap()).unwrap();
            if record.heartbeat > started {
                assert_eq!(record.owner, lock.holder().owner);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no heartbeat came");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Refreshed, the lock is not stale: a second run is still refused.
        assert!(matches!(
            catalog.lock("backup").await,
            Err(CatalogError::Locked(_))
        ));
        lock.release().await;
    }
}
