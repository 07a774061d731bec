//! Confinement and modes on real parts: a manifest tampered with in the repository (and
//! re-sealed, so that its checksum holds) cannot make restore write outside its target, the
//! repository stays private whatever the umask, and restored files keep PostgreSQL's modes.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::keys::manifest_key;
use crate::common::*;
use pitr::catalog::backup::{BackupDirectory, BackupManifest, Tablespace};
use pitr::storage::{PutMode, PutPayload, RepoLocation, Storage, read_all};
use sha2::{Digest, Sha256};

/// `command` run with `umask` (pitr directly as the postgres user, no shell in between).
fn with_umask(mut command: Command, umask: libc::mode_t) -> Output {
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        });
    }
    command.output().unwrap()
}

/// The manifest re-sealed as docs/repository-format.md says: `checksum` is "sha256:" and the
/// SHA-256 of the compact JSON of every other field, in the manifest's own order.
fn reseal(manifest: &BackupManifest) -> Vec<u8> {
    let compact = serde_json::to_vec(manifest).unwrap();
    let mut value = serde_json::to_value(manifest).unwrap();
    value["checksum"] = format!("sha256:{}", hex::encode(Sha256::digest(&compact))).into();
    serde_json::to_vec_pretty(&value).unwrap()
}

/// Replaces the manifest of `id` in the local repository at `root`, as its owner would.
async fn put_manifest(storage: &dyn Storage, root: &Path, id: &str, bytes: Vec<u8>) {
    storage
        .put(
            &manifest_key(id),
            PutPayload::from_bytes(bytes),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    // Written 0600 by the tests' user: give it to the user that runs pitr.
    chown_to_postgres(&root.join(manifest_key(id)));
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Every entry under `root` (not `root` itself), with its mode; symbolic links are reported
/// as such (mode 0o120000).
fn modes_under(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                found.push((path, 0o120000));
                continue;
            }
            if meta.is_dir() {
                pending.push(path.clone());
            }
            found.push((path, meta.permissions().mode() & 0o7777));
        }
    }
    found
}

/// Files restore writes itself, private whatever the cluster's modes.
const WRITTEN_BY_RESTORE: [&str; 6] = [
    "backup_label",
    "backup_manifest",
    "recovery.signal",
    "postgresql.auto.conf",
    "tablespace_map",
    "pg_wal/.pitr-replay-plan.json",
];

