//! `pitr verify`: reads every object of the repository and proves it intact.
//!
//! Every WAL object is decoded with bounded parallelism and both of its checksums are checked;
//! then the WAL of each timeline is checked for gaps (also the parent timeline up to each
//! switch point), and timeline history files for contradictions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Instant;

use futures_util::{StreamExt, stream};
use serde::Serialize;

use crate::catalog::{Catalog, wal_name_of_key};
use crate::codec::{self, CodecError};
use crate::error::Result;
use crate::pg::timeline::{HistoryEntry, parse_history};
use crate::pg::wal_name::xlog_file_name;
use crate::pg::{WalFileKind, WalFileName};
use crate::storage::ObjectMeta;

use super::blocking;

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Objects read at once.
    pub jobs: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// An object whose checksums or structure are wrong.
    Corrupt { key: String, reason: String },
    /// An object that could not be read.
    Unreadable { key: String, reason: String },
    /// Segments absent where the WAL of a timeline must be continuous.
    MissingWal {
        timeline: u32,
        first: String,
        last: String,
        count: u64,
    },
    /// A timeline with WAL but no history file.
    MissingHistory { timeline: u32 },
    /// A history file that is invalid or contradicts its parent's.
    BadHistory { key: String, reason: String },
}

impl Problem {
    fn is_damage(&self) -> bool {
        matches!(self, Problem::Corrupt { .. } | Problem::Unreadable { .. })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Corrupt { key, reason } => write!(f, "corrupt: {key}: {reason}"),
            Problem::Unreadable { key, reason } => write!(f, "unreadable: {key}: {reason}"),
            Problem::MissingWal {
                timeline,
                first,
                last,
                count,
            } => write!(
                f,
                "missing WAL on timeline {timeline}: {first} to {last} ({count} segment{})",
                if *count == 1 { "" } else { "s" }
            ),
            Problem::MissingHistory { timeline } => write!(
                f,
                "timeline {timeline} has WAL but no history file {timeline:08X}.history"
            ),
            Problem::BadHistory { key, reason } => write!(f, "history: {key}: {reason}"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub objects: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when some object is damaged (rather than only missing).
    pub fn has_damage(&self) -> bool {
        self.problems.iter().any(Problem::is_damage)
    }
}

/// What reading one object showed.
enum Checked {
    Intact,
    History(String),
    Problem(Problem),
}

pub async fn verify(catalog: &Catalog, options: &VerifyOptions) -> Result<VerifyReport> {
    let started = Instant::now();
    let identity = catalog.identity().await?;
    let storage = catalog.storage().clone();
    let wal: Vec<(WalFileName, ObjectMeta)> = storage
        .list("wal/")
        .await?
        .into_iter()
        .filter_map(|meta| wal_name_of_key(&meta.key).map(|name| (name, meta)))
        .collect();

    let checked: Vec<(WalFileName, Checked)> = stream::iter(wal.iter().cloned())
        .map(|(name, meta)| {
            let storage = storage.clone();
            async move {
                let checked = check_object(&*storage, &name, &meta.key).await;
                (name, checked)
            }
        })
        .buffer_unordered(options.jobs.max(1))
        .collect()
        .await;

    let mut problems = Vec::new();
    let mut histories = BTreeMap::new();
    for (name, checked) in checked {
        match checked {
            Checked::Intact => {}
            Checked::History(text) => match parse_history(&text) {
                Ok(entries) => {
                    histories.insert(name.timeline(), entries);
                }
                Err(reason) => problems.push(Problem::BadHistory {
                    key: name.to_string(),
                    reason,
                }),
            },
            Checked::Problem(problem) => problems.push(problem),
        }
    }
    problems.sort_by_key(|p| p.to_string());
    problems.extend(history_problems(&histories));
    problems.extend(wal_gaps(
        wal.iter().map(|(name, _)| name),
        &histories,
        identity.wal_segment_size,
    ));

    Ok(VerifyReport {
        ok: problems.is_empty(),
        objects: wal.len() as u64,
        bytes: wal.iter().map(|(_, meta)| meta.size).sum(),
        seconds: started.elapsed().as_secs_f64(),
        problems,
    })
}

async fn check_object(
    storage: &dyn crate::storage::Storage,
    name: &WalFileName,
    key: &str,
) -> Checked {
    let unreadable = |reason: String| {
        Checked::Problem(Problem::Unreadable {
            key: key.to_owned(),
            reason,
        })
    };
    let body = match storage.get(key).await {
        Ok(body) => body,
        Err(e) => return unreadable(e.to_string()),
    };
    let is_history = name.kind() == WalFileKind::History;
    let key = key.to_owned();
    let result = blocking(move || {
        let mut content = Vec::new();
        let decoded = if is_history {
            codec::decode(body.into_blocking_reader(), &mut content)
        } else {
            codec::decode(body.into_blocking_reader(), std::io::sink())
        };
        Ok(match decoded {
            Ok(_) if is_history => Checked::History(String::from_utf8_lossy(&content).into()),
            Ok(_) => Checked::Intact,
            Err(CodecError::Corrupt(reason)) => Checked::Problem(Problem::Corrupt { key, reason }),
            Err(CodecError::Io(e)) => Checked::Problem(Problem::Unreadable {
                key,
                reason: e.to_string(),
            }),
        })
    })
    .await;
    result.unwrap_or_else(|e| unreadable(e.to_string()))
}

/// A history file lists its parent's history and then the switch from the parent.
fn history_problems(histories: &BTreeMap<u32, Vec<HistoryEntry>>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (&timeline, entries) in histories {
        let key = format!("{timeline:08X}.history");
        let bad = |reason: String| Problem::BadHistory {
            key: key.clone(),
            reason,
        };
        let Some(last) = entries.last() else {
            problems.push(bad("lists no parent timeline".into()));
            continue;
        };
        if last.timeline >= timeline {
            problems.push(bad(format!(
                "names timeline {} as an ancestor",
                last.timeline
            )));
            continue;
        }
        if let Some(parent) = histories.get(&last.timeline)
            && parent[..] != entries[..entries.len() - 1]
        {
            problems.push(bad(format!(
                "contradicts {:08X}.history: the ancestry of timeline {} differs",
                last.timeline, last.timeline
            )));
        }
    }
    problems
}

/// Segments missing inside each timeline's range, and on a parent up to each switch point.
fn wal_gaps<'a>(
    names: impl Iterator<Item = &'a WalFileName>,
    histories: &BTreeMap<u32, Vec<HistoryEntry>>,
    segment_size: u64,
) -> Vec<Problem> {
    // Per timeline: full segments, and segments present at all (a .partial counts there).
    let mut full: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut present: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for name in names {
        let Some(segno) = name.segment_number(segment_size) else {
            continue;
        };
        match name.kind() {
            WalFileKind::Segment => {
                full.entry(name.timeline()).or_default().insert(segno);
                present.entry(name.timeline()).or_default().insert(segno);
            }
            WalFileKind::Partial => {
                present.entry(name.timeline()).or_default().insert(segno);
            }
            _ => {}
        }
    }
    let mut problems = Vec::new();
    let mut missing_history = Vec::new();
    let mut missing = |timeline: u32, range: std::ops::RangeInclusive<u64>| {
        let (first, last) = (*range.start(), *range.end());
        problems.push(Problem::MissingWal {
            timeline,
            first: xlog_file_name(timeline, first, segment_size),
            last: xlog_file_name(timeline, last, segment_size),
            count: last - first + 1,
        });
    };
    for (&timeline, segments) in &present {
        let mut previous: Option<u64> = None;
        for &segno in segments {
            if let Some(previous) = previous
                && segno > previous + 1
            {
                missing(timeline, previous + 1..=segno - 1);
            }
            previous = Some(segno);
        }
        // Only the last segment of a timeline may be partial.
        let last = *segments.last().expect("non-empty");
        for &segno in segments.range(..last) {
            if !full.get(&timeline).is_some_and(|f| f.contains(&segno)) {
                missing(timeline, segno..=segno);
            }
        }
        if timeline > 1 && !histories.contains_key(&timeline) {
            missing_history.push(Problem::MissingHistory { timeline });
        }
    }
    for (&timeline, entries) in histories {
        let Some(switch) = entries.last() else {
            continue;
        };
        let switch_segno = switch.switchpoint.segment_number(segment_size);
        // The parent's WAL must reach the switch point (its last segment may be partial).
        let parent_last = if switch.switchpoint.0 % segment_size == 0 {
            switch_segno.saturating_sub(1)
        } else {
            switch_segno
        };
        if let Some(parent) = present.get(&switch.timeline) {
            let have = *parent.last().expect("non-empty");
            if have < parent_last {
                missing(switch.timeline, have + 1..=parent_last);
            }
        }
        // The child's WAL starts in the segment holding the switch point.
        if let Some(child) = present.get(&timeline) {
            let first = *child.first().expect("non-empty");
            if first > switch_segno {
                missing(timeline, switch_segno..=first - 1);
            }
        }
    }
    problems.extend(missing_history);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::Lsn;

    const SEG: u64 = 16 << 20;

    fn names(list: &[&str]) -> Vec<WalFileName> {
        list.iter()
            .map(|n| WalFileName::parse(n).unwrap())
            .collect()
    }

    #[test]
    fn continuous_timelines_have_no_gaps() {
        let wal = names(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003.partial",
            "000000020000000000000003",
            "000000020000000000000004",
        ]);
        let histories = BTreeMap::from([(
            2,
            vec![HistoryEntry {
                timeline: 1,
                switchpoint: Lsn(3 * SEG + 0x100),
            }],
        )]);
        assert_eq!(wal_gaps(wal.iter(), &histories, SEG), vec![]);
    }

