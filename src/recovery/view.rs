//! The archive as recovery sees it: the overview (listing and rollups), the timeline
//! histories, and the summaries read so far. Loading and summarising go through the
//! catalog; walking is pure.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt, TryStreamExt, stream};

use crate::catalog::rollup::{RollupKey, SPANS};
use crate::catalog::wal::{ArchivedFile, WalListing};
use crate::catalog::{Catalog, CatalogError, OpenedObject, RepositoryIdentity, total_bytes};
use crate::pg::timeline::{HistoryEntry, TimelineSpan, parse_history, timeline_of_segment};
use crate::pg::wal_name::xlog_file_name;
use crate::pg::wal_summary::{SegmentSummarizer, SegmentSummary};
use crate::pg::xact_end::XactEnd;
use crate::pg::{Lsn, WalFileName, WalWriter};

use super::walk::{SegmentRuns, Walk};

/// Listings and rollup reads in flight when the view loads.
const LOAD_JOBS: usize = 8;

/// The archive's overview and history files, the summaries read so far, and what decoding
/// segments for an xid target found.
pub struct ArchiveView {
    pub segment_size: u64,
    pub(super) block_size: usize,
    pub listing: WalListing,
    pub histories: BTreeMap<u32, Vec<HistoryEntry>>,
    summaries: HashMap<WalFileName, SegmentSummary>,
    /// Stored sizes of segments known from a rollup's content.
    sizes: HashMap<(u32, u64), u64>,
    /// Rollups whose content was read (or found unusable).
    loaded_rollups: HashSet<(u32, u64, u64)>,
    /// (segment, xid) → the end of that transaction in that segment, if it is there.
    xact_ends: HashMap<(WalFileName, u32), Option<XactEnd>>,
}

/// A stretch of a walk: a whole rolled-up group, or one segment.
#[derive(Clone, Debug)]
pub enum Block {
    Group(RollupKey),
    Segment(u32, u64),
}

/// Which summaries of a walk a decision reads; whole groups are otherwise decided on their
/// rollup's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Needed {
    Nothing,
    /// The segments outside whole groups (the groups' keys give the rest).
    Outline,
    /// The outline up to the first group with a commit after the time, and that group.
    FirstCommitAfter(DateTime<Utc>),
    /// The outline and the groups that hold restore points.
    RestorePoints,
    Everything,
}

impl ArchiveView {
    /// A view of a listing whose history files were read already.
    pub fn new(
        identity: &RepositoryIdentity,
        listing: WalListing,
        histories: BTreeMap<u32, Vec<HistoryEntry>>,
    ) -> Self {
        ArchiveView {
            segment_size: identity.wal_segment_size,
            block_size: identity.wal_block_size as usize,
            listing,
            histories,
            summaries: HashMap::new(),
            sizes: HashMap::new(),
            loaded_rollups: HashSet::new(),
            xact_ends: HashMap::new(),
        }
    }

    /// The archive's overview (`Catalog::wal_overview`: its cost grows with the number of
    /// rolled-up groups, not of segments) and its history files.
    pub async fn load(
        catalog: &Catalog,
        identity: &RepositoryIdentity,
    ) -> Result<Self, CatalogError> {
        let listing = catalog
            .wal_overview(identity.wal_segment_size, LOAD_JOBS)
            .await?;
        Self::with_histories(catalog, identity, listing).await
    }

    /// Every archived file listed one by one, and the history files: for retention, which
    /// must name each file it removes.
    pub async fn load_full(
        catalog: &Catalog,
        identity: &RepositoryIdentity,
    ) -> Result<Self, CatalogError> {
        let listing = catalog.wal_listing(identity.wal_segment_size).await?;
        Self::with_histories(catalog, identity, listing).await
    }

