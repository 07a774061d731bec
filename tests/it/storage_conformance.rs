//! The storage contract, on the local filesystem and on a real S3-compatible server.
//! (The memory store and the fault wrapper over memory and fs run it in their unit tests.)

use std::sync::Arc;

use crate::common::*;
use pitr::storage::{FaultStorage, Op, PutMode, PutPayload, Storage, StorageError, conformance};

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
