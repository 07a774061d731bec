//! `pitr verify` on repositories filled by a real PostgreSQL 15 cluster: intact passes, and
//! a flipped byte in a WAL or backup object, a deleted segment, a deleted manifest and
//! contradicting history files are each caught; lost WAL index entries are rebuilt.

use std::time::Duration;

use crate::common::*;
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

async fn verify_checks_backups(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t as select g, md5(g::text) v from generate_series(1, 50000) g");
    let id = pitr.backup(&cluster);
    for _ in 0..3 {
        cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 20000) g");
        cluster.sql("select pg_switch_wal()");
    }
    let second = pitr.backup(&cluster);
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();

    let verify = |args: &[&str]| {
        let mut all = vec!["verify"];
        all.extend_from_slice(args);
        let out = pitr.run(all);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (code(&out), format!("{stdout}{}", stderr(&out)))
    };
    let (status, text) = verify(&[]);
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("intact"), "{text}");

    let storage = repo.storage().await;
    let keys: Vec<String> = storage
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    let data_key = format!("backup/{id}/data/000000.lz4");
    assert!(keys.contains(&data_key), "{keys:?}");

    // Index entries lost (or never written by an older pitr) are rebuilt by verify.
    let summaries: Vec<&String> = keys
        .iter()
        .filter(|k| k.ends_with(".summary.json"))
        .collect();
    let mut kept = Vec::new();
    for key in &summaries {
        kept.push(read_all(&*storage, key).await.unwrap());
        storage.delete(key).await.unwrap();
    }
    let (status, text) = verify(&["--json"]);
    assert_eq!(status, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        report["indexed_segments"].as_u64().unwrap() >= 4,
        "{report}"
    );
    for (key, before) in summaries.iter().zip(&kept) {
        let rebuilt = metadata_json(&*storage, key).await;
        let before = &metadata_json_of(&*storage, key, before.clone()).await;
        if !key.contains("history") {
            let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
            let (rebuilt, before) = (parse(&rebuilt), parse(before));
            assert_eq!(
                rebuilt["last_commit_time"], before["last_commit_time"],
                "{key}"
            );
            assert_eq!(rebuilt["commits"], before["commits"], "{key}");
        }
    }

    // A flipped byte in a backup object.
    let good = read_all(&*storage, &data_key).await.unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 3;
    bad[at] ^= 0x01;
    storage
        .put(&data_key, PutPayload::from_bytes(bad), PutMode::Overwrite)
        .await
        .unwrap();
    let (status, text) = verify(&[]);
    assert_eq!(status, 5, "{text}");
    assert!(text.contains(&format!("corrupt: {data_key}")), "{text}");
    let (status, text) = verify(&["--backup", &id]);
    assert_eq!(status, 5, "{text}");
    storage
        .put(&data_key, PutPayload::from_bytes(good), PutMode::Overwrite)
        .await
        .unwrap();
    let (status, text) = verify(&["--backup", &id]);
    assert_eq!(status, 0, "{text}");
    let (status, text) = verify(&["--backup", "no-such-backup"]);
    assert_eq!(status, 2, "{text}");

    // A deleted manifest.
    let manifest_key = format!("backup/{id}/manifest.json");
    let manifest = read_all(&*storage, &manifest_key).await.unwrap();
    storage.delete(&manifest_key).await.unwrap();
    let (status, text) = verify(&[]);
    assert_eq!(status, 8, "{text}");
    assert!(
        text.contains(&format!("backup {id} finished")) && text.contains("manifest"),
        "{text}"
    );
    storage
        .put(
            &manifest_key,
            PutPayload::from_bytes(manifest),
            PutMode::Create,
        )
        .await
        .unwrap();

    // The backup's first segment deleted: the backup can no longer become consistent, and
    // the timeline has a gap from the backup's start.
    let listed: serde_json::Value =
        serde_json::from_slice(&pitr.run(["list", "--json"]).stdout).unwrap();
    let start: pitr::pg::Lsn = listed["backups"][0]["start_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let segment = pitr::pg::wal_name::xlog_file_name(1, start.segment_number(16 << 20), 16 << 20);
    let key = format!("wal/{}/{segment}.lz4", &segment[..16]);
    let wal = read_all(&*storage, &key).await.unwrap();
    storage.delete(&key).await.unwrap();
    let (status, text) = verify(&[]);
    assert_eq!(status, 8, "{text}");
    assert!(
        text.contains(&format!(
            "backup {id} cannot be restored: WAL segment {segment}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("missing WAL on timeline 1: {segment}")),
        "{text}"
    );
    storage
        .put(&key, PutPayload::from_bytes(wal), PutMode::Create)
        .await
        .unwrap();
    let (status, text) = verify(&[]);
    assert_eq!(status, 0, "{text}");

    // Metadata carries checksums: each change below leaves valid JSON behind.
    let replace = |key: String, from: &'static str, to: &'static str| {
        let storage = storage.clone();
        async move {
            let good = read_all(&*storage, &key).await.unwrap();
            let text = String::from_utf8(metadata_json(&*storage, &key).await).unwrap();
            assert!(text.contains(from), "{key}: {text}");
            let bad = text.replacen(from, to, 1);
            storage
                .put(&key, PutPayload::from_bytes(bad), PutMode::Overwrite)
                .await
                .unwrap();
            good
        }
    };
    // A manifest: only its backup is lost; the other lists and restores.
    let good = replace(manifest_key.clone(), "\"mode\": 448", "\"mode\": 511").await;
    let (status, text) = verify(&[]);
    assert_eq!(status, 5, "{text}");
    // Encrypted, the changed JSON is not sealed, which is caught before its checksum.
    let caught = if encrypting() {
        "not encrypted, in an encrypted repository"
    } else {
        "checksum mismatch"
    };
    assert!(text.contains(caught), "{text}");
    let out = pitr.run(["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["damaged_backups"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["backups"][0]["id"], second.as_str(), "{listed}");
    let target = dir.path().join("restored-other");
    let out = pitr.run(["restore", "--pgdata", &target.display().to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("restored backup {second} ")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = pitr.run([
        "restore",
        "--backup",
        &id,
        "--pgdata",
        &dir.path().join("restored-damaged").display().to_string(),
    ]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    storage
        .put(
            &manifest_key,
            PutPayload::from_bytes(good),
            PutMode::Overwrite,
        )
        .await
        .unwrap();

    // repository.json: every command refuses a changed identity, with the corrupt code.
    let good = replace(
        "repository.json".into(),
        "\"pg_version\": 15",
        "\"pg_version\": 16",
    )
    .await;
    let out = pitr.run(["list"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(stderr(&out).contains("repository.json"), "{}", stderr(&out));
    storage
        .put(
            "repository.json",
            PutPayload::from_bytes(good),
            PutMode::Overwrite,
        )
        .await
        .unwrap();

    // A WAL summary: reported, then written again from the WAL.
    let summary = summaries
        .iter()
        .find(|k| !k.contains("history"))
        .unwrap()
        .to_string();
    replace(
        summary.clone(),
        "\"commits\":",
        "\"commits\": 1000000 ,\"x\":",
    )
    .await;
    let (status, text) = verify(&[]);
    assert_eq!(status, 5, "{text}");
    assert!(text.contains("damaged WAL summary"), "{text}");
    let (status, text) = verify(&[]);
    assert_eq!(status, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_backups_local() {
    verify_checks_backups("verify-backups-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_backups_s3() {
    let server = S3Server::start("verify-backups").await;
    verify_checks_backups("verify-backups-s3", |_| Repo::s3(&server, "verify-backups")).await;
}
