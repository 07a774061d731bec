//! Configuration outside the data directory (issue 23): a cluster created the Debian way
//! (`pg_createcluster`, configuration in /etc/postgresql/15/<name>) and one started with
//! `-c config_file=` elsewhere. The backup records the configuration the server read; a
//! restore into a new directory starts with the printed command on the printed port with the
//! original pg_hba rules and the include chain; in place /etc is left alone (unless
//! `--restore-config`); `--config-dir` makes a cluster `pg_ctlcluster` starts; a drill passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);
const SOCKETS: &str = "/var/run/postgresql";

/// A cluster made by `pg_createcluster`: /etc is the machine's, so it is always dropped
/// (stopped first), whatever the test's outcome.
struct DebianCluster {
    name: String,
}

impl DebianCluster {
    /// Owns the name before creating anything: a failed creation is cleaned up too. Its
    /// port is set when it starts ([`DebianCluster::start_on_tcp`]).
    fn create(name: &str, data: &Path) -> Self {
        let cluster = DebianCluster {
            name: name.to_owned(),
        };
        run_ok(
            Command::new("pg_createcluster")
                .args(["15", name, "-d"])
                .arg(data),
        );
        cluster
    }

    /// Starts it listening on localhost (Debian's default) on a port free when chosen, or,
    /// when another process took it first, on another; returns the port.
    fn start_on_tcp(&self, log: &Path) -> u16 {
        let ((), port) = start_on_a_free_port("the Debian cluster", |port| {
            use std::io::Write;
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(self.etc().join("postgresql.conf"))
                .unwrap();
            writeln!(conf, "port = {port}").unwrap();
            let logged = std::fs::read_to_string(log).unwrap_or_default().len();
            let out = Command::new("pg_ctlcluster")
                .args(["15", &self.name, "start"])
                .output()
                .unwrap();
            if out.status.success() {
                return Some(());
            }
            let all = std::fs::read_to_string(log).unwrap_or_default();
            let attempt = all.get(logged..).unwrap_or(&all);
            assert!(
                attempt.contains("could not bind") || attempt.contains("already in use"),
                "pg_ctlcluster start failed: {}\n{all}",
                stderr(&out)
            );
            None
        });
        port
    }

    /// Adopts a cluster something else created (restore --config-dir): dropped on drop.
    fn adopt(name: &str) -> Self {
        DebianCluster {
            name: name.to_owned(),
        }
    }

    fn etc(&self) -> PathBuf {
        Path::new("/etc/postgresql/15").join(&self.name)
    }

    fn ctl(&self, action: &str) {
        run_ok(Command::new("pg_ctlcluster").args(["15", &self.name, action]));
    }

    fn write_conf(&self, name: &str, content: &str) {
        let path = self.etc().join(name);
        std::fs::write(&path, content).unwrap();
        chown_to_postgres(&path);
    }
}

impl Drop for DebianCluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", "15", &self.name])
            .output();
        // pg_dropcluster leaves files it did not make (conf.d's, those kept beside): the
        // directory is this test's own.
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// Every file under `dir` and its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn stdout_of(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}\n{}", stderr(out));
    assert_eq!(code(out), 0, "{stdout}\n{}", stderr(out));
    stdout
}

/// The `Next:` command and the port of "PostgreSQL will listen on port N".
fn next_and_port(stdout: &str) -> (String, u16) {
    let command = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Next: "))
        .unwrap_or_else(|| panic!("no Next: line in {stdout}"))
        .to_owned();
    let port = stdout
        .split("listen on port ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port printed in {stdout}"));
    (command, port)
}

/// The checks every restored copy passes: the rows, the include chain, the original
/// pg_hba rule.
fn check_copy(copy: &PgCluster) {
    copy.wait_promoted(WAIT);
    assert_eq!(copy.sql("select count(*) from t"), "200");
    assert_eq!(copy.sql("show work_mem"), "7MB");
    assert_eq!(copy.sql("show maintenance_work_mem"), "77MB");
    assert_eq!(
        copy.sql("select count(*) from pg_hba_file_rules where 'pitr_marker' = any(user_name)"),
        "1"
    );
}

