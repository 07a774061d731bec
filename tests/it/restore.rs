//! Point-in-time restore on real parts: every recorded moment of a workload comes back
//! exactly, from the newest backup before it.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

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
        // From S3, restore names what the server's environment needs, never a value.
        let note = "note: the restored server's restore_command reads the S3 repository with \
                    the AWS credentials of the server's environment";
        match repo.env.iter().find(|(k, _)| k == "AWS_SECRET_ACCESS_KEY") {
            Some((_, secret)) => {
                assert!(stdout.contains(note), "{stdout}");
                assert!(
                    stdout.contains("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION"),
                    "{stdout}"
                );
                assert!(!stdout.contains(secret.as_str()), "{stdout}");
            }
            None => assert!(!stdout.contains(note), "{stdout}"),
        }
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

    let mut standby = streaming_standby(&dir, &primary);
    assert_eq!(standby.sql("select pg_is_in_recovery()"), "t");
    assert_eq!(standby.sql(TABLE_STATE), at_backup);

    // The stop segment reaches the repository from the primary's archiver: it switches
    // segments while the backup waits.
    let out = backup_while_the_primary_switches(pitr.command(backup_args(&standby)), &primary);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = backup_id(&out);
    let storage = repo.storage().await;
    let manifest: pitr::catalog::backup::BackupManifest = serde_json::from_slice(
        &metadata_json(&*storage, &crate::common::keys::manifest_key(&id)).await,
    )
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

/// The WAL segments (not history files) PostgreSQL's log says it restored, in order.
fn restored_segments(cluster: &PgCluster) -> Vec<String> {
    cluster
        .server_log()
        .lines()
        .filter_map(|line| {
            let name = line
                .split("restored log file \"")
                .nth(1)?
                .split('"')
                .next()?;
            (name.len() == 24).then(|| name.to_owned())
        })
        .collect()
}

/// The WAL line of a `--dry-run` plan: (first, last) segment.
fn planned_range(out: &std::process::Output) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("WAL:"))
        .unwrap_or_else(|| panic!("no WAL line in {text}"));
    let mut words = line.split_whitespace();
    let first = words.next().unwrap().to_owned();
    let last = words.nth(1).unwrap().to_owned();
    (first, last)
}

