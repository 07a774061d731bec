//! Backups over the replication protocol (issue 25): a repository initialised from the server
//! alone, `pitr backup --method replication` over TCP with scram-sha-256 (and TLS verify-full
//! on 15) on every supported version, with a tablespace and a file stored in parts, restored
//! to a time with exactly the rows of that moment; a backup from a standby; a connection cut
//! mid-backup leaves nothing listed and the next backup succeeds.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::*;

const PASSWORD: &str = "Remote-pw-71c3a9";
const WAIT: Duration = Duration::from_secs(60);
pub(crate) const STATE: &str = "select count(*) || ':' || coalesce(md5(string_agg(id || ':' || v, ',' \
                     order by id)), '') from t";
const FAR_STATE: &str = "select count(*) || ':' || sum(hashtext(v)) from far";

fn hba(tls: bool) -> String {
    let host = if tls { "hostssl" } else { "host" };
    format!(
        "local all all trust\nlocal replication all trust\n\
         {host} replication postgres 127.0.0.1/32 scram-sha-256\n\
         {host} all postgres 127.0.0.1/32 scram-sha-256\n"
    )
}

/// A server of `bin` listening on 127.0.0.1 with scram-sha-256 (and TLS, given
/// certificates), archiving into `pitr`'s repository; started.
fn tcp_cluster(
    dir: &TestDir,
    bin: &Path,
    pitr: &Pitr,
    tls: Option<&crate::tls::Certificates>,
) -> PgCluster {
    let mut cluster = PgCluster::initdb_with(dir, "pg", bin, &[]);
    cluster.configure(&format!(
        "listen_addresses = '127.0.0.1'\npassword_encryption = 'scram-sha-256'\n\
         archive_mode = on\narchive_command = '{}'\nwal_keep_size = '128MB'\n\
         checkpoint_completion_target = 0.05\n",
        pitr.archive_command()
    ));
    if let Some(certs) = tls {
        cluster.configure(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            certs.server_cert.display(),
            certs.server_key.display()
        ));
    }
    std::fs::write(cluster.data.join("pg_hba.conf"), hba(tls.is_some())).unwrap();
    cluster.start_on_tcp(&[]);
    cluster.sql(&format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"));
    cluster
}

/// `pitr ARGS…` with the password in the environment, never on the command line.
fn run_with_password(pitr: &Pitr, args: &[&str]) -> Output {
    pitr.command(args)
        .env("PGPASSWORD", PASSWORD)
        .env_remove("PGDATA")
        .output()
        .unwrap()
}

