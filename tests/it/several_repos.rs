//! Several repositories at once (issue 28): a local file repository and an S3 one
//! (s3s-fs), configured as `repo` and `repo2`. Archiving goes on while S3 is down (the
//! segments wait in a local queue) and catches up after; archive-get and restore fall back
//! to S3 where the local copy is damaged or gone.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(90);

/// A cluster archiving into a local repository (1) and an S3 one (2), whose S3 endpoint is
/// read from a config file at every call, so that a test can take S3 away.
struct TwoRepos {
    dir: TestDir,
    server: Arc<S3Server>,
    pitr: Pitr,
    local: Repo,
    s3: Repo,
}

impl TwoRepos {
    /// Both repositories configured and initialised from the start.
    async fn start(name: &str) -> (Self, PgCluster) {
        Self::start_with(name, true).await
    }

    /// With `s3` false, only the local repository is configured (see
    /// [`TwoRepos::add_s3`]).
    async fn start_with(name: &str, with_s3: bool) -> (Self, PgCluster) {
        let dir = TestDir::new(name);
        let server = S3Server::start(name).await;
        let local = Repo::local(&dir);
        let s3 = Repo::s3(&server, "off-site");
        let mut pitr = Pitr::install(&dir, &local);
        pitr.env.extend(
            server
                .env()
                .into_iter()
                .filter(|(k, _)| k.starts_with("AWS_")),
        );
        let config = dir.path().join("pitr.toml");
        pitr.env
            .push(("PITR_CONFIG".into(), config.display().to_string()));
        let repos = TwoRepos {
            dir,
            server,
            pitr,
            local,
            s3,
        };
        if with_s3 {
            repos.point_s3_at(&repos.server.endpoint.clone());
        } else {
            repos.dir.write("pitr.toml", "storage_retry_time = 3\n");
        }
        let mut cluster = PgCluster::initdb(&repos.dir, "pg", &[]);
        let out = repos
            .pitr
            .command(["init", "--pgdata"])
            .arg(&cluster.data)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            said.contains("repository 2"),
            with_s3,
            "init reports each repository: {said}"
        );
        cluster.configure(&format!(
            "archive_mode = on\narchive_command = '{}'\n",
            repos.pitr.archive_command()
        ));
        cluster.start();
        (repos, cluster)
    }

    /// Configures repository 2 (S3) and initialises it, as a user adding an off-site copy
    /// to a running setup does.
    fn add_s3(&self, cluster: &PgCluster) {
        self.point_s3_at(&self.server.endpoint);
        let out = self
            .pitr
            .command(["init", "--repo-index", "2", "--pgdata"])
            .arg(&cluster.data)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }

    /// A backup of `cluster` into the repository `--repo-index` names, with `args`; its id.
    fn backup_into(&self, cluster: &PgCluster, index: &str, args: &[&str]) -> String {
        let out = self
            .pitr
            .command(backup_args(cluster))
            .args(["--repo-index", index])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            code(&out),
            0,
            "backup into {index} {args:?}: {}",
            stderr(&out)
        );
        backup_id(&out)
    }

    /// The local repository is lost.
    fn lose_local(&self) {
        std::fs::rename(
            self.dir.path().join("repo"),
            self.dir.path().join("repo-gone"),
        )
        .unwrap();
    }

    /// `pitr ARGS…`, which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.pitr.run(args);
        assert_eq!(code(&out), 0, "pitr {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Rewrites the config file: repository 2 at `endpoint`.
    fn point_s3_at(&self, endpoint: &str) {
        self.point_s3_at_with(endpoint, "");
    }

    /// The same, with `extra` lines in the config file.
    fn point_s3_at_with(&self, endpoint: &str, extra: &str) {
        let passphrase = if encrypting() {
            format!(
                "repo2_passphrase_file = \"{}\"\n",
                self.dir.path().join("passphrase").display()
            )
        } else {
            String::new()
        };
        self.dir.write(
            "pitr.toml",
            format!(
                "repo2 = \"{}\"\nrepo2_s3_endpoint = \"{endpoint}\"\nrepo2_s3_path_style = true\n\
                 storage_retry_time = 3\n{passphrase}{extra}",
                self.s3.url
            ),
        );
    }

    /// Every WAL segment each repository holds, by name, decoded.
    async fn segments(repo: &Repo) -> Vec<(String, Vec<u8>)> {
        let storage = repo.storage().await;
        let mut segments = Vec::new();
        for meta in storage.list("wal/").await.unwrap() {
            if let Some(name) = keys::wal_name_of_key(&meta.key) {
                segments.push((name.to_string(), decoded_object(&*storage, &meta.key).await));
            }
        }
        segments.sort();
        segments
    }

    /// The queued files of repository 2 in the cluster's spool.
    fn queued(cluster: &PgCluster) -> Vec<String> {
        let spool = cluster.data.join("pg_wal/.pitr-spool");
        let Ok(dirs) = std::fs::read_dir(&spool) else {
            return Vec::new();
        };
        let mut queued = Vec::new();
        for dir in dirs.flatten() {
            if !dir.file_name().to_string_lossy().starts_with("queue-") {
                continue;
            }
            for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
                queued.push(file.file_name().to_string_lossy().into_owned());
            }
        }
        queued.sort();
        queued
    }

    /// Restores into `name` with `args`, starts the copy and waits until it paused at the
    /// target; the restore's and the server's logs.
    fn restore(&self, name: &str, args: &[&str]) -> (PgCluster, String) {
        let data = self.dir.path().join(name);
        let out = self
            .pitr
            .command(["restore", "--no-sync", "--pgdata"])
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "restore {args:?}: {}", stderr(&out));
        chown_to_postgres(&data);
        let mut restored = PgCluster::restored(&self.dir, &format!("sock-{name}"), data);
        restored.start_with_env(&self.pitr.env);
        restored.wait_paused(WAIT);
        (restored, stderr(&out))
    }
}

