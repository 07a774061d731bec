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
