//! The pure planner on constructed archives: no store, no server.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::catalog::RepositoryIdentity;
use crate::catalog::wal::WalListing;
use crate::pg::recovery_target::{TargetAction, TargetTimeline};
use crate::pg::timeline::parse_history;
use crate::pg::wal_name::xlog_file_name;
use crate::pg::wal_summary::{RestorePoint, SegmentSummary, XidRange};
use crate::pg::xact_end::XactEnd;
use crate::pg::{Lsn, WalFileName};

const SEG: u64 = 16 << 20;

/// 10:MM:00 on a fixed day.
fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, minute, 0).unwrap()
}

fn lsn(segno: u64, offset: u64) -> Lsn {
    Lsn(segno * SEG + offset)
}

fn seg(timeline: u32, segno: u64) -> String {
    xlog_file_name(timeline, segno, SEG)
}

/// A backup on `timeline` from segment `start` to `stop`, finished at 10:`minute`.
pub(crate) fn backup(
    id: &str,
    timeline: u32,
    start: u64,
    stop: u64,
    minute: u32,
) -> BackupManifest {
    BackupManifest {
        format: 1,
        id: id.into(),
        label: format!("pitr backup {id}"),
        system_identifier: "1".into(),
        pg_version: 15,
        timeline,
        start_lsn: lsn(start, 0x28),
        stop_lsn: lsn(stop, 0x100),
        start_time: at(minute) - chrono::Duration::seconds(30),
        stop_time: at(minute),
        start_wal_segment: seg(timeline, start),
        stop_wal_segment: seg(timeline, stop),
        backup_label: String::new(),
        tablespace_map: None,
        tablespaces: vec![],
        size_bytes: 0,
        stored_bytes: 0,
        directories: vec![],
        files: vec![],
        cluster_owner: None,
        data_directory: None,
        databases: Vec::new(),
        superuser: None,
        configuration: None,
        method: Default::default(),
        server_manifest: None,
        backup_type: crate::catalog::backup::BackupType::Full,
        parent: None,
        data_checksums: None,
        block_size: None,
        changes_from: None,
    }
}

struct Archive {
    view: ArchiveView,
}

impl Archive {
    /// Segments as (timeline, first, last) runs; histories as (timeline, text).
    fn new(runs: &[(u32, u64, u64)], histories: &[(u32, &str)]) -> Self {
        let identity = RepositoryIdentity::for_tests(SEG, 8192);
        let mut files: Vec<(WalFileName, u64)> = runs
            .iter()
            .flat_map(|&(t, first, last)| (first..=last).map(move |s| seg(t, s)))
            .map(|name| (WalFileName::parse(&name).unwrap(), 1000))
            .collect();
        files.extend(
            histories
                .iter()
                .map(|(t, _)| (WalFileName::parse(&format!("{t:08X}.history")).unwrap(), 10)),
        );
        let histories: BTreeMap<u32, _> = histories
            .iter()
            .map(|(t, text)| (*t, parse_history(*t, text).unwrap()))
            .collect();
        Archive {
            view: ArchiveView::new(&identity, WalListing::from_files(files, SEG), histories),
        }
    }

    /// Segment `segno` of `timeline` holds commits until 10:`minute`.
    fn commits(self, timeline: u32, segno: u64, minute: u32) -> Self {
        self.edit(timeline, segno, |s| s.last_commit_time = Some(at(minute)))
    }

    fn restore_point(self, timeline: u32, segno: u64, name: &str) -> Self {
        self.edit(timeline, segno, |s| {
            s.restore_points.push(RestorePoint {
                name: name.into(),
                lsn: lsn(segno, 0x500),
                time: None,
            })
        })
    }

