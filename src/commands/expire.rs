//! `pitr expire`: applies the retention policy. Gathers (backups, pins, the archive view,
//! interrupted backups), decides with `recovery::retention::plan_retention` (pure), then
//! removes through the catalog in an order that a kill at any point leaves safe:
//!
//! 1. `wal/expired.json` is raised first, so a removal cut short never reads as lost WAL;
//! 2. each removed backup: its backup history file, its manifest (it is no longer listed),
//!    then its objects, the claim last;
//! 3. WAL, oldest first, each step's summaries after it; orphan summaries;
//! 4. interrupted backups whose owner is gone, and stale staging files.
//!
//! The next run finds what is left of a removal cut short and finishes it: a backup without
//! manifest is an interrupted backup whose owner is gone, WAL below the cut is still below it.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::catalog::Protected;
use crate::catalog::backup::{BackupClaim, BackupManifest, DamagedBackup, Deletion};
use crate::catalog::replay::ReplayClaim;
use crate::catalog::tail::StoredTail;
use crate::catalog::{Catalog, RepositoryIdentity};
use crate::error::{Error, Result};
use crate::pg::WalFileName;
use crate::pg::timestamp::rfc3339_micros;
use crate::pg::wal_name::xlog_file_name;
use crate::recovery::ArchiveView;
use crate::recovery::retention::{
    Policy, ReplayHold, RetentionPlan, Rule, WalReason, hold_for_replays, plan_retention,
};

/// A backup without manifest whose claim is older than this is taken for abandoned even when
/// its owner ran on another host (where pitr cannot see whether the process lives).
pub const INTERRUPTED_AFTER: Duration = Duration::hours(24);

#[derive(Clone, Debug)]
pub struct ExpireOptions {
    pub policy: Policy,
    /// Report what would be removed; remove nothing.
    pub dry_run: bool,
    pub now: DateTime<Utc>,
}

/// What expire kept and removed, and why. The JSON shape is documented in
/// docs/operations.md: keep it stable.
#[derive(Debug, Default, Serialize)]
pub struct ExpireReport {
    pub dry_run: bool,
    pub kept_backups: Vec<KeptBackupEntry>,
    pub removed_backups: Vec<RemovedBackupEntry>,
    pub kept_wal: Vec<KeptWalEntry>,
    /// Segments, partial segments and backup history files, oldest first.
    pub removed_wal: Vec<String>,
    /// The same as runs of consecutive segments per timeline, as the text output shows them.
    pub removed_wal_ranges: Vec<WalFileRange>,
    /// Summaries left by an earlier removal cut short.
    pub removed_orphan_summaries: u64,
    /// Received tails (`<segment> up to <bytes>`) whose segment is archived whole, or below
    /// the WAL expired on its timeline.
    pub removed_tails: Vec<String>,
    /// Backups that never finished and whose owner is gone.
    pub removed_interrupted_backups: Vec<String>,
    /// Backups without manifest that may still be running: left alone.
    pub running_backups: Vec<String>,
    pub removed_staging_files: u64,
    /// Run-history objects older than 90 days, removed by whole days.
    pub pruned_history_runs: u64,
    /// Objects a retention lock refused to delete: left for a later run.
    pub protected: Vec<Protected>,
    /// Backups whose manifest or pin is damaged: left alone (see `pitr verify`).
    pub damaged_backups: Vec<DamagedBackup>,
    /// Objects deleted in all (data, manifests, WAL), not counting summaries.
    pub deleted_objects: u64,
    /// Restores, drills and restore-tables in flight: what they replay is kept.
    pub replay_claims: Vec<ReplayClaimEntry>,
    /// Claims whose heartbeat is older than `replay_claim_stale_after`: ignored, and removed.
    pub stale_replay_claims: Vec<ReplayClaimEntry>,
    /// Why nothing was removed although the policy would remove something (a restore was
    /// planning, or began while expire decided).
    pub held_back: Option<String>,
}

/// Files of one timeline over consecutive segments: `first` to `last`, `count` files (a
/// segment's partial and backup history files count too).
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct WalFileRange {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub count: u64,
}

