//! The fault matrix (docs/fault-matrix.md lists every scenario and its test): real kill -9,
//! full disks, a PostgreSQL that stops or drops the connection during a backup, concurrent
//! backups and pushes, and repository failures injected in-process through the fault wrapper.
//! In each: no archived WAL lost, no silent corruption, the exact exit code, a one-line
//! message, and a retry or the next run succeeds.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use pitr::catalog::Catalog;
use pitr::commands::restore::{RestoreOptions, restore};
use pitr::error::{EXIT_CORRUPT, EXIT_LOCAL_IO, EXIT_STORAGE, Error};
use pitr::progress::Silent;
use pitr::recovery::plan::PlanRequest;
use pitr::storage::fault::{Fault, FaultKind, FaultStorage, Op};
use pitr::storage::{FsStorage, Storage};

const FIRST: &str = "000000010000000000000001";

/// The error, one line starting with `pitr` (progress lines and warnings may precede it).
fn one_line(out: &std::process::Output) -> String {
    let text = stderr(out);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("pitr ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "not one error line (exit {}): {text}",
        code(out)
    );
    errors[0].to_owned()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A small tmpfs (a full disk on demand), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &TestDir, name: &str, size: &str) -> Self {
        let path = dir.subdir(name);
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&path),
        );
        chown_to_postgres(&path);
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// kill -9; true when the child had finished successfully before.
fn kill9(child: &mut Child) -> bool {
    if let Ok(Some(status)) = child.try_wait() {
        return status.success();
    }
    let _ = child.kill();
    child.wait().unwrap().success()
}

