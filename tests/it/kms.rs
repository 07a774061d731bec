//! AWS KMS as a repository key, on a real KMS-compatible server (moto) and a real PostgreSQL
//! 15 cluster: init with a KMS key, archive through it, add a passphrase beside it, refuse a
//! KMS key that is not the repository's, remove it.

use std::ffi::OsStr;
use std::process::Output;

use crate::common::kms_server::KmsServer;
use crate::common::{PgCluster, Pitr, RefusingPort, Repo, TestDir, code, stderr};

const FIRST: &str = "000000010000000000000001";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pitr ARGS…` with `keys` (PITR_KMS_KEY_ID, PITR_PASSPHRASE_FILE…) as its only key settings.
fn run_with<I, S>(pitr: &Pitr, keys: &[(&str, &OsStr)], args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = pitr.command(args);
    for (name, value) in keys {
        cmd.env(name, value);
    }
    cmd.output().unwrap()
}

/// stderr is one line that names `key_id`.
fn assert_names_key(out: &Output, key_id: &str) {
    let err = stderr(out);
    assert!(err.contains(key_id), "does not name {key_id}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kms_key_wraps_the_data_key_beside_a_passphrase_and_alone_opens_nothing_else() {
    let kms = KmsServer::start("kms").await;
    let key_a = kms.create_key("pitr test: the repository's key").await;
    let key_b = kms.create_key("pitr test: never added").await;
    let missing = "0f0e0d0c-0b0a-4000-8000-000000000000";

    let dir = TestDir::new("kms");
    let repo = Repo::local(&dir);
    let mut pitr = Pitr::install(&dir, &repo);
    pitr.env.extend(kms.env());
    // No background prefetcher outliving a command of this test.
    pitr.env
        .push(("PITR_ARCHIVE_GET_PREFETCH".into(), "0".into()));
    let cluster = PgCluster::initdb(&dir, "pg", &[]);
    let segment = cluster.wal_path(FIRST);
    let original = std::fs::read(&segment).unwrap();
    let passphrase = dir.write("passphrase", "correct horse battery staple\n");
    let kms_a = [("PITR_KMS_KEY_ID", OsStr::new(&key_a))];
    let kms_b = [("PITR_KMS_KEY_ID", OsStr::new(&key_b))];
    let by_passphrase = [("PITR_PASSPHRASE_FILE", passphrase.as_os_str())];
    let init = |key: &str| {
        run_with(
            &pitr,
            &[],
            [
                "init".as_ref(),
                "--pgdata".as_ref(),
                cluster.data.as_os_str(),
                "--encrypt".as_ref(),
                "--kms-key-id".as_ref(),
                OsStr::new(key),
            ],
        )
    };

    // A key KMS does not know: init fails with what KMS said, and leaves nothing behind.
    let out = init(missing);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert_names_key(&out, missing);
    assert!(
        stderr(&out).contains("NotFoundException"),
        "{}",
        stderr(&out)
    );
    let out = run_with(&pitr, &[], ["key", "list"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));

    let out = init(&key_a);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run_with(&pitr, &[], ["key", "list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("kms {key_a}")),
        "{}",
        stdout(&out)
    );
    let out = run_with(&pitr, &[], ["key", "list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{listed}");
    assert_eq!(keys[0]["kind"], "kms", "{listed}");
    assert_eq!(keys[0]["kms_key_id"], key_a.as_str(), "{listed}");
    let kms_fingerprint = keys[0]["fingerprint"].as_str().unwrap().to_owned();

    // A real WAL segment through the KMS key alone, back byte for byte.
    let out = run_with(
        &pitr,
        &kms_a,
        ["archive-push".as_ref(), segment.as_os_str()],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = dir.subdir("restored");
    let get = |keys: &[(&str, &OsStr)], name: &str| {
        let dest = restored.join(name);
        let _ = std::fs::remove_file(&dest);
        let out = run_with(
            &pitr,
            keys,
            ["archive-get".as_ref(), OsStr::new(FIRST), dest.as_os_str()],
        );
        (out, dest)
    };
    let (out, dest) = get(&kms_a, "by-kms");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "archive-get by KMS differs"
    );

    // KMS out of reach: a key error naming the key, never "not in the repository".
    let refusing = RefusingPort::bind();
    let unreachable = refusing.url();
    let mut cmd = pitr.command(["archive-get".as_ref(), OsStr::new(FIRST), dest.as_os_str()]);
    cmd.env("PITR_KMS_KEY_ID", &key_a)
        .env("AWS_ENDPOINT_URL_KMS", &unreachable);
    let out = cmd.output().unwrap();
    assert_eq!(code(&out), 140, "{}", stderr(&out));
    assert_names_key(&out, &key_a);

    // A passphrase beside the KMS key; then it alone opens the repository.
    let out = run_with(
        &pitr,
        &kms_a,
        [
            "key".as_ref(),
            "add".as_ref(),
            "--new-passphrase-file".as_ref(),
            passphrase.as_os_str(),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (out, dest) = get(&by_passphrase, "by-passphrase");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "archive-get by passphrase differs"
    );

    // A KMS key the repository never had: refused, and named.
    let out = run_with(
        &pitr,
        &kms_b,
        ["archive-push".as_ref(), segment.as_os_str()],
    );
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert_names_key(&out, &key_b);
    let (out, _) = get(&kms_b, "by-other-kms");
    assert_eq!(code(&out), 140, "{}", stderr(&out));
    assert_names_key(&out, &key_b);

    // The KMS key removed, with the passphrase in the settings: the KMS key alone fails.
    let out = run_with(&pitr, &by_passphrase, ["key", "remove", &kms_fingerprint]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run_with(&pitr, &[], ["key", "list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stdout(&out).contains(&key_a), "{}", stdout(&out));
    assert!(stdout(&out).contains("passphrase"), "{}", stdout(&out));
    let out = run_with(
        &pitr,
        &kms_a,
        ["archive-push".as_ref(), segment.as_os_str()],
    );
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert_names_key(&out, &key_a);
    let (out, _) = get(&kms_a, "by-removed-kms");
    assert_eq!(code(&out), 140, "{}", stderr(&out));
    assert_names_key(&out, &key_a);
    let (out, dest) = get(&by_passphrase, "by-passphrase-after");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "archive-get after removal differs"
    );

    kms_blobs_are_bound_to_their_key_and_purpose(&kms, &key_a, &key_b).await;
}

/// pitr's own key service: what it encrypts opens with the same key only, and only with
/// pitr's encryption context (KMS itself refuses the rest).
async fn kms_blobs_are_bound_to_their_key_and_purpose(kms: &KmsServer, key_a: &str, key_b: &str) {
    // In-process, the SDK's chain reads the environment, which every pitr process that any
    // test of this binary starts inherits: only the credentials (the values every test
    // sets, see kms_server.rs) and this server's KMS endpoint, which no other test uses; no
    // AWS_CONFIG_FILE pointing into this test's directory, gone when it ends.
    for (name, value) in kms.env() {
        if matches!(
            name.as_str(),
            "AWS_ENDPOINT_URL_KMS" | "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "AWS_REGION"
        ) {
            // SAFETY: see above.
            unsafe { std::env::set_var(name, value) };
        }
    }
    let service = pitr::kms::key_service(&pitr::config::Settings::default()).unwrap();
    let data_key = [7u8; 32];
    let blob = service.encrypt(key_a, &data_key).await.unwrap();
    assert!(
        !blob.windows(8).any(|w| w == &data_key[..8]),
        "plaintext in the blob"
    );
    assert_eq!(&service.decrypt(key_a, &blob).await.unwrap()[..], &data_key);

    let err = service.decrypt(key_b, &blob).await.unwrap_err();
    assert!(err.starts_with("Decrypt in us-east-1: "), "{err}");
    assert!(!err.contains('\n'), "{err}");

    let without_context = kms
        .client()
        .decrypt()
        .key_id(key_a)
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob.clone()))
        .send()
        .await;
    assert!(
        without_context.is_err(),
        "KMS opened pitr's blob without pitr's encryption context"
    );
}
