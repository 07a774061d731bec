//! Rollups of the WAL index: one object per complete, aligned group of consecutive segments
//! of one timeline, holding each segment's object size and summary, so that an overview of
//! the archive (`list`, `check`, `metrics`, the restore pre-flight) costs one listing per
//! thousand groups and reads only the groups it needs, not one summary per segment.
//!
//! ```text
//! wal/rollup/<TLI>/<first segment>.<span>.<last commit>.<stored bytes>.<restore points>.json
//! wal/rollup/00000001/000000010000000000000100.256.c1795428131120334.b4194304000.r0.json
//! ```
//! Groups are `span` segment numbers aligned on a multiple of `span`: 256 (for 16 MB
//! segments, one `wal/<TLI><LOG>/` folder) and 16, so that the group being filled at the
//! archive's end costs at most 15 single summaries. The key itself carries what overviews
//! decide on without reading the object: the group, the newest commit time in it (µs since
//! the epoch, `c-` for none), the stored bytes of its segments and whether it holds restore
//! points. Listing `wal/rollup/` shows which groups are complete on each timeline.
//!
//! Rollups are derived data, like summaries: written when a group is complete (by
//! archive-push when it stores a group's last segment, by `pitr verify` for any group
//! without one), rewritten freely, removed before any segment of their group is removed. A
//! missing or damaged rollup only means its group is listed and read segment by segment.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};

use super::wal::{WAL_PREFIX, WalListing, wal_name_of_key};
use super::wal_index::wal_name_of_summary_key;
use super::{Catalog, CatalogError};
use crate::pg::wal_name::{segments_per_xlog_id, xlog_file_name};
use crate::pg::wal_summary::SegmentSummary;
use crate::pg::{WalFileKind, WalFileName};
use crate::storage::{ObjectMeta, PutMode, PutPayload, StorageError, read_all};

pub const ROLLUP_FORMAT: u32 = 1;
/// Group sizes, largest first: an overview prefers the larger.
pub const SPANS: [u64; 2] = [256, 16];
const SMALL_SPAN: u64 = 16;
const ROLLUP_PREFIX: &str = "wal/rollup/";
/// Objects read at once when a rollup is built.
const READ_AHEAD: usize = 16;

/// A rollup as its key names it: enough to decide without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollupKey {
    pub timeline: u32,
    pub first_segno: u64,
    pub span: u64,
    /// The newest commit time of any segment in the group.
    pub last_commit: Option<DateTime<Utc>>,
    /// Stored bytes of the group's segments.
    pub stored_bytes: u64,
    /// Whether any segment of the group holds a restore point.
    pub restore_points: bool,
}

impl RollupKey {
    /// The group's segment numbers. A parsed key's are a segment name's (below 2^44) and a
    /// span of [`SPANS`]; saturating keeps a key built otherwise from panicking.
    pub fn segnos(&self) -> Range<u64> {
        self.first_segno..self.first_segno.saturating_add(self.span)
    }

    /// The group's last segment number.
    pub fn last_segno(&self) -> u64 {
        self.segnos().end.saturating_sub(1).max(self.first_segno)
    }

    pub(super) fn key(&self, segment_size: u64) -> String {
        let commit = self
            .last_commit
            .map_or_else(|| "-".to_owned(), |t| t.timestamp_micros().to_string());
        format!(
            "{ROLLUP_PREFIX}{:08X}/{}.{}.c{commit}.b{}.r{}.json",
            self.timeline,
            xlog_file_name(self.timeline, self.first_segno, segment_size),
            self.span,
            self.stored_bytes,
            u8::from(self.restore_points)
        )
    }

