//! `pitr backup` and `pitr list` on a real PostgreSQL 15 cluster.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::keys::{backup_object_key, manifest_key};
use crate::common::*;
use pitr::catalog::backup::BackupManifest;

async fn backup_holds_the_cluster(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    let tablespace_dir = dir.subdir("tablespace");
    cluster.sql(&format!(
        "create tablespace extra location '{}'",
        tablespace_dir.display()
    ));
    // Over 32 MiB: stored in parts.
    cluster.sql("create table logged as select g, md5(g::text) from generate_series(1, 600000) g");
    cluster.sql("create unlogged table scratch as select g from generate_series(1, 10000) g");
    cluster
        .sql("create table elsewhere tablespace extra as select g from generate_series(1, 1000) g");
    let paths: HashMap<String, String> = cluster
        .sql("select relname, pg_relation_filepath(oid) from pg_class where relname in ('logged', 'scratch', 'elsewhere')")
        .lines()
        .map(|l| {
            let (n, p) = l.split_once('|').unwrap();
            (n.to_owned(), p.to_owned())
        })
        .collect();

    let out = pitr.run(backup_args(&cluster));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let backup_said = String::from_utf8_lossy(&out.stdout).into_owned();

    let out = pitr.run(["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backups = listed["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{listed}");
    let entry = &backups[0];
    for field in ["id", "start_time", "stop_time", "start_lsn", "stop_lsn"] {
        assert!(entry[field].is_string(), "{field} in {entry}");
    }
    assert_eq!(entry["timeline"], 1);
    assert!(entry["size_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(entry["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(listed["wal"][0]["timeline"], 1);

    // The manifest: what belongs in a base backup, and nothing else.
    let storage = repo.storage().await;
    let id = entry["id"].as_str().unwrap();
    let manifest: BackupManifest =
        serde_json::from_slice(&metadata_json(&*storage, &manifest_key(id)).await).unwrap();
    let files: HashMap<&str, _> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    for present in [
        "global/pg_control",
        "PG_VERSION",
        "postgresql.conf",
        paths["logged"].as_str(),
    ] {
        assert!(files.contains_key(present), "{present} missing");
    }
    assert!(files.contains_key(format!("{}_init", paths["scratch"]).as_str()));
    assert!(
        !files.contains_key(paths["scratch"].as_str()),
        "unlogged data was copied"
    );
    assert!(!files.contains_key("postmaster.pid"));
    assert!(
        !files.keys().any(|p| p.starts_with("pg_wal/")),
        "WAL in the backup"
    );
    assert!(manifest.directories.iter().any(|d| d.path == "pg_wal"));
    assert!(
        files.contains_key(paths["elsewhere"].as_str()),
        "tablespace file missing"
    );
    assert_eq!(manifest.tablespaces.len(), 1);
    assert_eq!(
        manifest.tablespaces[0].path,
        tablespace_dir.display().to_string()
    );
    assert!(manifest.backup_label.contains("START WAL LOCATION"));
    assert!(
        manifest
            .tablespace_map
            .as_deref()
            .unwrap_or("")
            .contains(&tablespace_dir.display().to_string())
    );

    assert!(
        manifest
            .files
            .iter()
            .any(|f| f.path == paths["logged"] && f.file_offset > 0),
        "the large table was not split into parts"
    );
    // Every file's bytes are in its object at its offset, as its CRC-32C says.
    let mut objects: HashMap<u32, Vec<u8>> = HashMap::new();
    for file in &manifest.files {
        if let std::collections::hash_map::Entry::Vacant(slot) = objects.entry(file.object) {
            slot.insert(decoded_object(&*storage, &backup_object_key(id, file.object)).await);
        }
        let bytes =
            &objects[&file.object][file.offset as usize..(file.offset + file.size) as usize];
        assert_eq!(crc32c::crc32c(bytes), file.crc32c, "{}", file.path);
    }
    assert!(
        objects.len() < manifest.files.len() / 10,
        "small files were not bundled"
    );
    let version = &objects[&files["PG_VERSION"].object];
    let at = files["PG_VERSION"].offset as usize;
    assert_eq!(&version[at..at + 3], b"15\n");

    // Even with --force, restore never touches a directory where a postmaster runs.
    let out = pitr.run([
        "restore",
        "--force",
        "--pgdata",
        &cluster.data.display().to_string(),
    ]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(stderr(&out).contains("postmaster"), "{}", stderr(&out));
    assert_eq!(cluster.sql("select count(*) from logged"), "600000");

    // backup and restore count the same files: a file stored in parts counts once.
    let paths: std::collections::BTreeSet<&str> =
        manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert!(paths.len() < manifest.files.len());
    assert!(
        backup_said.contains(&format!("backup {id} complete: {} files, ", paths.len())),
        "{backup_said}"
    );
    let restored = dir.path().join("restored");
    let mapped = dir.subdir("tablespace-restored");
    let out = pitr.run([
        "restore",
        "--pgdata",
        restored.to_str().unwrap(),
        "--tablespace-map",
        &format!("{}={}", manifest.tablespaces[0].oid, mapped.display()),
        "--no-sync",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restore_said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        restore_said.contains(&format!(
            "restored backup {id} into {}: {} files, ",
            restored.display(),
            paths.len()
        )),
        "{restore_said}"
    );
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_to_a_local_repository() {
    backup_holds_the_cluster("backup-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_to_s3() {
    let server = S3Server::start("backup").await;
    backup_holds_the_cluster("backup-s3", |_| Repo::s3(&server, "backup")).await;
}

/// kill -9 during the copy: no backup is listed, and the next one succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_backup_is_never_listed() {
    let dir = TestDir::new("backup-kill");
    let repo = Repo::local(&dir);
    let (pitr, mut cluster) = archiving_cluster(&dir, &repo, "");
    cluster.sql("create table big as select g, md5(g::text) || md5((g+1)::text) from generate_series(1, 1000000) g");

    let mut child = pitr.command(backup_args(&cluster)).spawn().unwrap();
    let data_dir = dir.path().join("repo/backup");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until objects are being stored, then kill.
    loop {
        let copying = std::fs::read_dir(&data_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|b| {
                b.path()
                    .join("data")
                    .read_dir()
                    .is_ok_and(|mut d| d.next().is_some())
            });
        if copying {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "backup never started copying");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("pkill")
        .args(["-9", "-f", &format!("{} --repo", pitr.bin.display())])
        .status();
    let _ = child.kill();
    child.wait().unwrap();

    let out = pitr.run(["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["backups"].as_array().unwrap().len(), 0, "{listed}");

    let out = pitr.run(backup_args(&cluster));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = pitr.run(["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "{listed}");
    cluster.stop();
}

/// A backup host that cannot read the data directory initialises its repository from the
/// server alone: the identity is the one the data directory gives, and archiving and backups
/// work on it.
#[tokio::test(flavor = "multi_thread")]
async fn init_asks_the_server_when_given_only_a_connection() {
    let dir = TestDir::new("init-remote");
    let repo = Repo::local(&dir);
    let pitr = Pitr::install(&dir, &repo);
    let mut cluster = PgCluster::initdb(&dir, "pg", &[]);
    cluster.configure(&format!(
        "archive_mode = on\narchive_command = '{}'\n",
        pitr.archive_command()
    ));
    cluster.start();
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.socket_dir.display(),
        cluster.port
    );

    // Neither a data directory nor a server: refused, saying what to give.
    let out = pitr
        .command(["init"])
        .env_remove("PGDATA")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--pgdata DIR") && stderr(&out).contains("--dbname CONNINFO"),
        "{}",
        stderr(&out)
    );

    let out = pitr
        .command(["init", "--dbname", &conninfo])
        .env_remove("PGDATA")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pitr::storage::RepoLocation::Fs(root) = &repo.location else {
        unreachable!("a local repository")
    };
    assert_identity_recorded(root, &cluster.data);
    // The data directory names the same cluster.
    let out = pitr
        .command(["init", "--pgdata"])
        .arg(&cluster.data)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already initialised"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Archiving and a backup go into it.
    cluster.archive_current_segment(Duration::from_secs(60));
    let id = pitr.backup(&cluster);
    let list = pitr.run(["list", "--json"]);
    assert_eq!(code(&list), 0, "{}", stderr(&list));
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed["backups"][0]["id"], id.as_str(), "{listed:#}");
}
