//! The restore pre-flight: before a byte is written, proves that the repository holds every
//! segment and history file recovery needs from the backup's start to the point where the
//! target is reached, or says exactly what is missing and how far the archive does reach.
//!
//! Two halves: [`gather_and_plan`] reads (backups, the archive view, the summaries a
//! decision needs) and [`plan_restore`] decides, as a pure function of what was read.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::catalog::backup::BackupManifest;
use crate::catalog::wal::ArchivedFile;
use crate::catalog::{Catalog, CatalogError, total_bytes};
use crate::pg::Lsn;
use crate::pg::recovery_target::{RecoveryRequest, Target, TargetTimeline};
use crate::pg::timeline::{TimelineSpan, fork_point, switch_point};
use crate::pg::timestamp::rfc3339;
use crate::pg::wal_summary::XidRange;
use crate::pg::xact_end::XactEnd;

use super::view::{ArchiveView, Block, Needed};
use super::walk::{SegmentRuns, Walk, path_holds_backup};
use super::window::{load_window, recovery_window};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the repository holds no backup: run `pitr backup` first")]
    NoBackup,
    #[error("no backup {0} in the repository (see `pitr list`)")]
    UnknownBackup(String),
    /// The archive cannot take recovery where it was asked to go.
    #[error("{0}")]
    Unreachable(String),
    /// The target is reached on timelines whose histories differ before it: which one is a
    /// choice only the user can make (`--target-timeline`).
    #[error("{0}")]
    AmbiguousTimeline(String),
}

/// What a restore asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanRequest {
    pub recovery: RecoveryRequest,
    /// Restore this backup rather than choosing one.
    pub backup: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RestorePlan {
    pub backup: BackupManifest,
    pub timeline: u32,
    /// The segments recovery reads, in order.
    pub segments: SegmentRuns,
    pub histories: Vec<ArchivedFile>,
    /// Where recovery stops, in words.
    pub stops: String,
    /// Stored bytes of the WAL and history files.
    pub wal_bytes: u64,
    /// Where recovery stops, where the WAL says it exactly (an LSN, a restore point's or a
    /// commit's record): a fork after it changes nothing.
    pub target_lsn: Option<Lsn>,
}

/// Reads what deciding needs, then decides: the summaries of the segments each candidate
/// backup's recovery would read (for an xid target, and the segments that may end the
/// transaction, decoded), newest candidate first, stopping at the first that works.
pub async fn gather_and_plan(
    catalog: &Catalog,
    view: &mut ArchiveView,
    backups: &[BackupManifest],
    request: &PlanRequest,
    jobs: usize,
) -> Result<Result<RestorePlan, PlanError>, CatalogError> {
    gather(catalog, view, backups, request, jobs).await?;
    // Without a timeline asked for, every timeline that might reach the target is planned too.
    for other in other_timelines(view, backups, request) {
        gather(catalog, view, backups, &other, jobs).await?;
    }
    let planned = plan_restore(view, backups, request);
    if planned.is_err() {
        // A refusal names how far the archive reaches: the end of the recovery window `list`
        // shows, read now (a successful plan never needs it).
        for timeline in view.listing.timelines() {
            if let Some(path) = view.path(timeline) {
                load_window(catalog, view, &path, backups, jobs).await?;
            }
        }
        return Ok(plan_restore(view, backups, request));
    }
    Ok(planned)
}

