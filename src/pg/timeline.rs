//! Timeline history files (`00000002.history`, timeline.c): one line per ancestor,
//! `parentTLI <tab> switchpoint <tab> reason`, read and used exactly as PostgreSQL does
//! (`readTimeLineHistory`, `tliOfPointInHistory`, `tliSwitchPoint`, `XLogFileReadAnyTLI`).
//!
//! PostgreSQL requires only that the timeline IDs increase and stay below the file's own:
//! switch points need not. A recovery that stops at a target read from a higher timeline's
//! segment (its recovery_target_timeline was that higher timeline) writes its parent's
//! switch point ahead of its own, and the parent's span is then empty: its WAL is never
//! read by recovery to the new timeline.

use super::{Lsn, PgFormatError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The timeline that was left.
    pub timeline: u32,
    /// Where it was left: the first LSN of the next timeline.
    pub switchpoint: Lsn,
}

/// Parses the history file of `timeline` as `readTimeLineHistory` does: leading blanks, empty
/// lines and `#` comments are skipped; each other line holds a numeric timeline, blanks, a
/// `%X/%X` switch point, and anything after it is the reason. The timelines must increase and
/// stay below `timeline`; nothing is required of the switch points.
pub fn parse_history(timeline: u32, text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |reason: String| format!("line {}: {reason}", number + 1);
        let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let parent: u32 = line[..digits]
            .parse()
            .map_err(|_| at("expected a numeric timeline ID".into()))?;
        let rest = line[digits..].trim_start();
        let lsn_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '/')
                .len();
        let switchpoint: Lsn = rest[..lsn_len].parse().map_err(|e: PgFormatError| {
            at(format!("expected a switch point after the timeline ({e})"))
        })?;
        if let Some(previous) = entries.last()
            && parent <= previous.timeline
        {
            return Err(at(format!(
                "timeline IDs must increase ({parent} follows {})",
                previous.timeline
            )));
        }
        entries.push(HistoryEntry {
            timeline: parent,
            switchpoint,
        });
    }
    if let Some(last) = entries.last()
        && last.timeline >= timeline
    {
        return Err(format!(
            "timeline {} is not below the file's own timeline {timeline}",
            last.timeline
        ));
    }
    Ok(entries)
}

/// A stretch of WAL that recovery to some timeline reads from one timeline (an entry of
/// PostgreSQL's `expectedTLEs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSpan {
    pub timeline: u32,
    /// Where the timeline began (its parent's switch point); 0 for the first.
    pub begin: Lsn,
    /// Where the next timeline branched off; none for the target timeline itself. May lie
    /// at or before `begin`: the span is then empty.
    pub end: Option<Lsn>,
}

impl TimelineSpan {
    /// `begin <= lsn < end`, an invalid (zero) bound being no bound, as in
    /// `tliOfPointInHistory`. Spans of one path may overlap: ask [`timeline_of_point`].
    pub fn contains(&self, lsn: Lsn) -> bool {
        (self.begin == Lsn(0) || self.begin <= lsn)
            && self.end.is_none_or(|end| end == Lsn(0) || lsn < end)
    }

    /// Recovery to the path's timeline never reads this timeline's own WAL.
    pub fn is_empty(&self) -> bool {
        self.end
            .is_some_and(|end| end != Lsn(0) && end <= self.begin)
    }
}

/// The timelines recovery to `target` passes through, oldest first (`readTimeLineHistory`'s
/// list, reversed): the ancestors from `history` (the target's history file) and the target.
pub fn timeline_path(target: u32, history: &[HistoryEntry]) -> Vec<TimelineSpan> {
    let mut spans = Vec::with_capacity(history.len() + 1);
    let mut begin = Lsn(0);
    for entry in history {
        spans.push(TimelineSpan {
            timeline: entry.timeline,
            begin,
            end: Some(entry.switchpoint),
        });
        begin = entry.switchpoint;
    }
    spans.push(TimelineSpan {
        timeline: target,
        begin,
        end: None,
    });
    spans
}

/// The timeline of `path` whose WAL holds `lsn` (`tliOfPointInHistory`): the newest span
/// that contains it. None only for a path PostgreSQL would call not contiguous.
pub fn timeline_of_point(path: &[TimelineSpan], lsn: Lsn) -> Option<u32> {
    path.iter()
        .rev()
        .find(|span| span.contains(lsn))
        .map(|span| span.timeline)
}

/// Where recovery along `path` leaves `timeline` (`tliSwitchPoint`): Some(None) for the
/// path's own timeline, None when the timeline is not on the path.
pub fn switch_point(path: &[TimelineSpan], timeline: u32) -> Option<Option<Lsn>> {
    path.iter()
        .rev()
        .find(|span| span.timeline == timeline)
        .map(|span| span.end)
}

