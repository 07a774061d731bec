//! The retention decision on constructed repositories: synthetic manifests, dates and WAL.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::*;
use crate::catalog::RepositoryIdentity;
use crate::catalog::wal::WalListing;
use crate::pg::timeline::parse_history;
use crate::pg::{Lsn, WalFileName};

const SEG: u64 = 16 << 20;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn seg(timeline: u32, segno: u64) -> String {
    xlog_file_name(timeline, segno, SEG)
}

/// A backup on `timeline` from segment `start` to `stop`, started at `started` (RFC 3339) and
/// finished a minute later; its id is its start time.
fn backup(timeline: u32, start: u64, stop: u64, started: &str) -> BackupManifest {
    let start_time = utc(started);
    BackupManifest {
        format: 1,
        id: start_time.format("%Y%m%dT%H%M%SZ").to_string(),
        label: String::new(),
        system_identifier: "1".into(),
        pg_version: 15,
        timeline,
        start_lsn: Lsn(start * SEG + 0x28),
        stop_lsn: Lsn(stop * SEG + 0x100),
        start_time,
        stop_time: start_time + Duration::minutes(1),
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

/// Segments as (timeline, first, last) runs, other files by name, histories as text.
fn view(runs: &[(u32, u64, u64)], other: &[&str], histories: &[(u32, &str)]) -> ArchiveView {
    let identity = RepositoryIdentity::for_tests(SEG, 8192);
    let mut names: Vec<String> = runs
        .iter()
        .flat_map(|&(t, first, last)| (first..=last).map(move |s| seg(t, s)))
        .collect();
    names.extend(other.iter().map(|s| s.to_string()));
    names.extend(histories.iter().map(|(t, _)| format!("{t:08X}.history")));
    let files = names.iter().map(|n| (WalFileName::parse(n).unwrap(), 100));
    let mut listing = WalListing::from_files(files, SEG);
    listing.summarised = names
        .iter()
        .map(|n| WalFileName::parse(n).unwrap())
        .collect();
    let histories: BTreeMap<u32, _> = histories
        .iter()
        .map(|(t, text)| (*t, parse_history(*t, text).unwrap()))
        .collect();
    ArchiveView::new(&identity, listing, histories)
}

fn policy() -> Policy {
    Policy::default()
}

fn kept_ids(plan: &RetentionPlan) -> Vec<&str> {
    plan.kept.iter().map(|k| k.id.as_str()).collect()
}

fn removed_ids(plan: &RetentionPlan) -> Vec<&str> {
    plan.removed.iter().map(|r| r.id.as_str()).collect()
}

fn removed_wal(plan: &RetentionPlan) -> Vec<&str> {
    plan.wal_removed.iter().map(|f| f.name.as_str()).collect()
}

fn rules_of<'a>(plan: &'a RetentionPlan, id: &str) -> &'a [Rule] {
    &plan.kept.iter().find(|k| k.id == id).unwrap().rules
}

fn plan(
    view: &ArchiveView,
    backups: &[BackupManifest],
    now: &str,
    policy: &Policy,
) -> RetentionPlan {
    plan_retention(view, backups, &BTreeSet::new(), utc(now), policy)
}

#[test]
fn keep_last_keeps_the_newest_and_continuous_wal_from_the_oldest_kept() {
    let backups = [
        backup(1, 2, 3, "2026-11-20T10:00:00Z"),
        backup(1, 5, 5, "2026-11-20T11:00:00Z"),
        backup(1, 8, 9, "2026-11-20T12:00:00Z"),
        backup(1, 11, 11, "2026-11-20T13:00:00Z"),
    ];
    let view = view(
        &[(1, 1, 13)],
        &[
            "000000010000000000000002.00000028.backup",
            "000000010000000000000005.00000028.backup",
        ],
        &[],
    );
    let policy = Policy {
        keep_last: Some(2),
        ..policy()
    };
    let plan = plan(&view, &backups, "2026-11-21T00:00:00Z", &policy);
    assert_eq!(kept_ids(&plan), ["20261120T130000Z", "20261120T120000Z"]);
    assert_eq!(
        rules_of(&plan, "20261120T130000Z"),
        [Rule::Newest, Rule::KeepLast]
    );
    assert_eq!(removed_ids(&plan), ["20261120T100000Z", "20261120T110000Z"]);
    // The removed backups' history files go with them, not in the WAL list.
    assert_eq!(
        plan.removed[0]
            .backup_history
            .as_ref()
            .unwrap()
            .name
            .as_str(),
        "000000010000000000000002.00000028.backup"
    );
    let expected: Vec<String> = (1..8).map(|s| seg(1, s)).collect();
    assert_eq!(removed_wal(&plan), expected);
    assert_eq!(plan.expired_before, BTreeMap::from([(1, 8)]));
}

