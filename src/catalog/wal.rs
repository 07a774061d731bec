//! Archived WAL: segments, partial segments, history and backup history files under `wal/`.
//!
//! ```text
//! wal/<TLI><LOG>/<segment>.lz4                  the first 16 hex digits of the name group 4 GB
//! wal/<TLI><LOG>/<segment>.partial.lz4
//! wal/<TLI><LOG>/<segment>.<offset>.backup.lz4
//! wal/history/<TLI>.history.lz4
//! wal/expired.json                              where retention expired WAL, per timeline
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::backup::Deletion;
use super::wal_index::{summary_key, wal_name_of_summary_key};
use super::{Catalog, CatalogError, Stored, StoredObject};
use crate::codec::{self, DecodeSummary, EncodeSummary};
use crate::pg::wal_name::xlog_file_name;
use crate::pg::{WalFileKind, WalFileName};
use crate::storage::{PutMode, PutPayload, StorageError, read_all};

pub(super) const WAL_PREFIX: &str = "wal/";
const EXPIRED_KEY: &str = "wal/expired.json";
/// WAL files removed per step: their summaries follow each step.
const DELETE_STEP: usize = 1000;

/// `wal/expired.json`: per timeline, the segment below which retention removed WAL (only
/// backups' own ranges stay there), so that `verify` does not take the gap for lost WAL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ExpiredWal {
    format: u32,
    timelines: Vec<ExpiredTimeline>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ExpiredTimeline {
    timeline: u32,
    /// The first segment not expired.
    expired_before: String,
}

/// The object key of an archived WAL file.
pub(super) fn wal_key(name: &WalFileName) -> String {
    match name.kind() {
        WalFileKind::History => format!("{WAL_PREFIX}history/{name}.lz4"),
        _ => format!("{WAL_PREFIX}{}/{name}.lz4", &name.as_str()[..16]),
    }
}

/// The WAL file an object key names, if it names one.
pub(super) fn wal_name_of_key(key: &str) -> Option<WalFileName> {
    let leaf = key.strip_prefix(WAL_PREFIX)?.rsplit('/').next()?;
    let name = WalFileName::parse(leaf.strip_suffix(".lz4")?).ok()?;
    (wal_key(&name) == key).then_some(name)
}

/// An archived WAL file, as a listing found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedFile {
    pub name: WalFileName,
    pub object: StoredObject,
}

impl ArchivedFile {
    /// Stored (compressed) size.
    pub fn size(&self) -> u64 {
        self.object.size
    }
}

