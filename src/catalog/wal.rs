//! Archived WAL: segments, partial segments, history and backup history files under `wal/`.
//!
//! ```text
//! wal/<TLI><LOG>/<segment>.lz4                  the first 16 hex digits of the name group 4 GB
//! wal/<TLI><LOG>/<segment>.partial.lz4
//! wal/<TLI><LOG>/<segment>.<offset>.backup.lz4
//! wal/history/<TLI>.history.lz4
//! wal/expired.json                              where retention expired WAL, per timeline
//! ```
//! (`.zst` instead of `.lz4` in a zstd repository.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::backup::Deletion;
use super::rollup::{RollupKey, SPANS, group_start};
use super::wal_index::{summary_key, wal_name_of_summary_key};
use super::{
    Catalog, CatalogError, Stored, StoredObject, object_suffix, strip_object_suffix, total_bytes,
};
use crate::codec::{self, CompressionType, DecodeSummary, EncodeSummary};
use crate::pg::wal_name::xlog_file_name;
use crate::pg::{WalFileKind, WalFileName};
use crate::storage::{ObjectMeta, PutMode, PutPayload, StorageError};

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

/// The object key of an archived WAL file, without its suffix: where its summary is too.
pub(super) fn wal_stem(name: &WalFileName) -> String {
    match name.kind() {
        WalFileKind::History => format!("{WAL_PREFIX}history/{name}"),
        _ => format!("{WAL_PREFIX}{}/{name}", &name.as_str()[..16]),
    }
}

/// The object key of an archived WAL file in a repository of `kind`.
pub(super) fn wal_key(name: &WalFileName, kind: CompressionType) -> String {
    wal_stem(name) + object_suffix(kind)
}

/// The WAL file an object key names, if it names one.
pub(super) fn wal_name_of_key(key: &str) -> Option<WalFileName> {
    let stem = strip_object_suffix(key)?;
    let leaf = stem.strip_prefix(WAL_PREFIX)?.rsplit('/').next()?;
    let name = WalFileName::parse(leaf).ok()?;
    (wal_stem(&name) == stem).then_some(name)
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
    /// Complete groups by (timeline, first segment number, span): their segments exist and
    /// are summarised, and are not in `segments` unless listed one by one too.
    pub rollups: BTreeMap<(u32, u64, u64), RollupKey>,
    /// The repository's object format: the keys of segments only a rollup lists.
    pub(super) object_kind: CompressionType,
}

