//! The run history: what the CLI records after each run of a recorded command, and
//! `pitr history`, which shows the runs newest first.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::catalog::history::{HISTORY_FORMAT, RunRecord, RunStatus};
use crate::error::{EXIT_OK, Result};

/// Commands whose runs are recorded (`pitr history --help` names each).
pub const RECORDED_COMMANDS: &[&str] = &[
    "backup",
    "verify",
    "check",
    "expire",
    "drill",
    "restore-table",
];

/// What a command tells the history about its run beyond its exit code; the CLI fills it as
/// the command's report comes back.
#[derive(Clone, Debug, Default)]
pub struct RunFacts {
    /// How the run ended when the exit code does not say it (check's Nagios states).
    pub status: Option<RunStatus>,
    pub bytes: Option<u64>,
    pub backup_id: Option<String>,
    /// What was wrong when the run itself succeeded (a check's failing lines).
    pub detail: Option<String>,
}

/// The record of a finished run: pure, so the status rules have a unit test.
pub fn run_record(
    command: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    exit_code: u8,
    error: Option<String>,
    facts: RunFacts,
) -> RunRecord {
    let status = match (&error, facts.status) {
        (Some(_), Some(RunStatus::Unknown)) | (Some(_), None) => {
            if command == "check" {
                RunStatus::Unknown
            } else {
                RunStatus::Failed
            }
        }
        (_, Some(status)) => status,
        (None, None) if exit_code == EXIT_OK => RunStatus::Ok,
        (None, None) => RunStatus::Failed,
    };
    RunRecord {
        format: HISTORY_FORMAT,
        command: command.to_owned(),
        start,
        end,
        status,
        exit_code,
        bytes: facts.bytes,
        backup_id: facts.backup_id,
        error: error.or(facts.detail),
        host: crate::host_name().unwrap_or_default(),
        pid: std::process::id(),
    }
}

/// Records `record`; a failure is a warning, never the command's outcome. Nothing is
/// written where no repository is (a check of a wrong URL must not create one).
pub async fn record(catalog: &Catalog, record: &RunRecord) {
    if let Err(e) = catalog.identity().await {
        tracing::debug!("not recording this {} run: {e}", record.command);
        return;
    }
    // The history is encrypted too: a run without the key (verify of stored checksums) is
    // not recorded.
    if !catalog.can_decrypt() {
        tracing::debug!("not recording this {} run: no key", record.command);
        return;
    }
    if let Err(e) = catalog.record_run(record).await {
        tracing::warn!(
            "could not record this {} run in the repository's history: {e}",
            record.command
        );
    }
}

/// How long runs stay in the history unless retention says otherwise: 90 days of a check every
/// 5 minutes are about 26,000 small objects.
pub const DEFAULT_HISTORY_DAYS: u64 = 90;

/// Removes runs older than `days` before `now` (retention calls it); a failure is a warning.
pub async fn prune_old_runs(catalog: &Catalog, now: DateTime<Utc>, days: u64) -> u64 {
    let cutoff = now
        .checked_sub_days(chrono::Days::new(days))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    match catalog.prune_history(cutoff).await {
        Ok(removed) => removed,
        Err(e) => {
            tracing::warn!("could not prune the run history: {e}");
            0
        }
    }
}

#[derive(Clone, Debug)]
pub struct HistoryOptions {
    /// Runs shown, newest first.
    pub limit: usize,
}

/// The JSON shape scripts read: keep it stable.
#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub runs: Vec<RunRecord>,
}

pub async fn history(catalog: &Catalog, options: &HistoryOptions) -> Result<HistoryReport> {
    catalog.identity().await?;
    let runs = catalog.recent_runs(options.limit, Utc::now()).await?;
    Ok(HistoryReport { runs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_follows_the_outcome() {
        let now = Utc::now();
        let status = |command, code, error: Option<&str>, status| {
            let facts = RunFacts {
                status,
                ..RunFacts::default()
            };
            run_record(command, now, now, code, error.map(str::to_owned), facts).status
        };
        assert_eq!(status("backup", 0, None, None), RunStatus::Ok);
        assert_eq!(status("verify", 5, None, None), RunStatus::Failed);
        assert_eq!(
            status("backup", 9, Some("no server"), None),
            RunStatus::Failed
        );
        assert_eq!(
            status("check", 3, Some("unreadable"), None),
            RunStatus::Unknown
        );
        assert_eq!(
            status("check", 1, None, Some(RunStatus::Warning)),
            RunStatus::Warning
        );
    }
}
