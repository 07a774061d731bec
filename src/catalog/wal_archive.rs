//! What the WAL archive holds: one listing of `wal/` sorted into segments, partial segments,
//! history files and summaries.

use std::collections::{BTreeMap, BTreeSet};

use super::wal_index::wal_name_of_summary_key;
use super::{Catalog, CatalogError, WAL_PREFIX, wal_name_of_key};
use crate::pg::{WalFileKind, WalFileName};

#[derive(Clone, Debug)]
pub struct ArchivedFile {
    pub name: WalFileName,
    pub key: String,
    /// Stored (compressed) size.
    pub size: u64,
}

#[derive(Clone, Debug, Default)]
pub struct WalListing {
    /// Full segments by (timeline, segment number).
    pub segments: BTreeMap<(u32, u64), ArchivedFile>,
    pub partials: BTreeMap<(u32, u64), ArchivedFile>,
    pub histories: BTreeMap<u32, ArchivedFile>,
    pub backup_histories: Vec<ArchivedFile>,
    /// WAL files that have a stored summary.
    pub summarised: BTreeSet<WalFileName>,
}

impl WalListing {
    pub fn segment(&self, timeline: u32, segno: u64) -> Option<&ArchivedFile> {
        self.segments.get(&(timeline, segno))
    }

    /// Every timeline with segments, partial segments or a history file.
    pub fn timelines(&self) -> BTreeSet<u32> {
        let mut timelines: BTreeSet<u32> = self.segments.keys().map(|&(t, _)| t).collect();
        timelines.extend(self.partials.keys().map(|&(t, _)| t));
        timelines.extend(self.histories.keys());
        timelines
    }

    /// All WAL objects, in key order.
    pub fn files(&self) -> impl Iterator<Item = &ArchivedFile> {
        self.histories
            .values()
            .chain(self.segments.values())
            .chain(self.partials.values())
            .chain(self.backup_histories.iter())
    }
}

impl Catalog {
    /// Lists the WAL archive once.
    pub async fn wal_listing(&self, segment_size: u64) -> Result<WalListing, CatalogError> {
        let mut listing = WalListing::default();
        for meta in self.storage().list(WAL_PREFIX).await? {
            if let Some(name) = wal_name_of_summary_key(&meta.key) {
                listing.summarised.insert(name);
                continue;
            }
            let Some(name) = wal_name_of_key(&meta.key) else {
                continue;
            };
            let timeline = name.timeline();
            let segno = name.segment_number(segment_size);
            let file = ArchivedFile {
                name,
                key: meta.key,
                size: meta.size,
            };
            match (file.name.kind(), segno) {
                (WalFileKind::Segment, Some(segno)) => {
                    listing.segments.insert((timeline, segno), file);
                }
                (WalFileKind::Partial, Some(segno)) => {
                    listing.partials.insert((timeline, segno), file);
                }
                (WalFileKind::History, _) => {
                    listing.histories.insert(timeline, file);
                }
                _ => listing.backup_histories.push(file),
            }
        }
        Ok(listing)
    }
}
