//! A synthetic repository for `bench/index.sh`: timeline 1, segments 1..=N, each a tiny
//! object in pitr's format with a summary (a commit every segment, 10 s apart; a restore
//! point every 10,000 segments) and the rollups archive-push writes, plus a handful of
//! backups spread over the archive. Everything goes through pitr's catalog, as
//! archive-push would write it; only the store skips fsync (a benchmark fixture, not a
//! repository to trust).
//!
//! With `--block-maps`, each segment also gets a block map (random blocks of a large table
//! and its index, as a stretch of scattered updates writes), and their rollups
//! (`bench/block_maps.sh`).
//!
//! `cargo run --release --example synthetic_archive -- DIR SEGMENTS [BACKUPS] [--no-rollups]
//! [--block-maps]`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};

use pitr::catalog::backup::{BackupFile, BackupManifest};
use pitr::catalog::{Catalog, RepositoryIdentity};
use pitr::pg::block_map::{BlockMap, BlockMapBuilder};
use pitr::pg::wal_blocks::{BlockRef, Fork, RecordChanges, RelFile, StorageEvent};
use pitr::pg::wal_name::xlog_file_name;
use pitr::pg::wal_summary::{RestorePoint, SegmentSummary, XidRange};
use pitr::pg::{ControlFile, Lsn, WalFileName};
use pitr::storage::{
    FsStorage, ObjectBody, ObjectMeta, PutBody, PutMode, PutPayload, Storage, StorageError,
};

const SEGMENT_SIZE: u64 = 16 << 20;
const GROUP: u64 = 256;

/// The fs store without fsync, for building fixtures fast.
#[derive(Debug)]
struct UnsyncedFs {
    root: PathBuf,
    staging: PathBuf,
    inner: FsStorage,
}

#[async_trait]
impl Storage for UnsyncedFs {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(&self, key: &str, payload: PutPayload, mode: PutMode) -> Result<(), StorageError> {
        let path = self.root.join(key);
        if mode == PutMode::Create && path.exists() {
            return Err(StorageError::AlreadyExists { key: key.into() });
        }
        std::fs::create_dir_all(path.parent().unwrap())
            .map_err(|e| StorageError::io("create", key, e))?;
        match payload.body {
            PutBody::Bytes(bytes) => std::fs::write(&path, &bytes),
            PutBody::File(source) => std::fs::copy(&source, &path).map(|_| ()),
        }
        .map_err(|e| StorageError::io("put", key, e))
    }

    async fn get(&self, key: &str) -> Result<ObjectBody, StorageError> {
        self.inner.get(key).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.inner.list(prefix).await
    }

    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list_folders(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }

    fn staging_dir(&self) -> Option<&Path> {
        Some(&self.staging)
    }
}

fn commit_time(segno: u64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_780_000_000 + segno as i64 * 10, 0)
        .unwrap()
}

fn summary(segno: u64) -> SegmentSummary {
    let start = segno * SEGMENT_SIZE;
    let xid = 1000 + segno as u32 * 3;
    SegmentSummary {
        first_record: Some(Lsn(start + 40)),
        last_record_end: Some(Lsn(start + SEGMENT_SIZE - 8)),
        first_commit_time: Some(commit_time(segno) - chrono::Duration::seconds(9)),
        last_commit_time: Some(commit_time(segno)),
        commits: 3,
        aborts: 0,
        commit_xids: Some(XidRange {
            min: xid,
            max: xid + 2,
        }),
        abort_xids: None,
        restore_points: if segno % 10_000 == 0 {
            vec![RestorePoint {
                name: format!("point_{segno}"),
                lsn: Lsn(start + 4096),
                time: Some(commit_time(segno)),
            }]
        } else {
            vec![]
        },
        end_of_wal: None,
        carry: None,
    }
}

/// Segment `segno`'s map: 500 blocks of a 300,000-block table and 50 of its index, spread
/// as random updates spread them (a fixed sequence per segment), and every 100th segment
/// truncates a small table.
fn block_map(segno: u64) -> BlockMap {
    let mut state = segno.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |below: u32| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(below)) as u32
    };
    let relation = |relfilenode| RelFile {
        tablespace: 1663,
        database: 5,
        relfilenode,
    };
    let mut builder = BlockMapBuilder::new(false);
    let lsn = Lsn(segno * SEGMENT_SIZE + 64);
    let mut picked: Vec<(u32, u32)> = (0..500).map(|_| (16384, next(300_000))).collect();
    picked.extend((0..50).map(|_| (16390, next(30_000))));
    let blocks = picked
        .into_iter()
        .map(|(node, block)| BlockRef {
            file: relation(node),
            fork: Fork::Main,
            block,
            will_init: false,
            has_image: false,
        })
        .collect();
    let events = if segno % 100 == 0 {
        vec![StorageEvent::Truncated {
            file: relation(16400),
            blocks: 10,
            main: true,
            fsm: true,
            vm: true,
        }]
    } else {
        Vec::new()
    };
    builder.add(lsn, RecordChanges { blocks, events });
    builder.finish()
}