    /// The rollup a key names; none for any other key, or one whose group is not aligned.
    pub(super) fn parse(key: &str, segment_size: u64) -> Option<Self> {
        let rest = key.strip_prefix(ROLLUP_PREFIX)?.strip_suffix(".json")?;
        let (_, leaf) = rest.split_once('/')?;
        let mut fields = leaf.split('.');
        let name = WalFileName::parse(fields.next()?).ok()?;
        let span: u64 = fields.next()?.parse().ok()?;
        let commit = fields.next()?.strip_prefix('c')?;
        let stored_bytes = fields.next()?.strip_prefix('b')?.parse().ok()?;
        let restore_points = match fields.next()? {
            "r0" => false,
            "r1" => true,
            _ => return None,
        };
        let last_commit = match commit {
            "-" => None,
            micros => Some(DateTime::from_timestamp_micros(micros.parse().ok()?)?),
        };
        let first_segno = name.segment_number(segment_size)?;
        let parsed = RollupKey {
            timeline: name.timeline(),
            first_segno,
            span,
            last_commit,
            stored_bytes,
            restore_points,
        };
        let valid = name.kind() == WalFileKind::Segment
            && SPANS.contains(&span)
            && first_segno % span == 0
            && fields.next().is_none()
            && parsed.key(segment_size) == key;
        valid.then_some(parsed)
    }
}

/// The stored rollup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    pub format: u32,
    pub timeline: u32,
    pub first_segment: String,
    pub span: u64,
    /// Every segment of the group, in order.
    pub segments: Vec<RolledSegment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledSegment {
    pub segment: String,
    /// Stored (compressed) size of the segment's object.
    pub size: u64,
    #[serde(flatten)]
    pub summary: SegmentSummary,
}

impl Rollup {
    pub fn new(
        timeline: u32,
        first_segno: u64,
        segment_size: u64,
        segments: Vec<RolledSegment>,
    ) -> Self {
        Rollup {
            format: ROLLUP_FORMAT,
            timeline,
            first_segment: xlog_file_name(timeline, first_segno, segment_size),
            span: segments.len() as u64,
            segments,
        }
    }

    /// The key that names this rollup, with its aggregates.
    pub fn key(&self, segment_size: u64) -> Option<RollupKey> {
        let first = WalFileName::parse(&self.first_segment).ok()?;
        Some(RollupKey {
            timeline: self.timeline,
            first_segno: first.segment_number(segment_size)?,
            span: self.span,
            last_commit: self
                .segments
                .iter()
                .filter_map(|s| s.summary.last_commit_time)
                .max(),
            stored_bytes: super::total_bytes(self.segments.iter().map(|s| s.size)),
            restore_points: self
                .segments
                .iter()
                .any(|s| !s.summary.restore_points.is_empty()),
        })
    }

    /// Proves that this is the rollup `expected` names: same group, every segment in order,
    /// same aggregates.
    pub fn check(&self, expected: &RollupKey, segment_size: u64) -> Result<(), String> {
        if self.format != ROLLUP_FORMAT {
            return Err(format!("format {} is not {ROLLUP_FORMAT}", self.format));
        }
        let names_in_order = self
            .segments
            .iter()
            .zip(expected.segnos())
            .all(|(s, segno)| s.segment == xlog_file_name(expected.timeline, segno, segment_size));
        if !names_in_order || self.segments.len() as u64 != expected.span {
            return Err("its segments are not the group's".into());
        }
        if self.key(segment_size).as_ref() != Some(expected) {
            return Err("its content does not match its name".into());
        }
        Ok(())
    }
}

/// The first segment number of the group of `span` that holds `segno`.
pub fn group_start(segno: u64, span: u64) -> u64 {
    segno - segno % span
}

fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    &a[..n]
}

/// A key prefix under which every WAL object of the group lies (and maybe others: filter).
pub(super) fn group_data_prefix(timeline: u32, first: u64, span: u64, segment_size: u64) -> String {
    let a = xlog_file_name(timeline, first, segment_size);
    let b = xlog_file_name(timeline, first + span - 1, segment_size);
    if a[..16] == b[..16] {
        format!("{WAL_PREFIX}{}/{}", &a[..16], common_prefix(&a, &b))
    } else {
        format!("{WAL_PREFIX}{}", common_prefix(&a[..16], &b[..16]))
    }
}

/// A key prefix under which every rollup inside the group lies (and maybe others: filter).
fn group_rollup_prefix(timeline: u32, first: u64, span: u64, segment_size: u64) -> String {
    let a = xlog_file_name(timeline, first, segment_size);
    let b = xlog_file_name(timeline, first + span - 1, segment_size);
    format!("{ROLLUP_PREFIX}{timeline:08X}/{}", common_prefix(&a, &b))
}