    async fn with_histories(
        catalog: &Catalog,
        identity: &RepositoryIdentity,
        listing: WalListing,
    ) -> Result<Self, CatalogError> {
        let read: Vec<(u32, Vec<HistoryEntry>)> =
            stream::iter(&listing.histories)
                .map(|(&timeline, file)| async move {
                    let what = format!("history file {}", file.name);
                    let text = catalog.read_object(&file.object, what.clone()).await?;
                    let entries = parse_history(timeline, &String::from_utf8_lossy(&text))
                        .map_err(|reason| CatalogError::Corrupt {
                            what,
                            location: catalog.location(),
                            reason,
                        })?;
                    Ok::<_, CatalogError>((timeline, entries))
                })
                .buffered(LOAD_JOBS)
                .try_collect()
                .await?;
        Ok(ArchiveView::new(
            identity,
            listing,
            read.into_iter().collect(),
        ))
    }

    /// Takes the newest tail `pitr receive-wal` uploaded of each segment not archived whole
    /// for that segment (restore, list): recovery then reaches the last commit the
    /// repository holds. Returns the tails taken.
    pub async fn include_tails(
        &mut self,
        catalog: &Catalog,
    ) -> Result<Vec<crate::catalog::tail::StoredTail>, CatalogError> {
        let mut newest: BTreeMap<WalFileName, crate::catalog::tail::StoredTail> = BTreeMap::new();
        for tail in catalog.tails().await? {
            // Sorted by length: the last of a segment wins.
            newest.insert(tail.segment.clone(), tail);
        }
        let mut taken = Vec::new();
        for (segment, tail) in newest {
            let Some(segno) = segment.segment_number(self.segment_size) else {
                continue;
            };
            if self.file(segment.timeline(), segno).is_some() {
                continue;
            }
            self.listing
                .segments
                .insert((segment.timeline(), segno), tail.as_segment());
            taken.push(tail);
        }
        Ok(taken)
    }

    /// Records a summary computed elsewhere (tests).
    #[cfg(test)]
    pub(crate) fn insert_summary(&mut self, name: WalFileName, summary: SegmentSummary) {
        self.summaries.insert(name, summary);
    }

    /// Records what decoding `name` for transaction `xid` found (none: it does not end there).
    pub fn insert_xact_end(&mut self, name: WalFileName, xid: u32, end: Option<XactEnd>) {
        self.xact_ends.insert((name, xid), end);
    }

    /// Whether `file` was decoded for transaction `xid` already.
    pub fn searched_for_xid(&self, file: &ArchivedFile, xid: u32) -> bool {
        self.xact_ends.contains_key(&(file.name.clone(), xid))
    }

    /// The end of transaction `xid` in `file`, if decoding found it there.
    pub fn xact_end(&self, file: &ArchivedFile, xid: u32) -> Option<&XactEnd> {
        self.xact_ends.get(&(file.name.clone(), xid))?.as_ref()
    }

    /// Where decoding found transaction `xid` to end: (segment, end).
    pub fn xact_ends_of(&self, xid: u32) -> impl Iterator<Item = (&WalFileName, &XactEnd)> {
        self.xact_ends
            .iter()
            .filter(move |((_, x), _)| *x == xid)
            .filter_map(|((name, _), end)| Some((name, end.as_ref()?)))
    }

    /// The timelines recovery to `target` passes through; none without its history file.
    pub fn path(&self, target: u32) -> Option<Vec<TimelineSpan>> {
        if target == 1 {
            return Some(crate::pg::timeline::timeline_path(1, &[]));
        }
        let history = self.histories.get(&target)?;
        Some(crate::pg::timeline::timeline_path(target, history))
    }

    /// `recovery_target_timeline = 'latest'` from `from`: PostgreSQL probes upward for
    /// history files (`findNewestTimeLine`).
    pub fn latest_timeline(&self, from: u32) -> u32 {
        let mut newest = from;
        while newest < u32::MAX && self.histories.contains_key(&(newest + 1)) {
            newest += 1;
        }
        newest
    }

