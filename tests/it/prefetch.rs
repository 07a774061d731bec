//! archive-get's prefetcher on real parts: restores replay through it and reach their
//! targets exactly (also across a timeline switch), a damaged spooled segment is never
//! served, kill -9 of the prefetcher loses nothing, and the spool stays within its bound
//! and is gone when recovery ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::*;

const TABLE_STATE: &str = "select count(*) || ':' || coalesce(md5(string_agg(id || ':' || v, ',' \
                           order by id)), '') from t";
const MIB: u64 = 1 << 20;

/// About `segments` MiB of WAL in committed batches.
fn write_wal(cluster: &PgCluster, first_id: u32, segments: u32) {
    for batch in 0..segments {
        let from = first_id + batch * 2700;
        cluster.sql(&format!(
            "insert into t select g, repeat(md5(g::text), 8) from generate_series({from}, {}) g",
            from + 2699
        ));
    }
}

/// About `segments` MiB of WAL, then the table's state and the time (a restore target),
/// then some WAL past it; archived, and the cluster stopped.
fn write_target_and_stop(
    cluster: &mut PgCluster,
    first_id: u32,
    segments: u32,
) -> (String, String) {
    write_wal(cluster, first_id, segments);
    let state = cluster.sql(TABLE_STATE);
    let time = now_text(cluster);
    std::thread::sleep(Duration::from_millis(1200));
    write_wal(cluster, first_id + 1_000_000, 3);
    cluster.archive_current_segment(Duration::from_secs(120));
    cluster.stop();
    (state, time)
}

