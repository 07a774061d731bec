//! The storage contract, on the local filesystem and on a real S3-compatible server.
//! (The memory store and the fault wrapper over memory and fs run it in their unit tests.)

use std::sync::Arc;

use crate::common::kms_server::KmsServer;
use crate::common::*;
use pitr::storage::{
    FaultStorage, Op, PutMode, PutPayload, S3Options, S3Storage, Storage, StorageError, conformance,
};

#[tokio::test(flavor = "multi_thread")]
async fn fs_storage_conforms() {
    let dir = TestDir::new("conformance-fs");
    let repo = Repo::local(&dir);
    conformance::run_all(repo.storage().await, "suite").await;
    conformance::concurrent_creates_have_one_winner(repo.storage().await, "suite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_storage_conforms() {
    let server = S3Server::start("conformance").await;
    let repo = Repo::s3(&server, "prefix/of/repo");
    conformance::run_all(repo.storage().await, "suite").await;
    // Racing creates need atomic conditional writes from the server: AWS S3 and MinIO (given
    // by PITR_TEST_S3_ENDPOINT) have them, the s3s-fs that the tests start does not.
    if std::env::var_os("PITR_TEST_S3_ENDPOINT").is_some() {
        conformance::concurrent_creates_have_one_winner(repo.storage().await, "suite").await;
    }
}

/// The fault wrapper with no rules changes nothing, also over S3's streamed bodies.
#[tokio::test(flavor = "multi_thread")]
async fn fault_storage_without_rules_conforms_over_s3() {
    let server = S3Server::start("conformance-fault").await;
    let inner = Repo::s3(&server, "prefix/of/repo").storage().await;
    let store = Arc::new(FaultStorage::new(inner.clone()));
    assert_eq!(store.location(), inner.location());
    conformance::run_all(store.clone(), "suite").await;
    assert!(store.calls(Op::Put) > 0 && store.calls(Op::Get) > 0);
}

/// The server checks the x-amz-checksum-crc32 that puts send: a body that does not match
/// its checksum is refused with BadDigest. (s3s-fs 0.14.1 checks after it has renamed the
/// object into place and leaves it there; AWS S3 and MinIO store nothing.)
#[tokio::test(flavor = "multi_thread")]
async fn s3_refuses_a_body_that_does_not_match_its_checksum() {
    let server = S3Server::start("checksum").await;
    let storage = Repo::s3(&server, "repo").storage().await;
    let mut payload = PutPayload::from_bytes("some bytes");
    payload.crc32 ^= 1;
    let result = storage.put("object", payload, PutMode::Create).await;
    match result {
        Err(StorageError::S3 { message, .. }) => {
            assert!(message.contains("BadDigest"), "{message}")
        }
        other => panic!("a body with a wrong checksum was accepted: {other:?}"),
    }
}

/// Conditional writes and lock take-overs on a server that honours `If-Match` on PUT and
/// DELETE atomically: moto serving one request at a time (the KMS tests' server; it serves
/// S3 too). s3s-fs 0.14.1 ignores `If-Match` on DELETE and checks conditions apart from the
/// write, so these run here: six processes take over the same stale lock, twenty times.
#[tokio::test(flavor = "multi_thread")]
async fn s3_conditional_writes_and_lock_take_overs_on_moto() {
    let moto = KmsServer::start("s3-cas").await;
    let bucket = "pitr-cas";
    let credentials =
        aws_sdk_s3::config::Credentials::new(S3_ACCESS_KEY, S3_SECRET_KEY, None, None, "tests");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(&moto.endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    // The SDK's chain reads the credentials from the environment; no other variable is set,
    // the KMS tests' endpoint among them.
    for (name, value) in moto.env() {
        if ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].contains(&name.as_str()) {
            // SAFETY: the values every test sets (one set of credentials, see kms_server.rs).
            unsafe { std::env::set_var(name, value) };
        }
    }
    let options = S3Options {
        endpoint: Some(moto.endpoint.clone()),
        path_style: true,
    };
    let storage: Arc<dyn Storage> =
        Arc::new(S3Storage::connect(bucket, "repo", &options).await.unwrap());
    conformance::run_all(storage.clone(), "suite").await;
    conformance::conditional_writes_compare_versions(&*storage, "suite").await;
    conformance::concurrent_take_overs_have_one_winner(storage, "suite").await;
}
