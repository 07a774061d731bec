use std::collections::BTreeMap;

use super::*;
use crate::catalog::history::{HISTORY_FORMAT, LatestRuns, RunRecord};
use crate::commands::list::{BackupEntry, ListReport};
use crate::commands::overview::NewestWal;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().into()
}

fn thresholds() -> CheckThresholds {
    CheckThresholds::from_settings(&Settings::default()).unwrap()
}

fn repository(
    backup_stop: Option<&str>,
    commit: Option<&str>,
    verified: Option<&str>,
) -> RepositoryOverview {
    let backups = backup_stop
        .map(|stop| BackupEntry {
            id: "20261120T000000Z".into(),
            start_time: stop.into(),
            stop_time: stop.into(),
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            timeline: 1,
            size_bytes: 1,
            stored_bytes: 1,
            pinned: false,
            annotations: Default::default(),
            method: "local",
            backup_type: "full",
            parent: None,
            configuration: None,
        })
        .into_iter()
        .collect();
    let segment = WalFileName::parse("000000010000000000000005").unwrap();
    let mut latest_runs = BTreeMap::new();
    if let Some(end) = verified {
        let run = RunRecord {
            format: HISTORY_FORMAT,
            command: "verify".into(),
            start: at(end),
            end: at(end),
            status: RunStatus::Ok,
            exit_code: 0,
            bytes: None,
            backup_id: None,
            error: None,
            host: String::new(),
            pid: 1,
        };
        latest_runs.insert(
            "verify".into(),
            LatestRuns {
                format: HISTORY_FORMAT,
                command: "verify".into(),
                last_run: run.clone(),
                last_success: Some(run),
            },
        );
    }
    RepositoryOverview {
        wal_segment_size: 16 << 20,
        list: ListReport {
            backups,
            damaged_backups: Vec::new(),
            wal: Vec::new(),
            tails: Vec::new(),
            recovery_window: Vec::new(),
            timelines_without_backup: Vec::new(),
            timelines: Vec::new(),
        },
        newest_wal: BTreeMap::from([(
            1,
            NewestWal {
                segment,
                segment_number: 5,
                last_commit: commit.map(at),
            },
        )]),
        latest_runs,
    }
}

fn states(report: &CheckReport) -> Vec<(&'static str, CheckState)> {
    report.checks.iter().map(|c| (c.name, c.state)).collect()
}

const NOW: &str = "2026-11-22T12:00:00Z";

#[test]
fn a_healthy_repository_is_ok() {
    let repo = repository(
        Some("2026-11-20T00:00:00Z"),
        Some("2026-11-22T11:55:00Z"),
        Some("2026-11-21T00:00:00Z"),
    );
    let facts = CheckFacts {
        now: at(NOW),
        repository: &repo,
        server: None,
        switch: None,
    };
    let report = evaluate(&facts, &thresholds());
    assert_eq!(report.exit_code, 0, "{report:?}");
    assert_eq!(
        states(&report),
        vec![
            ("backup_age", CheckState::Ok),
            ("archive_lag", CheckState::Ok),
            ("backups", CheckState::Ok),
            ("verify_age", CheckState::Ok)
        ]
    );
    assert!(report.problems().is_none());
}

#[test]
fn old_backups_lag_and_no_verify_raise_their_states() {
    let repo = repository(
        Some("2026-11-12T00:00:00Z"),
        Some("2026-11-22T11:30:00Z"),
        None,
    );
    let facts = CheckFacts {
        now: at(NOW),
        repository: &repo,
        server: None,
        switch: None,
    };
    let report = evaluate(&facts, &thresholds());
    assert_eq!(
        states(&report),
        vec![
            ("backup_age", CheckState::Warning),
            ("archive_lag", CheckState::Warning),
            ("backups", CheckState::Ok),
            ("verify_age", CheckState::Warning)
        ]
    );
    assert_eq!(report.exit_code, 1);

    let empty = repository(None, None, None);
    let facts = CheckFacts {
        now: at(NOW),
        repository: &empty,
        server: Some(Err("cannot connect".into())),
        switch: Some(SwitchOutcome::Missing {
            segment: "000000010000000000000006".into(),
            waited: Duration::from_secs(5),
        }),
    };
    let report = evaluate(&facts, &thresholds());
    assert_eq!(
        states(&report),
        vec![
            ("backup_age", CheckState::Critical),
            ("archive_lag", CheckState::Unknown),
            ("server", CheckState::Unknown),
            ("backups", CheckState::Critical),
            ("verify_age", CheckState::Warning),
            ("switch_wal", CheckState::Critical)
        ]
    );
    assert_eq!(report.exit_code, 2, "CRITICAL wins over UNKNOWN");
    assert!(report.problems().unwrap().contains("switch_wal"));
}