    /// The segments recovery along `path` reads from `start` on: whole rolled-up groups are
    /// stepped over at once.
    pub fn walk(&self, path: &[TimelineSpan], start: Lsn) -> Walk {
        let first_segno = start.segment_number(self.segment_size);
        let mut segno = first_segno;
        let mut segments = SegmentRuns::new(self.segment_size);
        loop {
            let timeline = timeline_of_segment(path, segno, self.segment_size);
            let next = match self.listing.covering(timeline, segno) {
                // The path stays on this timeline to the group's end: all of it is there.
                Some(key)
                    if timeline_of_segment(path, key.segnos().end - 1, self.segment_size)
                        == timeline =>
                {
                    key.segnos().end
                }
                Some(_) => segno + 1,
                None if self.listing.segment(timeline, segno).is_some() => segno + 1,
                None => break,
            };
            segments.push(timeline, segno..next);
            segno = next;
        }
        let timeline = timeline_of_segment(path, segno, self.segment_size);
        let gap = self.listing.ranges_after(segno).any(|(t, range)| {
            range
                .into_iter()
                .any(|s| timeline_of_segment(path, s, self.segment_size) == t)
        });
        Walk {
            first_segno,
            segments,
            missing: xlog_file_name(timeline, segno, self.segment_size),
            missing_segno: segno,
            gap,
        }
    }

    /// The walk in blocks: whole rolled-up groups inside one run, single segments elsewhere.
    pub fn blocks(&self, runs: &SegmentRuns) -> Vec<Block> {
        let mut blocks = Vec::new();
        for (timeline, range) in &runs.runs {
            let mut segno = range.start;
            while segno < range.end {
                let whole = SPANS.iter().find_map(|&span| {
                    (segno % span == 0 && segno + span <= range.end)
                        .then(|| self.listing.rollups.get(&(*timeline, segno, span)))
                        .flatten()
                });
                match whole {
                    Some(key) => {
                        segno += key.span;
                        blocks.push(Block::Group(key.clone()));
                    }
                    None => {
                        blocks.push(Block::Segment(*timeline, segno));
                        segno += 1;
                    }
                }
            }
        }
        blocks
    }

    fn name_of(&self, timeline: u32, segno: u64) -> Option<WalFileName> {
        WalFileName::segment(timeline, segno, self.segment_size)
    }

    /// The summary of a segment, if read.
    pub fn summary_of(&self, timeline: u32, segno: u64) -> Option<&SegmentSummary> {
        self.summaries.get(&self.name_of(timeline, segno)?)
    }

    pub fn summary(&self, file: &ArchivedFile) -> Option<&SegmentSummary> {
        self.summaries.get(&file.name)
    }

    /// The archived segment, with its stored size when known.
    pub fn file(&self, timeline: u32, segno: u64) -> Option<ArchivedFile> {
        let mut file = self.listing.file(timeline, segno, self.segment_size)?;
        if let Some(&size) = self.sizes.get(&(timeline, segno)) {
            file.object.size = size;
        }
        Some(file)
    }

    /// The segments of `runs` as objects to read (materialised: for the ranges a
    /// decision decodes, not for overviews).
    pub fn files(&self, runs: &SegmentRuns) -> Vec<ArchivedFile> {
        runs.iter().filter_map(|(t, s)| self.file(t, s)).collect()
    }

    /// Stored bytes of `runs`: whole groups from their rollup's key, other segments as
    /// listed or read from a rollup.
    pub fn stored_bytes(&self, runs: &SegmentRuns) -> u64 {
        total_bytes(self.blocks(runs).iter().map(|block| match block {
            Block::Group(key) => key.stored_bytes,
            Block::Segment(t, s) => self.file(*t, *s).map_or(0, |f| f.size()),
        }))
    }