/// `files` as runs of consecutive segments, per timeline in order.
fn wal_file_ranges(files: &[WalFileName], segment_size: u64) -> Vec<WalFileRange> {
    let mut sorted: Vec<(u32, Option<u64>, &WalFileName)> = files
        .iter()
        .map(|f| (f.timeline(), f.segment_number(segment_size), f))
        .collect();
    sorted.sort();
    let mut ranges: Vec<(WalFileRange, Option<u64>)> = Vec::new();
    for (timeline, segno, name) in sorted {
        if let Some((range, Some(last))) = ranges.last_mut()
            && range.timeline == timeline
            && let Some(segno) = segno
            && (segno == *last || Some(segno) == last.checked_add(1))
        {
            range.last = name.to_string();
            range.count += 1;
            *last = segno;
            continue;
        }
        ranges.push((
            WalFileRange {
                timeline,
                first: name.to_string(),
                last: name.to_string(),
                count: 1,
            },
            segno,
        ));
    }
    ranges.into_iter().map(|(range, _)| range).collect()
}

#[derive(Debug, Serialize)]
pub struct ReplayClaimEntry {
    pub id: String,
    pub command: String,
    pub host: String,
    pub pgdata: String,
    /// None while the restore plans.
    pub backup: Option<String>,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub heartbeat: String,
    pub heartbeat_age_seconds: i64,
}

impl ReplayClaimEntry {
    fn of(claim: &ReplayClaim, now: DateTime<Utc>) -> Self {
        ReplayClaimEntry {
            id: claim.id.clone(),
            command: claim.command.clone(),
            host: claim.host.clone(),
            pgdata: claim.pgdata.clone(),
            backup: claim.backup.clone(),
            first_segment: claim.segments.first().map(|r| r.first.clone()),
            last_segment: claim.segments.last().map(|r| r.last.clone()),
            heartbeat: rfc3339_micros(claim.heartbeat),
            heartbeat_age_seconds: claim.age_seconds(now),
        }
    }
}