#[test]
fn the_window_keeps_the_backup_it_starts_from_and_everything_after() {
    let backups = [
        backup(1, 2, 2, "2026-11-20T10:00:00Z"), // stops 10:01
        backup(1, 4, 4, "2026-11-20T11:00:00Z"), // stops 11:01
        backup(1, 6, 6, "2026-11-20T12:00:00Z"), // stops 12:01
    ];
    let view = view(&[(1, 1, 8)], &[], &[]);
    let within = |minutes| Policy {
        keep_within: Some(Duration::minutes(minutes)),
        ..policy()
    };
    // now - 60 min = 11:01 exactly: the backup that stopped then is where the window starts.
    let plan_at_boundary = plan(&view, &backups, "2026-11-20T12:01:00Z", &within(60));
    assert_eq!(
        kept_ids(&plan_at_boundary),
        ["20261120T120000Z", "20261120T110000Z"]
    );
    assert_eq!(removed_ids(&plan_at_boundary), ["20261120T100000Z"]);
    assert_eq!(
        removed_wal(&plan_at_boundary),
        [seg(1, 1), seg(1, 2), seg(1, 3)]
    );
    // A second earlier and the window reaches back before 11:01: 10:00's backup starts it.
    let plan_before = plan(&view, &backups, "2026-11-20T12:00:59Z", &within(60));
    assert_eq!(kept_ids(&plan_before).len(), 3);
    assert_eq!(removed_wal(&plan_before), [seg(1, 1)]);
    // A window after every backup keeps the newest, which starts it.
    let plan_late = plan(&view, &backups, "2026-12-20T00:00:00Z", &within(60));
    assert_eq!(kept_ids(&plan_late), ["20261120T120000Z"]);
    assert_eq!(
        rules_of(&plan_late, "20261120T120000Z"),
        [Rule::Newest, Rule::KeepWithin]
    );
    // A window longer than the repository keeps all, and WAL before the oldest goes.
    let plan_long = plan(
        &view,
        &backups,
        "2026-11-20T12:30:00Z",
        &within(60 * 24 * 365),
    );
    assert_eq!(kept_ids(&plan_long).len(), 3);
    assert_eq!(removed_wal(&plan_long), [seg(1, 1)]);
}

#[test]
fn older_kept_backups_keep_only_their_own_range_when_a_window_is_set() {
    let backups = [
        backup(1, 2, 3, "2026-11-01T10:00:00Z"),
        backup(1, 6, 6, "2026-11-10T10:00:00Z"),
        backup(1, 9, 9, "2026-11-20T10:00:00Z"),
    ];
    let view = view(&[(1, 1, 11)], &[], &[]);
    let pinned = BTreeSet::from(["20261101T100000Z".to_string()]);
    let policy = Policy {
        keep_within: Some(Duration::hours(1)),
        ..policy()
    };
    let plan = plan_retention(
        &view,
        &backups,
        &pinned,
        utc("2026-11-20T12:00:00Z"),
        &policy,
    );
    assert_eq!(kept_ids(&plan), ["20261120T100000Z", "20261101T100000Z"]);
    assert_eq!(rules_of(&plan, "20261101T100000Z"), [Rule::Pinned]);
    let expected: Vec<String> = [1, 4, 5, 6, 7, 8].iter().map(|&s| seg(1, s)).collect();
    assert_eq!(removed_wal(&plan), expected);
    assert!(plan.wal_kept.contains(&KeptWal {
        timeline: 1,
        first_segno: 2,
        last_segno: Some(3),
        reason: WalReason::Consistency {
            backup: "20261101T100000Z".into()
        },
    }));
    // Verify skips the gap between the pinned backup's range and the window.
    assert_eq!(plan.expired_before, BTreeMap::from([(1, 9)]));

    // Without a window, a pinned backup keeps continuous WAL from its start.
    let count = Policy {
        keep_last: Some(1),
        ..Policy::default()
    };
    let plan = plan_retention(
        &view,
        &backups,
        &pinned,
        utc("2026-11-20T12:00:00Z"),
        &count,
    );
    assert_eq!(removed_ids(&plan), ["20261110T100000Z"]);
    assert_eq!(removed_wal(&plan), [seg(1, 1)]);
}

