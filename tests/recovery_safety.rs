//! Never recover short: a restore whose replay meets a corrupt segment, or a repository it
//! cannot read, stops there. PostgreSQL refuses to start rather than promote on a shortened
//! history, and once the repository is repaired the same restore reaches its target.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn replay_stops_at_a_corrupt_or_unreadable_segment_and_resumes_once_repaired() {
    let dir = TestDir::new("recovery-safety");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t (id int)");
    pitr.backup(&cluster);
    // Commits spread over several segments after the backup.
    let mut segments = Vec::new();
    for i in 0..4 {
        cluster.sql(&format!(
            "insert into t select g from generate_series({}, {}) g",
            i * 1000 + 1,
            (i + 1) * 1000
        ));
        segments.push(cluster.archive_current_segment(Duration::from_secs(60)));
    }
    let expected = cluster.sql("select count(*) from t");
    assert_eq!(expected, "4000");
    cluster.stop();

    // A segment in the middle of what replay needs is damaged in the repository.
    let victim = &segments[1];
    let wal_dir = dir.path().join("repo/wal").join(&victim[..16]);
    let object = wal_dir.join(format!("{victim}.lz4"));
    let original = std::fs::read(&object).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xFF;
    std::fs::write(&object, &damaged).unwrap();

    // The pre-flight sees every segment there; nothing but replay reads their content.
    let data = dir.path().join("restored");
    let out = pitr.run(["restore", "--pgdata", &data.display().to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(&dir, "sock", data);
    // pg_ctl returns once recovery starts; what counts is how recovery ends.
    let recover = |restored: &mut PgCluster| {
        restored.try_start_with_env(&repo.env)
            && restored.recovery_ends_promoted(Duration::from_secs(60))
    };

    // Replay meets the corrupt segment: recovery aborts, the server does not open.
    assert!(
        !recover(&mut restored),
        "the server opened on a history cut short at {victim}:\n{}",
        restored.server_log()
    );
    let log = restored.server_log();
    assert!(log.contains("could not restore file"), "{log}");
    assert!(log.contains(&format!("pitr archive-get {victim}")), "{log}");
    assert!(log.contains("is corrupt"), "{log}");

    // The repository unreadable (an outage): the same.
    std::fs::write(&object, &original).unwrap();
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    let started = recover(&mut restored);
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        !started,
        "the server opened while the repository was unreadable"
    );
    let log = restored.server_log();
    assert!(log.contains("Permission denied"), "{log}");

    // Repaired: the same restore replays everything and every commit is back.
    assert!(recover(&mut restored), "{}", restored.server_log());
    assert_eq!(restored.sql("select count(*) from t"), expected);
    restored.stop();
}