/// What the WAL archive holds: one listing of `wal/` sorted by kind.
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
    /// Files as a listing of the repository would hold them: for tests and tools that build
    /// an archive's picture without a store.
    pub fn from_files(
        files: impl IntoIterator<Item = (WalFileName, u64)>,
        segment_size: u64,
    ) -> Self {
        let mut listing = WalListing::default();
        for (name, size) in files {
            let key = wal_key(&name);
            listing.add(name, key, size, segment_size);
        }
        listing
    }

    fn add(&mut self, name: WalFileName, key: String, size: u64, segment_size: u64) {
        let (timeline, segno) = (name.timeline(), name.segment_number(segment_size));
        let file = ArchivedFile {
            name,
            object: StoredObject { key, size },
        };
        match (file.name.kind(), segno) {
            (WalFileKind::Segment, Some(segno)) => {
                self.segments.insert((timeline, segno), file);
            }
            (WalFileKind::Partial, Some(segno)) => {
                self.partials.insert((timeline, segno), file);
            }
            (WalFileKind::History, _) => {
                self.histories.insert(timeline, file);
            }
            (WalFileKind::BackupHistory, _) => self.backup_histories.push(file),
            // A segment name out of range for this segment size: not WAL of this cluster.
            _ => {}
        }
    }

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
        for meta in self.storage.list(WAL_PREFIX).await? {
            if let Some(name) = wal_name_of_summary_key(&meta.key) {
                listing.summarised.insert(name);
            } else if let Some(name) = wal_name_of_key(&meta.key) {
                listing.add(name, meta.key, meta.size, segment_size);
            }
        }
        Ok(listing)
    }

    /// Stores the WAL file at `source` create-only, compressed by `threads` workers; finds
    /// it stored already rather than replacing it.
    pub async fn store_wal(
        &self,
        name: &WalFileName,
        source: &Path,
        threads: usize,
    ) -> Result<(Stored, EncodeSummary), CatalogError> {
        let path = source.to_owned();
        let (stored, encoded, ()) = self
            .store_encoded(wal_key(name), source.display().to_string(), move |staged| {
                let input = File::open(&path).map_err(codec::CodecError::Read)?;
                Ok((codec::encode(&input, staged, threads)?, ()))
            })
            .await?;
        Ok((stored, encoded))
    }

    /// Streams the archived WAL file `name`, verified, into `out`; `local` names `out` in
    /// messages. Not archived: [`CatalogError::NotFound`].
    pub async fn fetch_wal<W: Write + Send + 'static>(
        &self,
        name: &WalFileName,
        local: &str,
        out: W,
    ) -> Result<(W, DecodeSummary), CatalogError> {
        self.decode_key(
            &wal_key(name),
            format!("the archived copy of {name}"),
            local,
            out,
        )
        .await
    }

    /// Whether `name` is archived.
    pub async fn has_wal(&self, name: &WalFileName) -> Result<bool, CatalogError> {
        match self.storage.head(&wal_key(name)).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the segments, partial segments and backup history files of `timeline` before
    /// segment `before`, with their summaries; history files stay. Returns how many objects
    /// went. Which WAL is redundant is the caller's proof to make (retention).
    pub async fn delete_wal_before(
        &self,
        timeline: u32,
        before: u64,
        segment_size: u64,
    ) -> Result<u64, CatalogError> {
        let mut deleted = 0;
        for meta in self.storage.list(WAL_PREFIX).await? {
            let name = wal_name_of_key(&meta.key).or_else(|| wal_name_of_summary_key(&meta.key));
            let Some(name) = name else { continue };
            if name.kind() == WalFileKind::History || name.timeline() != timeline {
                continue;
            }
            if name
                .segment_number(segment_size)
                .is_some_and(|segno| segno < before)
            {
                self.storage.delete(&meta.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Removes archived WAL files, oldest first as given, each step's summaries after its
    /// files (a summary left by a removal cut short is harmless: retention lists it as an
    /// orphan). Which WAL is redundant is the caller's proof to make (retention).
    pub async fn delete_wal_files(&self, files: &[ArchivedFile]) -> Result<Deletion, CatalogError> {
        let mut done = Deletion::default();
        for step in files.chunks(DELETE_STEP) {
            let keys: Vec<String> = step.iter().map(|f| f.object.key.clone()).collect();
            let deleted = self.delete_keys(&keys).await?;
            let summaries: Vec<String> = step
                .iter()
                .filter(|f| f.name.kind() != WalFileKind::BackupHistory)
                .filter(|f| !deleted.protected.iter().any(|p| p.key == f.object.key))
                .map(|f| summary_key(&f.name))
                .collect();
            done.add(deleted);
            // Summaries are derived data: not counted.
            self.delete_keys(&summaries).await?;
        }
        Ok(done)
    }

    /// Removes the summaries of WAL files that are gone.
    pub async fn delete_wal_summaries(
        &self,
        names: &[WalFileName],
    ) -> Result<Deletion, CatalogError> {
        let keys: Vec<String> = names.iter().map(summary_key).collect();
        self.delete_keys(&keys).await
    }

    /// Per timeline, the segment below which retention expired WAL (`wal/expired.json`).
    pub async fn expired_wal(&self) -> Result<BTreeMap<u32, u64>, CatalogError> {
        let bytes = match read_all(&*self.storage, EXPIRED_KEY).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.into()),
        };
        let corrupt = |reason: String| CatalogError::Corrupt {
            what: EXPIRED_KEY.into(),
            location: self.location(),
            reason,
        };
        let expired: ExpiredWal = super::sealed::unseal(&bytes).map_err(corrupt)?;
        let segment_size = self.identity().await?.wal_segment_size;
        let mut map = BTreeMap::new();
        for entry in expired.timelines {
            let segno = WalFileName::parse(&entry.expired_before)
                .ok()
                .filter(|n| n.kind() == WalFileKind::Segment && n.timeline() == entry.timeline)
                .and_then(|n| n.segment_number(segment_size))
                .ok_or_else(|| {
                    corrupt(format!("'{}' is not a segment name", entry.expired_before))
                })?;
            map.insert(entry.timeline, segno);
        }
        Ok(map)
    }

    /// Records that WAL below `expired_before` (per timeline) is being expired; only ever
    /// raises a timeline's mark. Written before the removal, so that a removal cut short is
    /// already covered.
    pub async fn record_expired_wal(
        &self,
        expired_before: &BTreeMap<u32, u64>,
        segment_size: u64,
    ) -> Result<(), CatalogError> {
        let mut merged = self.expired_wal().await?;
        let before = merged.clone();
        for (&timeline, &segno) in expired_before {
            let mark = merged.entry(timeline).or_insert(segno);
            *mark = (*mark).max(segno);
        }
        if merged == before {
            return Ok(());
        }
        let record = ExpiredWal {
            format: 1,
            timelines: merged
                .iter()
                .map(|(&timeline, &segno)| ExpiredTimeline {
                    timeline,
                    expired_before: xlog_file_name(timeline, segno, segment_size),
                })
                .collect(),
        };
        let json = super::sealed::seal(&record);
        self.storage
            .put(
                EXPIRED_KEY,
                PutPayload::from_bytes(json),
                PutMode::Overwrite,
            )
            .await?;
        Ok(())
    }
}