    #[test]
    fn gaps_inside_a_timeline_and_before_a_switch_are_found() {
        let wal = names(&[
            "000000010000000000000001",
            "000000010000000000000004",
            "000000020000000000000007",
        ]);
        let histories = BTreeMap::from([(
            2,
            vec![HistoryEntry {
                timeline: 1,
                switchpoint: Lsn(6 * SEG + 0x100),
            }],
        )]);
        let found: Vec<String> = wal_gaps(wal.iter(), &histories, SEG)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            found,
            vec![
                "missing WAL on timeline 1: 000000010000000000000002 to 000000010000000000000003 (2 segments)",
                "missing WAL on timeline 1: 000000010000000000000005 to 000000010000000000000006 (2 segments)",
                "missing WAL on timeline 2: 000000020000000000000006 to 000000020000000000000006 (1 segment)",
            ]
        );
    }

    #[test]
    fn contradicting_histories_are_found() {
        let entry = |timeline, lsn| HistoryEntry {
            timeline,
            switchpoint: Lsn(lsn),
        };
        let histories = BTreeMap::from([
            (2, vec![entry(1, 0x300_0000)]),
            (3, vec![entry(1, 0x400_0000), entry(2, 0x500_0000)]),
        ]);
        let problems = history_problems(&histories);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .to_string()
                .contains("contradicts 00000002.history")
        );
    }
}
