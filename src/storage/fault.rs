//! A wrapper that injects faults into any store, for tests: fail the Nth put, throttle, time
//! out, delay, truncate or corrupt a get, report a put failed after it was stored.
//!
//! Rules are added through `&self`, so a test keeps an `Arc<FaultStorage>`, hands a clone to
//! the code under test as `Arc<dyn Storage>`, and adds rules or reads counts meanwhile:
//!
//! ```
//! # use std::{io, sync::Arc};
//! # use pitr::storage::MemoryStorage;
//! # use pitr::storage::fault::{Fault, FaultKind, FaultStorage, Op};
//! let store = Arc::new(FaultStorage::new(Arc::new(MemoryStorage::default())));
//! let third_data_put = store.inject(
//!     Fault::on(Op::Put)
//!         .matching("/data/")
//!         .nth(3)
//!         .fail(FaultKind::Io(io::ErrorKind::Other)),
//! );
//! // … run the code under test with `store.clone()` …
//! assert_eq!(third_data_put.fired(), 0);
//! ```
//!
//! Each rule counts the calls it matches (its op and key filter) from when it is injected,
//! and hits the ones it selects. When several rules hit one call, in injection order: every
//! delay, then the first failure (which skips the inner store and all that follows), then
//! the inner call, then every truncation and byte flip, stacked, or the first put failure.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::{ObjectBody, ObjectMeta, PutMode, PutPayload, Storage, StorageError};

/// A [`Storage`] operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }
}

/// The error an injected failure returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// [`StorageError::Io`] with this kind.
    Io(io::ErrorKind),
    /// S3 throttling: [`StorageError::S3`] with a message starting `SlowDown:`.
    SlowDown,
    /// [`StorageError::Io`] with [`io::ErrorKind::TimedOut`].
    Timeout,
    /// S3's 403: [`StorageError::S3`] with status 403, not transient.
    Forbidden,
    /// [`StorageError::NotFound`].
    NotFound,
    /// [`StorageError::AlreadyExists`].
    AlreadyExists,
}

impl FaultKind {
    fn error(self, op: Op, location: String, key: &str) -> StorageError {
        let op = op.name();
        match self {
            FaultKind::Io(kind) => StorageError::Io {
                op,
                location,
                source: io::Error::new(kind, "injected fault"),
            },
            FaultKind::Timeout => StorageError::Io {
                op,
                location,
                source: io::Error::new(io::ErrorKind::TimedOut, "injected timeout"),
            },
            FaultKind::SlowDown => StorageError::S3 {
                op,
                location,
                message: "SlowDown: Please reduce your request rate (injected fault)".to_owned(),
                status: Some(503),
                transient: true,
            },
            FaultKind::Forbidden => StorageError::S3 {
                op,
                location,
                message: "AccessDenied: Access Denied (injected fault)".to_owned(),
                status: Some(403),
                transient: false,
            },
            FaultKind::NotFound => StorageError::NotFound {
                key: key.to_owned(),
            },
            FaultKind::AlreadyExists => StorageError::AlreadyExists {
                key: key.to_owned(),
            },
        }
    }
}

/// Which of its matching calls a rule hits, counted from 1.
#[derive(Clone, Copy, Debug)]
enum Selection {
    Every,
    Nth(u64),
    FromNth(u64),
}

#[derive(Clone, Copy, Debug)]
enum Effect {
    Fail(FaultKind),
    Delay(Duration),
    TruncateAfter(u64),
    FlipByte(u64),
    FailAfterPut(FaultKind),
}

/// The calls a fault applies to: `Fault::on(op)`, optionally narrowed; by default every call
/// of that op. An effect method turns it into a [`Fault`].
#[derive(Clone, Debug)]
#[must_use = "give the target an effect, such as .fail(kind)"]
pub struct FaultTarget {
    op: Op,
    key_contains: Option<String>,
    selection: Selection,
}

/// A rule for [`FaultStorage::inject`]: which calls, and what happens to them.
#[derive(Clone, Debug)]
pub struct Fault {
    target: FaultTarget,
    effect: Effect,
}

impl Fault {
    /// Calls of `op`.
    pub fn on(op: Op) -> FaultTarget {
        FaultTarget {
            op,
            key_contains: None,
            selection: Selection::Every,
        }
    }
}

