//! Point-in-time restore on real parts: every recorded moment of a workload comes back
//! exactly, from the newest backup before it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const TABLE_STATE: &str = "select count(*) || ':' || coalesce(md5(string_agg(id || ':' || v, ',' \
                           order by id)), '') from t";

/// A phase of writes; returns (the time after it committed, the table's state then).
fn phase(cluster: &PgCluster, n: u32) -> (String, String) {
    cluster.sql(&format!(
        "insert into t select g, 'phase{n}-' || md5(g::text) from generate_series({}, {}) g",
        n * 1000,
        n * 1000 + 999
    ));
    if n % 2 == 1 {
        cluster.sql(&format!("delete from t where id % 7 = {n}"));
    }
    let state = cluster.sql(TABLE_STATE);
    let time = cluster
        .sql("select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
    std::thread::sleep(Duration::from_millis(1200));
    (time, state)
}

fn restore(
    pitr: &Pitr,
    dir: &TestDir,
    name: &str,
    args: &[&str],
) -> (std::process::Output, std::path::PathBuf) {
    let data = dir.path().join(name);
    let mut all = vec!["restore", "--pgdata"];
    let data_text = data.display().to_string();
    all.push(&data_text);
    all.extend_from_slice(args);
    (pitr.run(&all), data)
}

async fn restore_to_each_phase(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t (id int primary key, v text)");
    let (before_any_backup, _) = phase(&cluster, 1);
    let first = pitr.backup(&cluster);
    let mut phases = vec![
        (phase(&cluster, 2), first.clone()),
        (phase(&cluster, 3), first.clone()),
    ];
    let second = pitr.backup(&cluster);
    phases.push((phase(&cluster, 4), second.clone()));
    phases.push((phase(&cluster, 5), second.clone()));
    // Recovery stops at the first commit after the target: make sure there is one.
    cluster.sql("insert into t values (-1, 'after all phases')");
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();

    // Before the first backup finished: a clear error, nothing written.
    let (out, data) = restore(
        &pitr,
        &dir,
        "too-early",
        &["--target-time", &before_any_backup],
    );
    // Out of the repository's reach, like any unreachable target.
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("earliest restorable point"),
        "{}",
        stderr(&out)
    );
    assert!(!data.exists() || std::fs::read_dir(&data).unwrap().next().is_none());

    // The first restore runs a pitr whose path needs quoting: the restore_command it writes
    // must survive postgresql.auto.conf's lexer, PostgreSQL's %-substitution and /bin/sh.
    let odd_dir = dir.subdir("it's \"odd\" $HOME `id` 100% \\ dir");
    let odd = Pitr {
        bin: odd_dir.join("pitr"),
        repo: pitr.repo.clone(),
        env: pitr.env.clone(),
    };
    std::fs::copy(&pitr.bin, &odd.bin).unwrap();
    for (i, ((time, state), expected_backup)) in phases.iter().enumerate() {
        let (out, data) = restore(
            if i == 0 { &odd } else { &pitr },
            &dir,
            &format!("restored-{i}"),
            &["--target-time", time],
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("restored backup {expected_backup} ")),
            "phase {i} should come from {expected_backup}: {stdout}"
        );
        assert_verifybackup(&data);
        chown_to_postgres(&data);
        let mut restored = PgCluster::restored(&dir, &format!("sock-{i}"), data);
        restored.start_with_env(&repo.env);
        restored.wait_paused(Duration::from_secs(60));
        assert_eq!(&restored.sql(TABLE_STATE), state, "state at {time}");
        if i == 0 {
            // Replay fetched every segment through it: the restored pg_wal started empty.
            let command = restored.sql("show restore_command");
            assert!(
                command.contains("odd") && command.contains("archive-get"),
                "{command}"
            );
        }
        restored.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_to_each_phase_local() {
    restore_to_each_phase("restore-local", Repo::local).await;
}

/// Through a 20 ms (each way) path: restore and the restore_command it writes pay real
/// round trips.
#[tokio::test(flavor = "multi_thread")]
async fn restore_to_each_phase_s3() {
    let server = S3Server::start_with_latency("restore", Duration::from_millis(20)).await;
    restore_to_each_phase("restore-s3", |_| Repo::s3(&server, "restore")).await;
    // Restores and recovery's restore_command fetched through the proxy.
    let proxy = server.latency_proxy().unwrap();
    let carried = (proxy.connections(), proxy.bytes_to_client());
    assert!(
        carried.0 >= 10 && carried.1 > 1 << 20,
        "connections, bytes down through the proxy: {carried:?}"
    );
}

/// Tablespaces come back at their original place or where --tablespace-map says; the
/// promoted cluster passes pg_amcheck.
#[tokio::test(flavor = "multi_thread")]
async fn tablespaces_restore_in_place_and_remapped() {
    let dir = TestDir::new("restore-tablespace");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    let original = dir.subdir("tablespace");
    cluster.sql(&format!(
        "create tablespace extra location '{}'",
        original.display()
    ));
    cluster.sql("create table far (id int primary key, v text) tablespace extra");
    // Over 32 MiB, so that the file is restored from parts.
    cluster.sql("insert into far select g, md5(g::text) from generate_series(1, 600000) g");
    let expected = cluster.sql("select count(*) || md5(string_agg(v, ',' order by id)) from far");
    pitr.backup(&cluster);
    let oid = cluster.sql("select oid from pg_tablespace where spcname = 'extra'");
    cluster.sql("select pg_switch_wal()");
    cluster.stop();

    // Remapped while the original still holds the live cluster's files.
    let elsewhere = dir.subdir("elsewhere");
    let map = format!("{oid}={}", elsewhere.display());
    let (out, data) = restore(
        &pitr,
        &dir,
        "remapped",
        &[
            "--target",
            "immediate",
            "--target-action",
            "promote",
            "--tablespace-map",
            &map,
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    let told = format!("tablespace {oid} into {}", elsewhere.display());
    assert!(said.contains(&told), "{said}");
    let link = std::fs::read_link(data.join("pg_tblspc").join(&oid)).unwrap();
    assert_eq!(link, elsewhere);
    // The whole-file checksums in backup_manifest are combined from the parts'.
    assert_verifybackup(&data);
    chown_to_postgres(&data);
    chown_to_postgres(&elsewhere);
    let mut restored = PgCluster::restored(&dir, "sock-remapped", data);
    restored.start();
    restored.wait_promoted(Duration::from_secs(60));
    assert_eq!(
        restored.sql("select count(*) || md5(string_agg(v, ',' order by id)) from far"),
        expected
    );
    restored.sql("create extension amcheck");
    let amcheck = as_postgres(Path::new(PG_BIN).join("pg_amcheck"))
        .args(["-U", "postgres", "-h"])
        .arg(&restored.socket_dir)
        .args(["-p", "5432", "--all", "--heapallindexed"])
        .output()
        .unwrap();
    assert!(
        amcheck.status.success(),
        "pg_amcheck: {}{}",
        String::from_utf8_lossy(&amcheck.stdout),
        stderr(&amcheck)
    );
    restored.stop();

    // In place: refused while the original directory holds files, then restored there.
    let (out, _) = restore(&pitr, &dir, "in-place-refused", &["--target", "immediate"]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--tablespace-map"),
        "{}",
        stderr(&out)
    );
    // Refused at the pre-flight: not even the data directory was created.
    assert!(!dir.path().join("in-place-refused").exists());
    std::fs::remove_dir_all(&original).unwrap();
    let (out, data) = restore(&pitr, &dir, "in-place", &["--target", "immediate"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_link(data.join("pg_tblspc").join(&oid)).unwrap(),
        original
    );
    assert!(std::fs::read_dir(&original).unwrap().next().is_some());
}

/// Restore and promote: the new timeline is archived into the same repository, and a later
/// restore reaches a time on it; list and verify see both timelines.
#[tokio::test(flavor = "multi_thread")]
async fn a_time_on_a_new_timeline_is_restorable() {
    let dir = TestDir::new("restore-timeline");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table t (id int primary key, v text)");
    pitr.backup(&cluster);
    let (time_a, _) = phase(&cluster, 1);
    phase(&cluster, 2); // on timeline 1 only: the branch leaves it behind
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();

    let (out, data) = restore(
        &pitr,
        &dir,
        "branch",
        &[
            "--target-time",
            &time_a,
            "--target-action",
            "promote",
            "--archive-mode",
            "preserve",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut branch = PgCluster::restored_archiving(&dir, "sock-branch", data);
    branch.start_with_env(&repo.env);
    branch.wait_promoted(Duration::from_secs(60));
    assert_eq!(
        branch.sql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002"
    );
    let (time_b, state_b) = phase(&branch, 3);
    branch.sql("insert into t values (-1, 'after')");
    branch.archive_current_segment(Duration::from_secs(60));
    branch.stop();

    let out = pitr.run(["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let timelines: Vec<u64> = listed["wal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(timelines, vec![1, 2], "{listed}");
    let out = pitr.run(["verify"]);
    assert_eq!(
        code(&out),
        0,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );

    let (out, data) = restore(&pitr, &dir, "on-timeline-2", &["--target-time", &time_b]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(&dir, "sock-tl2", data);
    restored.start_with_env(&repo.env);
    restored.wait_paused(Duration::from_secs(60));
    // Phase 3 exists only on timeline 2, phase 2 only on timeline 1: the state proves which.
    assert_eq!(restored.sql(TABLE_STATE), state_b);
    restored.stop();
}

/// Waits until `standby` has replayed all the primary wrote so far.
fn wait_replayed(primary: &PgCluster, standby: &PgCluster) {
    let target = primary.sql("select pg_current_wal_lsn()");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while standby.sql(&format!(
        "select pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
    )) != "t"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby did not replay up to {target}:\n{}",
            standby.server_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 20, part 5: a backup taken from a streaming standby (which refuses
/// pg_walfile_name and writes no backup history file) is named, awaited and restored
/// exactly, to its end and to a later time, and passes pg_amcheck.
async fn a_standby_backup_restores_exactly(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut primary) = archiving_cluster(&dir, &repo, "wal_keep_size = '256MB'");
    primary.sql("create table t (id int primary key, v text)");
    primary.sql("create table tick (at timestamptz default now())");
    // Enough to take a while to copy, in bundles and alone.
    primary.sql("create table big as select g, md5(g::text) from generate_series(1, 300000) g");
    primary.sql("create index on big (g)");
    let big = "select count(*) || ':' || sum(hashtext(md5)) from big";
    let big_state = primary.sql(big);
    let (_, at_backup) = phase(&primary, 1);

    let data = dir.subdir("standby").join("data");
    run_ok(
        as_postgres(Path::new(PG_BIN).join("pg_basebackup"))
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "-U", "postgres", "-h"])
            .arg(&primary.socket_dir)
            .args(["-p", &primary.port.to_string()]),
    );
    let mut standby = PgCluster::restored_archiving(&dir, "standby-sock", data);
    standby.start();
    wait_replayed(&primary, &standby);
    assert_eq!(standby.sql("select pg_is_in_recovery()"), "t");
    assert_eq!(standby.sql(TABLE_STATE), at_backup);

    // The stop segment reaches the repository from the primary's archiver: it switches
    // segments while the backup waits.
    let mut child = pitr
        .command(backup_args(&standby))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        primary.sql("insert into tick default values");
        primary.sql("select pg_switch_wal()");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = backup_id(&out);
    let storage = repo.storage().await;
    let manifest: pitr::catalog::backup::BackupManifest =
        serde_json::from_slice(&metadata_json(&*storage, &common::keys::manifest_key(&id)).await)
            .unwrap();
    assert!(
        manifest.backup_label.contains("BACKUP FROM: standby"),
        "{}",
        manifest.backup_label
    );
    // pg_control alone in the last object, written after all the others were read.
    let control = manifest
        .files
        .iter()
        .find(|f| f.path == "global/pg_control")
        .unwrap();
    let last = manifest.files.iter().map(|f| f.object).max().unwrap();
    assert_eq!(control.object, last);
    assert_eq!(
        manifest.files.iter().filter(|f| f.object == last).count(),
        1
    );

    // Later writes on the primary: a time to restore to, and writes after it.
    let (time, at_time) = phase(&primary, 2);
    phase(&primary, 3);
    primary.archive_current_segment(Duration::from_secs(60));
    standby.stop();
    primary.stop();

    for (case, args, expected) in [
        (
            "standby-immediate",
            vec!["--target", "immediate", "--target-action", "promote"],
            &at_backup,
        ),
        ("standby-time", vec!["--target-time", &time], &at_time),
    ] {
        let (out, data) = restore(&pitr, &dir, case, &args);
        assert_eq!(code(&out), 0, "{case}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("restored backup {id} ")),
            "{case}"
        );
        assert_verifybackup(&data);
        chown_to_postgres(&data);
        let mut restored = PgCluster::restored(&dir, &format!("sock-{case}"), data);
        restored.start_with_env(&repo.env);
        if case == "standby-immediate" {
            restored.wait_promoted(Duration::from_secs(60));
            restored.sql("create extension amcheck");
            let amcheck = as_postgres(Path::new(PG_BIN).join("pg_amcheck"))
                .args(["-U", "postgres", "-h"])
                .arg(&restored.socket_dir)
                .args([
                    "-p",
                    &restored.port.to_string(),
                    "--all",
                    "--heapallindexed",
                ])
                .output()
                .unwrap();
            assert!(
                amcheck.status.success(),
                "pg_amcheck: {}{}",
                String::from_utf8_lossy(&amcheck.stdout),
                stderr(&amcheck)
            );
        } else {
            restored.wait_paused(Duration::from_secs(60));
        }
        assert_eq!(&restored.sql(TABLE_STATE), expected, "{case}");
        assert_eq!(restored.sql(big), big_state, "{case}");
        restored.stop();
    }
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_backup_restores_exactly_local() {
    a_standby_backup_restores_exactly("restore-standby-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_backup_restores_exactly_s3() {
    let server = S3Server::start("restore-standby").await;
    a_standby_backup_restores_exactly("restore-standby-s3", |_| Repo::s3(&server, "standby")).await;
}