/// A phase of writes; returns the time after it committed and the table's state then.
pub(crate) fn phase(cluster: &PgCluster, n: u32) -> (String, String) {
    cluster.sql(&format!(
        "insert into t select g, 'phase{n}-' || md5(g::text) from generate_series({}, {}) g",
        n * 1000,
        n * 1000 + 999
    ));
    cluster.sql(&format!("delete from t where id % 11 = {n}"));
    let state = cluster.sql(STATE);
    let time = cluster
        .sql("select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
    std::thread::sleep(Duration::from_millis(1100));
    (time, state)
}

/// The one line of `pitr backup`'s error among what it printed on stderr (warnings of its
/// SQL session may precede it).
fn the_error_line(err: &str) -> &str {
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("pitr backup:"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0]
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Restores backup `id` to its end, promoted, with the servers in `bin`: `query` answers
/// `expected`.
fn restore_immediate(
    pitr: &Pitr,
    dir: &TestDir,
    bin: &Path,
    id: &str,
    (query, expected): (&str, &str),
) {
    let data = dir.path().join("restored");
    let out = pitr.run([
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--target",
        "immediate",
        "--target-action",
        "promote",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("restored backup {id} ")));
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(dir, "sock-restored", data).with_bin(bin);
    restored.start_with_env(&pitr.env);
    restored.wait_promoted(WAIT);
    assert_eq!(restored.sql(query), expected);
    restored.stop();
}

async fn manifest_of(repo: &Repo, id: &str) -> pitr::catalog::backup::BackupManifest {
    let storage = repo.storage().await;
    serde_json::from_slice(&metadata_json(&*storage, &keys::manifest_key(id)).await).unwrap()
}

/// On the server of `bin`: init and a backup over TCP alone (no access to the data
/// directory asked for), a tablespace holding a file stored in parts, then a restore to a
/// time after the backup with exactly that moment's rows, pg_verifybackup clean.
async fn remote_backup_restores_to_a_time(major: u32, bin: &Path, tls: bool) {
    let dir = TestDir::new(&format!("remote-backup-{major}"));
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let certs = tls.then(|| crate::tls::make_certificates(&dir.subdir("certs")));
    let mut cluster = tcp_cluster(&dir, bin, &pitr, certs.as_ref());
    let conninfo = match &certs {
        Some(certs) => format!(
            "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full \
             sslrootcert={}",
            cluster.port,
            certs.ca.display()
        ),
        None => format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
            cluster.port
        ),
    };
    let out = run_with_password(&pitr, &["init", "--dbname", &conninfo]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // What an init over a replication connection records for this version.
    assert_eq!(
        pitr::pg::version::PgVersion::of_major(major)
            .unwrap()
            .catalog_version,
        pitr::commands::init::read_cluster_identity(&cluster.data)
            .unwrap()
            .catalog_version
    );
    if tls {
        // A role without REPLICATION: one line naming the grant, nothing recorded.
        cluster.sql(&format!("create role norepl login password '{PASSWORD}'"));
        std::fs::write(
            cluster.data.join("pg_hba.conf"),
            format!(
                "{}hostssl replication norepl 127.0.0.1/32 scram-sha-256\n",
                hba(true)
            ),
        )
        .unwrap();
        cluster.sql("select pg_reload_conf()");
        let norepl = conninfo.replace("user=postgres", "user=norepl");
        let out = run_with_password(
            &pitr,
            &["backup", "--method", "replication", "--dbname", &norepl],
        );
        assert_eq!(code(&out), 9, "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            the_error_line(&err).contains("ALTER ROLE norepl REPLICATION"),
            "{err}"
        );
    }

    let tablespace = dir.subdir("tablespace");
    chown_to_postgres(&tablespace);
    cluster.sql(&format!(
        "create tablespace far location '{}'",
        tablespace.display()
    ));
    // Over 32 MiB: stored in parts.
    cluster.sql(
        "create table far tablespace far as select g as id, md5(g::text) as v \
         from generate_series(1, 600000) g",
    );
    cluster.sql("create table t (id int primary key, v text)");
    phase(&cluster, 1);
    let far = cluster.sql(FAR_STATE);

    // A spread checkpoint where the grammar spells it `CHECKPOINT 'spread'` (16+; 15 and the
    // positional 13/14 take the fast one), paced to 5% of checkpoint_timeout by the
    // cluster's settings: spread over minutes on a busy machine otherwise.
    let mut args = vec!["backup", "--method", "replication", "--dbname", &conninfo];
    if major >= 16 {
        args.push("--spread");
    }
    // Compression on the wire: Debian's 15 has lz4; 13/14 cannot compress a base backup,
    // and the 16-18 servers of the matrix are built without lz4: one line each.
    let lz4 = ["--network-compression", "lz4"];
    if major == 15 {
        args.extend(lz4);
        args.push("-v");
    } else {
        let out = run_with_password(&pitr, &[&args[..], &lz4[..]].concat());
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        let err = stderr(&out);
        let expected = match major {
            13 | 14 => "needs a server of PostgreSQL 15 or later",
            _ => "the server cannot compress the backup (invalid compression specification",
        };
        let line = the_error_line(&err);
        assert!(
            line.contains(expected) && line.contains("--network-compression none"),
            "{err}"
        );
    }
    let out = run_with_password(&pitr, &args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The server sent the archives LZ4-compressed, and they arrived whole (restored below).
    assert_eq!(
        stderr(&out).contains("the server compresses the backup with lz4"),
        major == 15,
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("over the replication protocol"),
        "{}",
        stdout(&out)
    );
    let id = backup_id(&out);
    let (time, state) = phase(&cluster, 2);
    phase(&cluster, 3);
    cluster.archive_current_segment(WAIT);
    let oid = cluster.sql("select oid from pg_tablespace where spcname = 'far'");
    cluster.stop();

    {
        let manifest = manifest_of(&repo, &id).await;
        assert_eq!(
            manifest.method,
            pitr::catalog::backup::BackupMethod::Replication
        );
        assert!(manifest.server_manifest.is_some());
        assert_eq!(
            manifest.tablespaces,
            [pitr::catalog::backup::Tablespace {
                oid: oid.parse().unwrap(),
                path: tablespace.display().to_string()
            }]
        );
        // The server's tablespace_map, as pg_backup_stop gives a local backup.
        assert_eq!(
            manifest.tablespace_map.as_deref(),
            Some(format!("{oid} {}\n", tablespace.display()).as_str())
        );
        let parts = manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with(&format!("pg_tblspc/{oid}/")) && f.file_offset > 0)
            .count();
        assert!(parts >= 1, "no file of the tablespace in parts");
    }
    let list = pitr.run(["list"]);
    assert!(
        stdout(&list).contains(&format!("backup {id} "))
            && stdout(&list).contains("over replication"),
        "{}",
        stdout(&list)
    );

    let data = dir.path().join("restored");
    let elsewhere = dir.subdir("tablespace-restored");
    let map = format!("{oid}={}", elsewhere.display());
    let out = pitr.run([
        "restore",
        "--pgdata",
        data.to_str().unwrap(),
        "--target-time",
        &time,
        "--tablespace-map",
        &map,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("restored backup {id} ")),
        "{}",
        stdout(&out)
    );
    assert_verifybackup(&data);
    chown_to_postgres(&data);
    chown_to_postgres(&elsewhere);
    let mut restored = PgCluster::restored(&dir, "sock-restored", data).with_bin(bin);
    restored.start_with_env(&pitr.env);
    restored.wait_paused(WAIT);
    assert_eq!(restored.sql(STATE), state);
    assert_eq!(restored.sql(FAR_STATE), far);
    restored.stop();
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_backup_on_15_over_tls_verify_full() {
    remote_backup_restores_to_a_time(15, Path::new(PG_BIN), true).await;
}

macro_rules! on_version {
    ($name:ident, $major:literal) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            let Some(bin) = pg_bin_of($major) else { return };
            remote_backup_restores_to_a_time($major, &bin, false).await;
        }
    };
}

on_version!(remote_backup_on_13, 13);
on_version!(remote_backup_on_14, 14);
on_version!(remote_backup_on_16, 16);
on_version!(remote_backup_on_17, 17);
on_version!(remote_backup_on_18, 18);

/// A backup over the replication protocol from a streaming standby restores exactly.
#[tokio::test(flavor = "multi_thread")]
async fn remote_backup_from_a_standby() {
    let dir = TestDir::new("remote-backup-standby");
    let repo = Repo::local(&dir);
    let (pitr, mut primary) = archiving_cluster(&dir, &repo, "wal_keep_size = '128MB'");
    primary.sql("create table t (id int primary key, v text)");
    primary.sql("create table tick (at timestamptz default now())");
    let (_, at_backup) = phase(&primary, 1);
    let mut standby = streaming_standby(&dir, &primary);

    // The stop segment reaches the repository from the primary's archiver.
    let mut backup = pitr.command([
        "backup",
        "--method",
        "replication",
        "--dbname",
        &standby.conninfo("postgres"),
    ]);
    backup.env_remove("PGDATA");
    let out = backup_while_the_primary_switches(backup, &primary);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = backup_id(&out);
    {
        let manifest = manifest_of(&repo, &id).await;
        assert!(
            manifest.backup_label.contains("BACKUP FROM: standby"),
            "{}",
            manifest.backup_label
        );
    }
    primary.archive_current_segment(WAIT);
    standby.stop();
    primary.stop();

    restore_immediate(&pitr, &dir, Path::new(PG_BIN), &id, (STATE, &at_backup));
}

/// The server goes away in the middle of a backup: the backup fails with one line, nothing
/// of it is listed or left in the repository, and the next backup succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_connection_leaves_nothing_listed() {
    let dir = TestDir::new("remote-backup-cut");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    // About 40 MB at 1 MB/s: the backup is still streaming when the server stops.
    cluster.sql(
        "create table big as select g as id, md5(g::text) as v from generate_series(1, 500000) g",
    );
    let conninfo = cluster.conninfo("postgres");
    let mut child = pitr
        .command([
            "backup",
            "--method",
            "replication",
            "--max-rate",
            "1M",
            "--dbname",
            &conninfo,
        ])
        .env_remove("PGDATA")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pitr::storage::RepoLocation::Fs(root) = &repo.location else {
        unreachable!("a local repository")
    };
    // Cut once the backup has stored objects.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stored = std::fs::read_dir(root.join("backup"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| {
                entry
                    .path()
                    .join("data")
                    .read_dir()
                    .is_ok_and(|mut d| d.next().is_some())
            });
        if stored {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backup stored nothing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run_ok(
        as_postgres(cluster.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&cluster.data)
            .arg("stop"),
    );
    let out = child.wait_with_output().unwrap();
    // The server's side failed: 9, and one line says what happened and what to do.
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    let err = stderr(&out);
    let error = the_error_line(&err);
    assert!(
        error.contains("closed the replication connection")
            && error.contains("run pitr backup again"),
        "{err}"
    );
    let list = pitr.run(["list"]);
    assert!(stdout(&list).contains("no backups"), "{}", stdout(&list));
    let left: Vec<PathBuf> = std::fs::read_dir(root.join("backup"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.join("data")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some())
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    cluster.start();
    let out = pitr
        .command([
            "backup",
            "-q",
            "--method",
            "replication",
            "--dbname",
            &conninfo,
        ])
        .env_remove("PGDATA")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // -q: only errors, no progress lines either.
    assert_eq!(stderr(&out), "");
    let id = backup_id(&out);
    let list = pitr.run(["list"]);
    assert!(stdout(&list).contains(&format!("backup {id} ")));
    // The backup after the cut restores whole.
    let big = "select count(*) || ':' || md5(string_agg(v, ',' order by id)) from big";
    let expected = cluster.sql(big);
    cluster.sql("select pg_switch_wal()");
    cluster.stop();
    restore_immediate(&pitr, &dir, Path::new(PG_BIN), &id, (big, &expected));
}

/// A server that does not archive (archive_mode off): the backup streams its WAL over a
/// second connection with a temporary slot into the repository, and restores on its own.
async fn streamed_wal_makes_the_backup_self_contained(
    major: u32,
    bin: &Path,
    repo: impl FnOnce(&TestDir) -> Repo,
) {
    let dir = TestDir::new(&format!("remote-backup-stream-{major}"));
    let repo = repo(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let mut cluster = PgCluster::initdb_with(&dir, "pg", bin, &[]);
    cluster.configure("max_wal_senders = 4\n");
    cluster.start();
    // A role that may open replication connections only: init and backup without an SQL
    // session; the backup, without --method, goes over the replication protocol and
    // streams its WAL.
    cluster.sql("create role backup_only login replication");
    std::fs::write(
        cluster.data.join("pg_hba.conf"),
        "local all postgres trust\nlocal replication all trust\n",
    )
    .unwrap();
    cluster.sql("select pg_reload_conf()");
    let backup_only = cluster
        .conninfo("postgres")
        .replace("user=postgres", "user=backup_only");
    let out = pitr
        .command(["init", "--dbname", &backup_only])
        .env_remove("PGDATA")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The identity the data directory itself gives.
    if let pitr::storage::RepoLocation::Fs(root) = &repo.location {
        assert_identity_recorded(root, &cluster.data);
    }
    cluster.sql("create table t (id int primary key, v text)");
    let (_, at_backup) = phase(&cluster, 1);
    let out = pitr
        .command(["backup", "--dbname", &backup_only])
        .env_remove("PGDATA")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = backup_id(&out);
    // Nothing archives: the WAL in the repository is the backup's stream.
    let list = pitr.run(["list"]);
    assert!(
        stdout(&list).contains("wal timeline 1:"),
        "{}",
        stdout(&list)
    );
    // The temporary slot went with the backup's connection.
    assert_eq!(
        cluster.sql("select count(*) from pg_replication_slots"),
        "0"
    );
    phase(&cluster, 2);
    cluster.stop();

    restore_immediate(&pitr, &dir, bin, &id, (STATE, &at_backup));
    let out = pitr.run(["verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    if major == 15 {
        // A drill restores and checks it like any other backup.
        let scratch = dir.subdir("scratch");
        chown_to_postgres(&scratch);
        let out = pitr.run(["drill", "--scratch-dir", scratch.to_str().unwrap()]);
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_wal_on_15() {
    streamed_wal_makes_the_backup_self_contained(15, Path::new(PG_BIN), Repo::local).await;
}

/// The same into an S3 repository 20 ms away: objects upload while the next ones arrive.
#[tokio::test(flavor = "multi_thread")]
async fn streamed_wal_into_s3() {
    let server = S3Server::start_with_latency("remote-backup", Duration::from_millis(20)).await;
    streamed_wal_makes_the_backup_self_contained(15, Path::new(PG_BIN), |_| {
        Repo::s3(&server, "remote-backup")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_wal_on_18() {
    let Some(bin) = pg_bin_of(18) else { return };
    streamed_wal_makes_the_backup_self_contained(18, &bin, Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_wal_on_13() {
    let Some(bin) = pg_bin_of(13) else { return };
    streamed_wal_makes_the_backup_self_contained(13, &bin, Repo::local).await;
}