    /// Segment `segno` of `timeline` ends transaction `xid` at `offset`, committed or aborted
    /// at 10:`minute`: its summary's bounds hold the xid and decoding found the record.
    fn xact(
        self,
        (timeline, segno, offset): (u32, u64, u64),
        xid: u32,
        committed: bool,
        minute: u32,
    ) -> Self {
        let mut archive = self.edit(timeline, segno, |s| {
            if committed {
                s.commits += 1;
                s.commit_xids = Some(XidRange::include(s.commit_xids, xid));
                s.last_commit_time = Some(at(minute));
            } else {
                s.aborts += 1;
                s.abort_xids = Some(XidRange::include(s.abort_xids, xid));
            }
        });
        let file = archive
            .view
            .listing
            .segment(timeline, segno)
            .unwrap()
            .clone();
        let end = XactEnd {
            lsn: lsn(segno, offset),
            committed,
            time: Some(at(minute)),
        };
        archive.view.insert_xact_end(file.name, xid, Some(end));
        archive
    }

    fn edit(mut self, timeline: u32, segno: u64, change: impl FnOnce(&mut SegmentSummary)) -> Self {
        let file = self.view.listing.segment(timeline, segno).unwrap().clone();
        let mut summary = self.view.summary(&file).cloned().unwrap_or_default();
        change(&mut summary);
        self.view.insert_summary(file.name, summary);
        self
    }

    fn plan(&self, backups: &[BackupManifest], target: Target) -> Result<RestorePlan, PlanError> {
        self.plan_on(backups, target, None)
    }

    fn plan_on(
        &self,
        backups: &[BackupManifest],
        target: Target,
        timeline: Option<TargetTimeline>,
    ) -> Result<RestorePlan, PlanError> {
        let request = PlanRequest {
            recovery: RecoveryRequest {
                target,
                action: Some(TargetAction::Pause),
                timeline,
            },
            backup: None,
        };
        plan_restore(&self.view, backups, &request)
    }
}

fn names(plan: &RestorePlan) -> Vec<String> {
    plan.segments.names().collect()
}

