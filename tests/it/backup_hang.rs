//! `pitr backup` with archiving broken: it ends at its `--wal-timeout`, says why, and
//! records nothing; once archiving works, the next backup succeeds. Then the restore
//! targets that exit 7 (invalid input). Backup and restore stopped by SIGINT and SIGTERM
//! (exit 130, 143): a backup leaves nothing, a restore is started over by its rerun; and a
//! backup refused before it copies anything while archiving fails.

use std::time::{Duration, Instant};

use crate::common::*;

fn listed_backups(pitr: &Pitr) -> Vec<serde_json::Value> {
    let out = pitr.run(["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    listed["backups"].as_array().unwrap().clone()
}

/// Every file under `dir`, however deep.
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
    // It ends by itself (the harness kills it only far past its timeout, and fails), and
    // not before its timeout.
    let started = Instant::now();
    let out = exits_by_itself(
        pitr.command(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(code(&out), 8, "{err}");
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

const WAIT: Duration = Duration::from_secs(60);

/// The output of `child` once it exits; fails the test (killing it) when it is still
/// running after [`WAIT`] plus a minute, far past any timeout the tests give pitr.
fn exits_by_itself(mut child: std::process::Child) -> std::process::Output {
    let deadline = Instant::now() + WAIT * 2;
    // Drained meanwhile, so that a full pipe never holds the child up.
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {:?}", WAIT * 2);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Waits (polling every 10 ms, at most a minute) until `ready` holds.
async fn wait_until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_end(&mut bytes).unwrap();
        }
        bytes
    })
}

fn send(child: &std::process::Child, signal: i32) {
    // SAFETY: a plain syscall on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// The keys under `backup/` in the repository.
async fn backup_keys(repo: &Repo) -> Vec<String> {
    let storage = repo.storage().await;
    let mut keys: Vec<String> = storage
        .list("backup/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    keys
}

/// The one error line (`pitr …`) of a run, checked to be the only one.
fn error_line(err: &str) -> &str {
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("pitr ")).collect();
    assert_eq!(lines.len(), 1, "not one error line: {err}");
    lines[0]
}

/// Nothing of backup `id` in the repository: no object, and in a local repository no
/// directory and no staging file either.
async fn assert_nothing_of(repo: &Repo, dir: &TestDir, id: &str) {
    let left: Vec<String> = backup_keys(repo)
        .await
        .into_iter()
        .filter(|k| k.contains(id))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let root = dir.path().join("repo");
    if root.is_dir() {
        assert!(!root.join("backup").join(id).exists());
        let staged: Vec<_> = std::fs::read_dir(root.join(".tmp"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(staged.is_empty(), "staging files left: {staged:?}");
    }
}

/// A restore stopped by SIGINT leaves its marked directory; the same restore run again
/// recognises it and starts over without --force, and the copy holds every row. A backup
/// stopped by SIGINT while it copies, and by SIGTERM while it waits for its WAL, leaves
/// nothing. A backup while archive_command fails is refused before it copies anything.
async fn interrupted_runs(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    // Large enough that a restore or a backup is caught while it writes.
    cluster.sql(
        "create table t as select g, md5(g::text) || md5((g + 1)::text) as v \
         from generate_series(1, 300000) g",
    );
    let id = pitr.backup(&cluster);
    cluster.archive_current_segment(WAIT);

    // Restore, stopped as soon as it has marked its directory: frozen there (SIGSTOP) so
    // that the signal surely comes while it writes.
    let target = dir.path().join("restored");
    let child = pitr
        .direct(["restore", "--jobs", "1", "--pgdata"])
        .arg(&target)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the restore marks its directory", async || {
        target.join("pitr-restore.in-progress").exists()
    })
    .await;
    send(&child, libc::SIGSTOP);
    assert!(!target.join("global/pg_control").exists());
    send(&child, libc::SIGINT);
    send(&child, libc::SIGCONT);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 130, "{err}");
    assert_eq!(
        error_line(&err),
        format!(
            "pitr restore: stopped by SIGINT: {} holds a partial restore, which PostgreSQL \
             cannot start (it has no global/pg_control) and which pitr-restore.in-progress \
             marks as restore's own: run the same pitr restore again, and it starts over \
             without --force (or remove the directory)",
            target.display()
        )
    );
    assert!(!target.join("global/pg_control").exists());
    let out = pitr
        .direct(["restore", "--pgdata"])
        .arg(&target)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    assert!(
        err.contains(&format!(
            "{} holds an interrupted restore of backup {id} (pid ",
            target.display()
        )),
        "{err}"
    );
    assert!(!target.join("pitr-restore.in-progress").exists());
    assert_verifybackup(&target);
    chown_to_postgres(&target);
    let mut restored = PgCluster::restored(&dir, "sock-restored", target);
    restored.start_with_env(&repo.env);
    restored.wait_promoted(WAIT);
    assert_eq!(restored.sql("select count(*) from t"), "300000");
    restored.stop();

    // Archiving paused (nothing pending now, so that the backup starts): no backup can end
    // before its WAL arrives.
    cluster.sql("alter system set archive_command = 'false'");
    cluster.sql("select pg_reload_conf()");
    let mut args = backup_args(&cluster);
    args.extend(["--jobs".into(), "1".into()]);

    // SIGINT once the first data object is stored.
    let child = pitr
        .direct(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stopped = String::new();
    wait_until("the backup stores an object", async || {
        let keys = backup_keys(&repo).await;
        match keys
            .iter()
            .find(|k| !k.contains(&id) && k.contains("/data/"))
        {
            Some(key) => {
                stopped = key.split('/').nth(1).unwrap().to_owned();
                true
            }
            None => false,
        }
    })
    .await;
    send(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 130, "{err}");
    assert_eq!(
        error_line(&err),
        format!(
            "pitr backup: stopped by SIGINT: backup {stopped} was not taken, and nothing of it \
             is left in the repository; run pitr backup again"
        )
    );
    assert_nothing_of(&repo, &dir, &stopped).await;

    // SIGTERM while it waits for its WAL (its progress line says so). The backup above may
    // have reached its wait, whose segment archiving refused: archived first, so that this
    // one starts.
    cluster.sql("alter system reset archive_command");
    cluster.sql("select pg_reload_conf()");
    // Not archive_current_segment, which takes the failures before for its own.
    let segment = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");
    cluster.sql("select pg_switch_wal()");
    wait_until("archiving works again", async || {
        cluster.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver") >= segment
    })
    .await;
    cluster.sql("alter system set archive_command = 'false'");
    cluster.sql("select pg_reload_conf()");
    let mut child = pitr
        .direct(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut seen = Vec::new();
    let waiting = lines
        .by_ref()
        .map(Result::unwrap)
        .inspect(|l| seen.push(l.clone()))
        .find(|l| l.contains("waiting for"))
        .unwrap_or_else(|| panic!("no line about the wait: {seen:?}"));
    send(&child, libc::SIGTERM);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    let err = rest.join("\n");
    assert_eq!(status.code(), Some(143), "{waiting}\n{err}");
    let line = error_line(&err);
    assert!(
        line.starts_with("pitr backup: stopped by SIGTERM: backup ")
            && line.ends_with(
                " was not taken, and nothing of it is left in the repository; run pitr backup \
                 again"
            ),
        "{line}"
    );
    let stopped = line.split(' ').nth(6).unwrap();
    assert_nothing_of(&repo, &dir, stopped).await;
    assert_eq!(listed_backups(&pitr).len(), 1);

    // Archiving failing (the segments since the SIGTERM'd backup's stop refused, the oldest
    // again and again): refused at once, naming it; nothing written.
    cluster.sql("insert into t values (0, 'after')");
    cluster.sql("select pg_switch_wal()");
    wait_until("archiving fails", async || {
        cluster.sql(
            "select coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), \
             false) from pg_stat_archiver",
        ) == "t"
    })
    .await;
    let failed = cluster.sql("select last_failed_wal from pg_stat_archiver");
    let before = backup_keys(&repo).await;
    let out = pitr.run(&args);
    let err = stderr(&out);
    assert_eq!(code(&out), 8, "{err}");
    let line = error_line(&err);
    assert!(
        line.starts_with(&format!(
            "pitr backup: archiving is failing: archive_command failed for {failed} at "
        )) && line.ends_with(
            "and has not succeeded since, so this backup's WAL would never reach the \
             repository; nothing was copied: fix archive_command (the server log says why it \
             fails; pitr check --dbname … shows the archiver), then run backup again"
        ),
        "{line}"
    );
    assert_eq!(backup_keys(&repo).await, before);
    cluster.sql("alter system reset archive_command");
    cluster.sql("select pg_reload_conf()");
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_runs_on_a_local_repository() {
    interrupted_runs("interrupted-local", Repo::local).await;
}

/// Through a 10 ms (each way) path, which keeps the backup's copy going long enough to be
/// caught.
#[tokio::test(flavor = "multi_thread")]
async fn interrupted_runs_on_s3() {
    let server = S3Server::start_with_latency("interrupted", Duration::from_millis(10)).await;
    interrupted_runs("interrupted-s3", |_| Repo::s3(&server, "interrupted")).await;
}
