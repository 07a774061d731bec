//! Every supported PostgreSQL version on a real server (issue 21). On 13, 14, 16, 17 and 18
//! (15 runs the whole suite), one cluster per version: archive-push and archive-get (look-ahead
//! and prefetch at their defaults, through restore_command), a backup, restores to a time, an
//! xid, an LSN and a restore point with exactly the rows of that moment, `verify`, `drill`
//! with pg_amcheck, and a timeline switch that a later restore follows. Also: a cluster of a
//! version pitr does not support gets one line, and a repository of one major version refuses
//! WAL and backups of another, and a drill server binaries of another.
//!
//! The servers come from scripts/pg_versions.sh (PITR_TEST_PG<major>_BIN); a version whose
//! server is not installed is skipped with the reason printed, or fails under scripts/test.sh
//! and CI (see `pg_bin_of`).

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

fn count(cluster: &PgCluster) -> String {
    cluster.sql("select count(*) || ' rows, max ' || max(id) from t")
}

fn rows(n: u32, max: u32) -> String {
    format!("{n} rows, max {max}")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Restores with `args` into `name`, starts the copy with `bin` and waits until it paused at
/// its target (or, `promoted`, ended recovery).
fn restore_and_start(
    pitr: &Pitr,
    dir: &TestDir,
    bin: &Path,
    name: &str,
    args: &[&str],
    promoted: bool,
) -> PgCluster {
    let data = dir.path().join(name);
    let mut all = vec![
        "restore".to_owned(),
        "--pgdata".to_owned(),
        data.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = pitr.run(&all);
    assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    chown_to_postgres(&data);
    // Kept archiving only when restore was asked to preserve archive_mode.
    let sock = format!("sock-{name}");
    let mut restored = if args.contains(&"preserve") {
        PgCluster::restored_archiving(dir, &sock, data)
    } else {
        PgCluster::restored(dir, &sock, data)
    }
    .with_bin(bin);
    restored.start_with_env(&pitr.env);
    if promoted {
        restored.wait_promoted(WAIT);
    } else {
        restored.wait_paused(WAIT);
    }
    restored
}

/// A bin directory for `pitr drill --pg-bin`: the server's binaries, and PostgreSQL 15's
/// pg_amcheck where the server package has none (the npm packages ship no client tools;
/// PostgreSQL 15's pg_amcheck checks 14 and later servers).
fn drill_bin(dir: &TestDir, bin: &Path) -> PathBuf {
    let tools = dir.subdir("drill-bin");
    for entry in std::fs::read_dir(bin).unwrap().flatten() {
        std::os::unix::fs::symlink(entry.path(), tools.join(entry.file_name())).unwrap();
    }
    let amcheck = tools.join("pg_amcheck");
    if !amcheck.exists() {
        std::os::unix::fs::symlink(Path::new(PG_BIN).join("pg_amcheck"), amcheck).unwrap();
    }
    tools
}

/// The matrix on one PostgreSQL major version, on one cluster.
fn on_version(major: u32) {
    let Some(bin) = pg_bin_of(major) else {
        return;
    };
    let dir = TestDir::new(&format!("versions-{major}"));
    let repo = Repo::local(&dir);
    // No autovacuum: its transactions would take xids and commit between ours.
    let (pitr, mut cluster) = archiving_cluster_of(&dir, &repo, &bin, &[], "autovacuum = off");
    let version = cluster.sql("select current_setting('server_version_num')::int / 10000");
    assert_eq!(version, major.to_string());

    cluster.sql("create table t (id int primary key, v text)");
    insert(&cluster, 1, 100);
    let backup = pitr.backup(&cluster);
    let xid = insert(&cluster, 101, 200);
    insert(&cluster, 201, 300);
    let time = cluster.sql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(100));
    insert(&cluster, 301, 400);
    let lsn = cluster.sql("select pg_current_wal_insert_lsn()");
    // The first record at or after the LSN, where an LSN target stops, too.
    cluster.sql("select pg_create_restore_point('point')");
    insert(&cluster, 401, 500);
    cluster.archive_current_segment(WAIT);

    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "verify on {major}: {}", stderr(&out));

    // Each target kind: paused with the rows of that moment.
    let kinds: [(&str, &[&str], String); 4] = [
        ("xid", &["--target-xid", &xid], rows(200, 200)),
        ("time", &["--target-time", &time], rows(300, 300)),
        ("lsn", &["--target-lsn", &lsn], rows(400, 400)),
        ("name", &["--target-name", "point"], rows(400, 400)),
    ];
    for (kind, args, expected) in kinds {
        let mut restored = restore_and_start(&pitr, &dir, &bin, kind, args, false);
        assert_eq!(count(&restored), expected, "{kind} on {major}");
        restored.stop();
    }

    // Timeline 2: restored to the restore point, promoted, archiving into the same
    // repository; a restore of the latest state follows the new timeline's history.
    let mut branch = restore_and_start(
        &pitr,
        &dir,
        &bin,
        "branch",
        &[
            "--target-name",
            "point",
            "--target-action",
            "promote",
            "--archive-mode",
            "preserve",
        ],
        true,
    );
    assert_eq!(
        branch.sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002"
    );
    insert(&branch, 1001, 1100);
    branch.archive_current_segment(WAIT);
    branch.stop();
    let mut latest = restore_and_start(&pitr, &dir, &bin, "latest", &[], true);
    assert_eq!(count(&latest), rows(500, 1100), "latest on {major}");
    assert_eq!(
        latest.sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000003"
    );
    latest.stop();

    // Drill: the newest state, checked with pg_amcheck where it can check this version.
    let tools = drill_bin(&dir, &bin);
    let scratch = dir.subdir("scratch");
    let mut args = vec![
        "drill".to_owned(),
        "--scratch-dir".to_owned(),
        scratch.display().to_string(),
        "--pg-bin".to_owned(),
        tools.display().to_string(),
        "--json".to_owned(),
    ];
    if major < 14 {
        // amcheck before 14 has no verify_heapam, which pg_amcheck (new in 14) calls.
        eprintln!(
            "PostgreSQL {major}: drill without pg_amcheck (amcheck {major} cannot check heaps)"
        );
        args.push("--no-amcheck".into());
    }
    let out = pitr.run(&args);
    assert_eq!(
        code(&out),
        0,
        "drill on {major}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    let kinds: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    let expected: &[&str] = if major < 14 {
        &["target"]
    } else {
        &["target", "amcheck"]
    };
    assert_eq!(kinds, expected, "{report}");

    // Server binaries of another major version are refused by name.
    let other = if major == 15 { 16 } else { 15 };
    if let Some(other_bin) = pg_bin_of(other) {
        let out = pitr.run([
            "drill",
            "--scratch-dir",
            &scratch.display().to_string(),
            "--pg-bin",
            &other_bin.display().to_string(),
        ]);
        assert_ne!(code(&out), 0);
        assert!(
            stderr(&out).contains(&format!(
                "holds PostgreSQL {other}, but the backup is of PostgreSQL {major}"
            )),
            "{}",
            stderr(&out)
        );
    }
    assert!(!backup.is_empty());
    cluster.stop();
}