#[test]
fn keep_daily_counts_the_days_that_have_backups() {
    let backups = [
        backup(1, 1, 1, "2026-11-16T08:00:00Z"),
        backup(1, 2, 2, "2026-11-16T20:00:00Z"),
        // no backup on the 17th and 18th
        backup(1, 3, 3, "2026-11-19T08:00:00Z"),
        backup(1, 4, 4, "2026-11-20T08:00:00Z"),
        backup(1, 5, 5, "2026-11-20T20:00:00Z"),
    ];
    let view = view(&[(1, 1, 6)], &[], &[]);
    let policy = Policy {
        keep_daily: Some(3),
        ..policy()
    };
    let plan = plan(&view, &backups, "2026-11-21T00:00:00Z", &policy);
    assert_eq!(
        kept_ids(&plan),
        ["20261120T200000Z", "20261119T080000Z", "20261116T200000Z"]
    );
    let kept = plan
        .kept
        .iter()
        .find(|k| k.id == "20261116T200000Z")
        .unwrap();
    assert_eq!(kept.periods, ["keep_daily 2026-11-16"]);
    assert_eq!(removed_ids(&plan), ["20261116T080000Z", "20261120T080000Z"]);
    // Continuous from the oldest kept (no window): segment 1 goes, the rest stays.
    assert_eq!(removed_wal(&plan), [seg(1, 1)]);
}

#[test]
fn all_backups_of_one_day_are_one_period() {
    let backups: Vec<BackupManifest> = (0..5)
        .map(|i| backup(1, i + 1, i + 1, &format!("2026-11-20T1{i}:00:00Z")))
        .collect();
    let view = view(&[(1, 1, 6)], &[], &[]);
    for rule in 0..4 {
        let mut policy = policy();
        let count = Some(7);
        match rule {
            0 => policy.keep_daily = count,
            1 => policy.keep_weekly = count,
            2 => policy.keep_monthly = count,
            _ => policy.keep_yearly = count,
        }
        let plan = plan(&view, &backups, "2026-11-21T00:00:00Z", &policy);
        assert_eq!(kept_ids(&plan), ["20261120T140000Z"], "rule {rule}");
        assert_eq!(plan.removed.len(), 4);
    }
}

