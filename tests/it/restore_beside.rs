//! Restore beside a running primary on the same host (issue 14): the printed `Next:` command
//! starts the copy while the primary runs, and the copy does not archive into the
//! repository unless asked (`--archive-mode preserve`); `--port` is honoured.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// The WAL and history files of timeline `timeline` in the local repository at `root`.
fn timeline_files(root: &Path, timeline: u32) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.join("wal")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let prefix = format!("{timeline:08X}");
            if name.starts_with(&prefix) {
                found.push(name);
            }
        }
    }
    found.sort();
    found
}

/// The archiver's marks (`.ready`, `.done`) of timeline `timeline` in `data`'s pg_wal.
fn archive_marks(data: &Path, timeline: u32) -> Vec<String> {
    let prefix = format!("{timeline:08X}");
    let mut marks: Vec<String> = std::fs::read_dir(data.join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    marks.sort();
    marks
}

/// `restore --pgdata DIR ARGS…`: the output and the directory.
fn restore(pitr: &Pitr, dir: &TestDir, name: &str, args: &[&str]) -> (String, PathBuf) {
    let data = dir.path().join(name);
    let mut all = vec!["restore".to_owned(), "--pgdata".to_owned()];
    all.push(data.display().to_string());
    all.extend(args.iter().map(|a| a.to_string()));
    let out = pitr.run(&all);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Shown when the test fails.
    println!("restore {args:?}:\n{stdout}");
    (stdout, data)
}

/// The port restore wrote (`wrote port = N…`), if it wrote one.
fn written_port(stdout: &str) -> Option<u16> {
    stdout.lines().find_map(|line| {
        let rest = line.strip_prefix("wrote port = ")?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// Runs the `Next:` command restore printed, as the postgres user when we are root, and
/// returns the server it started (stopped on drop): on the primary's socket directory, which
/// the restored configuration keeps.
fn start_as_printed(stdout: &str, data: &Path, socket_dir: &Path, port: u16) -> PgCluster {
    let command = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Next: "))
        .unwrap_or_else(|| panic!("no Next: line in {stdout}"))
        .to_owned();
    assert!(
        !command.starts_with("sudo"),
        "restore ran as the directory's owner: {command}"
    );
    // The server logs where the command's -l says; pg_ctl's own output goes to a file, not a
    // pipe we would wait on.
    assert!(
        command.ends_with(&format!("-l {}/server.log start", data.display())),
        "{command}"
    );
    let cluster = PgCluster::adopt(
        data.to_owned(),
        socket_dir.to_owned(),
        port,
        data.join("server.log"),
    );
    run_printed(&command, &data.with_extension("out"));
    cluster
}

/// Writes on a promoted copy and switches WAL a few times.
fn write_and_switch(copy: &PgCluster) {
    copy.sql("create table on_the_copy (id int)");
    for _ in 0..3 {
        copy.sql("insert into on_the_copy select generate_series(1, 1000)");
        copy.sql("select pg_switch_wal()");
    }
}

#[test]
fn a_copy_beside_the_primary_starts_and_does_not_archive() {
    let dir = TestDir::new("restore-beside");
    let repo = Repo::local(&dir);
    let root = PathBuf::from(&repo.url);
    let (pitr, mut primary) = archiving_cluster(&dir, &repo, "");
    primary.sql("create table t (id int primary key)");
    primary.sql("insert into t select generate_series(1, 100)");
    pitr.backup(&primary);
    primary.sql("insert into t select generate_series(101, 200)");
    primary.archive_current_segment(WAIT);

    // 0. A dry run says which port it would write, from the backup's configuration, and
    // refuses a directory this user cannot create (exit 7, one line), before any plan.
    let (dry, dry_data) = restore(&pitr, &dir, "dry", &["--dry-run"]);
    let dry_port = dry
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("would write port = ")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u16>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no port in the dry run: {dry}"));
    assert!(
        dry.contains(&format!(
            "would write port = {dry_port}: port {} is in use on this host (the cluster the \
             backup came from?)\n",
            primary.port
        )),
        "{dry}"
    );
    assert!(!dry_data.exists());
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let inside = closed.join("copy");
    let out = pitr.run(["restore", "--pgdata", inside.to_str().unwrap(), "--dry-run"]);
    if is_root() {
        // pitr runs as postgres: root's 0755 directory is not its to write in.
        assert_eq!(code(&out), 7, "{}", stderr(&out));
        assert_eq!(
            stderr(&out).trim_end(),
            format!(
                "pitr restore: {}: cannot be created: {} is not writable by postgres: create \
                 the directory first, owned by postgres (as root: mkdir, then chown), or \
                 restore as root",
                inside.display(),
                closed.display()
            )
        );
    }

    // 1. Beside the running primary, no --port: a free port and no archiving, both said.
    let (stdout, data) = restore(&pitr, &dir, "copy", &[]);
    assert!(
        stdout.contains("wrote archive_mode = off: the restored server does not archive"),
        "{stdout}"
    );
    assert!(
        stdout.contains("recovery follows timeline 1 (--target-timeline latest)"),
        "{stdout}"
    );
    let port = written_port(&stdout).unwrap_or_else(|| panic!("no port written: {stdout}"));
    assert_ne!(port, primary.port, "{stdout}");
    assert!(
        stdout.contains(&format!("on port {port}")),
        "the port is printed: {stdout}"
    );
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("archive_mode = off\n"), "{auto}");
    assert!(auto.contains(&format!("port = {port}\n")), "{auto}");
    // The copy keeps the primary's socket directory: the lock file is per port.
    let mut copy = start_as_printed(&stdout, &data, &primary.socket_dir, port);
    copy.wait_promoted(WAIT);
    assert_eq!(copy.sql("select count(*) from t"), "200");
    assert_eq!(
        copy.sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002"
    );
    write_and_switch(&copy);
    // The primary still runs and archives; the copy does not: no segment or history file
    // of its timeline is marked for the archiver (PostgreSQL marks one as it completes it,
    // within pg_switch_wal, when archiving), and none reached the repository.
    primary.archive_current_segment(WAIT);
    assert_eq!(copy.sql("show archive_mode"), "off");
    assert_eq!(
        archive_marks(&data, 2),
        Vec::<String>::new(),
        "the copy marked files of timeline 2 for archiving"
    );
    assert_eq!(
        timeline_files(&root, 2),
        Vec::<String>::new(),
        "timeline 2 reached the repository"
    );
    copy.stop();
    let out = pitr.run(["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!listed.contains("warning: timeline"), "{listed}");

    // 2. --archive-mode preserve: the copy archives its timeline 2 into the repository, and
    // list and restore then warn about a timeline with no backup of its own.
    let (stdout, data) = restore(
        &pitr,
        &dir,
        "archiving-copy",
        &["--archive-mode", "preserve"],
    );
    assert!(
        stdout.contains("archive settings kept") && !stdout.contains("archive_mode = off"),
        "{stdout}"
    );
    let port = written_port(&stdout).unwrap_or_else(|| panic!("no port written: {stdout}"));
    let mut copy = start_as_printed(&stdout, &data, &primary.socket_dir, port);
    copy.wait_promoted(WAIT);
    write_and_switch(&copy);
    let segment = copy.archive_current_segment(WAIT);
    assert!(segment.starts_with("00000002"), "{segment}");
    let deadline = Instant::now() + WAIT;
    let files = loop {
        let files = timeline_files(&root, 2);
        if files.iter().any(|f| f.starts_with(&segment)) || Instant::now() > deadline {
            break files;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        files.iter().any(|f| f.starts_with("00000002.history")),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.starts_with(&segment)), "{files:?}");
    copy.stop();
    let out = pitr.run(["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("warning: timeline 2 has no backup taken on it or after it"),
        "{listed}"
    );
    let out = pitr.run(["restore", "--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        plan.contains("timeline:  2 (--target-timeline latest)")
            && plan.contains("warning: timeline 2 has no backup"),
        "{plan}"
    );
    let out = pitr.run(["restore", "--dry-run", "--target-timeline", "current"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        plan.contains("timeline:  1 (--target-timeline current)")
            && !plan.contains("warning: timeline"),
        "{plan}"
    );

    // 3. --port is honoured. The copy listens on the primary's private socket directory
    // only, where a port names a socket file: one no other server there holds is free.
    let asked = primary.port + 100;
    let (stdout, data) = restore(
        &pitr,
        &dir,
        "port-copy",
        &[
            "--port",
            &asked.to_string(),
            "--target-timeline",
            "current",
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
    );
    assert!(
        stdout.contains(&format!("wrote port = {asked} (--port)")),
        "{stdout}"
    );
    let mut copy = start_as_printed(&stdout, &data, &primary.socket_dir, asked);
    copy.wait_promoted(WAIT);
    assert_eq!(copy.sql("show port"), asked.to_string());
    copy.stop();
    primary.stop();
}