/// PostgreSQL 15's t/028_pitr_timelines.pl with pitr as archive_command and
/// restore_command: a restore point that lies on timeline 1 but was archived only inside
/// timeline 2's segment (the primary died first); a PITR to it becomes timeline 3, whose
/// history's switch points go back. The cluster keeps archiving it, list and verify are
/// clean, and restores follow the timeline and segments PostgreSQL reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_history_whose_switch_points_go_back_is_archived_and_followed() {
    let dir = TestDir::new("restore-pg028");
    let repo = Repo::local(&dir);
    let (pitr, primary) = archiving_cluster(&dir, &repo, "");
    pitr.backup(&primary);

    // A streaming standby that archives too (archive_mode = always).
    let standby_root = dir.subdir("standby");
    let standby_data = standby_root.join("data");
    chown_to_postgres(&standby_root);
    run_ok(
        as_postgres(Path::new(PG_BIN).join("pg_basebackup"))
            .args(["-R", "-X", "stream", "-U", "postgres", "-h"])
            .arg(&primary.socket_dir)
            .args(["-p", &primary.port.to_string(), "-D"])
            .arg(&standby_data),
    );
    let mut standby = PgCluster::restored_archiving(&dir, "sock-standby", standby_data);
    standby.configure("archive_mode = always");
    standby.start_with_env(&repo.env);

    primary.sql("create table foo (i int)");
    primary.sql("insert into foo values (1)");
    primary.sql("select pg_create_restore_point('rp')");
    primary.sql("insert into foo values (2)");
    let lsn = primary.sql("select pg_current_wal_lsn()");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while standby.sql(&format!("select pg_last_wal_replay_lsn() >= '{lsn}'")) != "t" {
        assert!(std::time::Instant::now() < deadline, "standby behind");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The primary dies before it archives the segment holding the inserts.
    let primary_segment = primary.sql("select pg_walfile_name(pg_current_wal_lsn())");
    drop(primary);
    run_ok(
        as_postgres(Path::new(PG_BIN).join("pg_ctl"))
            .args(["-w", "-D"])
            .arg(&standby.data)
            .arg("promote"),
    );
    standby.wait_promoted(Duration::from_secs(60));
    let on_two = standby.archive_current_segment(Duration::from_secs(60));
    assert!(on_two.starts_with("00000002"), "{on_two}");
    assert_eq!(
        &on_two[8..],
        &primary_segment[8..],
        "the switch is in that segment"
    );
    standby.stop();

    // PITR to 'rp' (latest timeline: 2), read from timeline 2's segment; it promotes to 3.
    let (out, data) = restore(
        &pitr,
        &dir,
        "pitr1",
        &[
            "--target-name",
            "rp",
            "--target-action",
            "promote",
            "--archive-mode",
            "preserve",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut pitr1 = PgCluster::restored_archiving(&dir, "sock-pitr1", data);
    pitr1.start_with_env(&repo.env);
    pitr1.wait_promoted(Duration::from_secs(60));
    assert_eq!(pitr1.sql("select max(i) from foo"), "1");
    pitr1.sql("insert into foo values (3)");
    let on_three = pitr1.archive_current_segment(Duration::from_secs(60));
    assert!(on_three.starts_with("00000003"), "{on_three}");
    // The history PostgreSQL wrote goes back, and was archived; archiving goes on.
    let history = std::fs::read_to_string(pitr1.wal_path("00000003.history")).unwrap();
    let switch = |n: usize| -> u64 {
        let lsn = history.lines().filter(|l| !l.is_empty()).nth(n).unwrap();
        let (hi, lo) = lsn.split('\t').nth(1).unwrap().split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    assert!(switch(1) < switch(0), "{history}");
    pitr1.sql("insert into foo values (4)");
    pitr1.archive_current_segment(Duration::from_secs(60));
    assert_eq!(
        pitr1.sql("select failed_count from pg_stat_archiver"),
        "0",
        "{}",
        pitr1.server_log()
    );
    pitr1.stop();

    let out = pitr.run(["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("timeline 3: forked from timeline 2 at"),
        "{listed}"
    );
    let out = pitr.run(["verify"]);
    assert_eq!(
        code(&out),
        0,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );

    // Every row of timeline 3, replayed as PostgreSQL does (latest: 3).
    let (out, data) = restore(&pitr, &dir, "pitr2", &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut pitr2 = PgCluster::restored(&dir, "sock-pitr2", data);
    pitr2.start_with_env(&repo.env);
    pitr2.wait_promoted(Duration::from_secs(60));
    assert_eq!(
        pitr2.sql("select string_agg(i::text, ',' order by i) from foo"),
        "1,3,4"
    );
    pitr2.stop();

    // 'rp' again: timelines 2 and 3 agree up to it; the plan reads what PostgreSQL reads.
    let out = pitr.run([
        "restore",
        "--dry-run",
        "--pgdata",
        &dir.path().join("unused").display().to_string(),
        "--target-name",
        "rp",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (_, planned_last) = planned_range(&out);
    assert!(planned_last.starts_with("00000003"), "{planned_last}");
    let (out, data) = restore(&pitr, &dir, "pitr3", &["--target-name", "rp"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut pitr3 = PgCluster::restored(&dir, "sock-pitr3", data);
    pitr3.start_with_env(&repo.env);
    pitr3.wait_paused(Duration::from_secs(60));
    assert_eq!(pitr3.sql("select max(i) from foo"), "1");
    let replayed = restored_segments(&pitr3);
    assert!(replayed.contains(&planned_last), "{replayed:?}");
    assert!(
        replayed.iter().all(|s| !s.starts_with("00000002")),
        "{replayed:?}"
    );
    pitr3.stop();
}

/// A history file PostgreSQL would refuse (timeline IDs that do not increase) is refused by
/// archive-push before anything is stored; one whose switch points go back is stored.
#[tokio::test(flavor = "multi_thread")]
async fn archive_push_refuses_a_history_postgresql_would_refuse_storing_nothing() {
    let dir = TestDir::new("restore-bad-history");
    let repo = Repo::local(&dir);
    let (pitr, _cluster) = initialised_cluster(&dir, &repo);
    let wal = dir.subdir("pg_wal");
    chown_to_postgres(&wal);
    let storage = repo.storage().await;
    let stored = || async {
        snapshot(storage.as_ref())
            .await
            .into_iter()
            .filter(|(key, _)| key.contains("00000003.history"))
            .count()
    };
    for bad in [
        "2\t0/5000000\ta\n1\t0/6000000\tb\n",
        "1\t0/5000000\ta\n3\t0/6000000\tb\n",
    ] {
        let path = wal.join("00000003.history");
        std::fs::write(&path, bad).unwrap();
        chown_to_postgres(&path);
        let out = pitr.run(["archive-push", &path.display().to_string()]);
        assert_eq!(code(&out), 7, "{}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
        assert_eq!(stored().await, 0, "{bad:?}");
    }
    let path = wal.join("00000003.history");
    std::fs::write(&path, "1\t0/3018CB0\ta\n2\t0/3018C48\tb\n").unwrap();
    let out = pitr.run(["archive-push", &path.display().to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stored().await > 0);
}

/// A restored copy promoted to timeline 2 archives into the primary's repository and takes
/// a backup there while the primary goes on on timeline 1: a time after the fork is reached
/// on both, so restore refuses to guess and names both; each, asked for, restores its rows.
async fn a_target_on_two_timelines_is_never_guessed(
    name: &str,
    repo: impl FnOnce(&TestDir) -> Repo,
) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, primary) = archiving_cluster(&dir, &repo, "");
    primary.sql("create table t (id int primary key, v text)");
    primary.sql("insert into t values (0, 'base')");
    let first = pitr.backup(&primary);

    let (out, data) = restore(
        &pitr,
        &dir,
        "copy",
        &[
            "--target",
            "immediate",
            "--target-action",
            "promote",
            "--archive-mode",
            "preserve",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut copy = PgCluster::restored_archiving(&dir, "sock-copy", data);
    copy.start_with_env(&repo.env);
    copy.wait_promoted(Duration::from_secs(60));
    let copy_backup = pitr.backup(&copy);

    primary.sql("insert into t select g, 'primary' from generate_series(1, 100) g");
    copy.sql("insert into t select g, 'copy' from generate_series(1, 50) g");
    let primary_state = primary.sql(TABLE_STATE);
    let copy_state = copy.sql(TABLE_STATE);
    std::thread::sleep(Duration::from_millis(1200));
    let target = primary
        .sql("select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
    std::thread::sleep(Duration::from_millis(1200));
    // Recovery stops at the first commit after the target: one on each.
    primary.sql("insert into t values (-1, 'after')");
    copy.sql("insert into t values (-1, 'after')");
    primary.archive_current_segment(Duration::from_secs(60));
    copy.archive_current_segment(Duration::from_secs(60));
    copy.stop();

    let out = pitr.run(["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&format!("timeline 1: first timeline; backups {first}")),
        "{listed}"
    );
    assert!(
        listed.contains("  timeline 2: forked from timeline 1 at")
            && listed.contains(&format!("backups {copy_backup}")),
        "{listed}"
    );

    let out = pitr.run([
        "restore",
        "--dry-run",
        "--pgdata",
        &dir.path().join("unused").display().to_string(),
        "--target-time",
        &target,
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let text = stderr(&out);
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    for says in [
        format!("timeline 1 (the first timeline; backups on it: {first}"),
        "timeline 2 (forked from timeline 1 at".to_owned(),
        format!("backups on it: {copy_backup}"),
        "--target-timeline 1 or 2".to_owned(),
    ] {
        assert!(text.contains(&says), "{says}: {text}");
    }
    assert!(!dir.path().join("unused").exists());

    for (timeline, state) in [("1", &primary_state), ("2", &copy_state)] {
        let (out, data) = restore(
            &pitr,
            &dir,
            &format!("on-{timeline}"),
            &["--target-time", &target, "--target-timeline", timeline],
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        chown_to_postgres(&data);
        let mut restored = PgCluster::restored(&dir, &format!("sock-on-{timeline}"), data);
        restored.start_with_env(&repo.env);
        restored.wait_paused(Duration::from_secs(60));
        assert_eq!(&restored.sql(TABLE_STATE), state, "timeline {timeline}");
        restored.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_on_two_timelines_is_never_guessed_file() {
    a_target_on_two_timelines_is_never_guessed("restore-two-timelines", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_on_two_timelines_is_never_guessed_s3() {
    let server = S3Server::start("restore-two-timelines").await;
    a_target_on_two_timelines_is_never_guessed("restore-two-timelines-s3", |_| {
        Repo::s3(&server, "two")
    })
    .await;
}

/// psql as the postgres user on `cluster`; (success, the last line of output, stderr), never
/// a panic.
fn try_sql(cluster: &PgCluster, sql: &str) -> (bool, String, String) {
    let out = as_postgres("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-U", "postgres", "-h"])
        .arg(&cluster.socket_dir)
        .args(["-p", &cluster.port.to_string(), "-d", "postgres", "-c", sql])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// The default restore "to just before the DROP" pauses there (PostgreSQL's default
/// recovery_target_action): restore says that the copy is read-only and that the dropped
/// table stays locked until promotion, and gives the commands that end recovery. Each,
/// run as printed (the psql resume on one copy, pg_ctl promote on another), brings the
/// table back with its rows.
#[test]
fn a_copy_paused_before_a_drop_says_why_it_waits_and_how_to_end_recovery() {
    let dir = TestDir::new("restore-paused");
    let repo = Repo::local(&dir);
    let (pitr, mut primary) = archiving_cluster(&dir, &repo, "");
    primary.sql("create table t (id int primary key, v text)");
    primary.sql("insert into t select g, 'kept' from generate_series(1, 700) g");
    pitr.backup(&primary);
    primary.sql("insert into t select g, 'late' from generate_series(701, 742) g");
    let before_drop = primary.sql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(20));
    primary.sql("drop table t");
    primary.archive_current_segment(Duration::from_secs(60));
    primary.stop();
    let (socket_dir, port) = (primary.socket_dir.clone(), primary.port);

    for (i, how) in ["resume", "promote"].into_iter().enumerate() {
        let (out, data) = restore(
            &pitr,
            &dir,
            &format!("paused-{i}"),
            &["--target-time", &before_drop],
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = |prefix: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no line {prefix:?} in\n{stdout}"))
                .to_owned()
        };
        let shown = data.display();
        // pg_ctl of the cluster's version by its full path, with a log file.
        let start = line("Next: ");
        assert_eq!(
            start,
            format!("{PG_BIN}/pg_ctl -D {shown} -l {shown}/server.log start"),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "up to {} (UTC), then pause (PostgreSQL's default recovery_target_action); it \
                 logs to {shown}/server.log.\n",
                before_drop.trim_end_matches("+00")
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(
                "\nPaused, the copy is read-only, and what a transaction in flight at the target \
                 dropped or altered (the DROP TABLE restored to just before, say) stays locked by \
                 the startup process until the copy is promoted: a query on such a table waits \
                 (SET statement_timeout to look without waiting).\n"
            ),
            "{stdout}"
        );
        let promote = line("To end recovery there and accept writes: ");
        assert_eq!(promote, format!("{PG_BIN}/pg_ctl promote -D {shown}"));
        let resume = line("  or, from SQL: ");
        assert_eq!(
            resume,
            format!(
                "{PG_BIN}/psql -h {} -p {port} -U postgres -d postgres -c 'SELECT \
                 pg_wal_replay_resume()'",
                socket_dir.display()
            )
        );

        // Started as printed, it pauses; the dropped table is locked, not gone.
        let log = data.join("server.log");
        run_printed(&start, &dir.path().join(format!("pg_ctl-{i}.out")));
        let copy = PgCluster::adopt(data.clone(), socket_dir.clone(), port, log);
        copy.wait_paused(Duration::from_secs(60));
        let (ok, _, err) = try_sql(&copy, "set lock_timeout = '100ms'; select count(*) from t");
        assert!(!ok && err.contains("lock timeout"), "{err}");
        assert_eq!(copy.sql("select pg_is_in_recovery()"), "t");

        // The printed command ends recovery; the table is back with its rows before the drop.
        let command = if how == "resume" { &resume } else { &promote };
        run_printed(command, &dir.path().join(format!("{how}.out")));
        copy.wait_promoted(Duration::from_secs(60));
        let (ok, count, err) = try_sql(
            &copy,
            "set statement_timeout = '60s'; select count(*) from t",
        );
        assert!(ok, "{err}\n{}", copy.server_log());
        assert_eq!(count, "742", "after {how}");
        drop(copy);
    }
}
