//! Running pitr unattended: the repository lock (a second backup refused, stale and killed
//! holders), webhook notifications, and the systemd units.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use chrono::Utc;
use pitr::catalog::lock::LockHolder;
use pitr::error::{EXIT_LOCKED, EXIT_OK, EXIT_SERVER};
use pitr::storage::{PutMode, PutPayload, Storage, read_all};

const LOCK_KEY: &str = "lock.json";

/// Stops archiving (every attempt fails) so that a backup waits for its WAL, holding
/// the repository lock, until [`resume_archiving`].
fn pause_archiving(cluster: &PgCluster) {
    cluster.sql("alter system set archive_command = 'false'");
    cluster.sql("select pg_reload_conf()");
}

fn resume_archiving(cluster: &PgCluster) {
    cluster.sql("alter system reset archive_command");
    cluster.sql("select pg_reload_conf()");
}

/// The lock's record once a backup holds it.
async fn wait_for_holder(storage: &dyn Storage, child: &mut Child) -> LockHolder {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(record) = read_all(storage, LOCK_KEY).await {
            if let Some(holder) = LockHolder::parse(&record) {
                return holder;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it was seen holding the lock"
        );
        assert!(Instant::now() < deadline, "no backup took the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_backup(pitr: &Pitr, cluster: &PgCluster) -> Child {
    pitr.command(backup_args(cluster))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

fn one_line_naming(out: &Output, holder: &LockHolder) {
    assert_eq!(code(out), i32::from(EXIT_LOCKED), "{}", stderr(out));
    let text = stderr(out);
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    let started = holder
        .started
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for part in [
        "is locked by `pitr backup`".to_owned(),
        format!("on host {}", holder.host),
        format!("pid {}", holder.pid),
        format!("since {started}"),
        "wait for it to finish".to_owned(),
    ] {
        assert!(text.contains(&part), "{part:?} not in: {text}");
    }
}

fn listed_backups(pitr: &Pitr) -> usize {
    let out = pitr.run(["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    listed["backups"].as_array().unwrap().len()
}

fn kill9(pid: u32) {
    run_ok(Command::new("kill").args(["-9", &pid.to_string()]));
}

/// A second backup is refused at once while the first holds the lock, and the first
/// completes; a holder killed with -9 does not block the next backup for good.
async fn lock_scenarios(pitr: &Pitr, cluster: &PgCluster, storage: &dyn Storage, s3: bool) {
    // A concurrent second backup: refused, exit 11, the holder named.
    pause_archiving(cluster);
    let mut first = spawn_backup(pitr, cluster);
    let holder = wait_for_holder(storage, &mut first).await;
    assert_eq!(holder.command, "backup");
    let second = pitr.run(backup_args(cluster));
    one_line_naming(&second, &holder);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the refusal ended the holder"
    );
    resume_archiving(cluster);
    let out = finish(first);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(listed_backups(pitr), 1);
    // Released: on S3 the lock object is gone, on a file repository the record is empty.
    match read_all(storage, LOCK_KEY).await {
        Ok(record) => assert!(!s3 && record.is_empty(), "{record:?}"),
        Err(e) => assert!(s3, "{e}"),
    }

    // kill -9 while holding the lock.
    pause_archiving(cluster);
    let mut killed = spawn_backup(pitr, cluster);
    let holder = wait_for_holder(storage, &mut killed).await;
    kill9(holder.pid);
    let _ = finish(killed);
    resume_archiving(cluster);
    let out = if s3 {
        // The lock object stays, with a fresh heartbeat: refused until it is stale.
        let refused = pitr.run(backup_args(cluster));
        one_line_naming(&refused, &holder);
        assert!(stderr(&refused).contains("lock_stale_after (300 s)"));
        // The heartbeat stopped at the kill; once it is older than the limit, it is stale.
        std::thread::sleep(Duration::from_millis(2100));
        let mut args = vec!["--lock-stale-after".to_owned(), "2".to_owned()];
        args.extend(backup_args(cluster));
        let out = pitr.run(args);
        assert!(
            stderr(&out).contains(&format!(
                "taking over the repository lock of `pitr backup` on host {}, pid {}",
                holder.host, holder.pid
            )),
            "{}",
            stderr(&out)
        );
        out
    } else {
        // The kernel let go of the flock when the process died.
        pitr.run(backup_args(cluster))
    };
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(listed_backups(pitr), 2);
}

/// A lock object left by a holder whose heartbeat stopped long ago is taken over with a
/// warning naming it; one with a fresh heartbeat refuses the backup.
async fn stale_lock_object_is_taken_over(pitr: &Pitr, cluster: &PgCluster, storage: &dyn Storage) {
    let gone = LockHolder {
        host: "gone-host".into(),
        pid: 999_999,
        ..LockHolder::this_process("backup", Utc::now() - chrono::Duration::hours(2))
    };
    let planted = |holder: &LockHolder| PutPayload::from_bytes(serde_json::to_vec(holder).unwrap());
    let fresh = LockHolder {
        heartbeat: Utc::now(),
        ..gone.clone()
    };
    storage
        .put(LOCK_KEY, planted(&fresh), PutMode::Create)
        .await
        .unwrap();
    one_line_naming(&pitr.run(backup_args(cluster)), &fresh);

    storage
        .put(LOCK_KEY, planted(&gone), PutMode::Overwrite)
        .await
        .unwrap();
    let out = pitr.run(backup_args(cluster));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let warning = "taking over the repository lock of `pitr backup` on host gone-host, pid \
                   999999";
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    assert!(matches!(
        storage.head(LOCK_KEY).await,
        Err(pitr::storage::StorageError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_on_a_file_repository_and_notifications() {
    let dir = TestDir::new("lock-fs");
    let repo = Repo::local(&dir);
    let (pitr, cluster) = archiving_cluster(&dir, &repo, "");
    let storage = repo.storage().await;
    lock_scenarios(&pitr, &cluster, &*storage, false).await;
    notification_scenarios(&dir, &pitr, &cluster).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_on_s3() {
    let dir = TestDir::new("lock-s3");
    let server = S3Server::start("lock").await;
    let repo = Repo::s3(&server, "lock");
    let (pitr, cluster) = archiving_cluster(&dir, &repo, "");
    let storage = repo.storage().await;
    lock_scenarios(&pitr, &cluster, &*storage, true).await;
    stale_lock_object_is_taken_over(&pitr, &cluster, &*storage).await;
}

/// A webhook on a local port: records each JSON body, answers `status`.
pub(crate) struct Webhook {
    pub(crate) url: String,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Webhook {
    pub(crate) fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/pitr", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap();
                        }
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                // Recorded before the answer: once pitr has exited, every message is here.
                record
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Webhook { url, received }
    }

    pub(crate) fn messages(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap().clone()
    }
}

/// A backup that cannot reach its server: exit 9, whatever the webhook does.
fn failing_backup(pitr: &Pitr, cluster: &PgCluster, extra: &[&str]) -> Output {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(backup_args(cluster));
    let dbname = args.iter().position(|a| a == "--dbname").unwrap() + 1;
    args[dbname] = "host=/nonexistent-socket-dir port=1 user=postgres".into();
    let out = pitr.run(args);
    assert_eq!(code(&out), i32::from(EXIT_SERVER), "{}", stderr(&out));
    out
}

async fn notification_scenarios(dir: &TestDir, pitr: &Pitr, cluster: &PgCluster) {
    // A failure is posted with its error, by flag.
    let hook = Webhook::start(200);
    let out = failing_backup(pitr, cluster, &["--notify-url", &hook.url]);
    let messages = hook.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    assert_eq!(message["status"], "failure");
    assert_eq!(message["command"], "backup");
    assert_eq!(message["exit_code"], EXIT_SERVER);
    assert_eq!(message["repository"], pitr.repo.as_str());
    assert!(!message["host"].as_str().unwrap().is_empty());
    let error = message["error"].as_str().unwrap();
    assert!(
        stderr(&out).contains(error),
        "the message's error {error:?} is not the one printed: {}",
        stderr(&out)
    );
    // Slack and Mattermost read `text`, Discord `content`: both say it, error included.
    for field in ["text", "content"] {
        let text = message[field].as_str().unwrap();
        assert!(
            text.contains("pitr backup FAILED") && text.contains(error),
            "{text}"
        );
    }
    assert!(
        message["started"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .is_ok()
    );
    assert!(message["duration_seconds"].as_f64().unwrap() >= 0.0);

    // A success is posted only when asked: not by the environment's URL alone…
    let mut verify = pitr.command(["verify"]);
    verify.env("PITR_NOTIFY_URL", &hook.url);
    let out = verify.output().unwrap();
    assert_eq!(code(&out), i32::from(EXIT_OK), "{}", stderr(&out));
    assert_eq!(hook.messages().len(), 1);
    // …but with notify_on_success, here from the config file.
    let config = dir.write(
        "pitr.toml",
        format!("notify_url = \"{}\"\nnotify_on_success = true\n", hook.url),
    );
    let out = pitr.run(["--config", config.to_str().unwrap(), "verify"]);
    assert_eq!(code(&out), i32::from(EXIT_OK), "{}", stderr(&out));
    let messages = hook.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[1]["status"], "success");
    assert_eq!(messages[1]["command"], "verify");
    assert_eq!(messages[1]["error"], serde_json::Value::Null);

    // A webhook answering 500, or none listening: the outcome and exit code stand.
    let broken = Webhook::start(500);
    let out = failing_backup(pitr, cluster, &["--notify-url", &broken.url]);
    assert_eq!(broken.messages().len(), 1);
    assert!(
        stderr(&out).contains("could not notify the webhook"),
        "{}",
        stderr(&out)
    );
    let refusing = RefusingPort::bind();
    let nobody = format!("{}/hook", refusing.url());
    failing_backup(pitr, cluster, &["--notify-url", &nobody]);
    let out = pitr.run(["--notify-url", &nobody, "--notify-on-success", "verify"]);
    assert_eq!(code(&out), i32::from(EXIT_OK), "{}", stderr(&out));
    assert!(stderr(&out).contains("could not notify the webhook"));
}

/// The units in contrib/systemd pass `systemd-analyze verify` with pitr at ExecStart, and
/// are the schedules the docs promise.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let dir = TestDir::new("systemd");
    let exe = env!("CARGO_BIN_EXE_pitr");
    let schedules = [
        ("backup", "Sun *-*-* 01:00:00"),
        ("expire", "*-*-* 03:00:00"),
        ("verify", "*-*-* 04:00:00"),
        ("check", "*:0/5"),
        ("drill", "Sun *-*-01..07 05:00:00"),
    ];
    let mut units = Vec::new();
    for (name, calendar) in schedules {
        let service = std::fs::read_to_string(source.join(format!("pitr-{name}.service"))).unwrap();
        let timer = std::fs::read_to_string(source.join(format!("pitr-{name}.timer"))).unwrap();
        for line in [
            "Type=oneshot",
            "User=postgres",
            "Environment=PITR_CONFIG=/etc/pitr/pitr.toml",
            &format!("ExecStart=/usr/bin/pitr {name}"),
        ] {
            assert!(
                service.lines().any(|l| l == line),
                "pitr-{name}.service lacks {line}"
            );
        }
        for line in [
            format!("OnCalendar={calendar}"),
            format!("Unit=pitr-{name}.service"),
            "WantedBy=timers.target".into(),
        ] {
            assert!(
                timer.lines().any(|l| l == line),
                "pitr-{name}.timer lacks {line}"
            );
        }
        let service = service.replace("ExecStart=/usr/bin/pitr", &format!("ExecStart={exe}"));
        units.push(dir.write(&format!("pitr-{name}.service"), service));
        units.push(dir.write(&format!("pitr-{name}.timer"), timer));
    }
    // The receiver is a service of its own, no timer: started at boot, restarted on failure.
    let receiver = std::fs::read_to_string(source.join("pitr-receive-wal.service")).unwrap();
    for line in [
        "Type=exec",
        "User=postgres",
        "Environment=PITR_CONFIG=/etc/pitr/pitr.toml",
        "ExecStart=/usr/bin/pitr receive-wal --create-slot",
        "Restart=on-failure",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            receiver.lines().any(|l| l == line),
            "pitr-receive-wal.service lacks {line}"
        );
    }
    let receiver = receiver.replace("ExecStart=/usr/bin/pitr", &format!("ExecStart={exe}"));
    units.push(dir.write("pitr-receive-wal.service", receiver));
    // Several repositories: the copy after each backup, by a drop-in on the backup unit.
    let copy = std::fs::read_to_string(source.join("pitr-copy.service")).unwrap();
    for line in [
        "Type=oneshot",
        "User=postgres",
        "Environment=PITR_CONFIG=/etc/pitr/pitr.toml",
        "ExecStart=/usr/bin/pitr copy",
    ] {
        assert!(
            copy.lines().any(|l| l == line),
            "pitr-copy.service lacks {line}"
        );
    }
    units.push(dir.write(
        "pitr-copy.service",
        copy.replace("ExecStart=/usr/bin/pitr", &format!("ExecStart={exe}")),
    ));
    let drop_in = std::fs::read_to_string(source.join("pitr-backup.service.d/copy.conf")).unwrap();
    assert!(drop_in.lines().any(|l| l == "OnSuccess=pitr-copy.service"));
    let backup = std::fs::read_to_string(dir.path().join("pitr-backup.service")).unwrap();
    // The unit as systemd merges it: the drop-in's [Unit] lines after the unit's own.
    let merged = backup.replacen(
        "[Service]",
        &format!("{}\n[Service]", drop_in.replace("[Unit]\n", "")),
        1,
    );
    units.push(dir.write("pitr-backup-with-copy.service", merged));
    let verify = |units: &[std::path::PathBuf]| {
        Command::new("/usr/bin/systemd-analyze")
            .arg("verify")
            .args(units)
            .current_dir(dir.path())
            .output()
            .expect("systemd-analyze (apt-get install systemd)")
    };
    let out = verify(&units);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // It also warns, exit 0, about settings it ignores: none allowed.
    assert_eq!(stderr(&out), "", "systemd-analyze verify warned");

    // It does check what it is given: a unit whose program is missing fails.
    let broken = dir.write(
        "pitr-broken.service",
        "[Service]\nType=oneshot\nExecStart=/nonexistent/pitr check\n",
    );
    assert_ne!(code(&verify(&[broken])), 0);
}