impl FaultTarget {
    /// Only calls whose key (for `list`, the prefix) contains `part`.
    pub fn matching(mut self, part: &str) -> Self {
        self.key_contains = Some(part.to_owned());
        self
    }

    /// Only the `n`th matching call (from 1).
    pub fn nth(mut self, n: u64) -> Self {
        assert!(n > 0, "calls are counted from 1");
        self.selection = Selection::Nth(n);
        self
    }

    /// The `n`th matching call (from 1) and every one after it.
    pub fn from_nth(mut self, n: u64) -> Self {
        assert!(n > 0, "calls are counted from 1");
        self.selection = Selection::FromNth(n);
        self
    }

    /// Fails the call with `kind`, without calling the inner store.
    pub fn fail(self, kind: FaultKind) -> Fault {
        self.with(Effect::Fail(kind))
    }

    /// Sleeps for `delay`, then calls the inner store as usual.
    pub fn delay(self, delay: Duration) -> Fault {
        self.with(Effect::Delay(delay))
    }

    /// A get whose stream ends after `len` bytes. Panics unless the op is [`Op::Get`].
    pub fn truncate_after(self, len: u64) -> Fault {
        self.only_on(Op::Get, "truncate_after");
        self.with(Effect::TruncateAfter(len))
    }

    /// A get whose byte at `offset` is flipped (XOR 0xFF); an offset past the end changes
    /// nothing. Panics unless the op is [`Op::Get`].
    pub fn flip_byte(self, offset: u64) -> Fault {
        self.only_on(Op::Get, "flip_byte");
        self.with(Effect::FlipByte(offset))
    }

    /// A put that is stored by the inner store, then reported failed with `kind`. Panics
    /// unless the op is [`Op::Put`].
    pub fn fail_after_put(self, kind: FaultKind) -> Fault {
        self.only_on(Op::Put, "fail_after_put");
        self.with(Effect::FailAfterPut(kind))
    }

    fn only_on(&self, op: Op, effect: &str) {
        assert_eq!(self.op, op, "{effect} applies to Op::{op:?} only");
    }

    fn with(self, effect: Effect) -> Fault {
        Fault {
            target: self,
            effect,
        }
    }
}

/// Tells how often an injected rule has fired; still valid after [`FaultStorage::clear`].
#[derive(Clone, Debug)]
pub struct FaultHandle {
    fired: Arc<AtomicU64>,
}

impl FaultHandle {
    /// How many calls this rule's effect has been applied to.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Rule {
    fault: Fault,
    matched: u64,
    fired: Arc<AtomicU64>,
}

impl Rule {
    /// Counts the call if it matches; returns the effect if this call is selected.
    fn hit(&mut self, op: Op, key: &str) -> Option<Hit> {
        let target = &self.fault.target;
        let key_matches = target
            .key_contains
            .as_deref()
            .is_none_or(|part| key.contains(part));
        if target.op != op || !key_matches {
            return None;
        }
        self.matched += 1;
        let selected = match target.selection {
            Selection::Every => true,
            Selection::Nth(n) => self.matched == n,
            Selection::FromNth(n) => self.matched >= n,
        };
        selected.then(|| Hit {
            effect: self.fault.effect,
            fired: self.fired.clone(),
        })
    }
}

/// A selected rule's effect, for one call.
struct Hit {
    effect: Effect,
    fired: Arc<AtomicU64>,
}

