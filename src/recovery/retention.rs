//! Retention: which backups and which WAL a policy keeps. A pure decision over what was
//! gathered (backups, pins, the archive view, the time); `commands::expire` gathers and
//! deletes through the catalog.
//!
//! Backups: the rules combine as a union, and the newest backup and pinned backups are always
//! kept. WAL: with a window (`keep_within`), continuous WAL from the start of the oldest backup
//! the window needs, along every timeline that descends from it; older kept backups keep only
//! their own range (start to stop segment), enough to become consistent. Without a window,
//! continuous WAL from every kept backup. History files always stay.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;

use chrono::{DateTime, Datelike, Duration, Utc};
use serde::Serialize;

use crate::catalog::backup::BackupManifest;
use crate::catalog::wal::ArchivedFile;
use crate::pg::timeline::TimelineSpan;
use crate::pg::wal_name::xlog_file_name;
use crate::pg::{WalFileKind, WalFileName};

use super::view::ArchiveView;
use super::walk::path_holds_backup;

/// What to keep. Counts are at least 1; `None` leaves a rule out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub keep_last: Option<u32>,
    /// Every point of this last stretch of time stays restorable.
    pub keep_within: Option<Duration>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// The calendar the GFS periods are counted in (default UTC).
    pub timezone: chrono_tz::Tz,
}

impl Policy {
    /// True when no rule is given: expiring would have nothing to go by.
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_within.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_yearly.is_none()
    }
}

/// Why a backup is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The newest complete backup is never removed.
    Newest,
    Pinned,
    KeepLast,
    KeepWithin,
    KeepDaily,
    KeepWeekly,
    KeepMonthly,
    KeepYearly,
    /// A kept incremental or differential backup builds on it.
    Chain,
    /// A restore in flight replays from it (a live replay claim).
    Replay,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Newest => "newest",
            Rule::Pinned => "pinned",
            Rule::KeepLast => "keep_last",
            Rule::KeepWithin => "keep_within",
            Rule::KeepDaily => "keep_daily",
            Rule::KeepWeekly => "keep_weekly",
            Rule::KeepMonthly => "keep_monthly",
            Rule::KeepYearly => "keep_yearly",
            Rule::Chain => "chain",
            Rule::Replay => "replay",
        })
    }
}

/// A kept backup and every rule that keeps it; GFS rules name their period (`2026-11-21`,
/// `2026-W47`, `2026-11`, `2026`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeptBackup {
    pub id: String,
    pub rules: Vec<Rule>,
    pub periods: Vec<String>,
}

/// A removed backup, and its backup history file in `wal/` if archived (removed with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedBackup {
    pub id: String,
    pub backup_history: Option<ArchivedFile>,
}

/// A stretch of one timeline's WAL that stays, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeptWal {
    pub timeline: u32,
    pub first_segno: u64,
    /// None: to the end of the timeline.
    pub last_segno: Option<u64>,
    pub reason: WalReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WalReason {
    /// Continuous WAL for point-in-time recovery from this backup on.
    Continuous { backup: String },
    /// Only what this backup needs to become consistent.
    Consistency { backup: String },
    /// A timeline no backup has reached yet: a backup running or to come starts there.
    NewTimeline,
    /// A restore in flight replays it (a live replay claim).
    Replay { claim: String, backup: String },
}

impl RetentionPlan {
    /// Keeps backup `id` after all, by `rule`, if the plan removed it (its backup history
    /// file stays with it); false when it did not.
    fn unremove(&mut self, id: &str, rule: Rule) -> bool {
        let Some(position) = self.removed.iter().position(|r| r.id == id) else {
            return false;
        };
        let removed = self.removed.remove(position);
        self.kept.push(KeptBackup {
            id: removed.id,
            rules: vec![rule],
            periods: Vec::new(),
        });
        true
    }
}

impl KeptWal {
    fn holds(&self, timeline: u32, segno: u64) -> bool {
        self.timeline == timeline
            && segno >= self.first_segno
            && self.last_segno.is_none_or(|last| segno <= last)
    }