#[test]
fn postgresql_13() {
    on_version(13);
}

#[test]
fn postgresql_14() {
    on_version(14);
}

#[test]
fn postgresql_16() {
    on_version(16);
}

#[test]
fn postgresql_17() {
    on_version(17);
}

#[test]
fn postgresql_18() {
    on_version(18);
}

/// A data directory of a version pitr does not support, or whose control file belongs to
/// none: one line naming the supported range, never "corrupt".
#[test]
fn unsupported_versions_get_one_line() {
    let dir = TestDir::new("versions-unsupported");
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let cluster = PgCluster::initdb(&dir, "pg", &[]);
    let control = std::fs::read(cluster.data.join("global/pg_control")).unwrap();
    let fake = |name: &str, version: &str, control: &[u8]| -> Output {
        let data = dir.subdir(name);
        std::fs::create_dir_all(data.join("global")).unwrap();
        std::fs::write(data.join("PG_VERSION"), format!("{version}\n")).unwrap();
        std::fs::write(data.join("global/pg_control"), control).unwrap();
        chown_to_postgres(&data);
        pitr.command(["init", "--pgdata"])
            .arg(&data)
            .output()
            .unwrap()
    };
    for version in ["12", "19"] {
        let out = fake(&format!("pg{version}"), version, &control);
        assert_ne!(code(&out), 0);
        let message = stderr(&out);
        assert_eq!(message.trim().lines().count(), 1, "{message}");
        assert!(
            message.contains(&format!("PostgreSQL {version} is not supported"))
                && message.contains("13 to 18")
                && !message.contains("corrupt"),
            "{message}"
        );
    }
    // PG_VERSION says 15, the control file is PostgreSQL 12's layout version.
    let mut old = control.clone();
    old[8..12].copy_from_slice(&1201u32.to_le_bytes());
    let out = fake("pg15-old-control", "15", &old);
    assert_ne!(code(&out), 0);
    let message = stderr(&out);
    assert_eq!(message.trim().lines().count(), 1, "{message}");
    assert!(
        message.contains("control file version 1201") && message.contains("13 to 18"),
        "{message}"
    );
}

/// A repository of PostgreSQL 15 refuses WAL and a backup of another major version's server,
/// and says what to do after pg_upgrade.
#[test]
fn a_repository_refuses_another_major_version() {
    let Some(bin) = pg_bin_of(18) else {
        return;
    };
    let dir = TestDir::new("versions-mixed");
    let repo = Repo::local(&dir);
    let (pitr, _fifteen) = initialised_cluster(&dir, &repo);
    let mut eighteen = PgCluster::initdb_with(&dir, "pg18", &bin, &[]);
    eighteen.start();
    let segment = eighteen.sql("select pg_walfile_name(pg_current_wal_lsn())");
    let out = pitr
        .command(["archive-push"])
        .arg(eighteen.wal_path(&segment))
        .output()
        .unwrap();
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out)
            .contains("was written by PostgreSQL 18 but the repository holds PostgreSQL 15")
            && stderr(&out).contains("after pg_upgrade, start a new repository"),
        "{}",
        stderr(&out)
    );
    let out = pitr.run(backup_args(&eighteen));
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out)
            .contains("the server runs PostgreSQL 18 but the repository holds PostgreSQL 15")
            && stderr(&out).contains("after pg_upgrade"),
        "{}",
        stderr(&out)
    );
}
