//! Block-incremental backups (issue 27) on real servers of 13, 15 and 18: one full backup
//! and six incremental or differential ones over a workload of inserts, updates, deletes,
//! VACUUM truncating a table that then grows again, TRUNCATE, DROP TABLE, CREATE DATABASE
//! (each strategy), DROP DATABASE, SET TABLESPACE, VACUUM FULL, CLUSTER, index builds, TOAST,
//! an unlogged table and a sequence. Every backup restored to its own end, and the chain to
//! times between backups, holds exactly the rows of that moment in every database; the
//! deepest chain passes pg_amcheck; a stretch without block maps is compared page by page;
//! `list` shows the chain, `verify` passes, and retention keeps chains whole. A standby takes
//! incremental backups on its own full one.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Per table of the public schema: its row count and a digest of its rows (in any order).
const TABLES_DIGEST: &str = "select coalesce(string_agg(format('%s=%s', c.relname, \
     (xpath('/row/f/text()', query_to_xml(format('select count(*) || ''/'' || \
     coalesce(md5(string_agg(md5(x::text), '''' order by md5(x::text))), '''') as f from %I x', \
     c.relname), false, true, '')))[1]::text), ' ' order by c.relname), '') from pg_class c \
     where c.relkind = 'r' and c.relnamespace = 'public'::regnamespace \
     and c.relpersistence = 'p'";