/// The pre-flight's proof held through the replay, file and S3: a restore records what its
/// recovery needs (`pg_wal/.pitr-replay-plan.json`) and holds a replay claim in the
/// repository. A planned segment removed after the pre-flight stops recovery (archive-get
/// exits 136, the server does not open) instead of a promotion on fewer rows; `expire
/// --keep-last 1` run while an older backup's restore is in flight keeps that backup's WAL;
/// a stale claim is ignored with a warning; past the plan, "not found" still ends a
/// recovery without target.
#[tokio::test(flavor = "multi_thread")]
async fn replay_holds_the_pre_flight_proof_on_a_file_repository() {
    let dir = TestDir::new("replay-proof");
    let repo = Repo::local(&dir);
    replay_holds_the_pre_flight_proof(&dir, &repo).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_holds_the_pre_flight_proof_on_s3() {
    let server = S3Server::start("replay-proof").await;
    let dir = TestDir::new("replay-proof-s3");
    let repo = Repo::s3(&server, "replay-proof");
    replay_holds_the_pre_flight_proof(&dir, &repo).await;
}

/// The repository key of an archived segment (docs/repository-format.md).
fn wal_key(name: &str) -> String {
    format!("wal/{}/{name}.lz4", &name[..16])
}

async fn replay_claim_keys(repo: &Repo) -> Vec<String> {
    let storage = repo.storage().await;
    storage
        .list("replay/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

async fn replay_holds_the_pre_flight_proof(dir: &TestDir, repo: &Repo) {
    let (pitr, mut cluster) = archiving_cluster(dir, repo, "");
    cluster.sql("create table t (id int)");
    let older = pitr.backup(&cluster);
    // Commits spread over several segments after the older backup, then a newer backup and
    // more after it: the older backup's restore reads WAL that keep-last 1 would remove.
    let mut segments = Vec::new();
    for i in 0..4 {
        cluster.sql(&format!(
            "insert into t select g from generate_series({}, {}) g",
            i * 1000 + 1,
            (i + 1) * 1000
        ));
        segments.push(cluster.archive_current_segment(Duration::from_secs(60)));
    }
    pitr.backup(&cluster);
    cluster.sql("insert into t select g from generate_series(4001, 5000) g");
    cluster.archive_current_segment(Duration::from_secs(60));
    let expected = cluster.sql("select count(*) from t");
    assert_eq!(expected, "5000");
    cluster.stop();

    // A restore of the older backup, to the end of the archive: its plan and claim.
    let data = dir.path().join("restored");
    let out = pitr.run([
        "restore",
        "--backup",
        &older,
        "--pgdata",
        &data.display().to_string(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan = std::fs::read_to_string(data.join("pg_wal/.pitr-replay-plan.json")).unwrap();
    assert!(plan.contains(&format!("\"backup\": \"{older}\"")), "{plan}");
    assert_eq!(replay_claim_keys(repo).await.len(), 1);
    assert_verifybackup(&data);

    // (b) expire --keep-last 1 while the restore is in flight: the claim keeps the older
    // backup and every segment its recovery reads, and the report says so.
    let out = pitr.run(["expire", "--keep-last", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains(&format!("keep backup {older}")), "{report}");
    assert!(report.contains("held: `pitr restore`"), "{report}");
    assert!(!report.contains("removed backup"), "{report}");
    for segment in &segments {
        assert!(
            !report.contains(&format!("removed WAL {segment}")),
            "{report}"
        );
    }

    // (a) A planned segment disappears after the pre-flight (by hand, a lifecycle rule).
    let storage = repo.storage().await;
    let victim = wal_key(&segments[1]);
    let original = pitr::storage::read_all(storage.as_ref(), &victim)
        .await
        .unwrap();
    storage.delete(&victim).await.unwrap();
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(dir, "sock", data.clone());
    let recover = |restored: &mut PgCluster| {
        restored.try_start_with_env(&repo.env)
            && restored.recovery_ends_promoted(Duration::from_secs(60))
    };
    assert!(
        !recover(&mut restored),
        "the server opened on a history cut short at {}:\n{}",
        segments[1],
        restored.server_log()
    );
    let log = restored.server_log();
    assert!(
        log.contains(&format!("pitr archive-get {}", segments[1])),
        "{log}"
    );
    assert!(log.contains("is no longer in the repository"), "{log}");
    assert!(log.contains("recovery stops here"), "{log}");
    // The claim outlives the aborted recovery.
    assert_eq!(replay_claim_keys(repo).await.len(), 1);

    // (d) Put back: the same restore replays to the end of the archive (where "not found"
    // past the plan ends recovery) and every row is there; the claim is let go.
    storage
        .put(
            &victim,
            pitr::storage::PutPayload::from_bytes(original),
            pitr::storage::PutMode::Create,
        )
        .await
        .unwrap();
    assert!(recover(&mut restored), "{}", restored.server_log());
    assert_eq!(restored.sql("select count(*) from t"), expected);
    restored.stop();
    assert!(replay_claim_keys(repo).await.is_empty());

    // (c) A claim whose heartbeat stopped (a restore never started) goes stale: expire warns,
    // ignores and removes it, and the policy applies.
    let data2 = dir.path().join("restored-2");
    let out = pitr.run([
        "restore",
        "--backup",
        &older,
        "--pgdata",
        &data2.display().to_string(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(replay_claim_keys(repo).await.len(), 1);
    std::thread::sleep(Duration::from_millis(2100));
    let out = pitr
        .command(["expire", "--keep-last", "1"])
        .env("PITR_REPLAY_CLAIM_STALE_AFTER", "1")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let warning = stderr(&out);
    assert!(
        warning.contains("older than replay_claim_stale_after (1 s)"),
        "{warning}"
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("ignored stale replay claim"), "{report}");
    assert!(
        report.contains(&format!("removed backup {older}")),
        "{report}"
    );
    assert!(replay_claim_keys(repo).await.is_empty());
}