#[test]
fn weeks_are_iso_weeks_and_months_and_years_are_calendar_ones() {
    let backups = [
        backup(1, 1, 1, "2025-12-28T10:00:00Z"), // Sunday, 2025-W52
        backup(1, 2, 2, "2025-12-29T10:00:00Z"), // Monday, 2026-W01 (ISO year 2026)
        backup(1, 3, 3, "2025-12-31T10:00:00Z"), // 2026-W01, December, 2025
        backup(1, 4, 4, "2026-01-01T10:00:00Z"), // 2026-W01, January, 2026
        backup(1, 5, 5, "2026-01-05T10:00:00Z"), // 2026-W02
        backup(1, 6, 6, "2026-02-01T10:00:00Z"), // Sunday, 2026-W05, February
    ];
    let view = view(&[(1, 1, 7)], &[], &[]);
    let now = "2026-02-02T00:00:00Z";
    let weekly = plan(
        &view,
        &backups,
        now,
        &Policy {
            keep_weekly: Some(4),
            ..policy()
        },
    );
    assert_eq!(
        kept_ids(&weekly),
        [
            "20260201T100000Z",
            "20260105T100000Z",
            "20260101T100000Z",
            "20251228T100000Z"
        ]
    );
    let periods: Vec<&String> = weekly.kept.iter().flat_map(|k| &k.periods).collect();
    assert_eq!(
        periods,
        [
            "keep_weekly 2026-W05",
            "keep_weekly 2026-W02",
            "keep_weekly 2026-W01",
            "keep_weekly 2025-W52"
        ]
    );
    let monthly = plan(
        &view,
        &backups,
        now,
        &Policy {
            keep_monthly: Some(2),
            ..policy()
        },
    );
    assert_eq!(kept_ids(&monthly), ["20260201T100000Z", "20260105T100000Z"]);
    let monthly = plan(
        &view,
        &backups,
        now,
        &Policy {
            keep_monthly: Some(3),
            ..policy()
        },
    );
    assert_eq!(
        kept_ids(&monthly),
        ["20260201T100000Z", "20260105T100000Z", "20251231T100000Z"]
    );
    let yearly = plan(
        &view,
        &backups,
        now,
        &Policy {
            keep_yearly: Some(5),
            ..policy()
        },
    );
    assert_eq!(kept_ids(&yearly), ["20260201T100000Z", "20251231T100000Z"]);
    // Rules combine as a union, each backup naming every rule that keeps it.
    let both = plan(
        &view,
        &backups,
        now,
        &Policy {
            keep_last: Some(1),
            keep_monthly: Some(1),
            keep_yearly: Some(2),
            ..policy()
        },
    );
    assert_eq!(
        rules_of(&both, "20260201T100000Z"),
        [
            Rule::Newest,
            Rule::KeepLast,
            Rule::KeepMonthly,
            Rule::KeepYearly
        ]
    );
    assert_eq!(rules_of(&both, "20251231T100000Z"), [Rule::KeepYearly]);
    assert_eq!(kept_ids(&both).len(), 2);
}

#[test]
fn periods_are_counted_in_the_configured_time_zone() {
    let backups = [
        backup(1, 1, 1, "2026-11-20T20:00:00Z"),
        backup(1, 2, 2, "2026-11-20T23:30:00Z"), // 00:30 on the 21st in Berlin
    ];
    let view = view(&[(1, 1, 3)], &[], &[]);
    let daily = |timezone| Policy {
        keep_daily: Some(2),
        timezone,
        ..policy()
    };
    let in_utc = plan(
        &view,
        &backups,
        "2026-11-22T00:00:00Z",
        &daily(chrono_tz::UTC),
    );
    assert_eq!(kept_ids(&in_utc), ["20261120T233000Z"]);
    let in_berlin = plan(
        &view,
        &backups,
        "2026-11-22T00:00:00Z",
        &daily(chrono_tz::Europe::Berlin),
    );
    assert_eq!(kept_ids(&in_berlin).len(), 2);
    assert_eq!(
        in_berlin.kept[0].periods,
        ["keep_daily 2026-11-21"],
        "the later backup falls on the next day in Berlin"
    );
}