    /// Whether the stretch is there for point-in-time recovery, not only consistency.
    fn is_continuous(&self) -> bool {
        matches!(
            self.reason,
            WalReason::Continuous { .. } | WalReason::NewTimeline
        )
    }
}

/// What the policy keeps and removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Newest first.
    pub kept: Vec<KeptBackup>,
    /// Oldest first.
    pub removed: Vec<RemovedBackup>,
    pub wal_kept: Vec<KeptWal>,
    /// Segments, partial segments and backup history files, oldest first (by segment, then
    /// timeline), so that what stays is contiguous at every step.
    pub wal_removed: Vec<ArchivedFile>,
    /// Summaries whose WAL file is gone (a removal cut short) and that no kept stretch holds.
    pub orphan_summaries: Vec<WalFileName>,
    /// Per timeline, the segment below which WAL was expired (only backups' own ranges stay
    /// there): `pitr verify` does not count gaps below it as missing WAL.
    pub expired_before: BTreeMap<u32, u64>,
}

/// Decides what `policy` keeps of `backups` (complete, sound manifests) at `now`.
pub fn plan_retention(
    view: &ArchiveView,
    backups: &[BackupManifest],
    pinned: &BTreeSet<String>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> RetentionPlan {
    if backups.is_empty() {
        // Nothing to restore from, so nothing to measure WAL against: keep it all.
        return RetentionPlan::default();
    }
    let mut newest_first: Vec<&BackupManifest> = backups.iter().collect();
    newest_first.sort_by(|a, b| (b.start_time, &b.id).cmp(&(a.start_time, &a.id)));

    let mut rules: BTreeMap<&str, (Vec<Rule>, Vec<String>)> = BTreeMap::new();
    let mut add = |id: &str, rule: Rule, period: Option<String>| {
        let Some(id) = backups_id(backups, id) else {
            return;
        };
        let entry = rules.entry(id).or_default();
        if !entry.0.contains(&rule) {
            entry.0.push(rule);
        }
        entry.1.extend(period);
    };
    add(&newest_first[0].id, Rule::Newest, None);
    for backup in &newest_first {
        if pinned.contains(&backup.id) {
            add(&backup.id, Rule::Pinned, None);
        }
    }
    // The chains of the last n full backups: each full, and what builds on it.
    if let Some(n) = policy.keep_last {
        let fulls: Vec<&str> = newest_first
            .iter()
            .filter(|b| b.backup_type.is_full())
            .take(n as usize)
            .map(|b| b.id.as_str())
            .collect();
        for backup in &newest_first {
            if ancestors(backups, backup).any(|a| fulls.contains(&a.id.as_str())) {
                add(&backup.id, Rule::KeepLast, None);
            }
        }
    }
    // The window: every backup that finished inside it, and the newest that finished before
    // it (restores to its first moments start there), or the oldest when none did.
    let window_oldest = policy.keep_within.and_then(|within| {
        // A window past chrono's range reaches back to its start.
        let cutoff = now
            .checked_sub_signed(within)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let before = newest_first
            .iter()
            .filter(|b| b.stop_time <= cutoff)
            .max_by_key(|b| (b.stop_time, &b.id));
        let anchor = before.or_else(|| newest_first.iter().min_by_key(|b| (b.stop_time, &b.id)));
        anchor.map(|a| (a.stop_time, a.id.clone()))
    });
    let in_window = |b: &BackupManifest| {
        window_oldest
            .as_ref()
            .is_some_and(|(stop, id)| (b.stop_time, &b.id) >= (*stop, id))
    };
    for backup in newest_first.iter().filter(|b| in_window(b)) {
        add(&backup.id, Rule::KeepWithin, None);
    }
    let tz = policy.timezone;
    let gfs: [(Option<u32>, Rule, PeriodOf); 4] = [
        (policy.keep_daily, Rule::KeepDaily, |t| {
            t.format("%Y-%m-%d").to_string()
        }),
        (policy.keep_weekly, Rule::KeepWeekly, |t| {
            let week = t.iso_week();
            format!("{}-W{:02}", week.year(), week.week())
        }),
        (policy.keep_monthly, Rule::KeepMonthly, |t| {
            t.format("%Y-%m").to_string()
        }),
        (policy.keep_yearly, Rule::KeepYearly, |t| {
            t.format("%Y").to_string()
        }),
    ];
    for (count, rule, period_of) in gfs {
        let Some(count) = count else { continue };
        let mut periods: BTreeSet<String> = BTreeSet::new();
        for backup in &newest_first {
            let period = period_of(backup.start_time.with_timezone(&tz));
            // Newest first: the first backup seen in a period is its newest.
            if periods.len() < count as usize && periods.insert(period.clone()) {
                add(&backup.id, rule, Some(format!("{rule} {period}")));
            }
        }
    }

    // A kept backup keeps every backup it builds on: a restore of it reads their files.
    let kept_now: Vec<&BackupManifest> = backups
        .iter()
        .filter(|b| rules.contains_key(b.id.as_str()))
        .collect();
    for backup in kept_now {
        for ancestor in ancestors(backups, backup).skip(1) {
            let entry = rules.entry(ancestor.id.as_str()).or_default();
            if !entry.0.contains(&Rule::Chain) {
                entry.0.push(Rule::Chain);
            }
        }
    }

    let kept: Vec<KeptBackup> = newest_first
        .iter()
        .filter_map(|b| {
            let (mut rules, periods) = rules.get(b.id.as_str())?.clone();
            rules.sort();
            Some(KeptBackup {
                id: b.id.clone(),
                rules,
                periods,
            })
        })
        .collect();
    let kept_ids: BTreeSet<&str> = kept.iter().map(|k| k.id.as_str()).collect();

    // WAL: which stretches of which timelines each kept backup needs.
    let segment_size = view.segment_size;
    let mut timelines: BTreeSet<u32> = view.listing.timelines();
    timelines.insert(1);
    timelines.extend(backups.iter().map(|b| b.timeline));
    let paths: Vec<Vec<TimelineSpan>> = timelines.iter().filter_map(|&t| view.path(t)).collect();
    let mut wal_kept = Vec::new();
    for backup in newest_first.iter().rev() {
        if !kept_ids.contains(backup.id.as_str()) {
            continue;
        }
        let continuous = match policy.keep_within {
            Some(_) => in_window(backup),
            None => true,
        };
        let first = backup.start_lsn.segment_number(segment_size);
        let last = backup.stop_lsn.segment_number(segment_size);
        let reason = if continuous {
            WalReason::Continuous {
                backup: backup.id.clone(),
            }
        } else {
            WalReason::Consistency {
                backup: backup.id.clone(),
            }
        };
        for path in paths.iter().filter(|p| path_holds_backup(p, backup)) {
            for (timeline, lo, hi) in path_ranges(path, segment_size) {
                let from = lo.max(first);
                let to = match (hi, continuous) {
                    (Some(hi), true) => Some(hi),
                    (None, true) => None,
                    (Some(hi), false) => Some(hi.min(last)),
                    (None, false) => Some(last),
                };
                if to.is_some_and(|to| to < from) {
                    continue;
                }
                let range = KeptWal {
                    timeline,
                    first_segno: from,
                    last_segno: to,
                    reason: reason.clone(),
                };
                if !wal_kept.contains(&range) {
                    wal_kept.push(range);
                }
            }
        }
    }
    // A timeline newer than every backup's: a backup running or to come starts there.
    let newest_timeline = backups.iter().map(|b| b.timeline).max().unwrap_or(1);
    // Manifests say which timeline: u32::MAX has none newer.
    let newer = (Bound::Excluded(newest_timeline), Bound::Unbounded);
    for &timeline in view.listing.timelines().range(newer) {
        wal_kept.push(KeptWal {
            timeline,
            first_segno: 0,
            last_segno: None,
            reason: WalReason::NewTimeline,
        });
    }
    // By timeline: a listing may hold hundreds of thousands of files.
    let mut kept_by_timeline: BTreeMap<u32, Vec<&KeptWal>> = BTreeMap::new();
    for range in &wal_kept {
        kept_by_timeline
            .entry(range.timeline)
            .or_default()
            .push(range);
    }
    let is_kept = |timeline: u32, segno: u64| {
        kept_by_timeline
            .get(&timeline)
            .is_some_and(|ranges| ranges.iter().any(|r| r.holds(timeline, segno)))
    };

    let removed: Vec<RemovedBackup> = newest_first
        .iter()
        .rev()
        .filter(|b| !kept_ids.contains(b.id.as_str()))
        .map(|b| RemovedBackup {
            id: b.id.clone(),
            backup_history: view
                .listing
                .backup_histories
                .iter()
                .find(|f| f.name.as_str() == backup_history_name(b, segment_size))
                .cloned(),
        })
        .collect();
    let removed_histories: BTreeSet<&WalFileName> = removed
        .iter()
        .filter_map(|r| r.backup_history.as_ref().map(|f| &f.name))
        .collect();

    let mut wal_removed: Vec<(u64, u32, ArchivedFile)> = Vec::new();
    let mut present: BTreeSet<&WalFileName> = BTreeSet::new();
    for file in view.listing.files() {
        present.insert(&file.name);
        if file.name.kind() == WalFileKind::History || removed_histories.contains(&file.name) {
            continue;
        }
        let Some(segno) = file.name.segment_number(segment_size) else {
            continue;
        };
        if !is_kept(file.name.timeline(), segno) {
            wal_removed.push((segno, file.name.timeline(), file.clone()));
        }
    }
    wal_removed.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
    let orphan_summaries = view
        .listing
        .summarised
        .iter()
        .filter(|name| name.kind() != WalFileKind::History && !present.contains(name))
        .filter(|name| {
            name.segment_number(segment_size)
                .is_some_and(|segno| !is_kept(name.timeline(), segno))
        })
        .cloned()
        .collect();

    // Below the first continuous stretch of a timeline only backups' own ranges stay; a
    // timeline with none kept continuous was expired up to its end.
    let mut expired_before = BTreeMap::new();
    for timeline in view.listing.timelines() {
        let continuous_from = wal_kept
            .iter()
            .filter(|r| r.timeline == timeline && r.is_continuous())
            .map(|r| r.first_segno)
            .min();
        let end = view
            .listing
            .segments
            .range((timeline, 0)..=(timeline, u64::MAX))
            .chain(
                view.listing
                    .partials
                    .range((timeline, 0)..=(timeline, u64::MAX)),
            )
            .map(|(&(_, segno), _)| segno + 1)
            .max();
        let before = match (continuous_from, end) {
            (Some(from), _) => from,
            (None, Some(end)) => end,
            (None, None) => continue,
        };
        let removes_some = wal_removed
            .iter()
            .any(|(segno, t, _)| *t == timeline && *segno < before);
        if removes_some {
            expired_before.insert(timeline, before);
        }
    }

    RetentionPlan {
        kept,
        removed,
        wal_kept,
        wal_removed: wal_removed.into_iter().map(|(_, _, f)| f).collect(),
        orphan_summaries,
        expired_before,
    }
}

/// What a live replay claim holds: its backup and the segments its recovery reads, as
/// (timeline, first, last) segment numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayHold {
    pub claim: String,
    pub backup: String,
    pub runs: Vec<(u32, u64, u64)>,
}

