//! Timeline history files (`00000002.history`, timeline.c): one line per ancestor,
//! `parentTLI <tab> switchpoint <tab> reason`.

use super::{Lsn, PgFormatError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The timeline that was left.
    pub timeline: u32,
    /// Where it was left: the first LSN of the next timeline.
    pub switchpoint: Lsn,
}

/// Parses a history file; comments (`#`) and blank lines are skipped as PostgreSQL does.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "line {}: expected 'timeline switchpoint reason'",
                number + 1
            ));
        };
        let timeline: u32 = tli
            .parse()
            .map_err(|_| format!("line {}: '{tli}' is not a timeline", number + 1))?;
        let switchpoint: Lsn = lsn
            .parse()
            .map_err(|e: PgFormatError| format!("line {}: {e}", number + 1))?;
        if let Some(previous) = entries.last() {
            if timeline <= previous.timeline {
                return Err(format!("line {}: timelines must increase", number + 1));
            }
            if switchpoint < previous.switchpoint {
                return Err(format!(
                    "line {}: switch points must not go back",
                    number + 1
                ));
            }
        }
        entries.push(HistoryEntry {
            timeline,
            switchpoint,
        });
    }
    Ok(entries)
}

/// A stretch of WAL that recovery to some timeline reads from one timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSpan {
    pub timeline: u32,
    pub begin: Lsn,
    /// Where the next timeline branched off; none for the target timeline itself.
    pub end: Option<Lsn>,
}

impl TimelineSpan {
    pub fn contains(&self, lsn: Lsn) -> bool {
        lsn >= self.begin && self.end.is_none_or(|end| lsn < end)
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
        let history = parse_history("1\t0/5000100\tno recovery target specified\n").unwrap();
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
        const SEG: u64 = 16 << 20;
        let history = parse_history("1\t0/3000100\tx\n2\t0/5000000\ty\n").unwrap();
        let path = timeline_path(3, &history);
        assert_eq!(path.len(), 3);
        assert!(path[0].contains(Lsn(0x2FF_FFFF)) && !path[0].contains(Lsn(0x300_0100)));
        assert!(path[2].contains(Lsn(u64::MAX)));
        let timelines: Vec<u32> = (1..=6)
            .map(|segno| timeline_of_segment(&path, segno, SEG))
            .collect();
        assert_eq!(timelines, vec![1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn parses_postgresql_history_files() {
        let text = "1\t0/3000158\tno recovery target specified\n\n\
                    2\t0/5000000\tat restore point \"before\"\n";
        assert_eq!(
            parse_history(text).unwrap(),
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
    }

    #[test]
    fn refuses_what_postgresql_would_not_write() {
        for bad in [
            "x\t0/1\tr",
            "1\tnope\tr",
            "1",
            "2\t0/5\tr\n1\t0/6\tr",
            "1\t0/5\tr\n2\t0/4\tr",
        ] {
            assert!(parse_history(bad).is_err(), "{bad:?}");
        }
    }
}
