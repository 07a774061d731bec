//! `pitr check`: a monitoring probe with Nagios/Icinga states. Gathers what the repository
//! (through `overview`), the run history and, given a connection, the server say, then
//! decides each check's state in a pure function (`evaluate`).

pub use crate::server::ArchiverStats;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::list::WalTail;
use super::overview::{RepositoryOverview, overview};
use crate::catalog::Catalog;
use crate::catalog::history::RunStatus;
use crate::config::Settings;
use crate::error::{
    EXIT_CHECK_CRITICAL, EXIT_CHECK_OK, EXIT_CHECK_UNKNOWN, EXIT_CHECK_WARNING, Error, Result,
};
use crate::pg::WalFileName;
use crate::pg::timestamp::{parse_rfc3339, rfc3339};
use crate::pg::wal_name::xlog_file_name;
use crate::server::{Session, connection_settings};

/// A check's state; the command exits with the worst one's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckState {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl CheckState {
    /// Nagios plugin exit codes (the table in `error`).
    pub fn exit_code(self) -> u8 {
        match self {
            CheckState::Ok => EXIT_CHECK_OK,
            CheckState::Warning => EXIT_CHECK_WARNING,
            CheckState::Critical => EXIT_CHECK_CRITICAL,
            CheckState::Unknown => EXIT_CHECK_UNKNOWN,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "OK",
            CheckState::Warning => "WARNING",
            CheckState::Critical => "CRITICAL",
            CheckState::Unknown => "UNKNOWN",
        }
    }

    /// The worse of the two.
    fn max_severity(self, other: CheckState) -> CheckState {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// Which state wins overall: CRITICAL, then WARNING, then UNKNOWN.
    fn severity(self) -> u8 {
        match self {
            CheckState::Ok => 0,
            CheckState::Unknown => 1,
            CheckState::Warning => 2,
            CheckState::Critical => 3,
        }
    }

    pub fn run_status(self) -> RunStatus {
        match self {
            CheckState::Ok => RunStatus::Ok,
            CheckState::Warning => RunStatus::Warning,
            CheckState::Critical => RunStatus::Critical,
            CheckState::Unknown => RunStatus::Unknown,
        }
    }
}

/// A WARNING and a CRITICAL threshold; either may be off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits<T> {
    pub warning: Option<T>,
    pub critical: Option<T>,
}

impl<T: Copy> Limits<T> {
    /// `"W,C"`, `"C"` (critical only) or `"off"`; `parse` reads one value.
    pub fn parse(
        text: &str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> std::result::Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Limits {
                warning: None,
                critical: None,
            });
        }
        match text.split_once(',') {
            Some((warning, critical)) => Ok(Limits {
                warning: Some(parse(warning.trim())?),
                critical: Some(parse(critical.trim())?),
            }),
            None => Ok(Limits {
                warning: None,
                critical: Some(parse(text)?),
            }),
        }
    }
}

impl Limits<Duration> {
    /// The state of an age: beyond a limit is that limit's state.
    fn age_state(&self, age: Duration) -> CheckState {
        if self.critical.is_some_and(|c| age > c) {
            CheckState::Critical
        } else if self.warning.is_some_and(|w| age > w) {
            CheckState::Warning
        } else {
            CheckState::Ok
        }
    }

    fn is_off(&self) -> bool {
        self.warning.is_none() && self.critical.is_none()
    }
}

/// `90s`, `15m`, `2h`, `8d`, `1w`, or plain seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 90s, 15m, 2h, 8d or 1w"))?;
    let unit_seconds = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit '{unit}': use s, m, h, d or w"
            ));
        }
    };
    number
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long"))
}

fn parse_count(text: &str) -> std::result::Result<u64, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not a number of backups"))
}

/// Thresholds, from the settings `check_*` (TOML, `PITR_CHECK_…`, `--check-…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckThresholds {
    pub backup_age: Limits<Duration>,
    pub archive_lag: Limits<Duration>,
    /// WARNING below the first, CRITICAL below the second.
    pub min_backups: Limits<u64>,
    pub verify_age: Limits<Duration>,
    pub switch_wal_timeout: Duration,
}