/// archive-get and archive-push: kill -9, a full disk under pg_wal, pushes of one name with
/// different content at once.
#[tokio::test(flavor = "multi_thread")]
async fn archive_faults() {
    assert!(is_root(), "the fault matrix mounts tmpfs and needs root");
    let dir = TestDir::new("matrix-archive");
    let repo = Repo::local(&dir);
    let (pitr, cluster) = initialised_cluster(&dir, &repo);
    let segment = cluster.wal_path(FIRST);
    let out = pitr
        .command(["archive-push"])
        .arg(&segment)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let original = std::fs::read(&segment).unwrap();

    // kill -9 of archive-get at several moments: DEST is absent or whole, and the next run
    // leaves nothing but DEST behind.
    let pg_wal = dir.subdir("pg_wal");
    let dest = pg_wal.join("RECOVERYXLOG");
    for delay_ms in [0u64, 5, 15, 40] {
        // direct(): the kill must reach pitr itself, not a runuser that would orphan it.
        let mut child = pitr
            .direct(["archive-get", FIRST])
            .arg(&dest)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill9(&mut child);
        if dest.exists() {
            assert!(
                std::fs::read(&dest).unwrap() == original,
                "a partial file at DEST"
            );
            std::fs::remove_file(&dest).unwrap();
        }
        let out = pitr
            .command(["archive-get", FIRST])
            .arg(&dest)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(
            entries(&pg_wal),
            vec!["RECOVERYXLOG"],
            "leftovers in pg_wal"
        );
        std::fs::remove_file(&dest).unwrap();
    }

    // A full disk under pg_wal: 138 (PostgreSQL aborts recovery), nothing left there.
    let full = Tmpfs::mount(&dir, "full", "1m");
    let out = pitr
        .command(["archive-get", FIRST])
        .arg(full.0.join("RECOVERYXLOG"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 138, "{}", stderr(&out));
    assert!(one_line(&out).contains("No space left"), "{}", stderr(&out));
    assert_eq!(entries(&full.0), Vec::<String>::new());
    drop(full);

    // The same name with different content, pushed at once: one is stored, the others are
    // refused with 4, and what is stored is the winner's, whole.
    let other_dir = dir.subdir("other");
    let other = other_dir.join(FIRST);
    let mut changed = original.clone();
    // Inside a page's data, not its header: still WAL of this segment, other content.
    changed[original.len() / 2 + 100] ^= 0xFF;
    std::fs::write(&other, &changed).unwrap();
    chown_to_postgres(&other);
    let second = TestDir::new("matrix-archive-race");
    let race_repo = Repo::local(&second);
    let racer = Pitr::install(&second, &race_repo);
    let out = racer
        .command(["init", "--pgdata"])
        .arg(&cluster.data)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let children: Vec<_> = (0..6)
        .map(|i| {
            let path = if i % 2 == 0 { &segment } else { &other };
            let child = racer
                .command(["archive-push"])
                .arg(path)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (path.clone(), child)
        })
        .collect();
    let mut stored_from = Vec::new();
    for (path, child) in children {
        let out = child.wait_with_output().unwrap();
        match code(&out) {
            0 => stored_from.push(path),
            4 => assert!(one_line(&out).contains("different content"), "{:?}", out),
            other => panic!("archive-push exited {other}: {}", stderr(&out)),
        }
    }
    stored_from.dedup();
    assert_eq!(
        stored_from.len(),
        1,
        "both contents were accepted: {stored_from:?}"
    );
    let got = second.path().join("got");
    let out = racer
        .command(["archive-get", FIRST])
        .arg(&got)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(std::fs::read(&got).unwrap() == std::fs::read(&stored_from[0]).unwrap());
}

fn backup_command(pitr: &Pitr, cluster: &PgCluster) -> Command {
    let mut cmd = pitr.direct(backup_args(cluster));
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Data objects of some backup are being written.
fn copying(repo_dir: &Path) -> bool {
    entries(&repo_dir.join("backup"))
        .iter()
        .any(|id| !entries(&repo_dir.join("backup").join(id).join("data")).is_empty())
}

fn listed_backups(pitr: &Pitr) -> Vec<String> {
    let out = pitr.run(["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

/// backup: PostgreSQL stopped (immediate) or the connection dropped meanwhile, and two
/// backups at once (the second refused by the repository lock).
#[tokio::test(flavor = "multi_thread")]
async fn backup_faults() {
    let dir = TestDir::new("matrix-backup");
    let repo = Repo::local(&dir);
    let repo_dir = dir.path().join("repo");
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql(
        "create table big as select g, md5(g::text) || md5((g+1)::text) from \
         generate_series(1, 1000000) g",
    );

    // The connection dropped while files are copied: exit 9, nothing listed.
    let child = backup_command(&pitr, &cluster).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !copying(&repo_dir) {
        assert!(
            Instant::now() < deadline,
            "the backup never started copying"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.sql(
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'pitr'",
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    one_line(&out);
    assert!(listed_backups(&pitr).is_empty());

    // PostgreSQL stopped (immediate) mid-backup: exit 9, nothing listed; after a restart the
    // next backup succeeds.
    let before = entries(&repo_dir.join("backup")).len();
    let child = backup_command(&pitr, &cluster).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while entries(&repo_dir.join("backup")).len() == before || !copying(&repo_dir) {
        assert!(
            Instant::now() < deadline,
            "the backup never started copying"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    run_ok(
        as_postgres(Path::new(PG_BIN).join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&cluster.data)
            .arg("stop"),
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    one_line(&out);
    assert!(listed_backups(&pitr).is_empty());
    cluster.start();

    // kill -9 of a backup at several moments: it is listed only if it finished, and the
    // backups after it succeed.
    let mut expected = 0;
    for delay_ms in [30u64, 400, 1500] {
        let mut child = backup_command(&pitr, &cluster).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        expected += usize::from(kill9(&mut child));
        assert_eq!(
            listed_backups(&pitr).len(),
            expected,
            "killed after {delay_ms} ms"
        );
    }

    // Two backups at once: the second is refused at once (exit 11, one line naming the
    // first by its pid), the first completes, listed and intact. The kill -9s above left
    // no lock behind: the kernel drops a dead holder's flock.
    // Archiving paused, the first waits for its WAL (up to --wal-timeout), holding the lock.
    cluster.sql("alter system set archive_command = 'false'");
    cluster.sql("select pg_reload_conf()");

    // kill -9 while the backup waits for its WAL: PostgreSQL finished it (its backup history
    // file is in pg_wal, archived later), pitr never recorded it. Not listed, and verify
    // below tells it from a lost manifest by the run history: a note, not a problem.
    // (A checkpoint removes archived ones: a new name, not a higher count.)
    let histories = |cluster: &PgCluster| {
        entries(&cluster.data.join("pg_wal"))
            .into_iter()
            .filter(|p| p.ends_with(".backup"))
            .collect::<Vec<_>>()
    };
    let before = histories(&cluster);
    let mut waiting = backup_command(&pitr, &cluster).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while histories(&cluster).iter().all(|name| before.contains(name)) {
        if Instant::now() >= deadline {
            let _ = waiting.kill();
            let out = waiting.wait_with_output().unwrap();
            panic!(
                "the backup never reached pg_backup_stop: {}\n{:?}",
                stderr(&out),
                entries(&cluster.data.join("pg_wal"))
            );
        }
        assert!(waiting.try_wait().unwrap().is_none(), "the backup ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!kill9(&mut waiting), "the backup finished without its WAL");
    assert_eq!(listed_backups(&pitr).len(), expected);

    let first = backup_command(&pitr, &cluster).spawn().unwrap();
    let holder = format!("pid {}", first.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(repo_dir.join("lock.json"))
        .unwrap_or_default()
        .contains(&format!("\"pid\": {}", first.id()))
    {
        assert!(
            Instant::now() < deadline,
            "the first backup never took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = backup_command(&pitr, &cluster).output().unwrap();
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    one_line(&out);
    assert!(stderr(&out).contains(&holder), "{}", stderr(&out));
    cluster.sql("alter system reset archive_command");
    cluster.sql("select pg_reload_conf()");
    let out = first.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The paused attempts counted as failures; later waits check that none come.
    cluster.sql("select pg_stat_reset_shared('archiver')");
    let listed = listed_backups(&pitr);
    assert_eq!(listed.len(), expected + 1, "{listed:?}");
    let mut ids = listed.clone();
    ids.dedup();
    assert_eq!(ids.len(), listed.len());
    // Something to switch away from: a switch right after pg_backup_stop's is a no-op.
    cluster.sql("insert into big values (0, 'after the backups')");
    cluster.archive_current_segment(Duration::from_secs(60));
    let out = pitr.run(["verify"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains("was interrupted before it finished"),
        "{said}"
    );
    cluster.stop();
}

fn restore_options(pgdata: PathBuf) -> RestoreOptions {
    RestoreOptions {
        pgdata,
        request: PlanRequest::default(),
        jobs: 2,
        force: false,
        dry_run: false,
        tablespace_map: Default::default(),
        restore_command: "false %f %p".into(),
        db_include: Vec::new(),
        tablespace_root: None,
        sync: true,
        server: Default::default(),
        progress: Arc::new(Silent),
        owner: None,
        claim: None,
        command: "restore",
        interrupt: Arc::new(pitr::interrupt::Interrupt::never()),
        config: Default::default(),
    }
}

/// restore: the repository failing on the first, a middle and the last object, a flipped
/// byte, a failing listing, a full disk, and kill -9.
#[tokio::test(flavor = "multi_thread")]
async fn restore_faults() {
    assert!(is_root(), "the fault matrix mounts tmpfs and needs root");
    let dir = TestDir::new("matrix-restore");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t as select g, md5(g::text) v from generate_series(1, 300000) g");
    let id = pitr.backup(&cluster);
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();

    let store = Arc::new(FaultStorage::new(Arc::new(FsStorage::new(
        dir.path().join("repo"),
    ))));
    let catalog = Catalog::new(store.clone() as Arc<dyn Storage>);
    let manifest = catalog.manifest(&id).await.unwrap();
    let last = manifest.files.iter().map(|f| f.object).max().unwrap();
    assert!(last >= 2, "a backup of several objects");
    let object = |n: u32| format!("backup/{id}/data/{n:06}.lz4");

    let target = dir.path().join("target");
    let cases: Vec<(Fault, u8)> = vec![
        (
            Fault::on(Op::Get)
                .matching(&object(0))
                .fail(FaultKind::Io(io::ErrorKind::ConnectionReset)),
            EXIT_STORAGE,
        ),
        (
            Fault::on(Op::Get)
                .matching(&object(last / 2))
                .fail(FaultKind::Timeout),
            EXIT_STORAGE,
        ),
        (
            Fault::on(Op::Get)
                .matching(&object(last))
                .fail(FaultKind::SlowDown),
            EXIT_STORAGE,
        ),
        (
            Fault::on(Op::Get)
                .matching(&object(last / 2))
                .flip_byte(5000),
            EXIT_CORRUPT,
        ),
        (
            Fault::on(Op::Get).matching(&object(0)).truncate_after(1000),
            EXIT_CORRUPT,
        ),
        (
            Fault::on(Op::List)
                .nth(1)
                .fail(FaultKind::Io(io::ErrorKind::ConnectionReset)),
            EXIT_STORAGE,
        ),
    ];
    for (fault, expected) in cases {
        let handle = store.inject(fault);
        let err: Error = restore(&catalog, &restore_options(target.clone()))
            .await
            .unwrap_err();
        assert_eq!((err.exit_code(), handle.fired()), (expected, 1), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        // Nothing half-restored is left where PostgreSQL or a user could start it.
        assert_eq!(entries(&target), Vec::<String>::new());
        store.clear();
    }

    // A full disk: 10, the directory emptied again.
    let full = Tmpfs::mount(&dir, "full", "20m");
    let err = restore(&catalog, &restore_options(full.0.join("data")))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), EXIT_LOCAL_IO, "{err}");
    assert!(entries(&full.0.join("data")).is_empty());
    drop(full);

    // kill -9 mid-restore, at several moments (pre-flight, copy, sync, the last files): the
    // directory is whole or cannot be started (no pg_control yet). Marked as an interrupted
    // restore, the same restore starts it over without --force; only the instant between
    // the marker's removal and pg_control's arrival leaves it for --force.
    for (i, delay_ms) in [20u64, 150, 400, 900].into_iter().enumerate() {
        let killed = dir.path().join(format!("killed-{i}"));
        let mut child = pitr
            .direct(["restore", "--pgdata"])
            .arg(&killed)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if kill9(&mut child) {
            assert_verifybackup(&killed);
            continue;
        }
        assert!(
            !killed.join("global/pg_control").exists(),
            "a half-restored directory is startable (killed after {delay_ms} ms)"
        );
        let marked = killed.join("pitr-restore.in-progress").exists();
        if killed.exists() && !entries(&killed).is_empty() && !marked {
            let out = pitr.run(["restore", "--pgdata", &killed.display().to_string()]);
            assert_eq!(code(&out), 7, "{}", stderr(&out));
            assert!(one_line(&out).contains("--force"), "{}", stderr(&out));
        }
        let mut args = vec!["restore"];
        if !marked {
            args.push("--force");
        }
        let out = pitr
            .direct(&args)
            .arg("--pgdata")
            .arg(&killed)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        if marked {
            assert!(
                stderr(&out).contains("holds an interrupted restore of backup"),
                "{}",
                stderr(&out)
            );
        }
        assert!(!killed.join("pitr-restore.in-progress").exists());
        assert_verifybackup(&killed);
    }

    // With the faults gone the same restore succeeds, in-process too.
    restore(&catalog, &restore_options(target.clone()))
        .await
        .unwrap();
    assert_verifybackup(&target);
}
