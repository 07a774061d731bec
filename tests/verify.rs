//! `pitr verify` on repositories filled by a real PostgreSQL 15 cluster: intact passes,
//! and a flipped byte, a deleted segment and contradicting history files are each caught.

mod common;

use std::time::Duration;

use common::*;
use pitr::storage::{PutMode, PutPayload, read_all};

async fn verify_catches_damage(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t as select g from generate_series(1, 1000) g");
    for _ in 0..5 {
        cluster.sql("insert into t select g from generate_series(1, 1000) g");
        cluster.sql("select pg_switch_wal()");
    }
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();

    let verify = |json: bool| {
        let mut args = vec!["verify"];
        if json {
            args.push("--json");
        }
        let out = pitr.run(args);
        (
            code(&out),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    };

    // Intact.
    let (status, stdout, err) = verify(true);
    assert_eq!(status, 0, "{stdout}{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["objects"].as_u64().unwrap() >= 5, "{report}");
    assert!(report["problems"].as_array().unwrap().is_empty());

    let storage = repo.storage().await;
    let middle = "000000010000000000000003";
    let key = format!("wal/0000000100000000/{middle}.lz4");
    let good = read_all(&*storage, &key).await.unwrap();

    // A flipped byte.
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    storage
        .put(&key, PutPayload::from_bytes(bad), PutMode::Overwrite)
        .await
        .unwrap();
    let (status, stdout, err) = verify(false);
    assert_eq!(status, 5, "{stdout}{err}");
    assert!(stdout.contains(&format!("corrupt: {key}")), "{stdout}");
    assert!(stdout.contains("1 problem"), "{stdout}");

    // A segment deleted from the middle of the timeline.
    storage.delete(&key).await.unwrap();
    let (status, stdout, err) = verify(false);
    assert_eq!(status, 8, "{stdout}{err}");
    assert!(
        stdout.contains(&format!(
            "missing WAL on timeline 1: {middle} to {middle} (1 segment)"
        )),
        "{stdout}"
    );
    storage
        .put(&key, PutPayload::from_bytes(good), PutMode::Create)
        .await
        .unwrap();
    let (status, stdout, _) = verify(false);
    assert_eq!(status, 0, "{stdout}");

    // History files that contradict each other: timeline 3 claims another ancestry of 2.
    let files = dir.subdir("history");
    for (file, content) in [
        (
            "00000002.history",
            "1\t0/3000000\tno recovery target specified\n",
        ),
        (
            "00000003.history",
            "1\t0/4000000\tno recovery target specified\n2\t0/5000000\tno recovery target specified\n",
        ),
    ] {
        let path = files.join(file);
        std::fs::write(&path, content).unwrap();
        let out = pitr.command(["archive-push"]).arg(&path).output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let (status, stdout, err) = verify(true);
    assert_eq!(status, 8, "{stdout}{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["kind"], "bad_history");
    assert!(
        problems[0]["reason"]
            .as_str()
            .unwrap()
            .contains("contradicts 00000002.history")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_on_a_local_repository() {
    verify_catches_damage("verify-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_on_s3() {
    let server = S3Server::start("verify").await;
    verify_catches_damage("verify-s3", |_| Repo::s3(&server, "verify")).await;
}
