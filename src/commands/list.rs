//! `pitr list`: the backups in the repository and the WAL held per timeline.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{Catalog, wal_name_of_key};
use crate::error::Result;
use crate::pg::WalFileKind;

/// The JSON shape scripts read: keep it stable.
#[derive(Debug, Serialize)]
pub struct ListReport {
    pub backups: Vec<BackupEntry>,
    pub wal: Vec<WalRange>,
}

#[derive(Debug, Serialize)]
pub struct BackupEntry {
    pub id: String,
    pub start_time: String,
    pub stop_time: String,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub size_bytes: u64,
    pub stored_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct WalRange {
    pub timeline: u32,
    pub first_segment: String,
    pub last_segment: String,
}

pub async fn list(catalog: &Catalog) -> Result<ListReport> {
    catalog.identity().await?;
    let backups = catalog
        .backups()
        .await?
        .into_iter()
        .map(|m| BackupEntry {
            id: m.id,
            start_time: m.start_time,
            stop_time: m.stop_time,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            timeline: m.timeline,
            size_bytes: m.size_bytes,
            stored_bytes: m.stored_bytes,
        })
        .collect();
    let mut ranges: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for meta in catalog.storage().list("wal/").await? {
        let Some(name) = wal_name_of_key(&meta.key) else {
            continue;
        };
        if !matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
            continue;
        }
        let segment = name.segment_name().expect("segments have one").to_owned();
        ranges
            .entry(name.timeline())
            .and_modify(|(first, last)| {
                if segment < *first {
                    first.clone_from(&segment);
                }
                if segment > *last {
                    last.clone_from(&segment);
                }
            })
            .or_insert_with(|| (segment.clone(), segment));
    }
    Ok(ListReport {
        backups,
        wal: ranges
            .into_iter()
            .map(|(timeline, (first_segment, last_segment))| WalRange {
                timeline,
                first_segment,
                last_segment,
            })
            .collect(),
    })
}