    /// The latest commit time in `runs`, from whole groups' keys and the summaries read.
    pub fn last_commit(&self, runs: &SegmentRuns) -> Option<DateTime<Utc>> {
        self.blocks(runs)
            .iter()
            .filter_map(|block| match block {
                Block::Group(key) => key.last_commit,
                Block::Segment(t, s) => self.summary_of(*t, *s)?.last_commit_time,
            })
            .max()
    }

    /// The first segment of `runs` whose summary satisfies `holds`, looking inside a whole
    /// group only where its key says it `may`: (index, timeline, segno).
    pub fn find(
        &self,
        runs: &SegmentRuns,
        may: impl Fn(&RollupKey) -> bool,
        holds: impl Fn(&SegmentSummary) -> bool,
    ) -> Option<(usize, u32, u64)> {
        let mut index = 0;
        for block in self.blocks(runs) {
            match block {
                Block::Group(key) => {
                    if may(&key) {
                        for (i, segno) in key.segnos().enumerate() {
                            if self.summary_of(key.timeline, segno).is_some_and(&holds) {
                                return Some((index + i, key.timeline, segno));
                            }
                        }
                    }
                    index += key.span as usize;
                }
                Block::Segment(t, s) => {
                    if self.summary_of(t, s).is_some_and(&holds) {
                        return Some((index, t, s));
                    }
                    index += 1;
                }
            }
        }
        None
    }

    /// The summaries read of segments in `walk`, in the walk's order.
    pub fn summaries_in(&self, walk: &Walk) -> Vec<(usize, &SegmentSummary)> {
        let mut found: Vec<(usize, &SegmentSummary)> = self
            .summaries
            .iter()
            .filter_map(|(name, summary)| {
                let segno = name.segment_number(self.segment_size)?;
                Some((walk.index_of(name.timeline(), segno)?, summary))
            })
            .collect();
        found.sort_by_key(|(index, _)| *index);
        found
    }

    /// Reads the summaries of `runs` that `needed` asks for.
    pub async fn load_summaries(
        &mut self,
        catalog: &Catalog,
        runs: &SegmentRuns,
        needed: &Needed,
        jobs: usize,
    ) -> Result<(), CatalogError> {
        if *needed == Needed::Nothing {
            return Ok(());
        }
        let mut files = Vec::new();
        for block in self.blocks(runs) {
            match block {
                Block::Segment(t, s) => files.extend(self.file(t, s)),
                Block::Group(key) => {
                    let (take, last) = match needed {
                        Needed::Everything => (true, false),
                        Needed::RestorePoints => (key.restore_points, false),
                        Needed::FirstCommitAfter(time) => {
                            let after = key.last_commit.is_some_and(|c| c > *time);
                            (after, after)
                        }
                        _ => (false, false),
                    };
                    if take {
                        files.extend(key.segnos().filter_map(|s| self.file(key.timeline, s)));
                    }
                    if last {
                        break;
                    }
                }
            }
        }
        self.summarise(catalog, &files, jobs, false).await
    }

    /// The newest commit archived on `timeline` (`check`, `metrics`): the newest of the
    /// rollup keys, and of the summaries of the segments no rollup covers (read here).
    pub async fn newest_commit(
        &mut self,
        catalog: &Catalog,
        timeline: u32,
        jobs: usize,
    ) -> Result<Option<DateTime<Utc>>, CatalogError> {
        let singles: Vec<ArchivedFile> = self
            .listing
            .segments
            .range((timeline, 0)..=(timeline, u64::MAX))
            .filter(|&(&(t, s), _)| self.listing.covering(t, s).is_none())
            .map(|(_, file)| file.clone())
            .collect();
        self.summarise(catalog, &singles, jobs, false).await?;
        let rolled = self
            .listing
            .rollups
            .range((timeline, 0, 0)..=(timeline, u64::MAX, u64::MAX))
            .filter_map(|(_, key)| key.last_commit);
        let single = singles
            .iter()
            .filter_map(|f| self.summary(f)?.last_commit_time);
        Ok(rolled.chain(single).max())
    }