fn manifest(number: usize, start: u64) -> BackupManifest {
    let time = commit_time(start);
    let id = time.format("%Y%m%dT%H%M%SZ").to_string();
    let (start_lsn, stop_lsn) = (
        Lsn(start * SEGMENT_SIZE + 40),
        Lsn((start + 2) * SEGMENT_SIZE + 256),
    );
    let segment = |segno| xlog_file_name(1, segno, SEGMENT_SIZE);
    BackupManifest {
        format: 1,
        id: id.clone(),
        label: format!("pitr backup {id}"),
        system_identifier: "7310234567890123456".into(),
        pg_version: 15,
        timeline: 1,
        start_lsn,
        stop_lsn,
        start_time: time,
        stop_time: commit_time(start + 2),
        start_wal_segment: segment(start),
        stop_wal_segment: segment(start + 2),
        backup_label: format!(
            "START WAL LOCATION: {start_lsn} (file {})\nCHECKPOINT LOCATION: {start_lsn}\n\
             BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: {}\nLABEL: pitr backup \
             {id}\nSTART TIMELINE: 1\n",
            segment(start),
            time.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        tablespace_map: None,
        tablespaces: vec![],
        size_bytes: 8192 + number as u64,
        stored_bytes: 100,
        directories: vec![],
        files: vec![BackupFile {
            path: "global/pg_control".into(),
            size: 8192,
            file_offset: 0,
            mode: 0o600,
            mtime: 0,
            crc32c: 0,
            object: 0,
            offset: 0,
            backup: None,
            delta: None,
        }],
        cluster_owner: None,
        data_directory: None,
        databases: Vec::new(),
        superuser: None,
        configuration: None,
        method: Default::default(),
        server_manifest: None,
        backup_type: Default::default(),
        parent: None,
        data_checksums: None,
        block_size: None,
        changes_from: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(&args[0]);
    let segments: u64 = args[1].parse().unwrap();
    let backups: usize = args.get(2).map_or(5, |b| b.parse().unwrap());
    let rollups = !args.iter().any(|a| a == "--no-rollups");
    let block_maps = args.iter().any(|a| a == "--block-maps");
    let store = Arc::new(UnsyncedFs {
        staging: root.join(".tmp"),
        inner: FsStorage::new(root.clone()),
        root: root.clone(),
    });
    let catalog = Catalog::new(store);
    let control = ControlFile {
        system_identifier: 7_310_234_567_890_123_456,
        pg_control_version: 1300,
        catalog_version_no: 202_209_061,
        wal_block_size: 8192,
        wal_segment_size: SEGMENT_SIZE as u32,
        data_checksum_version: 0,
    };
    catalog
        .init(&RepositoryIdentity::new(&control, 15, Utc::now()))
        .await
        .unwrap();
    let source = root.join(".tmp/segment");
    std::fs::create_dir_all(root.join(".tmp")).unwrap();
    std::fs::write(&source, [0u8; 64]).unwrap();
    let zero = WalFileName::parse(&xlog_file_name(1, 0, SEGMENT_SIZE)).unwrap();
    catalog.store_wal(&zero, &source, 1).await.unwrap();
    let payload = root.join(".tmp/segment.lz4");
    std::fs::rename(
        root.join(format!("wal/{}/{zero}.lz4", &zero.as_str()[..16])),
        &payload,
    )
    .unwrap();
    let root_ref = &root;
    let payload = std::fs::read(&payload).unwrap();

    // Groups in parallel, each in order (as archive-push runs).
    let groups: Vec<u64> = (0..=segments / GROUP).collect();
    let catalog_ref = &catalog;
    let payload_ref = &payload;
    stream::iter(groups)
        .map(|group| async move {
            let first = (group * GROUP).max(1);
            let last = (group * GROUP + GROUP - 1).min(segments);
            for segno in first..=last {
                let name = WalFileName::parse(&xlog_file_name(1, segno, SEGMENT_SIZE)).unwrap();
                // The same tiny object for every segment: encoded once, copied (the object
                // layout is pitr's, `wal/<TLI><LOG>/<segment>.lz4`).
                let key = root_ref.join(format!("wal/{}/{name}.lz4", &name.as_str()[..16]));
                std::fs::create_dir_all(key.parent().unwrap()).unwrap();
                std::fs::write(&key, payload_ref).unwrap();
                if block_maps {
                    catalog_ref.put_block_map(&name, &block_map(segno)).await?;
                }
                catalog_ref
                    .put_segment_summary(&name, &summary(segno))
                    .await?;
                if rollups {
                    catalog_ref.roll_up_after(&name, SEGMENT_SIZE).await?;
                }
            }
            if group % 100 == 0 {
                eprintln!("group {group}");
            }
            Ok::<_, pitr::catalog::CatalogError>(())
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();

    for number in 0..backups {
        let start = 1 + (segments - 10) * (number as u64 + 1) / (backups as u64 + 1);
        catalog
            .put_manifest(&manifest(number, start))
            .await
            .unwrap();
    }
    println!(
        "{} segments, {backups} backups; last commit {}",
        segments,
        commit_time(segments).to_rfc3339()
    );
}