pub const DEFAULT_BACKUP_AGE: &str = "8d,15d";
pub const DEFAULT_ARCHIVE_LAG: &str = "15m,1h";
pub const DEFAULT_MIN_BACKUPS: &str = "1";
pub const DEFAULT_VERIFY_AGE: &str = "8d,15d";
pub const DEFAULT_SWITCH_WAL_TIMEOUT: u64 = 60;

impl CheckThresholds {
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let limits = |name: &str, value: &Option<String>, default: &str| {
            Limits::parse(value.as_deref().unwrap_or(default), parse_duration)
                .map_err(|e| Error::Config(format!("{name}: {e} (WARNING,CRITICAL or off)")))
        };
        Ok(CheckThresholds {
            backup_age: limits(
                "check_backup_age",
                &settings.check_backup_age,
                DEFAULT_BACKUP_AGE,
            )?,
            archive_lag: limits(
                "check_archive_lag",
                &settings.check_archive_lag,
                DEFAULT_ARCHIVE_LAG,
            )?,
            min_backups: Limits::parse(
                settings
                    .check_min_backups
                    .as_deref()
                    .unwrap_or(DEFAULT_MIN_BACKUPS),
                parse_count,
            )
            .map_err(|e| Error::Config(format!("check_min_backups: {e} (WARNING,CRITICAL)")))?,
            verify_age: limits(
                "check_verify_age",
                &settings.check_verify_age,
                DEFAULT_VERIFY_AGE,
            )?,
            switch_wal_timeout: Duration::from_secs(
                settings
                    .check_switch_wal_timeout
                    .unwrap_or(DEFAULT_SWITCH_WAL_TIMEOUT),
            ),
        })
    }
}

#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub thresholds: CheckThresholds,
    /// Connect to the server (`--dbname`, or libpq's environment).
    pub connect: bool,
    pub dbname: Option<String>,
    pub switch_wal: bool,
    pub jobs: usize,
    /// With several repositories: this one's number, and the others to check beside it
    /// (each line then names its repository, and `repo_lag` compares them).
    pub repository: u8,
    pub peers: Vec<(u8, Catalog)>,
}

/// One line of the output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub state: CheckState,
    pub detail: String,
    /// The measured value: seconds for ages and lags, a count for backups.
    pub value: Option<f64>,
    /// With several repositories: the one this line is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<u8>,
}

impl CheckResult {
    /// As the text output prints it: `WARNING repo_lag (repository 2): …`.
    pub fn line(&self) -> String {
        let (state, name, detail) = (self.state.as_str(), self.name, &self.detail);
        match self.repository {
            Some(n) => format!("{state} {name} (repository {n}): {detail}"),
            None => format!("{state} {name}: {detail}"),
        }
    }
}

/// The JSON shape monitoring reads: keep it stable.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub state: CheckState,
    pub exit_code: u8,
    pub checks: Vec<CheckResult>,
}

impl CheckReport {
    fn new(checks: Vec<CheckResult>) -> Self {
        let state = checks
            .iter()
            .map(|c| c.state)
            .max_by_key(|s| s.severity())
            .unwrap_or(CheckState::Ok);
        CheckReport {
            state,
            exit_code: state.exit_code(),
            checks,
        }
    }

    /// The lines that are not OK, for the run history.
    pub fn problems(&self) -> Option<String> {
        let lines: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.state != CheckState::Ok)
            .map(CheckResult::line)
            .collect();
        (!lines.is_empty()).then(|| lines.join("; "))
    }
}

/// What the server said.
#[derive(Clone, Debug, Default)]
pub struct ServerFacts {
    /// The segment before the one being written: complete, so it should be archived.
    pub last_complete_segment: Option<String>,
    pub last_complete_archived: bool,
    /// Segments between the newest archived one and the last complete one.
    pub segments_behind: Option<u64>,
    pub archiver: Option<ArchiverStats>,
    /// The slots of `pitr receive-wal` (the one its application_name streams from, or one
    /// named `pitr`).
    pub receivers: Vec<ReceiverSlot>,
}

