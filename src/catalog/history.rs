//! The run history: one small object per run of a recorded command, and per command one
//! object that says how its last run and its last success went.
//!
//! ```text
//! history/runs/<YYYYMMDD>/<start>-<command>-<pid>.json   one run (RunRecord), never rewritten
//! history/latest/<command>.json                          last run and last success (LatestRuns)
//! ```
//! `<start>` is `YYYYMMDDTHHMMSS.ffffffZ`, so keys sort by start time within a day and day
//! folders sort by day. `check` and `metrics` read only `history/latest/` (one object per
//! command), `pitr history` lists day folders from today backwards until it has enough runs,
//! and `prune_history` removes runs older than a limit: the cost stays bounded however many
//! runs accumulate.

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};
use crate::storage::{PutMode, PutPayload, StorageError, read_all};

const RUNS_PREFIX: &str = "history/runs/";
const LATEST_PREFIX: &str = "history/latest/";
pub const HISTORY_FORMAT: u32 = 1;
/// Day folders `recent_runs` walks back one by one before it lists all runs once.
const DAYS_WALKED: u64 = 31;

/// How a run ended. Checks end as Nagios states; other commands ok or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Warning,
    Critical,
    Unknown,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Warning => "warning",
            RunStatus::Critical => "critical",
            RunStatus::Unknown => "unknown",
            RunStatus::Failed => "failed",
        }
    }
}

/// One run of a command, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    /// The subcommand: backup, verify, check, expire…
    pub command: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub status: RunStatus,
    pub exit_code: u8,
    /// Bytes the run wrote (backup: stored bytes) or read (verify).
    pub bytes: Option<u64>,
    pub backup_id: Option<String>,
    /// The failure line, or a short summary of what was wrong (check).
    pub error: Option<String>,
    /// Host and process, to tell concurrent runs apart.
    pub host: String,
    pub pid: u32,
}

/// A command's last run and last successful run, overwritten by every run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatestRuns {
    pub format: u32,
    pub command: String,
    pub last_run: RunRecord,
    pub last_success: Option<RunRecord>,
}

