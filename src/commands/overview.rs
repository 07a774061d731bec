//! What monitoring reads of a repository, gathered once for `check` and `metrics`: the
//! report `pitr list` computes (backups, WAL per timeline, recovery windows), the last commit
//! of each timeline's newest segment (its summary: one read per timeline), and each recorded
//! command's last run (one read per command). Nothing here lists the archive itself, so it
//! gets cheaper with `list`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::history::RECORDED_COMMANDS;
use super::list::{ListOptions, ListReport, list};
use crate::catalog::Catalog;
use crate::catalog::history::LatestRuns;
use crate::error::Result;
use crate::pg::WalFileName;
use crate::pg::timestamp::parse_rfc3339;

pub struct RepositoryOverview {
    pub wal_segment_size: u64,
    pub list: ListReport,
    /// Per timeline: its newest archived segment and the last commit in it, or else the
    /// end of its recovery window.
    pub newest_wal: BTreeMap<u32, NewestWal>,
    /// Last run and last success per recorded command that ran.
    pub latest_runs: BTreeMap<String, LatestRuns>,
}

#[derive(Clone, Debug)]
pub struct NewestWal {
    pub segment: WalFileName,
    pub segment_number: u64,
    pub last_commit: Option<DateTime<Utc>>,
}

impl RepositoryOverview {
    /// The newest complete backup (by stop time) and when it finished.
    pub fn newest_backup(&self) -> Option<(&str, DateTime<Utc>)> {
        self.list
            .backups
            .iter()
            .filter_map(|b| Some((b.id.as_str(), parse_rfc3339(&b.stop_time)?)))
            .max_by_key(|&(_, stop)| stop)
    }

    /// The last commit archived on any timeline.
    pub fn newest_commit(&self) -> Option<DateTime<Utc>> {
        self.newest_wal.values().filter_map(|w| w.last_commit).max()
    }
}

pub async fn overview(catalog: &Catalog, jobs: usize) -> Result<RepositoryOverview> {
    let identity = catalog.identity().await?;
    let report = list(catalog, &ListOptions { jobs }).await?;
    let mut newest_wal = BTreeMap::new();
    for range in &report.wal {
        let Ok(segment) = WalFileName::parse(&range.last_segment) else {
            continue;
        };
        let Some(segment_number) = segment.segment_number(identity.wal_segment_size) else {
            continue;
        };
        let summarised = catalog
            .segment_summary(&segment)
            .await?
            .and_then(|s| s.last_commit_time);
        let window_end = report
            .recovery_window
            .iter()
            .filter(|w| w.timeline == range.timeline)
            .filter_map(|w| parse_rfc3339(w.until.as_deref()?))
            .max();
        newest_wal.insert(
            range.timeline,
            NewestWal {
                segment,
                segment_number,
                last_commit: summarised.max(window_end),
            },
        );
    }
    let mut latest_runs = BTreeMap::new();
    for &command in RECORDED_COMMANDS {
        if let Some(latest) = catalog.latest_runs(command).await? {
            latest_runs.insert(command.to_owned(), latest);
        }
    }
    Ok(RepositoryOverview {
        wal_segment_size: identity.wal_segment_size,
        list: report,
        newest_wal,
        latest_runs,
    })
}