/// Keeps what live replays need on top of what the policy keeps: their backups (rule
/// `replay`), the backups those build on (rule `chain`: a chain stays whole), and every
/// segment they read, whatever the policy says of them.
pub fn hold_for_replays(
    plan: &mut RetentionPlan,
    holds: &[ReplayHold],
    backups: &[BackupManifest],
    segment_size: u64,
) {
    for hold in holds {
        let held = backups.iter().find(|b| b.id == hold.backup);
        for ancestor in held.into_iter().flat_map(|b| ancestors(backups, b).skip(1)) {
            plan.unremove(&ancestor.id, Rule::Chain);
        }
        if !plan.unremove(&hold.backup, Rule::Replay)
            && let Some(kept) = plan.kept.iter_mut().find(|k| k.id == hold.backup)
            && !kept.rules.contains(&Rule::Replay)
        {
            kept.rules.push(Rule::Replay);
        }
        for &(timeline, first, last) in &hold.runs {
            plan.wal_kept.push(KeptWal {
                timeline,
                first_segno: first,
                last_segno: Some(last),
                reason: WalReason::Replay {
                    claim: hold.claim.clone(),
                    backup: hold.backup.clone(),
                },
            });
        }
    }
    let held = |name: &WalFileName| {
        name.segment_number(segment_size).is_some_and(|segno| {
            holds.iter().any(|h| {
                h.runs.iter().any(|&(timeline, first, last)| {
                    timeline == name.timeline() && (first..=last).contains(&segno)
                })
            })
        })
    };
    plan.wal_removed.retain(|file| !held(&file.name));
    plan.orphan_summaries.retain(|name| !held(name));
}

