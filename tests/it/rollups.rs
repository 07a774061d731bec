//! Rollups of the WAL index on a real cluster (1 MB segments, so that more than 512
//! segments are cheap): archive-push writes them as groups complete; `list` and the restore
//! pre-flight answer the same with them, without them, and with one damaged; `verify`
//! writes missing ones and removes those a missing segment makes stale, after which the
//! gap is reported.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use pitr::pg::wal_name::xlog_file_name;
use pitr::storage::{PutMode, PutPayload, Storage, read_all};

const SEGMENT: u64 = 1 << 20;
const ROLLUPS: &str = "wal/rollup/";

async fn rollup_keys(storage: &dyn Storage) -> Vec<String> {
    storage
        .list(ROLLUPS)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

/// (first segment number, span) of a rollup key.
fn group_of(key: &str) -> (u64, u64) {
    let leaf = key.rsplit('/').next().unwrap();
    let mut fields = leaf.split('.');
    let name = pitr::pg::WalFileName::parse(fields.next().unwrap()).unwrap();
    let span = fields.next().unwrap().parse().unwrap();
    (name.segment_number(SEGMENT).unwrap(), span)
}

/// stdout of a successful pitr run.
fn ok(pitr: &Pitr, args: &[&str]) -> String {
    let out = pitr.run(args);
    assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The rollup key covering segment `segno`, the larger first.
fn covering(keys: &[String], segno: u64) -> Option<&String> {
    let mut found: Vec<&String> = keys
        .iter()
        .filter(|k| {
            let (first, span) = group_of(k);
            (first..first + span).contains(&segno)
        })
        .collect();
    found.sort_by_key(|k| std::cmp::Reverse(group_of(k).1));
    found.first().copied()
}

/// `rows` commits, one segment each; the target is the commit of row `rows / 2`. More than
/// 512 rows complete a large group (256 segments); fewer only small ones (16).
async fn scenario(name: &str, rows: u32, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let storage: Arc<dyn Storage> = repo.storage().await;
    let (pitr, mut cluster) = archiving_cluster_with(
        &dir,
        &repo,
        &["--wal-segsize=1"],
        "track_commit_timestamp = on\nautovacuum = off\nmax_wal_size = 64MB",
    );
    cluster.sql("create table t (id int primary key)");
    pitr.backup(&cluster);
    // One commit and one segment switch per row: segments well past 512.
    cluster.sql(
        "create procedure fill(n int) language plpgsql as $$ begin for i in 1..n loop \
         insert into t values (i); commit; perform pg_switch_wal(); end loop; end $$",
    );
    cluster.sql(&format!("call fill({rows})"));
    let last = cluster.archive_current_segment(Duration::from_secs(300));
    let target = cluster.sql(&format!(
        "select to_char(pg_xact_commit_timestamp(xmin) at time zone 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') from t where id = {}",
        rows / 2
    ));
    // Stopped, so that no later segment arrives while the answers are compared (a fast
    // shutdown lets the archiver finish first).
    cluster.stop();
    let newest = storage
        .list("wal/")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| {
            let leaf = m.key.rsplit('/').next()?.strip_suffix(".lz4")?.to_owned();
            (leaf.len() == 24 && leaf.starts_with("00000001")).then_some(leaf)
        })
        .max()
        .unwrap();
    assert!(newest.as_str() >= last.as_str(), "{newest} < {last}");
    let last = newest;

    // archive-push rolled up the groups it completed.
    let keys = rollup_keys(&*storage).await;
    let groups: Vec<(u64, u64)> = keys.iter().map(|k| group_of(k)).collect();
    assert!(
        groups.contains(&(16, 16)) && groups.contains(&(240, 16)),
        "{keys:?}"
    );
    if rows > 512 {
        assert!(groups.contains(&(256, 256)), "{keys:?}");
        assert!(groups.contains(&(512, 16)), "{keys:?}");
        assert!(
            !groups.contains(&(272, 16)),
            "small rollups inside a large one are removed: {keys:?}"
        );
    }

    // A directory that does not exist, in one postgres may create it in.
    let pgdata = dir.path().join("never-restored").display().to_string();
    let dry_run = [
        "restore",
        "--dry-run",
        "--target-time",
        &target,
        "--pgdata",
        &pgdata,
    ];
    let list = ok(&pitr, &["list", "--json"]);
    let plan = ok(&pitr, &dry_run);
    assert!(plan.contains("before the first commit after"), "{plan}");
    let window: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        window["wal"][0]["last_segment"].as_str().unwrap(),
        last,
        "{list}"
    );

    // A damaged rollup (the one the target lies in): read segment by segment instead.
    let stops_in = plan.split("(in ").nth(1).unwrap()[..24].to_owned();
    let target_segno = pitr::pg::WalFileName::parse(&stops_in)
        .unwrap()
        .segment_number(SEGMENT)
        .unwrap();
    let damaged = covering(&keys, target_segno).unwrap();
    storage
        .put(
            damaged,
            PutPayload::from_bytes("{\"format\": 1}"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(ok(&pitr, &["list", "--json"]), list);
    assert_eq!(ok(&pitr, &dry_run), plan);

    // Without any rollup (an archive written by an older pitr): the same answers.
    for key in &keys {
        storage.delete(key).await.unwrap();
    }
    assert_eq!(ok(&pitr, &["list", "--json"]), list);
    assert_eq!(ok(&pitr, &dry_run), plan);

    // verify writes them again (the damaged one included), and nothing changes.
    let verified = pitr.run(["verify"]);
    assert_eq!(code(&verified), 0, "{}", stderr(&verified));
    let mut again = rollup_keys(&*storage).await;
    let mut before = keys.clone();
    again.sort();
    before.sort();
    assert_eq!(again, before);
    assert_eq!(ok(&pitr, &["list", "--json"]), list);
    assert_eq!(ok(&pitr, &dry_run), plan);

    // A rollup copied over another group's key (objects restored from a copy): its
    // content names its own group, so every read refuses it and verify reports it, then
    // writes the right one again.
    let small: Vec<&String> = keys.iter().filter(|k| group_of(k).1 == 16).collect();
    let (from, over) = (small[0], small[small.len() - 1]);
    let copied = read_all(&*storage, from).await.unwrap();
    let original = read_all(&*storage, over).await.unwrap();
    storage
        .put(over, PutPayload::from_bytes(copied), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(ok(&pitr, &["list", "--json"]), list);
    let verified = pitr.run(["verify"]);
    let stdout = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert_eq!(code(&verified), 5, "{stdout}{}", stderr(&verified));
    assert!(
        stdout.contains(&format!("damaged WAL summary of {over}")),
        "{stdout}"
    );
    if !encrypting() {
        // Sealed JSON is deterministic; an encrypted object has a fresh nonce.
        assert_eq!(read_all(&*storage, over).await.unwrap(), original);
    }
    let verified = pitr.run(["verify"]);
    assert_eq!(code(&verified), 0, "{}", stderr(&verified));

    // A segment inside a rolled-up group goes missing: verify reports the gap and removes
    // the rollups that name it; then the pre-flight sees the gap too.
    let lost_segno = target_segno - 10;
    let lost = xlog_file_name(1, lost_segno, SEGMENT);
    let lost_key = format!("wal/{}/{lost}.lz4", &lost[..16]);
    storage.delete(&lost_key).await.unwrap();
    let verified = pitr.run(["verify"]);
    assert_ne!(code(&verified), 0);
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains(&lost),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let keys = rollup_keys(&*storage).await;
    assert_eq!(covering(&keys, lost_segno), None, "{keys:?}");
    let small = lost_segno - lost_segno % 16;
    let groups: Vec<(u64, u64)> = keys.iter().map(|k| group_of(k)).collect();
    assert!(
        groups.contains(&(small - 16, 16)) && groups.contains(&(small + 16, 16)),
        "the whole small groups beside it keep theirs: {keys:?}"
    );
    let out = pitr.run(dry_run);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains(&lost), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_str(&ok(&pitr, &["list", "--json"])).unwrap();
    assert_ne!(
        listed["recovery_window"][0]["until"], window["recovery_window"][0]["until"],
        "the window ends at the gap"
    );
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn rollups_local() {
    scenario("rollups-local", 560, Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollups_s3() {
    let server = S3Server::start("rollups").await;
    // Fewer segments on S3 (each push is a few requests): small groups only; the large
    // group's path is the same code over the same storage trait.
    scenario("rollups-s3", 300, |_| Repo::s3(&server, "rollups")).await;
}
