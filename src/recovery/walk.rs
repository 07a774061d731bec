//! A walk: the segments recovery reads in order from a start point, up to the first one
//! the archive lacks. Kept as runs of segment numbers per timeline, never one value per
//! segment: a walk over years of WAL costs a few bytes per timeline switch.

use std::ops::Range;

use crate::catalog::backup::BackupManifest;
use crate::pg::timeline::{TimelineSpan, timeline_of_point};
use crate::pg::wal_name::xlog_file_name;

#[derive(Clone, Debug)]
pub struct Walk {
    /// The segment the walk started in.
    pub first_segno: u64,
    /// The segments found, one per segment number from `first_segno` on.
    pub segments: SegmentRuns,
    /// The segment recovery would ask for next, which the repository does not hold.
    pub missing: String,
    pub missing_segno: u64,
    /// True when WAL of the path exists beyond `missing`: a gap, not the archive's end.
    pub gap: bool,
}

impl Walk {
    /// True when the walk got as far as segment `segno` (one at or after its start).
    pub fn reaches(&self, segno: u64) -> bool {
        segno >= self.first_segno && segno < self.missing_segno
    }

    /// How many of the walked segments recovery reads to get through segment `segno`; none
    /// if the walk does not reach it.
    pub fn count_through(&self, segno: u64) -> Option<usize> {
        self.reaches(segno)
            .then(|| (segno - self.first_segno) as usize + 1)
    }

    /// How many segments the walk found.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The position of segment `segno` of `timeline` in the walk, if recovery reads it.
    pub fn index_of(&self, timeline: u32, segno: u64) -> Option<usize> {
        self.segments
            .runs
            .iter()
            .any(|(t, range)| *t == timeline && range.contains(&segno))
            .then(|| (segno - self.first_segno) as usize)
    }
}

/// Consecutive segments as runs of one timeline each, in recovery's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentRuns {
    pub runs: Vec<(u32, Range<u64>)>,
    pub segment_size: u64,
}

impl SegmentRuns {
    pub fn new(segment_size: u64) -> Self {
        SegmentRuns {
            runs: Vec::new(),
            segment_size,
        }
    }

    /// Appends segments `range` of `timeline`, joining the last run where they continue it.
    pub fn push(&mut self, timeline: u32, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        match self.runs.last_mut() {
            Some((t, last)) if *t == timeline && last.end == range.start => last.end = range.end,
            _ => self.runs.push((timeline, range)),
        }
    }

    pub fn len(&self) -> usize {
        self.runs
            .iter()
            .map(|(_, r)| usize::try_from(r.end.saturating_sub(r.start)).unwrap_or(usize::MAX))
            .fold(0, usize::saturating_add)
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Every (timeline, segment number), in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.runs
            .iter()
            .flat_map(|(t, range)| range.clone().map(move |s| (*t, s)))
    }

    /// The first `count` segments.
    pub fn first_n(&self, count: usize) -> SegmentRuns {
        let mut left = count as u64;
        let mut out = SegmentRuns::new(self.segment_size);
        for (t, range) in &self.runs {
            let take = left.min(range.end - range.start);
            out.push(*t, range.start..range.start + take);
            left -= take;
        }
        out
    }

    pub fn name(&self, (timeline, segno): (u32, u64)) -> String {
        xlog_file_name(timeline, segno, self.segment_size)
    }

    /// The segment at `index`.
    pub fn at(&self, index: usize) -> Option<(u32, u64)> {
        let mut left = index as u64;
        for (t, range) in &self.runs {
            let len = range.end - range.start;
            if left < len {
                return Some((*t, range.start + left));
            }
            left -= len;
        }
        None
    }

    pub fn first_name(&self) -> Option<String> {
        let (t, range) = self.runs.first()?;
        Some(self.name((*t, range.start)))
    }

    pub fn last_name(&self) -> Option<String> {
        let (t, range) = self.runs.last()?;
        Some(self.name((*t, range.end - 1)))
    }

    /// Every segment's name, in order.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.iter().map(|segment| self.name(segment))
    }
}

/// True when recovery along `path` can start from `backup`: the path reads the backup's
/// start from the backup's own timeline (PostgreSQL checks `tliOfPointInHistory` of the
/// checkpoint against its timeline, newest span first: spans may overlap).
pub fn path_holds_backup(path: &[TimelineSpan], backup: &BackupManifest) -> bool {
    timeline_of_point(path, backup.start_lsn) == Some(backup.timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_and_cut() {
        let mut runs = SegmentRuns::new(16 << 20);
        runs.push(1, 2..4);
        runs.push(1, 4..6);
        runs.push(2, 6..8);
        runs.push(2, 9..9);
        assert_eq!(runs.runs, vec![(1, 2..6), (2, 6..8)]);
        assert_eq!(runs.len(), 6);
        assert_eq!(runs.at(4), Some((2, 6)));
        assert_eq!(runs.at(6), None);
        let cut = runs.first_n(5);
        assert_eq!(cut.runs, vec![(1, 2..6), (2, 6..7)]);
        assert_eq!(cut.last_name().unwrap(), "000000020000000000000006");
        assert_eq!(runs.first_n(0).runs, vec![]);
        assert_eq!(runs.names().count(), 6);
    }
}