/// `backup`, then the backup it builds on, and so on to its full backup (as far as
/// `backups` holds them).
pub fn ancestors<'a>(
    backups: &'a [BackupManifest],
    backup: &'a BackupManifest,
) -> impl Iterator<Item = &'a BackupManifest> {
    let mut next = Some(backup);
    let mut steps = 0;
    std::iter::from_fn(move || {
        let current = next?;
        steps += 1;
        next = current
            .parent
            .as_deref()
            .and_then(|parent| backups.iter().find(|b| b.id == parent))
            .filter(|_| steps <= backups.len());
        Some(current)
    })
}

/// The id as `backups` owns it (the rules map borrows from the input, not from the sort).
fn backups_id<'a>(backups: &'a [BackupManifest], id: &str) -> Option<&'a str> {
    backups.iter().find(|b| b.id == id).map(|b| b.id.as_str())
}

/// The name of the calendar period a local time falls in.
type PeriodOf = fn(DateTime<chrono_tz::Tz>) -> String;

/// Per span of `path`: the timeline and the segment numbers recovery reads from it (as
/// `timeline_of_segment` picks: the newest span that began at or before a segment).
fn path_ranges(path: &[TimelineSpan], segment_size: u64) -> Vec<(u32, u64, Option<u64>)> {
    let mut ranges = Vec::new();
    for (i, span) in path.iter().enumerate() {
        let lo = span.begin.segment_number(segment_size);
        let next = path[i + 1..]
            .iter()
            .map(|s| s.begin.segment_number(segment_size))
            .min();
        match next {
            Some(next) if next <= lo => continue, // a later span begins in the same segment
            Some(next) => ranges.push((span.timeline, lo, Some(next - 1))),
            None => ranges.push((span.timeline, lo, None)),
        }
    }
    ranges
}

/// The name of the backup history file PostgreSQL archives at the end of `backup`.
pub fn backup_history_name(backup: &BackupManifest, segment_size: u64) -> String {
    let segno = backup.start_lsn.segment_number(segment_size);
    format!(
        "{}.{:08X}.backup",
        xlog_file_name(backup.timeline, segno, segment_size),
        backup.start_lsn.0 % segment_size
    )
}

/// Parses a retention window: `30d`, `12h`, `2w`, `90m`, `1d 12h` (humantime's syntax).
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let std = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("'{text}' is not a duration ({e}): write it as 30d, 12h, 2w or 90m")
    })?;
    if std.is_zero() {
        return Err(format!(
            "'{text}' is no time at all: give a positive duration"
        ));
    }
    Duration::from_std(std).map_err(|_| format!("'{text}' is too long"))
}

#[cfg(test)]
mod tests;
