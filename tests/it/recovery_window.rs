//! The WAL index on real parts: `pitr list` knows the recovery window to the last commit,
//! and `pitr restore` checks the repository before writing a byte.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crate::common::*;
use pitr::pg::Lsn;
use pitr::pg::wal_name::xlog_file_name;
use pitr::storage::{PutMode, PutPayload, read_all};

const SEGMENT: u64 = 16 << 20;
const COMMIT_TIME_OF_ROW: &str = "select to_char(pg_xact_commit_timestamp(xmin) at time zone 'UTC', \
                                  'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') from t where id = ";

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

fn now_utc(cluster: &PgCluster) -> String {
    cluster.sql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

fn is_absent_or_empty(path: &Path) -> bool {
    !path.exists() || std::fs::read_dir(path).unwrap().next().is_none()
}

fn list_json(pitr: &Pitr) -> serde_json::Value {
    let out = pitr.run(["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn window_and_preflight(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut cluster) =
        archiving_cluster(&dir, &repo, "track_commit_timestamp = on\nautovacuum = off");
    cluster.sql("create table t (id int primary key, v text)");
    let backup_id = pitr.backup(&cluster);
    // Rows over several segments, rows larger than a page, a restore point.
    for i in 0..4 {
        cluster.sql(&format!(
            "insert into t select g, repeat(md5(g::text), 10) from generate_series({}, {}) g",
            i * 20_000,
            i * 20_000 + 19_999
        ));
        cluster.sql(&format!(
            "insert into t values ({}, repeat('x', 20000))",
            -100 - i
        ));
        if i == 1 {
            cluster.sql("select pg_create_restore_point('before_delete')");
            cluster.sql("delete from t where id < 1000");
        }
        cluster.sql("select pg_switch_wal()");
    }
    std::thread::sleep(Duration::from_millis(50));
    let late_time = now_utc(&cluster);
    let late_count = cluster.sql("select count(*) from t");
    std::thread::sleep(Duration::from_millis(50));
    cluster.sql("insert into t values (-1, 'the last commit')");
    let last_commit = cluster.sql(&format!("{COMMIT_TIME_OF_ROW}-1"));
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();

    // Every segment carries its index entry.
    let storage = repo.storage().await;
    let keys: Vec<String> = storage
        .list("wal/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    let segments = keys
        .iter()
        .filter(|k| k.ends_with(".lz4") && !k.contains(".backup") && !k.contains("history"))
        .count();
    let summaries = keys.iter().filter(|k| k.ends_with(".summary.json")).count();
    assert!(segments >= 5 && summaries == segments, "{keys:?}");

    // The window runs from the backup's end to the last commit.
    let listed = list_json(&pitr);
    let window = &listed["recovery_window"][0];
    assert_eq!(window["timeline"], 1, "{listed}");
    assert_eq!(
        utc(window["from"].as_str().unwrap()),
        utc(listed["backups"][0]["stop_time"].as_str().unwrap())
    );
    let until = window["until"].as_str().unwrap();
    assert_eq!(utc(until), utc(&last_commit), "{listed}");
    let text = String::from_utf8_lossy(&pitr.run(["list"]).stdout).into_owned();
    assert!(text.contains("recovery window timeline 1"), "{text}");

    let restore = |data: &str, args: &[&str]| {
        let data = dir.path().join(data);
        let mut all = vec!["restore".to_owned(), "--pgdata".to_owned()];
        all.push(data.display().to_string());
        all.extend(args.iter().map(|a| a.to_string()));
        (pitr.run(&all), data)
    };

    // A target after the last commit: refused before anything is written.
    let after_end = (utc(&last_commit) + chrono::Duration::hours(1)).to_rfc3339();
    let (out, data) = restore("after-end", &["--target-time", &after_end]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("after the end of the archived WAL"), "{err}");
    assert!(
        err.contains(&format!("the latest reachable time is {until}")),
        "{err}"
    );
    assert!(is_absent_or_empty(&data));

    // The plan, without writing.
    let (out, data) = restore("dry", &["--target-time", &late_time, "--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    let stop_lsn: Lsn = listed["backups"][0]["stop_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let start_lsn: Lsn = listed["backups"][0]["start_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let first_segment = xlog_file_name(1, start_lsn.segment_number(SEGMENT), SEGMENT);
    for expected in [
        "restore plan",
        &backup_id,
        &first_segment,
        "bytes:",
        "dry run",
    ] {
        assert!(plan.contains(expected), "{expected} missing from: {plan}");
    }
    assert!(is_absent_or_empty(&data));

    // A restore point: absent is refused, present is planned.
    let (out, _) = restore("no-point", &["--target-name", "nope", "--dry-run"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("restore point 'nope'"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("'before_delete'"), "{}", stderr(&out));
    // A name with a newline: still one line, the newline shown escaped.
    let (out, _) = restore("odd-point", &["--target-name", "bad\nname", "--dry-run"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("'bad\\nname'"), "{}", stderr(&out));
    // A regular file as --pgdata: invalid input (7), one line, nothing written.
    let file = dir.write("not-a-directory", "x");
    let out = pitr.run([
        "restore",
        "--pgdata",
        &file.display().to_string(),
        "--target-time",
        &late_time,
    ]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("is a file, not a directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    let (out, _) = restore("point", &["--target-name", "before_delete", "--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(plan.contains("at restore point 'before_delete'"), "{plan}");

    // A segment missing between the backup and the target: named, nothing written.
    let missing = xlog_file_name(1, stop_lsn.segment_number(SEGMENT) + 2, SEGMENT);
    let key = format!("wal/{}/{missing}.lz4", &missing[..16]);
    let kept = read_all(&*storage, &key).await.unwrap();
    storage.delete(&key).await.unwrap();
    let (out, data) = restore("gap", &["--target-time", &late_time]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains(&missing), "{}", stderr(&out));
    assert!(is_absent_or_empty(&data));

    // Put back, the same restore succeeds and PostgreSQL reaches the target.
    storage
        .put(&key, PutPayload::from_bytes(kept), PutMode::Create)
        .await
        .unwrap();
    let (out, data) = restore("gap", &["--target-time", &late_time]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pre-flight"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut restored = PgCluster::restored(&dir, "pg-gap", data);
    restored.start();
    restored.wait_paused(Duration::from_secs(120));
    assert_eq!(restored.sql("select count(*) from t"), late_count);
    restored.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn window_and_preflight_local() {
    window_and_preflight("window-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn window_and_preflight_s3() {
    let server = S3Server::start("window").await;
    window_and_preflight("window-s3", |_| Repo::s3(&server, "window")).await;
}