fn unreachable_text(result: Result<RestorePlan, PlanError>) -> String {
    match result {
        Err(PlanError::Unreachable(text)) => text,
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[test]
fn end_target_reads_every_segment_from_the_backup_on() {
    let archive = Archive::new(&[(1, 1, 6)], &[]).commits(1, 6, 30);
    let plan = archive
        .plan(&[backup("a", 1, 2, 3, 10)], Target::End)
        .unwrap();
    assert_eq!(names(&plan), (2..=6).map(|s| seg(1, s)).collect::<Vec<_>>());
    assert_eq!(plan.timeline, 1);
    assert!(
        plan.stops.contains("last commit 2026-11-22T10:30:00Z"),
        "{}",
        plan.stops
    );
    assert_eq!(plan.wal_bytes, 5 * 1000);
}

#[test]
fn a_gap_after_the_backup_stops_a_replay_of_everything() {
    let archive = Archive::new(&[(1, 2, 4), (1, 6, 7)], &[]).commits(1, 4, 20);
    let text = unreachable_text(archive.plan(&[backup("a", 1, 2, 3, 10)], Target::End));
    assert!(
        text.contains(&format!("WAL segment {} is missing", seg(1, 5))),
        "{text}"
    );
    assert!(
        text.contains("latest reachable time is 2026-11-22T10:20:00Z"),
        "{text}"
    );
}

#[test]
fn a_gap_inside_the_backup_makes_it_unusable() {
    let archive = Archive::new(&[(1, 2, 2), (1, 4, 6)], &[]);
    let text = unreachable_text(archive.plan(&[backup("a", 1, 2, 4, 10)], Target::Immediate));
    assert!(text.contains(&seg(1, 3)), "{text}");
    assert!(text.contains("to become consistent"), "{text}");
}

#[test]
fn an_empty_archive_reaches_nothing_and_no_backup_is_its_own_error() {
    let archive = Archive::new(&[], &[]);
    let text = unreachable_text(archive.plan(&[backup("a", 1, 2, 3, 10)], Target::End));
    assert!(text.contains(&seg(1, 2)), "{text}");
    assert_eq!(
        archive.plan(&[], Target::End).unwrap_err(),
        PlanError::NoBackup
    );
}

#[test]
fn a_time_target_takes_the_newest_backup_before_it_and_stops_at_the_next_commit() {
    let archive = Archive::new(&[(1, 2, 9)], &[])
        .commits(1, 3, 5)
        .commits(1, 6, 15)
        .commits(1, 7, 25)
        .commits(1, 8, 35);
    let backups = [
        backup("a", 1, 2, 3, 5),
        backup("b", 1, 5, 5, 12),
        backup("c", 1, 8, 8, 40),
    ];
    let plan = archive.plan(&backups, Target::Time(at(20))).unwrap();
    assert_eq!(plan.backup.id, "b");
    // Recovery reads segments 5 to 7: 7 holds the first commit after 10:20.
    assert_eq!(names(&plan), (5..=7).map(|s| seg(1, s)).collect::<Vec<_>>());
    assert!(plan.stops.contains(&seg(1, 7)), "{}", plan.stops);
}

#[test]
fn a_time_before_every_backup_names_the_earliest_restorable_point() {
    let archive = Archive::new(&[(1, 2, 9)], &[]).commits(1, 9, 50);
    let backups = [backup("a", 1, 2, 3, 10), backup("b", 1, 5, 5, 20)];
    let text = unreachable_text(archive.plan(&backups, Target::Time(at(1))));
    assert!(
        text.contains("no backup finished before the target"),
        "{text}"
    );
    assert!(text.contains("2026-11-22T10:10:00Z (backup a)"), "{text}");
}

#[test]
fn a_time_after_the_last_commit_says_how_far_the_archive_reaches() {
    let archive = Archive::new(&[(1, 2, 5)], &[]).commits(1, 5, 30);
    let text = unreachable_text(archive.plan(&[backup("a", 1, 2, 3, 10)], Target::Time(at(45))));
    assert!(text.contains("after the end of the archived WAL"), "{text}");
    assert!(
        text.contains(&format!("next segment {}", seg(1, 6))),
        "{text}"
    );
    assert!(text.contains("2026-11-22T10:30:00Z"), "{text}");
}

/// An idle primary: its last commit (10:20) lies before the newest backup, whose own WAL holds
/// none. The refusal names the same end as `pitr list`'s window, and a hint that works: a bare
/// WAL switch archives no commit that could end recovery to a later time.
#[test]
fn a_time_after_an_idle_primarys_last_commit_names_the_windows_end_and_what_works() {
    let archive = Archive::new(&[(1, 2, 8)], &[]).commits(1, 4, 20);
    let backups = [backup("a", 1, 2, 3, 10), backup("b", 1, 6, 7, 30)];
    let text = unreachable_text(archive.plan(&backups, Target::Time(at(45))));
    let path = archive.view.path(1).unwrap();
    let window = crate::recovery::window::recovery_window(&archive.view, &path, &backups);
    assert_eq!(window.and_then(|w| w.until), Some(at(20)));
    assert_eq!(
        text,
        format!(
            "target time 2026-11-22T10:45:00Z lies after the end of the archived WAL (next \
             segment {} is not archived yet); the latest reachable time is \
             2026-11-22T10:20:00Z. Nothing archived was committed after 2026-11-22T10:20:00Z: \
             restore without a target to replay all archived WAL (the state at the target too, \
             if nothing was committed since), or commit a transaction on the primary after the \
             target, then SELECT pg_switch_wal(), and restore again",
            seg(1, 9)
        )
    );
    // No commit anywhere after the backups: still no bare switch.
    let text =
        unreachable_text(Archive::new(&[(1, 2, 8)], &[]).plan(&backups[1..], Target::Time(at(45))));
    assert!(
        text.ends_with(
            "the latest reachable time is unknown (no commit in the reachable WAL). Recovery to \
             a time stops only at a commit after it, and none is archived after the backups: \
             restore without a target to replay all archived WAL, or commit a transaction on \
             the primary after the target, then SELECT pg_switch_wal(), and restore again"
        ),
        "{text}"
    );
    // Another target kind keeps the plain hint: a switch does archive a written restore point.
    let text = unreachable_text(archive.plan(&backups, Target::Lsn(lsn(12, 0))));
    assert!(
        text.ends_with("archive newer WAL first (SELECT pg_switch_wal() on the primary)"),
        "{text}"
    );
}

#[test]
fn an_lsn_target_reads_through_its_segment_and_not_before_the_backup_end() {
    let archive = Archive::new(&[(1, 2, 9)], &[]);
    let backups = [backup("a", 1, 2, 3, 10)];
    let plan = archive.plan(&backups, Target::Lsn(lsn(6, 0x10))).unwrap();
    assert_eq!(names(&plan), (2..=6).map(|s| seg(1, s)).collect::<Vec<_>>());
    // Inside the backup: only an earlier backup could reach it.
    let text = unreachable_text(archive.plan_with_backup(&backups, "a", Target::Lsn(lsn(3, 0x10))));
    assert!(text.contains("lies before the end of backup a"), "{text}");
    // Past the archive's end.
    let text = unreachable_text(archive.plan(&backups, Target::Lsn(lsn(12, 0))));
    assert!(text.contains("target LSN 0/C000000"), "{text}");
}

#[test]
fn immediate_reads_only_what_makes_the_backup_consistent() {
    let archive = Archive::new(&[(1, 2, 9)], &[]);
    let plan = archive
        .plan(&[backup("a", 1, 2, 4, 10)], Target::Immediate)
        .unwrap();
    assert_eq!(names(&plan), (2..=4).map(|s| seg(1, s)).collect::<Vec<_>>());
    assert!(plan.stops.contains("when backup a is consistent"));
}

#[test]
fn a_restore_point_before_the_newest_backup_falls_back_to_an_older_one() {
    let archive = Archive::new(&[(1, 2, 9)], &[])
        .restore_point(1, 4, "before-upgrade")
        .restore_point(1, 8, "later");
    let backups = [backup("a", 1, 2, 3, 10), backup("b", 1, 6, 6, 20)];
    let plan = archive
        .plan(&backups, Target::Name("before-upgrade".into()))
        .unwrap();
    assert_eq!(plan.backup.id, "a");
    assert_eq!(names(&plan), (2..=4).map(|s| seg(1, s)).collect::<Vec<_>>());
    let plan = archive
        .plan(&backups, Target::Name("later".into()))
        .unwrap();
    assert_eq!(plan.backup.id, "b");
}

#[test]
fn an_unknown_restore_point_lists_the_ones_there_are() {
    let archive = Archive::new(&[(1, 2, 5)], &[]).restore_point(1, 4, "nightly");
    let text =
        unreachable_text(archive.plan(&[backup("a", 1, 2, 3, 10)], Target::Name("nope".into())));
    assert!(
        text.contains("restore point 'nope' is not in the archived WAL"),
        "{text}"
    );
    assert!(text.contains("'nightly'"), "{text}");
}

/// Transactions 500 (segment 4), 700 (segment 6, while backup b ran) and 900 (segment 8)
/// committed, 600 aborted (segment 5); backup a covers segments 2-3, b segment 6.
fn xid_archive() -> (Archive, [BackupManifest; 2]) {
    let archive = Archive::new(&[(1, 2, 9)], &[])
        .xact((1, 4, 0x500), 500, true, 8)
        .xact((1, 5, 0x500), 600, false, 9)
        .xact((1, 6, 0x80), 700, true, 19)
        .xact((1, 8, 0x500), 900, true, 30);
    (
        archive,
        [backup("a", 1, 2, 3, 10), backup("b", 1, 6, 6, 20)],
    )
}

#[test]
fn an_xid_is_restored_from_the_newest_backup_that_ended_before_its_commit() {
    let (archive, backups) = xid_archive();
    // After backup b's end: b, and recovery reads through the commit's segment.
    let plan = archive.plan(&backups, Target::Xid(900)).unwrap();
    assert_eq!(plan.backup.id, "b");
    assert_eq!(names(&plan), (6..=8).map(|s| seg(1, s)).collect::<Vec<_>>());
    assert!(
        plan.stops
            .contains("after the commit of transaction 900 at 0/8000500 (2026-11-22T10:30:00Z"),
        "{}",
        plan.stops
    );
    assert!(plan.stops.contains(&seg(1, 8)), "{}", plan.stops);
    // Before b started, and while b ran (b is consistent only at its end): a.
    for (xid, last) in [(500, 4), (700, 6)] {
        let plan = archive.plan(&backups, Target::Xid(xid)).unwrap();
        assert_eq!(plan.backup.id, "a", "{xid}");
        assert_eq!(
            names(&plan),
            (2..=last).map(|s| seg(1, s)).collect::<Vec<_>>()
        );
    }
}

#[test]
fn an_xid_before_a_named_backup_ends_is_refused_with_where_it_committed() {
    let (archive, backups) = xid_archive();
    let text = unreachable_text(archive.plan_with_backup(&backups, "b", Target::Xid(700)));
    assert!(
        text.contains("transaction 700 committed at 0/6000080 (2026-11-22T10:19:00Z), before backup b was consistent (0/6000100)"),
        "{text}"
    );
    // Before b's start: not in b's WAL at all.
    let text = unreachable_text(archive.plan_with_backup(&backups, "b", Target::Xid(500)));
    assert!(
        text.contains("transaction 500 did not commit in the archived WAL after backup b"),
        "{text}"
    );
}

#[test]
fn an_aborted_xid_is_refused() {
    let (archive, backups) = xid_archive();
    let text = unreachable_text(archive.plan(&backups, Target::Xid(600)));
    assert!(
        text.contains(
            "transaction 600 aborted at 0/5000500 (2026-11-22T10:09:00Z): it never committed"
        ),
        "{text}"
    );
}

#[test]
fn an_xid_never_seen_after_any_backup_is_refused_with_the_xids_there() {
    let (archive, backups) = xid_archive();
    let text = unreachable_text(archive.plan(&backups, Target::Xid(1234)));
    assert!(
        text.contains(
            "transaction 1234 did not commit in the archived WAL after any backup (the \
             transactions that commit there are numbered 500 to 900)"
        ),
        "{text}"
    );
}

#[test]
fn an_xid_target_needs_the_archive_without_a_gap_before_the_commit() {
    let backups = [backup("a", 1, 2, 3, 10)];
    let gapped = Archive::new(&[(1, 2, 3), (1, 5, 5)], &[]).xact((1, 5, 0x500), 1234, true, 20);
    let text = unreachable_text(gapped.plan(&backups, Target::Xid(1234)));
    assert!(
        text.contains(&format!("WAL segment {} is missing", seg(1, 4))),
        "{text}"
    );
    assert!(text.contains("the commit of transaction 1234"), "{text}");
}

#[test]
fn an_xid_committed_on_the_parent_after_the_switch_is_reached_only_on_the_parent() {
    let archive = Archive::new(&[(1, 2, 7), (2, 5, 7)], &[(2, "1\t0/5000100\tpromoted\n")]).xact(
        (1, 6, 0x500),
        800,
        true,
        35,
    );
    let backups = [backup("a", 1, 2, 3, 10)];
    let text = unreachable_text(archive.plan(&backups, Target::Xid(800)));
    assert!(text.contains("after backup a"), "{text}");
    let plan = archive
        .plan_on(&backups, Target::Xid(800), Some(TargetTimeline::Number(1)))
        .unwrap();
    assert_eq!(plan.timeline, 1);
    assert_eq!(names(&plan).last().unwrap(), &seg(1, 6));
}

#[test]
fn a_fork_after_the_backup_is_followed_to_the_latest_timeline() {
    // Timeline 2 branched at 0/5000100; timeline 1 went on (an old primary).
    let archive = Archive::new(&[(1, 2, 7), (2, 5, 8)], &[(2, "1\t0/5000100\tpromoted\n")]);
    let backups = [backup("a", 1, 2, 3, 10)];
    let plan = archive.plan(&backups, Target::End).unwrap();
    assert_eq!(plan.timeline, 2);
    let expected: Vec<String> = [(1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (2, 7), (2, 8)]
        .iter()
        .map(|&(t, s)| seg(t, s))
        .collect();
    assert_eq!(names(&plan), expected);
    assert_eq!(plan.histories.len(), 1);
    // The backup's own timeline, asked for: the old primary's WAL.
    let plan = archive
        .plan_on(&backups, Target::End, Some(TargetTimeline::Current))
        .unwrap();
    assert_eq!(names(&plan), (2..=7).map(|s| seg(1, s)).collect::<Vec<_>>());
}

#[test]
fn a_fork_before_the_backup_cannot_be_followed() {
    // Timeline 2 left timeline 1 at 0/3000100, before the backup on timeline 1 started.
    let archive = Archive::new(&[(1, 2, 7), (2, 3, 6)], &[(2, "1\t0/3000100\tpromoted\n")]);
    let backups = [backup("a", 1, 4, 5, 10)];
    let text = unreachable_text(archive.plan(&backups, Target::End));
    assert!(
        text.contains("timeline 2 does not descend from timeline 1"),
        "{text}"
    );
    assert!(text.contains("leaves timeline 1 at 0/3000100"), "{text}");
    // Timeline 1 itself still works, and an unknown timeline says why not.
    assert!(
        archive
            .plan_on(&backups, Target::End, Some(TargetTimeline::Current))
            .is_ok()
    );
    let text =
        unreachable_text(archive.plan_on(&backups, Target::End, Some(TargetTimeline::Number(9))));
    assert!(text.contains("00000009.history"), "{text}");
}

#[test]
fn a_time_on_the_parent_after_the_switch_is_reached_only_on_the_parent() {
    // Timeline 2 branched at 0/5000100. After the switch, timeline 1 committed until 10:40,
    // timeline 2 only until 10:30.
    let archive = Archive::new(&[(1, 2, 7), (2, 5, 7)], &[(2, "1\t0/5000100\tpromoted\n")])
        .commits(1, 3, 5)
        .commits(1, 4, 15)
        .commits(1, 6, 35)
        .commits(1, 7, 40)
        .commits(2, 6, 25)
        .commits(2, 7, 30);
    let backups = [backup("a", 1, 2, 3, 10)];
    // On the latest timeline (2), 10:37 lies after its last commit; timeline 1 reaches it.
    let text = unreachable_text(archive.plan(&backups, Target::Time(at(37))));
    assert!(
        text.contains("latest reachable time is 2026-11-22T10:30:00Z"),
        "{text}"
    );
    assert!(text.contains("pass --target-timeline 1"), "{text}");
    // On timeline 1 it is reached, in timeline 1's own segment 7.
    let plan = archive
        .plan_on(
            &backups,
            Target::Time(at(37)),
            Some(TargetTimeline::Number(1)),
        )
        .unwrap();
    assert_eq!(plan.timeline, 1);
    assert_eq!(names(&plan).last().unwrap(), &seg(1, 7));
    // 10:27 is reached on both, past the fork: a choice, never a guess.
    let text = ambiguous_text(archive.plan(&backups, Target::Time(at(27))));
    assert!(text.contains("--target-timeline 1 or 2"), "{text}");
    let plan = archive
        .plan_on(
            &backups,
            Target::Time(at(27)),
            Some(TargetTimeline::Number(2)),
        )
        .unwrap();
    assert_eq!(names(&plan).last().unwrap(), &seg(2, 7));
    // Before the fork both read the same WAL: no question to ask.
    let plan = archive.plan(&backups, Target::Time(at(12))).unwrap();
    assert_eq!(names(&plan).last().unwrap(), &seg(1, 4));
}

fn ambiguous_text(result: Result<RestorePlan, PlanError>) -> String {
    match result {
        Err(PlanError::AmbiguousTimeline(text)) => text,
        other => panic!("expected AmbiguousTimeline, got {other:?}"),
    }
}

#[test]
fn a_restored_copys_timeline_and_the_primarys_are_never_guessed() {
    // The primary stays on timeline 1 (segments 2-8); a restored copy of backup a promoted
    // to timeline 2 at 0/5000100, archived here (5-8) and took backup c.
    let archive = Archive::new(&[(1, 2, 8), (2, 5, 8)], &[(2, "1\t0/5000100\tcopy\n")])
        .commits(1, 6, 32)
        .commits(1, 8, 50)
        .commits(2, 7, 34)
        .commits(2, 8, 52)
        .restore_point(1, 7, "after")
        .restore_point(2, 7, "after")
        .restore_point(1, 3, "before")
        .restore_point(2, 8, "copy-only");
    let backups = [backup("a", 1, 2, 3, 10), backup("c", 2, 6, 6, 30)];
    for target in [
        Target::Time(at(40)),
        Target::Name("after".into()),
        Target::Lsn(lsn(7, 0)),
    ] {
        let text = ambiguous_text(archive.plan(&backups, target.clone()));
        assert!(!text.contains('\n'), "{text}");
        for says in [
            "timeline 1 (the first timeline; backups on it: a; restores from backup a)",
            "timeline 2 (forked from timeline 1 at 0/5000100; backups on it: c",
            "--target-timeline 1 or 2",
        ] {
            assert!(text.contains(says), "{target:?}: {text}");
        }
    }
    // Asked for, each timeline restores its own history from a backup on its path.
    let on = |t| Some(TargetTimeline::Number(t));
    let one = archive
        .plan_on(&backups, Target::Time(at(40)), on(1))
        .unwrap();
    assert_eq!((one.timeline, one.backup.id.as_str()), (1, "a"));
    assert_eq!(names(&one).last().unwrap(), &seg(1, 8));
    let two = archive
        .plan_on(&backups, Target::Time(at(40)), on(2))
        .unwrap();
    assert_eq!((two.timeline, two.backup.id.as_str()), (2, "c"));
    assert_eq!(names(&two).last().unwrap(), &seg(2, 8));
    // `latest`, asked for, is PostgreSQL's choice: the newest timeline.
    let latest = archive
        .plan_on(&backups, Target::Time(at(40)), Some(TargetTimeline::Latest))
        .unwrap();
    assert_eq!(latest.timeline, 2);
    // A point before the fork, or only on one timeline, is no question.
    let before = archive
        .plan(&backups, Target::Name("before".into()))
        .unwrap();
    assert_eq!(before.backup.id, "a");
    let copy = archive
        .plan(&backups, Target::Name("copy-only".into()))
        .unwrap();
    assert_eq!(copy.timeline, 2);
    // Without a target, recovery follows the latest timeline as PostgreSQL does.
    assert_eq!(archive.plan(&backups, Target::End).unwrap().timeline, 2);
}

/// PostgreSQL 15's t/028_pitr_timelines.pl: timeline 2 promoted at 0/3018CB0; a PITR to
/// restore point 'rp', read from timeline 2's segment 3, stopped at 0/3018C48 and became
/// timeline 3, whose history's switch points go back.
const PG028: [(u32, &str); 2] = [
    (2, "1\t0/3018CB0\tno recovery target specified\n"),
    (
        3,
        "1\t0/3018CB0\tno recovery target specified\n\n\
         2\t0/3018C48\tat restore point \"rp\"\n",
    ),
];

#[test]
fn recovery_follows_a_history_whose_switch_points_go_back_as_postgresql_does() {
    let archive = Archive::new(&[(1, 1, 2), (2, 3, 3), (3, 3, 4)], &PG028)
        .restore_point(2, 3, "rp")
        .restore_point(3, 3, "rp");
    let backups = [backup("a", 1, 1, 1, 10)];
    // Latest is 3; segment 3 comes from timeline 3, never from 2.
    let plan = archive.plan(&backups, Target::End).unwrap();
    assert_eq!(plan.timeline, 3);
    assert_eq!(
        names(&plan),
        vec![seg(1, 1), seg(1, 2), seg(3, 3), seg(3, 4)]
    );
    assert_eq!(plan.histories.len(), 2);
    // The restore point lies before both forks: timelines 2 and 3 agree.
    let plan = archive.plan(&backups, Target::Name("rp".into())).unwrap();
    assert_eq!(plan.timeline, 3);
    assert_eq!(names(&plan), vec![seg(1, 1), seg(1, 2), seg(3, 3)]);
    let plan = archive
        .plan_on(
            &backups,
            Target::Name("rp".into()),
            Some(TargetTimeline::Number(2)),
        )
        .unwrap();
    assert_eq!(names(&plan), vec![seg(1, 1), seg(1, 2), seg(2, 3)]);
}

#[test]
fn a_switch_point_equal_to_or_behind_its_parents_is_followed_as_postgresql_does() {
    // Equal: timeline 3 leaves 2 where 2 began; behind: a segment before 2 began.
    for (history, first_on_three) in [
        ("1\t0/5000100\ta\n2\t0/5000100\tb\n", 5),
        ("1\t0/5000100\ta\n2\t0/4000200\tb\n", 4),
    ] {
        let archive = Archive::new(
            &[(1, 2, 6), (2, 5, 6), (3, first_on_three, 7)],
            &[(2, "1\t0/5000100\ta\n"), (3, history)],
        );
        let backups = [backup("a", 1, 2, 3, 10)];
        let plan = archive.plan(&backups, Target::End).unwrap();
        assert_eq!(plan.timeline, 3);
        let expected: Vec<String> = (2..first_on_three)
            .map(|s| seg(1, s))
            .chain((first_on_three..=7).map(|s| seg(3, s)))
            .collect();
        assert_eq!(names(&plan), expected, "{history:?}");
    }
}

#[test]
fn an_unknown_backup_is_a_usage_error_and_a_named_one_is_used() {
    let archive = Archive::new(&[(1, 2, 6)], &[]);
    let backups = [backup("a", 1, 2, 3, 10), backup("b", 1, 4, 4, 20)];
    assert_eq!(
        archive
            .plan_with_backup(&backups, "zz", Target::End)
            .unwrap_err(),
        PlanError::UnknownBackup("zz".into())
    );
    let plan = archive
        .plan_with_backup(&backups, "a", Target::End)
        .unwrap();
    assert_eq!(plan.backup.id, "a");
}

#[test]
fn summaries_are_needed_only_where_the_decision_reads_them() {
    let archive = Archive::new(&[(1, 2, 6)], &[]);
    let b = backup("a", 1, 2, 3, 10);
    let needed = |target| {
        summaries_needed(
            &archive.view,
            &b,
            &RecoveryRequest {
                target,
                ..RecoveryRequest::default()
            },
        )
    };
    assert_eq!(needed(Target::Immediate), Needed::Nothing);
    assert_eq!(needed(Target::Lsn(lsn(4, 0))), Needed::Nothing);
    assert_eq!(
        needed(Target::Lsn(lsn(9, 0))),
        Needed::Outline,
        "to say how far it reaches"
    );
    assert_eq!(needed(Target::Time(at(1))), Needed::FirstCommitAfter(at(1)));
    assert_eq!(needed(Target::End), Needed::Outline);
    assert_eq!(needed(Target::Name("x".into())), Needed::RestorePoints);
    assert_eq!(needed(Target::Xid(7)), Needed::Everything);
}

impl Archive {
    fn plan_with_backup(
        &self,
        backups: &[BackupManifest],
        id: &str,
        target: Target,
    ) -> Result<RestorePlan, PlanError> {
        let request = PlanRequest {
            recovery: RecoveryRequest {
                target,
                ..RecoveryRequest::default()
            },
            backup: Some(id.into()),
        };
        plan_restore(&self.view, backups, &request)
    }
}
