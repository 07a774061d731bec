//! `pitr backup` with archiving broken: it ends at its `--wal-timeout`, says why, and
//! records nothing; once archiving works, the next backup succeeds. Then the restore
//! targets that exit 7 (invalid input).

use std::time::{Duration, Instant};

use crate::common::*;

fn listed_backups(pitr: &Pitr) -> Vec<serde_json::Value> {
    let out = pitr.run(["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    listed["backups"].as_array().unwrap().clone()
}

/// Every file under `dir`, however deep (the fs store leaves empty directories behind).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().unwrap().is_dir() {
            files.extend(files_under(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_with_archiving_broken_ends_at_its_wal_timeout() {
    let dir = TestDir::new("backup-hang");
    let repo = Repo::local(&dir);
    // The cluster is stopped on drop, also when an assertion fails.
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("alter system set archive_command = 'false'");
    cluster.sql("select pg_reload_conf()");

    let mut args = backup_args(&cluster);
    args.extend(["--wal-timeout".into(), "10".into()]);
    let started = Instant::now();
    let out = pitr.run(&args);
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(code(&out), 8, "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}: {err}");
    assert!(took >= Duration::from_secs(10), "took {took:?}: {err}");

    // The failing segment, as PostgreSQL names it, in the progress lines and the error.
    let failed = cluster.sql("select coalesce(last_failed_wal, '') from pg_stat_archiver");
    assert_eq!(failed.len(), 24, "no failed segment: {err}");
    let waiting: Vec<&str> = err.lines().filter(|l| l.contains("waiting for")).collect();
    assert!(!waiting.is_empty(), "no progress while waiting: {err}");
    assert!(
        waiting
            .iter()
            .all(|l| l.contains(&format!("(last failed: {failed})"))),
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert!(last.contains("archiving is failing since "), "{err}");
    assert!(
        last.contains(&format!(
            "(last failed: {failed}): fix archive_command, then run backup again"
        )),
        "{err}"
    );
    assert!(last.contains("within 10 s"), "{err}");

    // Nothing listed, nothing left of the backup, the lock released.
    assert!(listed_backups(&pitr).is_empty());
    let leftovers = files_under(&dir.path().join("repo/backup"));
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Archiving fixed: the next backup succeeds and is listed. The failed one's backup
    // history file arrives too, and does not pass for a backup that lost its manifest.
    cluster.sql("alter system reset archive_command");
    cluster.sql("select pg_reload_conf()");
    let out = pitr.run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(listed_backups(&pitr).len(), 1);
    let out = pitr.run(["verify"]);
    assert_eq!(
        code(&out),
        0,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );

    // Exit 7, as the table says, for a restore target that is not empty or where a
    // postmaster runs; neither is touched.
    let occupied = dir.subdir("occupied");
    std::fs::write(occupied.join("keep"), "mine").unwrap();
    let out = pitr.run(["restore", "--pgdata", &occupied.display().to_string()]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    assert_eq!(files_under(&occupied), vec![occupied.join("keep")]);
    let out = pitr.run(["restore", "--pgdata", &cluster.data.display().to_string()]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("postmaster"), "{}", stderr(&out));
    cluster.stop();
}
