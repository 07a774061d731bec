//! `pitr drill` on real parts (issue 13): a healthy repository passes with pg_amcheck and
//! user checks and reports restore, replay and total seconds; a failing user check and a
//! corrupted backup object exit non-zero with the reason; the scratch directory and its
//! server are gone after each run, failed or not.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Processes whose command line names `dir` (a scratch server left running).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) && !cmdline.contains("cargo") {
                found.push(cmdline);
            }
        }
    }
    found
}

/// Whether a backend of the scratch server under `scratch` runs a query (backends name
/// their query in the process title, not the directory: they are found by their parent).
fn scratch_backend_busy(scratch: &Path) -> bool {
    let needle = scratch.display().to_string();
    let mut postmasters = Vec::new();
    let mut titles = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let parent = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|p| p.trim().parse::<u32>().ok());
        if cmdline.contains(&needle) && cmdline.contains("postgres") {
            postmasters.push(pid);
        }
        titles.push((parent, cmdline));
    }
    titles.iter().any(|(parent, title)| {
        parent.is_some_and(|p| postmasters.contains(&p)) && title.contains("[local] SELECT")
    })
}

/// The scratch parent is empty again and no server runs from it.
fn assert_scratch_gone(scratch: &Path) {
    let left: Vec<_> = std::fs::read_dir(scratch)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    let running = processes_under(scratch);
    assert!(
        running.is_empty(),
        "scratch server still running: {running:?}"
    );
}

