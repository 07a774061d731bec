//! Never recover short: a restore whose replay meets a corrupt segment, or a repository it
//! cannot read, stops there. PostgreSQL refuses to start rather than promote on a shortened
//! history, and once the repository is repaired the same restore reaches its target.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;
use pitr::storage::{PutMode, PutPayload, read_all};

#[tokio::test(flavor = "multi_thread")]
async fn replay_stops_at_a_corrupt_or_unreadable_segment_and_resumes_once_repaired() {
    let dir = TestDir::new("recovery-safety");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t (id int)");
    pitr.backup(&cluster);
    let segments = rows_in_four_segments(&cluster);
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

    // Replay meets the corrupt segment: recovery aborts, the server does not open.
    assert!(
        !recovers(&mut restored, &repo),
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
    let started = recovers(&mut restored, &repo);
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        !started,
        "the server opened while the repository was unreadable"
    );
    let log = restored.server_log();
    assert!(log.contains("Permission denied"), "{log}");

    // Repaired: the same restore replays everything and every commit is back.
    assert!(recovers(&mut restored, &repo), "{}", restored.server_log());
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

/// Starts a restored cluster with the repository's environment: true once its recovery ended
/// and it promoted (pg_ctl returns once recovery starts; what counts is how recovery ends).
fn recovers(restored: &mut PgCluster, repo: &Repo) -> bool {
    restored.try_start_with_env(&repo.env)
        && restored.recovery_ends_promoted(Duration::from_secs(60))
}

/// Rows 1 to 4000 of `t`, a thousand in each of four archived segments; their names.
fn rows_in_four_segments(cluster: &PgCluster) -> Vec<String> {
    (0..4)
        .map(|i| {
            cluster.sql(&format!(
                "insert into t select g from generate_series({}, {}) g",
                i * 1000 + 1,
                (i + 1) * 1000
            ));
            cluster.archive_current_segment(Duration::from_secs(60))
        })
        .collect()
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
    let segments = rows_in_four_segments(&cluster);
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
    // Removed WAL is told as runs "removed WAL FIRST[ .. LAST (N files)]": none covers a
    // planned segment (names of one timeline sort as their segments do).
    for segment in &segments {
        let covered = report.lines().any(|line| {
            let Some(rest) = line.strip_prefix("removed WAL ") else {
                return false;
            };
            let (first, last) = rest
                .split_once(" .. ")
                .map_or((rest, rest), |(f, l)| (f, l.split(' ').next().unwrap_or(l)));
            first[..8] == segment[..8] && first <= segment.as_str() && segment.as_str() <= last
        });
        assert!(!covered, "{segment} removed: {report}");
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
    assert!(
        !recovers(&mut restored, repo),
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
    assert!(recovers(&mut restored, repo), "{}", restored.server_log());
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

/// Segment 5's whole, valid object copied over segment 6's key (objects restored from a
/// copy, a sync tool renaming): every checksum passes, only the content tells. verify and
/// archive-get catch it, a restore through it aborts recovery instead of promoting on half
/// the history, and once the right object is back the same restore reaches every row. A
/// summary copied over another's is caught too, and archive-push refuses a file renamed to
/// another segment's name.
async fn misnamed_objects_are_caught(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t (id int)");
    pitr.backup(&cluster);
    let segments = rows_in_four_segments(&cluster);
    let expected = cluster.sql("select count(*) from t");
    assert_eq!(expected, "4000");
    cluster.stop();

    let storage = repo.storage().await;
    let summary_key = |segment: &str| format!("wal/{}/{segment}.summary.json", &segment[..16]);
    let (donor, victim) = (&segments[1], &segments[2]);
    let good = read_all(&*storage, &wal_key(victim)).await.unwrap();
    let donor_object = read_all(&*storage, &wal_key(donor)).await.unwrap();
    storage
        .put(
            &wal_key(victim),
            PutPayload::from_bytes(donor_object),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    // What the message says the object holds (an encrypted repository fails it earlier:
    // the key is bound to the object).
    let holds = format!("not {victim}: it holds segment {donor}, timeline 1, system ");

    // verify: corrupt, naming the object and what it holds.
    let out = pitr.run(["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 5, "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains(&format!("corrupt: {}", wal_key(victim))),
        "{stdout}"
    );
    if !encrypting() {
        assert!(stdout.contains(&holds), "{stdout}");
    }

    // archive-get: 133 (PostgreSQL aborts recovery), one line, nothing at DEST.
    let pg_wal = dir.subdir("get");
    let dest = pg_wal.join("RECOVERYXLOG");
    let out = pitr
        .command(["archive-get", victim.as_str()])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(code(&out), 133, "{}", stderr(&out));
    assert!(!dest.exists());
    let files_left = std::fs::read_dir(&pg_wal)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count();
    assert_eq!(files_left, 0, "no staging file left");
    let err = stderr(&out);
    assert!(
        err.contains("is corrupt") && err.trim().lines().count() == 1,
        "{err}"
    );
    if !encrypting() {
        assert!(err.contains(&holds), "{err}");
    }

    // A restore through it: the pre-flight sees every segment; replay (through archive-get
    // and its prefetcher) meets the misnamed one and aborts instead of promoting.
    let data = dir.path().join("restored");
    let out = pitr.run(["restore", "--pgdata", &data.display().to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(&dir, "sock", data);
    assert!(
        !recovers(&mut restored, &repo),
        "the server opened on a history cut short at {victim}:\n{}",
        restored.server_log()
    );
    let log = restored.server_log();
    assert!(log.contains(&format!("pitr archive-get {victim}")), "{log}");
    assert!(log.contains("is corrupt"), "{log}");
    assert!(!log.contains("unexpected pageaddr"), "{log}");

    // The right object back: the same restore reaches every row.
    storage
        .put(
            &wal_key(victim),
            PutPayload::from_bytes(good),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert!(recovers(&mut restored, &repo), "{}", restored.server_log());
    assert_eq!(restored.sql("select count(*) from t"), expected);
    restored.stop();
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));

    // A summary copied over another's: reported, written again from the WAL.
    let donor_summary = read_all(&*storage, &summary_key(donor)).await.unwrap();
    storage
        .put(
            &summary_key(victim),
            PutPayload::from_bytes(donor_summary),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let out = pitr.run(["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 5, "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains(&format!("damaged WAL summary of {victim}")),
        "{stdout}"
    );
    if !encrypting() {
        assert!(
            stdout.contains(&format!("holds the summary of {donor}")),
            "{stdout}"
        );
    }
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));

    // archive-push of a file renamed to another segment's name: 7, nothing stored.
    let files = dir.subdir("push");
    let renamed = format!("{}{:08X}", &victim[..16], 0xF0);
    let path = files.join(&renamed);
    std::fs::write(&path, decoded_object(&*storage, &wal_key(donor)).await).unwrap();
    let out = pitr.command(["archive-push"]).arg(&path).output().unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 7, "{err}");
    assert!(
        err.contains(&format!("it holds segment {donor}, timeline 1, system "))
            && err.contains("nothing was stored")
            && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(storage.head(&wal_key(&renamed)).await.is_err());
    // A segment never written (zeros): PostgreSQL never archives one.
    std::fs::write(&path, vec![0u8; 16 << 20]).unwrap();
    let out = pitr.command(["archive-push"]).arg(&path).output().unwrap();
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("holds no WAL"), "{}", stderr(&out));
    assert!(storage.head(&wal_key(&renamed)).await.is_err());
    // A history file naming its own timeline as an ancestor (a later timeline's history
    // copied over it).
    let history = files.join("00000002.history");
    std::fs::write(&history, "1\t0/3000000\tx\n2\t0/5000000\ty\n").unwrap();
    let out = pitr
        .command(["archive-push"])
        .arg(&history)
        .output()
        .unwrap();
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("names timeline 2 as an ancestor of timeline 2"),
        "{}",
        stderr(&out)
    );
    assert!(
        storage
            .head("wal/history/00000002.history.lz4")
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn misnamed_objects_are_caught_local() {
    misnamed_objects_are_caught("misnamed-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn misnamed_objects_are_caught_s3() {
    let server = S3Server::start("misnamed").await;
    misnamed_objects_are_caught("misnamed-s3", |_| Repo::s3(&server, "misnamed")).await;
}