fn now_text(cluster: &PgCluster) -> String {
    cluster.sql("select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
}

/// The get spool directories under `pg_wal/.pitr-spool` of `data`.
fn spools(data: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(data.join("pg_wal/.pitr-spool")) else {
        return Vec::new();
    };
    read.flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("get-"))
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|read| {
            read.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Spooled segments (`<name>.<crc>`) in `spool`.
fn spooled(spool: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(spool)
        .map(|read| {
            read.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.len() == 24 + 9
                        && n.as_bytes()[24] == b'.'
                        && n[25..].bytes().all(|b| b.is_ascii_hexdigit())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn prefetcher_pids(spool_root: &Path) -> Vec<i32> {
    let out = Command::new("pgrep")
        .args([
            "-f",
            &format!("archive-get-prefetch --spool {}", spool_root.display()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Adds -v to the restore_command `pitr restore` wrote, so that the server log says where
/// each segment came from.
fn verbose_restore_command(cluster: &PgCluster) {
    let path = cluster.data.join("postgresql.auto.conf");
    let conf = std::fs::read_to_string(&path).unwrap();
    let line = conf
        .lines()
        .rfind(|l| l.starts_with("restore_command"))
        .expect("pitr restore writes restore_command");
    let verbose = line.replacen(" archive-get %f %p", " -v archive-get %f %p", 1);
    assert_ne!(verbose, line, "{line}");
    std::fs::write(&path, format!("{conf}{verbose}\n")).unwrap();
}

/// A directory that looks like a data directory in recovery to archive-get: a
/// recovery.signal and a postmaster.pid naming a live process.
struct FakeRecovery {
    data: PathBuf,
    postmaster: Child,
}

impl FakeRecovery {
    fn new(dir: &TestDir) -> Self {
        let data = dir.subdir("fake-recovery");
        std::fs::create_dir_all(data.join("pg_wal")).unwrap();
        let postmaster = Command::new("sleep").arg("600").spawn().unwrap();
        std::fs::write(
            data.join("postmaster.pid"),
            format!("{}\n{}\n", postmaster.id(), data.display()),
        )
        .unwrap();
        std::fs::write(data.join("recovery.signal"), "").unwrap();
        chown_to_postgres(&data);
        FakeRecovery { data, postmaster }
    }

    fn end(&self) {
        std::fs::remove_file(self.data.join("recovery.signal")).unwrap();
    }
}

impl Drop for FakeRecovery {
    fn drop(&mut self) {
        let _ = self.postmaster.kill();
        let _ = self.postmaster.wait();
    }
}

/// Prefetched segments are served only when whole and unchanged; kill -9 of the prefetcher
/// at several moments loses nothing; the spool never holds more than its bound and is
/// removed when recovery ends.
#[tokio::test(flavor = "multi_thread")]
async fn the_spool_serves_only_verified_segments_within_its_bound() {
    let dir = TestDir::new("prefetch-spool");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster_with(&dir, &repo, &["--wal-segsize=1"], "");
    cluster.sql("create table t (id int primary key, v text)");
    let first = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");
    write_wal(&cluster, 0, 24);
    let last = cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();
    let segno = |name: &str| u64::from_str_radix(&name[16..], 16).unwrap();
    let names: Vec<String> = (segno(&first)..=segno(&last))
        .map(|s| format!("{}{s:016X}", &first[..8]))
        .collect();
    assert!(names.len() >= 20, "{names:?}");

    // The reference bytes, fetched outside recovery (no prefetching there).
    let reference = dir.subdir("reference");
    chown_to_postgres(&reference);
    for name in &names {
        let out = pitr.run([
            "archive-get",
            name,
            &reference.join(name).display().to_string(),
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    assert!(
        !reference.join(".pitr-spool").exists(),
        "a call outside recovery prefetched"
    );

    let fake = FakeRecovery::new(&dir);
    let queue_max = 3 * MIB + MIB / 2;
    let get = |name: &str| {
        let mut cmd = pitr.direct([
            "-v",
            "--archive-get-queue-max",
            &queue_max.to_string(),
            "archive-get",
            name,
            "pg_wal/RECOVERYXLOG",
        ]);
        let out = cmd.current_dir(&fake.data).output().unwrap();
        assert_eq!(code(&out), 0, "archive-get {name}: {}", stderr(&out));
        let got = std::fs::read(fake.data.join("pg_wal/RECOVERYXLOG")).unwrap();
        assert!(
            got == std::fs::read(reference.join(name)).unwrap(),
            "archive-get {name} served other bytes"
        );
        std::fs::remove_file(fake.data.join("pg_wal/RECOVERYXLOG")).unwrap();
        stderr(&out)
    };
    let spool_root = fake.data.join("pg_wal/.pitr-spool");
    let within_bound = || {
        for spool in spools(&fake.data) {
            let bytes = dir_bytes(&spool);
            assert!(
                bytes <= queue_max,
                "spool holds {bytes} > {queue_max} bytes"
            );
        }
    };

    let said = get(&names[0]);
    assert!(!said.contains("prefetch spool"), "{said}");
    // The prefetcher fills the window: the next three segments, never more.
    wait_until("three prefetched segments", Duration::from_secs(30), || {
        within_bound();
        spools(&fake.data)
            .first()
            .is_some_and(|spool| spooled(spool).len() == 3)
    });
    let spool = spools(&fake.data).remove(0);
    let window: Vec<String> = spooled(&spool).iter().map(|n| n[..24].to_owned()).collect();
    assert_eq!(window, names[1..4], "the window follows the served segment");

    // Damage the third segment's spooled copy: it must be fetched again, not served.
    let damaged = spool.join(
        spooled(&spool)
            .into_iter()
            .find(|n| n.starts_with(&names[2]))
            .unwrap(),
    );
    let mut bytes = std::fs::read(&damaged).unwrap();
    assert_eq!(
        bytes.len(),
        MIB as usize,
        "{damaged:?} in {:?}",
        std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .map(|e| (e.file_name(), e.metadata().unwrap().len()))
            .collect::<Vec<_>>()
    );
    bytes[700_000] ^= 0x40;
    std::fs::write(&damaged, bytes).unwrap();

    let said = get(&names[1]);
    assert!(said.contains("from the prefetch spool"), "{said}");
    let said = get(&names[2]);
    // Detected, and served re-fetched (by this call or by the prefetcher): the bytes were
    // compared with the reference above.
    assert!(said.contains("does not match its checksum"), "{said}");

    // kill -9 of the prefetcher at several moments: every following call still serves the
    // right bytes, from the spool or the repository.
    let (mut served_from_spool, mut spooled_first) = (0, 0);
    for (i, name) in names.iter().enumerate().skip(3) {
        within_bound();
        if i % 4 == 0 {
            std::thread::sleep(Duration::from_millis((i as u64 % 3) * 7));
            for pid in prefetcher_pids(&spool_root) {
                // SAFETY: a plain signal to a process we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        } else {
            // The prefetcher (the one the last call started again, after a kill) gets
            // ahead, as it would while replay works through the last segment.
            wait_until(&format!("{name} spooled"), Duration::from_secs(60), || {
                within_bound();
                spools(&fake.data)
                    .iter()
                    .any(|spool| spooled(spool).iter().any(|n| n.starts_with(name.as_str())))
            });
            spooled_first += 1;
        }
        if get(name).contains("from the prefetch spool") {
            served_from_spool += 1;
        }
    }
    // Each segment found whole in the spool was served from it (killed ones may be too).
    assert!(
        served_from_spool >= spooled_first,
        "only {served_from_spool} of {} segments came from the spool, {spooled_first} were \
         spooled first",
        names.len() - 3
    );

    // Recovery ends: the prefetcher stops and removes the spool.
    fake.end();
    wait_until("the spool removed", Duration::from_secs(10), || {
        spools(&fake.data).is_empty() && prefetcher_pids(&spool_root).is_empty()
    });
}

/// A restore replays more than 40 segments through the prefetcher, from an S3 repository
/// 20 ms away (each way),
/// to its target exactly; then again across a timeline switch.
#[tokio::test(flavor = "multi_thread")]
async fn restores_replay_through_the_prefetcher_across_a_timeline_switch() {
    let dir = TestDir::new("prefetch-restore");
    let server = S3Server::start_with_latency("prefetch-restore", Duration::from_millis(20)).await;
    let repo = Repo::s3(&server, "prefetch");
    let (pitr, mut cluster) = archiving_cluster_with(&dir, &repo, &["--wal-segsize=1"], "");
    cluster.sql("create table t (id int primary key, v text)");
    pitr.backup(&cluster);
    // What is written after the target stays on timeline 1 only: the branch leaves it behind.
    let (state_a, time_a) = write_target_and_stop(&mut cluster, 0, 45);

    let restore = |name: &str, args: &[&str]| {
        let data = dir.path().join(name);
        let mut all = vec!["restore", "--pgdata"];
        let data_text = data.display().to_string();
        all.push(&data_text);
        all.extend_from_slice(args);
        // Four fetches at once keep ahead of replay 20 ms away on a loaded 2-core machine,
        // where two fall behind at times; how fast the default is is bench/replay.sh's to say.
        all.extend(["--archive-get-prefetch", "4"]);
        let out = pitr.run(&all);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        chown_to_postgres(&data);
        data
    };
    let served = |cluster: &PgCluster| {
        cluster
            .server_log()
            .matches("from the prefetch spool")
            .count()
    };

    let data = restore(
        "branch",
        &[
            "--target-time",
            &time_a,
            "--target-action",
            "promote",
            "--archive-mode",
            "preserve",
        ],
    );
    let mut branch = PgCluster::restored_archiving(&dir, "sock-branch", data);
    verbose_restore_command(&branch);
    branch.start_with_env(&repo.env);
    branch.wait_promoted(Duration::from_secs(120));
    assert_eq!(branch.sql(TABLE_STATE), state_a);
    assert!(
        served(&branch) >= 40,
        "{} segments came from the prefetch spool; server log:\n{}",
        served(&branch),
        branch.server_log()
    );
    wait_until(
        "the spool removed after promotion",
        Duration::from_secs(10),
        || spools(&branch.data).is_empty(),
    );

    // Timeline 2, archived into the same repository.
    let (state_b, time_b) = write_target_and_stop(&mut branch, 2_000_000, 30);

    // From the timeline-1 backup, through the switch, to a time on timeline 2.
    let data = restore("across", &["--target-time", &time_b]);
    let mut across = PgCluster::restored(&dir, "sock-across", data);
    verbose_restore_command(&across);
    across.start_with_env(&repo.env);
    across.wait_paused(Duration::from_secs(120));
    assert_eq!(across.sql(TABLE_STATE), state_b);
    let log = across.server_log();
    assert!(
        served(&across) >= 60,
        "{} segments came from the prefetch spool; server log:\n{log}",
        served(&across)
    );
    assert!(
        log.contains("restored log file \"00000002") && log.contains("from the prefetch spool"),
        "{log}"
    );
    across.stop();
    wait_until(
        "the spool removed after shutdown",
        Duration::from_secs(10),
        || spools(&across.data).is_empty(),
    );
}