/// The WAL folder a `list_folders` entry names: its timeline and segment numbers.
fn folder_segnos(folder: &str, segment_size: u64) -> Option<(u32, Range<u64>)> {
    let dir = folder.strip_prefix(WAL_PREFIX)?.strip_suffix('/')?;
    if dir.len() != 16 || !dir.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let timeline = u32::from_str_radix(&dir[..8], 16).ok()?;
    let log = u64::from_str_radix(&dir[8..], 16).ok()?;
    let per_id = segments_per_xlog_id(segment_size);
    let first = log.checked_mul(per_id)?;
    Some((timeline, first..first.checked_add(per_id)?))
}

/// What an overview must list one by one, given the rollups: per WAL folder, the folder
/// itself or the prefixes of its groups that rollups do not cover. Pure.
pub fn prefixes_to_list(
    folders: &[String],
    rollups: &BTreeMap<(u32, u64, u64), RollupKey>,
    segment_size: u64,
) -> Vec<String> {
    let covered = |timeline: u32, block: u64| {
        rollups.contains_key(&(timeline, group_start(block, 256), 256))
            || rollups.contains_key(&(timeline, block, SMALL_SPAN))
    };
    let range_covered = |timeline: u32, range: &Range<u64>| {
        let mut block = group_start(range.start, SMALL_SPAN);
        while block < range.end {
            if !covered(timeline, block) {
                return false;
            }
            block += SMALL_SPAN;
        }
        true
    };
    let mut prefixes = Vec::new();
    for folder in folders {
        let Some((timeline, range)) = folder_segnos(folder, segment_size) else {
            continue;
        };
        if range.end - range.start <= 256 {
            if !range_covered(timeline, &range) {
                prefixes.push(folder.clone());
            }
            continue;
        }
        // A folder of many groups (segments under 16 MB): only the groups not covered.
        let mut first = range.start;
        while first < range.end {
            if !range_covered(timeline, &(first..first + 256)) {
                prefixes.push(group_data_prefix(timeline, first, 256, segment_size));
            }
            first += 256;
        }
    }
    prefixes
}

/// What [`Catalog::repair_rollups`] did: keys written, removed (group no longer whole), and
/// found damaged (then written again when the group is whole).
#[derive(Clone, Debug, Default)]
pub struct RollupRepair {
    pub written: Vec<String>,
    pub removed: Vec<String>,
    pub damaged: Vec<(String, String)>,
}

/// The objects of one group that a listing found.
#[derive(Default)]
struct GroupObjects {
    /// Segment number → stored size.
    segments: BTreeMap<u64, u64>,
    summarised: BTreeSet<u64>,
    partial: bool,
}

impl GroupObjects {
    fn of(
        metas: &[ObjectMeta],
        timeline: u32,
        segnos: &Range<u64>,
        segment_size: u64,
    ) -> GroupObjects {
        let mut group = GroupObjects::default();
        for meta in metas {
            let (name, summary) = match wal_name_of_key(&meta.key) {
                Some(name) => (name, false),
                None => match wal_name_of_summary_key(&meta.key) {
                    Some(name) => (name, true),
                    None => continue,
                },
            };
            let Some(segno) = name.segment_number(segment_size) else {
                continue;
            };
            if name.timeline() != timeline || !segnos.contains(&segno) {
                continue;
            }
            match (name.kind(), summary) {
                (WalFileKind::Segment, false) => {
                    group.segments.insert(segno, meta.size);
                }
                (WalFileKind::Segment, true) => {
                    group.summarised.insert(segno);
                }
                (WalFileKind::Partial, _) => group.partial = true,
                _ => {}
            }
        }
        group
    }

    /// Every segment of the group is there with its summary, and no partial segment.
    fn complete(&self, segnos: &Range<u64>) -> bool {
        !self.partial
            && segnos
                .clone()
                .all(|s| self.segments.contains_key(&s) && self.summarised.contains(&s))
    }
}