fn drill(pitr: &Pitr, scratch: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "drill".to_owned(),
        "--scratch-dir".to_owned(),
        scratch.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = pitr.run(&all);
    println!(
        "drill {args:?}: exit {}\n{}\n{}",
        code(&out),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

/// The same run as root, directly: the scratch server must then run as the cluster's owner.
fn drill_as_root(pitr: &Pitr, scratch: &Path, args: &[&str]) -> Output {
    let out = Command::new(&pitr.bin)
        .arg("--repo")
        .arg(&pitr.repo)
        .envs(pitr.env.iter().map(|(k, v)| (k, v)))
        .arg("drill")
        .arg("--scratch-dir")
        .arg(scratch)
        .args(args)
        .output()
        .unwrap();
    println!(
        "drill as root {args:?}: exit {}\n{}\n{}",
        code(&out),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

#[test]
fn drills_pass_on_a_healthy_repository_and_fail_with_the_reason() {
    let dir = TestDir::new("drill");
    let repo = Repo::local(&dir);
    // A configuration that names its own data directory and a pid file outside it, as
    // packaged ones do: the scratch server must use neither.
    let pid_file = dir.path().join("production.pid");
    let (pitr, cluster) = archiving_cluster(
        &dir,
        &repo,
        &format!(
            "data_directory = '{}'\nexternal_pid_file = '{}'\n",
            dir.path().join("pg").join("data").display(),
            pid_file.display()
        ),
    );
    let production_pid = std::fs::read_to_string(&pid_file).unwrap();
    cluster.sql("CREATE DATABASE shop");
    cluster.sql_in(
        "shop",
        "CREATE TABLE orders (id serial PRIMARY KEY, amount int NOT NULL); \
         CREATE INDEX ON orders (amount); \
         INSERT INTO orders (amount) SELECT g FROM generate_series(1, 5000) g",
    );
    let id = pitr.backup(&cluster);
    cluster.sql_in(
        "shop",
        "INSERT INTO orders (amount) SELECT g FROM generate_series(1, 1000) g",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let target = cluster.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(1100));
    cluster.sql_in(
        "shop",
        "INSERT INTO orders (amount) SELECT g FROM generate_series(1, 500) g",
    );
    cluster.archive_current_segment(WAIT);
    let scratch = dir.subdir("scratch");

    // Healthy: everything replayed, amcheck and three user checks pass.
    let checks = dir.write(
        "checks.toml",
        r#"
[[check]]
name = "orders are there"
database = "shop"
sql = "SELECT count(*) > 0 FROM orders"
expect = true

[[check]]
name = "every order"
database = "shop"
sql = "SELECT id FROM orders"
min_rows = 6500

[[check]]
name = "the shop database"
sql = "SELECT datname FROM pg_database WHERE datname = 'shop'"
equals = "shop"
"#,
    );
    let checks_arg = checks.display().to_string();
    let out = drill(&pitr, &scratch, &["--checks", &checks_arg, "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["backup"], id.as_str());
    let seconds = |key: &str| report[key].as_f64().unwrap();
    assert!(seconds("restore_seconds") > 0.0);
    assert!(seconds("replay_seconds") > 0.0);
    let total = seconds("restore_seconds") + seconds("replay_seconds");
    assert!((seconds("total_seconds") - total).abs() < 0.01, "{report}");
    assert!(report["bytes_restored"].as_u64().unwrap() > 1 << 20);
    assert!(report["wal_replayed_bytes"].as_u64().unwrap() > 0);
    let checks = report["checks"].as_array().unwrap();
    let kinds: Vec<&str> = checks.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["target", "amcheck", "user", "user", "user"]);
    assert!(checks.iter().all(|c| c["passed"] == true), "{report}");
    assert_scratch_gone(&scratch);

    // To a time, as root (the server runs as the cluster's owner): the rows of that moment.
    let at_target = dir.write(
        "at_target.toml",
        "[[check]]\ndatabase = \"shop\"\nsql = \"SELECT count(*) FROM orders\"\nequals = \"6000\"\n",
    );
    let at_target = at_target.display().to_string();
    let out = drill_as_root(
        &pitr,
        &scratch,
        &["--target-time", &target, "--checks", &at_target],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("drill PASSED"), "{text}");
    assert!(text.contains("total:"), "{text}");
    assert_scratch_gone(&scratch);

    // A user check that fails: exit 13, the check and why in the error.
    let failing = dir.write(
        "failing.toml",
        "[[check]]\nname = \"too many orders\"\ndatabase = \"shop\"\n\
         sql = \"SELECT count(*) FROM orders\"\nequals = \"1\"\n",
    );
    let failing = failing.display().to_string();
    let out = drill(&pitr, &scratch, &["--checks", &failing, "--no-amcheck"]);
    assert_eq!(code(&out), 13, "{}", stderr(&out));
    let error = stderr(&out);
    assert!(error.contains("too many orders"), "{error}");
    assert!(error.contains("expected '1', got '6500'"), "{error}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
    assert_scratch_gone(&scratch);

    // A checks file that does not parse is refused before anything is restored.
    let broken = dir.write("broken.toml", "[[check]]\nsql = \"SELECT 1\"\n");
    let out = drill(
        &pitr,
        &scratch,
        &["--checks", &broken.display().to_string()],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exactly one of expect"),
        "{}",
        stderr(&out)
    );

    // A corrupted backup object: exit 5, naming the corruption; nothing left behind.
    let object = repo_object(&dir, &id);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    let out = drill(&pitr, &scratch, &[]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
    assert_scratch_gone(&scratch);

    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), production_pid);

    // The runs are in the repository's history.
    let out = pitr.run(["history", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(history.matches("\"drill\"").count() >= 4, "{history}");
}

/// The largest data object of backup `id` in the local repository under `dir`.
fn repo_object(dir: &TestDir, id: &str) -> std::path::PathBuf {
    let data = dir.path().join("repo").join("backup").join(id).join("data");
    std::fs::read_dir(&data)
        .unwrap_or_else(|e| panic!("{}: {e}", data.display()))
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap()
}

/// The same drill on an S3-compatible server 20 ms away: the scratch server fetches its WAL
/// through the repository's restore_command, with the S3 settings pitr was given.
#[tokio::test(flavor = "multi_thread")]
async fn a_drill_on_an_s3_repository_passes() {
    let server = S3Server::start_with_latency("drill", Duration::from_millis(20)).await;
    let dir = TestDir::new("drill-s3");
    let repo = Repo::s3(&server, "drill");
    let (pitr, cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g",
    );
    pitr.backup(&cluster);
    cluster.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(20001, 25000) g");
    cluster.archive_current_segment(WAIT);
    let scratch = dir.subdir("scratch");
    let checks = dir.write(
        "checks.toml",
        "[[check]]\nsql = \"SELECT count(*) FROM t\"\nequals = \"25000\"\n",
    );
    let out = drill(
        &pitr,
        &scratch,
        &["--checks", &checks.display().to_string(), "--json"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert!(report["bytes_read"].as_u64().unwrap() > 0);
    assert_scratch_gone(&scratch);
}

/// A heap page damaged in the cluster itself (so every checksum of the backup is right):
/// the restore works, pg_amcheck finds the damage, and the drill fails with exit 13.
#[test]
fn a_drill_finds_a_damaged_table_with_pg_amcheck() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = TestDir::new("drill-amcheck");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql(
        "CREATE TABLE damaged AS SELECT g AS id, 'row ' || g AS v FROM generate_series(1, 50) g",
    );
    let file = cluster
        .data
        .join(cluster.sql("SELECT pg_relation_filepath('damaged')"));
    cluster.sql("CHECKPOINT");
    cluster.stop();
    // The first line pointers of page 0 (after its 24-byte header) become normal ones that
    // point past the end of the page: lp_off 0x7ff0, lp_flags 1, lp_len 64.
    let item = (0x7ff0u32 | (1 << 15) | (64 << 17)).to_le_bytes();
    let mut handle = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    handle.seek(SeekFrom::Start(24)).unwrap();
    handle.write_all(&item.repeat(4)).unwrap();
    drop(handle);
    cluster.start();
    pitr.backup(&cluster);
    cluster.archive_current_segment(WAIT);
    let scratch = dir.subdir("scratch");
    let out = drill(&pitr, &scratch, &["--json"]);
    assert_eq!(code(&out), 13, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let amcheck = &report["checks"][1];
    assert_eq!(amcheck["kind"], "amcheck");
    assert_eq!(amcheck["passed"], false, "{report}");
    assert!(
        amcheck["detail"].as_str().unwrap().contains("damaged"),
        "{report}"
    );
    assert!(stderr(&out).contains("pg_amcheck"), "{}", stderr(&out));
    assert_scratch_gone(&scratch);
}

/// SIGTERM (systemd stopping the unit, a timeout) in the middle of a drill: pitr stops the
/// scratch server, removes the directory, and exits 143 (128 + SIGTERM).
#[test]
fn a_drill_stopped_by_sigterm_leaves_nothing_behind() {
    let dir = TestDir::new("drill-term");
    let repo = Repo::local(&dir);
    let (pitr, cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g");
    pitr.backup(&cluster);
    cluster.archive_current_segment(WAIT);
    let scratch = dir.subdir("scratch");
    // A check that takes long: the signal comes while the server runs.
    let slow = dir.write(
        "slow.toml",
        "[[check]]\nsql = \"SELECT pg_sleep(60) IS NOT NULL\"\nexpect = true\n",
    );
    let mut child = pitr
        .direct([
            "drill",
            "--no-amcheck",
            "--scratch-dir",
            &scratch.display().to_string(),
            "--checks",
            &slow.display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    // The scratch server's backends name their query, not the directory: wait for one
    // running the check.
    while !scratch_backend_busy(&scratch) {
        assert!(
            std::time::Instant::now() < deadline,
            "the drill never got to its checks"
        );
        assert!(child.try_wait().unwrap().is_none(), "the drill ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!processes_under(&scratch).is_empty());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut error = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut error).unwrap();
    assert_eq!(status.code(), Some(143), "{error}");
    assert!(
        error.contains("pitr drill: stopped by SIGTERM: the scratch server was stopped and "),
        "{error}"
    );
    assert_scratch_gone(&scratch);
    // Nor its replay claim: expire is not held to a drill that is gone.
    let claims = dir.path().join("repo/replay");
    let left: Vec<_> = std::fs::read_dir(&claims)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "replay claims left: {left:?}");
}