impl Hit {
    fn fire(&self) {
        self.fired.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    calls: HashMap<Op, u64>,
}

/// Any [`Storage`], with faults injected by the rules given to [`FaultStorage::inject`].
#[derive(Debug)]
pub struct FaultStorage {
    inner: Arc<dyn Storage>,
    state: Mutex<State>,
}

impl FaultStorage {
    /// Wraps `inner`, with no rules: every call passes through unchanged.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        FaultStorage {
            inner,
            state: Mutex::default(),
        }
    }

    /// Adds a rule, applied to calls from now on.
    pub fn inject(&self, fault: Fault) -> FaultHandle {
        let fired = Arc::new(AtomicU64::new(0));
        self.state().rules.push(Rule {
            fault,
            matched: 0,
            fired: fired.clone(),
        });
        FaultHandle { fired }
    }

    /// Removes every rule; call counts are kept.
    pub fn clear(&self) {
        self.state().rules.clear();
    }

    /// How many calls of `op` this store has received, faulty or not.
    pub fn calls(&self, op: Op) -> u64 {
        self.state().calls.get(&op).copied().unwrap_or(0)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Counters and rules stay consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the call, applies delays and failures; returns the hits left for later.
    async fn before(&self, op: Op, key: &str) -> Result<Vec<Hit>, StorageError> {
        let hits: Vec<Hit> = {
            let mut state = self.state();
            *state.calls.entry(op).or_default() += 1;
            state
                .rules
                .iter_mut()
                .filter_map(|rule| rule.hit(op, key))
                .collect()
        };
        for hit in &hits {
            if let Effect::Delay(delay) = hit.effect {
                hit.fire();
                tokio::time::sleep(delay).await;
            }
        }
        for hit in &hits {
            if let Effect::Fail(kind) = hit.effect {
                hit.fire();
                return Err(self.error(kind, op, key));
            }
        }
        Ok(hits)
    }

    fn error(&self, kind: FaultKind, op: Op, key: &str) -> StorageError {
        kind.error(op, format!("{}/{key}", self.inner.location()), key)
    }
}

#[async_trait]
impl Storage for FaultStorage {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(&self, key: &str, payload: PutPayload, mode: PutMode) -> Result<(), StorageError> {
        let hits = self.before(Op::Put, key).await?;
        self.inner.put(key, payload, mode).await?;
        for hit in &hits {
            if let Effect::FailAfterPut(kind) = hit.effect {
                hit.fire();
                return Err(self.error(kind, Op::Put, key));
            }
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<ObjectBody, StorageError> {
        let hits = self.before(Op::Get, key).await?;
        let mut body = self.inner.get(key).await?;
        for hit in &hits {
            body = match hit.effect {
                Effect::TruncateAfter(len) => {
                    ObjectBody::Stream(Box::new(stream_of(body).take(len)))
                }
                Effect::FlipByte(offset) => ObjectBody::Stream(Box::new(FlipByte {
                    inner: stream_of(body),
                    offset,
                    position: 0,
                })),
                _ => continue,
            };
            hit.fire();
        }
        Ok(body)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.before(Op::Head, key).await?;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.before(Op::List, prefix).await?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.before(Op::Delete, key).await?;
        self.inner.delete(key).await
    }

    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.before(Op::List, prefix).await?;
        self.inner.list_folders(prefix).await
    }

    fn staging_dir(&self) -> Option<&std::path::Path> {
        self.inner.staging_dir()
    }

    // Locks pass through untouched: the inner store's own mechanism (a kernel lock on fs).
    async fn lock(
        &self,
        key: &str,
        record: bytes::Bytes,
    ) -> Result<super::LockAttempt, StorageError> {
        self.inner.lock(key, record).await
    }

    async fn refresh_lock(
        &self,
        lock: &mut super::HeldLock,
        record: bytes::Bytes,
    ) -> Result<(), StorageError> {
        self.inner.refresh_lock(lock, record).await
    }

    async fn unlock(&self, lock: super::HeldLock) -> Result<(), StorageError> {
        self.inner.unlock(lock).await
    }

    async fn take_over_lock(
        &self,
        key: &str,
        stale: &super::HeldBy,
        record: bytes::Bytes,
    ) -> Result<Option<super::HeldLock>, StorageError> {
        self.inner.take_over_lock(key, stale, record).await
    }

    async fn get_versioned(
        &self,
        key: &str,
    ) -> Result<(bytes::Bytes, super::ObjectVersion), StorageError> {
        self.before(Op::Get, key).await?;
        self.inner.get_versioned(key).await
    }

    async fn put_if(
        &self,
        key: &str,
        payload: PutPayload,
        condition: super::PutIf,
    ) -> Result<super::ObjectVersion, StorageError> {
        self.before(Op::Put, key).await?;
        self.inner.put_if(key, payload, condition).await
    }