#[test]
fn a_day_with_a_dst_change_is_one_day() {
    // New York leaves daylight saving time on 2026-11-01 at 02:00 EDT (06:00 UTC): 01:30
    // happens twice, and the day has 25 hours.
    let backups = [
        backup(1, 1, 1, "2026-11-01T03:59:00Z"), // 23:59 EDT on Oct 31
        backup(1, 2, 2, "2026-11-01T05:30:00Z"), // 01:30 EDT on Nov 1
        backup(1, 3, 3, "2026-11-01T06:30:00Z"), // 01:30 EST on Nov 1
        backup(1, 4, 4, "2026-11-02T04:59:00Z"), // 23:59 EST on Nov 1
        backup(1, 5, 5, "2026-11-02T05:01:00Z"), // 00:01 EST on Nov 2
    ];
    let view = view(&[(1, 1, 6)], &[], &[]);
    let policy = Policy {
        keep_daily: Some(3),
        timezone: chrono_tz::America::New_York,
        ..policy()
    };
    let fall = plan(&view, &backups, "2026-11-03T00:00:00Z", &policy);
    assert_eq!(
        kept_ids(&fall),
        ["20261102T050100Z", "20261102T045900Z", "20261101T035900Z"]
    );
    let periods: Vec<&String> = fall.kept.iter().flat_map(|k| &k.periods).collect();
    assert_eq!(
        periods,
        [
            "keep_daily 2026-11-02",
            "keep_daily 2026-11-01",
            "keep_daily 2026-10-31"
        ]
    );
    // Spring forward (2026-03-08, 02:00 EST → 03:00 EDT): a 23-hour day is one day too.
    let spring = [
        backup(1, 1, 1, "2026-03-08T06:59:00Z"), // 01:59 EST
        backup(1, 2, 2, "2026-03-08T07:01:00Z"), // 03:01 EDT
        backup(1, 3, 3, "2026-03-09T03:59:00Z"), // 23:59 EDT on Mar 8
    ];
    let spring_plan = plan(&view, &spring, "2026-03-10T00:00:00Z", &policy);
    assert_eq!(kept_ids(&spring_plan), ["20260309T035900Z"]);
}

#[test]
fn pinned_backups_and_the_newest_never_expire() {
    let backups = [
        backup(1, 1, 1, "2026-01-01T00:00:00Z"),
        backup(1, 2, 2, "2026-06-01T00:00:00Z"),
    ];
    let view = view(&[(1, 1, 3)], &[], &[]);
    let pinned = BTreeSet::from(["20260101T000000Z".to_string()]);
    let policy = Policy {
        keep_within: Some(Duration::hours(1)),
        ..policy()
    };
    let plan = plan_retention(
        &view,
        &backups,
        &pinned,
        utc("2026-11-01T00:00:00Z"),
        &policy,
    );
    assert!(plan.removed.is_empty());
    assert_eq!(
        rules_of(&plan, "20260601T000000Z"),
        [Rule::Newest, Rule::KeepWithin]
    );
    assert_eq!(rules_of(&plan, "20260101T000000Z"), [Rule::Pinned]);
    assert!(plan.wal_removed.is_empty(), "{:?}", removed_wal(&plan));
}