/// Every file of `data` has `file_mode` (those restore writes itself 0600) and every directory
/// `dir_mode`, `data` included.
fn assert_restored_modes(data: &Path, file_mode: u32, dir_mode: u32) {
    assert_eq!(mode(data), dir_mode, "{}", data.display());
    let entries = modes_under(data);
    assert!(entries.len() > 100, "{entries:?}");
    for (path, found) in entries {
        let name = path.strip_prefix(data).unwrap().to_str().unwrap();
        let want = if path.is_dir() {
            dir_mode
        } else if WRITTEN_BY_RESTORE.contains(&name) {
            0o600
        } else {
            file_mode
        };
        assert_eq!(found, want, "{name}: {found:o}, not {want:o}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_is_confined_and_modes_stay_private() {
    let dir = TestDir::new("confine");
    let repo = Repo::local(&dir);
    let storage = repo.storage().await;
    let pitr = Pitr::install(&dir, &repo);
    let mut cluster = PgCluster::initdb(&dir, "pg", &[]);

    // init, archive-push (under the server, which sets its own umask: set it back) and backup
    // all under a umask that would let anyone read.
    let data_arg = cluster.data.display().to_string();
    let out = with_umask(pitr.direct(["init", "--pgdata", &data_arg]), 0o000);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    cluster.configure(&format!(
        "archive_mode = on\narchive_command = 'umask 000; {}'",
        pitr.archive_command()
    ));
    cluster.start();
    cluster.sql("create table t as select g from generate_series(1, 1000) g");
    let out = with_umask(pitr.direct(backup_args(&cluster)), 0o000);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = backup_id(&out);
    let out = with_umask(pitr.direct(["pin", &id]), 0o022);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();

    // The repository: every file 0600, every directory 0700 (the root is the test's).
    let RepoLocation::Fs(root) = &repo.location else {
        unreachable!("a local repository")
    };
    let stored = modes_under(root);
    for kind in [
        "/.tmp",
        "/wal/",
        "/backup/",
        "/pin.json",
        "/manifest.json",
        "/lock",
    ] {
        assert!(
            stored
                .iter()
                .any(|(p, _)| p.display().to_string().contains(kind)),
            "nothing like {kind} in {stored:?}"
        );
    }
    for (path, found) in &stored {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*found, want, "{}: {found:o}", path.display());
    }
    // archive-push's spool (pg_wal/.pitr-spool) too.
    let spool = cluster.data.join("pg_wal/.pitr-spool");
    assert!(spool.is_dir(), "archive-push left no spool");
    assert_eq!(mode(&spool), 0o700);
    for (path, found) in modes_under(&spool) {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(found, want, "{}: {found:o}", path.display());
    }

    // Tampered manifests, re-sealed: refused before anything is written.
    let original = read_all(&*storage, &manifest_key(&id)).await.unwrap();
    let manifest: BackupManifest = serde_json::from_slice(&original).unwrap();
    // Sealed as pitr seals: the test's rule is the repository's.
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&reseal(&manifest)).unwrap(),
        serde_json::from_slice::<serde_json::Value>(&original).unwrap()
    );
    let restore_root = dir.subdir("restore");
    let target = restore_root.join("data");
    let escaped = restore_root.join("escaped");
    let file_index =
        |m: &BackupManifest, path: &str| m.files.iter().position(|f| f.path == path).unwrap();
    let escaped_text = escaped.display().to_string();
    type Tamper = Box<dyn Fn(&mut BackupManifest)>;
    // What, the path the refusal must name, the exit code, and the tampering.
    let cases: Vec<(&str, String, i32, Tamper)> = vec![
        (
            "a path through ..",
            "../escaped/PG_VERSION".into(),
            5,
            Box::new(move |m| {
                let i = file_index(m, "PG_VERSION");
                m.files[i].path = "../escaped/PG_VERSION".into();
            }),
        ),
        (
            "an absolute path",
            format!("{escaped_text}/PG_VERSION"),
            5,
            Box::new({
                let path = format!("{escaped_text}/PG_VERSION");
                move |m| {
                    let i = file_index(m, "PG_VERSION");
                    m.files[i].path = path.clone();
                }
            }),
        ),
        (
            "a link to a tablespace the manifest does not declare",
            "pg_tblspc/99999".into(),
            5,
            Box::new(|m| {
                m.directories.push(BackupDirectory {
                    path: "pg_tblspc/99999".into(),
                    mode: 0o700,
                })
            }),
        ),
        (
            "a symbolic link by its mode",
            "pg_wal".into(),
            5,
            Box::new(|m| {
                let wal = m.directories.iter_mut().find(|d| d.path == "pg_wal");
                wal.unwrap().mode = 0o120777;
            }),
        ),
        (
            "a tablespace link to a directory around the target",
            restore_root.display().to_string(),
            7,
            Box::new({
                let around = restore_root.display().to_string();
                move |m| {
                    m.tablespaces.push(Tablespace {
                        oid: 99999,
                        path: around.clone(),
                    });
                    m.directories.push(BackupDirectory {
                        path: "pg_tblspc/99999".into(),
                        mode: 0o700,
                    });
                }
            }),
        ),
    ];
    let target_text = target.display().to_string();
    for (what, path, exit, tamper) in cases {
        let mut tampered = manifest.clone();
        tamper(&mut tampered);
        put_manifest(&*storage, root, &id, reseal(&tampered)).await;
        let out = pitr.run(["restore", "--backup", &id, "--pgdata", &target_text]);
        let said = stderr(&out);
        assert_eq!(code(&out), exit, "{what}: {said}");
        assert_eq!(said.trim().lines().count(), 1, "{what}: one line: {said}");
        assert!(
            said.contains(&format!("'{path}'")) || said.contains(&path),
            "{what}: {said}"
        );
        if exit == 5 {
            assert!(said.contains("unsafe (tampered with?)"), "{what}: {said}");
        }
        assert!(!escaped.exists(), "{what}: written outside the target");
        assert!(!target.exists(), "{what}: the target was created");
        assert_eq!(
            std::fs::read_dir(&restore_root).unwrap().count(),
            0,
            "{what}"
        );
    }

    // Tampered modes restore as PostgreSQL's: 0600 files, 0700 directories.
    let mut tampered = manifest.clone();
    let i = file_index(&tampered, "PG_VERSION");
    tampered.files[i].mode = 0o4755;
    let base = tampered.directories.iter_mut().find(|d| d.path == "base");
    base.unwrap().mode = 0o3777;
    put_manifest(&*storage, root, &id, reseal(&tampered)).await;
    let out = pitr.run(["restore", "--backup", &id, "--pgdata", &target_text]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_restored_modes(&target, 0o600, 0o700);
    assert_verifybackup(&target);
    assert!(!escaped.exists());
    put_manifest(&*storage, root, &id, original).await;

    // A cluster initialised with --allow-group-access restores with 0640 and 0750, and starts.
    let group_dir = TestDir::new("confine-group");
    let group_repo = Repo::local(&group_dir);
    let (pitr, mut cluster) =
        archiving_cluster_with(&group_dir, &group_repo, &["--allow-group-access"], "");
    assert_eq!(mode(&cluster.data), 0o750);
    cluster.sql("create table t as select g from generate_series(1, 1000) g");
    pitr.backup(&cluster);
    cluster.sql("insert into t values (1001)");
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();
    let data = group_dir.path().join("restored");
    let out = pitr.run(["restore", "--pgdata", &data.display().to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_restored_modes(&data, 0o640, 0o750);
    let mut restored = PgCluster::restored(&group_dir, "restored-pg", data);
    restored.start();
    restored.wait_promoted(Duration::from_secs(60));
    assert_eq!(restored.sql("select count(*) from t"), "1001");
}