    async fn delete_if(
        &self,
        key: &str,
        version: &super::ObjectVersion,
    ) -> Result<bool, StorageError> {
        self.before(Op::Delete, key).await?;
        self.inner.delete_if(key, version).await
    }
}

type Stream = Box<dyn AsyncRead + Send + Unpin>;

fn stream_of(body: ObjectBody) -> Stream {
    match body {
        ObjectBody::File(file) => Box::new(tokio::fs::File::from_std(file)),
        ObjectBody::Stream(stream) => stream,
    }
}

/// Flips the byte at `offset` of a stream as it passes.
struct FlipByte {
    inner: Stream,
    offset: u64,
    /// Where in the stream the next read starts.
    position: u64,
}

impl AsyncRead for FlipByte {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &mut buf.filled_mut()[start..];
        let end = this.position + read.len() as u64;
        if (this.position..end).contains(&this.offset) {
            read[(this.offset - this.position) as usize] ^= 0xFF;
        }
        this.position = end;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use futures_util::FutureExt;

    use super::*;
    use crate::storage::{FsStorage, MemoryStorage, conformance, read_all};

    fn over_memory() -> (Arc<MemoryStorage>, FaultStorage) {
        let memory = Arc::new(MemoryStorage::default());
        (memory.clone(), FaultStorage::new(memory))
    }

    async fn put(storage: &dyn Storage, key: &str) -> Result<(), StorageError> {
        let payload = PutPayload::from_bytes(key.to_owned());
        storage.put(key, payload, PutMode::Overwrite).await
    }

    fn io_kind(result: Result<(), StorageError>) -> Option<io::ErrorKind> {
        match result {
            Err(StorageError::Io { source, .. }) => Some(source.kind()),
            _ => None,
        }
    }