/// Live claims (honoured) and stale ones (ignored), with a warning for each stale or
/// unreadable claim.
async fn read_claims(
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<(Vec<ReplayClaim>, Vec<ReplayClaim>)> {
    let (claims, damaged) = catalog.replay_claims().await?;
    let stale_after = catalog.replay_claim_stale_after();
    for damaged in &damaged {
        tracing::warn!(
            "replay claim {} is unreadable ({}): ignored",
            damaged.key,
            damaged.reason
        );
    }
    let (stale, live): (Vec<_>, Vec<_>) = claims
        .into_iter()
        .partition(|c| c.is_stale(now, stale_after));
    Ok((live, stale))
}

/// Whether a received tail of segment `segno` on `timeline` is redundant: the segment is
/// archived whole (`archived`), or lies where the plan expires WAL and keeps none (a
/// receiver stopped long ago left it).
fn tail_is_redundant(timeline: u32, segno: u64, archived: bool, plan: &RetentionPlan) -> bool {
    let kept = plan.wal_kept.iter().any(|range| {
        range.timeline == timeline
            && range.first_segno <= segno
            && range.last_segno.is_none_or(|last| segno <= last)
    });
    let expired = plan
        .expired_before
        .get(&timeline)
        .is_some_and(|&before| segno < before);
    archived || (expired && !kept)
}

/// What a claim holds, in segment numbers; `None` while it plans (it holds everything).
fn hold_of(claim: &ReplayClaim, segment_size: u64) -> Option<ReplayHold> {
    let backup = claim.backup.clone()?;
    let segno = |name: &str| WalFileName::parse(name).ok()?.segment_number(segment_size);
    let runs = claim
        .segments
        .iter()
        .filter_map(|run| Some((run.timeline, segno(&run.first)?, segno(&run.last)?)))
        .collect();
    Some(ReplayHold {
        claim: claim.id.clone(),
        backup,
        runs,
    })
}

#[derive(Debug, Serialize)]
pub struct KeptBackupEntry {
    pub id: String,
    pub start_time: String,
    pub stop_time: String,
    pub timeline: u32,
    pub rules: Vec<Rule>,
    /// The calendar periods GFS rules keep it for, e.g. `keep_daily 2026-11-21`.
    pub periods: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RemovedBackupEntry {
    pub id: String,
    pub start_time: String,
    pub stop_time: String,
    pub timeline: u32,
}

#[derive(Debug, Serialize)]
pub struct KeptWalEntry {
    pub timeline: u32,
    pub first_segment: String,
    /// None: to the end of the timeline.
    pub last_segment: Option<String>,
    #[serde(flatten)]
    pub reason: WalReason,
}

/// Whether a backup without manifest is abandoned: no claim (a removal cut short, or a pitr
/// from before claims), its process gone on this host, or claimed too long ago.
pub fn is_abandoned(
    claim: Option<&BackupClaim>,
    now: DateTime<Utc>,
    this_host: &str,
    pid_alive: impl Fn(u32) -> bool,
) -> bool {
    let Some(claim) = claim else { return true };
    if now - claim.claimed_at > INTERRUPTED_AFTER {
        return true;
    }
    claim.host.as_deref() == Some(this_host) && !this_host.is_empty() && !pid_alive(claim.pid)
}

/// [`is_abandoned`] now, on this host.
pub fn owner_gone(claim: Option<&BackupClaim>) -> bool {
    is_abandoned(
        claim,
        Utc::now(),
        &crate::host_name().unwrap_or_default(),
        pid_alive,
    )
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub async fn expire(catalog: &Catalog, options: &ExpireOptions) -> Result<ExpireReport> {
    if options.policy.is_empty() {
        return Err(Error::Config(
            "no retention rule given: set keep_last, keep_within, keep_daily, keep_weekly, \
             keep_monthly or keep_yearly (flags --keep-…, PITR_KEEP_… or the config file)"
                .into(),
        ));
    }
    let identity = catalog.identity().await?;
    if options.dry_run {
        // Reads only: no need to wait for, or keep out, a running backup.
        return expire_locked(catalog, options, identity).await;
    }
    // Under the repository lock: no backup starts or ends while expire decides and deletes.
    let lock = catalog.lock("expire").await?;
    let result = expire_locked(catalog, options, identity).await;
    lock.release().await;
    result
}

async fn expire_locked(
    catalog: &Catalog,
    options: &ExpireOptions,
    identity: RepositoryIdentity,
) -> Result<ExpireReport> {
    let segment_size = identity.wal_segment_size;
    let objects = catalog.backup_objects().await?;
    let list = catalog.backup_list().await?;
    let (pins, damaged_pins) = catalog.backup_pins(&objects).await?;
    let view = ArchiveView::load_full(catalog, &identity).await?;
    let tails = catalog.tails().await?;
    tracing::debug!("expire: repository read");

    // A pin that cannot be read counts as a pin: expiring must never guess in favour of
    // deleting.
    let mut pinned: BTreeSet<String> = pins
        .values()
        .filter(|p| p.pinned)
        .map(|p| p.id.clone())
        .collect();
    pinned.extend(damaged_pins.iter().map(|d| d.id.clone()));
    let mut plan = plan_retention(
        &view,
        &list.manifests,
        &pinned,
        options.now,
        &options.policy,
    );
    // Restores in flight: what their recovery reads stays, whatever the policy says.
    let (live, stale) = read_claims(catalog, options.now).await?;
    let mut held_back = None;
    let mut holds = Vec::new();
    for claim in &live {
        match hold_of(claim, segment_size) {
            Some(hold) => holds.push(hold),
            None => {
                held_back = Some(format!(
                    "`pitr {}` on host {} ({}) is planning its restore: nothing removed; run \
                     expire again once it has planned",
                    claim.command, claim.host, claim.pgdata
                ));
            }
        }
    }
    hold_for_replays(&mut plan, &holds, &list.manifests, segment_size);
    if held_back.is_some() {
        plan.removed.clear();
        plan.wal_removed.clear();
        plan.orphan_summaries.clear();
        plan.expired_before.clear();
    }

    let by_id = |id: &str| -> &BackupManifest {
        list.manifests
            .iter()
            .find(|m| m.id == id)
            .expect("planned from these")
    };
    let mut report = ExpireReport {
        dry_run: options.dry_run,
        damaged_backups: list.damaged.iter().chain(&damaged_pins).cloned().collect(),
        replay_claims: live
            .iter()
            .map(|c| ReplayClaimEntry::of(c, options.now))
            .collect(),
        stale_replay_claims: stale
            .iter()
            .map(|c| ReplayClaimEntry::of(c, options.now))
            .collect(),
        held_back: held_back.clone(),
        ..ExpireReport::default()
    };
    let stale_after = catalog.replay_claim_stale_after().as_secs();
    for claim in &stale {
        tracing::warn!(
            "replay claim {} (`pitr {}` on host {}, {}) has a heartbeat {} s old, older than \
             replay_claim_stale_after ({stale_after} s): its restore is taken as gone; ignored{}",
            claim.id,
            claim.command,
            claim.host,
            claim.pgdata,
            claim.age_seconds(options.now),
            if options.dry_run { "" } else { " and removed" }
        );
    }
    for kept in &plan.kept {
        let m = by_id(&kept.id);
        report.kept_backups.push(KeptBackupEntry {
            id: kept.id.clone(),
            start_time: rfc3339_micros(m.start_time),
            stop_time: rfc3339_micros(m.stop_time),
            timeline: m.timeline,
            rules: kept.rules.clone(),
            periods: kept.periods.clone(),
        });
    }
    for removed in &plan.removed {
        let m = by_id(&removed.id);
        report.removed_backups.push(RemovedBackupEntry {
            id: removed.id.clone(),
            start_time: rfc3339_micros(m.start_time),
            stop_time: rfc3339_micros(m.stop_time),
            timeline: m.timeline,
        });
    }
    for range in &plan.wal_kept {
        let name = |segno| xlog_file_name(range.timeline, segno, segment_size);
        report.kept_wal.push(KeptWalEntry {
            timeline: range.timeline,
            first_segment: name(range.first_segno),
            last_segment: range.last_segno.map(name),
            reason: range.reason.clone(),
        });
    }
    report.removed_wal = plan
        .wal_removed
        .iter()
        .map(|f| f.name.to_string())
        .collect();
    let removed_names: Vec<WalFileName> = plan.wal_removed.iter().map(|f| f.name.clone()).collect();
    report.removed_wal_ranges = wal_file_ranges(&removed_names, segment_size);
    report.removed_orphan_summaries = plan.orphan_summaries.len() as u64;
    let redundant: Vec<StoredTail> = if held_back.is_some() {
        Vec::new()
    } else {
        tails
            .into_iter()
            .filter(|tail| {
                tail.segment
                    .segment_number(segment_size)
                    .is_some_and(|segno| {
                        let archived = view.file(tail.segment.timeline(), segno).is_some();
                        tail_is_redundant(tail.segment.timeline(), segno, archived, &plan)
                    })
            })
            .collect()
    };
    report.removed_tails = redundant
        .iter()
        .map(|t| format!("{} up to {}", t.segment, t.end))
        .collect();

    let this_host = crate::host_name().unwrap_or_default();
    let damaged: BTreeSet<&str> = list.damaged.iter().map(|d| d.id.as_str()).collect();
    for (id, dir) in &objects {
        if dir.manifest.is_some() || damaged.contains(id.as_str()) {
            continue;
        }
        let claim = catalog.backup_claim(id).await?;
        // Marked abandoned: the failed backup gave up but could not remove all it wrote.
        if dir.abandoned.is_some()
            || is_abandoned(claim.as_ref(), options.now, &this_host, pid_alive)
        {
            report.removed_interrupted_backups.push(id.clone());
        } else {
            report.running_backups.push(id.clone());
        }
    }
    if options.dry_run {
        return Ok(report);
    }
    for claim in &stale {
        catalog.remove_replay_claim(&claim.id).await?;
    }
    // A restore that began while expire decided may plan on what is about to go: its claim,
    // written before it read the archive, is seen here, and nothing is removed.
    let (now_live, _) = read_claims(catalog, chrono::Utc::now()).await?;
    if let Some(new) = now_live.iter().find(|c| !live.iter().any(|l| l.id == c.id)) {
        let why = format!(
            "`pitr {}` on host {} ({}) began while expire decided: nothing removed; run expire \
             again",
            new.command, new.host, new.pgdata
        );
        tracing::warn!("{why}");
        report.held_back = Some(why);
        report.removed_backups.clear();
        report.removed_wal.clear();
        report.removed_wal_ranges.clear();
        report.removed_interrupted_backups.clear();
        report.removed_orphan_summaries = 0;
        report.removed_tails.clear();
        return Ok(report);
    }
    tracing::debug!("expire: removing");

    let mut done = Deletion::default();
    catalog
        .record_expired_wal(&plan.expired_before, segment_size)
        .await?;
    for removed in &plan.removed {
        done.add(
            catalog
                .delete_backup(&removed.id, removed.backup_history.as_ref())
                .await?,
        );
    }
    tracing::debug!("expire: backups removed");
    done.add(
        catalog
            .delete_wal_files(&plan.wal_removed, segment_size)
            .await?,
    );
    tracing::debug!("expire: WAL removed");
    catalog.delete_wal_summaries(&plan.orphan_summaries).await?;
    // Redundant by proof, and small: one that will not go (a retention lock) stays for a
    // later run rather than failing this one.
    match catalog.delete_tails(&redundant).await {
        Ok(()) => done.deleted += redundant.len() as u64,
        Err(e) => tracing::warn!("expire: removing redundant WAL tails: {e}"),
    }
    for id in &report.removed_interrupted_backups {
        done.add(catalog.delete_backup(id, None).await?);
    }
    report.removed_staging_files = catalog.remove_staging_leftovers().await;
    report.pruned_history_runs =
        super::history::prune_old_runs(catalog, options.now, super::history::DEFAULT_HISTORY_DAYS)
            .await;
    report.deleted_objects = done.deleted;
    report.protected = done.protected;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_goes_once_its_segment_is_whole_or_expired_and_not_kept() {
        use crate::recovery::retention::KeptWal;
        let plan = RetentionPlan {
            wal_kept: vec![
                KeptWal {
                    timeline: 1,
                    first_segno: 10,
                    last_segno: None,
                    reason: WalReason::Continuous { backup: "b".into() },
                },
                // A backup's own stretch below the expired point.
                KeptWal {
                    timeline: 1,
                    first_segno: 4,
                    last_segno: Some(5),
                    reason: WalReason::Consistency { backup: "a".into() },
                },
            ],
            expired_before: [(1, 10)].into(),
            ..RetentionPlan::default()
        };
        // The segment being received: kept.
        assert!(!tail_is_redundant(1, 12, false, &plan));
        // The same segment archived whole: redundant.
        assert!(tail_is_redundant(1, 12, true, &plan));
        // Below the expired point, outside what is kept: redundant.
        assert!(tail_is_redundant(1, 7, false, &plan));
        // Inside a kept stretch: kept.
        assert!(!tail_is_redundant(1, 5, false, &plan));
        // A timeline where nothing is expired: kept.
        assert!(!tail_is_redundant(2, 3, false, &plan));
    }

    #[test]
    fn removed_wal_is_told_in_runs_of_consecutive_segments_per_timeline() {
        const SEG: u64 = 16 << 20;
        let name = |t: u32, s: u64| WalFileName::parse(&xlog_file_name(t, s, SEG)).unwrap();
        let backup_file = WalFileName::parse("000000010000000000000004.00000028.backup").unwrap();
        // Timeline 1: 3..=5 (and 4's backup history file), 0xFF..=0x101 across a log id;
        // timeline 2: 5 alone, its partial beside it.
        let mut files: Vec<WalFileName> = (3..=5).map(|s| name(1, s)).collect();
        files.push(backup_file);
        files.extend((0xFF..=0x101).map(|s| name(1, s)));
        files.push(name(2, 5));
        files.push(WalFileName::parse("000000020000000000000006.partial").unwrap());
        files.push(name(1, 9));
        let ranges = wal_file_ranges(&files, SEG);
        let told: Vec<(u32, &str, &str, u64)> = ranges
            .iter()
            .map(|r| (r.timeline, r.first.as_str(), r.last.as_str(), r.count))
            .collect();
        assert_eq!(
            told,
            [
                (1, "000000010000000000000003", "000000010000000000000005", 4),
                (1, "000000010000000000000009", "000000010000000000000009", 1),
                (1, "0000000100000000000000FF", "000000010000000100000001", 3),
                (
                    2,
                    "000000020000000000000005",
                    "000000020000000000000006.partial",
                    2
                ),
            ]
        );
    }

    #[test]
    fn a_backup_without_manifest_is_abandoned_only_when_its_owner_is_gone() {
        let now = Utc::now();
        let claim = |host: Option<&str>, age: Duration| BackupClaim {
            pid: 4242,
            claimed_at: now - age,
            host: host.map(str::to_owned),
        };
        let (alive, dead) = (|_| true, |_| false);
        // No claim: a removal cut short (the claim goes last) or a pitr before claims.
        assert!(is_abandoned(None, now, "db1", alive));
        // This host: whether the process lives.
        let here = claim(Some("db1"), Duration::minutes(5));
        assert!(!is_abandoned(Some(&here), now, "db1", alive));
        assert!(is_abandoned(Some(&here), now, "db1", dead));
        // Another host, or none recorded: by age only.
        for host in [Some("db2"), None] {
            let young = claim(host, Duration::hours(23));
            assert!(!is_abandoned(Some(&young), now, "db1", dead));
            let old = claim(host, Duration::hours(25));
            assert!(is_abandoned(Some(&old), now, "db1", alive));
        }
    }
}
