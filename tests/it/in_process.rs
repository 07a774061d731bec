//! Commands run in-process against the memory store and through the fault-injecting wrapper:
//! failures in the middle of a command, which a forked binary cannot be made to meet.
//!
//! The WAL is real (a cluster initdb'd by the test, and for backups a running one).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use pitr::catalog::Catalog;
use pitr::commands::archive_get::{ArchiveGetOptions, archive_get};
use pitr::commands::archive_push::{ArchivePushOptions, PushOutcome, archive_push};
use pitr::commands::backup::backup;
use pitr::commands::init::read_cluster_identity;
use pitr::error::{EXIT_CORRUPT, EXIT_LOCAL_IO, EXIT_NOT_FOUND, EXIT_STORAGE, Error};
use pitr::storage::fault::{Fault, FaultKind, FaultStorage, Op};
use pitr::storage::retry::{RetryPolicy, RetryingStorage};
use pitr::storage::{FsStorage, MemoryStorage, Storage};

const FIRST_SEGMENT: &str = "000000010000000000000001";

/// A memory repository behind the fault wrapper, initialised for an initdb'd cluster; and
/// that cluster's first WAL segment, copied where the test can write beside it.
async fn memory_repository(dir: &TestDir) -> (Arc<FaultStorage>, Catalog, PathBuf) {
    let cluster = PgCluster::initdb(dir, "pg", &[]);
    let store = Arc::new(FaultStorage::new(Arc::new(MemoryStorage::new("test"))));
    let catalog = Catalog::new(store.clone() as Arc<dyn Storage>);
    let identity = read_cluster_identity(&cluster.data).unwrap();
    catalog.init(&identity).await.unwrap();
    let wal = dir.path().join(FIRST_SEGMENT);
    std::fs::copy(cluster.wal_path(FIRST_SEGMENT), &wal).unwrap();
    (store, catalog, wal)
}

async fn push(catalog: &Catalog, wal: &Path) -> Result<PushOutcome, Error> {
    let options = ArchivePushOptions::single(wal.to_owned(), 2);
    Ok(archive_push(catalog, &options).await?.outcome)
}

async fn get(catalog: &Catalog, dest: &Path) -> Result<u64, Error> {
    let options = ArchiveGetOptions {
        name: FIRST_SEGMENT.into(),
        dest: dest.to_owned(),
        spool: None,
        prefetch_wait: std::time::Duration::ZERO,
    };
    Ok(archive_get(catalog, &options).await?.len)
}