/// A receiver's slot as the server sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReceiverSlot {
    pub slot: String,
    /// A receiver streams from it now.
    pub active: bool,
    /// `pg_replication_slots.wal_status`: `lost` once the server removed WAL the slot
    /// needed (`max_slot_wal_keep_size`), `unreserved` just before.
    pub wal_status: String,
    /// WAL written but not yet flushed by the receiver, in bytes.
    pub behind_bytes: Option<u64>,
    /// `pg_stat_replication.flush_lag`.
    pub flush_lag: Option<Duration>,
}

/// What `--switch-wal` saw.
#[derive(Clone, Debug)]
pub enum SwitchOutcome {
    Arrived { segment: String, after: Duration },
    Missing { segment: String, waited: Duration },
    Failed(String),
}

/// Everything the decision reads.
pub struct CheckFacts<'a> {
    pub now: DateTime<Utc>,
    pub repository: &'a RepositoryOverview,
    /// `Err`: the connection failed (its message).
    pub server: Option<std::result::Result<ServerFacts, String>>,
    pub switch: Option<SwitchOutcome>,
}

fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

/// A duration for people: 3d 4h, 12m 5s, 800ms.
fn human(duration: Duration) -> String {
    let s = duration.as_secs();
    match s {
        0 => format!("{}ms", duration.as_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn limits_text(limits: &Limits<Duration>) -> String {
    match (limits.warning, limits.critical) {
        (Some(w), Some(c)) => format!("warning {}, critical {}", human(w), human(c)),
        (None, Some(c)) => format!("critical {}", human(c)),
        (Some(w), None) => format!("warning {}", human(w)),
        (None, None) => "no limit".into(),
    }
}

/// Decides every check's state: pure.
pub fn evaluate(facts: &CheckFacts, thresholds: &CheckThresholds) -> CheckReport {
    let repo = facts.repository;
    let now = facts.now;
    let mut checks = Vec::new();

    // The newest complete backup.
    checks.push(match repo.newest_backup() {
        Some((id, stop)) => {
            let age = age(now, stop);
            CheckResult {
                name: "backup_age",
                state: thresholds.backup_age.age_state(age),
                detail: format!(
                    "last complete backup {id} finished {} ago ({})",
                    human(age),
                    limits_text(&thresholds.backup_age)
                ),
                value: Some(age.as_secs_f64()),
                repository: None,
            }
        }
        None => CheckResult {
            name: "backup_age",
            state: if thresholds.backup_age.is_off() {
                CheckState::Ok
            } else {
                CheckState::Critical
            },
            detail: "no complete backup in the repository".into(),
            value: None,
            repository: None,
        },
    });

    // Archive lag: the newest archived commit, and the server's position when connected.
    let server = facts.server.as_ref().and_then(|s| s.as_ref().ok());
    let newest_commit = repo.newest_commit();
    let lag = newest_commit.map(|t| age(now, t));
    let lag_detail = |lag: Duration| {
        format!(
            "newest archived commit {} ago ({})",
            human(lag),
            limits_text(&thresholds.archive_lag)
        )
    };
    checks.push(match (server, lag) {
        (_, _) if repo.newest_wal.is_empty() => CheckResult {
            name: "archive_lag",
            state: CheckState::Critical,
            detail: "no WAL archived in the repository".into(),
            value: None,
            repository: None,
        },
        (Some(server), _) if server.last_complete_archived => CheckResult {
            name: "archive_lag",
            state: CheckState::Ok,
            detail: format!(
                "the server's last complete segment {} is archived",
                server.last_complete_segment.as_deref().unwrap_or("?")
            ),
            value: Some(0.0),
            repository: None,
        },
        (Some(server), lag) => {
            let behind = match (&server.last_complete_segment, server.segments_behind) {
                (Some(segment), Some(n)) => {
                    format!("{n} segment(s) behind the server's last complete segment {segment}")
                }
                _ => "behind the server".into(),
            };
            match lag {
                Some(lag) => CheckResult {
                    name: "archive_lag",
                    state: thresholds.archive_lag.age_state(lag),
                    detail: format!("{behind}; {}", lag_detail(lag)),
                    value: Some(lag.as_secs_f64()),
                    repository: None,
                },
                None => CheckResult {
                    name: "archive_lag",
                    state: CheckState::Warning,
                    detail: format!("{behind}; no archived commit to date it"),
                    value: None,
                    repository: None,
                },
            }
        }
        (None, Some(lag)) => CheckResult {
            name: "archive_lag",
            state: thresholds.archive_lag.age_state(lag),
            detail: lag_detail(lag),
            value: Some(lag.as_secs_f64()),
            repository: None,
        },
        (None, None) => CheckResult {
            name: "archive_lag",
            state: CheckState::Unknown,
            detail: "no commit in the archived WAL yet (connect with --dbname to compare with \
                     the server)"
                .into(),
            value: None,
            repository: None,
        },
    });

    // The server's own archiver, and the connection itself.
    match &facts.server {
        Some(Err(reason)) => checks.push(CheckResult {
            name: "server",
            state: CheckState::Unknown,
            detail: reason.clone(),
            value: None,
            repository: None,
        }),
        Some(Ok(ServerFacts {
            archiver: Some(stats),
            ..
        })) => {
            let failing = stats.failed_count > 0
                && match (stats.last_failed_time, stats.last_archived_time) {
                    (Some(failed), Some(archived)) => failed > archived,
                    (Some(_), None) => true,
                    _ => false,
                };
            checks.push(if failing {
                CheckResult {
                    name: "archiver",
                    state: CheckState::Critical,
                    detail: format!(
                        "archive_command failed for {} at {} and has not succeeded since \
                         ({} failures, see the server log)",
                        stats.last_failed_wal.as_deref().unwrap_or("?"),
                        stats.last_failed_time.map(rfc3339).unwrap_or_default(),
                        stats.failed_count
                    ),
                    value: Some(stats.failed_count as f64),
                    repository: None,
                }
            } else {
                CheckResult {
                    name: "archiver",
                    state: CheckState::Ok,
                    detail: format!(
                        "last archived {} at {}, {} archived, {} failures",
                        stats.last_archived_wal.as_deref().unwrap_or("nothing"),
                        stats
                            .last_archived_time
                            .map(rfc3339)
                            .unwrap_or_else(|| "-".into()),
                        stats.archived_count,
                        stats.failed_count
                    ),
                    value: Some(stats.failed_count as f64),
                    repository: None,
                }
            });
        }
        _ => {}
    }

    // pitr receive-wal's slots.
    if let Some(Ok(server)) = &facts.server {
        let tail = newest_tail(&repo.list.tails);
        for slot in &server.receivers {
            let mut result = receiver_result(slot, &thresholds.archive_lag);
            if let Some((tail, uploaded)) = tail {
                let age = (facts.now - uploaded).to_std().unwrap_or_default();
                result.detail.push_str(&format!(
                    "; the repository's tail reaches {} (uploaded {} ago)",
                    tail.end_lsn,
                    human(age)
                ));
            }
            checks.push(result);
        }
    }

    // How many backups.
    let count = repo.list.backups.len() as u64;
    let min = thresholds.min_backups;
    let state = if min.critical.is_some_and(|c| count < c) {
        CheckState::Critical
    } else if min.warning.is_some_and(|w| count < w) {
        CheckState::Warning
    } else {
        CheckState::Ok
    };
    let damaged = repo.list.damaged_backups.len();
    checks.push(CheckResult {
        name: "backups",
        state,
        detail: format!(
            "{count} complete backup(s){}{}",
            if damaged > 0 {
                format!(", {damaged} damaged (run pitr verify)")
            } else {
                String::new()
            },
            match (min.warning, min.critical) {
                (Some(w), Some(c)) => format!(" (warning below {w}, critical below {c})"),
                (None, Some(c)) => format!(" (critical below {c})"),
                _ => String::new(),
            }
        ),
        value: Some(count as f64),
        repository: None,
    });

    // The last successful verify.
    if !thresholds.verify_age.is_off() {
        let verify = repo.latest_runs.get("verify");
        let verified = verify.and_then(|v| Some((v, v.last_success.as_ref()?)));
        checks.push(match verified {
            Some((verify, success)) => {
                let age = age(now, success.end);
                let mut detail = format!(
                    "last successful verify {} ago ({})",
                    human(age),
                    limits_text(&thresholds.verify_age)
                );
                let last = &verify.last_run;
                if last.status != RunStatus::Ok {
                    detail.push_str(&format!(
                        "; the last verify at {} {}",
                        rfc3339(last.end),
                        last.status.as_str()
                    ));
                }
                CheckResult {
                    name: "verify_age",
                    state: thresholds.verify_age.age_state(age),
                    detail,
                    value: Some(age.as_secs_f64()),
                    repository: None,
                }
            }
            None => CheckResult {
                name: "verify_age",
                state: CheckState::Warning,
                detail: match verify {
                    Some(v) => format!(
                        "no successful verify recorded; the last, at {}, {}",
                        rfc3339(v.last_run.end),
                        v.last_run.status.as_str()
                    ),
                    None => "no verify recorded: run pitr verify regularly, or set \
                             check_verify_age = \"off\""
                        .into(),
                },
                value: None,
                repository: None,
            },
        });
    }

    if let Some(switch) = &facts.switch {
        checks.push(match switch {
            SwitchOutcome::Arrived { segment, after } => CheckResult {
                name: "switch_wal",
                state: CheckState::Ok,
                detail: format!(
                    "segment {segment} reached the repository in {}",
                    human(*after)
                ),
                value: Some(after.as_secs_f64()),
                repository: None,
            },
            SwitchOutcome::Missing { segment, waited } => CheckResult {
                name: "switch_wal",
                state: CheckState::Critical,
                detail: format!(
                    "segment {segment} did not reach the repository within {}: archiving is \
                     broken or slow (see pg_stat_archiver and the server log)",
                    human(*waited)
                ),
                value: Some(waited.as_secs_f64()),
                repository: None,
            },
            SwitchOutcome::Failed(reason) => CheckResult {
                name: "switch_wal",
                state: CheckState::Unknown,
                detail: reason.clone(),
                value: None,
                repository: None,
            },
        });
    }
    CheckReport::new(checks)
}

/// Runs the checks. A repository that cannot be read is one UNKNOWN line, not an error.
pub async fn check(catalog: &Catalog, options: &CheckOptions) -> Result<CheckReport> {
    let session = if options.connect || options.switch_wal {
        Some(
            match connection_settings(options.dbname.as_deref()) {
                Ok(config) => Session::connect(&config).await,
                Err(e) => Err(e),
            }
            .map_err(|e| e.to_string()),
        )
    } else {
        None
    };
    // The switch first: its segment is then part of what the repository shows.
    let switch = match (&session, options.switch_wal) {
        (Some(Ok(session)), true) => Some(switch_wal(catalog, session, options).await),
        (Some(Err(reason)), true) => Some(SwitchOutcome::Failed(format!(
            "--switch-wal needs the server: {reason}"
        ))),
        _ => None,
    };
    let (mut report, overview) = check_one(catalog, &session, switch, options).await;
    if options.peers.is_empty() {
        return Ok(report);
    }
    // Several repositories: each one's checks, then how far each is behind the others.
    let mut checks = Vec::new();
    let mut overviews = vec![(options.repository, overview)];
    tag(&mut report, options.repository);
    checks.append(&mut report.checks);
    for (number, peer) in &options.peers {
        let (mut peer_report, overview) = check_one(peer, &session, None, options).await;
        tag(&mut peer_report, *number);
        checks.append(&mut peer_report.checks);
        overviews.push((*number, overview));
    }
    checks.extend(repository_lag(&overviews, &options.thresholds));
    Ok(CheckReport::new(checks))
}

fn tag(report: &mut CheckReport, repository: u8) {
    for check in &mut report.checks {
        check.repository = Some(repository);
    }
}

/// One repository's checks, and its overview when it could be read.
async fn check_one(
    catalog: &Catalog,
    session: &Option<std::result::Result<Session, String>>,
    switch: Option<SwitchOutcome>,
    options: &CheckOptions,
) -> (CheckReport, Option<RepositoryOverview>) {
    let repository = match overview(catalog, options.jobs).await {
        Ok(repository) => repository,
        Err(e) => {
            let report = CheckReport::new(vec![CheckResult {
                name: "repository",
                state: CheckState::Unknown,
                detail: format!("cannot read the repository: {e}"),
                value: None,
                repository: None,
            }]);
            return (report, None);
        }
    };
    let server = match session {
        Some(Ok(session)) => Some(
            server_facts(catalog, session, &repository)
                .await
                .map_err(|e| e.to_string()),
        ),
        Some(Err(reason)) => Some(Err(reason.clone())),
        None => None,
    };
    let facts = CheckFacts {
        now: Utc::now(),
        repository: &repository,
        server,
        switch,
    };
    (evaluate(&facts, &options.thresholds), Some(repository))
}

/// How far one repository's WAL is behind the newest any repository holds.
#[derive(Clone, Debug, PartialEq)]
pub struct RepositoryLag {
    pub repository: u8,
    /// The repository that holds the newest segment.
    pub lead: u8,
    /// Its newest segment's timeline, and the lead's.
    pub timeline: Option<u32>,
    pub lead_timeline: u32,
    /// Segments behind on the lead's timeline; None when it holds no WAL or is on another
    /// timeline.
    pub segments_behind: Option<u64>,
    /// The time between the lead's last archived commit and its own; None when it has none
    /// the lead has.
    pub commit_lag: Option<Duration>,
}

/// Each readable repository's lag behind the one with the newest segment (pure). Empty when
/// none holds WAL.
pub fn repository_lags(overviews: &[(u8, Option<RepositoryOverview>)]) -> Vec<RepositoryLag> {
    // A repository's newest segment: timeline, segment number, its last commit.
    let newest = |o: &RepositoryOverview| {
        o.newest_wal
            .iter()
            .map(|(tli, w)| (*tli, w.segment_number, w.last_commit))
            .max_by_key(|&(tli, segno, _)| (tli, segno))
    };
    let heads: Vec<_> = overviews
        .iter()
        .filter_map(|(n, o)| Some((*n, o.as_ref().map(newest)?)))
        .collect();
    let Some((lead, (lead_timeline, lead_segno, lead_commit))) = heads
        .iter()
        .filter_map(|(n, head)| Some((*n, (*head)?)))
        .max_by_key(|&(_, (tli, segno, _))| (tli, segno))
    else {
        return Vec::new();
    };
    heads
        .into_iter()
        .map(|(repository, head)| RepositoryLag {
            repository,
            lead,
            timeline: head.map(|(tli, _, _)| tli),
            lead_timeline,
            segments_behind: head
                .filter(|&(tli, _, _)| tli == lead_timeline)
                .map(|(_, segno, _)| lead_segno - segno),
            commit_lag: match (lead_commit, head.and_then(|(_, _, commit)| commit)) {
                (Some(lead), Some(own)) => Some(age(lead, own)),
                (Some(_), None) => None,
                (None, _) => Some(Duration::ZERO),
            },
        })
        .collect()
}

/// `repo_lag`, one line per repository: how far its newest archived segment is behind the
/// newest any repository holds (segments, and the time between their last commits). One
/// segment behind is the moment archive-push stores in each; more is a repository that
/// misses WAL the others hold (WARNING at least; the time by `check_archive_lag`). Pure.
pub fn repository_lag(
    overviews: &[(u8, Option<RepositoryOverview>)],
    thresholds: &CheckThresholds,
) -> Vec<CheckResult> {
    repository_lags(overviews)
        .into_iter()
        .map(|lag| {
            let lead = lag.lead;
            let (state, detail) = match (lag.timeline, lag.segments_behind) {
                (None, _) => (
                    CheckState::Critical,
                    format!("holds no WAL; repository {lead} does"),
                ),
                (Some(tli), None) => (
                    CheckState::Critical,
                    format!(
                        "is on timeline {tli}, repository {lead} on {}",
                        lag.lead_timeline
                    ),
                ),
                (Some(_), Some(behind)) => {
                    let by_time = match lag.commit_lag {
                        Some(time) => thresholds.archive_lag.age_state(time),
                        None => CheckState::Critical,
                    };
                    match behind {
                        0 => (by_time, "holds the newest archived segment".to_owned()),
                        1 => (by_time, format!("1 segment behind repository {lead}")),
                        n => (
                            by_time.max_severity(CheckState::Warning),
                            format!(
                                "{n} segment(s) behind repository {lead}, its last commit {} \
                                 older ({})",
                                lag.commit_lag.map_or("unknown".into(), human),
                                limits_text(&thresholds.archive_lag)
                            ),
                        ),
                    }
                }
            };
            CheckResult {
                name: "repo_lag",
                state,
                detail,
                value: lag.commit_lag.map(|time| time.as_secs_f64()),
                repository: Some(lag.repository),
            }
        })
        .collect()
}

async fn server_facts(
    catalog: &Catalog,
    session: &Session,
    repository: &RepositoryOverview,
) -> Result<ServerFacts> {
    let mut facts = ServerFacts::default();
    let in_recovery = session
        .text("asking for recovery", "SELECT pg_is_in_recovery()::text")
        .await?
        == "true";
    if !in_recovery {
        let current = session
            .text(
                "reading the WAL position",
                "SELECT substr(pg_walfile_name(lsn), 1, 8) || '|' || lsn::text \
                 FROM pg_current_wal_lsn() AS lsn",
            )
            .await?;
        let size = repository.wal_segment_size;
        if let Some((timeline, segno)) = current_segment(&current, size)
            && segno > 0
        {
            let last = xlog_file_name(timeline, segno - 1, size);
            let archived = match WalFileName::parse(&last) {
                Ok(last) => catalog.has_wal(&last).await?,
                Err(_) => false,
            };
            let newest = repository
                .newest_wal
                .get(&timeline)
                .map(|w| w.segment_number);
            facts.segments_behind = Some(match newest {
                Some(newest) => (segno - 1).saturating_sub(newest),
                None => segno,
            });
            facts.last_complete_archived = archived;
            facts.last_complete_segment = Some(last);
        }
    }
    facts.archiver = Some(session.archiver_stats().await?);
    facts.receivers = receiver_slots(session).await?;
    Ok(facts)
}

/// The newest tail received, and when it was uploaded.
fn newest_tail(tails: &[WalTail]) -> Option<(&WalTail, DateTime<Utc>)> {
    tails
        .iter()
        .filter_map(|t| Some((t, parse_rfc3339(t.uploaded.as_deref()?)?)))
        .max_by_key(|(_, uploaded)| *uploaded)
}

/// The slots `pitr receive-wal` streams from (or would: one named `pitr`).
pub(crate) async fn receiver_slots(session: &Session) -> Result<Vec<ReceiverSlot>> {
    let sql = format!(
        "SELECT coalesce(string_agg(concat_ws('|', s.slot_name, s.active::text, \
         coalesce(s.wal_status, ''), \
         coalesce((CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
         ELSE pg_current_wal_lsn() END - r.flush_lsn)::bigint::text, ''), \
         coalesce(extract(epoch FROM r.flush_lag)::text, '')), E'\\n'), '') \
         FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
         WHERE s.slot_type = 'physical' \
         AND (r.application_name = '{}' OR s.slot_name = 'pitr')",
        crate::commands::receive_wal::APPLICATION_NAME
    );
    let text = session.text("reading the replication slots", &sql).await?;
    Ok(text.lines().filter_map(parse_receiver_slot).collect())
}

