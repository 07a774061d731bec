use super::wal::{wal_key, wal_name_of_key};
use super::*;
use crate::pg::WalFileName;
use crate::storage::{PutMode, PutPayload, Storage};

#[test]
fn wal_keys_group_by_timeline_and_log() {
    let cases = [
        (
            "000000010000000A000000FF",
            "wal/000000010000000A/000000010000000A000000FF.lz4",
        ),
        (
            "000000020000000000000003.partial",
            "wal/0000000200000000/000000020000000000000003.partial.lz4",
        ),
        (
            "000000010000000000000002.00000028.backup",
            "wal/0000000100000000/000000010000000000000002.00000028.backup.lz4",
        ),
        ("00000002.history", "wal/history/00000002.history.lz4"),
    ];
    for (name, key) in cases {
        let parsed = WalFileName::parse(name).unwrap();
        assert_eq!(wal_key(&parsed, CompressionType::Lz4), key);
        assert_eq!(wal_name_of_key(key), Some(parsed.clone()));
        // A zstd repository's key: the same but for the suffix, and parsed alike.
        let zstd_key = key.replace(".lz4", ".zst");
        assert_eq!(wal_key(&parsed, CompressionType::Zstd), zstd_key);
        assert_eq!(wal_name_of_key(&zstd_key), Some(parsed));
    }
    assert_eq!(wal_name_of_key("repository.json"), None);
    for wrong in [
        "wal/0000000100000000/000000020000000000000001.lz4",
        "wal/0000000100000000/000000010000000000000001.gz",
        "wal/0000000100000000/000000010000000000000001",
    ] {
        assert_eq!(wal_name_of_key(wrong), None, "{wrong}");
    }
}

#[test]
fn identity_json_keeps_the_system_identifier_exact() {
    let control = ControlFile {
        system_identifier: 7_301_234_567_890_123_457,
        pg_control_version: 1300,
        catalog_version_no: 202_209_061,
        wal_block_size: 8192,
        wal_segment_size: 16 << 20,
        data_checksum_version: 0,
    };
    let identity = RepositoryIdentity::new(&control, 15, Utc::now());
    let json = serde_json::to_string(&identity).unwrap();
    assert!(
        json.contains("\"system_identifier\":\"7301234567890123457\""),
        "{json}"
    );
    assert_eq!(
        RepositoryIdentity::parse(sealed_compact(&json).as_bytes()).unwrap(),
        identity
    );
    let odd = json.replace("16777216", "1000000");
    let err = RepositoryIdentity::parse(sealed_compact(&odd).as_bytes()).unwrap_err();
    assert!(err.contains("segment size"), "{err}");
}

fn memory_catalog() -> (Arc<crate::storage::MemoryStorage>, Catalog) {
    let store = Arc::new(crate::storage::MemoryStorage::new("catalog"));
    (
        store.clone(),
        Catalog::new(store).knowing(&RepositoryIdentity::for_tests(16 << 20, 8192)),
    )
}

async fn put(store: &crate::storage::MemoryStorage, key: &str) {
    store
        .put(key, PutPayload::from_bytes(key.to_owned()), PutMode::Create)
        .await
        .unwrap();
}

#[tokio::test]
async fn deleting_a_backup_takes_its_manifest_first_and_nothing_else() {
    let (store, catalog) = memory_catalog();
    for key in [
        "backup/a/data/000000.lz4",
        "backup/a/data/000001.lz4",
        "backup/a/manifest.json",
        "backup/ab/manifest.json",
        "wal/0000000100000000/000000010000000000000001.lz4",
    ] {
        put(&store, key).await;
    }
    // The manifest goes first: a deletion cut short leaves no listed backup behind.
    let faulty = Arc::new(crate::storage::fault::FaultStorage::new(store.clone()));
    let first = faulty.inject(
        crate::storage::fault::Fault::on(crate::storage::fault::Op::Delete)
            .from_nth(2)
            .fail(crate::storage::fault::FaultKind::Timeout),
    );
    assert!(
        Catalog::new(faulty.clone())
            .delete_backup("a", None)
            .await
            .is_err()
    );
    assert_eq!(first.fired(), 1);
    assert!(store.object("backup/a/manifest.json").is_none());
    assert!(store.object("backup/a/data/000000.lz4").is_some());
    // Finishing the job later removes the rest, and only that backup's objects.
    assert_eq!(catalog.delete_backup("a", None).await.unwrap().deleted, 2);
    assert_eq!(
        store.keys(),
        vec![
            "backup/ab/manifest.json",
            "wal/0000000100000000/000000010000000000000001.lz4"
        ]
    );
}