#[test]
fn timelines_keep_what_recovery_from_a_kept_backup_reads() {
    // Timeline 1 to segment 12, with backups at 3 and 10; a restore to a point in segment 7
    // was promoted: timeline 2 from 0/7000100, backups at 8 and 11. The old timeline 1 went on
    // to segment 12. Timeline 3 forked from 2 at segment 14 and has no backup yet.
    let histories = [
        (2, "1\t0/7000100\tbefore"),
        (3, "1\t0/7000100\tbefore\n2\t0/E000200\tagain"),
    ];
    let backups = [
        backup(1, 3, 3, "2026-11-20T10:00:00Z"),
        backup(1, 10, 10, "2026-11-20T11:00:00Z"),
        backup(2, 8, 8, "2026-11-20T12:00:00Z"),
        backup(2, 11, 11, "2026-11-20T13:00:00Z"),
    ];
    let view = view(
        &[(1, 1, 12), (2, 7, 14), (3, 14, 15)],
        &["000000010000000000000007.partial"],
        &histories,
    );
    let window = Policy {
        keep_within: Some(Duration::minutes(90)),
        ..policy()
    };
    // now - 90 min = 12:31: the window starts from the backup at 12:00 (timeline 2, seg 8).
    let late = plan(&view, &backups, "2026-11-20T14:01:00Z", &window);
    assert_eq!(kept_ids(&late), ["20261120T130000Z", "20261120T120000Z"]);
    // Timeline 1 is not on the way from segment 8 on timeline 2: all of it goes (the
    // partial too), timeline 2's first segment (7) goes; timeline 3 stays whole.
    let mut expected: Vec<String> = (1..=6).map(|s| seg(1, s)).collect();
    expected.extend([
        seg(1, 7),
        "000000010000000000000007.partial".into(),
        seg(2, 7),
    ]);
    expected.extend((8..=12).map(|s| seg(1, s)));
    let mut removed: Vec<&str> = removed_wal(&late);
    removed.sort();
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(late.expired_before, BTreeMap::from([(1, 13), (2, 8)]));
    assert!(
        late.wal_kept
            .iter()
            .any(|r| r.timeline == 3 && r.reason == WalReason::NewTimeline)
    );

    // A window reaching timeline 1's backup at 11:00 (seg 10): timeline 1 keeps 10 to 12.
    let earlier = plan(&view, &backups, "2026-11-20T13:30:00Z", &window);
    assert_eq!(kept_ids(&earlier).len(), 3);
    assert_eq!(earlier.expired_before[&1], 10);
    assert!(!removed_wal(&earlier).contains(&seg(1, 10).as_str()));
    assert!(removed_wal(&earlier).contains(&seg(1, 9).as_str()));
    // Timeline 2 keeps from segment 8 (its backup's start).
    assert!(!removed_wal(&earlier).contains(&seg(2, 8).as_str()));

    // Keep the oldest too (by count): it lies on timeline 2's path before the switch, so
    // timeline 1 keeps 3 to 6 and timeline 2 from 7.
    let all = plan_retention(
        &view,
        &backups,
        &BTreeSet::new(),
        utc("2026-11-20T14:01:00Z"),
        &Policy {
            keep_last: Some(4),
            ..policy()
        },
    );
    assert!(all.removed.is_empty());
    assert_eq!(removed_wal(&all), [seg(1, 1), seg(1, 2)]);
}

#[test]
fn partial_and_backup_history_files_below_the_cut_go_and_orphan_summaries_too() {
    let backups = [
        backup(1, 4, 4, "2026-11-20T10:00:00Z"),
        backup(1, 6, 6, "2026-11-20T11:00:00Z"),
    ];
    let mut view = view(
        &[(1, 3, 7)],
        &[
            "000000010000000000000003.00000060.backup", // another tool's backup
            "000000010000000000000004.00000028.backup",
            "000000010000000000000006.00000028.backup",
        ],
        &[],
    );
    // Summaries of segments 1 and 2 are left from an earlier removal cut short.
    for s in [1, 2, 9] {
        view.listing
            .summarised
            .insert(WalFileName::parse(&seg(1, s)).unwrap());
    }
    let plan = plan(
        &view,
        &backups,
        "2026-11-21T00:00:00Z",
        &Policy {
            keep_last: Some(1),
            ..policy()
        },
    );
    assert_eq!(removed_ids(&plan), ["20261120T100000Z"]);
    assert_eq!(
        removed_wal(&plan),
        [
            seg(1, 3).as_str(),
            "000000010000000000000003.00000060.backup",
            &seg(1, 4),
            &seg(1, 5)
        ]
    );
    let orphans: Vec<&str> = plan.orphan_summaries.iter().map(|n| n.as_str()).collect();
    assert_eq!(orphans, [seg(1, 1), seg(1, 2)], "9 is above the cut");
}

#[test]
fn an_empty_repository_keeps_its_wal() {
    let view = view(&[(1, 1, 3)], &[], &[]);
    let plan = plan(
        &view,
        &[],
        "2026-11-21T00:00:00Z",
        &Policy {
            keep_last: Some(1),
            ..policy()
        },
    );
    assert_eq!(plan, RetentionPlan::default());
}