fn parse_receiver_slot(line: &str) -> Option<ReceiverSlot> {
    let mut fields = line.split('|');
    let slot = fields.next()?.to_owned();
    let active = fields.next()? == "true";
    let wal_status = fields.next()?.to_owned();
    let behind_bytes = fields
        .next()
        .and_then(|b| b.parse::<i64>().ok())
        .map(|b| b.max(0).unsigned_abs());
    let flush_lag = fields
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    Some(ReceiverSlot {
        slot,
        active,
        wal_status,
        behind_bytes,
        flush_lag,
    })
}

/// The state of a receiver's slot: a lost slot is a gap in the archive, a slot nothing
/// streams from keeps WAL on the server and the repository behind.
fn receiver_result(slot: &ReceiverSlot, archive_lag: &Limits<Duration>) -> CheckResult {
    let name = &slot.slot;
    let (state, detail) = if slot.wal_status == "lost" {
        (
            CheckState::Critical,
            format!(
                "the slot {name} lost WAL pitr receive-wal had not received \
                 (max_slot_wal_keep_size): the archive has a gap from there; take a new backup \
                 (pitr backup), then recreate the slot (drop it; receive-wal --create-slot)"
            ),
        )
    } else if !slot.active {
        (
            CheckState::Warning,
            format!(
                "no pitr receive-wal streams from the slot {name}: the repository falls \
                 behind and the server keeps its WAL meanwhile (start the receiver: systemctl \
                 start pitr-receive-wal)"
            ),
        )
    } else {
        let lag = slot.flush_lag.unwrap_or(Duration::ZERO);
        let mut state = archive_lag.age_state(lag);
        if slot.wal_status == "unreserved" {
            state = CheckState::Warning.max_severity(state);
        }
        (
            state,
            format!(
                "pitr receive-wal streams from the slot {name}: {} bytes behind, flush lag {}{}",
                slot.behind_bytes.unwrap_or(0),
                human(lag),
                if slot.wal_status == "unreserved" {
                    "; the server is about to remove WAL the slot holds (wal_status unreserved)"
                } else {
                    ""
                }
            ),
        )
    };
    CheckResult {
        name: "receiver",
        state,
        detail,
        value: slot.behind_bytes.map(|b| b as f64),
        repository: None,
    }
}