#[test]
fn the_server_settles_the_lag_and_a_failing_archiver_is_critical() {
    let repo = repository(
        Some("2026-11-20T00:00:00Z"),
        Some("2026-11-21T00:00:00Z"),
        Some(NOW),
    );
    let caught_up = ServerFacts {
        last_complete_segment: Some("000000010000000000000005".into()),
        last_complete_archived: true,
        segments_behind: Some(0),
        archiver: Some(ArchiverStats::parse(
            "7|0|000000010000000000000005|1795000000.5||",
        )),
        receivers: Vec::new(),
    };
    let facts = CheckFacts {
        now: at(NOW),
        repository: &repo,
        server: Some(Ok(caught_up)),
        switch: None,
    };
    let report = evaluate(&facts, &thresholds());
    assert_eq!(
        report.exit_code, 0,
        "an idle server is not lagging: {report:?}"
    );

    let failing = ServerFacts {
        last_complete_segment: Some("000000010000000000000009".into()),
        last_complete_archived: false,
        segments_behind: Some(4),
        archiver: Some(ArchiverStats::parse(
            "7|3|000000010000000000000005|1795000000|000000010000000000000006|1795000100",
        )),
        receivers: Vec::new(),
    };
    let facts = CheckFacts {
        now: at(NOW),
        repository: &repo,
        server: Some(Ok(failing)),
        switch: None,
    };
    let report = evaluate(&facts, &thresholds());
    assert_eq!(
        states(&report)[1..3],
        [
            ("archive_lag", CheckState::Critical),
            ("archiver", CheckState::Critical)
        ]
    );
    assert!(report.checks[1].detail.contains("4 segment(s) behind"));
}

#[test]
fn thresholds_parse_and_refuse() {
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
    assert_eq!(parse_duration("8d"), Ok(Duration::from_secs(8 * 86_400)));
    assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(7 * 86_400)));
    assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    assert!(parse_duration("8 days").is_err());
    assert!(parse_duration("-1s").is_err());
    let limits = Limits::parse("1h, 2h", parse_duration).unwrap();
    assert_eq!(limits.warning, Some(Duration::from_secs(3600)));
    assert_eq!(limits.critical, Some(Duration::from_secs(7200)));
    assert_eq!(Limits::parse("off", parse_duration).unwrap().critical, None);
    let settings = Settings {
        check_archive_lag: Some("soon".into()),
        ..Settings::default()
    };
    let err = CheckThresholds::from_settings(&settings).unwrap_err();
    assert!(err.to_string().starts_with("check_archive_lag: "), "{err}");
    assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
}

#[test]
fn the_current_segment_is_the_one_holding_the_lsn() {
    let size = 16 << 20;
    assert_eq!(current_segment("00000002|0/6000000", size), Some((2, 6)));
    assert_eq!(
        current_segment("00000001|1/5FFFFFF", size),
        Some((1, 0x105))
    );
    assert_eq!(current_segment("garbage", size), None);
}