#[test]
fn a_debian_cluster_restores_anywhere_with_its_configuration() {
    if !is_root() || !Path::new("/usr/bin/pg_createcluster").exists() {
        eprintln!("skipped: needs root and postgresql-common");
        return;
    }
    let dir = TestDir::new("debian-config");
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let name = format!("pitrdeb{}", std::process::id());
    let data = dir.path().join("data");
    let debian = DebianCluster::create(&name, &data);
    let etc = debian.etc();
    // An include chain (include_dir with files of its own) and a pg_hba rule of this cluster.
    debian.write_conf(
        "conf.d/00-archive.conf",
        &format!(
            "archive_mode = on\narchive_command = '{}'\n",
            pitr.archive_command()
        ),
    );
    debian.write_conf("conf.d/01-a.conf", "work_mem = '7MB'\n");
    debian.write_conf("conf.d/02-b.conf", "maintenance_work_mem = '77MB'\n");
    let hba = std::fs::read_to_string(etc.join("pg_hba.conf")).unwrap();
    debian.write_conf(
        "pg_hba.conf",
        &format!("{hba}\nlocal all pitr_marker reject\n"),
    );
    let out = pitr
        .command(["init", "--pgdata"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let log = PathBuf::from(format!("/var/log/postgresql/postgresql-15-{name}.log"));
    let port = debian.start_on_tcp(&log);
    let mut original = PgCluster::adopt(data.clone(), SOCKETS.into(), port, log);
    original.sql("create table t (id int primary key)");
    original.sql("insert into t select generate_series(1, 100)");
    let out = pitr.run(backup_args(&original));
    let stdout = stdout_of(&out);
    assert!(
        stdout.contains("configuration outside the data directory recorded (6 files)"),
        "{stdout}"
    );
    original.sql("insert into t select generate_series(101, 200)");
    original.archive_current_segment(WAIT);
    let etc_before = tree(&etc);

    // The manifest lists the files by their original paths; verify checks their object.
    let out = pitr.run(["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let configuration = &list["backups"][0]["configuration"];
    assert_eq!(
        configuration["config_file"],
        etc.join("postgresql.conf").display().to_string()
    );
    let paths: Vec<&str> = configuration["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for file in [
        "postgresql.conf",
        "conf.d/00-archive.conf",
        "conf.d/01-a.conf",
        "conf.d/02-b.conf",
        "pg_hba.conf",
        "pg_ident.conf",
    ] {
        assert!(
            paths.contains(&etc.join(file).display().to_string().as_str()),
            "{file} not in {paths:?}"
        );
    }
    stdout_of(&pitr.run(["verify"]));

    // 1. Into a new directory beside the running original: the printed command starts it
    // on the printed port, with the original's rules and includes.
    let copy_dir = dir.path().join("copy");
    let out = pitr.run(["restore", "--pgdata", copy_dir.to_str().unwrap()]);
    let stdout = stdout_of(&out);
    let (command, copy_port) = next_and_port(&stdout);
    assert_ne!(copy_port, port, "{stdout}");
    assert!(
        stdout.contains("data_directory"),
        "the change is said: {stdout}"
    );
    let conf = std::fs::read_to_string(copy_dir.join("postgresql.conf")).unwrap();
    assert!(conf.contains("# pitr restore: external_pid_file"), "{conf}");
    // backup_manifest lists the configuration written into the directory.
    assert_verifybackup(&copy_dir);
    let mut copy = PgCluster::adopt(
        copy_dir.clone(),
        SOCKETS.into(),
        copy_port,
        dir.path().join("copy.log"),
    );
    run_printed(&command, &dir.path().join("copy.log"));
    check_copy(&copy);
    assert_eq!(
        copy.sql("show config_file"),
        copy_dir.join("postgresql.conf").display().to_string()
    );
    assert_eq!(
        copy.sql("show hba_file"),
        copy_dir.join("pg_hba.conf").display().to_string()
    );
    copy.stop();
    assert_eq!(tree(&etc), etc_before, "a restore elsewhere changed /etc");

    // 2. --config-dir: a Debian cluster of its own that pg_ctlcluster starts.
    let copy_name = format!("{name}c");
    let copied = DebianCluster::adopt(&copy_name);
    let copy2_dir = dir.path().join("copy2");
    let out = pitr.run([
        "restore",
        "--pgdata",
        copy2_dir.to_str().unwrap(),
        "--config-dir",
        copied.etc().to_str().unwrap(),
    ]);
    let stdout = stdout_of(&out);
    let (command, copy2_port) = next_and_port(&stdout);
    assert_eq!(command, format!("pg_ctlcluster 15 {copy_name} start"));
    assert!(!copy2_dir.join("postgresql.conf").exists());
    let mut copy2 = PgCluster::adopt(
        copy2_dir.clone(),
        SOCKETS.into(),
        copy2_port,
        dir.path().join("copy2.log"),
    );
    run_printed(&command, &dir.path().join("copy2.log"));
    check_copy(&copy2);
    assert_eq!(copy2.sql("show cluster_name"), format!("15/{copy_name}"));
    assert_eq!(copy2.sql("show port"), copy2_port.to_string());
    copy2.stop();
    drop(copied);
    assert_eq!(
        tree(&etc),
        etc_before,
        "--config-dir changed the original's /etc"
    );

    // 3. A drill on such a cluster passes.
    let scratch = dir.subdir("scratch");
    let out = pitr.run(["drill", "--scratch-dir", scratch.to_str().unwrap()]);
    stdout_of(&out);

    // 4. In place: /etc is left as it is (a change made since the backup stays)...
    debian.ctl("stop");
    original.stop();
    debian.write_conf("conf.d/01-a.conf", "work_mem = '9MB'\n");
    let etc_changed = tree(&etc);
    let out = pitr.run(["restore", "--force", "--pgdata", data.to_str().unwrap()]);
    let stdout = stdout_of(&out);
    let (command, _) = next_and_port(&stdout);
    assert_eq!(command, format!("pg_ctlcluster 15 {name} start"));
    assert!(stdout.contains("left as they are"), "{stdout}");
    assert_eq!(tree(&etc), etc_changed, "an in-place restore changed /etc");
    assert!(!data.join("postgresql.conf").exists());
    run_printed(&command, &dir.path().join("inplace.log"));
    original = PgCluster::adopt(data.clone(), SOCKETS.into(), port, dir.path().join("x.log"));
    original.wait_promoted(WAIT);
    assert_eq!(original.sql("select count(*) from t"), "200");
    assert_eq!(original.sql("show work_mem"), "9MB");
    debian.ctl("stop");
    original.stop();

    // ...unless --restore-config: the backup's files return, the ones there kept beside.
    let out = pitr.run([
        "restore",
        "--force",
        "--restore-config",
        "--pgdata",
        data.to_str().unwrap(),
    ]);
    let stdout = stdout_of(&out);
    assert_eq!(
        std::fs::read_to_string(etc.join("conf.d/01-a.conf")).unwrap(),
        "work_mem = '7MB'\n"
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(etc.join("conf.d"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("01-a.conf.pitr-"))
        .collect();
    assert_eq!(aside.len(), 1, "{stdout}");
    // Files equal to the backup's are left as they are: nothing else kept beside.
    let all_aside = tree(&etc)
        .into_keys()
        .filter(|p| p.to_string_lossy().contains(".pitr-"))
        .count();
    assert_eq!(all_aside, 1, "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&aside[0]).unwrap(),
        "work_mem = '9MB'\n"
    );
    let (command, _) = next_and_port(&stdout);
    run_printed(&command, &dir.path().join("inplace2.log"));
    original = PgCluster::adopt(data.clone(), SOCKETS.into(), port, dir.path().join("x.log"));
    original.wait_promoted(WAIT);
    assert_eq!(original.sql("show work_mem"), "7MB");
    debian.ctl("stop");
    original.stop();
}

#[test]
fn a_config_file_elsewhere_is_restored_into_the_new_directory() {
    let dir = TestDir::new("config-elsewhere");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = initialised_cluster(&dir, &repo);
    cluster.configure(&format!(
        "archive_mode = on\narchive_command = '{}'\n",
        pitr.archive_command()
    ));
    // The configuration moves out; a stale pg_hba.conf stays in the data directory unused.
    let etc = dir.subdir("etc");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    let conf = std::fs::read_to_string(cluster.data.join("postgresql.conf")).unwrap();
    let hba = std::fs::read_to_string(cluster.data.join("pg_hba.conf")).unwrap();
    std::fs::remove_file(cluster.data.join("postgresql.conf")).unwrap();
    std::fs::write(
        etc.join("postgresql.conf"),
        format!(
            "{conf}\nhba_file = '{}'\ninclude_dir 'conf.d'\n",
            etc.join("pg_hba.conf").display()
        ),
    )
    .unwrap();
    std::fs::write(
        etc.join("pg_hba.conf"),
        format!("{hba}\nlocal all pitr_marker reject\n"),
    )
    .unwrap();
    std::fs::write(etc.join("conf.d/01-a.conf"), "work_mem = '7MB'\n").unwrap();
    std::fs::write(
        etc.join("conf.d/02-b.conf"),
        "maintenance_work_mem = '77MB'\n",
    )
    .unwrap();
    chown_to_postgres(&etc);
    let log = dir.path().join("elsewhere.log");
    run_ok(
        as_postgres(cluster.bin.join("pg_ctl"))
            .args(["-w", "-D"])
            .arg(&cluster.data)
            .arg("-o")
            .arg(format!(
                "-c config_file={}",
                etc.join("postgresql.conf").display()
            ))
            .arg("-l")
            .arg(&log)
            .arg("start"),
    );
    let original = PgCluster::adopt(
        cluster.data.clone(),
        cluster.socket_dir.clone(),
        cluster.port,
        log,
    );
    cluster.stop();
    original.sql("create table t (id int primary key)");
    original.sql("insert into t select generate_series(1, 100)");
    pitr.backup(&original);
    original.sql("insert into t select generate_series(101, 200)");
    original.archive_current_segment(WAIT);

    let copy_dir = dir.path().join("copy");
    let out = pitr.run(["restore", "--pgdata", copy_dir.to_str().unwrap()]);
    let stdout = stdout_of(&out);
    assert!(
        stdout.contains("pg_hba.conf was there: kept as"),
        "{stdout}"
    );
    assert_verifybackup(&copy_dir);
    let (command, copy_port) = next_and_port(&stdout);
    let copy = PgCluster::restored_archiving(&dir, "copy-sockets", copy_dir.clone());
    assert_eq!(copy.port, copy_port);
    run_printed(&command, &dir.path().join("copy.log"));
    let copy = PgCluster::adopt(
        copy_dir,
        copy.socket_dir.clone(),
        copy_port,
        dir.path().join("copy.log"),
    );
    check_copy(&copy);
}
