//! The archive as recovery sees it: the listing, the timeline histories, and the summaries
//! read so far. Loading and summarising go through the catalog; walking is pure.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt, TryStreamExt, stream};

use crate::catalog::wal::{ArchivedFile, WalListing};
use crate::catalog::{Catalog, CatalogError, OpenedObject, RepositoryIdentity};
use crate::pg::timeline::{HistoryEntry, TimelineSpan, parse_history, timeline_of_segment};
use crate::pg::wal_name::xlog_file_name;
use crate::pg::wal_summary::{SegmentSummarizer, SegmentSummary};
use crate::pg::xact_end::XactEnd;
use crate::pg::{Lsn, WalFileName, WalWriter};

use super::walk::Walk;

/// The archive's listing and history files, the summaries read so far, and what decoding
/// segments for an xid target found.
pub struct ArchiveView {
    pub segment_size: u64,
    pub(super) block_size: usize,
    pub listing: WalListing,
    pub histories: BTreeMap<u32, Vec<HistoryEntry>>,
    summaries: HashMap<WalFileName, SegmentSummary>,
    /// (segment, xid) → the end of that transaction in that segment, if it is there.
    xact_ends: HashMap<(WalFileName, u32), Option<XactEnd>>,
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
            xact_ends: HashMap::new(),
        }
    }

    /// Lists the archive and reads its history files.
    pub async fn load(
        catalog: &Catalog,
        identity: &RepositoryIdentity,
    ) -> Result<Self, CatalogError> {
        let listing = catalog.wal_listing(identity.wal_segment_size).await?;
        let mut histories = BTreeMap::new();
        for (&timeline, file) in &listing.histories {
            let what = format!("history file {}", file.name);
            let text = catalog.read_object(&file.object, what.clone()).await?;
            let entries = parse_history(&String::from_utf8_lossy(&text)).map_err(|reason| {
                CatalogError::Corrupt {
                    what,
                    location: catalog.location(),
                    reason,
                }
            })?;
            histories.insert(timeline, entries);
        }
        Ok(ArchiveView::new(identity, listing, histories))
    }

    /// Records a summary (tests, and summaries computed elsewhere).
    pub fn insert_summary(&mut self, name: WalFileName, summary: SegmentSummary) {
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

    /// The segments recovery along `path` reads from `start` on.
    pub fn walk(&self, path: &[TimelineSpan], start: Lsn) -> Walk {
        let mut segno = start.segment_number(self.segment_size);
        let mut files = Vec::new();
        loop {
            let timeline = timeline_of_segment(path, segno, self.segment_size);
            if let Some(file) = self.listing.segment(timeline, segno) {
                files.push(file.clone());
                segno += 1;
                continue;
            }
            let gap =
                self.listing.segments.keys().any(|&(t, s)| {
                    s > segno && timeline_of_segment(path, s, self.segment_size) == t
                });
            return Walk {
                first_segno: start.segment_number(self.segment_size),
                files,
                missing: xlog_file_name(timeline, segno, self.segment_size),
                missing_segno: segno,
                gap,
            };
        }
    }

    pub fn summary(&self, file: &ArchivedFile) -> Option<&SegmentSummary> {
        self.summaries.get(&file.name)
    }

    /// The latest commit time in `files` (summarised).
    pub fn last_commit(&self, files: &[ArchivedFile]) -> Option<DateTime<Utc>> {
        files
            .iter()
            .filter_map(|f| self.summary(f)?.last_commit_time)
            .max()
    }

    /// Makes the summaries of `files` (consecutive segments) available: the stored ones are
    /// read, the others indexed from their WAL (and stored when `store`).
    pub async fn summarise(
        &mut self,
        catalog: &Catalog,
        files: &[ArchivedFile],
        jobs: usize,
        store: bool,
    ) -> Result<(), CatalogError> {
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
        let missing: Vec<(Option<WalFileName>, ArchivedFile)> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| !self.summaries.contains_key(&f.name))
            .map(|(i, f)| (i.checked_sub(1).map(|p| files[p].name.clone()), f.clone()))
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
            let (WalWriter(summarizer), _) = catalog
                .decode_opened(opened, "the WAL summarizer", WalWriter(summarizer))
                .await?;
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
                .map(|(t, text)| (*t, parse_history(text).unwrap()))
                .collect(),
            summaries: HashMap::new(),
            xact_ends: HashMap::new(),
        }
    }

    fn walked(walk: &Walk) -> Vec<String> {
        walk.files.iter().map(|f| f.name.to_string()).collect()
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