fn command_is_valid(command: &str) -> bool {
    !command.is_empty()
        && command
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn run_key(record: &RunRecord) -> String {
    format!(
        "{RUNS_PREFIX}{}/{}-{}-{}.json",
        record.start.format("%Y%m%d"),
        record.start.format("%Y%m%dT%H%M%S%.6fZ"),
        record.command.replace('-', "_"),
        record.pid
    )
}

fn latest_key(command: &str) -> String {
    format!("{LATEST_PREFIX}{}.json", command.replace('-', "_"))
}

/// The day folder a run key is in.
fn day_of_run_key(key: &str) -> Option<NaiveDate> {
    let day = key.strip_prefix(RUNS_PREFIX)?.split('/').next()?;
    NaiveDate::parse_from_str(day, "%Y%m%d").ok()
}

impl Catalog {
    /// Records a finished run: its own object, then the command's latest object (read,
    /// updated, overwritten). Concurrent runs of one command may overwrite each other's
    /// latest object; their run objects all stay.
    pub async fn record_run(&self, record: &RunRecord) -> Result<(), CatalogError> {
        let command = record.command.replace('-', "_");
        if !command_is_valid(&command) {
            return Err(StorageError::InvalidKey(record.command.clone()).into());
        }
        let key = run_key(record);
        let sealed = self.seal_meta(&key, record).await?;
        self.storage
            .put(&key, PutPayload::from_bytes(sealed), PutMode::Create)
            .await?;
        // A damaged latest object is replaced rather than blocking every later run.
        let previous = self.latest_runs(&record.command).await.ok().flatten();
        let last_success = if record.status == RunStatus::Ok {
            Some(record.clone())
        } else {
            previous.and_then(|p| p.last_success)
        };
        let latest = LatestRuns {
            format: HISTORY_FORMAT,
            command: record.command.clone(),
            last_run: record.clone(),
            last_success,
        };
        let key = latest_key(&record.command);
        let sealed = self.seal_meta(&key, &latest).await?;
        self.storage
            .put(&key, PutPayload::from_bytes(sealed), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// The last run and last success of `command`; none if it never ran. One read.
    pub async fn latest_runs(&self, command: &str) -> Result<Option<LatestRuns>, CatalogError> {
        let key = latest_key(command);
        let Some(read) = self.read_meta(&key).await? else {
            return Ok(None);
        };
        read.map(Some).map_err(|reason| CatalogError::Corrupt {
            what: format!("the run history object {key}"),
            location: self.location(),
            reason,
        })
    }

    /// Up to `limit` runs of any command, newest first, as of `now`. Walks the day folders
    /// back from `now`'s day; when they hold too few runs, lists all runs once (bounded by
    /// `prune_history`). Damaged run objects are skipped with a warning.
    pub async fn recent_runs(
        &self,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<RunRecord>, CatalogError> {
        let mut keys: Vec<String> = Vec::new();
        let mut day = now.date_naive();
        for _ in 0..DAYS_WALKED {
            if keys.len() >= limit {
                break;
            }
            let prefix = format!("{RUNS_PREFIX}{}/", day.format("%Y%m%d"));
            let mut found: Vec<String> = self
                .storage
                .list(&prefix)
                .await?
                .into_iter()
                .map(|m| m.key)
                .collect();
            found.sort_unstable_by(|a, b| b.cmp(a));
            keys.extend(found);
            day = match day.checked_sub_days(Days::new(1)) {
                Some(day) => day,
                None => break,
            };
        }
        if keys.len() < limit {
            keys = self
                .storage
                .list(RUNS_PREFIX)
                .await?
                .into_iter()
                .map(|m| m.key)
                .filter(|key| day_of_run_key(key).is_some())
                .collect();
            keys.sort_unstable_by(|a, b| b.cmp(a));
        }
        keys.truncate(limit);
        let mut runs = Vec::with_capacity(keys.len());
        for key in keys {
            let bytes = match read_all(&*self.storage, &key).await {
                Ok(bytes) => bytes,
                Err(StorageError::NotFound { .. }) => continue, // pruned meanwhile
                Err(e) => return Err(e.into()),
            };
            match self.unseal_meta::<RunRecord>(&key, bytes).await? {
                Ok(run) => runs.push(run),
                Err(reason) => tracing::warn!("skipping run history object {key}: {reason}"),
            }
        }
        Ok(runs)
    }

    /// Whether the run history shows that backup `id`, claimed at `claimed_at`, never
    /// finished: the runs of that day are there, and none is its successful run (a backup
    /// killed after PostgreSQL finished it, before its manifest, records nothing). False when
    /// the history cannot tell (that day's runs pruned, or never recorded).
    pub async fn backup_never_finished(
        &self,
        id: &str,
        claimed_at: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let prefix = format!("{RUNS_PREFIX}{}/", claimed_at.date_naive().format("%Y%m%d"));
        let keys = self.storage.list(&prefix).await?;
        if keys.is_empty() {
            return Ok(false);
        }
        for meta in keys {
            let bytes = match read_all(&*self.storage, &meta.key).await {
                Ok(bytes) => bytes,
                Err(StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let Ok(run) = self.unseal_meta::<RunRecord>(&meta.key, bytes).await? else {
                // A damaged record might be the one: the history cannot tell.
                return Ok(false);
            };
            if run.command == "backup" && run.exit_code == 0 && run.backup_id.as_deref() == Some(id)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes the run objects of days before `older_than`'s day (whole days: a run is kept
    /// at most one day longer than asked). The latest objects stay. Returns how many went.
    pub async fn prune_history(&self, older_than: DateTime<Utc>) -> Result<u64, CatalogError> {
        let cutoff = older_than.date_naive();
        let mut deleted = 0;
        for meta in self.storage.list(RUNS_PREFIX).await? {
            if day_of_run_key(&meta.key).is_some_and(|day| day < cutoff) {
                self.storage.delete(&meta.key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use std::sync::Arc;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().into()
    }

    fn run(command: &str, start: &str, status: RunStatus) -> RunRecord {
        RunRecord {
            format: HISTORY_FORMAT,
            command: command.into(),
            start: at(start),
            end: at(start),
            status,
            exit_code: 0,
            bytes: Some(7),
            backup_id: None,
            error: None,
            host: "h".into(),
            pid: 1,
        }
    }

    #[tokio::test]
    async fn runs_are_recorded_listed_newest_first_and_pruned() {
        let catalog = Catalog::new(Arc::new(MemoryStorage::new("history"))).knowing(
            &crate::catalog::RepositoryIdentity::for_tests(16 << 20, 8192),
        );
        assert_eq!(catalog.latest_runs("verify").await.unwrap(), None);
        let runs = [
            run("verify", "2026-10-01T10:00:00Z", RunStatus::Ok),
            run("backup", "2026-11-20T09:00:00Z", RunStatus::Ok),
            run("verify", "2026-11-21T10:00:00Z", RunStatus::Failed),
            run("check", "2026-11-21T10:05:00.5Z", RunStatus::Warning),
        ];
        for r in &runs {
            catalog.record_run(r).await.unwrap();
        }
        let latest = catalog.latest_runs("verify").await.unwrap().unwrap();
        assert_eq!(latest.last_run, runs[2]);
        assert_eq!(latest.last_success.as_ref(), Some(&runs[0]));

        let now = at("2026-11-22T00:00:00Z");
        let newest: Vec<_> = catalog.recent_runs(2, now).await.unwrap();
        assert_eq!(newest, vec![runs[3].clone(), runs[2].clone()]);
        // More than the walked days hold: all runs, listed once.
        let all = catalog.recent_runs(10, now).await.unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3], runs[0]);

        assert_eq!(
            catalog
                .prune_history(at("2026-11-21T00:00:00Z"))
                .await
                .unwrap(),
            2
        );
        let left = catalog.recent_runs(10, now).await.unwrap();
        assert_eq!(left, vec![runs[3].clone(), runs[2].clone()]);
        // The last success survives the pruning of its run object.
        let latest = catalog.latest_runs("verify").await.unwrap().unwrap();
        assert_eq!(latest.last_success.as_ref(), Some(&runs[0]));
    }

    #[test]
    fn keys_sort_by_time() {
        let a = run_key(&run("backup", "2026-11-21T09:59:59.999999Z", RunStatus::Ok));
        let b = run_key(&run("check", "2026-11-21T10:00:00Z", RunStatus::Ok));
        assert_eq!(
            b,
            "history/runs/20261121/20261121T100000.000000Z-check-1.json"
        );
        assert!(a < b);
        assert_eq!(day_of_run_key(&b), NaiveDate::from_ymd_opt(2026, 11, 21));
    }
}