/// Reads what planning `request` needs.
async fn gather(
    catalog: &Catalog,
    view: &mut ArchiveView,
    backups: &[BackupManifest],
    request: &PlanRequest,
    jobs: usize,
) -> Result<(), CatalogError> {
    let Ok(candidates) = candidates(view, backups, request) else {
        return Ok(());
    };
    for backup in candidates {
        let Some((_, path)) = resolve_path(view, backup, request.recovery.timeline) else {
            continue;
        };
        let walk = view.walk(&path, backup.start_lsn);
        let needed = summaries_needed(view, backup, &request.recovery);
        view.load_summaries(catalog, &walk.segments, &needed, jobs)
            .await?;
        if let Target::Xid(xid) = request.recovery.target {
            let files = view.files(&walk.segments);
            super::xid::search_walk(catalog, view, &files, xid, jobs).await?;
        }
        if let Ok(plan) = plan_for_backup(view, backups, backup, &request.recovery) {
            // The sizes of segments in groups the plan covers only in part (whole groups
            // have theirs in their rollup's key).
            let unknown: Vec<ArchivedFile> = view
                .blocks(&plan.segments)
                .into_iter()
                .filter_map(|block| match block {
                    Block::Segment(t, s) => view.file(t, s).filter(|f| f.size() == 0),
                    Block::Group(_) => None,
                })
                .collect();
            view.load_sizes(catalog, &unknown, jobs).await?;
            break;
        }
    }
    Ok(())
}

/// The same request on each other timeline that may reach its target, when the request
/// names no timeline and its target is a point in the history (a time, LSN, restore point
/// or transaction): a restored copy's timeline, or an old primary's, reaches it too.
fn other_timelines(
    view: &ArchiveView,
    backups: &[BackupManifest],
    request: &PlanRequest,
) -> Vec<PlanRequest> {
    let point = matches!(
        request.recovery.target,
        Target::Time(_) | Target::Lsn(_) | Target::Name(_) | Target::Xid(_)
    );
    if request.recovery.timeline.is_some() || !point {
        return Vec::new();
    }
    let mut timelines: BTreeSet<u32> = view.histories.keys().copied().collect();
    timelines.insert(1);
    timelines.extend(backups.iter().map(|b| b.timeline));
    timelines
        .into_iter()
        .filter(|&t| view.path(t).is_some())
        .map(|t| {
            let mut other = request.clone();
            other.recovery.timeline = Some(TargetTimeline::Number(t));
            other
        })
        .collect()
}

/// Among the plans of the timelines that reach the target, those whose histories up to the
/// target differ: one per distinct history (the first timeline of each). Two plans agree
/// when they read the same segments, or stop at the same record before their paths fork.
fn distinct_histories<'a>(view: &ArchiveView, plans: &'a [RestorePlan]) -> Vec<&'a RestorePlan> {
    let mut distinct: Vec<&RestorePlan> = Vec::new();
    for plan in plans {
        let agrees = |other: &&RestorePlan| {
            if other.segments.runs == plan.segments.runs {
                return true;
            }
            let (Some(a), Some(b)) = (view.path(plan.timeline), view.path(other.timeline)) else {
                return false;
            };
            match (plan.target_lsn, other.target_lsn, fork_point(&a, &b)) {
                (Some(x), Some(y), Some(fork)) => x == y && x < fork,
                (Some(x), Some(y), None) => x == y,
                _ => false,
            }
        };
        if !distinct.iter().any(agrees) {
            distinct.push(plan);
        }
    }
    distinct
}

/// The one-line refusal of a target that histories reach differently.
fn ambiguous(
    view: &ArchiveView,
    backups: &[BackupManifest],
    target: &Target,
    plans: &[&RestorePlan],
) -> PlanError {
    let described: Vec<String> = plans
        .iter()
        .map(|plan| {
            let origin = timeline_origin(view, plan.timeline);
            let on_it: Vec<&str> = backups
                .iter()
                .filter(|b| b.timeline == plan.timeline)
                .map(|b| b.id.as_str())
                .collect();
            let on_it = if on_it.is_empty() {
                "no backup on it".to_owned()
            } else {
                format!("backups on it: {}", on_it.join(", "))
            };
            format!(
                "timeline {} ({origin}; {on_it}; restores from backup {})",
                plan.timeline, plan.backup.id
            )
        })
        .collect();
    let numbers: Vec<String> = plans.iter().map(|p| p.timeline.to_string()).collect();
    PlanError::AmbiguousTimeline(format!(
        "the target {target} is reached on {} timelines whose histories differ before it: {}; a restored \
         copy that archived into this repository makes such a fork. Choose one with \
         --target-timeline {} (`pitr list` shows the timeline tree)",
        plans.len(),
        described.join(", "),
        numbers.join(" or ")
    ))
}