#[test]
fn windows_are_parsed_as_durations() {
    assert_eq!(parse_window("30d").unwrap(), Duration::days(30));
    assert_eq!(parse_window("12h").unwrap(), Duration::hours(12));
    assert_eq!(parse_window("2w").unwrap(), Duration::weeks(2));
    assert_eq!(parse_window("90m").unwrap(), Duration::minutes(90));
    assert_eq!(parse_window("1d 12h").unwrap(), Duration::hours(36));
    for bad in ["", "30", "thirty days", "0s", "-1d"] {
        assert!(parse_window(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        backup_history_name(&backup(2, 5, 5, "2026-11-20T10:00:00Z"), SEG),
        "000000020000000000000005.00000028.backup"
    );
}

#[test]
fn a_replay_in_flight_keeps_its_backup_and_the_segments_it_reads() {
    let backups = [
        backup(1, 2, 3, "2026-11-20T10:00:00Z"),
        backup(1, 8, 9, "2026-11-20T12:00:00Z"),
    ];
    let view = view(&[(1, 1, 12)], &[], &[]);
    let policy = Policy {
        keep_last: Some(1),
        ..policy()
    };
    let mut retention = plan(&view, &backups, "2026-11-21T00:00:00Z", &policy);
    assert_eq!(removed_ids(&retention), vec![backups[0].id.as_str()]);
    assert!(removed_wal(&retention).contains(&seg(1, 5).as_str()));
    let hold = ReplayHold {
        claim: "ab".into(),
        backup: backups[0].id.clone(),
        runs: vec![(1, 2, 10)],
    };
    hold_for_replays(&mut retention, &[hold], &backups, SEG);
    assert!(removed_ids(&retention).is_empty());
    assert_eq!(rules_of(&retention, &backups[0].id), &[Rule::Replay]);
    // Before the replay's first segment WAL still goes; none of what it reads does.
    assert_eq!(removed_wal(&retention), vec![seg(1, 1).as_str()]);
    assert!(retention.wal_kept.iter().any(|r| r.reason
        == WalReason::Replay {
            claim: "ab".into(),
            backup: backups[0].id.clone()
        }
        && r.first_segno == 2
        && r.last_segno == Some(10)));
}

/// `backup` made incremental on `parent`.
fn incremental(mut backup: BackupManifest, parent: &BackupManifest) -> BackupManifest {
    backup.backup_type = crate::catalog::backup::BackupType::Incr;
    backup.parent = Some(parent.id.clone());
    backup
}

#[test]
fn chains_are_kept_whole() {
    let full1 = backup(1, 2, 2, "2026-11-20T10:00:00Z");
    let incr1 = incremental(backup(1, 4, 4, "2026-11-20T11:00:00Z"), &full1);
    let incr2 = incremental(backup(1, 6, 6, "2026-11-20T12:00:00Z"), &incr1);
    let full2 = backup(1, 8, 8, "2026-11-20T13:00:00Z");
    let incr3 = incremental(backup(1, 10, 10, "2026-11-20T14:00:00Z"), &full2);
    let backups = [
        full1.clone(),
        incr1.clone(),
        incr2.clone(),
        full2.clone(),
        incr3.clone(),
    ];
    let view = view(&[(1, 2, 11)], &[], &[]);
    // keep_last counts full backups: the newest full and what builds on it.
    let kept = plan(
        &view,
        &backups,
        "2026-11-21T00:00:00Z",
        &Policy {
            keep_last: Some(1),
            ..policy()
        },
    );
    assert_eq!(kept_ids(&kept), [&incr3.id, &full2.id]);
    assert_eq!(removed_ids(&kept), [&full1.id, &incr1.id, &incr2.id]);
    assert_eq!(rules_of(&kept, &full2.id), [Rule::KeepLast, Rule::Chain]);
    // A kept incremental keeps every backup it builds on, whatever keeps it.
    let pinned: BTreeSet<String> = [incr1.id.clone()].into();
    let kept = plan_retention(
        &view,
        &backups,
        &pinned,
        utc("2026-11-21T00:00:00Z"),
        &Policy {
            keep_last: Some(1),
            ..policy()
        },
    );
    assert_eq!(removed_ids(&kept), [&incr2.id]);
    assert_eq!(rules_of(&kept, &full1.id), [Rule::Chain]);
    assert_eq!(rules_of(&kept, &incr1.id), [Rule::Pinned]);
}
