//! The archive loop on real parts: PostgreSQL 15 drives `archive-push` through
//! archive_command, and every segment comes back through `archive-get`.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::keys::wal_name_of_key;
use crate::common::*;
use pitr::pg::WalFileKind;
use pitr::storage::{PutMode, PutPayload, read_all};

const SEGMENT: u64 = 16 << 20;

/// Runs a write workload through a real cluster archiving into `repo`, then fetches every
/// segment back and compares it with the cluster's own copy. Returns how many segments came
/// back, each through its own archive-get process.
async fn archive_loop(name: &str, repo: impl FnOnce(&TestDir) -> Repo) -> usize {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut cluster) =
        archiving_cluster(&dir, &repo, "wal_keep_size = '4GB'\nmax_wal_size = '4GB'");

    // At least 20 full segments, with some switched early (a short segment, zero-filled).
    cluster.sql("create table t (id bigint, payload text)");
    let mut batch = 0;
    loop {
        cluster.sql(&format!(
            "insert into t select g, md5(g::text) || repeat(md5((g * {batch})::text), 4) \
             from generate_series(1, 100000) g"
        ));
        batch += 1;
        if batch % 5 == 0 {
            cluster.sql("select pg_switch_wal()");
        }
        let lsn = cluster.sql("select pg_current_wal_lsn() - '0/0'::pg_lsn");
        if lsn.parse::<u64>().unwrap() > 21 * SEGMENT {
            break;
        }
    }
    let last = cluster.archive_current_segment(Duration::from_secs(300));
    let stats = cluster.sql("select archived_count, failed_count from pg_stat_archiver");
    let (archived, failed) = stats.split_once('|').unwrap();
    assert_eq!(failed, "0");
    assert!(
        archived.parse::<u32>().unwrap() >= 20,
        "archived {archived}"
    );

    let storage = repo.storage().await;
    let stored: BTreeSet<String> = storage
        .list("wal/")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| wal_name_of_key(&m.key))
        .filter(|n| n.kind() == WalFileKind::Segment)
        .map(|n| n.to_string())
        .collect();
    let last_segno = u64::from_str_radix(&last[16..], 16).unwrap();
    let expected: BTreeSet<String> = (1..=last_segno)
        .map(|segno| pitr::pg::wal_name::xlog_file_name(1, segno, SEGMENT))
        .collect();
    assert!(expected.len() >= 20);
    let missing: Vec<_> = expected.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "segments missing from the repository: {missing:?}"
    );

    // Every segment back through archive-get, byte-identical to the server's own copy.
    let restore = dir.subdir("restore");
    for segment in &expected {
        let dest = restore.join(segment);
        let out = pitr
            .command(["archive-get", segment])
            .arg(&dest)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "archive-get {segment}: {}", stderr(&out));
        let original = std::fs::read(cluster.wal_path(segment)).unwrap();
        let restored = std::fs::read(&dest).unwrap();
        assert!(
            original == restored,
            "{segment} differs after the round trip"
        );
        std::fs::remove_file(&dest).unwrap();
    }
    let leftovers: Vec<_> = std::fs::read_dir(&restore).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "archive-get left files behind: {leftovers:?}"
    );

    // PostgreSQL asks for files that do not exist yet: exit 1, nothing written.
    let dest = restore.join("00000002.history");
    let out = pitr
        .command(["archive-get", "00000002.history"])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(!dest.exists());
    cluster.stop();
    expected.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_loop_on_a_local_repository() {
    archive_loop("loop-local", Repo::local).await;
}

/// Through a 20 ms (each way) path, as to a distant region: archive_command and archive-get
/// pay real round trips.
#[tokio::test(flavor = "multi_thread")]
async fn archive_loop_on_s3() {
    let server = S3Server::start_with_latency("loop", Duration::from_millis(20)).await;
    let fetched = archive_loop("loop-s3", |_| Repo::s3(&server, "cluster/a")).await;
    // Every get went through the proxy: one process (so at least one connection) and a
    // segment's bytes each. Pushes add more, but look-ahead may store several per process.
    let proxy = server.latency_proxy().unwrap();
    let carried = (
        proxy.connections(),
        proxy.bytes_to_upstream(),
        proxy.bytes_to_client(),
    );
    assert!(
        carried.0 >= fetched as u64 && carried.1 > 20 << 20 && carried.2 > 20 << 20,
        "connections, bytes up, bytes down through the proxy: {carried:?}"
    );
}