/// Where `timeline` came from, in words.
fn timeline_origin(view: &ArchiveView, timeline: u32) -> String {
    match view.histories.get(&timeline).and_then(|h| h.last()) {
        Some(parent) => format!(
            "forked from timeline {} at {}",
            parent.timeline, parent.switchpoint
        ),
        None if timeline == 1 => "the first timeline".to_owned(),
        None => "no history file".to_owned(),
    }
}

/// The plan for `request`: the first candidate backup from which recovery reaches the
/// target, or why none does (the newest candidate's reason, unless an older one's says more
/// about an xid target).
pub fn plan_restore(
    view: &ArchiveView,
    backups: &[BackupManifest],
    request: &PlanRequest,
) -> Result<RestorePlan, PlanError> {
    let chosen = plan_one(view, backups, request);
    let others = other_timelines(view, backups, request);
    if others.is_empty() {
        return chosen;
    }
    let reached: Vec<RestorePlan> = others
        .iter()
        .filter_map(|other| plan_one(view, backups, other).ok())
        .collect();
    let distinct = distinct_histories(view, &reached);
    match chosen {
        Ok(_) if distinct.len() > 1 => Err(ambiguous(
            view,
            backups,
            &request.recovery.target,
            &distinct,
        )),
        Ok(plan) => Ok(plan),
        // Not reached on the default timeline: say where it is.
        Err(PlanError::Unreachable(text)) if !distinct.is_empty() => {
            let numbers: Vec<String> = distinct.iter().map(|p| p.timeline.to_string()).collect();
            Err(PlanError::Unreachable(format!(
                "{text} (on the latest timeline; timeline {} reaches it: pass \
                 --target-timeline {})",
                numbers.join(" and "),
                numbers.join(" or ")
            )))
        }
        Err(e) => Err(e),
    }
}

/// The plan for `request` on the timeline it resolves to.
fn plan_one(
    view: &ArchiveView,
    backups: &[BackupManifest],
    request: &PlanRequest,
) -> Result<RestorePlan, PlanError> {
    let candidates = candidates(view, backups, request)?;
    let mut refusals = Vec::new();
    for backup in &candidates {
        match plan_backup(view, backups, backup, &request.recovery) {
            Ok(plan) => return Ok(plan),
            Err(refusal) => refusals.push(refusal),
        }
    }
    // The newest backup's reason, unless an older one says more about an xid target.
    let telling = (0..refusals.len())
        .max_by_key(|&i| (refusals[i].weight(), std::cmp::Reverse(i)))
        .ok_or(PlanError::NoBackup)?;
    if let Refusal::XidNotSeen { xid, .. } = refusals[telling] {
        // Not in the WAL after any backup: say which transactions are there.
        let committed = refusals
            .iter()
            .filter_map(|r| match r {
                Refusal::XidNotSeen { committed, .. } => *committed,
                _ => None,
            })
            .reduce(XidRange::union);
        let after = match candidates.as_slice() {
            [only] => format!("backup {}", only.id),
            _ => "any backup".to_owned(),
        };
        return Err(xid_not_seen(xid, &after, committed));
    }
    Err(refusals.swap_remove(telling).into_error())
}

/// Why one backup cannot take recovery to the target, and how much that says: for an xid
/// target, a backup whose WAL holds the transaction's end explains more than one whose WAL
/// does not.
enum Refusal {
    /// The transaction ends in this backup's WAL, but not as a commit after its end.
    XidLocated(PlanError),
    /// This backup's WAL, complete from its start, does not end the transaction; the
    /// transactions that do commit there, as far as the summaries know.
    XidNotSeen {
        xid: u32,
        backup: String,
        committed: Option<XidRange>,
    },
    Other(PlanError),
}