    /// Reads the stored sizes of `files` known only through a rollup (its content).
    pub async fn load_sizes(
        &mut self,
        catalog: &Catalog,
        files: &[ArchivedFile],
        jobs: usize,
    ) -> Result<(), CatalogError> {
        self.read_rollups_of(catalog, files, jobs, true).await
    }

    /// Reads the rollups covering `files` that were not read yet; a rollup that cannot be
    /// read has its group listed one by one instead.
    async fn read_rollups_of(
        &mut self,
        catalog: &Catalog,
        files: &[ArchivedFile],
        jobs: usize,
        for_sizes: bool,
    ) -> Result<(), CatalogError> {
        let mut wanted: Vec<RollupKey> = Vec::new();
        let mut seen = HashSet::new();
        for file in files {
            if !for_sizes && self.summaries.contains_key(&file.name) {
                continue;
            }
            let Some(segno) = file.name.segment_number(self.segment_size) else {
                continue;
            };
            if let Some(key) = self.listing.covering(file.name.timeline(), segno) {
                let id = (key.timeline, key.first_segno, key.span);
                if !self.loaded_rollups.contains(&id) && seen.insert(id) {
                    wanted.push(key.clone());
                }
            }
        }
        let segment_size = self.segment_size;
        let read: Vec<(RollupKey, Option<_>)> = stream::iter(wanted)
            .map(|key| async move {
                let rollup = catalog.read_rollup(&key, segment_size).await?;
                Ok::<_, CatalogError>((key, rollup))
            })
            .buffer_unordered(jobs.max(1))
            .try_collect()
            .await?;
        for (key, rollup) in read {
            let id = (key.timeline, key.first_segno, key.span);
            self.loaded_rollups.insert(id);
            match rollup {
                Some(rollup) => {
                    for (segno, segment) in key.segnos().zip(rollup.segments) {
                        self.sizes.insert((key.timeline, segno), segment.size);
                        if let Some(name) = self.name_of(key.timeline, segno) {
                            self.summaries.insert(name, segment.summary);
                        }
                    }
                }
                None => {
                    // Gone or damaged: its segments are listed and read one by one.
                    self.listing.rollups.remove(&id);
                    catalog
                        .list_group_into(
                            &mut self.listing,
                            key.timeline,
                            key.first_segno,
                            key.span,
                            segment_size,
                        )
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Makes the summaries of `files` (consecutive segments) available: from rollups, from
    /// stored summaries, the others indexed from their WAL (and stored when `store`).
    pub async fn summarise(
        &mut self,
        catalog: &Catalog,
        files: &[ArchivedFile],
        jobs: usize,
        store: bool,
    ) -> Result<(), CatalogError> {
        self.read_rollups_of(catalog, files, jobs, false).await?;
        let stored: Vec<&ArchivedFile> = files
            .iter()
            .filter(|f| {
                !self.summaries.contains_key(&f.name) && self.listing.summarised.contains(&f.name)
            })
            .collect();
        let loaded: Vec<_> = stream::iter(stored)
            .map(|file| async move {
                let summary = catalog.segment_summary(&file.name).await?;
                Ok::<_, CatalogError>((file.name.clone(), summary))
            })
            .buffer_unordered(jobs.max(1))
            .try_collect()
            .await?;
        for (name, summary) in loaded {
            if let Some(summary) = summary {
                self.summaries.insert(name, summary);
            }
        }

        // The rest in order, so that a record straddling two segments is carried over:
        // objects are opened ahead, each is decoded straight into the summarizer (never held
        // whole).
        let segment_size = self.segment_size;
        let missing: Vec<(Option<WalFileName>, ArchivedFile)> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| !self.summaries.contains_key(&f.name))
            .map(|(i, f)| {
                // The segment before, if it is the one recovery reads before this one.
                let segno = |f: &ArchivedFile| f.name.segment_number(segment_size);
                let previous = i
                    .checked_sub(1)
                    .map(|p| &files[p])
                    .filter(|p| segno(p).map(|s| s + 1) == segno(f))
                    .map(|p| p.name.clone());
                (previous, f.clone())
            })
            .collect();
        let mut opened = open_in_order(catalog, missing, jobs);
        while let Some((previous, file, opened)) = opened.next().await {
            let opened = opened?;
            let Some(start) = file.name.start_lsn(self.segment_size) else {
                continue;
            };
            let carry = previous
                .and_then(|p| self.summaries.get(&p))
                .and_then(|s| s.carry.clone());
            let summarizer =
                SegmentSummarizer::new(start, self.segment_size, self.block_size, carry.as_ref());
            let (WalWriter(mut summarizer), decoded) = catalog
                .decode_opened(opened, "the WAL summarizer", WalWriter(summarizer))
                .await?;
            // A tail of receive-wal ends inside a page: zeros to the page's end, as recovery
            // reads it (archive-get pads it so), for the records of that last page.
            let into_page = decoded.original_len % self.block_size as u64;
            if into_page != 0 {
                summarizer.feed(&vec![0; self.block_size - into_page as usize]);
            }
            let summary = summarizer.finish();
            if store {
                catalog.put_segment_summary(&file.name, &summary).await?;
            }
            self.summaries.insert(file.name, summary);
        }
        Ok(())
    }
}

/// Opens the archived files of `items` in their order, `jobs` ahead of the one being read, so
/// that a slow store's latency stays off the decoder's path; each comes with its tag.
pub(super) fn open_in_order<'a, T: 'a>(
    catalog: &'a Catalog,
    items: Vec<(T, ArchivedFile)>,
    jobs: usize,
) -> impl Stream<Item = (T, ArchivedFile, Result<OpenedObject, CatalogError>)> + 'a {
    stream::iter(items)
        .map(move |(tag, file)| async move {
            let opened = catalog
                .open_object(&file.object, file.name.to_string())
                .await;
            (tag, file, opened)
        })
        .buffered(jobs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn view(names: &[&str], histories: &[(u32, &str)]) -> ArchiveView {
        let files = names
            .iter()
            .map(|name| (WalFileName::parse(name).unwrap(), 100));
        ArchiveView {
            segment_size: SEG,
            block_size: 8192,
            listing: WalListing::from_files(files, SEG),
            histories: histories
                .iter()
                .map(|(t, text)| (*t, parse_history(*t, text).unwrap()))
                .collect(),
            summaries: HashMap::new(),
            sizes: HashMap::new(),
            loaded_rollups: HashSet::new(),
            xact_ends: HashMap::new(),
        }
    }

    fn walked(walk: &Walk) -> Vec<String> {
        walk.segments.names().collect()
    }

    #[test]
    fn a_walk_follows_the_history_and_stops_at_a_gap() {
        let view = view(
            &[
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000004", // the old timeline went on: not on the path
                "000000020000000000000004",
                "000000020000000000000006",
            ],
            &[(2, "1\t0/4000100\tpromoted\n")],
        );
        assert_eq!(view.latest_timeline(1), 2);
        let path = view.path(2).unwrap();
        let walk = view.walk(&path, Lsn(0x200_0028));
        assert_eq!(
            walked(&walk),
            vec![
                "000000010000000000000002",
                "000000010000000000000003",
                "000000020000000000000004"
            ]
        );
        assert_eq!(walk.missing, "000000020000000000000005");
        assert!(walk.gap);
        assert!(walk.reaches(4) && !walk.reaches(5) && !walk.reaches(1));
        assert_eq!(walk.count_through(3), Some(2));

        let on_one = view.walk(&view.path(1).unwrap(), Lsn(0x300_0000));
        assert_eq!(walked(&on_one).len(), 2);
        assert_eq!(on_one.missing, "000000010000000000000005");
        assert!(!on_one.gap, "nothing after it on timeline 1");
        assert!(view.path(3).is_none());
    }
}
