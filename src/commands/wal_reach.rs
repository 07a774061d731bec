//! What the WAL archive can reach: the segments recovery reads from a backup to a target,
//! following the timeline history, and what they hold (from the WAL index). Shared by
//! `list` (the recovery window), `restore` (the pre-flight) and `verify`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::catalog::backup::BackupManifest;
use crate::catalog::wal_archive::{ArchivedFile, WalListing};
use crate::catalog::{Catalog, RepositoryIdentity};
use crate::codec::{self, CodecError};
use crate::error::{Error, Result};
use crate::pg::timeline::{
    HistoryEntry, TimelineSpan, parse_history, timeline_of_segment, timeline_path,
};
use crate::pg::wal_name::xlog_file_name;
use crate::pg::wal_summary::{SegmentSummarizer, SegmentSummary};
use crate::pg::{Lsn, WalFileName};

use super::blocking;

/// The archive's listing and history files, and the summaries read so far.
pub struct ArchiveView {
    pub segment_size: u64,
    block_size: usize,
    pub listing: WalListing,
    pub histories: BTreeMap<u32, Vec<HistoryEntry>>,
    summaries: HashMap<WalFileName, SegmentSummary>,
}

/// The segments recovery reads from a start point, in order, up to the first one missing.
#[derive(Debug)]
pub struct Walk {
    pub files: Vec<ArchivedFile>,
    /// The segment recovery would ask for next, which the repository does not hold.
    pub missing: String,
    missing_segno: u64,
    /// True when WAL of the path exists beyond `missing`: a gap, not the archive's end.
    pub gap: bool,
}

impl Walk {
    /// True when the walk got as far as segment `segno` (one at or after its start).
    pub fn reaches(&self, segno: u64) -> bool {
        segno < self.missing_segno
    }
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
        }
    }

    /// Lists the archive and reads its history files.
    pub async fn load(catalog: &Catalog, identity: &RepositoryIdentity) -> Result<Self> {
        let listing = catalog.wal_listing(identity.wal_segment_size).await?;
        let mut histories = BTreeMap::new();
        for (&timeline, file) in &listing.histories {
            let text = read_object(catalog, file).await?;
            let entries = parse_history(&String::from_utf8_lossy(&text)).map_err(|reason| {
                Error::Corrupt {
                    what: format!("history file {}", file.name),
                    location: catalog.storage().location(),
                    reason,
                }
            })?;
            histories.insert(timeline, entries);
        }
        Ok(ArchiveView::new(identity, listing, histories))
    }

    /// The timelines recovery to `target` passes through.
    pub fn path(&self, target: u32) -> Result<Vec<TimelineSpan>> {
        if target == 1 {
            return Ok(timeline_path(1, &[]));
        }
        match self.histories.get(&target) {
            Some(history) => Ok(timeline_path(target, history)),
            None => Err(Error::Unreachable(format!(
                "timeline {target} has no history file {target:08X}.history in the repository: \
                 it cannot be followed"
            ))),
        }
    }

    /// `recovery_target_timeline = 'latest'` from `from`: PostgreSQL probes upward for
    /// history files (`findNewestTimeLine`).
    pub fn latest_timeline(&self, from: u32) -> u32 {
        let mut newest = from;
        while self.histories.contains_key(&(newest + 1)) {
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
                files,
                missing: xlog_file_name(timeline, segno, self.segment_size),
                missing_segno: segno,
                gap,
            };
        }
    }

    pub fn segment_number(&self, file: &ArchivedFile) -> u64 {
        file.name
            .segment_number(self.segment_size)
            .expect("walks hold segments")
    }

    pub fn summary(&self, file: &ArchivedFile) -> Option<&SegmentSummary> {
        self.summaries.get(&file.name)
    }

    /// Makes the summaries of `files` (consecutive segments) available: the stored ones are
    /// read, the others indexed from their WAL (and stored when `store`).
    pub async fn summarise(
        &mut self,
        catalog: &Catalog,
        files: &[ArchivedFile],
        jobs: usize,
        store: bool,
    ) -> Result<()> {
        let stored: Vec<&ArchivedFile> = files
            .iter()
            .filter(|f| {
                !self.summaries.contains_key(&f.name) && self.listing.summarised.contains(&f.name)
            })
            .collect();
        let loaded: Vec<_> = stream::iter(stored)
            .map(|file| async move {
                let summary = catalog.segment_summary(&file.name).await?;
                Ok::<_, Error>((file.name.clone(), summary))
            })
            .buffer_unordered(jobs.max(1))
            .try_collect()
            .await?;
        for (name, summary) in loaded {
            if let Some(summary) = summary {
                self.summaries.insert(name, summary);
            }
        }

        // The rest in order, so that a record straddling two segments is carried over: bodies
        // are opened ahead, each is decoded straight into the summarizer (never held whole).
        let missing: Vec<(Option<WalFileName>, ArchivedFile)> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| !self.summaries.contains_key(&f.name))
            .map(|(i, f)| (i.checked_sub(1).map(|p| files[p].name.clone()), f.clone()))
            .collect();
        let storage = catalog.storage();
        let mut opened = stream::iter(missing)
            .map(|(previous, file)| async move {
                let body = storage.get(&file.key).await;
                (previous, file, body)
            })
            .buffered(jobs.max(1));
        while let Some((previous, file, body)) = opened.next().await {
            let body = body?;
            let carry = previous
                .and_then(|p| self.summaries.get(&p))
                .and_then(|s| s.carry.clone());
            let start = Lsn(self.segment_number(&file) * self.segment_size);
            let mut summarizer =
                SegmentSummarizer::new(start, self.segment_size, self.block_size, carry.as_ref());
            let (location, what) = (storage.location(), file.name.to_string());
            let summary = blocking(move || {
                match codec::decode(body.into_blocking_reader(), &mut summarizer) {
                    Ok(_) => Ok(summarizer.finish()),
                    Err(e) => Err(decode_error(e, what, location)),
                }
            })
            .await?;
            if store {
                catalog.put_segment_summary(&file.name, &summary).await?;
            }
            self.summaries.insert(file.name, summary);
        }
        Ok(())
    }

    /// The latest commit time in `files` (summarised).
    pub fn last_commit(&self, files: &[ArchivedFile]) -> Option<DateTime<Utc>> {
        files
            .iter()
            .filter_map(|f| self.summary(f)?.last_commit_time.as_deref().and_then(utc))
            .max()
    }
}