/// Files in `dir` whose names start with `prefix`: staging files left behind.
fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_get_through_faults_never_leaves_a_file_at_dest() {
    let dir = TestDir::new("inproc-get");
    let (store, catalog, wal) = memory_repository(&dir).await;
    let dest_dir = dir.subdir("pg_wal");
    let dest = dest_dir.join("RECOVERYXLOG");

    // Not archived yet: exit 1, the one code PostgreSQL reads as "no such file".
    let err = get(&catalog, &dest).await.unwrap_err();
    assert_eq!(err.exit_code(), EXIT_NOT_FOUND, "{err}");
    assert_eq!(push(&catalog, &wal).await.unwrap(), PushOutcome::Stored);

    let cases = [
        (
            Fault::on(Op::Get).matching(".lz4").flip_byte(1000),
            EXIT_CORRUPT,
        ),
        (
            Fault::on(Op::Get).matching(".lz4").truncate_after(4096),
            EXIT_CORRUPT,
        ),
        (
            Fault::on(Op::Get)
                .matching(".lz4")
                .fail(FaultKind::Io(io::ErrorKind::ConnectionReset)),
            EXIT_STORAGE,
        ),
        (
            Fault::on(Op::Get)
                .matching(".lz4")
                .fail(FaultKind::SlowDown),
            EXIT_STORAGE,
        ),
    ];
    for (fault, expected) in cases {
        let handle = store.inject(fault);
        let err = get(&catalog, &dest).await.unwrap_err();
        assert_eq!(handle.fired(), 1);
        assert_eq!(err.exit_code(), expected, "{err}");
        assert!(!dest.exists(), "{err}: a file was left at DEST");
        assert_eq!(leftovers(&dest_dir, ".pitr-get-"), Vec::<String>::new());
        store.clear();
    }

    // DEST where nothing can be written: a local error, not the repository's.
    let err = get(&catalog, &dir.path().join("no/such/dir/RECOVERYXLOG"))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), EXIT_LOCAL_IO, "{err}");

    // With the faults gone the same get succeeds, byte for byte.
    assert_eq!(get(&catalog, &dest).await.unwrap(), 16 << 20);
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&wal).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_push_through_faults_succeeds_on_retry() {
    let dir = TestDir::new("inproc-push");
    let (store, catalog, wal) = memory_repository(&dir).await;

    // The put fails: exit 6, nothing stored; PostgreSQL's retry stores it.
    let failing = store.inject(
        Fault::on(Op::Put)
            .matching(".lz4")
            .nth(1)
            .fail(FaultKind::Timeout),
    );
    let err = push(&catalog, &wal).await.unwrap_err();
    assert_eq!(
        (err.exit_code(), failing.fired()),
        (EXIT_STORAGE, 1),
        "{err}"
    );
    store.clear();
    assert_eq!(push(&catalog, &wal).await.unwrap(), PushOutcome::Stored);

    // A put reported failed after it succeeded: the retry finds an identical copy.
    let dir2 = TestDir::new("inproc-push-2");
    let (store, catalog, wal) = memory_repository(&dir2).await;
    let lying = store.inject(
        Fault::on(Op::Put)
            .matching(".lz4")
            .fail_after_put(FaultKind::Io(io::ErrorKind::ConnectionReset)),
    );
    let err = push(&catalog, &wal).await.unwrap_err();
    assert_eq!((err.exit_code(), lying.fired()), (EXIT_STORAGE, 1), "{err}");
    store.clear();
    assert_eq!(
        push(&catalog, &wal).await.unwrap(),
        PushOutcome::AlreadyArchived
    );

    // The stored copy is damaged: a retry must not call it identical, nor replace it.
    let flip = store.inject(Fault::on(Op::Get).matching(".lz4").flip_byte(500));
    let err = push(&catalog, &wal).await.unwrap_err();
    assert_eq!((err.exit_code(), flip.fired()), (EXIT_CORRUPT, 1), "{err}");
}

/// A cluster archiving into a file repository, and the catalog of that repository behind the
/// fault wrapper, for backups run in this process.
async fn archiving_fs_repository(dir: &TestDir) -> (Arc<FaultStorage>, Catalog, PgCluster) {
    let repo = Repo::local(dir);
    let (_pitr, cluster) = archiving_cluster(dir, &repo, "");
    // Archive once, so that the repository's staging directory belongs to the user that
    // runs archive_command, whatever this process creates there later.
    cluster.archive_current_segment(Duration::from_secs(60));
    let pitr::storage::RepoLocation::Fs(root) = &repo.location else {
        unreachable!("a local repository")
    };
    let store = Arc::new(FaultStorage::new(Arc::new(FsStorage::new(root.clone()))));
    let catalog = Catalog::new(store.clone() as Arc<dyn Storage>);
    (store, catalog, cluster)
}

async fn take_backup(catalog: &Catalog, cluster: &PgCluster) -> Result<String, Error> {
    let options = in_process_backup_options(cluster);
    Ok(backup(catalog, &options).await?.manifest.id)
}

/// The keys of the repository but its staging files and backups.
async fn other_keys(store: &FaultStorage) -> std::collections::BTreeSet<String> {
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|meta| meta.key)
        .filter(|key| !key.starts_with("backup/") && !key.contains("staging"))
        .collect()
}

