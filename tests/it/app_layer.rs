//! The application layer (`commands::run`) in-process: what is composed around a command
//! (expire after a backup, the run history, the verdict), on a real cluster and repository.

use std::time::Duration;

use crate::common::*;
use pitr::catalog::Catalog;
use pitr::commands::drill::{CheckOutcome, DrillReport};
use pitr::commands::history::HistoryOptions;
use pitr::commands::run::{Access, Outcome, Request, run};
use pitr::commands::verify::VerifyOptions;
use pitr::config::Settings;
use pitr::error::{EXIT_DRILL_FAILED, EXIT_OK};
use pitr::recovery::retention::Policy;

fn backup_request(cluster: &PgCluster, keep_last: Option<u32>) -> Request {
    Request::Backup {
        options: in_process_backup_options(cluster),
        policy: Policy {
            keep_last,
            ..Policy::default()
        },
    }
}

/// The repository as a command run by `postgres` would open it, from settings alone.
async fn opened(repo: &Repo) -> Catalog {
    let settings = Settings {
        repo: Some(repo.url.clone()),
        ..Settings::default()
    };
    Access::resolve(settings).unwrap().open().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_with_a_policy_expires_after_itself_and_the_history_records_both() {
    let dir = TestDir::new("app-backup-expire");
    let repo = Repo::local(&dir);
    let (_pitr, cluster) = archiving_cluster(&dir, &repo, "");
    // Archive once, so that the repository's staging directory belongs to the user that
    // runs archive_command, whatever this process creates there later.
    cluster.archive_current_segment(Duration::from_secs(60));
    let catalog = opened(&repo).await;

    // Without a policy: no expire.
    let first = run(&catalog, backup_request(&cluster, None)).await.unwrap();
    let Outcome::Backup { report, expired } = &first.outcome else {
        panic!("a backup's outcome: {:?}", first.outcome)
    };
    assert!(expired.is_none(), "no policy, no expire: {expired:?}");
    let first_id = report.manifest.id.clone();
    assert_eq!(first.verdict.as_ref().ok(), Some(&EXIT_OK));

    // keep_last 1: the backup is taken, then the older one is expired.
    cluster.sql("create table t as select g from generate_series(1, 1000) g");
    let second = run(&catalog, backup_request(&cluster, Some(1)))
        .await
        .unwrap();
    let Outcome::Backup { report, expired } = &second.outcome else {
        panic!("a backup's outcome: {:?}", second.outcome)
    };
    let second_id = report.manifest.id.clone();
    let expired = expired
        .as_ref()
        .expect("a policy expires")
        .as_ref()
        .unwrap();
    let removed: Vec<&str> = expired
        .removed_backups
        .iter()
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(removed, [first_id.as_str()]);
    assert!(
        expired.kept_backups.iter().any(|b| b.id == second_id),
        "{:?}",
        expired.kept_backups
    );

    // The history has both backups, with the bytes and id the outcome reported.
    let history = run(&catalog, Request::History(HistoryOptions { limit: 10 }))
        .await
        .unwrap();
    let Outcome::History(history) = history.outcome else {
        panic!("history's outcome")
    };
    let backups: Vec<_> = history
        .runs
        .iter()
        .filter(|r| r.command == "backup")
        .collect();
    assert_eq!(backups.len(), 2, "{:?}", history.runs);
    let recorded = backups
        .iter()
        .find(|r| r.backup_id.as_deref() == Some(second_id.as_str()))
        .expect("the second backup is recorded");
    assert_eq!(recorded.exit_code, EXIT_OK);
    assert_eq!(recorded.bytes, Some(report.manifest.stored_bytes));

    // A verify of the remaining backup: its exit code is the verdict, and it is recorded.
    let verified = run(
        &catalog,
        Request::Verify(VerifyOptions {
            jobs: 2,
            backup: Some(second_id.clone()),
            without_key: false,
        }),
    )
    .await
    .unwrap();
    assert_eq!(verified.verdict.as_ref().ok(), Some(&EXIT_OK));
    let facts = verified.outcome.facts();
    assert_eq!(facts.backup_id.as_deref(), Some(second_id.as_str()));
    assert!(facts.bytes.unwrap() > 0);
}

#[test]
fn a_drill_whose_checks_failed_ends_in_an_error_that_names_them() {
    let report = DrillReport {
        backup: "20261207T000000Z".into(),
        target: "end of WAL".into(),
        scratch_dir: "/tmp/none".into(),
        kept: false,
        bytes_restored: 10,
        bytes_read: 5,
        restore_seconds: 1.0,
        replay_seconds: 1.0,
        total_seconds: 2.0,
        checks_seconds: 0.5,
        wal_replayed_bytes: 0,
        replay_lsn: None,
        last_commit_time: None,
        recovery_stop: None,
        checks: vec![CheckOutcome {
            kind: "user",
            name: "orders are there".into(),
            passed: false,
            detail: "0 rows".into(),
        }],
        passed: false,
    };
    let failed = Outcome::Drill(report.clone());
    let error = failed.verdict().unwrap_err();
    assert_eq!(error.exit_code(), EXIT_DRILL_FAILED);
    assert!(error.to_string().contains("orders are there"), "{error}");
    assert_eq!(failed.facts().bytes, Some(10));

    let passed = Outcome::Drill(DrillReport {
        passed: true,
        checks: Vec::new(),
        ..report
    });
    assert_eq!(passed.verdict().unwrap(), EXIT_OK);
}