impl Refusal {
    /// A backup whose WAL holds the transaction's end says most, then one whose WAL
    /// (complete from its start) does not hold it.
    fn weight(&self) -> u8 {
        match self {
            Refusal::XidLocated(_) => 2,
            Refusal::XidNotSeen { .. } => 1,
            Refusal::Other(_) => 0,
        }
    }

    fn into_error(self) -> PlanError {
        match self {
            Refusal::XidLocated(error) | Refusal::Other(error) => error,
            Refusal::XidNotSeen {
                xid,
                backup,
                committed,
            } => xid_not_seen(xid, &format!("backup {backup}"), committed),
        }
    }
}

fn xid_not_seen(xid: u32, after: &str, committed: Option<XidRange>) -> PlanError {
    let seen = committed.map_or_else(String::new, |range| {
        format!(
            " (the transactions that commit there are numbered {} to {})",
            range.min, range.max
        )
    });
    PlanError::Unreachable(format!(
        "transaction {xid} did not commit in the archived WAL after {after}{seen}: check the \
         number (txid_current() inside the transaction gives it), or archive newer WAL first \
         (SELECT pg_switch_wal() on the primary)"
    ))
}

/// The backups worth trying, best first: the one asked for; for a time or LSN, the newest
/// that finished before it; for a restore point or a transaction, whose position only the
/// WAL knows, every backup from the newest; otherwise the newest. With a timeline number
/// asked for, only backups recovery to it can start from count.
pub fn candidates<'a>(
    view: &ArchiveView,
    backups: &'a [BackupManifest],
    request: &PlanRequest,
) -> Result<Vec<&'a BackupManifest>, PlanError> {
    if let Some(id) = &request.backup {
        return match backups.iter().find(|b| &b.id == id) {
            Some(backup) => Ok(vec![backup]),
            None => Err(PlanError::UnknownBackup(id.clone())),
        };
    }
    if backups.is_empty() {
        return Err(PlanError::NoBackup);
    }
    let mut newest_first: Vec<&BackupManifest> = backups.iter().collect();
    if let Some(TargetTimeline::Number(timeline)) = request.recovery.timeline
        && let Some(path) = view.path(timeline)
    {
        let on_path: Vec<&BackupManifest> = newest_first
            .iter()
            .copied()
            .filter(|b| path_holds_backup(&path, b))
            .collect();
        // None on it: the newest backup's refusal says why.
        if !on_path.is_empty() {
            newest_first = on_path;
        }
    }
    newest_first.sort_by(|a, b| (b.stop_time, &b.id).cmp(&(a.stop_time, &a.id)));
    let fits = |backup: &&BackupManifest| match &request.recovery.target {
        Target::Time(time) => backup.stop_time <= *time,
        Target::Lsn(lsn) => backup.stop_lsn <= *lsn,
        _ => true,
    };
    match &request.recovery.target {
        Target::Name(_) | Target::Xid(_) => Ok(newest_first),
        _ => match newest_first.iter().find(|b| fits(b)) {
            Some(backup) => Ok(vec![*backup]),
            None => {
                let earliest = newest_first.last().ok_or(PlanError::NoBackup)?;
                Err(PlanError::Unreachable(format!(
                    "no backup finished before the target; the earliest restorable point is \
                     {} (backup {})",
                    rfc3339(earliest.stop_time),
                    earliest.id
                )))
            }
        },
    }
}

/// Which summaries of its walk deciding for `backup` reads.
pub fn summaries_needed(
    view: &ArchiveView,
    backup: &BackupManifest,
    recovery: &RecoveryRequest,
) -> Needed {
    let Some((_, path)) = resolve_path(view, backup, recovery.timeline) else {
        return Needed::Nothing;
    };
    let walk = view.walk(&path, backup.start_lsn);
    match &recovery.target {
        Target::Immediate => Needed::Nothing,
        // Only to say how far the archive reaches, when it does not reach the LSN.
        Target::Lsn(lsn) if walk.reaches(lsn.segment_number(view.segment_size)) => Needed::Nothing,
        Target::Lsn(_) | Target::End => Needed::Outline,
        Target::Time(time) => Needed::FirstCommitAfter(*time),
        Target::Name(_) => Needed::RestorePoints,
        Target::Xid(_) => Needed::Everything,
    }
}