/// Issue 20, part 6: a backup that fails anywhere after its first object removes all it
/// wrote, and only that (no WAL, no other backup); the error keeps its exit code. One that
/// cannot remove its objects marks them abandoned: verify warns, expire removes them.
#[tokio::test(flavor = "multi_thread")]
async fn a_put_failing_mid_backup_leaves_no_listed_backup() {
    let dir = TestDir::new("inproc-backup");
    let (store, catalog, cluster) = archiving_fs_repository(&dir).await;
    cluster.sql("create table t as select g from generate_series(1, 100000) g");
    let kept = take_backup(&catalog, &cluster).await.unwrap();

    for fault in [
        // The first data object.
        Fault::on(Op::Put)
            .matching("/data/")
            .nth(1)
            .fail(FaultKind::Timeout),
        // A data object in the middle of the copy.
        Fault::on(Op::Put)
            .matching("/data/")
            .nth(3)
            .fail(FaultKind::Io(io::ErrorKind::ConnectionReset)),
        // The manifest, the last write.
        Fault::on(Op::Put)
            .matching("manifest.json")
            .fail(FaultKind::SlowDown),
        // The repository full when the manifest is written.
        Fault::on(Op::Put)
            .matching("manifest.json")
            .fail(FaultKind::Io(io::ErrorKind::StorageFull)),
    ] {
        let before = other_keys(&store).await;
        let handle = store.inject(fault);
        let err = take_backup(&catalog, &cluster).await.unwrap_err();
        assert_eq!(
            (err.exit_code(), handle.fired()),
            (EXIT_STORAGE, 1),
            "{err}"
        );
        store.clear();
        // Not an object of the failed backup is left; the other backup and WAL are whole.
        let dirs = catalog.backup_objects().await.unwrap();
        assert_eq!(dirs.keys().collect::<Vec<_>>(), [&kept], "{err}");
        let listed = catalog.backups().await.unwrap();
        assert_eq!(listed.len(), 1);
        let after = other_keys(&store).await;
        assert!(before.is_subset(&after), "{:?}", before.difference(&after));
    }

    // The manifest refused and the data objects undeletable: what is left is marked.
    store.inject(
        Fault::on(Op::Put)
            .matching("manifest.json")
            .fail(FaultKind::Io(io::ErrorKind::StorageFull)),
    );
    store.inject(
        Fault::on(Op::Delete)
            .matching("/data/")
            .fail(FaultKind::Io(io::ErrorKind::PermissionDenied)),
    );
    let err = take_backup(&catalog, &cluster).await.unwrap_err();
    assert_eq!(err.exit_code(), EXIT_STORAGE, "{err}");
    store.clear();
    let dirs = catalog.backup_objects().await.unwrap();
    let (abandoned, leftovers) = dirs.iter().find(|(id, _)| **id != kept).unwrap();
    assert!(leftovers.abandoned.is_some() && !leftovers.data.is_empty());
    // PostgreSQL finished it (its backup history file is archived), pitr did not: verify
    // says abandoned, not "finished but its manifest is missing", and passes.
    let report = pitr::commands::verify::verify(
        &catalog,
        &pitr::commands::verify::VerifyOptions {
            jobs: 2,
            backup: None,
            without_key: false,
        },
    )
    .await
    .unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.abandoned_backups, std::slice::from_ref(abandoned));
    let expired = pitr::commands::expire::expire(
        &catalog,
        &pitr::commands::expire::ExpireOptions {
            policy: pitr::recovery::retention::Policy {
                keep_last: Some(5),
                keep_within: None,
                keep_daily: None,
                keep_weekly: None,
                keep_monthly: None,
                keep_yearly: None,
                timezone: chrono_tz::Tz::UTC,
            },
            dry_run: false,
            now: chrono::Utc::now(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        expired.removed_interrupted_backups,
        std::slice::from_ref(abandoned)
    );
    let dirs = catalog.backup_objects().await.unwrap();
    assert_eq!(dirs.keys().collect::<Vec<_>>(), [&kept]);
}

/// The memory repository of `memory_repository`, seen through retries as commands see it.
fn with_retries(store: &Arc<FaultStorage>, total_ms: u64, attempt_ms: u64) -> Catalog {
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(attempt_ms),
        total: Duration::from_millis(total_ms),
        first_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        refused_total: Duration::from_millis(total_ms),
    };
    Catalog::new(Arc::new(RetryingStorage::new(store.clone(), policy)))
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_ride_out_throttling_stalls_and_lying_puts() {
    let dir = TestDir::new("inproc-retry");
    let (store, _, wal) = memory_repository(&dir).await;
    let catalog = with_retries(&store, 10_000, 300);

    // Throttled twice, then stored: one successful command.
    let throttled = store.inject(
        Fault::on(Op::Put)
            .matching(".lz4")
            .nth(1)
            .fail(FaultKind::SlowDown),
    );
    let reset = store.inject(
        Fault::on(Op::Put)
            .matching(".lz4")
            .nth(2)
            .fail(FaultKind::Io(io::ErrorKind::ConnectionReset)),
    );
    assert_eq!(push(&catalog, &wal).await.unwrap(), PushOutcome::Stored);
    assert_eq!((throttled.fired(), reset.fired()), (1, 1));
    store.clear();

    // A get that stalls beyond the attempt timeout is cut and tried again.
    let dest_dir = dir.subdir("pg_wal");
    let dest = dest_dir.join("RECOVERYXLOG");
    let stall = store.inject(
        Fault::on(Op::Get)
            .matching(".lz4")
            .nth(1)
            .delay(Duration::from_secs(600)),
    );
    assert_eq!(get(&catalog, &dest).await.unwrap(), 16 << 20);
    assert_eq!(stall.fired(), 1);
    store.clear();

    // A put reported failed after it was stored: the retry finds it there, identical.
    let dir2 = TestDir::new("inproc-retry-2");
    let (store, _, wal) = memory_repository(&dir2).await;
    let catalog = with_retries(&store, 10_000, 300);
    let lying = store.inject(
        Fault::on(Op::Put)
            .matching(".lz4")
            .nth(1)
            .fail_after_put(FaultKind::Io(io::ErrorKind::ConnectionReset)),
    );
    assert_eq!(
        push(&catalog, &wal).await.unwrap(),
        PushOutcome::AlreadyArchived
    );
    assert_eq!(lying.fired(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn outages_and_denials_fail_with_the_right_code_within_the_retry_time() {
    let dir = TestDir::new("inproc-outage");
    let (store, _, wal) = memory_repository(&dir).await;
    let catalog = with_retries(&store, 300, 100);
    push(&catalog, &wal).await.unwrap();
    let dest = dir.subdir("pg_wal").join("RECOVERYXLOG");

    // The store keeps stalling: each attempt is cut and the command gives up (exit 6) by
    // itself, long before the stall would end; the test's own limit is only a backstop.
    let stall = store.inject(
        Fault::on(Op::Get)
            .matching(".lz4")
            .delay(Duration::from_secs(600)),
    );
    let err = tokio::time::timeout(Duration::from_secs(120), get(&catalog, &dest))
        .await
        .expect("get waited on the stalled store instead of giving up")
        .unwrap_err();
    assert_eq!(err.exit_code(), EXIT_STORAGE, "{err}");
    assert!(stall.fired() >= 1);
    // archive-get tells PostgreSQL to stop recovery, not that the file is missing.
    assert!(pitr::error::archive_get_exit_code(err.exit_code()) > 125);
    store.clear();

    // 403 is not retried, and is no "not found": S3 answers it for missing keys only when
    // the credentials may not list the bucket.
    let denied = store.inject(
        Fault::on(Op::Get)
            .matching(".lz4")
            .fail(FaultKind::Forbidden),
    );
    let err = get(&catalog, &dest).await.unwrap_err();
    assert_eq!(
        (err.exit_code(), denied.fired()),
        (EXIT_STORAGE, 1),
        "{err}"
    );
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_get_removes_what_killed_runs_left_in_pg_wal() {
    let dir = TestDir::new("inproc-leftovers");
    let (_, catalog, wal) = memory_repository(&dir).await;
    push(&catalog, &wal).await.unwrap();
    let pg_wal = dir.subdir("pg_wal");
    // A killed archive-get's staging file (its pid is gone), and one of a running one.
    let gone = pg_wal.join(".pitr-get-2147483646-abcdef");
    let running = pg_wal.join(format!(".pitr-get-{}-abcdef", std::process::id()));
    std::fs::write(&gone, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&running, b"in progress").unwrap();
    get(&catalog, &pg_wal.join("RECOVERYXLOG")).await.unwrap();
    assert!(!gone.exists(), "a leftover stayed in pg_wal");
    assert!(running.exists(), "a running archive-get's file was removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_backups_claim_distinct_ids() {
    let store = Arc::new(MemoryStorage::new("ids"));
    let catalog = Catalog::new(store.clone() as Arc<dyn Storage>);
    let claims: Vec<_> = (0..6)
        .map(|_| {
            let catalog = catalog.clone();
            tokio::spawn(async move { catalog.claim_backup_id("20261122T010203Z").await })
        })
        .collect();
    let mut ids = Vec::new();
    for claim in claims {
        ids.push(claim.await.unwrap().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "{ids:?}");
}
