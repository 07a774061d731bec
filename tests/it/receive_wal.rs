//! `pitr receive-wal` (issue 26): WAL streamed over a physical slot into the repository from
//! a server that does not archive, restored to a time with exactly that moment's rows; kill
//! -9 of the receiver during a workload loses nothing; 13, 15 and 18.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::remote_backup::{STATE, phase, stdout};

const WAIT: Duration = Duration::from_secs(60);

/// A server of `bin` that does not archive (archive_mode off), with WAL senders; started,
/// with the repository initialised from its data directory and the table `t`.
fn streaming_cluster(dir: &TestDir, bin: &Path, pitr: &Pitr) -> PgCluster {
    let mut cluster = PgCluster::initdb_with(dir, "pg", bin, &[]);
    cluster.configure("max_wal_senders = 4\nmax_replication_slots = 4\n");
    cluster.start();
    let out = pitr.run(["init", "--pgdata", cluster.data.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    cluster.sql("create table t (id int primary key, v text)");
    cluster
}

/// A running receiver, killed if the test fails before it stops it (a receiver left
/// behind would retry its connection forever).
struct Receiving(Option<Child>);

impl std::ops::Deref for Receiving {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("running")
    }
}

impl std::ops::DerefMut for Receiving {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `pitr receive-wal` as the postgres user, run directly so that signals reach it.
fn start_receiving(pitr: &Pitr, cluster: &PgCluster, spool: &Path) -> Receiving {
    Receiving(Some(
        pitr.direct([
            "-v",
            "receive-wal",
            "--dbname",
            &cluster.conninfo("postgres"),
            "--create-slot",
            "--spool",
            spool.to_str().unwrap(),
            "--status-interval",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    ))
}

/// Waits until the receiver streams (its slot then exists).
fn wait_streaming(cluster: &PgCluster, receiver: &mut Child) {
    let deadline = Instant::now() + WAIT;
    while cluster.sql(
        "select count(*) from pg_stat_replication where state = 'streaming' \
         and application_name = 'pitr_receive_wal'",
    ) != "1"
    {
        assert!(
            receiver.try_wait().unwrap().is_none(),
            "receive-wal ended early"
        );
        assert!(
            Instant::now() < deadline,
            "receive-wal did not start streaming"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ends the receiver as systemd does (SIGTERM): it flushes its spool and exits 0.
fn stop_receiving(mut receiver: Receiving) -> String {
    let child = receiver.0.take().expect("running");
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("receive-wal stopped"),
        "{said}{}",
        stderr(&out)
    );
    stderr(&out)
}

fn signal(child: &Child, name: &str) {
    run_ok(Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]));
}

/// Waits until the repository holds `segment`, which only receive-wal stores.
fn wait_stored(pitr: &Pitr, dir: &TestDir, segment: &str, receiver: &mut Child) {
    let scratch = dir.subdir("fetched");
    chown_to_postgres(&scratch);
    let target = scratch.join(segment);
    let deadline = Instant::now() + WAIT;
    loop {
        let out = pitr
            .command(["archive-get", segment, target.to_str().unwrap()])
            .output()
            .unwrap();
        if code(&out) == 0 {
            return;
        }
        if let Some(status) = receiver.try_wait().unwrap() {
            let mut said = String::new();
            if let Some(mut err) = receiver.stderr.take() {
                use std::io::Read;
                let _ = err.read_to_string(&mut said);
            }
            panic!("receive-wal ended ({status}) before {segment} was stored:\n{said}");
        }
        assert!(Instant::now() < deadline, "{segment} not stored in time");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A local backup of a server that does not archive: it waits for its WAL, which the
/// receiver stores.
fn backup(pitr: &Pitr, cluster: &PgCluster) {
    let out = pitr.run([
        "backup",
        "--pgdata",
        cluster.data.to_str().unwrap(),
        "--dbname",
        &cluster.conninfo("postgres"),
        "--wal-timeout",
        "60",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// Completes the current segment; its name.
fn switch(cluster: &PgCluster) -> String {
    let segment = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");
    cluster.sql("select pg_switch_wal()");
    segment
}

/// Restores the newest backup to `time` and checks the table holds `state`.
fn restore_to(pitr: &Pitr, dir: &TestDir, bin: &Path, time: &str, state: &str) {
    let data = dir.path().join("restored");
    let out = pitr.run([
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--target-time",
        time,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(dir, "sock-restored", data).with_bin(bin);
    restored.start_with_env(&pitr.env);
    restored.wait_paused(WAIT);
    assert_eq!(restored.sql(STATE), state);
    restored.stop();
}

/// Nothing archives: the backup's WAL and everything after it reach the repository through
/// receive-wal alone; a restore to a time has exactly that moment's rows.
fn streaming_alone_restores_to_a_time(major: u32, bin: &Path) {
    let dir = TestDir::new(&format!("receive-wal-{major}"));
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let mut cluster = streaming_cluster(&dir, bin, &pitr);
    let spool = dir.subdir("spool");
    chown_to_postgres(&spool);
    let mut receiver = start_receiving(&pitr, &cluster, &spool);
    wait_streaming(&cluster, &mut receiver);
    assert_eq!(
        cluster.sql(
            "select slot_type || ':' || active from pg_replication_slots where slot_name = 'pitr'"
        ),
        "physical:true"
    );
    backup(&pitr, &cluster);
    let (time, state) = phase(&cluster, 1);
    phase(&cluster, 2);
    let last = switch(&cluster);
    wait_stored(&pitr, &dir, &last, &mut receiver);
    // The slot follows what the spool holds: the server may recycle the stored segments.
    let deadline = Instant::now() + WAIT;
    while cluster.sql(&format!(
        "select pg_walfile_name(restart_lsn) >= '{last}' from pg_replication_slots \
         where slot_name = 'pitr'"
    )) != "t"
    {
        assert!(
            Instant::now() < deadline,
            "the slot did not advance to {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // check's and metrics' reading of the slot, on this version's server.
    let out = pitr
        .command(["check", "--dbname", &cluster.conninfo("postgres")])
        .env("PITR_CHECK_VERIFY_AGE", "off")
        .output()
        .unwrap();
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("OK receiver: pitr receive-wal streams from the slot pitr")),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = pitr
        .command(["metrics", "--dbname", &cluster.conninfo("postgres")])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "pitr_server_up 1.0",
        "pitr_receiver_active{slot=\"pitr\"} 1.0",
        "pitr_receiver_slot_wal_status{slot=\"pitr\",wal_status=\"reserved\"} 1.0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    let said = stop_receiving(receiver);
    assert!(said.contains(&format!("stored {last}")), "{said}");
    cluster.stop();
    restore_to(&pitr, &dir, bin, &time, &state);
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn streaming_alone_on_15() {
    streaming_alone_restores_to_a_time(15, Path::new(PG_BIN));
}

#[test]
fn streaming_alone_on_13() {
    let Some(bin) = pg_bin_of(13) else { return };
    streaming_alone_restores_to_a_time(13, &bin);
}

#[test]
fn streaming_alone_on_18() {
    let Some(bin) = pg_bin_of(18) else { return };
    streaming_alone_restores_to_a_time(18, &bin);
}

/// kill -9 of the receiver at 10 moments while a writer commits row after row (and some
/// segments are switched out), each time started again: it resumes from its spool, and a
/// restore to a time after the last commit has every row.
#[test]
fn a_killed_receiver_resumes_and_loses_nothing() {
    let dir = TestDir::new("receive-wal-kill");
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let mut cluster = streaming_cluster(&dir, Path::new(PG_BIN), &pitr);
    cluster.sql(
        "create procedure burst(base int, n int) language plpgsql as $$ begin \
         for i in 0 .. n - 1 loop insert into t values (base + i, 'burst' || i); commit; \
         end loop; end $$",
    );
    let spool = dir.subdir("spool");
    chown_to_postgres(&spool);
    let mut receiver = start_receiving(&pitr, &cluster, &spool);
    wait_streaming(&cluster, &mut receiver);
    backup(&pitr, &cluster);
    // Into the writer's run at different depths (it takes about a second).
    let moments_ms = [40u64, 700, 150, 520, 90, 860, 260, 610, 330, 20];
    for (round, moment) in (1u32..).zip(moments_ms) {
        let mut writer = as_postgres("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-q", "-U", "postgres", "-h"])
            .arg(&cluster.socket_dir)
            .args(["-p", &cluster.port.to_string(), "-d", "postgres", "-c"])
            .arg(format!("call burst({}, 400)", 1_000_000 * round))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(moment));
        signal(&receiver, "KILL");
        let _ = receiver.wait();
        assert!(writer.wait().unwrap().success());
        if round % 3 == 0 {
            switch(&cluster);
        }
        if round % 4 == 0 {
            // Writes and deletes mid-segment while no receiver runs.
            phase(&cluster, round);
        }
        let left: Vec<PathBuf> = std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            left.iter().all(|p| !p.to_string_lossy().ends_with(".tmp")),
            "{left:?}"
        );
        receiver = start_receiving(&pitr, &cluster, &spool);
    }
    let (time, state) = phase(&cluster, 20);
    // A commit after the target, for recovery to stop at it.
    phase(&cluster, 21);
    let last = switch(&cluster);
    wait_stored(&pitr, &dir, &last, &mut receiver);
    stop_receiving(receiver);
    cluster.stop();
    restore_to(&pitr, &dir, Path::new(PG_BIN), &time, &state);
}

/// The receiver follows a standby; the standby is promoted: the stream goes on on timeline
/// 2 (its history file stored, the old timeline's last segment kept as `.partial`), and a
/// restore to a time on timeline 2 has that moment's rows.
#[test]
fn a_promotion_continues_on_the_next_timeline() {
    let dir = TestDir::new("receive-wal-promotion");
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let mut primary = streaming_cluster(&dir, Path::new(PG_BIN), &pitr);
    // A self-contained backup: its WAL streamed by the backup itself.
    let out = pitr.run([
        "backup",
        "--method",
        "replication",
        "--wal-method",
        "stream",
        "--dbname",
        &primary.conninfo("postgres"),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut standby = streaming_standby(&dir, &primary);
    let spool = dir.subdir("spool");
    chown_to_postgres(&spool);
    let mut receiver = start_receiving(&pitr, &standby, &spool);
    wait_streaming(&standby, &mut receiver);
    phase(&primary, 1);
    wait_replayed(&primary, &standby);
    primary.stop();
    standby.sql("select pg_promote()");
    let deadline = Instant::now() + WAIT;
    while standby.sql("select pg_is_in_recovery()") != "f" {
        assert!(Instant::now() < deadline, "the standby was not promoted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (time, state) = phase(&standby, 2);
    phase(&standby, 3);
    let last = switch(&standby);
    assert!(last.starts_with("00000002"), "{last}");
    wait_stored(&pitr, &dir, &last, &mut receiver);
    wait_stored(&pitr, &dir, "00000002.history", &mut receiver);
    let said = stop_receiving(receiver);
    assert!(said.contains("following timeline 2"), "{said}");
    // The old timeline's last segment, up to the switch, as PostgreSQL archives it.
    assert!(
        said.lines()
            .any(|l| l.contains("stored 00000001") && l.ends_with(".partial")),
        "{said}"
    );
    standby.stop();
    restore_to(&pitr, &dir, Path::new(PG_BIN), &time, &state);
}

/// How the receiver reports, in `losing_the_primary`.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Asynchronous,
    /// `--synchronous` (the spool).
    Synchronous,
    /// `--synchronous=repository`, into S3; the receiver's host is lost too.
    SynchronousRepository,
}

/// The primary's host is lost under a write workload (immediate stop, data directory
/// removed). Asynchronous: the acknowledged commits missing from a restore of the newest
/// state are at most those of the last `--partial-interval`. Synchronous (the receiver in
/// synchronous_standby_names, `--synchronous`): none is missing. Synchronous with the
/// repository: the receiver is killed (-9) and its spool removed before the primary is
/// lost, and still none is missing.
fn losing_the_primary(mode: Mode) {
    let dir = TestDir::new(match mode {
        Mode::Asynchronous => "receive-wal-async",
        Mode::Synchronous => "receive-wal-sync",
        Mode::SynchronousRepository => "receive-wal-sync-repo",
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let repo = match mode {
        Mode::SynchronousRepository => {
            let server = runtime.block_on(S3Server::start("receive-wal"));
            Repo::s3(&server, "streamed")
        }
        _ => Repo::local(&dir),
    };
    let synchronous = mode != Mode::Asynchronous;
    let pitr = Pitr::install(&dir, &repo);
    let cluster = streaming_cluster(&dir, Path::new(PG_BIN), &pitr);
    let spool = dir.subdir("spool");
    chown_to_postgres(&spool);
    let mut args = vec![
        "-v".to_owned(),
        "receive-wal".into(),
        "--dbname".into(),
        cluster.conninfo("postgres"),
        "--create-slot".into(),
        "--spool".into(),
        spool.display().to_string(),
        "--partial-interval".into(),
        "1".into(),
    ];
    match mode {
        Mode::Asynchronous => {}
        Mode::Synchronous => args.push("--synchronous".into()),
        Mode::SynchronousRepository => args.push("--synchronous=repository".into()),
    }
    let mut receiver = Receiving(Some(
        pitr.direct(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    wait_streaming(&cluster, &mut receiver);
    backup(&pitr, &cluster);
    if synchronous {
        cluster.sql("alter system set synchronous_standby_names = 'pitr_receive_wal'");
        cluster.sql("select pg_reload_conf()");
        let deadline = Instant::now() + WAIT;
        while cluster.sql("select sync_state from pg_stat_replication") != "sync" {
            assert!(
                Instant::now() < deadline,
                "the receiver did not become synchronous"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    cluster
        .sql("create table acked (id int primary key, at timestamptz default clock_timestamp())");
    // Each insert its own transaction; acknowledged when psql returned.
    let mut acked: Vec<(u32, Instant)> = Vec::new();
    let started = Instant::now();
    let mut id = 0;
    // A moment in the middle, inside the segment being filled: (time, the last id before).
    let mut middle = None;
    // Four seconds, and more commits than the check below needs however slowly they come
    // (a synchronous repository on a loaded machine).
    let enough = |acked: &[(u32, Instant)]| {
        let elapsed = started.elapsed();
        elapsed >= Duration::from_secs(4)
            && (acked.len() > 40 || elapsed >= Duration::from_secs(30))
    };
    while !enough(&acked) {
        id += 1;
        cluster.sql(&format!("insert into acked (id) values ({id})"));
        acked.push((id, Instant::now()));
        if middle.is_none() && started.elapsed() >= Duration::from_secs(2) {
            let time = cluster.sql(
                "select to_char(clock_timestamp() at time zone 'UTC', \
                 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
            );
            middle = Some((time, id));
        }
    }
    let (middle_time, middle_id) = middle.unwrap();
    if mode == Mode::SynchronousRepository {
        // The receiver's host goes first, without a chance to upload anything more.
        let mut child = receiver.0.take().unwrap();
        signal(&child, "KILL");
        let _ = child.wait();
        std::fs::remove_dir_all(&spool).unwrap();
    }
    // The host is lost: no shutdown checkpoint, nothing of the data directory left.
    let lost_at = Instant::now();
    run_ok(
        as_postgres(cluster.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&cluster.data)
            .arg("stop"),
    );
    std::fs::remove_dir_all(&cluster.data).unwrap();
    if mode != Mode::SynchronousRepository {
        // The receiver notices, uploads what its spool holds, and keeps trying to reconnect.
        std::thread::sleep(Duration::from_secs(2));
        let said = stop_receiving(receiver);
        assert!(said.contains("uploaded the tail of"), "{said}");
    }
    // list names the tail the restore below replays.
    let list = stdout(&pitr.run(["list"]));
    assert!(list.contains("wal tail timeline 1: "), "{list}");

    // To a time inside the tail: exactly the commits before it.
    let data = dir.path().join("restored-middle");
    let out = pitr.run([
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--target-time",
        &middle_time,
    ]);
    assert_eq!(code(&out), 0, "{}\n{list}", stderr(&out));
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(&dir, "sock-middle", data);
    restored.start_with_env(&pitr.env);
    restored.wait_paused(WAIT);
    assert_eq!(
        restored.sql("select count(*) || ':' || max(id) from acked"),
        format!("{middle_id}:{middle_id}")
    );
    restored.stop();

    // The newest state.
    let data = dir.path().join("restored");
    let out = pitr.run(["restore", "--pgdata", data.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(&dir, "sock-restored", data);
    restored.start_with_env(&pitr.env);
    restored.wait_promoted(WAIT);
    let present: std::collections::BTreeSet<u32> = restored
        .sql("select coalesce(string_agg(id::text, ',' order by id), '') from acked")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    restored.stop();
    let missing: Vec<&(u32, Instant)> = acked
        .iter()
        .filter(|(id, _)| !present.contains(id))
        .collect();
    assert!(acked.len() > 20, "only {} commits", acked.len());
    if synchronous {
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged commits lost",
            missing.len(),
            acked.len()
        );
    } else {
        // Only the last interval's may be missing.
        for (id, at) in &missing {
            assert!(
                lost_at.duration_since(*at) <= Duration::from_secs(1),
                "commit {id}, acknowledged {:?} before the loss, is missing",
                lost_at.duration_since(*at)
            );
        }
    }
}

#[test]
fn losing_the_primary_asynchronous() {
    losing_the_primary(Mode::Asynchronous);
}

#[test]
fn losing_the_primary_synchronous() {
    losing_the_primary(Mode::Synchronous);
}

#[test]
fn losing_both_hosts_synchronous_with_the_repository() {
    losing_the_primary(Mode::SynchronousRepository);
}

/// Without --create-slot, a missing slot ends the receiver at once with one line naming the
/// fix: read first on 15+, refused by START_REPLICATION on 13/14.
fn a_missing_slot_is_named(major: u32, bin: &Path) {
    let dir = TestDir::new(&format!("receive-wal-noslot-{major}"));
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let cluster = streaming_cluster(&dir, bin, &pitr);
    let spool = dir.subdir("spool");
    chown_to_postgres(&spool);
    let out = pitr
        .command([
            "receive-wal",
            "--dbname",
            &cluster.conninfo("postgres"),
            "--slot",
            "missing",
            "--spool",
            spool.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("pitr ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("the replication slot missing does not exist: add --create-slot"),
        "{err}"
    );
}

#[test]
fn a_missing_slot_is_named_on_15() {
    a_missing_slot_is_named(15, Path::new(PG_BIN));
}

#[test]
fn a_missing_slot_is_named_on_13() {
    let Some(bin) = pg_bin_of(13) else { return };
    a_missing_slot_is_named(13, &bin);
}

/// `pitr check` reports the receiver: OK while it streams, WARNING once it stopped (the
/// slot kept), CRITICAL with the instruction to take a new backup once the server removed
/// WAL the slot needed (max_slot_wal_keep_size); the receiver then ends with one line.
#[test]
fn check_reports_the_receiver_and_a_lost_slot() {
    let dir = TestDir::new("receive-wal-check");
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let cluster = streaming_cluster(&dir, Path::new(PG_BIN), &pitr);
    cluster.configure(
        "max_slot_wal_keep_size = '32MB'\nmax_wal_size = '64MB'\nmin_wal_size = '32MB'\n",
    );
    cluster.sql("select pg_reload_conf()");
    let spool = dir.subdir("spool");
    chown_to_postgres(&spool);
    let mut receiver = start_receiving(&pitr, &cluster, &spool);
    wait_streaming(&cluster, &mut receiver);
    backup(&pitr, &cluster);
    let check = |expected: i32, line: &str| {
        let out = pitr
            .command(["check", "--dbname", &cluster.conninfo("postgres")])
            .env("PITR_CHECK_VERIFY_AGE", "off")
            .output()
            .unwrap();
        let said = stdout(&out);
        let receiver_line = said
            .lines()
            .find(|l| l.contains("receiver"))
            .unwrap_or_else(|| panic!("no receiver line:\n{said}"))
            .to_owned();
        assert!(receiver_line.contains(line), "{said}");
        assert_eq!(code(&out), expected, "{said}{}", stderr(&out));
        receiver_line
    };
    // `pitr metrics --dbname`: the same facts as gauges.
    let metrics = || {
        let out = pitr
            .command(["metrics", "--dbname", &cluster.conninfo("postgres")])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out)
    };
    let has = |text: &str, line: &str| {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    };
    let streaming = check(0, "streams from the slot pitr");
    assert!(
        streaming.starts_with("OK") || streaming.contains("OK"),
        "{streaming}"
    );
    let text = metrics();
    has(&text, "pitr_server_up 1.0");
    has(&text, "pitr_receiver_active{slot=\"pitr\"} 1.0");
    has(
        &text,
        "pitr_receiver_slot_wal_status{slot=\"pitr\",wal_status=\"reserved\"} 1.0",
    );
    assert!(
        text.contains("pitr_receiver_flush_lag_seconds{slot=\"pitr\"}"),
        "{text}"
    );
    // A commit the receiver holds when it stops: its tail is uploaded then.
    cluster.sql("insert into t values (1, 'held')");
    let deadline = Instant::now() + WAIT;
    while cluster.sql(
        "select count(*) from pg_stat_replication \
         where flush_lsn >= pg_current_wal_insert_lsn()",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the receiver did not flush");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_receiving(receiver);
    let stopped = check(1, "no pitr receive-wal streams from the slot pitr");
    assert!(
        stopped.contains("the repository's tail reaches"),
        "{stopped}"
    );
    let text = metrics();
    has(&text, "pitr_receiver_active{slot=\"pitr\"} 0.0");
    let uploaded: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("pitr_wal_tail_upload_time_seconds{timeline=\"1\"} "))
        .unwrap_or_else(|| panic!("no tail upload time in\n{text}"))
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - uploaded).abs() < 120.0, "{uploaded} vs {now}");
    // The segment of that tail archived whole by another way (archive-push, as an
    // archive_command would): expire removes the tail, now redundant.
    let tail_segment = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");
    cluster.sql("select pg_switch_wal()");
    let out = pitr
        .command([
            "archive-push",
            cluster
                .data
                .join("pg_wal")
                .join(&tail_segment)
                .to_str()
                .unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = pitr.run(["expire", "--keep-last", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("removed the received tail {tail_segment} up to")),
        "{}",
        stdout(&out)
    );
    let list = stdout(&pitr.run(["list"]));
    assert!(!list.contains("wal tail"), "{list}");
    // Past max_slot_wal_keep_size with nothing streaming: the checkpoint invalidates the slot.
    for _ in 0..4 {
        cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 100000) g on conflict do nothing");
        cluster.sql("select pg_switch_wal()");
        cluster.sql("delete from t");
    }
    cluster.sql("checkpoint");
    assert_eq!(
        cluster.sql("select wal_status from pg_replication_slots where slot_name = 'pitr'"),
        "lost"
    );
    let lost = check(2, "lost WAL pitr receive-wal had not received");
    assert!(lost.contains("take a new backup"), "{lost}");
    has(
        &metrics(),
        "pitr_receiver_slot_wal_status{slot=\"pitr\",wal_status=\"lost\"} 1.0",
    );
    // The receiver does not retry forever: one line, the same instruction, and the
    // webhook told.
    let hook = crate::unattended::Webhook::start(200);
    let out = pitr
        .command([
            "receive-wal",
            "--dbname",
            &cluster.conninfo("postgres"),
            "--spool",
            spool.to_str().unwrap(),
            "--notify-url",
            &hook.url,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("take a new backup"),
        "{}",
        stderr(&out)
    );
    let messages = hook.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["command"], "receive-wal");
    assert_eq!(messages[0]["status"], "failure");
    assert!(
        messages[0]["error"]
            .as_str()
            .unwrap()
            .contains("take a new backup"),
        "{messages:?}"
    );
}