/// Every database's tables, as [`TABLES_DIGEST`] tells them.
fn state(cluster: &PgCluster) -> String {
    let databases = cluster.sql(
        "select string_agg(datname, ' ' order by datname) from pg_database \
         where not datistemplate",
    );
    databases
        .split(' ')
        .map(|db| format!("{db}: {}", cluster.sql_in(db, TABLES_DIGEST)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn now(cluster: &PgCluster) -> String {
    cluster.sql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
}

/// A backup of `kind`; returns its id and what it printed.
fn backup(pitr: &Pitr, cluster: &PgCluster, kind: &str) -> (String, String) {
    let mut args = backup_args(cluster);
    args.extend(["--type".to_owned(), kind.to_owned()]);
    let out = pitr.run(&args);
    assert_eq!(code(&out), 0, "backup --type {kind}: {}", stderr(&out));
    (backup_id(&out), format!("{}{}", stdout(&out), stderr(&out)))
}

struct Restorer<'a> {
    pitr: &'a Pitr,
    dir: &'a TestDir,
    bin: &'a Path,
    /// The OID of the tablespace to map beside the restored directory, if any.
    tablespace: Option<String>,
}

impl Restorer<'_> {
    /// Restores with `args`, starts the copy, waits until it paused at the target (or was
    /// promoted) and returns it.
    fn start(&self, name: &str, args: &[&str], promoted: bool) -> PgCluster {
        let data = self.dir.path().join(name);
        let mut all = vec![
            "restore".to_owned(),
            "--pgdata".to_owned(),
            data.display().to_string(),
            "--no-sync".to_owned(),
        ];
        let mapped = self.tablespace.as_ref().map(|oid| {
            let mapped = self.dir.subdir(&format!("{name}-ts"));
            all.extend([
                "--tablespace-map".to_owned(),
                format!("{oid}={}", mapped.display()),
            ]);
            mapped
        });
        all.extend(args.iter().map(|a| a.to_string()));
        let out = self.pitr.run(&all);
        assert_eq!(code(&out), 0, "restore {args:?}: {}", stderr(&out));
        chown_to_postgres(&data);
        if let Some(mapped) = &mapped {
            chown_to_postgres(mapped);
        }
        let mut restored =
            PgCluster::restored(self.dir, &format!("sock-{name}"), data).with_bin(self.bin);
        restored.start_with_env(&self.pitr.env);
        if promoted {
            restored.wait_promoted(WAIT);
        } else {
            restored.wait_paused(WAIT);
        }
        restored
    }

    /// What `read` finds in backup `id` restored to its end (then stopped).
    fn at_end_of(&self, id: &str, read: impl Fn(&PgCluster) -> String) -> String {
        let mut restored = self.start(
            &format!("end-{id}"),
            &["--backup", id, "--target", "immediate"],
            false,
        );
        let found = read(&restored);
        restored.stop();
        found
    }

    /// The state a restore with `args` reaches.
    fn state(&self, name: &str, args: &[&str]) -> String {
        let mut restored = self.start(name, args, false);
        let state = state(&restored);
        // The sequence never behind.
        assert_eq!(
            restored.sql("select last_value >= 40 from s"),
            "t",
            "{name}"
        );
        restored.stop();
        let _ = std::fs::remove_dir_all(self.dir.path().join(name));
        let _ = std::fs::remove_dir_all(self.dir.path().join(format!("{name}-ts")));
        state
    }
}

fn on_version(major: u32, initdb: &[&str]) {
    let Some(bin) = pg_bin_of(major) else {
        return;
    };
    let dir = TestDir::new(&format!("incremental-{major}"));
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster_of(
        &dir,
        &repo,
        &bin,
        initdb,
        "autovacuum = off\nwal_keep_size = '1GB'",
    );
    let ts_dir = dir.subdir("ts");
    chown_to_postgres(&ts_dir);
    cluster.sql(&format!(
        "create tablespace ts location '{}'",
        ts_dir.display()
    ));
    let tablespace = cluster.sql("select oid from pg_tablespace where spcname = 'ts'");
    for sql in [
        "create table t (id int primary key, v text)",
        "insert into t select g, md5(g::text) from generate_series(1, 200000) g",
        "create table toasty (id int, doc text)",
        "insert into toasty select g, (select string_agg(md5(g::text || i::text), '') \
         from generate_series(1, 300) i) from generate_series(1, 200) g",
        "create table tail (id int, pad text)",
        "insert into tail select g, repeat('x', 200) from generate_series(1, 20000) g",
        "create sequence s",
        "select count(nextval('s')) from generate_series(1, 40)",
        "create unlogged table scratch as select generate_series(1, 1000) id",
        "create table moved as select generate_series(1, 10000) id",
        "create table gone as select generate_series(1, 10000) id",
        "create table emptied as select generate_series(1, 10000) id",
        "create table clustered (id int, v text)",
        "insert into clustered select g % 1000, md5(g::text) from generate_series(1, 20000) g",
        "create index clustered_id on clustered (id)",
        "create database d1",
    ] {
        cluster.sql(sql);
    }
    cluster.sql_in(
        "d1",
        "create table d1t as select generate_series(1, 5000) id",
    );
    // Read before the full backup: a first read sets hint bits, which with checksums on
    // logs whole pages.
    let before_full = state(&cluster);
    let (full, said) = backup(&pitr, &cluster, "full");
    assert!(!said.contains("backup on"), "{said}");
    let mut expected = vec![(full.clone(), before_full)];
    let mut between = Vec::new();

    // 1: about 1% of the rows updated, some deleted, TOAST values rewritten.
    cluster.sql("update t set v = 'one' where id between 50001 and 52000");
    cluster.sql("delete from t where id between 1000 and 1100");
    cluster.sql("update toasty set doc = reverse(doc) where id <= 10");
    let (incr1, said) = backup(&pitr, &cluster, "incr");
    assert!(
        said.contains(&format!("incr backup on {full}: "))
            && said.contains("(changes from block maps)"),
        "{said}"
    );
    expected.push((incr1.clone(), state(&cluster)));

    // 2: VACUUM cuts a table, which grows again over the cut blocks; TRUNCATE; a point in
    // time between the backups.
    cluster.sql("delete from tail where id > 2000");
    cluster.sql("vacuum tail");
    cluster.sql("insert into tail select g, repeat('y', 100) from generate_series(1, 3000) g");
    cluster.sql("truncate emptied");
    cluster.sql("insert into emptied values (1)");
    between.push((now(&cluster), state(&cluster)));
    std::thread::sleep(Duration::from_millis(50));
    cluster.sql("insert into t select g, 'late' from generate_series(300001, 300100) g");
    let (incr2, _) = backup(&pitr, &cluster, "incr");
    expected.push((incr2.clone(), state(&cluster)));

    // 3 (differential, on the full): new databases by each strategy, a table moved to
    // another tablespace, a table dropped.
    if major >= 15 {
        cluster.sql("create database d2 strategy wal_log");
        cluster.sql("create database d3 template d1 strategy file_copy");
    } else {
        cluster.sql("create database d2");
        cluster.sql("create database d3 template d1");
    }
    cluster.sql_in(
        "d2",
        "create table d2t as select generate_series(1, 3000) id",
    );
    cluster.sql_in("d3", "insert into d1t values (-1)");
    cluster.sql("alter table moved set tablespace ts");
    cluster.sql("drop table gone");
    let (diff3, said) = backup(&pitr, &cluster, "diff");
    assert!(said.contains(&format!("diff backup on {full}: ")), "{said}");
    expected.push((diff3.clone(), state(&cluster)));

    // 4: rewrites and new indexes.
    cluster.sql("vacuum full t");
    cluster.sql("cluster clustered using clustered_id");
    cluster.sql("create index t_v on t (v)");
    cluster.sql("update clustered set v = 'four' where id < 10");
    between.push((now(&cluster), state(&cluster)));
    std::thread::sleep(Duration::from_millis(50));
    cluster.sql("delete from clustered where id >= 990");
    let (incr4, said) = backup(&pitr, &cluster, "incr");
    assert!(
        said.contains(&format!("incr backup on {diff3}: ")),
        "{said}"
    );
    expected.push((incr4.clone(), state(&cluster)));

    // 5: a database dropped, rows added, a sequence advanced.
    cluster.sql("drop database d1");
    cluster.sql("insert into t select g, 'five' from generate_series(400001, 402000) g");
    cluster.sql("select count(nextval('s')) from generate_series(1, 10)");
    let (incr5, _) = backup(&pitr, &cluster, "incr");
    expected.push((incr5.clone(), state(&cluster)));

    // 6: a stretch whose middle segment lost its block map: pages are compared instead.
    cluster.sql("update t set v = 'six' where id % 97 = 0");
    let middle = cluster.sql("select pg_walfile_name(pg_current_wal_lsn())");
    cluster.sql("select pg_switch_wal()");
    cluster.sql("insert into toasty values (1000, 'six')");
    cluster.wait_archived(&middle, WAIT);
    let pitr::storage::RepoLocation::Fs(root) = &repo.location else {
        unreachable!("a local repository")
    };
    let map = root
        .join("blockmap")
        .join(&middle[..16])
        .join(format!("{middle}.json"));
    std::fs::remove_file(&map).unwrap_or_else(|e| panic!("{}: {e}", map.display()));
    let (incr6, said) = backup(&pitr, &cluster, "incr");
    assert!(
        said.contains(&format!("incr backup on {incr5}")) && said.contains("page LSN scan"),
        "{said}"
    );
    expected.push((incr6.clone(), state(&cluster)));
    cluster.archive_current_segment(WAIT);

    // The chain as list shows it, and verify.
    let out = pitr.run(["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chain: Vec<(String, String)> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["type"].as_str().unwrap().to_owned(),
                b["parent"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let pair = |kind: &str, parent: &str| (kind.to_owned(), parent.to_owned());
    assert_eq!(
        chain,
        [
            pair("full", ""),
            pair("incr", &full),
            pair("incr", &incr1),
            pair("diff", &full),
            pair("incr", &diff3),
            pair("incr", &incr4),
            pair("incr", &incr5),
        ]
    );
    // An incremental stores a small part of what the full backup stored.
    let stored = |i: usize| listed["backups"][i]["stored_bytes"].as_u64().unwrap();
    assert!(stored(1) * 5 < stored(0), "{listed}");
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "verify: {}{}", stdout(&out), stderr(&out));

    // Each backup restored to its own end, and the chains to times between backups.
    let restorer = Restorer {
        pitr: &pitr,
        dir: &dir,
        bin: &bin,
        tablespace: Some(tablespace),
    };
    for (id, state) in &expected {
        assert_eq!(
            &restorer.state(
                &format!("end-{id}"),
                &["--backup", id, "--target", "immediate"]
            ),
            state,
            "backup {id} on {major}"
        );
    }
    for (i, (time, state)) in between.iter().enumerate() {
        assert_eq!(
            &restorer.state(&format!("time-{i}"), &["--target-time", time]),
            state,
            "time {time} on {major}"
        );
    }

    // The deepest chain, promoted: its heaps and indexes check clean.
    let mut promoted = restorer.start(
        "amcheck",
        &[
            "--backup",
            &incr6,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
        true,
    );
    // The unlogged table comes back empty.
    assert_eq!(promoted.sql("select count(*) from scratch"), "0");
    if major >= 14 {
        let out = as_postgres(Path::new(PG_BIN).join("pg_amcheck"))
            .args([
                "--install-missing",
                "--heapallindexed",
                "--all",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(&promoted.socket_dir)
            .args(["-p", &promoted.port.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_amcheck on {major}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    promoted.stop();

    if major == 15 {
        // drill restores the newest backup, an incremental one, and checks it.
        let scratch = dir.subdir("scratch");
        chown_to_postgres(&scratch);
        let out = pitr.run([
            "drill",
            "--scratch-dir",
            &scratch.display().to_string(),
            "--json",
        ]);
        assert_eq!(code(&out), 0, "drill: {}{}", stdout(&out), stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["passed"], true, "{report}");
        // restore-table brings a table back from a chain, as it was between two backups.
        let (time, at_time) = &between[1];
        let out = pitr.run([
            "restore-table",
            "--into",
            &cluster.conninfo("postgres"),
            "--scratch-dir",
            &scratch.display().to_string(),
            "--table",
            "clustered",
            "--target-time",
            time,
        ]);
        assert_eq!(
            code(&out),
            0,
            "restore-table: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let copy = cluster.sql(
            "select relname from pg_class where relname like 'clustered_restored_%' \
             and relkind = 'r'",
        );
        let digest = cluster.sql(&format!(
            "select count(*) || '/' || coalesce(md5(string_agg(md5(x::text), '' \
             order by md5(x::text))), '') from {copy} x"
        ));
        assert!(
            at_time.contains(&format!(" clustered={digest} ")),
            "{digest} not in {at_time}"
        );
        cluster.sql(&format!("drop table {copy}"));
    }

    // Retention counts full backups and keeps chains whole: a new full keeps only its own.
    // The restores above are over: their replay claims hold nothing back.
    std::thread::sleep(Duration::from_secs(2));
    let expire = |keep: &str| {
        let out = pitr
            .command(["expire", "--keep-last", keep])
            .env("PITR_REPLAY_CLAIM_STALE_AFTER", "1")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out)
    };
    let said = expire("2");
    assert!(!said.contains("removed backup"), "{said}");
    let (full2, _) = backup(&pitr, &cluster, "full");
    expire("1");
    let out = pitr.run(["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [full2.as_str()]);
    cluster.stop();
}

#[test]
fn a_chain_restores_every_moment_on_15() {
    on_version(15, &["--data-checksums"]);
}

#[test]
fn a_chain_restores_every_moment_on_13() {
    on_version(13, &[]);
}

#[test]
fn a_chain_restores_every_moment_on_18() {
    on_version(18, &["--no-data-checksums"]);
}

/// An incremental backup taken on a standby builds on the standby's full backup: its
/// change set comes from the WAL the primary archived and the standby's own `pg_wal`.
#[test]
fn a_standby_takes_incremental_backups() {
    let dir = TestDir::new("incremental-standby");
    let repo = Repo::local(&dir);
    let (pitr, mut primary) = archiving_cluster(&dir, &repo, "wal_keep_size = '256MB'");
    primary.sql("create table tick (at timestamptz default now())");
    primary.sql("create table t (id int primary key, v text)");
    primary.sql("insert into t select g, md5(g::text) from generate_series(1, 100000) g");
    primary.sql("vacuum freeze");
    let mut standby = streaming_standby(&dir, &primary);
    let backup_of = |kind: &str| {
        let mut args = backup_args(&standby);
        args.extend(["--type".to_owned(), kind.to_owned()]);
        let out = backup_while_the_primary_switches(pitr.command(&args), &primary);
        assert_eq!(code(&out), 0, "{kind}: {}", stderr(&out));
        (backup_id(&out), format!("{}{}", stdout(&out), stderr(&out)))
    };
    // The rows of t (tick grows while backups wait for their WAL).
    let rows = |cluster: &PgCluster| {
        cluster.sql("select count(*) || ':' || md5(string_agg(v, ',' order by id)) from t")
    };
    let (full, _) = backup_of("full");
    primary.sql("update t set v = 'standby' where id between 20001 and 21000");
    primary.sql("delete from t where id > 99000");
    let expected = rows(&primary);
    wait_replayed(&primary, &standby);
    let (incr, said) = backup_of("incr");
    assert!(
        said.contains(&format!("incr backup on {full}: "))
            && said.contains("(changes from block maps)"),
        "{said}"
    );
    // The same over the replication protocol: the standby streams the segment holding the
    // start.
    primary.sql("update t set v = 'remote' where id between 50001 and 50500");
    let expected_remote = rows(&primary);
    wait_replayed(&primary, &standby);
    let dbname = format!(
        "host={} port={} user=postgres",
        standby.socket_dir.display(),
        standby.port
    );
    let out = backup_while_the_primary_switches(
        pitr.command([
            "backup",
            "--method",
            "replication",
            "--dbname",
            &dbname,
            "--type",
            "incr",
        ]),
        &primary,
    );
    assert_eq!(code(&out), 0, "remote incr: {}", stderr(&out));
    let remote_incr = backup_id(&out);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains(&format!("incr backup on {incr}: "))
            && said.contains("(changes from block maps)"),
        "{said}"
    );
    primary.sql("insert into t values (-1, 'after')");
    primary.archive_current_segment(WAIT);
    standby.stop();
    primary.stop();

    let restorer = Restorer {
        pitr: &pitr,
        dir: &dir,
        bin: Path::new(PG_BIN),
        tablespace: None,
    };
    for (id, expected) in [(&incr, &expected), (&remote_incr, &expected_remote)] {
        assert_eq!(&restorer.at_end_of(id, rows), expected, "backup {id}");
    }
}

/// After a point-in-time restore the cluster's next incremental backup builds on the newest
/// backup its timeline history passes through, not on one of the branch it left, and
/// restores exactly; data checksums turned on since the parent make the next one full.
#[test]
fn incrementals_follow_the_timeline_and_the_checksum_state() {
    let dir = TestDir::new("incremental-branch");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "wal_keep_size = '256MB'");
    cluster.sql("create table t (id int primary key, v text)");
    cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 20000) g");
    let (full, _) = backup(&pitr, &cluster, "full");
    cluster.sql("update t set v = 'kept' where id <= 300");
    let at_branch = state(&cluster);
    cluster.sql("select pg_create_restore_point('branch')");
    cluster.sql("update t set v = 'lost' where id > 19000");
    // A backup on the branch the restore leaves.
    let (_, said) = backup(&pitr, &cluster, "incr");
    assert!(said.contains(&format!("incr backup on {full}: ")), "{said}");
    cluster.archive_current_segment(WAIT);
    cluster.stop();

    let restorer = Restorer {
        pitr: &pitr,
        dir: &dir,
        bin: Path::new(PG_BIN),
        tablespace: None,
    };
    // Archiving into the same repository, as the cluster that now takes over.
    let data = dir.path().join("branch");
    let out = pitr.run([
        "restore",
        "--pgdata",
        &data.display().to_string(),
        "--backup",
        &full,
        "--target-name",
        "branch",
        "--target-action",
        "promote",
        "--archive-mode",
        "preserve",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    chown_to_postgres(&data);
    let mut branch = PgCluster::restored_archiving(&dir, "sock-branch", data);
    branch.start_with_env(&pitr.env);
    branch.wait_promoted(WAIT);
    assert_eq!(state(&branch), at_branch);
    branch.sql("update t set v = 'timeline 2' where id % 100 = 0");
    let expected = state(&branch);
    let (incr, said) = backup(&pitr, &branch, "incr");
    assert!(said.contains(&format!("incr backup on {full}: ")), "{said}");

    // Checksums on since the parent: taken full, saying why.
    branch.stop();
    run_ok(
        as_postgres(Path::new(PG_BIN).join("pg_checksums"))
            .arg("--enable")
            .arg("-D")
            .arg(&branch.data),
    );
    branch.start_with_env(&pitr.env);
    let (checked, said) = backup(&pitr, &branch, "incr");
    assert!(
        said.contains("is taken full: data checksums were turned on since the parent")
            && !said.contains("backup on "),
        "{said}"
    );
    branch.archive_current_segment(WAIT);
    branch.stop();
    for id in [&incr, &checked] {
        assert_eq!(restorer.at_end_of(id, state), expected, "backup {id}");
    }
}

/// archive-push rolls the block maps of each complete group of 16 segments into one, and an
/// incremental backup over a long stretch reads a group by its rollup: one whose segment
/// lost its own map is still read by maps, and the backup restores exactly.
#[test]
fn a_long_stretch_is_read_by_rolled_up_maps() {
    let dir = TestDir::new("incremental-rollup");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "wal_keep_size = '1GB'");
    cluster.sql("create table t (id int primary key, v text)");
    cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 20000) g");
    let (full, _) = backup(&pitr, &cluster, "full");
    for round in 0..40 {
        cluster.sql(&format!(
            "update t set v = 'round {round}' where id % 40 = {round}"
        ));
        cluster.sql("select pg_switch_wal()");
    }
    cluster.archive_current_segment(WAIT);
    let pitr::storage::RepoLocation::Fs(root) = &repo.location else {
        unreachable!("a local repository")
    };
    let rollups = root.join("blockmap/rollup/00000001");
    let group = "000000010000000000000010";
    let rollup = rollups.join(format!("{group}.16.json"));
    assert!(
        rollup.exists(),
        "{:?}",
        std::fs::read_dir(&rollups).map(|d| d.count())
    );
    let inside = "000000010000000000000015";
    std::fs::remove_file(root.join(format!("blockmap/{}/{inside}.json", &inside[..16]))).unwrap();
    let expected = state(&cluster);
    let (incr, said) = backup(&pitr, &cluster, "incr");
    assert!(
        said.contains(&format!("incr backup on {full}: "))
            && said.contains("(changes from block maps)"),
        "{said}"
    );
    cluster.archive_current_segment(WAIT);
    cluster.stop();
    let restorer = Restorer {
        pitr: &pitr,
        dir: &dir,
        bin: Path::new(PG_BIN),
        tablespace: None,
    };
    assert_eq!(restorer.at_end_of(&incr, state), expected);
}

/// A full backup taken over the replication protocol is a parent like any: a local
/// incremental backup builds on it, incremental and differential backups over the
/// replication protocol build on both, and each restores exactly.
#[test]
fn an_incremental_builds_on_a_backup_over_replication() {
    remote_chain_on(15);
}

#[test]
fn incremental_backups_over_replication_on_13() {
    remote_chain_on(13);
}

#[test]
fn incremental_backups_over_replication_on_18() {
    remote_chain_on(18);
}

/// Backups over the replication protocol in a chain with local ones on `major`.
fn remote_chain_on(major: u32) {
    let Some(bin) = pg_bin_of(major) else {
        return;
    };
    let dir = TestDir::new(&format!("incremental-remote-{major}"));
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) =
        archiving_cluster_of(&dir, &repo, &bin, &[], "wal_keep_size = '256MB'");
    cluster.sql("create table t (id int primary key, v text)");
    cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 50000) g");
    cluster.sql("vacuum freeze");
    let dbname = format!(
        "host={} port={} user=postgres",
        cluster.socket_dir.display(),
        cluster.port
    );
    let remote = |extra: &[&str]| {
        let mut args = vec!["backup", "--method", "replication", "--dbname", &dbname];
        args.extend(extra);
        let out = pitr.run(&args);
        assert_eq!(code(&out), 0, "backup {extra:?}: {}", stderr(&out));
        (backup_id(&out), format!("{}{}", stdout(&out), stderr(&out)))
    };
    let (full, _) = remote(&[]);
    cluster.sql("update t set v = 'remote' where id between 101 and 600");
    let mut expected = vec![state(&cluster)];
    let (incr, said) = backup(&pitr, &cluster, "incr");
    assert!(said.contains(&format!("incr backup on {full}: ")), "{said}");
    // Incrementals over the replication protocol: the changed pages of the stream, by the
    // archive's block maps and the WAL streamed from the server (a new table, an update, a
    // table cut by VACUUM)...
    cluster.sql("create table u as select g as id, repeat('u', 200) as pad from generate_series(1, 20000) g");
    cluster.sql("update t set v = 'again' where id % 97 = 0");
    cluster.sql("delete from t where id > 45000");
    cluster.sql("vacuum t");
    expected.push(state(&cluster));
    let (remote_incr, said) = remote(&["--type", "incr"]);
    assert!(
        said.contains(&format!("incr backup on {incr}: "))
            && said.contains("changes from block maps"),
        "{said}"
    );
    // ... and, with the WAL streamed rather than archived and the archive's maps gone, a
    // differential one on the full backup that compares the stream's pages.
    cluster.sql("update u set pad = 'v' where id < 300");
    cluster.sql("insert into t select g, 'back' from generate_series(45001, 46000) g");
    expected.push(state(&cluster));
    let pitr::storage::RepoLocation::Fs(root) = &repo.location else {
        unreachable!("a local repository")
    };
    std::fs::remove_dir_all(root.join("blockmap")).unwrap();
    let (remote_diff, said) = remote(&["--type", "diff", "--wal-method", "stream"]);
    assert!(
        said.contains(&format!("diff backup on {full}: ")) && said.contains("page LSN scan"),
        "{said}"
    );
    let out = pitr.run(["list", "--json"]);
    let listed = stdout(&out);
    for id in [&remote_incr, &remote_diff] {
        assert!(listed.contains(id.as_str()), "{listed}");
    }
    cluster.archive_current_segment(WAIT);
    cluster.stop();
    let restorer = Restorer {
        pitr: &pitr,
        dir: &dir,
        bin: &bin,
        tablespace: None,
    };
    for (id, expected) in [incr, remote_incr, remote_diff].iter().zip(&expected) {
        assert_eq!(&restorer.at_end_of(id, state), expected, "backup {id}");
    }
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
}