impl WalListing {
    /// Files as a listing of the repository would hold them: for tests that build an
    /// archive's picture without a store.
    #[cfg(test)]
    pub(crate) fn from_files(
        files: impl IntoIterator<Item = (WalFileName, u64)>,
        segment_size: u64,
    ) -> Self {
        let mut listing = WalListing::default();
        for (name, size) in files {
            let key = wal_key(&name, listing.object_kind);
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

    /// Sorts listed rollups in (the first of two keys naming one group wins); anything else
    /// is skipped.
    pub(super) fn add_rollup_metas(&mut self, metas: Vec<ObjectMeta>, segment_size: u64) {
        for meta in metas {
            if let Some(key) = RollupKey::parse(&meta.key, segment_size) {
                self.rollups
                    .entry((key.timeline, key.first_segno, key.span))
                    .or_insert(key);
            }
        }
    }

    /// A listing of every object `metas` names, as an overview sorts it in: for tests that
    /// feed arbitrary listings to what reads one.
    #[cfg(test)]
    pub(crate) fn from_metas(metas: Vec<ObjectMeta>, segment_size: u64) -> Self {
        let mut listing = WalListing::default();
        listing.add_rollup_metas(metas.clone(), segment_size);
        listing.add_metas(metas, segment_size);
        listing
    }

    /// Sorts listed objects in: WAL files and summaries; anything else is skipped.
    pub(super) fn add_metas(&mut self, metas: Vec<ObjectMeta>, segment_size: u64) {
        for meta in metas {
            if let Some(name) = wal_name_of_summary_key(&meta.key) {
                self.summarised.insert(name);
            } else if let Some(name) = wal_name_of_key(&meta.key) {
                self.add(name, meta.key, meta.size, segment_size);
            }
        }
    }

    /// A segment listed one by one (segments only under a rollup are not: see
    /// [`WalListing::has_segment`]).
    pub fn segment(&self, timeline: u32, segno: u64) -> Option<&ArchivedFile> {
        self.segments.get(&(timeline, segno))
    }

    /// The rollup that covers a segment, the larger first.
    pub fn covering(&self, timeline: u32, segno: u64) -> Option<&RollupKey> {
        SPANS.iter().find_map(|&span| {
            self.rollups
                .get(&(timeline, group_start(segno, span), span))
        })
    }

    /// Whether the segment is archived (listed, or under a rollup).
    pub fn has_segment(&self, timeline: u32, segno: u64) -> bool {
        self.segments.contains_key(&(timeline, segno)) || self.covering(timeline, segno).is_some()
    }

    /// The archived segment as an object to read, listed or under a rollup (then with size
    /// 0: only the rollup's content knows it).
    pub fn file(&self, timeline: u32, segno: u64, segment_size: u64) -> Option<ArchivedFile> {
        if let Some(file) = self.segment(timeline, segno) {
            return Some(file.clone());
        }
        self.covering(timeline, segno)?;
        let name = WalFileName::segment(timeline, segno, segment_size)?;
        let key = wal_key(&name, self.object_kind);
        Some(ArchivedFile {
            name,
            object: StoredObject { key, size: 0 },
        })
    }

    /// The first and last segment number of `timeline`, full or partial.
    pub fn segment_bounds(&self, timeline: u32) -> Option<(u64, u64)> {
        let on_timeline = (timeline, 0)..=(timeline, u64::MAX);
        let listed = self
            .segments
            .range(on_timeline.clone())
            .chain(self.partials.range(on_timeline))
            .map(|(&(_, segno), _)| (segno, segno));
        let rolled = self
            .rollups
            .range((timeline, 0, 0)..=(timeline, u64::MAX, u64::MAX))
            .map(|(_, key)| (key.first_segno, key.last_segno()));
        listed
            .chain(rolled)
            .reduce(|(a0, a1), (b0, b1)| (a0.min(b0), a1.max(b1)))
    }

    /// Stored bytes of the timeline's segments and partial segments, listed or rolled up.
    pub fn stored_bytes_on(&self, timeline: u32) -> u64 {
        let on_timeline = (timeline, 0)..=(timeline, u64::MAX);
        let listed = self
            .segments
            .range(on_timeline.clone())
            .chain(self.partials.range(on_timeline))
            .filter(|&(&(_, segno), _)| self.covering(timeline, segno).is_none())
            .map(|(_, file)| file.size());
        let rolled = self
            .rollups
            .range((timeline, 0, 0)..=(timeline, u64::MAX, u64::MAX))
            .map(|(_, key)| key.stored_bytes);
        total_bytes(listed.chain(rolled))
    }

    /// Every (timeline, segment number range) archived after `after` on any timeline, listed
    /// segments as ranges of one.
    pub fn ranges_after(&self, after: u64) -> impl Iterator<Item = (u32, Range<u64>)> + '_ {
        let listed = self
            .segments
            .keys()
            .filter(move |&&(_, s)| s > after)
            .map(|&(t, s)| (t, s..s.saturating_add(1)));
        let rolled = self
            .rollups
            .values()
            .filter(move |k| k.last_segno() > after)
            .map(move |k| {
                let segnos = k.segnos();
                (
                    k.timeline,
                    segnos.start.max(after.saturating_add(1))..segnos.end,
                )
            });
        listed.chain(rolled)
    }

    /// Every timeline with segments, partial segments, rollups or a history file.
    pub fn timelines(&self) -> BTreeSet<u32> {
        let mut timelines: BTreeSet<u32> = self.segments.keys().map(|&(t, _)| t).collect();
        timelines.extend(self.partials.keys().map(|&(t, _)| t));
        timelines.extend(self.histories.keys());
        timelines.extend(self.rollups.keys().map(|&(t, _, _)| t));
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
    /// Lists the WAL archive once, every object (`pitr verify`; overviews use
    /// [`Catalog::wal_overview`]).
    pub async fn wal_listing(&self, segment_size: u64) -> Result<WalListing, CatalogError> {
        let mut listing = WalListing {
            object_kind: self.object_kind().await?,
            ..WalListing::default()
        };
        listing.add_metas(self.storage.list(WAL_PREFIX).await?, segment_size);
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
        let key = wal_key(name, self.object_kind().await?);
        let format = self.object_format(&key).await?;
        let (stored, encoded, ()) = self
            .store_encoded(key, source.display().to_string(), move |staged| {
                let input = File::open(&path).map_err(codec::CodecError::Read)?;
                Ok((codec::encode(&input, staged, format, threads)?, ()))
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
            &wal_key(name, self.object_kind().await?),
            format!("the archived copy of {name}"),
            local,
            out,
        )
        .await
    }

    /// Whether `name` is archived.
    pub async fn has_wal(&self, name: &WalFileName) -> Result<bool, CatalogError> {
        match self
            .storage
            .head(&wal_key(name, self.object_kind().await?))
            .await
        {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes archived WAL files, oldest first as given, each step's summaries after its
    /// files (a summary left by a removal cut short is harmless: retention lists it as an
    /// orphan). Which WAL is redundant is the caller's proof to make (retention).
    pub async fn delete_wal_files(
        &self,
        files: &[ArchivedFile],
        segment_size: u64,
    ) -> Result<Deletion, CatalogError> {
        // Rollups first: none may name a segment that is gone.
        let mut removed: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for file in files {
            if let Some(segno) = file.name.segment_number(segment_size) {
                removed
                    .entry(file.name.timeline())
                    .or_default()
                    .insert(segno);
            }
        }
        for (&timeline, segnos) in &removed {
            for run in runs(segnos) {
                self.delete_rollups_overlapping(timeline, run, segment_size)
                    .await?;
            }
        }
        let map_rollups: BTreeSet<String> = removed
            .iter()
            .flat_map(|(&timeline, segnos)| {
                segnos.iter().flat_map(move |&segno| {
                    SPANS.iter().map(move |&span| {
                        super::block_map::block_map_rollup_key(
                            timeline,
                            group_start(segno, span),
                            span,
                            segment_size,
                        )
                    })
                })
            })
            .collect();
        self.delete_keys(&map_rollups.into_iter().collect::<Vec<_>>())
            .await?;
        let mut done = Deletion::default();
        for step in files.chunks(DELETE_STEP) {
            let keys: Vec<String> = step.iter().map(|f| f.object.key.clone()).collect();
            let deleted = self.delete_keys(&keys).await?;
            let gone = step
                .iter()
                .filter(|f| f.name.kind() != WalFileKind::BackupHistory)
                .filter(|f| !deleted.protected.iter().any(|p| p.key == f.object.key));
            // Their summaries and block maps go with them.
            let summaries: Vec<String> = gone
                .clone()
                .map(|f| summary_key(&f.name))
                .chain(
                    gone.filter(|f| f.name.kind() != WalFileKind::History)
                        .map(|f| super::block_map::block_map_key(&f.name)),
                )
                .collect();
            done.add(deleted);
            // Derived data: not counted.
            self.delete_keys(&summaries).await?;
        }
        // Small groups left whole beside what went get their rollup back, so that the
        // overview's cost stays bounded (a group that lost a segment stays unrolled).
        let small = SPANS[SPANS.len() - 1];
        for (&timeline, segnos) in &removed {
            let large: BTreeSet<u64> = segnos.iter().map(|&s| group_start(s, SPANS[0])).collect();
            for first_large in large {
                for first in (first_large..first_large + SPANS[0]).step_by(small as usize) {
                    if segnos.range(first..first + small).next().is_none() {
                        self.roll_up_group(timeline, first, small, segment_size)
                            .await?;
                    }
                }
            }
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
        let Some(read) = self.read_meta::<ExpiredWal>(EXPIRED_KEY).await? else {
            return Ok(BTreeMap::new());
        };
        let corrupt = |reason: String| CatalogError::Corrupt {
            what: EXPIRED_KEY.into(),
            location: self.location(),
            reason,
        };
        let expired = read.map_err(corrupt)?;
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
        let json = self.seal_meta(EXPIRED_KEY, &record).await?;
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

/// Consecutive segment numbers as ranges.
fn runs(segnos: &BTreeSet<u64>) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    for &segno in segnos {
        match runs.last_mut() {
            Some(run) if run.end == segno => run.end = segno.saturating_add(1),
            _ => runs.push(segno..segno.saturating_add(1)),
        }
    }
    runs
}