#[tokio::test]
async fn listings_type_what_they_find_and_skip_strangers() {
    let (store, catalog) = memory_catalog();
    for key in [
        "wal/0000000100000000/000000010000000000000001.lz4",
        "wal/0000000100000000/000000010000000000000001.summary.json",
        "wal/0000000100000000/not-wal.lz4",
        "backup/a/data/000007.lz4",
        "backup/a/data/7.lz4",
        "backup/a/manifest.json",
    ] {
        put(&store, key).await;
    }
    let listing = catalog.wal_listing(16 << 20).await.unwrap();
    assert_eq!(listing.segments.len(), 1);
    assert_eq!(listing.summarised.len(), 1);
    let objects = catalog.backup_objects().await.unwrap();
    let a = &objects["a"];
    assert_eq!(a.data.keys().copied().collect::<Vec<_>>(), vec![7]);
    assert!(a.manifest.is_some());
    // The manifest there is not a manifest: that backup is damaged, nothing else fails.
    assert!(catalog.backups().await.unwrap().is_empty());
    let list = catalog.backup_list().await.unwrap();
    assert_eq!(list.damaged.len(), 1);
    assert_eq!(list.damaged[0].id, "a");
}

/// A store whose retention lock keeps some keys, as S3 Object Lock would.
#[derive(Debug)]
struct Locked {
    inner: Arc<crate::storage::MemoryStorage>,
    locked: Vec<&'static str>,
}

#[async_trait::async_trait]
impl Storage for Locked {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put(&self, key: &str, payload: PutPayload, mode: PutMode) -> Result<(), StorageError> {
        self.inner.put(key, payload, mode).await
    }
    async fn get(&self, key: &str) -> Result<crate::storage::ObjectBody, StorageError> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<crate::storage::ObjectMeta, StorageError> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<crate::storage::ObjectMeta>, StorageError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn delete_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<crate::storage::Protected>, StorageError> {
        let mut protected = Vec::new();
        for key in keys {
            if self.locked.contains(&key.as_str()) {
                protected.push(crate::storage::Protected {
                    key: key.clone(),
                    until: Some("2030-01-01T00:00:00Z".into()),
                });
            } else {
                self.inner.delete(key).await?;
            }
        }
        Ok(protected)
    }
}

#[tokio::test]
async fn objects_a_retention_lock_keeps_are_reported_and_stop_a_backup_removal() {
    let store = Arc::new(crate::storage::MemoryStorage::new("locked"));
    let keys = [
        "backup/a/claim.json",
        "backup/a/data/000000.lz4",
        "backup/a/manifest.json",
        "wal/0000000100000000/000000010000000000000001.lz4",
        "wal/0000000100000000/000000010000000000000001.summary.json",
        "wal/0000000100000000/000000010000000000000002.lz4",
        "wal/0000000100000000/000000010000000000000002.summary.json",
        "blockmap/0000000100000000/000000010000000000000001.json",
        "blockmap/0000000100000000/000000010000000000000002.json",
    ];
    for key in keys {
        put(&store, key).await;
    }
    let catalog = Catalog::new(Arc::new(Locked {
        inner: store.clone(),
        locked: vec![keys[2], keys[3]],
    }))
    .knowing(&RepositoryIdentity::for_tests(16 << 20, 8192));
    // A locked manifest keeps the whole backup: it stays listed and whole.
    let done = catalog.delete_backup("a", None).await.unwrap();
    assert_eq!(done.deleted, 0);
    assert_eq!(done.protected.len(), 1);
    assert_eq!(done.protected[0].key, keys[2]);
    assert_eq!(
        done.protected[0].until.as_deref(),
        Some("2030-01-01T00:00:00Z")
    );
    assert!(store.object(keys[1]).is_some());
    // A locked segment keeps its summary and block map; the others go with theirs.
    let listing = catalog.wal_listing(16 << 20).await.unwrap();
    let files: Vec<_> = listing.segments.values().cloned().collect();
    let done = catalog.delete_wal_files(&files, 16 << 20).await.unwrap();
    assert_eq!(done.deleted, 1);
    assert_eq!(done.protected.len(), 1);
    assert_eq!(
        store.keys(),
        vec![keys[0], keys[1], keys[2], keys[7], keys[3], keys[4]]
    );
}