impl Catalog {
    /// Writes the rollups of the groups that segment `name` is the last of, when they are
    /// complete; returns those written. archive-push calls it after storing a segment and
    /// its summary: archiving runs in order, so a group completes with its last segment
    /// (`pitr verify` writes any rollup a push left out).
    pub async fn roll_up_after(
        &self,
        name: &WalFileName,
        segment_size: u64,
    ) -> Result<Vec<RollupKey>, CatalogError> {
        let mut written = Vec::new();
        if name.kind() != WalFileKind::Segment {
            return Ok(written);
        }
        let Some(segno) = name.segment_number(segment_size) else {
            return Ok(written);
        };
        // The small group first: the large one is built from the small ones.
        for span in SPANS.iter().rev() {
            if (segno + 1) % span == 0
                && let Some(key) = self
                    .roll_up_group(name.timeline(), segno + 1 - span, *span, segment_size)
                    .await?
            {
                written.push(key);
            }
        }
        Ok(written)
    }

    /// Writes the rollup of a group if every segment of it is archived and summarised (then
    /// removes other rollups of the group, and the small ones inside a large one).
    pub async fn roll_up_group(
        &self,
        timeline: u32,
        first: u64,
        span: u64,
        segment_size: u64,
    ) -> Result<Option<RollupKey>, CatalogError> {
        let segnos = first..first + span;
        let existing: Vec<(String, RollupKey)> = self
            .storage
            .list(&group_rollup_prefix(timeline, first, span, segment_size))
            .await?
            .into_iter()
            .filter_map(|meta| {
                let key = RollupKey::parse(&meta.key, segment_size)?;
                (key.timeline == timeline
                    && key.first_segno >= first
                    && key.first_segno + key.span <= first + span)
                    .then_some((meta.key, key))
            })
            .collect();
        let mut segments = None;
        if span > SMALL_SPAN {
            segments = self
                .segments_of_small_rollups(&existing, &segnos, segment_size)
                .await?;
        }
        let segments = match segments {
            Some(segments) => segments,
            None => match self
                .segments_of_summaries(timeline, &segnos, segment_size)
                .await?
            {
                Some(segments) => segments,
                None => return Ok(None),
            },
        };
        let rollup = Rollup::new(timeline, first, segment_size, segments);
        let Some(key) = rollup.key(segment_size) else {
            return Ok(None);
        };
        let object_key = key.key(segment_size);
        self.storage
            .put(
                &object_key,
                PutPayload::from_bytes(self.seal_meta(&object_key, &rollup).await?),
                PutMode::Overwrite,
            )
            .await?;
        // Older rollups of this group, and the small ones it replaces (at once: on S3 each
        // is a round trip archive-push waits for).
        stream::iter(existing.iter().filter(|(k, _)| *k != object_key))
            .map(|(other, _)| self.storage.delete(other))
            .buffer_unordered(READ_AHEAD)
            .try_collect::<Vec<()>>()
            .await?;
        // The group's block maps as one, for incremental backups (derived too: without it
        // they read the group's maps one by one).
        match self
            .roll_up_block_maps(timeline, first, span, segment_size)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("the block maps of {object_key}'s group are not all there")
            }
            Err(e) => tracing::warn!("cannot roll up the block maps of {object_key}'s group: {e}"),
        }
        Ok(Some(key))
    }

    /// The segments of a large group from the small rollups inside it, if all are there
    /// and intact.
    async fn segments_of_small_rollups(
        &self,
        existing: &[(String, RollupKey)],
        segnos: &Range<u64>,
        segment_size: u64,
    ) -> Result<Option<Vec<RolledSegment>>, CatalogError> {
        let mut small: BTreeMap<u64, &RollupKey> = BTreeMap::new();
        for (_, key) in existing.iter().filter(|(_, k)| k.span == SMALL_SPAN) {
            small.insert(key.first_segno, key);
        }
        let wanted: Vec<u64> = segnos.clone().step_by(SMALL_SPAN as usize).collect();
        if wanted.iter().any(|f| !small.contains_key(f)) {
            return Ok(None);
        }
        let read: Vec<Option<Rollup>> = stream::iter(wanted.iter().map(|f| small[f]))
            .map(|key| self.read_rollup(key, segment_size))
            .buffered(READ_AHEAD)
            .try_collect()
            .await?;
        let mut segments = Vec::with_capacity((segnos.end - segnos.start) as usize);
        for rollup in read {
            let Some(rollup) = rollup else {
                return Ok(None);
            };
            segments.extend(rollup.segments);
        }
        Ok(Some(segments))
    }

    /// The segments of a group from a listing of it and each segment's summary; none unless
    /// the group is complete.
    async fn segments_of_summaries(
        &self,
        timeline: u32,
        segnos: &Range<u64>,
        segment_size: u64,
    ) -> Result<Option<Vec<RolledSegment>>, CatalogError> {
        let prefix = group_data_prefix(
            timeline,
            segnos.start,
            segnos.end - segnos.start,
            segment_size,
        );
        let metas = self.storage.list(&prefix).await?;
        let group = GroupObjects::of(&metas, timeline, segnos, segment_size);
        if !group.complete(segnos) {
            return Ok(None);
        }
        let read: Vec<Option<RolledSegment>> = stream::iter(segnos.clone())
            .map(|segno| {
                let name = WalFileName::segment(timeline, segno, segment_size);
                let size = group.segments.get(&segno).copied();
                async move {
                    let (Some(name), Some(size)) = (name, size) else {
                        return Ok(None);
                    };
                    let summary = self.segment_summary(&name).await?;
                    Ok::<_, CatalogError>(summary.map(|summary| RolledSegment {
                        segment: name.as_str().to_owned(),
                        size,
                        summary,
                    }))
                }
            })
            .buffered(READ_AHEAD)
            .try_collect()
            .await?;
        Ok(read.into_iter().collect())
    }

    /// The rollup a key names, checked; none (with a warning) when it is gone or damaged, so
    /// that the caller lists its group instead.
    pub async fn read_rollup(
        &self,
        key: &RollupKey,
        segment_size: u64,
    ) -> Result<Option<Rollup>, CatalogError> {
        let object_key = key.key(segment_size);
        let bytes = match read_all(&*self.storage, &object_key).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let checked = self
            .unseal_meta::<Rollup>(&object_key, bytes)
            .await?
            .and_then(|rollup| rollup.check(key, segment_size).map(|()| rollup));
        match checked {
            Ok(rollup) => Ok(Some(rollup)),
            Err(reason) => {
                tracing::warn!(
                    "rollup {object_key} is damaged ({reason}); reading its segments one by one"
                );
                Ok(None)
            }
        }
    }

    /// Whether a stored rollup is damaged, and why (`pitr verify`).
    pub async fn rollup_damage(
        &self,
        key: &RollupKey,
        segment_size: u64,
    ) -> Result<Option<String>, CatalogError> {
        let object_key = key.key(segment_size);
        let bytes = match read_all(&*self.storage, &object_key).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(self
            .unseal_meta::<Rollup>(&object_key, bytes)
            .await?
            .and_then(|rollup| rollup.check(key, segment_size))
            .err())
    }

    /// The archive as overviews need it, at a cost that grows with the number of groups,
    /// not segments: the WAL folders (one delimiter listing), the rollup keys, the history
    /// files, and one by one only the objects of groups no rollup covers (the group being
    /// filled, the first of each timeline, gaps). Segments under rollups are not
    /// materialised: [`WalListing::rollups`] stands for them.
    pub async fn wal_overview(
        &self,
        segment_size: u64,
        jobs: usize,
    ) -> Result<WalListing, CatalogError> {
        let history_prefix = format!("{WAL_PREFIX}history/");
        let (folders, rollup_metas, history_metas) = tokio::try_join!(
            self.storage.list_folders(WAL_PREFIX),
            self.storage.list(ROLLUP_PREFIX),
            self.storage.list(&history_prefix),
        )?;
        let mut listing = WalListing {
            object_kind: self.object_kind().await?,
            ..WalListing::default()
        };
        listing.add_rollup_metas(rollup_metas, segment_size);
        listing.add_metas(history_metas, segment_size);
        let prefixes = prefixes_to_list(&folders, &listing.rollups, segment_size);
        let listed: Vec<Vec<ObjectMeta>> = stream::iter(prefixes)
            .map(|prefix| async move { self.storage.list(&prefix).await })
            .buffer_unordered(jobs.max(1))
            .try_collect()
            .await?;
        for metas in listed {
            listing.add_metas(metas, segment_size);
        }
        Ok(listing)
    }

    /// Lists a group one object at a time into `listing` (a rollup of it could not be read).
    pub async fn list_group_into(
        &self,
        listing: &mut WalListing,
        timeline: u32,
        first: u64,
        span: u64,
        segment_size: u64,
    ) -> Result<(), CatalogError> {
        let prefix = group_data_prefix(timeline, first, span, segment_size);
        let metas = self.storage.list(&prefix).await?;
        let segnos = first..first + span;
        let metas = metas
            .into_iter()
            .filter(|meta| {
                wal_name_of_key(&meta.key)
                    .or_else(|| wal_name_of_summary_key(&meta.key))
                    .is_some_and(|name| {
                        name.timeline() == timeline
                            && name
                                .segment_number(segment_size)
                                .is_some_and(|s| segnos.contains(&s))
                    })
            })
            .collect();
        listing.add_metas(metas, segment_size);
        Ok(())
    }

    /// Brings the rollups in line with a full listing (`pitr verify`): removes those whose
    /// group is no longer whole, writes again those that are damaged, and writes those that
    /// complete groups lack. Returns what it did.
    pub async fn repair_rollups(
        &self,
        listing: &WalListing,
        segment_size: u64,
    ) -> Result<RollupRepair, CatalogError> {
        let mut repair = RollupRepair::default();
        let whole = |timeline: u32, first: u64, span: u64| {
            (first..first + span).all(|s| listing.segments.contains_key(&(timeline, s)))
                && !(first..first + span).any(|s| listing.partials.contains_key(&(timeline, s)))
        };
        let mut present: BTreeSet<(u32, u64, u64)> = BTreeSet::new();
        for meta in self.storage.list(ROLLUP_PREFIX).await? {
            let Some(key) = RollupKey::parse(&meta.key, segment_size) else {
                continue;
            };
            if !whole(key.timeline, key.first_segno, key.span) {
                self.storage.delete(&meta.key).await?;
                repair.removed.push(meta.key);
                continue;
            }
            if let Some(reason) = self.rollup_damage(&key, segment_size).await? {
                repair.damaged.push((meta.key.clone(), reason));
                self.storage.delete(&meta.key).await?;
                continue;
            }
            present.insert((key.timeline, key.first_segno, key.span));
        }
        // Candidate groups, large first: every segment listed (`roll_up_group` checks the
        // summaries); a small group inside a whole large one needs no rollup of its own.
        for span in SPANS {
            let candidates: BTreeSet<(u32, u64)> = listing
                .segments
                .keys()
                .map(|&(timeline, segno)| (timeline, group_start(segno, span)))
                .collect();
            for (timeline, first) in candidates {
                let large = (timeline, group_start(first, SPANS[0]), SPANS[0]);
                if present.contains(&(timeline, first, span))
                    || present.contains(&large)
                    || !whole(timeline, first, span)
                {
                    continue;
                }
                if let Some(key) = self
                    .roll_up_group(timeline, first, span, segment_size)
                    .await?
                {
                    present.insert((timeline, first, span));
                    repair.written.push(key.key(segment_size));
                }
            }
        }
        Ok(repair)
    }

    /// Removes the rollups of `timeline` whose group overlaps segments `segnos`. Any removal
    /// of segments calls it first, so that no rollup ever names a removed segment (retention
    /// removing WAL between two kept ranges included); returns how many went.
    pub async fn delete_rollups_overlapping(
        &self,
        timeline: u32,
        segnos: Range<u64>,
        segment_size: u64,
    ) -> Result<u64, CatalogError> {
        let mut deleted = 0;
        for meta in self
            .storage
            .list(&format!("{ROLLUP_PREFIX}{timeline:08X}/"))
            .await?
        {
            let Some(key) = RollupKey::parse(&meta.key, segment_size) else {
                continue;
            };
            let group = key.segnos();
            if key.timeline == timeline && group.start < segnos.end && segnos.start < group.end {
                self.storage.delete(&meta.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests;