    /// Reads a body in small reads, so that effects must keep their place across them.
    async fn read_in_chunks(body: ObjectBody) -> Vec<u8> {
        let mut stream = stream_of(body);
        let (mut out, mut chunk) = (Vec::new(), [0; 1000]);
        loop {
            match stream.read(&mut chunk).await.unwrap() {
                0 => return out,
                n => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn test_data(len: u32) -> Bytes {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn without_rules_conforms_over_memory() {
        let (_, store) = over_memory();
        let store = Arc::new(store);
        conformance::run_all(store.clone(), "suite").await;
        conformance::concurrent_creates_have_one_winner(store.clone(), "suite").await;
        assert!(store.calls(Op::Put) > 0 && store.calls(Op::List) > 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn without_rules_conforms_over_fs() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStorage::new(dir.path().join("repo"));
        let store = Arc::new(FaultStorage::new(Arc::new(fs)));
        assert_eq!(
            store.staging_dir(),
            Some(dir.path().join("repo/.tmp").as_path())
        );
        assert_eq!(
            store.location(),
            format!("file://{}/repo", dir.path().display())
        );
        conformance::run_all(store.clone(), "suite").await;
        // With no rule hit, a local file stays a file.
        let body = store.get("suite/round-trip/object").await.unwrap();
        assert!(matches!(body, ObjectBody::File(_)));
    }

    #[tokio::test]
    async fn nth_hits_only_that_call() {
        let (memory, store) = over_memory();
        let second = store.inject(
            Fault::on(Op::Put)
                .nth(2)
                .fail(FaultKind::Io(io::ErrorKind::Other)),
        );
        assert_eq!(io_kind(put(&store, "a").await), None);
        assert_eq!(io_kind(put(&store, "b").await), Some(io::ErrorKind::Other));
        assert_eq!(io_kind(put(&store, "c").await), None);
        // The failed put never reached the inner store.
        assert_eq!(memory.keys(), ["a", "c"]);
        assert_eq!((second.fired(), store.calls(Op::Put)), (1, 3));
    }

    #[tokio::test]
    async fn from_nth_and_the_default_hit_every_later_call() {
        let (_, store) = over_memory();
        put(&store, "a").await.unwrap();
        let from_second = store.inject(Fault::on(Op::Head).from_nth(2).fail(FaultKind::NotFound));
        let every = store.inject(Fault::on(Op::Delete).fail(FaultKind::Timeout));
        let mut failed = Vec::new();
        for _ in 0..4 {
            failed.push(store.head("a").await.is_err());
        }
        assert_eq!(failed, [false, true, true, true]);
        for _ in 0..2 {
            assert_eq!(
                io_kind(store.delete("a").await),
                Some(io::ErrorKind::TimedOut)
            );
        }
        assert_eq!((from_second.fired(), every.fired()), (3, 2));
    }

    #[tokio::test]
    async fn failure_kinds_become_storage_errors_without_calling_the_inner_store() {
        let (memory, counting) = over_memory();
        let counting = Arc::new(counting);
        let store = FaultStorage::new(counting.clone());
        memory.replace_object("k", "v");
        let kinds = [
            FaultKind::Io(io::ErrorKind::PermissionDenied),
            FaultKind::SlowDown,
            FaultKind::Timeout,
            FaultKind::NotFound,
            FaultKind::AlreadyExists,
        ];
        for kind in kinds {
            store.clear();
            let rule = store.inject(Fault::on(Op::Get).fail(kind));
            let error = store.get("k").await.err().unwrap();
            let as_expected = match (kind, &error) {
                (FaultKind::Io(want), StorageError::Io { source, .. }) => source.kind() == want,
                (FaultKind::SlowDown, StorageError::S3 { message, .. }) => {
                    message.starts_with("SlowDown:")
                }
                (FaultKind::Timeout, StorageError::Io { source, .. }) => {
                    source.kind() == io::ErrorKind::TimedOut
                }
                (FaultKind::NotFound, StorageError::NotFound { key }) => key == "k",
                (FaultKind::AlreadyExists, StorageError::AlreadyExists { key }) => key == "k",
                _ => false,
            };
            assert!(as_expected, "{kind:?} gave {error:?}");
            assert_eq!(rule.fired(), 1);
        }
        assert_eq!((store.calls(Op::Get), counting.calls(Op::Get)), (5, 0));
        store.clear();
        assert_eq!(read_all(&store, "k").await.unwrap(), b"v");
    }

    #[tokio::test]
    async fn key_filter_restricts_the_rule() {
        let (memory, store) = over_memory();
        let rule = store.inject(
            Fault::on(Op::Put)
                .matching("/data/")
                .nth(2)
                .fail(FaultKind::SlowDown),
        );
        put(&store, "x/data/1").await.unwrap();
        put(&store, "x/meta/1").await.unwrap();
        put(&store, "x/meta/2").await.unwrap();
        assert!(matches!(
            put(&store, "x/data/2").await,
            Err(StorageError::S3 { .. })
        ));
        put(&store, "x/data/3").await.unwrap();
        assert_eq!(rule.fired(), 1);
        assert!(memory.object("x/data/2").is_none());

        // For list, the filter applies to the prefix.
        let listing = store.inject(
            Fault::on(Op::List)
                .matching("meta")
                .fail(FaultKind::Timeout),
        );
        assert_eq!(store.list("x/data/").await.unwrap().len(), 2);
        assert!(store.list("x/meta/").await.is_err());
        assert_eq!((listing.fired(), store.calls(Op::List)), (1, 2));
    }

    #[tokio::test]
    async fn truncated_get_yields_exactly_n_bytes() {
        let (memory, store) = over_memory();
        let data = test_data(10_000);
        memory.replace_object("k", data.clone());
        let rule = store.inject(Fault::on(Op::Get).nth(1).truncate_after(4_321));
        assert_eq!(read_all(&store, "k").await.unwrap(), data[..4_321]);
        assert_eq!(read_all(&store, "k").await.unwrap(), data);
        assert_eq!(rule.fired(), 1);
    }

    #[tokio::test]
    async fn flipped_byte_differs_at_exactly_that_offset() {
        let (memory, store) = over_memory();
        let data = test_data(100_000);
        memory.replace_object("k", data.clone());
        let inside = store.inject(Fault::on(Op::Get).nth(1).flip_byte(70_500));
        let past_end = store.inject(Fault::on(Op::Get).nth(2).flip_byte(100_000));

        let flipped = read_in_chunks(store.get("k").await.unwrap()).await;
        assert_eq!(flipped.len(), data.len());
        let differing: Vec<usize> = (0..data.len()).filter(|&i| flipped[i] != data[i]).collect();
        assert_eq!(differing, [70_500]);
        assert_eq!(flipped[70_500], data[70_500] ^ 0xFF);

        assert_eq!(read_in_chunks(store.get("k").await.unwrap()).await, data);
        assert_eq!((inside.fired(), past_end.fired()), (1, 1));
    }

    /// Local files become streams when a rule changes them.
    #[tokio::test(flavor = "multi_thread")]
    async fn corrupted_gets_stream_local_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FaultStorage::new(Arc::new(FsStorage::new(dir.path().to_owned())));
        let data = test_data(3_000_000);
        let payload = PutPayload::from_bytes(data.clone());
        store.put("k", payload, PutMode::Create).await.unwrap();
        store.inject(Fault::on(Op::Get).nth(1).truncate_after(2_500_001));
        store.inject(Fault::on(Op::Get).nth(2).flip_byte(2_999_999));

        assert_eq!(read_all(&store, "k").await.unwrap(), data[..2_500_001]);
        let flipped = read_all(&store, "k").await.unwrap();
        assert_eq!(flipped[..2_999_999], data[..2_999_999]);
        assert_eq!(flipped[2_999_999], data[2_999_999] ^ 0xFF);
    }

    #[tokio::test]
    async fn put_reported_failed_is_stored_nonetheless() {
        let (memory, store) = over_memory();
        let rule = store.inject(Fault::on(Op::Put).fail_after_put(FaultKind::Timeout));
        assert_eq!(
            io_kind(put(&store, "a").await),
            Some(io::ErrorKind::TimedOut)
        );
        assert_eq!(memory.object("a").unwrap(), "a");
        // When the inner put fails, its own error is the answer and the rule does not fire.
        let again = store
            .put("a", PutPayload::from_bytes("b"), PutMode::Create)
            .await;
        assert!(
            matches!(again, Err(StorageError::AlreadyExists { .. })),
            "{again:?}"
        );
        assert_eq!((rule.fired(), memory.object("a").unwrap()), (1, "a".into()));
    }

    #[tokio::test]
    async fn delay_delays_then_calls_the_inner_store() {
        let (memory, store) = over_memory();
        let delay = Duration::from_millis(100);
        let rule = store.inject(Fault::on(Op::Put).nth(2).delay(delay));

        // Undelayed calls complete at their first poll: the memory store never waits.
        assert!(matches!(put(&store, "a").now_or_never(), Some(Ok(()))));
        let started = Instant::now();
        let mut second = Box::pin(put(&store, "b"));
        assert!((&mut second).now_or_never().is_none(), "not delayed");
        assert!(
            memory.object("b").is_none(),
            "stored before the delay ended"
        );
        second.await.unwrap();
        assert!(started.elapsed() >= delay);
        assert!(memory.object("b").is_some());
        assert!(matches!(put(&store, "c").now_or_never(), Some(Ok(()))));
        assert_eq!(rule.fired(), 1);
    }

    #[tokio::test]
    async fn rules_hitting_one_call_compose() {
        let (memory, store) = over_memory();
        memory.replace_object("k", test_data(100));
        let truncate = store.inject(Fault::on(Op::Get).truncate_after(10));
        let flip = store.inject(Fault::on(Op::Get).flip_byte(0));
        let fail = store.inject(Fault::on(Op::Get).nth(2).fail(FaultKind::NotFound));

        let mut want = test_data(10).to_vec();
        want[0] ^= 0xFF;
        assert_eq!(read_all(&store, "k").await.unwrap(), want);
        // A failure stops the call before any other effect.
        assert!(store.get("k").await.is_err());
        assert_eq!((truncate.fired(), flip.fired(), fail.fired()), (1, 1, 1));
    }

    #[tokio::test]
    async fn counts_calls_and_clear_removes_rules() {
        let (_, store) = over_memory();
        let rule = store.inject(Fault::on(Op::Head).fail(FaultKind::Timeout));
        put(&store, "a").await.unwrap();
        put(&store, "b").await.unwrap();
        read_all(&store, "a").await.unwrap();
        assert!(store.head("a").await.is_err());
        store.list("").await.unwrap();
        store.delete("b").await.unwrap();
        store.clear();
        assert_eq!(store.head("a").await.unwrap().size, 1);
        let calls = [Op::Put, Op::Get, Op::Head, Op::List, Op::Delete].map(|op| store.calls(op));
        assert_eq!(calls, [2, 1, 2, 1, 1]);
        assert_eq!(rule.fired(), 1);
    }

    #[test]
    #[should_panic(expected = "truncate_after applies to Op::Get only")]
    fn body_effects_are_for_gets_only() {
        let _ = Fault::on(Op::Put).truncate_after(1);
    }
}