#[tokio::test]
async fn pins_live_beside_the_sealed_manifest_and_the_expired_mark_only_rises() {
    let (store, catalog) = memory_catalog();
    let identity = RepositoryIdentity::for_tests(16 << 20, 8192);
    catalog.init(&identity).await.unwrap();
    put(&store, "backup/a/manifest.json").await;
    assert_eq!(catalog.backup_pin("a").await.unwrap(), None);
    let mut pin = backup::BackupPin::new("a");
    pin.pinned = true;
    pin.annotations.insert("why".into(), "audit".into());
    catalog.put_backup_pin(&pin).await.unwrap();
    assert_eq!(catalog.backup_pin("a").await.unwrap(), Some(pin.clone()));
    let objects = catalog.backup_objects().await.unwrap();
    assert!(objects["a"].pin.is_some());
    let (pins, damaged) = catalog.backup_pins(&objects).await.unwrap();
    assert_eq!(pins["a"], pin);
    assert!(damaged.is_empty());
    // Tampered with: reported, never read as "not pinned".
    let key = "backup/a/pin.json";
    let text = String::from_utf8(store.object(key).unwrap().to_vec()).unwrap();
    store
        .put(
            key,
            PutPayload::from_bytes(text.replace("audit", "audiT")),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let (pins, damaged) = catalog.backup_pins(&objects).await.unwrap();
    assert!(pins.is_empty());
    assert_eq!(damaged[0].id, "a");

    let seg = 16 << 20;
    catalog
        .record_expired_wal(&std::collections::BTreeMap::from([(1, 8), (2, 3)]), seg)
        .await
        .unwrap();
    catalog
        .record_expired_wal(&std::collections::BTreeMap::from([(1, 5), (3, 9)]), seg)
        .await
        .unwrap();
    assert_eq!(
        catalog.expired_wal().await.unwrap(),
        std::collections::BTreeMap::from([(1, 8), (2, 3), (3, 9)])
    );
}

/// Compact JSON of an object with the checksum its text has, as `sealed::seal` computes it.
fn sealed_compact(compact: &str) -> String {
    use sha2::Digest;
    let checksum = hex::encode(sha2::Sha256::digest(compact.as_bytes()));
    let body = compact.strip_suffix('}').unwrap();
    format!("{body},\"checksum\":\"sha256:{checksum}\"}}")
}

#[test]
fn identity_records_zstd_and_leaves_lz4_out() {
    let lz4 = RepositoryIdentity::for_tests(16 << 20, 8192);
    // An lz4 identity is written as before the choice existed: earlier pitr reads it.
    let json = String::from_utf8(sealed::seal(&lz4)).unwrap();
    assert!(!json.contains("compression"), "{json}");
    assert_eq!(
        RepositoryIdentity::parse(json.as_bytes())
            .unwrap()
            .compression(),
        Compression::Lz4
    );
    let zstd = lz4.with_compression(Compression::Zstd { level: 7 });
    let json = String::from_utf8(sealed::seal(&zstd)).unwrap();
    assert!(
        json.contains("\"compression\": {\n    \"type\": \"zstd\",\n    \"level\": 7\n  }"),
        "{json}"
    );
    assert_eq!(RepositoryIdentity::parse(json.as_bytes()).unwrap(), zstd);
    // Sealed over the changed text, so that the content, not the checksum, is refused.
    let plain = serde_json::to_string(&zstd).unwrap();
    assert!(RepositoryIdentity::parse(sealed_compact(&plain).as_bytes()).is_ok());
    assert!(
        RepositoryIdentity::parse(plain.as_bytes()).is_err(),
        "no seal"
    );
    for (from, to) in [("\"zstd\"", "\"brotli\""), ("\"level\":7", "\"level\":30")] {
        let changed = plain.replace(from, to);
        assert!(changed != plain, "{to}");
        let err = RepositoryIdentity::parse(sealed_compact(&changed).as_bytes()).unwrap_err();
        assert!(!err.contains("checksum"), "{to}: {err}");
    }
}

#[test]
fn a_compression_request_fits_the_repository_or_says_why_not() {
    let zstd = |level| Compression::Zstd { level };
    let request = |kind, level| CompressionRequest { kind, level };
    // pitr init: lz4 unless zstd is asked for.
    assert_eq!(
        request(None, None).for_new_repository(),
        Ok(Compression::Lz4)
    );
    assert_eq!(
        request(Some(CompressionType::Zstd), None).for_new_repository(),
        Ok(zstd(3))
    );
    assert_eq!(
        request(Some(CompressionType::Zstd), Some(19)).for_new_repository(),
        Ok(zstd(19))
    );
    let err = request(None, Some(5)).for_new_repository().unwrap_err();
    assert!(err.contains("applies to zstd only"), "{err}");
    // Later commands: the type is the repository's; the level may change.
    assert_eq!(request(None, None).resolve(zstd(3), "R"), Ok(zstd(3)));
    assert_eq!(request(None, Some(9)).resolve(zstd(3), "R"), Ok(zstd(9)));
    assert_eq!(
        request(Some(CompressionType::Zstd), None).resolve(zstd(3), "R"),
        Ok(zstd(3))
    );
    assert_eq!(
        request(Some(CompressionType::Lz4), None).resolve(Compression::Lz4, "R"),
        Ok(Compression::Lz4)
    );
    for (asked, recorded, says) in [
        (
            request(Some(CompressionType::Lz4), None),
            zstd(3),
            "repository R stores zstd objects: the compression type is fixed",
        ),
        (
            request(Some(CompressionType::Zstd), None),
            Compression::Lz4,
            "drop compression zstd",
        ),
        (
            request(None, Some(3)),
            Compression::Lz4,
            "stores lz4 objects, which have no compression level",
        ),
    ] {
        let err = asked.resolve(recorded, "R").unwrap_err();
        assert!(err.contains(says) && !err.contains('\n'), "{err}");
    }
}

#[tokio::test]
async fn a_zstd_repository_names_its_objects_zst() {
    let store = Arc::new(crate::storage::MemoryStorage::new("zstd"));
    let catalog = Catalog::new(store.clone());
    let identity = RepositoryIdentity::for_tests(1 << 20, 8192)
        .with_compression(Compression::Zstd { level: 3 });
    catalog.init(&identity).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = WalFileName::parse("000000010000000000000001").unwrap();
    let path = dir.path().join(name.as_str());
    let mut content: Vec<u8> = (0..1u32 << 20).map(|i| (i / 300) as u8).collect();
    crate::pg::wal_file_check::head_pages(&mut content, 1, 1, identity.wal_geometry());
    std::fs::write(&path, &content).unwrap();
    let (_, encoded) = catalog.store_wal(&name, &path, 2).await.unwrap();
    let key = "wal/0000000100000000/000000010000000000000001.zst";
    let stored = store.object(key).unwrap();
    assert_eq!(stored.len() as u64, encoded.stored_len);
    assert_eq!(&stored[..4], &[0x28, 0xB5, 0x2F, 0xFD], "a zstd frame");
    assert!(catalog.has_wal(&name).await.unwrap());
    let (fetched, _) = catalog
        .fetch_wal(&name, "memory", Vec::new())
        .await
        .unwrap();
    assert!(fetched == content);
    let listing = catalog.wal_listing(1 << 20).await.unwrap();
    assert_eq!(listing.segment(1, 1).unwrap().object.key(), key);
    assert_eq!(listing.file(1, 1, 1 << 20).unwrap().object.key(), key);

    let (id, n) = ("20260101T000000Z", 0);
    catalog
        .store_backup_object(
            id,
            n,
            "bundle",
            std::io::Cursor::new(content[..1000].to_vec()),
        )
        .await
        .unwrap();
    let objects = catalog.backup_objects().await.unwrap();
    assert_eq!(
        objects[id].data[&n].key(),
        "backup/20260101T000000Z/data/000000.zst"
    );
    assert_eq!(
        objects[id].data_key(1),
        "backup/20260101T000000Z/data/000001.zst"
    );

    // Another process asking for lz4: refused at the identity, before anything is written.
    let lz4 = Catalog::new(store.clone()).with_compression_request(CompressionRequest {
        kind: Some(CompressionType::Lz4),
        level: None,
    });
    assert!(matches!(
        lz4.identity().await,
        Err(CatalogError::Compression(_))
    ));
    // Asking for another level: new objects get it, in the repository's format.
    let level_19 = Catalog::new(store.clone()).with_compression_request(CompressionRequest {
        kind: None,
        level: Some(19),
    });
    assert_eq!(
        level_19.compression().await.unwrap(),
        Compression::Zstd { level: 19 }
    );
}

#[tokio::test]
async fn a_manifest_without_its_seal_is_refused_as_damaged() {
    let (store, catalog) = memory_catalog();
    let manifest = crate::recovery::plan::tests::backup("unsealed", 1, 2, 3, 5);
    // Sealed, it is read; the same JSON without its checksum is not.
    let sealed = sealed::seal(&manifest);
    if let Err(e) = backup::BackupManifest::parse(&sealed, "unsealed") {
        assert!(!e.contains("checksum"), "{e}");
    }
    store
        .put(
            &backup::manifest_key("unsealed"),
            PutPayload::from_bytes(serde_json::to_vec_pretty(&manifest).unwrap()),
            PutMode::Create,
        )
        .await
        .unwrap();
    let list = catalog.backup_list().await.unwrap();
    assert!(list.manifests.is_empty());
    assert_eq!(list.damaged.len(), 1);
    assert!(
        list.damaged[0].reason.contains("no \"checksum\" field"),
        "{}",
        list.damaged[0].reason
    );
    let err = catalog.manifest("unsealed").await.unwrap_err();
    assert_eq!(
        crate::error::Error::from(err).exit_code(),
        crate::error::EXIT_CORRUPT
    );
}