pub fn utc(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// RFC 3339 in UTC, with as many fractional digits as the time has.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The start and stop LSN of a backup.
pub fn backup_lsns(backup: &BackupManifest) -> Result<(Lsn, Lsn)> {
    let parse = |text: &str| {
        text.parse::<Lsn>().map_err(|e| Error::Corrupt {
            what: format!("the manifest of backup {}", backup.id),
            location: "the repository".into(),
            reason: e.to_string(),
        })
    };
    Ok((parse(&backup.start_lsn)?, parse(&backup.stop_lsn)?))
}

/// True when recovery along `path` can start from `backup`: its timeline is on the path and
/// was left only after the backup started.
pub fn path_holds_backup(path: &[TimelineSpan], backup: &BackupManifest, start: Lsn) -> bool {
    path.iter()
        .any(|span| span.timeline == backup.timeline && span.contains(start))
}

/// An archived object's decoded content.
pub async fn read_object(catalog: &Catalog, file: &ArchivedFile) -> Result<Vec<u8>> {
    let storage = catalog.storage();
    let body = storage.get(&file.key).await?;
    let location = storage.location();
    let what = file.name.to_string();
    blocking(move || {
        let mut content = Vec::new();
        match codec::decode(body.into_blocking_reader(), &mut content) {
            Ok(_) => Ok(content),
            Err(e) => Err(decode_error(e, what, location)),
        }
    })
    .await
}

fn decode_error(error: CodecError, what: String, location: String) -> Error {
    match error {
        CodecError::Corrupt(reason) => Error::Corrupt {
            what,
            location,
            reason,
        },
        CodecError::Io(e) => crate::storage::StorageError::io("read", &location, e).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::timeline::parse_history;

    const SEG: u64 = 16 << 20;

    fn view(names: &[&str], histories: &[(u32, &str)]) -> ArchiveView {
        let mut listing = WalListing::default();
        for name in names {
            let name = WalFileName::parse(name).unwrap();
            let segno = name.segment_number(SEG).unwrap();
            let file = ArchivedFile {
                key: format!("wal/{name}.lz4"),
                size: 100,
                name: name.clone(),
            };
            listing.segments.insert((name.timeline(), segno), file);
        }
        ArchiveView {
            segment_size: SEG,
            block_size: 8192,
            listing,
            histories: histories
                .iter()
                .map(|(t, text)| (*t, parse_history(text).unwrap()))
                .collect(),
            summaries: HashMap::new(),
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
        assert!(walk.reaches(4) && !walk.reaches(5));

        let on_one = view.walk(&view.path(1).unwrap(), Lsn(0x300_0000));
        assert_eq!(walked(&on_one).len(), 2);
        assert_eq!(on_one.missing, "000000010000000000000005");
        assert!(!on_one.gap, "nothing after it on timeline 1");
        assert!(view.path(3).is_err());
    }
}