#[test]
fn thresholds_come_from_the_config_file_under_the_same_names() {
    let file = Settings::from_toml(
        "check_backup_age = \"1d,2d\"\ncheck_archive_lag = \"off\"\n\
         check_min_backups = \"3,1\"\ncheck_verify_age = \"1w\"\ncheck_switch_wal_timeout = 5\n",
        std::path::Path::new("pitr.toml"),
    )
    .unwrap();
    let flags = Settings {
        check_backup_age: Some("2h,3h".into()),
        ..Settings::default()
    };
    let thresholds = CheckThresholds::from_settings(&flags.over(file)).unwrap();
    assert_eq!(
        thresholds.backup_age.warning,
        Some(Duration::from_secs(7200))
    );
    assert!(thresholds.archive_lag.is_off());
    assert_eq!(thresholds.min_backups.warning, Some(3));
    assert_eq!(thresholds.min_backups.critical, Some(1));
    assert_eq!(thresholds.verify_age.warning, None);
    assert_eq!(
        thresholds.verify_age.critical,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(thresholds.switch_wal_timeout, Duration::from_secs(5));
}

#[test]
fn a_receivers_slot_is_ok_streaming_warning_idle_critical_lost() {
    let limits = thresholds().archive_lag;
    let streaming = parse_receiver_slot("pitr|true|reserved|8192|0.25").unwrap();
    assert_eq!(streaming.behind_bytes, Some(8192));
    assert_eq!(streaming.flush_lag, Some(Duration::from_millis(250)));
    assert_eq!(receiver_result(&streaming, &limits).state, CheckState::Ok);
    let idle = parse_receiver_slot("pitr|false|extended||").unwrap();
    assert_eq!((idle.behind_bytes, idle.flush_lag), (None, None));
    assert_eq!(receiver_result(&idle, &limits).state, CheckState::Warning);
    let lost = parse_receiver_slot("pitr|false|lost||").unwrap();
    let result = receiver_result(&lost, &limits);
    assert_eq!(result.state, CheckState::Critical);
    assert!(
        result.detail.contains("take a new backup"),
        "{}",
        result.detail
    );
    let unreserved = parse_receiver_slot("pitr|true|unreserved|0|0").unwrap();
    assert_eq!(
        receiver_result(&unreserved, &limits).state,
        CheckState::Warning
    );
    // Lagging beyond the archive lag's limits: as archiving would be.
    let slow = parse_receiver_slot("pitr|true|reserved|1|7200").unwrap();
    assert_eq!(receiver_result(&slow, &limits).state, CheckState::Critical);
    assert!(parse_receiver_slot("pitr").is_none());
}

/// `repo_lag`: the repository with the newest segment is OK; one a segment behind is the
/// moment archive-push stores in each; more is WARNING, and CRITICAL past the lag limit by
/// the time between the last commits; one that holds no WAL is CRITICAL.
#[test]
fn repository_lag_compares_the_newest_segments() {
    let at_segment = |segno: u64, commit: &str| {
        let mut overview = repository(None, Some(commit), None);
        let wal = overview.newest_wal.get_mut(&1).unwrap();
        wal.segment_number = segno;
        overview
    };
    let mut empty = repository(None, None, None);
    empty.newest_wal.clear();
    let overviews = vec![
        (1, Some(at_segment(9, "2026-11-22T11:59:00Z"))),
        (2, Some(at_segment(8, "2026-11-22T11:58:50Z"))),
        (3, Some(at_segment(6, "2026-11-22T11:58:00Z"))),
        (4, Some(empty)),
    ];
    let lines = repository_lag(&overviews, &thresholds());
    let states: Vec<(Option<u8>, CheckState)> =
        lines.iter().map(|c| (c.repository, c.state)).collect();
    assert_eq!(
        states,
        [
            (Some(1), CheckState::Ok),
            (Some(2), CheckState::Ok),
            (Some(3), CheckState::Warning),
            (Some(4), CheckState::Critical),
        ]
    );
    assert!(
        lines[2]
            .detail
            .contains("3 segment(s) behind repository 1, its last commit 1m 0s older"),
        "{}",
        lines[2].detail
    );
    assert_eq!(lines[2].value, Some(60.0));
    let tight = CheckThresholds {
        archive_lag: Limits::parse("10s,30s", parse_duration).unwrap(),
        ..thresholds()
    };
    let states: Vec<CheckState> = repository_lag(&overviews, &tight)
        .iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(
        states,
        [
            CheckState::Ok,
            CheckState::Ok,
            CheckState::Critical,
            CheckState::Critical
        ]
    );
    // An unreadable repository has no line; the others are still compared.
    assert_eq!(
        repository_lag(&[(1, None), (2, Some(at_segment(3, NOW)))], &thresholds()).len(),
        1
    );
}
