//! Every target kind on real parts: an xid target is restored from the newest backup that
//! was consistent before its commit, and refused when it aborted or never was; a backup of
//! a restored-and-promoted cluster (which carries its old recovery settings) restores to each
//! target kind.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Inserts rows `from..=to` in one transaction; returns its xid.
fn insert(cluster: &PgCluster, from: u32, to: u32) -> String {
    cluster.sql(&format!(
        "with rows as (insert into t select g, md5(g::text) from generate_series({from}, {to}) g) \
         select txid_current()"
    ))
}

/// A transaction that inserts a row and rolls back; returns its xid.
fn aborted(cluster: &PgCluster) -> String {
    let out = cluster
        .sql("begin; insert into t values (-9, 'rolled back'); select txid_current(); rollback;");
    // psql also prints the command tags: the xid is the one number.
    out.lines()
        .find(|line| line.parse::<u32>().is_ok())
        .unwrap_or_else(|| panic!("no xid in {out:?}"))
        .to_owned()
}

fn count(cluster: &PgCluster) -> String {
    cluster.sql("select count(*) || ' rows, max ' || max(id) from t")
}

fn rows(n: u32, max: u32) -> String {
    format!("{n} rows, max {max}")
}

fn restore(pitr: &Pitr, dir: &TestDir, name: &str, args: &[&str]) -> (Output, PathBuf) {
    let data = dir.path().join(name);
    let mut all = vec!["restore".to_owned(), "--pgdata".to_owned()];
    all.push(data.display().to_string());
    all.extend(args.iter().map(|a| a.to_string()));
    (pitr.run(&all), data)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_absent_or_empty(path: &Path) -> bool {
    !path.exists() || std::fs::read_dir(path).unwrap().next().is_none()
}

/// Restores with `args`, checks the backup used, starts the cluster and waits until it paused
/// at its target (or, `promoted`, ended recovery).
fn restore_and_start(
    pitr: &Pitr,
    dir: &TestDir,
    name: &str,
    args: &[&str],
    backup: &str,
    promoted: bool,
) -> PgCluster {
    let (out, data) = restore(pitr, dir, name, args);
    assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("restored backup {backup} ")),
        "{args:?} should restore {backup}: {}",
        stdout(&out)
    );
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(dir, &format!("sock-{name}"), data);
    restored.start();
    if promoted {
        restored.wait_promoted(WAIT);
    } else {
        restored.wait_paused(WAIT);
    }
    restored
}

#[tokio::test(flavor = "multi_thread")]
async fn xid_targets_and_every_kind_on_a_promoted_timeline() {
    let dir = TestDir::new("target-kinds");
    let repo = Repo::local(&dir);
    // No autovacuum: its transactions would take xids and commit between ours.
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "autovacuum = off");
    cluster.sql("create table t (id int primary key, v text)");
    let before_a = insert(&cluster, 1, 100);
    let a = pitr.backup(&cluster);
    let between = insert(&cluster, 101, 200);
    let rolled_back = aborted(&cluster);
    insert(&cluster, 201, 300);
    let b = pitr.backup(&cluster);
    insert(&cluster, 301, 400);
    cluster.sql("select pg_create_restore_point('branch')");
    insert(&cluster, 401, 500); // timeline 1 only: the branch leaves it behind
    cluster.archive_current_segment(WAIT);
    cluster.stop();

    // Committed between the backups: from the older one, paused right after that commit.
    let (out, data) = restore(
        &pitr,
        &dir,
        "xid-dry",
        &["--target-xid", &between, "--dry-run"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(plan.contains(&a), "{plan}");
    assert!(
        plan.contains(&format!("after the commit of transaction {between} at ")),
        "{plan}"
    );
    assert!(is_absent_or_empty(&data));
    let mut restored = restore_and_start(
        &pitr,
        &dir,
        "xid-between",
        &["--target-xid", &between],
        &a,
        false,
    );
    assert_eq!(count(&restored), rows(200, 200));
    restored.stop();

    // Aborted, never assigned, committed before the first backup was consistent: refused
    // before anything is written.
    for (xid, expected) in [
        (
            rolled_back.as_str(),
            format!("transaction {rolled_back} aborted at"),
        ),
        (
            "4000000000",
            "transaction 4000000000 did not commit in the archived WAL after any backup".into(),
        ),
        (before_a.as_str(), format!("transaction {before_a} ")),
    ] {
        let (out, data) = restore(&pitr, &dir, "xid-refused", &["--target-xid", xid]);
        assert_eq!(code(&out), 8, "{xid}: {}", stderr(&out));
        assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
        assert!(is_absent_or_empty(&data));
    }

    // Timeline 2: restored to the restore point, promoted, archiving into the same
    // repository; its backup carries restore_command and the old target in
    // postgresql.auto.conf.
    let (out, data) = restore(
        &pitr,
        &dir,
        "branch",
        &[
            "--target-name",
            "branch",
            "--target-action",
            "promote",
            "--archive-mode",
            "preserve",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("restored backup {b} ")));
    chown_to_postgres(&data);
    let mut branch = PgCluster::restored_archiving(&dir, "sock-branch", data);
    branch.start_with_env(&repo.env);
    branch.wait_promoted(WAIT);
    assert_eq!(
        branch.sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002"
    );
    assert_eq!(count(&branch), rows(400, 400));
    insert(&branch, 1001, 1100);
    let c = pitr.backup(&branch);
    let on_two = insert(&branch, 1101, 1200);
    insert(&branch, 1201, 1300);
    let time = branch.sql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(100));
    insert(&branch, 1301, 1400);
    let lsn = branch.sql("select pg_current_wal_insert_lsn()");
    // The first record at or after the LSN, where an LSN target stops, too.
    branch.sql("select pg_create_restore_point('on_two')");
    insert(&branch, 1401, 1500);
    branch.archive_current_segment(WAIT);
    branch.stop();

    // Each kind from backup c: the server starts (one target only) and stops at its target.
    let kinds: [(&str, &[&str], String, bool); 6] = [
        ("time", &["--target-time", &time], rows(700, 1300), false),
        ("lsn", &["--target-lsn", &lsn], rows(800, 1400), false),
        ("xid", &["--target-xid", &on_two], rows(600, 1200), false),
        ("name", &["--target-name", "on_two"], rows(800, 1400), false),
        (
            "immediate",
            &["--target", "immediate"],
            rows(500, 1100),
            false,
        ),
        ("none", &[], rows(900, 1500), true),
    ];
    for (kind, args, expected, promoted) in kinds {
        let mut restored = restore_and_start(&pitr, &dir, kind, args, &c, promoted);
        assert_eq!(count(&restored), expected, "{kind}");
        restored.stop();
    }

    // The old settings are kept as comments; one target is set, on the planned timeline.
    let conf = std::fs::read_to_string(dir.path().join("time/postgresql.auto.conf")).unwrap();
    let targets: Vec<&str> = conf
        .lines()
        .filter(|line| line.trim_start().starts_with("recovery_target"))
        .filter(|line| !line.starts_with("recovery_target_timeline"))
        .collect();
    assert_eq!(targets.len(), 1, "{conf}");
    assert!(
        conf.lines()
            .any(|line| line == "recovery_target_timeline = '2'"),
        "{conf}"
    );
    assert!(targets[0].starts_with("recovery_target_time = "), "{conf}");
    assert!(
        conf.contains("# Removed by pitr restore: recovery_target_name = 'branch'"),
        "{conf}"
    );
    assert_eq!(
        conf.lines()
            .filter(|line| line.starts_with("restore_command"))
            .count(),
        1,
        "{conf}"
    );
}