/// A repository with an initialised cluster that is not running: initdb leaves the first
/// segment in pg_wal, a real WAL segment to push.
struct Offline {
    dir: TestDir,
    repo: Repo,
    pitr: Pitr,
    cluster: PgCluster,
}

const FIRST: &str = "000000010000000000000001";

impl Offline {
    fn new(name: &str, repo: impl FnOnce(&TestDir) -> Repo) -> Self {
        let dir = TestDir::new(name);
        let repo = repo(&dir);
        let (pitr, cluster) = initialised_cluster(&dir, &repo);
        Offline {
            dir,
            repo,
            pitr,
            cluster,
        }
    }

    fn push(&self, path: &Path) -> std::process::Output {
        self.pitr
            .command(["archive-push"])
            .arg(path)
            .output()
            .unwrap()
    }

    fn get(&self, name: &str, dest: &Path) -> std::process::Output {
        self.pitr
            .command(["archive-get", name])
            .arg(dest)
            .output()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_cluster_is_refused_and_changes_nothing() {
    let first = Offline::new("second-cluster", Repo::local);
    let out = first.push(&first.cluster.wal_path(FIRST));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let storage = first.repo.storage().await;
    let before = snapshot(&*storage).await;

    let other = PgCluster::initdb(&first.dir, "other", &[]);
    let ours = std::fs::read_to_string(first.dir.path().join("repo/repository.json")).unwrap();
    let out = first.push(&other.wal_path(FIRST));
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let message = stderr(&out);
    let system_id = |data: &Path| {
        let control = std::fs::read(data.join("global/pg_control")).unwrap();
        pitr::pg::ControlFile::parse(&control)
            .unwrap()
            .system_identifier
            .to_string()
    };
    assert!(message.contains(&system_id(&other.data)), "{message}");
    assert!(
        message.contains(&system_id(&first.cluster.data)),
        "{message}"
    );
    assert_eq!(
        message.trim().lines().count(),
        1,
        "one-line error: {message}"
    );

    let out = first
        .pitr
        .command(["init", "--pgdata"])
        .arg(&other.data)
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(snapshot(&*storage).await, before);
    assert_eq!(
        std::fs::read_to_string(first.dir.path().join("repo/repository.json")).unwrap(),
        ours
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repush_identical_succeeds_and_different_content_is_refused() {
    let t = Offline::new("repush", Repo::local);
    let segment = t.cluster.wal_path(FIRST);
    assert_eq!(code(&t.push(&segment)), 0);
    let out = t.push(&segment);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already archived"),
        "{}",
        stderr(&out)
    );

    let mut changed = std::fs::read(&segment).unwrap();
    changed[5_000_000] ^= 0xFF;
    std::fs::create_dir_all(t.dir.path().join("changed")).unwrap();
    let changed_path = t.dir.write(&format!("changed/{FIRST}"), &changed);
    let out = t.push(&changed_path);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );

    let dest = t.dir.subdir("get").join(FIRST);
    let got = t.get(FIRST, &dest);
    assert_eq!(code(&got), 0, "{}", stderr(&got));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&segment).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn history_partial_and_backup_files_round_trip() {
    let t = Offline::new("other-kinds", Repo::local);
    let segment = std::fs::read(t.cluster.wal_path(FIRST)).unwrap();
    std::fs::create_dir_all(t.dir.path().join("files")).unwrap();
    let files = [
        (
            "00000002.history".to_owned(),
            b"1\t0/3000000\tno recovery target specified\n".to_vec(),
        ),
        (
            "000000010000000000000001.00000028.backup".to_owned(),
            b"START WAL LOCATION: 0/1000028 (file 000000010000000000000001)\n".to_vec(),
        ),
        (format!("{FIRST}.partial"), segment),
    ];
    let get_dir = t.dir.subdir("get");
    for (name, content) in &files {
        let path = t.dir.write(&format!("files/{name}"), content);
        let out = t.push(&path);
        assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
        let dest = get_dir.join("RECOVERYXLOG");
        let out = t.get(name, &dest);
        assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
        assert!(std::fs::read(&dest).unwrap() == *content, "{name} differs");
    }
    // Not WAL: refused with a one-line reason.
    let junk = t.dir.write("files/notes.txt", "hello");
    let out = t.push(&junk);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a WAL file name"),
        "{}",
        stderr(&out)
    );
    // A file named like a segment that is not one.
    let fake = t.dir.write(
        &format!("files/{}", "000000010000000000000009"),
        vec![7u8; 8192],
    );
    let out = t.push(&fake);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
}

async fn flipped_byte_is_never_served(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let t = Offline::new(name, repo);
    assert_eq!(code(&t.push(&t.cluster.wal_path(FIRST))), 0);
    let storage = t.repo.storage().await;
    let key = format!("wal/0000000100000000/{FIRST}.lz4");
    let good = read_all(&*storage, &key).await.unwrap();
    let get_dir = t.dir.subdir("get");
    for position in [0, 100, good.len() / 2, good.len() - 30, good.len() - 1] {
        let mut bad = good.clone();
        bad[position] ^= 0x04;
        storage
            .put(&key, PutPayload::from_bytes(bad), PutMode::Overwrite)
            .await
            .unwrap();
        let dest = get_dir.join("RECOVERYXLOG");
        let out = t.get(FIRST, &dest);
        // 128 + 5: PostgreSQL aborts recovery rather than take the file as missing.
        assert_eq!(code(&out), 133, "flip at {position}: {}", stderr(&out));
        assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
        assert!(
            !dest.exists(),
            "a corrupt object reached DEST (flip at {position})"
        );
        let entries: Vec<_> = std::fs::read_dir(&get_dir).unwrap().collect();
        assert!(entries.is_empty(), "leftovers: {entries:?}");
    }
    // The repository's copy was restored: served again.
    storage
        .put(&key, PutPayload::from_bytes(good), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(code(&t.get(FIRST, &get_dir.join("RECOVERYXLOG"))), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_is_never_served_local() {
    flipped_byte_is_never_served("flip-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_is_never_served_s3() {
    let server = S3Server::start("flip").await;
    flipped_byte_is_never_served("flip-s3", |_| Repo::s3(&server, "flip")).await;
}

async fn concurrent_pushes_store_one_object(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let t = Offline::new(name, repo);
    let segment = t.cluster.wal_path(FIRST);
    let children: Vec<_> = (0..4)
        .map(|_| {
            t.pitr
                .command(["archive-push"])
                .arg(&segment)
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let storage = t.repo.storage().await;
    let objects = storage.list("wal/").await.unwrap();
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "wal/0000000100000000/000000010000000000000001.lz4",
            "wal/0000000100000000/000000010000000000000001.summary.json"
        ],
        "one segment object and its index entry"
    );
    let dest = t.dir.subdir("get").join(FIRST);
    let got = t.get(FIRST, &dest);
    assert_eq!(code(&got), 0, "{}", stderr(&got));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&segment).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pushes_store_one_object_local() {
    concurrent_pushes_store_one_object("race-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pushes_store_one_object_s3() {
    // Racing creates need a server whose conditional writes are atomic (AWS S3, MinIO).
    let server = S3Server::start_atomic("race").await;
    concurrent_pushes_store_one_object("race-s3", |_| Repo::s3(&server, "race")).await;
}

/// kill -9 at many moments of a push: afterwards archive-get serves the whole segment or
/// nothing, never a part of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_killed_mid_write_leaves_nothing_served() {
    let t = Offline::new("kill", Repo::local);
    let segment = t.cluster.wal_path(FIRST);
    let original = std::fs::read(&segment).unwrap();
    let storage = t.repo.storage().await;
    let key = format!("wal/0000000100000000/{FIRST}.lz4");

    // How long a whole push takes here, to spread the kills across it.
    let started = Instant::now();
    assert_eq!(code(&t.push(&segment)), 0);
    let full = started.elapsed();
    let get_dir = t.dir.subdir("get");
    let (mut killed, mut served) = (0, 0);
    for i in 0..16u32 {
        storage.delete(&key).await.unwrap();
        let mut child = t
            .pitr
            .command(["archive-push"])
            .arg(&segment)
            .spawn()
            .unwrap();
        std::thread::sleep(full * i / 16);
        // The postgres-owned process is a child of runuser: kill the whole group of it.
        let _ = std::process::Command::new("pkill")
            .args(["-9", "-f", &format!("{} --repo", t.pitr.bin.display())])
            .status();
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.signal().is_some() || status.code() != Some(0) {
            killed += 1;
        }
        let dest = get_dir.join("RECOVERYXLOG");
        let out = t.get(FIRST, &dest);
        match code(&out) {
            1 => assert!(!dest.exists()),
            0 => {
                served += 1;
                assert!(
                    std::fs::read(&dest).unwrap() == original,
                    "partial segment served"
                );
                std::fs::remove_file(&dest).unwrap();
            }
            other => panic!("archive-get exited {other}: {}", stderr(&out)),
        }
    }
    assert!(killed > 0, "no push was interrupted ({served} completed)");
    // Whatever the kills left in the staging area, a new push completes.
    storage.delete(&key).await.unwrap();
    assert_eq!(code(&t.push(&segment)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn uninitialised_and_misconfigured_repositories_are_explained() {
    let dir = TestDir::new("uninit");
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let cluster = PgCluster::initdb(&dir, "pg", &[]);

    let out = pitr
        .command(["archive-push"])
        .arg(cluster.wal_path(FIRST))
        .output()
        .unwrap();
    // No repository there: most often a mistyped --repo, so nothing invites `pitr init` at it.
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "pitr archive-push: no repository at file://{} (check --repo)\n",
            repo.url
        )
    );
    let typo = Pitr {
        repo: dir.path().join("typo").display().to_string(),
        ..Pitr::install(&dir, &repo)
    };
    missing_repository_is_named(&dir, &typo, &format!("file://{}", typo.repo));
    assert!(!dir.path().join("typo").exists());

    let out = as_postgres(&pitr.bin)
        .args(["archive-get", FIRST, "x", "--repo", "relative/path"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 130, "{}", stderr(&out));
    assert!(stderr(&out).contains("not absolute"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1);

    // Settings from a config file, flags after the subcommand.
    let config = dir.write("pitr.toml", format!("repo = \"{}\"\n", repo.url));
    let out = as_postgres(&pitr.bin)
        .args(["init", "--pgdata"])
        .arg(&cluster.data)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = as_postgres(&pitr.bin)
        .arg("archive-push")
        .arg(cluster.wal_path(FIRST))
        .env("PITR_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// archive-get, list and restore at a location that holds no repository: one line naming it,
/// exit 3 (archive-get 131, so that PostgreSQL stops recovery rather than end it), nothing
/// written.
fn missing_repository_is_named(dir: &TestDir, pitr: &Pitr, location: &str) {
    let line = format!("no repository at {location} (check --repo)");
    let never = dir.path().join("never");
    let out = pitr
        .command(["archive-get", FIRST])
        .arg(&never)
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        131,
        "no repository must not look like 'not found': {}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out),
        format!(
            "pitr archive-get {FIRST}: {line}; recovery stops here rather than end without this \
             file: fix the cause, then start the server again\n"
        )
    );
    assert!(!never.exists());
    for command in ["list", "verify", "pin"] {
        let mut args = vec![command];
        if command == "pin" {
            args.push("20260101T000000Z");
        }
        let out = pitr.run(&args);
        assert_eq!(code(&out), 3, "{command}: {}", stderr(&out));
        assert_eq!(stderr(&out), format!("pitr {command}: {line}\n"));
    }
    let out = pitr
        .command(["restore", "--pgdata"])
        .arg(&never)
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("pitr restore: {line}\n"));
    assert!(!never.exists());
}

/// An S3 repository that is not where --repo says, or that the environment gives no
/// credentials (or wrong ones) for: one line saying so and what to set, at once (the line
/// alone on stderr: no retry, no SDK output), and archive-get exits above 125 so that
/// PostgreSQL stops recovery rather than take the file as missing. No credentials is the
/// SDK's default chain finding none, down to the instance metadata service (here a closed
/// port, as off EC2).
#[tokio::test(flavor = "multi_thread")]
async fn s3_missing_repository_or_credentials_fail_at_once_in_one_line() {
    let server = S3Server::start("s3-config").await;
    let t = Offline::new("s3-config", |_| Repo::s3(&server, "repo"));
    let typo = Pitr {
        repo: format!("s3://{}/typo", server.bucket),
        ..Pitr::install(&t.dir, &t.repo)
    };
    missing_repository_is_named(&t.dir, &typo, &typo.repo);

    let location = t.pitr.repo.clone();
    let empty = t.dir.write("empty-aws-config", "");
    chown_to_postgres(&empty);
    let closed = RefusingPort::bind();
    let metadata_service = closed.url();
    let run = |credentials: &[(&str, &str)], args: &[&std::ffi::OsStr]| {
        as_postgres(&t.pitr.bin)
            .args(args)
            .args(["--repo", location.as_str()])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("PITR_S3_ENDPOINT", &server.endpoint)
            .env("PITR_S3_PATH_STYLE", "true")
            .env("AWS_CONFIG_FILE", &empty)
            .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &metadata_service)
            .envs(t.pitr.key_env())
            .envs(credentials.iter().copied())
            .output()
            .unwrap()
    };
    let dest = t.dir.subdir("get").join(FIRST);
    let get = ["archive-get".as_ref(), FIRST.as_ref(), dest.as_os_str()];
    let missing = format!(
        "no AWS credentials found for {location}: set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, in the environment of the user running pitr \
         (for archive_command and restore_command: the PostgreSQL server's)"
    );
    let out = run(&[], &get);
    assert_eq!(code(&out), 130, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "pitr archive-get {FIRST}: {missing}; recovery stops here rather than end without \
             this file: fix the cause, then start the server again\n"
        )
    );
    assert!(!dest.exists());
    let out = run(&[], &["list".as_ref()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("pitr list: {missing}\n"));

    // Credentials the server refuses: named as such, not retried.
    let wrong = [
        ("AWS_ACCESS_KEY_ID", server.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ];
    let refused = format!(
        "S3 refused the AWS credentials for {location} (SignatureDoesNotMatch): check \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, in the environment of \
         the user running pitr (for archive_command and restore_command: the PostgreSQL \
         server's)"
    );
    let out = run(&wrong, &get);
    assert_eq!(code(&out), 130, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "pitr archive-get {FIRST}: {refused}; recovery stops here rather than end without \
             this file: fix the cause, then start the server again\n"
        )
    );
    let out = run(&wrong, &["list".as_ref()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("pitr list: {refused}\n"));

    // The same environment with the right credentials works.
    let right = [
        ("AWS_ACCESS_KEY_ID", server.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", server.secret_key.as_str()),
    ];
    let segment = t.cluster.wal_path(FIRST);
    let out = run(&right, &["archive-push".as_ref(), segment.as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&right, &get);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// The AWS SDK's own AWS_ENDPOINT_URL works without PITR_S3_ENDPOINT, with no region set,
/// and with the S3 flags after the subcommand.
#[tokio::test(flavor = "multi_thread")]
async fn s3_through_aws_endpoint_url_without_a_region() {
    let server = S3Server::start("aws-endpoint").await;
    let t = Offline::new("aws-endpoint", |_| Repo::s3(&server, "standard-env"));
    let run = |args: &[&std::ffi::OsStr]| {
        as_postgres(&t.pitr.bin)
            .args(args)
            .args(["--repo", t.pitr.repo.as_str(), "--s3-path-style"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("AWS_ENDPOINT_URL", &server.endpoint)
            .env("AWS_ACCESS_KEY_ID", &server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
            .envs(t.pitr.key_env())
            .output()
            .unwrap()
    };
    let segment = t.cluster.wal_path(FIRST);
    let out = run(&["archive-push".as_ref(), segment.as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let dest = t.dir.subdir("get").join(FIRST);
    let out = run(&["archive-get".as_ref(), FIRST.as_ref(), dest.as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&segment).unwrap());
}