fn state(cluster: &PgCluster) -> String {
    cluster.sql("select count(*), sum(hashtext(t::text)) from t")
}

#[tokio::test(flavor = "multi_thread")]
async fn archiving_survives_an_s3_outage_and_restores_fall_back_to_s3() {
    let (repos, cluster) = TwoRepos::start("several-repos").await;
    cluster.sql("create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 2000) g");
    let first = cluster.archive_current_segment(WAIT);
    let (local, s3) = (
        TwoRepos::segments(&repos.local).await,
        TwoRepos::segments(&repos.s3).await,
    );
    assert!(
        local.iter().any(|(name, _)| *name == first),
        "{first} local"
    );
    assert_eq!(local, s3, "both repositories hold the same segments");

    // S3 goes away: archiving goes on, the segments wait in repository 2's queue.
    let down = RefusingPort::bind();
    repos.point_s3_at(&down.url());
    let mut during = Vec::new();
    for round in 0..3 {
        cluster.sql(&format!(
            "insert into t select g, 'outage {round}' from generate_series(1, 500) g"
        ));
        during.push(cluster.archive_current_segment(WAIT));
    }
    let queued = TwoRepos::queued(&cluster);
    for segment in &during {
        assert!(
            queued.iter().any(|q| q.starts_with(segment.as_str())),
            "{segment} queued for S3: {queued:?}"
        );
    }
    let s3_during = TwoRepos::segments(&repos.s3).await;
    assert!(
        !s3_during.iter().any(|(name, _)| during.contains(name)),
        "S3 was down"
    );

    // check sees repository 2 behind (the check reads both; S3 answers it again, but its
    // queue has not been pushed yet): WARNING by segments, CRITICAL by the time between
    // the repositories' last commits past check_archive_lag.
    repos.point_s3_at(&repos.server.endpoint);
    let lag = |thresholds: &[&str]| {
        let out = repos
            .pitr
            .command(["check", "--json"])
            .args(thresholds)
            .output()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        let of = |n: u64| {
            report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "repo_lag" && c["repository"] == n)
                .unwrap_or_else(|| panic!("repo_lag of repository {n}: {report}"))
                .clone()
        };
        (of(1), of(2))
    };
    let (first, second) = lag(&[]);
    assert_eq!(first["state"], "OK", "{first}");
    assert_eq!(second["state"], "WARNING", "{second}");
    assert!(
        second["detail"]
            .as_str()
            .unwrap()
            .contains("3 segment(s) behind repository 1"),
        "{second}"
    );
    let (_, second) = lag(&["--check-archive-lag", "1s,3s"]);
    assert_eq!(second["state"], "CRITICAL", "{second}");
    let metrics = repos.ok(&["metrics"]);
    for series in [
        "pitr_repository_lag_segments{repository=\"1\"} 0",
        "pitr_repository_lag_segments{repository=\"2\"} 3",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }

    // S3 is back: the next call catches it up, in order, byte for byte.
    cluster.sql("insert into t select g, 'after' from generate_series(1, 500) g");
    cluster.archive_current_segment(WAIT);
    assert_eq!(
        TwoRepos::queued(&cluster),
        Vec::<String>::new(),
        "queue drained; server log:\n{}",
        cluster.server_log()
    );
    let (local, s3) = (
        TwoRepos::segments(&repos.local).await,
        TwoRepos::segments(&repos.s3).await,
    );
    assert_eq!(local, s3, "S3 caught up with every segment, identical");
    let (first, second) = lag(&["--check-archive-lag", "1s,3s"]);
    assert_eq!(
        (&first["state"], &second["state"]),
        (&"OK".into(), &"OK".into()),
        "{second}"
    );

    // Past archive_push_queue_max archiving stops: the segment stays ready in pg_wal, is
    // queued nowhere, and is archived into both once S3 is back.
    repos.point_s3_at_with(&down.url(), "archive_push_queue_max = \"1MiB\"\n");
    let held =
        cluster.sql("select pg_walfile_name(pg_logical_emit_message(false, 'pitr-test', 'bound'))");
    cluster.sql("select pg_switch_wal()");
    let deadline = std::time::Instant::now() + WAIT;
    while cluster.sql("select coalesce(last_failed_wal, '') from pg_stat_archiver") != held {
        assert!(std::time::Instant::now() < deadline, "{held} never failed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cluster
            .wal_path(&format!("archive_status/{held}.ready"))
            .exists()
    );
    assert!(
        !TwoRepos::queued(&cluster)
            .iter()
            .any(|q| q.starts_with(held.as_str()))
    );
    repos.point_s3_at(&repos.server.endpoint);
    let next =
        cluster.sql("select pg_walfile_name(pg_logical_emit_message(false, 'pitr-test', 'next'))");
    cluster.sql("select pg_switch_wal()");
    while cluster.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver") < next {
        assert!(
            std::time::Instant::now() < deadline + WAIT,
            "{next} not archived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.sql("select pg_stat_reset_shared('archiver')");
    assert_eq!(
        TwoRepos::segments(&repos.local).await,
        TwoRepos::segments(&repos.s3).await,
        "{held} in both once S3 is back"
    );

    // A backup in each repository, then more work, a restore point and its segment.
    let id = repos.pitr.backup(&cluster);
    repos.backup_into(&cluster, "2", &[]);
    cluster.sql("insert into t select g, 'replayed' from generate_series(1, 3000) g");
    let replayed = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");
    cluster.sql("update t set v = 'late' where id < 100");
    let expected = state(&cluster);
    cluster.sql("select pg_create_restore_point('several')");
    cluster.archive_current_segment(WAIT);

    // A segment replay needs is damaged in the local repository: served from S3.
    let storage = repos.local.storage().await;
    let key = storage
        .list("wal/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .find(|k| keys::wal_name_of_key(k).is_some_and(|n| n.to_string() == replayed))
        .unwrap_or_else(|| panic!("{replayed} in the local repository"));
    let path = repos.dir.path().join("repo").join(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    let (mut restored, _) =
        repos.restore("damaged", &["--backup", &id, "--target-name", "several"]);
    assert_eq!(
        state(&restored),
        expected,
        "exact restore past the damaged copy"
    );
    // Fetched from S3 by archive-get itself, or ahead of it by the prefetcher.
    let log = restored.server_log();
    assert!(
        log.contains(&format!("{replayed}: served from repository 2"))
            || log.contains(&format!("prefetch of {replayed} from ")),
        "the log says where {replayed} came from: {log}"
    );
    restored.stop();

    // The local repository is gone: the restore uses S3 alone.
    repos.lose_local();
    let (mut restored, said) = repos.restore("from-s3", &["--target-name", "several"]);
    assert!(
        said.contains("repository 2"),
        "the restore says it used S3: {said}"
    );
    assert_eq!(state(&restored), expected, "exact restore from S3 alone");
    restored.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_makes_the_second_repository_restorable_on_its_own() {
    let (repos, cluster) = TwoRepos::start_with("copy-repos", false).await;
    cluster.sql("create table t (id int, v text); insert into t select g, md5(g::text) from generate_series(1, 5000) g");
    let full = repos.pitr.backup(&cluster);
    cluster.sql("update t set v = 'changed' where id % 7 = 0");
    cluster.archive_current_segment(WAIT);
    let incr = repos.backup_into(&cluster, "1", &["--type", "incr"]);
    cluster.sql("insert into t select g, 'after' from generate_series(1, 1000) g");
    let expected = state(&cluster);
    cluster.sql("select pg_create_restore_point('copied')");
    cluster.archive_current_segment(WAIT);

    // An off-site repository added later holds nothing until the copy.
    repos.add_s3(&cluster);
    let said = repos.ok(&["copy", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(
        report["backups_copied"],
        serde_json::json!([full, incr]),
        "{said}"
    );
    assert!(report["wal_copied"].as_u64().unwrap() >= 4, "{said}");
    assert_eq!(
        TwoRepos::segments(&repos.local).await,
        TwoRepos::segments(&repos.s3).await,
        "every segment copied, identical"
    );
    repos.ok(&["verify", "--repo-index", "2"]);
    // list and verify report each repository: one JSON document naming them.
    let listed: serde_json::Value = serde_json::from_str(&repos.ok(&["list", "--json"])).unwrap();
    let each = listed["repositories"].as_array().unwrap();
    assert_eq!(each.len(), 2, "{listed}");
    for (n, repository) in each.iter().enumerate() {
        assert_eq!(repository["repository"], n + 1);
        let ids: Vec<&str> = repository["report"]["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [full.as_str(), incr.as_str()], "{repository}");
    }
    let text = repos.ok(&["verify"]);
    assert!(
        text.contains("repository 1 (") && text.contains("repository 2 ("),
        "{text}"
    );

    // Again: nothing is missing, nothing is copied.
    let again: serde_json::Value = serde_json::from_str(&repos.ok(&["copy", "--json"])).unwrap();
    assert_eq!(again["backups_copied"], serde_json::json!([]));
    assert_eq!(again["wal_copied"], 0);
    assert_eq!(again["backups_present"], 2);

    // A copy cut short (the incremental's manifest and one object never arrived, another
    // object damaged) is resumed.
    let storage = repos.s3.storage().await;
    let objects: Vec<String> = storage
        .list(&format!("backup/{incr}/data/"))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(objects.len() >= 2, "{objects:?}");
    storage.delete(&keys::manifest_key(&incr)).await.unwrap();
    storage.delete(&objects[0]).await.unwrap();
    let damaged = pitr::storage::read_all(&*storage, &objects[1])
        .await
        .unwrap();
    let mut flipped = damaged.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x77;
    storage.delete(&objects[1]).await.unwrap();
    storage
        .put(
            &objects[1],
            pitr::storage::PutPayload::from_bytes(flipped),
            pitr::storage::PutMode::Create,
        )
        .await
        .unwrap();
    let resumed: serde_json::Value = serde_json::from_str(&repos.ok(&["copy", "--json"])).unwrap();
    assert_eq!(resumed["backups_copied"], serde_json::json!([incr]));
    repos.ok(&["verify", "--repo-index", "2"]);

    // A drill proves each repository restores on its own: one report per repository.
    let scratch = repos.dir.subdir("scratch");
    chown_to_postgres(&scratch);
    let drilled: serde_json::Value = serde_json::from_str(&repos.ok(&[
        "drill",
        "--scratch-dir",
        &scratch.display().to_string(),
        "--json",
    ]))
    .unwrap();
    let each = drilled["repositories"].as_array().unwrap();
    assert_eq!(each.len(), 2, "{drilled}");
    for repository in each {
        assert_eq!(repository["report"]["passed"], true, "{repository}");
    }

    // The local repository is gone: S3 restores the chain on its own.
    repos.lose_local();
    let (mut restored, said) =
        repos.restore("from-copy", &["--backup", &incr, "--target-name", "copied"]);
    assert!(said.contains("repository 2"), "{said}");
    assert_eq!(state(&restored), expected, "exact restore from the copy");
    restored.stop();
}

/// Several repositories configured wrong are refused before anything is read, each with a
/// one-line reason and the usage exit code.
#[test]
fn misconfigured_repositories_are_refused() {
    let dir = TestDir::new("several-repos-refused");
    let (one, two) = (dir.subdir("one"), dir.subdir("two"));
    let (one, two) = (one.display().to_string(), two.display().to_string());
    for (args, says) in [
        (
            vec!["--repo", &one, "--repo2", &two, "--repo-index", "3", "list"],
            "repo_index 3: repository 3 is not configured (configured: 1, 2)",
        ),
        (
            vec!["--repo", &one, "--repo3-keep-last", "2", "list"],
            "repository 3 has settings but no location",
        ),
        (vec!["--repo", &one, "copy"], "copy needs two repositories"),
        (
            vec!["--repo", &one, "--repo2", &two, "copy", "--to", "4"],
            "repository 4 is not configured",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(&args)
            .env_remove("PITR_CONFIG")
            .output()
            .unwrap();
        assert_eq!(
            code(&out),
            i32::from(pitr::error::EXIT_USAGE),
            "{args:?}: {}",
            stderr(&out)
        );
        let said = stderr(&out);
        assert!(
            said.contains(says) && said.trim().lines().count() == 1,
            "{args:?}: {said}"
        );
    }
}
