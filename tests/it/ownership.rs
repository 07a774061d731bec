//! pitr run as root on real parts: nothing it writes is root's. A backup run as root becomes
//! the data directory's owner, other commands give what they create in a local repository
//! to the repository's owner, a restore gives the data directory to the cluster's owner and
//! says to start the server as that user, and a restore refuses objects it cannot read
//! before writing anything.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;

/// `pitr --repo URL ARGS…` run directly as root (no runuser).
fn as_root(pitr: &Pitr, args: &[&str]) -> Output {
    Command::new(&pitr.bin)
        .arg("--repo")
        .arg(&pitr.repo)
        .args(args)
        .envs(pitr.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        run_ok(Command::new("id").args([flag, "postgres"]))
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// Every entry under `dir` (and `dir`), symbolic links themselves, with its owner.
fn owners_under(dir: &Path) -> Vec<(PathBuf, u32, u32)> {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    let mut found = vec![(dir.to_owned(), meta.uid(), meta.gid())];
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            found.extend(owners_under(&entry.unwrap().path()));
        }
    }
    found
}

fn assert_owned_by_postgres(dir: &Path) {
    let ids = postgres_ids();
    for (path, uid, gid) in owners_under(dir) {
        assert_eq!((uid, gid), ids, "{} is not postgres's", path.display());
    }
}

/// Stops the server in `data` when the test ends, however it ends.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = as_postgres(Path::new(PG_BIN).join("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(&self.0)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn root_runs_leave_nothing_the_cluster_owner_cannot_use() {
    if !is_root() {
        eprintln!("skipped: these tests run pitr as root; run the suite as root");
        return;
    }
    let dir = TestDir::new("ownership");
    let repo = Repo::local(&dir);
    let repo_dir = dir.path().join("repo");
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t (id int); insert into t select generate_series(1, 1000)");

    // A backup run as root becomes postgres: every object is postgres's, and verify run as
    // postgres reads them all.
    let backup_args = backup_args(&cluster);
    let backup_args: Vec<&str> = backup_args.iter().map(String::as_str).collect();
    let out = as_root(&pitr, &backup_args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = backup_id(&out);
    assert_owned_by_postgres(&repo_dir);
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // Another command run as root (pin writes pin.json) gives what it creates to the
    // repository's owner.
    let out = as_root(&pitr, &["pin", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_owned_by_postgres(&repo_dir);

    cluster.sql("insert into t values (1001)");
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();

    // An object only root can read (what an older root run left): restore, dry or not, says
    // so before writing anything.
    let object = owners_under(&repo_dir.join("backup").join(&id).join("data"))
        .into_iter()
        .map(|(path, ..)| path)
        .find(|path| path.is_file())
        .unwrap();
    std::os::unix::fs::chown(&object, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o600)).unwrap();
    let refused = dir.path().join("refused");
    for extra in [&["--dry-run"][..], &[]] {
        let mut args = vec!["restore", "--pgdata", refused.to_str().unwrap()];
        args.extend(extra);
        let out = pitr.run(&args);
        assert_eq!(code(&out), 8, "{extra:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot read an object the restore needs"),
            "{}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
        assert!(!refused.exists(), "{extra:?} wrote {}", refused.display());
    }
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(&object, Some(uid), Some(gid)).unwrap();

    // A restore run as root, into a directory under one of root's: the data directory and
    // every file in it are the cluster owner's (recorded in the manifest), and the printed
    // Next: command starts the server.
    let roots = dir.path().join("roots");
    std::fs::create_dir(&roots).unwrap();
    assert_eq!(std::fs::metadata(&roots).unwrap().uid(), 0);
    let data = roots.join("data");
    let out = as_root(&pitr, &["restore", "--pgdata", data.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_owned_by_postgres(&data);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let next = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Next: "))
        .unwrap_or_else(|| panic!("no Next: line in\n{stdout}"));
    // pg_ctl of the backup's version by its full path (Debian keeps it off PATH), with a log.
    assert_eq!(
        next,
        format!(
            "runuser -u postgres -- {PG_BIN}/pg_ctl -D {0} -l {0}/server.log start",
            data.display()
        )
    );

    // Its own socket, no archiving; then the command as printed (pg_ctl from PG_BIN).
    let restored = PgCluster::restored(&dir, "restored", data.clone());
    let _stop = StopOnDrop(data.clone());
    let path = format!("{PG_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let started = Command::new("sh")
        .args(["-c", next])
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "{next} failed");
    restored.wait_promoted(Duration::from_secs(120));
    assert_eq!(restored.sql("select count(*) from t"), "1001");
}

/// `sudo pitr init` into a new directory: the repository is the data directory owner's
/// (missing parents too), so that PostgreSQL archives into it as that user. A directory root
/// made beforehand is given over while empty, and refused with the command to run when it
/// holds something.
#[test]
fn init_as_root_gives_the_repository_to_the_cluster_owner() {
    if !is_root() {
        eprintln!("skipped: these tests run pitr as root; run the suite as root");
        return;
    }
    let dir = TestDir::new("init-as-root");
    let parent = dir.path().join("made-by-init");
    let repo_dir = parent.join("repo");
    let pitr = Pitr {
        repo: repo_dir.display().to_string(),
        ..Pitr::install(&dir, &Repo::local(&dir))
    };
    let mut cluster = PgCluster::initdb(&dir, "pg", &[]);
    let data = cluster.data.display().to_string();
    // The suite's encrypted run gives every pitr a passphrase: the repository must take it.
    let init: &[&str] = if encrypting() {
        &["init", "--encrypt", "--pgdata", &data]
    } else {
        &["init", "--pgdata", &data]
    };
    let out = as_root(&pitr, init);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_owned_by_postgres(&parent);
    cluster.configure(&format!(
        "archive_mode = on\narchive_command = '{}'\n",
        pitr.archive_command()
    ));
    cluster.start();
    cluster.sql("create table t (id int); insert into t select generate_series(1, 1000)");
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();
    assert_owned_by_postgres(&parent);

    // Made by root beforehand: given over while empty.
    let empty = dir.path().join("sudo-mkdir");
    std::fs::create_dir(&empty).unwrap();
    let out = as_root(
        &Pitr {
            repo: empty.display().to_string(),
            ..Pitr::install(&dir, &Repo::local(&dir))
        },
        init,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_owned_by_postgres(&empty);

    // Root's, and not empty: refused, nothing written.
    let full = dir.path().join("roots-files");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("notes"), "mine").unwrap();
    let out = as_root(
        &Pitr {
            repo: full.display().to_string(),
            ..Pitr::install(&dir, &Repo::local(&dir))
        },
        init,
    );
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let full = full.display();
    assert_eq!(
        stderr(&out),
        format!(
            "pitr init: {full}: the repository directory belongs to root, and postgres (who \
             owns {data} and archives) could not write it: `chown -R postgres: {full}` first, \
             or run `sudo -u postgres pitr --repo {full} init --pgdata {data}`\n"
        )
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("roots-files"))
            .unwrap()
            .count(),
        1
    );
}
