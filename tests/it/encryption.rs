//! Encrypted repositories on real parts: nothing stored in clear, keys that rotate without
//! rewriting data, tampering and swapping caught, wrong and missing keys named as such.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use pitr::storage::{PutMode, PutPayload, Storage, read_all};

const TABLE_STATE: &str = "select count(*) || ':' || md5(string_agg(id || ':' || v, ',' order by id)) \
                           from marked";

/// A passphrase file readable by the postgres user only.
fn passphrase_file(dir: &TestDir, name: &str, passphrase: &str) -> PathBuf {
    let path = dir.write(name, passphrase);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// `pitr` with its key settings replaced by `key` (a settings variable and its value).
fn with_key(pitr: &Pitr, key: &[(&str, &Path)]) -> Pitr {
    let mut env: Vec<(String, String)> = pitr
        .env
        .iter()
        .filter(|(k, _)| !k.starts_with("PITR_PASSPHRASE") && k != "PITR_KEY_FILE")
        .cloned()
        .collect();
    env.extend(
        key.iter()
            .map(|(k, v)| (k.to_string(), v.display().to_string())),
    );
    Pitr {
        bin: pitr.bin.clone(),
        repo: pitr.repo.clone(),
        env,
    }
}

/// pitr, and a started cluster archiving into an encrypted repository opened by `passphrase`.
fn encrypted_cluster(dir: &TestDir, repo: &Repo, passphrase: &Path) -> (Pitr, PgCluster) {
    let pitr = with_key(
        &Pitr::install(dir, repo),
        &[("PITR_PASSPHRASE_FILE", passphrase)],
    );
    let mut cluster = PgCluster::initdb(dir, "pg", &[]);
    let out = pitr
        .command(["init", "--encrypt", "--pgdata"])
        .arg(&cluster.data)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("encrypted (xchacha20-poly1305)"),
        "{stdout}"
    );
    cluster.configure(&format!(
        "archive_mode = on\narchive_command = '{}'\n",
        pitr.archive_command()
    ));
    cluster.start();
    (pitr, cluster)
}

/// Every stored object, by key.
async fn objects(storage: &dyn Storage) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for meta in storage.list("").await.unwrap() {
        let bytes = read_all(storage, &meta.key).await.unwrap();
        all.insert(meta.key, bytes);
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn now_utc(cluster: &PgCluster) -> String {
    cluster.sql("select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
}

fn verify_json(pitr: &Pitr, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = pitr.run([&["verify", "--json"][..], extra].concat());
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    });
    (code(&out), report)
}

