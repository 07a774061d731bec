//! Monitoring on one live PostgreSQL 15 cluster: `pitr check` (healthy, a stale backup, an
//! unreadable repository, archiving broken proven by `--switch-wal`), the run history that
//! backup, verify and check record, and `pitr metrics` printed and served, parsed as
//! Prometheus text and compared with what `pitr list` says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

fn conninfo(cluster: &PgCluster) -> String {
    format!(
        "host={} port={} user=postgres",
        cluster.socket_dir.display(),
        cluster.port
    )
}

fn check_json(pitr: &Pitr, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["check", "--json"];
    all.extend(args);
    let out = pitr.run(&all);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    });
    (code(&out), report)
}

fn state_of<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))["state"]
        .as_str()
        .unwrap()
}

fn gauge(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match sample.value {
        prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name} is {other:?}"),
    }
}

fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn unix(text: &str) -> f64 {
    let time = chrono::DateTime::parse_from_rfc3339(text).unwrap();
    time.timestamp_micros() as f64 / 1e6
}

/// GET `path` over plain HTTP/1.1; the status line and the body.
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[test]
fn check_history_and_metrics_on_a_live_cluster() {
    let dir = TestDir::new("check");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "track_commit_timestamp = on");
    let db = conninfo(&cluster);

    // An empty repository: no backup is CRITICAL.
    let (status, report) = check_json(&pitr, &["--check-verify-age", "off"]);
    assert_eq!(status, 2, "{report:#}");
    assert_eq!(state_of(&report, "backup_age"), "CRITICAL");
    assert_eq!(state_of(&report, "backups"), "CRITICAL");

    cluster.sql("create table t as select g from generate_series(1, 1000) g");
    let backup_id = pitr.backup(&cluster);
    cluster.sql("insert into t select g from generate_series(1, 1000) g");
    cluster.archive_current_segment(Duration::from_secs(60));
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // Healthy, without and with the server, and with the archive path proven end to end.
    let out = pitr.run(["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    for name in ["backup_age", "archive_lag", "backups", "verify_age"] {
        assert!(text.contains(&format!("OK {name}: ")), "{text}");
    }
    let (status, report) = check_json(&pitr, &["--dbname", &db, "--switch-wal"]);
    assert_eq!(status, 0, "{report:#}");
    assert_eq!(report["state"], "OK");
    assert_eq!(report["exit_code"], 0);
    for name in [
        "backup_age",
        "archive_lag",
        "archiver",
        "backups",
        "verify_age",
        "switch_wal",
    ] {
        assert_eq!(state_of(&report, name), "OK", "{report:#}");
    }
    let backups = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "backups")
        .unwrap();
    assert_eq!(backups["value"], 1.0);

    // No backup within the age limit.
    std::thread::sleep(Duration::from_millis(1100));
    let out = pitr.run(["--check-backup-age", "1s", "check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 2, "{text}");
    assert!(
        text.contains(&format!(
            "CRITICAL backup_age: last complete backup {backup_id}"
        )),
        "{text}"
    );
    // The same threshold from the environment, as a WARNING/CRITICAL pair.
    let out = pitr
        .command(["check"])
        .env("PITR_CHECK_BACKUP_AGE", "1s,1w")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stdout));
    let out = pitr.run(["--check-backup-age", "soon", "check"]);
    assert_eq!(
        code(&out),
        3,
        "a bad threshold is UNKNOWN: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("check_backup_age"),
        "{}",
        stderr(&out)
    );

    let out = pitr.run(["check", "--no-such-flag"]);
    assert_eq!(
        code(&out),
        3,
        "a bad command line is UNKNOWN: {}",
        stderr(&out)
    );

    // A repository that cannot be read: UNKNOWN with the reason.
    let empty = dir.subdir("not-a-repository");
    chown_to_postgres(&empty);
    let out = as_postgres(&pitr.bin)
        .arg("--repo")
        .arg(&empty)
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 3, "{text}{}", stderr(&out));
    assert_eq!(
        text.trim_end(),
        format!(
            "UNKNOWN repository: cannot read the repository: no repository at file://{} (check \
             --repo)",
            empty.display()
        ),
    );
    assert!(
        std::fs::read_dir(&empty).unwrap().next().is_none(),
        "no history written where no repository is"
    );

    // Metrics, printed: values as the repository holds them.
    let list: Value = serde_json::from_slice(&pitr.run(["list", "--json"]).stdout).unwrap();
    let out = pitr.run(["metrics"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let scrape = parse_metrics(&String::from_utf8_lossy(&out.stdout));
    let backup = &list["backups"][0];
    assert_eq!(
        gauge(&scrape, "pitr_backup_count", Some(("type", "full"))),
        1.0
    );
    assert_eq!(
        gauge(
            &scrape,
            "pitr_backup_last_time_seconds",
            Some(("type", "full"))
        ),
        unix(backup["stop_time"].as_str().unwrap())
    );
    assert_eq!(
        gauge(&scrape, "pitr_backup_last_stored_bytes", None),
        backup["stored_bytes"].as_f64().unwrap()
    );
    let window = &list["recovery_window"][0];
    assert_eq!(
        gauge(
            &scrape,
            "pitr_recovery_window_start_seconds",
            Some(("timeline", "1"))
        ),
        unix(window["from"].as_str().unwrap())
    );
    assert_eq!(
        gauge(
            &scrape,
            "pitr_recovery_window_end_seconds",
            Some(("timeline", "1"))
        ),
        unix(window["until"].as_str().unwrap())
    );
    let last_segment = list["wal"][0]["last_segment"].as_str().unwrap();
    assert_eq!(
        gauge(
            &scrape,
            "pitr_wal_newest_segment_number",
            Some(("timeline", "1"))
        ),
        u64::from_str_radix(&last_segment[16..], 16).unwrap() as f64
    );
    assert!(
        gauge(&scrape, "pitr_repository_stored_bytes", None)
            > backup["stored_bytes"].as_f64().unwrap()
    );
    assert_eq!(
        gauge(
            &scrape,
            "pitr_last_run_success",
            Some(("command", "verify"))
        ),
        1.0
    );
    assert_eq!(
        gauge(
            &scrape,
            "pitr_last_run_success",
            Some(("command", "backup"))
        ),
        1.0
    );
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.labels.get("command") == Some("expire")),
        "no expire ran"
    );

    // Archiving broken: the switched segment never arrives.
    cluster.sql("alter system set archive_command = 'false'");
    cluster.sql("select pg_reload_conf()");
    let (status, report) = check_json(
        &pitr,
        &[
            "--dbname",
            &db,
            "--switch-wal",
            "--check-switch-wal-timeout",
            "3",
        ],
    );
    assert_eq!(status, 2, "{report:#}");
    assert_eq!(report["state"], "CRITICAL");
    assert_eq!(state_of(&report, "switch_wal"), "CRITICAL");
    assert_eq!(state_of(&report, "archiver"), "CRITICAL", "{report:#}");
    let lag = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "archive_lag")
        .unwrap();
    assert!(
        lag["detail"]
            .as_str()
            .unwrap()
            .contains("1 segment(s) behind"),
        "{report:#}"
    );
    assert_eq!(state_of(&report, "backup_age"), "OK");

    // The history: every run recorded, newest first, with its outcome.
    let out = pitr.run(["history", "--json", "--limit", "100"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = history["runs"].as_array().unwrap();
    let summary: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["command"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("check", "critical"), // switch-wal
            ("check", "unknown"),  // bad threshold
            ("check", "warning"),
            ("check", "critical"), // backup age
            ("check", "ok"),
            ("check", "ok"),
            ("verify", "ok"),
            ("backup", "ok"),
            ("check", "critical"), // no backup yet
        ],
        "{history:#}"
    );
    let backup_run = &runs[7];
    assert_eq!(backup_run["backup_id"], backup_id.as_str());
    assert_eq!(backup_run["bytes"], backup["stored_bytes"]);
    assert_eq!(backup_run["exit_code"], 0);
    assert!(
        runs[0]["error"].as_str().unwrap().contains("switch_wal"),
        "{history:#}"
    );
    assert!(
        runs[1]["error"]
            .as_str()
            .unwrap()
            .contains("check_backup_age"),
        "{history:#}"
    );
    assert!(runs[0]["start"].as_str() >= runs[1]["start"].as_str());
    let out = pitr.run(["history", "--limit", "2"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 3, "a header and two runs: {text}");

    // A history that cannot be written never changes a command's outcome.
    use std::os::unix::fs::PermissionsExt;
    let runs_dir = std::path::Path::new(&pitr.repo).join("history/runs");
    let mut dirs = vec![runs_dir.clone()];
    for day in std::fs::read_dir(&runs_dir).unwrap() {
        dirs.push(day.unwrap().path());
    }
    let set_mode = |mode| {
        for dir in &dirs {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    set_mode(0o555);
    let out = pitr.run(["verify"]);
    set_mode(0o755);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not record this verify run"),
        "{}",
        stderr(&out)
    );

    // Metrics, served: scraped over HTTP, then the server stopped. It says it serves once
    // it holds the port; a port taken meanwhile by another process, it is started again.
    let (mut server, port) = start_on_a_free_port("pitr metrics", |port| {
        let mut server = Command::new(&pitr.bin)
            .arg("--repo")
            .arg(&pitr.repo)
            .args(["metrics", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
        let mut said = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("serving metrics on") {
                // Keep reading, so that a full pipe never stalls the server.
                std::thread::spawn(move || lines.for_each(drop));
                return Some(server);
            }
            said.push_str(&line);
            said.push('\n');
        }
        server.wait().unwrap();
        assert!(said.contains("in use"), "the metrics server exited: {said}");
        None
    });
    let (status_line, body) = http_get(port, "/metrics");
    assert!(status_line.contains(" 200 "), "{status_line}\n{body}");
    let served = parse_metrics(&body);
    assert_eq!(gauge(&served, "pitr_backup_count", None), 1.0);
    assert_eq!(
        gauge(&served, "pitr_last_run_success", Some(("command", "check"))),
        0.0,
        "the last check was critical"
    );
    let (status_line, _) = http_get(port, "/other");
    assert!(status_line.contains(" 404 "), "{status_line}");
    server.kill().unwrap();
    server.wait().unwrap();

    cluster.sql("alter system reset archive_command");
    cluster.sql("select pg_reload_conf()");
    cluster.stop();
}

/// The history's layout on a real S3 server: day folders listed by prefix, newest first,
/// and pruning by whole days.
#[tokio::test(flavor = "multi_thread")]
async fn run_history_on_s3() {
    use pitr::catalog::Catalog;
    use pitr::catalog::history::{HISTORY_FORMAT, RunRecord, RunStatus};

    let server = S3Server::start("history").await;
    let repo = Repo::s3(&server, "cluster/history");
    let catalog = Catalog::new(repo.storage().await);
    // Runs are recorded in an initialised repository (their objects take its format).
    let dir = TestDir::new("history-s3");
    let cluster = PgCluster::initdb(&dir, "pg", &[]);
    let identity = pitr::commands::init::read_cluster_identity(&cluster.data).unwrap();
    catalog.init(&identity).await.unwrap();
    let now = chrono::Utc::now();
    let run = |command: &str, days_ago: i64, status| RunRecord {
        format: HISTORY_FORMAT,
        command: command.into(),
        start: now - chrono::Duration::days(days_ago),
        end: now - chrono::Duration::days(days_ago),
        status,
        exit_code: 0,
        bytes: None,
        backup_id: None,
        error: None,
        host: "h".into(),
        pid: 7,
    };
    let runs = [
        run("verify", 40, RunStatus::Ok),
        run("verify", 3, RunStatus::Failed),
        run("check", 0, RunStatus::Critical),
    ];
    for r in &runs {
        catalog.record_run(r).await.unwrap();
    }
    let newest = catalog.recent_runs(2, now).await.unwrap();
    assert_eq!(newest, vec![runs[2].clone(), runs[1].clone()]);
    // Older than the folders walked day by day: found by the one full listing.
    assert_eq!(catalog.recent_runs(5, now).await.unwrap().len(), 3);
    let latest = catalog.latest_runs("verify").await.unwrap().unwrap();
    assert_eq!(latest.last_run, runs[1]);
    assert_eq!(latest.last_success, Some(runs[0].clone()));

    let pruned = catalog
        .prune_history(now - chrono::Duration::days(30))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    assert_eq!(catalog.recent_runs(5, now).await.unwrap(), newest);
}