fn resolve_timeline(
    view: &ArchiveView,
    backup: &BackupManifest,
    timeline: Option<TargetTimeline>,
) -> u32 {
    match timeline.unwrap_or_default() {
        TargetTimeline::Latest => view.latest_timeline(backup.timeline),
        TargetTimeline::Current => backup.timeline,
        TargetTimeline::Number(n) => n,
    }
}

/// The timeline recovery follows and the path to it; none without its history file.
fn resolve_path(
    view: &ArchiveView,
    backup: &BackupManifest,
    timeline: Option<TargetTimeline>,
) -> Option<(u32, Vec<TimelineSpan>)> {
    let timeline = resolve_timeline(view, backup, timeline);
    Some((timeline, view.path(timeline)?))
}

/// Plans a restore of `backup`: pure, over the view's listing, histories, summaries and
/// (for an xid target) what decoding found.
pub fn plan_for_backup(
    view: &ArchiveView,
    backups: &[BackupManifest],
    backup: &BackupManifest,
    recovery: &RecoveryRequest,
) -> Result<RestorePlan, PlanError> {
    plan_backup(view, backups, backup, recovery).map_err(Refusal::into_error)
}

/// `backups` are all of them: a refusal names the end of the timeline's recovery window,
/// which an older backup may reach further back than `backup`.
fn plan_backup(
    view: &ArchiveView,
    backups: &[BackupManifest],
    backup: &BackupManifest,
    recovery: &RecoveryRequest,
) -> Result<RestorePlan, Refusal> {
    let unreachable = |text: String| Refusal::Other(PlanError::Unreachable(text));
    let timeline = resolve_timeline(view, backup, recovery.timeline);
    let path = view.path(timeline).ok_or_else(|| {
        unreachable(format!(
            "timeline {timeline} has no history file {timeline:08X}.history in the repository: \
             it cannot be followed"
        ))
    })?;
    let (start, stop) = (backup.start_lsn, backup.stop_lsn);
    if !path_holds_backup(&path, backup) {
        return Err(unreachable(format!(
            "timeline {timeline} does not descend from timeline {} after backup {} started at \
             {start}{}: choose another --target-timeline or backup",
            backup.timeline,
            backup.id,
            branch_point(&path, backup.timeline)
        )));
    }
    let walk = view.walk(&path, start);
    let segment_size = view.segment_size;
    let stop_count = walk
        .count_through(stop.segment_number(segment_size))
        .ok_or_else(|| {
            unreachable(format!(
                "WAL segment {} is missing from the repository; backup {} needs its WAL up to \
                 {} to become consistent",
                walk.missing, backup.id, backup.stop_wal_segment
            ))
        })?;

    // How many of the walked segments recovery reads, and where it stops.
    let mut target_lsn = None;
    let (needed, stops) = match &recovery.target {
        Target::Immediate => (
            stop_count,
            format!("when backup {} is consistent", backup.id),
        ),
        Target::Lsn(lsn) => {
            if *lsn < stop {
                return Err(unreachable(format!(
                    "target LSN {lsn} lies before the end of backup {} ({stop}): choose an \
                     earlier backup with --backup",
                    backup.id
                )));
            }
            let count = walk
                .count_through(lsn.segment_number(segment_size))
                .ok_or_else(|| {
                    Refusal::Other(beyond_reach(
                        view,
                        (&path, backups),
                        &recovery.target,
                        &walk,
                        &format!("target LSN {lsn}"),
                    ))
                })?;
            target_lsn = Some(*lsn);
            (count, format!("at LSN {lsn}"))
        }
        Target::Time(time) => {
            let after = view.find(
                &walk.segments,
                |key| key.last_commit.is_some_and(|last| last > *time),
                |s| s.last_commit_time.is_some_and(|last| last > *time),
            );
            let (index, at_timeline, at_segno) = after.ok_or_else(|| {
                Refusal::Other(beyond_reach(
                    view,
                    (&path, backups),
                    &recovery.target,
                    &walk,
                    &format!("target time {}", rfc3339(*time)),
                ))
            })?;
            (
                (index + 1).max(stop_count),
                format!(
                    "before the first commit after {} (in {})",
                    rfc3339(*time),
                    walk.segments.name((at_timeline, at_segno))
                ),
            )
        }
        Target::Name(name) => {
            let found = view.find(
                &walk.segments,
                |key| key.restore_points,
                |s| {
                    s.restore_points
                        .iter()
                        .any(|p| &p.name == name && p.lsn >= stop)
                },
            );
            match found {
                Some((index, t, segno)) => {
                    target_lsn = view.summary_of(t, segno).and_then(|s| {
                        s.restore_points
                            .iter()
                            .find(|p| &p.name == name && p.lsn >= stop)
                            .map(|p| p.lsn)
                    });
                    (
                        (index + 1).max(stop_count),
                        format!(
                            "at restore point '{name}' (in {})",
                            walk.segments.name((t, segno))
                        ),
                    )
                }
                None if walk.gap => {
                    return Err(Refusal::Other(beyond_reach(
                        view,
                        (&path, backups),
                        &recovery.target,
                        &walk,
                        &format!("restore point '{name}'"),
                    )));
                }
                None => {
                    return Err(unreachable(format!(
                        "restore point '{name}' is not in the archived WAL after backup {} \
                         (restore points there: {}); create it with pg_create_restore_point() \
                         or check the name",
                        backup.id,
                        restore_point_names(view, &walk)
                    )));
                }
            }
        }
        Target::Xid(xid) => {
            let (index, name, end) = xact_end_in(view, &walk, *xid).ok_or_else(|| {
                if walk.gap {
                    Refusal::Other(beyond_reach(
                        view,
                        (&path, backups),
                        &recovery.target,
                        &walk,
                        &format!("the commit of transaction {xid}"),
                    ))
                } else {
                    Refusal::XidNotSeen {
                        xid: *xid,
                        backup: backup.id.clone(),
                        committed: committed_xids(view, &walk),
                    }
                }
            })?;
            let time = end.time.map_or_else(|| "time unknown".into(), rfc3339);
            let located = |text: String| Refusal::XidLocated(PlanError::Unreachable(text));
            if !end.committed {
                return Err(located(format!(
                    "transaction {xid} aborted at {} ({time}): it never committed, so there is \
                     no commit to stop after (PostgreSQL would stop after the abort; to restore \
                     to that point, use --target-lsn {})",
                    end.lsn, end.lsn
                )));
            }
            if end.lsn < stop {
                return Err(located(format!(
                    "transaction {xid} committed at {} ({time}), before backup {} was \
                     consistent ({stop}): only an earlier backup can stop after it",
                    end.lsn, backup.id
                )));
            }
            target_lsn = Some(end.lsn);
            (
                (index + 1).max(stop_count),
                format!(
                    "after the commit of transaction {xid} at {} ({time}, in {})",
                    end.lsn, name
                ),
            )
        }
        Target::End => {
            if walk.gap {
                return Err(Refusal::Other(beyond_reach(
                    view,
                    (&path, backups),
                    &recovery.target,
                    &walk,
                    "the rest of the archived WAL",
                )));
            }
            let stops = match view.last_commit(&walk.segments) {
                Some(last) => format!(
                    "at the end of the archived WAL (last commit {})",
                    rfc3339(last)
                ),
                None => "at the end of the archived WAL".into(),
            };
            (walk.len(), stops)
        }
    };

    let histories: Vec<ArchivedFile> = path
        .iter()
        .filter_map(|span| view.listing.histories.get(&span.timeline).cloned())
        .collect();
    let segments = walk.segments.first_n(needed.min(walk.len()));
    let wal_bytes = total_bytes(
        std::iter::once(view.stored_bytes(&segments)).chain(histories.iter().map(|f| f.size())),
    );
    Ok(RestorePlan {
        backup: backup.clone(),
        timeline,
        segments,
        histories,
        stops,
        wal_bytes,
        target_lsn,
    })
}