/// The timeline and segment number of `TIMELINE|LSN`. The segment holding the LSN
/// (`XLByteToSeg`): pg_walfile_name names the previous one at a segment boundary, as after
/// a switch, which would take the switched segment for one still being written.
fn current_segment(row: &str, segment_size: u64) -> Option<(u32, u64)> {
    let (timeline, lsn) = row.split_once('|')?;
    let timeline = u32::from_str_radix(timeline, 16).ok()?;
    let lsn: crate::pg::Lsn = lsn.parse().ok()?;
    Some((timeline, lsn.segment_number(segment_size)))
}

/// Writes a little WAL (so the switch has something to close), switches, and waits for the
/// closed segment to reach the repository.
async fn switch_wal(catalog: &Catalog, session: &Session, options: &CheckOptions) -> SwitchOutcome {
    let started = std::time::Instant::now();
    // A logical message is WAL without a transaction; txid_current where it is not allowed.
    if session
        .text(
            "writing WAL",
            "SELECT pg_logical_emit_message(false, 'pitr', 'check')::text",
        )
        .await
        .is_err()
        && let Err(e) = session
            .text("writing WAL", "SELECT txid_current()::text")
            .await
    {
        return SwitchOutcome::Failed(e.to_string());
    }
    let segment = match session
        .text("switching WAL", "SELECT pg_walfile_name(pg_switch_wal())")
        .await
    {
        Ok(segment) => segment,
        Err(e) => return SwitchOutcome::Failed(e.to_string()),
    };
    let Ok(name) = WalFileName::parse(&segment) else {
        return SwitchOutcome::Failed(format!("the server named segment '{segment}'"));
    };
    let timeout = options.thresholds.switch_wal_timeout;
    loop {
        match catalog.has_wal(&name).await {
            Ok(true) => {
                return SwitchOutcome::Arrived {
                    segment,
                    after: started.elapsed(),
                };
            }
            Ok(false) => {}
            Err(e) => return SwitchOutcome::Failed(format!("cannot read the repository: {e}")),
        }
        if started.elapsed() >= timeout {
            return SwitchOutcome::Missing {
                segment,
                waited: started.elapsed(),
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests;