/// Archive, back up, restore and verify on an encrypted repository: a marker written into a
/// table, a restore point's name and a backup annotation is in no stored byte, and the
/// restore brings the table back.
async fn nothing_stored_in_clear(name: &str, repo: impl FnOnce(&TestDir) -> Repo) {
    let dir = TestDir::new(name);
    let repo = repo(&dir);
    let passphrase = passphrase_file(&dir, "passphrase", "correct horse battery staple");
    let (pitr, mut cluster) = encrypted_cluster(&dir, &repo, &passphrase);
    let marker = format!("PITR-MARKER-{}", std::process::id());
    cluster.sql(&format!(
        "create table marked (id int primary key, v text);
         insert into marked select g, '{marker}-' || g from generate_series(1, 3000) g"
    ));
    let mut args = backup_args(&cluster);
    args.extend(["--annotate".into(), format!("note={marker}")]);
    let out = pitr.run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    cluster.sql(&format!(
        "insert into marked select g, '{marker}-late-' || g from generate_series(3001, 4000) g"
    ));
    let state = cluster.sql(TABLE_STATE);
    cluster.sql(&format!("select pg_create_restore_point('{marker}')"));
    std::thread::sleep(Duration::from_millis(1100));
    let target = now_utc(&cluster);
    cluster.sql("insert into marked values (0, 'after the target')");
    let last = cluster.archive_current_segment(Duration::from_secs(60));
    // The scanner finds the marker where it is in clear: the cluster's own WAL (read before
    // the shutdown checkpoint may recycle the segment).
    let wal = std::fs::read(cluster.wal_path(&last)).unwrap();
    assert!(
        contains(&wal, marker.as_bytes()),
        "the marker is not in {last}"
    );
    cluster.stop();

    let storage = repo.storage().await;
    let stored = objects(&*storage).await;
    assert!(
        stored.keys().any(|k| k.starts_with("backup/")),
        "{:?}",
        stored.keys()
    );
    assert!(stored.len() > 6, "{:?}", stored.keys());
    for (key, bytes) in &stored {
        assert!(
            !contains(bytes, marker.as_bytes()),
            "{key} holds the marker in clear"
        );
    }

    // Without the key, verify refuses rather than pass on stored checksums alone (a false
    // green for monitoring); --no-key asks for that checksum-only verify, which `check` does
    // not count as a verify.
    let location = match pitr.repo.strip_prefix('/') {
        Some(_) => format!("file://{}", pitr.repo),
        None => pitr.repo.clone(),
    };
    let keyless = with_key(&pitr, &[]);
    let out = keyless.run(["verify"]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "pitr verify: repository {location} is encrypted and no key was given: verify needs \
             it to authenticate objects and check WAL and backups; give the key \
             (passphrase_file, PITR_PASSPHRASE, key_file or kms_key_id), or pass --no-key for a \
             check of the stored checksums only\n"
        )
    );
    let out = keyless.run(["verify", "--no-key"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(": intact\nnote: the repository is encrypted and no key was given"),
        "{stdout}"
    );
    let out = pitr.run(["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "WARNING verify_age: no verify recorded: run pitr verify regularly, or set \
             check_verify_age = \"off\"\n"
        ),
        "{stdout}{}",
        stderr(&out)
    );

    // Listed and verified with the key: every object authenticated.
    let (status, report) = verify_json(&pitr, &[]);
    assert_eq!(status, 0, "{report}");
    assert_eq!(report["authenticated"], true, "{report}");
    let out = pitr.run(["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = pitr.run(["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK verify_age: last successful verify "),
        "{stdout}"
    );
    // Without it: the stored checksums only, and reads are refused as "no key".
    let out = keyless.run(["verify", "--no-key", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = code(&out);
    assert_eq!(status, 0, "{report}");
    assert_eq!(report["authenticated"], false, "{report}");
    let sealed = objects(&*storage)
        .await
        .into_keys()
        .filter(|k| {
            !["repository.json", "keys.json", "lock.json"].contains(&k.as_str())
                && !k.ends_with("/claim.json")
        })
        .count();
    assert!(
        report["objects"].as_u64().unwrap() == sealed as u64,
        "{report}"
    );
    let out = keyless.run(["list"]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no key was given"),
        "{}",
        stderr(&out)
    );

    // Restored to the target, through archive-get reading sealed WAL.
    let data = dir.path().join("restored");
    let out = pitr.run([
        "restore",
        "--pgdata",
        &data.display().to_string(),
        "--target-time",
        &target,
        "--target-action",
        "promote",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let auto_conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto_conf.contains("--passphrase-file"), "{auto_conf}");
    chown_to_postgres(&data);
    let mut restored = PgCluster::restored(&dir, "sock-restored", data);
    restored.start_with_env(&repo.env);
    restored.wait_promoted(Duration::from_secs(60));
    assert_eq!(restored.sql(TABLE_STATE), state);
    restored.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_stored_in_clear_local() {
    nothing_stored_in_clear("enc-clear-local", Repo::local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_stored_in_clear_s3() {
    let server = S3Server::start("enc-clear").await;
    nothing_stored_in_clear("enc-clear-s3", |_| Repo::s3(&server, "encrypted")).await;
}

fn key_fingerprints(pitr: &Pitr) -> Vec<(String, String)> {
    let out = pitr.run(["key", "list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["fingerprint"].as_str().unwrap().to_owned(),
                k["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Rotation: a new passphrase and a key file are added, the old passphrase removed; the old
/// one then opens nothing, the new ones restore every earlier backup, and no object but
/// keys.json changed.
#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_without_rewriting_data() {
    let dir = TestDir::new("enc-rotate");
    let repo = Repo::local(&dir);
    let old = passphrase_file(&dir, "old-passphrase", "the old passphrase");
    let new = passphrase_file(&dir, "new-passphrase", "the new passphrase");
    let key_file = dir.write(
        "key-file",
        (0..48u8).map(|i| i.wrapping_mul(37)).collect::<Vec<_>>(),
    );
    let (pitr, mut cluster) = encrypted_cluster(&dir, &repo, &old);
    cluster.sql("create table marked (id int primary key, v text)");
    cluster.sql("insert into marked select g, md5(g::text) from generate_series(1, 1000) g");
    let first = pitr.backup(&cluster);
    let first_state = cluster.sql(TABLE_STATE);
    cluster.sql("insert into marked select g, md5(g::text) from generate_series(1001, 2000) g");
    let second = pitr.backup(&cluster);
    cluster.archive_current_segment(Duration::from_secs(60));
    cluster.stop();
    let storage = repo.storage().await;
    let before = objects(&*storage).await;
    let fingerprints = key_fingerprints(&pitr);
    assert_eq!(fingerprints.len(), 1);
    assert_eq!(fingerprints[0].1, "passphrase");
    let old_fingerprint = fingerprints[0].0.clone();

    // Adding needs the current key, and the new one opens the result.
    let out = with_key(&pitr, &[])
        .command(["key", "add", "--new-passphrase-file"])
        .arg(&new)
        .output()
        .unwrap();
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    let out = pitr
        .command(["key", "add", "--new-passphrase-file"])
        .arg(&new)
        .arg("--new-key-file")
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let fingerprints = key_fingerprints(&pitr);
    assert_eq!(fingerprints.len(), 3, "{fingerprints:?}");
    let kinds: Vec<&str> = fingerprints.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, ["passphrase", "passphrase", "key-file"]);

    // The old passphrase goes: with it in the settings, the removal is refused (it would
    // lock the caller out); with the new one, it is done.
    let out = pitr.run(["key", "remove", &old_fingerprint]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no key given in the settings"),
        "{}",
        stderr(&out)
    );
    let renewed = with_key(&pitr, &[("PITR_PASSPHRASE_FILE", &new)]);
    let out = renewed.run(["key", "remove", &old_fingerprint]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("removed key {old_fingerprint}"))
    );
    let out = renewed.run(["key", "remove", "0123456789abcdef"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no key with fingerprint"),
        "{}",
        stderr(&out)
    );

    // archive_command kept the data key its passphrase opened in the push spool, private.
    let spool = cluster.data.join("pg_wal/.pitr-spool");
    let cache = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("data-key.json"))
        .find(|p| p.exists())
        .expect("no key cache in the push spool");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cache).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // The old passphrase now opens nothing, and says so; its cached key does not help.
    let out = pitr.run(["list"]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("cannot decrypt: wrong key"), "{message}");
    for (fingerprint, _) in key_fingerprints(&renewed) {
        assert!(message.contains(&fingerprint), "{message}");
    }
    assert!(!message.contains("corrupt"), "{message}");
    let current = std::fs::read_dir(cluster.data.join("pg_wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .max()
        .unwrap();
    let out = pitr
        .command(["archive-push"])
        .arg(cluster.wal_path(&current))
        .env("PITR_ARCHIVE_PUSH_PARALLEL", "1")
        .output()
        .unwrap();
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(cache.exists());

    // Only keys.json changed.
    let after = objects(&*storage).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (key, bytes) in &before {
        if key != "keys.json" {
            assert!(after[key] == *bytes, "{key} was rewritten");
        }
    }
    assert!(after["keys.json"] != before["keys.json"]);

    // The new passphrase restores the older backup; the key file alone the newer.
    let by_key_file = with_key(&pitr, &[("PITR_KEY_FILE", &key_file)]);
    for (who, backup, name) in [
        (&renewed, &first, "r-first"),
        (&by_key_file, &second, "r-second"),
    ] {
        let data = dir.path().join(name);
        let out = who.run([
            "restore",
            "--pgdata",
            &data.display().to_string(),
            "--backup",
            backup,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_verifybackup(&data);
        if backup == &first {
            chown_to_postgres(&data);
            let mut restored = PgCluster::restored(&dir, "sock-first", data);
            restored.start();
            restored.wait_promoted(Duration::from_secs(60));
            assert_eq!(restored.sql(TABLE_STATE), first_state);
            restored.stop();
        }
    }

    // The last key stays.
    let out = by_key_file.run(["key", "remove", &key_fingerprints(&by_key_file)[0].0]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let remaining = key_fingerprints(&by_key_file);
    assert_eq!(remaining.len(), 1);
    let out = by_key_file.run(["key", "remove", &remaining[0].0]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("last key"), "{}", stderr(&out));
}

/// Changed objects: a flipped byte, two WAL objects' contents exchanged, an object replaced
/// by one in clear. Each is corrupt for verify and for every read; a missing or wrong key is
/// never called corrupt.
#[tokio::test(flavor = "multi_thread")]
async fn tampering_is_corrupt_and_keys_are_named() {
    let dir = TestDir::new("enc-tamper");
    let repo = Repo::local(&dir);
    let passphrase = passphrase_file(&dir, "passphrase", "tamper-proof");
    let (pitr, mut cluster) = encrypted_cluster(&dir, &repo, &passphrase);
    cluster.sql("create table marked (id int primary key, v text)");
    let mut segments = Vec::new();
    for round in 0..3 {
        cluster.sql(&format!(
            "insert into marked select g, md5(g::text) from generate_series({0} * 1000 + 1, {0} * 1000 + 1000) g",
            round
        ));
        segments.push(cluster.archive_current_segment(Duration::from_secs(60)));
    }
    cluster.stop();
    let storage = repo.storage().await;
    let wal_key = |segment: &str| format!("wal/{}/{segment}.lz4", &segment[..16]);
    let (a, b) = (wal_key(&segments[0]), wal_key(&segments[1]));
    let (a_bytes, b_bytes) = (
        read_all(&*storage, &a).await.unwrap(),
        read_all(&*storage, &b).await.unwrap(),
    );
    let put = |key: String, bytes: Vec<u8>| {
        let storage = storage.clone();
        async move {
            storage
                .put(&key, PutPayload::from_bytes(bytes), PutMode::Overwrite)
                .await
                .unwrap()
        }
    };
    let get = |name: &str| {
        pitr.command(["archive-get", name])
            .arg(dir.path().join("fetched"))
            .output()
            .unwrap()
    };
    let keyless = with_key(&pitr, &[]);
    let out = get(&segments[0]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plain = std::fs::read(dir.path().join("fetched")).unwrap();
    // A WAL file to push: its name is one of the archived segments.
    let fetched_copy = dir.subdir("copy").join(&segments[0]);
    std::fs::rename(dir.path().join("fetched"), &fetched_copy).unwrap();
    chown_to_postgres(&fetched_copy);

    // Swapped: each is intact as stored (its checksum holds), but does not open as itself.
    put(a.clone(), b_bytes.clone()).await;
    put(b.clone(), a_bytes.clone()).await;
    let (status, report) = verify_json(&pitr, &[]);
    assert_eq!(status, 5, "{report}");
    let corrupt: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "corrupt")
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert!(
        corrupt.contains(&a.as_str()) && corrupt.contains(&b.as_str()),
        "{report}"
    );
    let out = get(&segments[0]);
    assert_eq!(code(&out), 133, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not authenticate"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("fetched").exists());

    // A flipped byte: corrupt with the key and, by its stored checksum, without it.
    put(b.clone(), b_bytes.clone()).await;
    let mut flipped = a_bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x04;
    put(a.clone(), flipped).await;
    for (who, extra) in [(&pitr, &[][..]), (&keyless, &["--no-key"][..])] {
        let (status, report) = verify_json(who, extra);
        assert_eq!(status, 5, "{report}");
        assert_eq!(report["problems"][0]["key"], a.as_str(), "{report}");
    }
    assert_eq!(code(&get(&segments[0])), 133);

    // Replaced by an object in clear (what someone without the key could write).
    let mut object = Vec::new();
    pitr::codec::encode_reader(&plain[..], &mut object, pitr::codec::Compression::Lz4, 1).unwrap();
    put(a.clone(), object).await;
    let out = get(&segments[0]);
    assert_eq!(code(&out), 133, "{}", stderr(&out));
    assert!(stderr(&out).contains("not encrypted"), "{}", stderr(&out));
    put(a.clone(), a_bytes.clone()).await;
    let (status, report) = verify_json(&pitr, &[]);
    assert_eq!(status, 0, "{report}");
    let out = get(&segments[0]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(std::fs::read(dir.path().join("fetched")).unwrap() == plain);

    // Wrong and missing keys: exit 12 (archive-get 140), the fingerprints named.
    let fingerprint = key_fingerprints(&keyless)[0].0.clone();
    let wrong = passphrase_file(&dir, "wrong", "tamper-proof?");
    let wrong_key = with_key(&pitr, &[("PITR_PASSPHRASE_FILE", &wrong)]);
    for (who, says) in [
        (&wrong_key, "cannot decrypt: wrong key"),
        (&keyless, "no key was given"),
    ] {
        let out = who
            .command(["archive-get", &segments[2]])
            .arg(dir.path().join("never"))
            .output()
            .unwrap();
        assert_eq!(code(&out), 140, "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
        assert!(stderr(&out).contains(&fingerprint), "{}", stderr(&out));
        assert!(!stderr(&out).contains("corrupt"), "{}", stderr(&out));
        let out = who
            .command(["archive-push"])
            .arg(&fetched_copy)
            .output()
            .unwrap();
        assert_eq!(code(&out), 12, "{}", stderr(&out));
    }
    assert!(!dir.path().join("never").exists());
    let out = Pitr {
        env: vec![("PITR_PASSPHRASE".into(), "tamper-proof".into())],
        ..with_key(&pitr, &[])
    }
    .run(["list"]);
    assert_eq!(
        code(&out),
        0,
        "PITR_PASSPHRASE opens it too: {}",
        stderr(&out)
    );
}

/// `init --encrypt` turns an initialised repository that holds nothing yet into an encrypted
/// one, and refuses one that holds objects in clear; a key given for a plain repository is
/// refused rather than ignored.
#[tokio::test(flavor = "multi_thread")]
async fn encryption_starts_only_on_an_empty_repository() {
    let dir = TestDir::new("enc-init");
    let passphrase = passphrase_file(&dir, "passphrase", "init-passphrase");
    let empty = Repo::local(&dir);
    let plain = Pitr::install(&dir, &empty);
    let cluster = PgCluster::initdb(&dir, "pg", &[]);
    let init = |pitr: &Pitr, extra: &[&str]| {
        let mut args = vec!["init"];
        args.extend_from_slice(extra);
        pitr.command(&args)
            .arg("--pgdata")
            .arg(&cluster.data)
            .output()
            .unwrap()
    };
    let out = init(&plain, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let keyed = with_key(&plain, &[("PITR_PASSPHRASE_FILE", &passphrase)]);
    // A key for a repository that is not encrypted.
    let first = cluster.wal_path("000000010000000000000001");
    let out = keyed
        .command(["archive-push"])
        .arg(&first)
        .output()
        .unwrap();
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not encrypted"),
        "{}",
        stderr(&out)
    );
    // No key given to init --encrypt.
    let out = init(&plain, &["--encrypt"]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("needs a key"), "{}", stderr(&out));
    // Empty: turned into an encrypted repository, then used as one.
    let out = init(&keyed, &["--encrypt"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = keyed
        .command(["archive-push"])
        .arg(&first)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = init(&keyed, &["--encrypt"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already initialised"));

    // Holding WAL in clear: refused, and nothing changed.
    let other = TestDir::new("enc-init-full");
    let full = Repo::local(&other);
    let plain = Pitr::install(&other, &full);
    let out = init(&plain, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = plain
        .command(["archive-push"])
        .arg(&first)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let storage = full.storage().await;
    let before = objects(&*storage).await;
    let out = init(
        &with_key(&plain, &[("PITR_PASSPHRASE_FILE", &passphrase)]),
        &["--encrypt"],
    );
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unencrypted objects"),
        "{}",
        stderr(&out)
    );
    assert!(objects(&*storage).await == before);
}