/// The first segment of `walk` in which decoding found the end of transaction `xid`.
fn xact_end_in<'a>(
    view: &'a ArchiveView,
    walk: &Walk,
    xid: u32,
) -> Option<(usize, String, &'a XactEnd)> {
    view.xact_ends_of(xid)
        .filter_map(|(name, end)| {
            let segno = name.segment_number(view.segment_size)?;
            Some((
                walk.index_of(name.timeline(), segno)?,
                name.to_string(),
                end,
            ))
        })
        .min_by_key(|(index, _, _)| *index)
}

/// The bounds of the transactions that commit in `walk`, as far as its summaries record them.
fn committed_xids(view: &ArchiveView, walk: &Walk) -> Option<XidRange> {
    view.summaries_in(walk)
        .into_iter()
        .filter_map(|(_, summary)| summary.commit_xids)
        .reduce(XidRange::union)
}

fn branch_point(path: &[TimelineSpan], timeline: u32) -> String {
    switch_point(path, timeline)
        .flatten()
        .map_or_else(String::new, |end| {
            format!(" (it leaves timeline {timeline} at {end})")
        })
}

/// Why the target lies beyond what the archive reaches, with how far it does reach: before
/// a gap, the last commit of this walk; at the archive's end, the end of the timeline's
/// recovery window (`pitr list`'s).
fn beyond_reach(
    view: &ArchiveView,
    (path, backups): (&[TimelineSpan], &[BackupManifest]),
    target: &Target,
    walk: &Walk,
    what: &str,
) -> PlanError {
    let walked = view.last_commit(&walk.segments);
    if walk.gap {
        return PlanError::Unreachable(format!(
            "WAL segment {} is missing from the repository, so {what} cannot be reached; the \
             latest reachable time is {}",
            walk.missing,
            latest_reachable(walked)
        ));
    }
    let window_end = recovery_window(view, path, backups).and_then(|w| w.until);
    let latest = walked.max(window_end);
    let hint = match latest {
        // Recovery to a time stops only at a commit after it: a WAL switch without a new
        // commit archives nothing that could end it.
        Some(last) if matches!(target, Target::Time(_)) => format!(
            "Nothing archived was committed after {last}: restore without a target to replay \
             all archived WAL (the state at the target too, if nothing was committed since), \
             or commit a transaction on the primary after the target, then SELECT \
             pg_switch_wal(), and restore again",
            last = rfc3339(last)
        ),
        None if matches!(target, Target::Time(_)) => "Recovery to a time stops only at a commit \
             after it, and none is archived after the backups: restore without a target to \
             replay all archived WAL, or commit a transaction on the primary after the target, \
             then SELECT pg_switch_wal(), and restore again"
            .to_owned(),
        _ => "Restore without a target to replay all archived WAL, or archive newer WAL first \
              (SELECT pg_switch_wal() on the primary)"
            .to_owned(),
    };
    PlanError::Unreachable(format!(
        "{what} lies after the end of the archived WAL (next segment {} is not archived \
         yet); the latest reachable time is {}. {hint}",
        walk.missing,
        latest_reachable(latest)
    ))
}

/// The end of the recovery window `list` shows for the timeline at the end of `path`.
fn latest_reachable(last_commit: Option<DateTime<Utc>>) -> String {
    last_commit.map_or_else(
        || "unknown (no commit in the reachable WAL)".into(),
        rfc3339,
    )
}

fn restore_point_names(view: &ArchiveView, walk: &Walk) -> String {
    let names: Vec<String> = view
        .summaries_in(walk)
        .into_iter()
        .flat_map(|(_, s)| s.restore_points.iter().map(|p| format!("'{}'", p.name)))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
pub(crate) mod tests;