/// The first LSN at which recovery along `a` and along `b` read different timelines' WAL:
/// where the two histories fork. None when they never do.
pub fn fork_point(a: &[TimelineSpan], b: &[TimelineSpan]) -> Option<Lsn> {
    let mut bounds: Vec<Lsn> = a
        .iter()
        .chain(b)
        .flat_map(|span| [Some(span.begin), span.end])
        .flatten()
        .chain([Lsn(0)])
        .collect();
    bounds.sort();
    bounds.dedup();
    bounds
        .into_iter()
        .find(|&lsn| timeline_of_point(a, lsn) != timeline_of_point(b, lsn))
}

/// The timeline whose WAL recovery reads for segment `segno`: the newest on the path that
/// began at or before that segment (`XLogFileReadAnyTLI` tries the newest first; a child's
/// first segment holds the parent's WAL up to the switch point).
pub fn timeline_of_segment(path: &[TimelineSpan], segno: u64, segment_size: u64) -> u32 {
    path.iter()
        .rev()
        .find(|span| span.begin.segment_number(segment_size) <= segno)
        .map_or(path[0].timeline, |span| span.timeline)
}

/// The name of the segment holding a backup's stop point `stop`, read on a server whose
/// timeline is now `current` (`history`: `current`'s history file, empty for timeline 1):
/// the segment before `stop` (`XLByteToPrevSeg`, as `pg_walfile_name` names it), on the
/// timeline recovery reads it from. A standby cannot run `pg_walfile_name`, and its timeline
/// may have moved on since the stop, so the timeline comes from the history.
pub fn stop_segment_name(
    stop: Lsn,
    current: u32,
    history: &[HistoryEntry],
    wal_segment_size: u64,
) -> String {
    let segno = super::wal_name::segment_before(stop, wal_segment_size);
    let path = timeline_path(current, history);
    let timeline = timeline_of_segment(&path, segno, wal_segment_size);
    super::wal_name::xlog_file_name(timeline, segno, wal_segment_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    /// What PostgreSQL 15's t/028_pitr_timelines.pl leaves: timeline 2 was promoted at
    /// 0/3018CB0; a PITR to a restore point read from timeline 2's segment 3 stopped at
    /// 0/3018C48, before that switch, and became timeline 3.
    const PG028: &str = "1\t0/3018CB0\tno recovery target specified\n\n\
                         2\t0/3018C48\tat restore point \"rp\"\n";

    #[test]
    fn a_stop_segment_is_named_on_the_timeline_recovery_reads_it_from() {
        const SEG: u64 = 16 << 20;
        assert_eq!(
            stop_segment_name(Lsn(0x300_0100), 1, &[], SEG),
            "000000010000000000000003"
        );
        // At a segment boundary: the segment before, as pg_walfile_name says.
        assert_eq!(
            stop_segment_name(Lsn(0x400_0000), 1, &[], SEG),
            "000000010000000000000003"
        );
        // The standby moved to timeline 2 at 0/5000100 after the stop: a stop before the
        // switch segment stays on 1, one in the switch segment is read from timeline 2's copy.
        let history = parse_history(2, "1\t0/5000100\tno recovery target specified\n").unwrap();
        assert_eq!(
            stop_segment_name(Lsn(0x300_0100), 2, &history, SEG),
            "000000010000000000000003"
        );
        assert_eq!(
            stop_segment_name(Lsn(0x500_0028), 2, &history, SEG),
            "000000020000000000000005"
        );
        assert_eq!(
            stop_segment_name(Lsn(0x600_0028), 2, &history, SEG),
            "000000020000000000000006"
        );
    }

    #[test]
    fn recovery_reads_each_segment_from_the_newest_timeline_that_has_begun() {
        let history = parse_history(3, "1\t0/3000100\tx\n2\t0/5000000\ty\n").unwrap();
        let path = timeline_path(3, &history);
        assert_eq!(path.len(), 3);
        assert!(path[0].contains(Lsn(0x2FF_FFFF)) && !path[0].contains(Lsn(0x300_0100)));
        assert!(path[2].contains(Lsn(u64::MAX)));
        let timelines: Vec<u32> = (1..=6)
            .map(|segno| timeline_of_segment(&path, segno, SEG))
            .collect();
        assert_eq!(timelines, vec![1, 1, 2, 2, 3, 3]);
        assert_eq!(timeline_of_point(&path, Lsn(0x400_0000)), Some(2));
        assert_eq!(switch_point(&path, 2), Some(Some(Lsn(0x500_0000))));
        assert_eq!(switch_point(&path, 3), Some(None));
        assert_eq!(switch_point(&path, 4), None);
    }

    #[test]
    fn parses_postgresql_history_files() {
        let text = "1\t0/3000158\tno recovery target specified\n\n\
                    # a comment\n  \t\n\
                    \t2 0/5000000\tat restore point \"before\"\n";
        assert_eq!(
            parse_history(3, text).unwrap(),
            vec![
                HistoryEntry {
                    timeline: 1,
                    switchpoint: Lsn(0x300_0158)
                },
                HistoryEntry {
                    timeline: 2,
                    switchpoint: Lsn(0x500_0000)
                },
            ]
        );
        assert_eq!(parse_history(2, "").unwrap(), vec![]);
    }

    #[test]
    fn switch_points_that_go_back_are_read_as_postgresql_reads_them() {
        let path = timeline_path(3, &parse_history(3, PG028).unwrap());
        assert!(path[1].is_empty() && !path[0].is_empty() && !path[2].is_empty());
        // tliOfPointInHistory: the newest span holding the point, never the empty one.
        for (lsn, timeline) in [
            (0x300_0000, 1),
            (0x301_8C47, 1),
            (0x301_8C48, 3),
            (0x301_8CB0, 3),
            (0x500_0000, 3),
        ] {
            assert_eq!(
                timeline_of_point(&path, Lsn(lsn)),
                Some(timeline),
                "{lsn:X}"
            );
        }
        // XLogFileReadAnyTLI: segment 3 comes from timeline 3, never from 2.
        let segments: Vec<u32> = (1..=4)
            .map(|segno| timeline_of_segment(&path, segno, SEG))
            .collect();
        assert_eq!(segments, vec![1, 1, 3, 3]);
        // tliSwitchPoint: each timeline's own entry.
        assert_eq!(switch_point(&path, 1), Some(Some(Lsn(0x301_8CB0))));
        assert_eq!(switch_point(&path, 2), Some(Some(Lsn(0x301_8C48))));
        // Against timeline 2's own path, recovery to 3 forks off at 3's switch point.
        let two = timeline_path(2, &parse_history(2, "1\t0/3018CB0\tx\n").unwrap());
        assert_eq!(fork_point(&path, &two), Some(Lsn(0x301_8C48)));
        assert_eq!(
            fork_point(&path, &timeline_path(1, &[])),
            Some(Lsn(0x301_8C48))
        );
        assert_eq!(fork_point(&path, &path), None);
    }

    #[test]
    fn a_switch_point_equal_to_or_behind_its_parents_is_accepted() {
        // Equal: timeline 2 is left where it began; its span is empty.
        let equal = parse_history(3, "1\t0/5000000\ta\n2\t0/5000000\tb\n").unwrap();
        let path = timeline_path(3, &equal);
        assert!(path[1].is_empty());
        assert_eq!(timeline_of_point(&path, Lsn(0x500_0000)), Some(3));
        assert_eq!(timeline_of_point(&path, Lsn(0x4FF_FFFF)), Some(1));
        let segments: Vec<u32> = (4..=6)
            .map(|segno| timeline_of_segment(&path, segno, SEG))
            .collect();
        assert_eq!(segments, vec![1, 3, 3]);

        // Behind: timeline 3 begins a segment before its parent did.
        let behind = parse_history(3, "1\t0/5000100\ta\n2\t0/4000200\tb\n").unwrap();
        let path = timeline_path(3, &behind);
        assert!(path[1].is_empty());
        assert_eq!(timeline_of_point(&path, Lsn(0x400_01FF)), Some(1));
        assert_eq!(timeline_of_point(&path, Lsn(0x400_0200)), Some(3));
        let segments: Vec<u32> = (3..=6)
            .map(|segno| timeline_of_segment(&path, segno, SEG))
            .collect();
        assert_eq!(segments, vec![1, 3, 3, 3]);
    }

    #[test]
    fn refuses_what_postgresql_would_refuse() {
        for (bad, says) in [
            ("x\t0/1\tr", "numeric timeline"),
            ("1\tnope\tr", "switch point"),
            ("1", "switch point"),
            ("2\t0/5\tr\n1\t0/6\tr", "must increase"),
            ("1\t0/5\tr\n1\t0/6\tr", "must increase"),
            ("1\t0/5\tr\n3\t0/6\tr", "not below"),
            ("4\t0/5\tr", "not below"),
        ] {
            let err = parse_history(3, bad).unwrap_err();
            assert!(err.contains(says) && !err.contains('\n'), "{bad:?}: {err}");
        }
    }
}
