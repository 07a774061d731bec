//! The replay plan: what a restore's pre-flight proved the repository holds, carried into
//! the replay. `pitr restore` (and drill, restore-table) writes it as
//! `pg_wal/.pitr-replay-plan.json` in the restored directory; archive-get, run by PostgreSQL
//! in the data directory, reads it when the repository answers "not found": a segment or
//! history file the plan needs is then missing WAL (exit > 125, recovery aborts), and only
//! beyond the plan is "not found" the end of the archive (exit 1).
//!
//! Why `pg_wal/`: PostgreSQL removes only files named like WAL there, pg_basebackup copies
//! none of its other files (a standby cloned from the restored server does not inherit the
//! plan), and pg_verifybackup skips the directory.
//!
//! The plan binds only the recovery it was written for: it records the modification time of
//! the `recovery.signal` restore wrote. PostgreSQL removes that file at promotion, so a later
//! recovery in the same directory (a `recovery.signal` made by hand, or `standby.signal` for a
//! standby) is not held to an old plan.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::replay::{ReplayClaim, SegmentRun};
use crate::pg::{WalFileKind, WalFileName};

/// The plan's file name, in `pg_wal/`.
pub const PLAN_FILE: &str = ".pitr-replay-plan.json";
/// When archive-get last refreshed the claim's heartbeat (its mtime), or `released`.
pub const HEARTBEAT_FILE: &str = ".pitr-replay-heartbeat";
const PLAN_FORMAT: u32 = 1;
/// archive-get refreshes the claim at most this far apart.
const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayPlan {
    pub format: u32,
    pub system_identifier: u64,
    pub wal_segment_size: u64,
    /// The command that restored (`restore`, `drill`, `restore-table`).
    pub command: String,
    pub backup: String,
    /// The replay claim in the repository that keeps this WAL from `pitr expire`.
    pub claim: String,
    /// How old the claim may grow before expire ignores it (restore's setting).
    pub claim_stale_after_secs: u64,
    /// The timeline recovery follows to the target.
    pub timeline: u32,
    /// The segments recovery reads, in order.
    pub segments: Vec<SegmentRun>,
    /// The history files of the timelines on the way.
    pub histories: Vec<String>,
    /// Where recovery stops, in words.
    pub stops: String,
    /// The `recovery.signal` restore wrote (nanoseconds since the epoch): the plan binds this
    /// recovery only.
    pub recovery_signal_mtime_ns: i64,
    pub written: DateTime<Utc>,
}

/// What the plan says of a file PostgreSQL asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The pre-flight found it, and recovery needs it to reach the target.
    Needed,
    /// After the plan's last segment: the archive may end here.
    Beyond,
    /// Neither (another timeline's segment PostgreSQL tries first, a backup history file).
    Other,
}

impl ReplayPlan {
    pub fn needs(&self, name: &WalFileName) -> Need {
        let segment_size = self.wal_segment_size;
        match name.kind() {
            WalFileKind::History => {
                if self.histories.iter().any(|h| h == name.as_str()) {
                    Need::Needed
                } else {
                    Need::Other
                }
            }
            WalFileKind::Segment => {
                let Some(segno) = name.segment_number(segment_size) else {
                    return Need::Other;
                };
                let mut last = None;
                for run in &self.segments {
                    let (Some(first), Some(end)) = (
                        segno_of(&run.first, segment_size),
                        segno_of(&run.last, segment_size),
                    ) else {
                        continue;
                    };
                    if run.timeline == name.timeline() && (first..=end).contains(&segno) {
                        return Need::Needed;
                    }
                    last = last.max(Some(end));
                }
                match last {
                    Some(last) if segno > last => Need::Beyond,
                    _ => Need::Other,
                }
            }
            _ => Need::Other,
        }
    }

    /// True when a request for `name` shows recovery is over: a history file of a newer
    /// timeline than the plan's is what PostgreSQL asks for when it promotes (restore names
    /// the timeline, so it does not look for newer ones when it starts).
    pub fn ends_recovery(&self, name: &WalFileName) -> bool {
        name.kind() == WalFileKind::History && name.timeline() > self.timeline
    }

    /// How often archive-get refreshes the claim: well inside the stale bound.
    pub fn refresh_interval(&self) -> Duration {
        (Duration::from_secs(self.claim_stale_after_secs) / 4)
            .clamp(Duration::from_secs(1), MAX_REFRESH_INTERVAL)
    }

    /// The claim this plan stands for, as archive-get writes it again with a new heartbeat
    /// (one put, no read: a claim expire removed as stale comes back while replay runs).
    pub fn as_claim(&self, pgdata: &str, now: DateTime<Utc>) -> ReplayClaim {
        let mut claim = ReplayClaim::planning(&self.claim, &self.command, pgdata, self.written);
        claim.heartbeat = now;
        claim.backup = Some(self.backup.clone());
        claim.segments = self.segments.clone();
        claim
    }

    /// The plan's first and last segment, for messages.
    pub fn span(&self) -> String {
        match (self.segments.first(), self.segments.last()) {
            (Some(first), Some(last)) => format!("{} to {}", first.first, last.last),
            _ => "no segment".into(),
        }
    }
}

fn segno_of(name: &str, segment_size: u64) -> Option<u64> {
    WalFileName::parse(name).ok()?.segment_number(segment_size)
}

/// The modification time of a file, in nanoseconds since the epoch.
pub fn mtime_ns(path: &Path) -> io::Result<i64> {
    let meta = fs::metadata(path)?;
    Ok(meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec())
}

/// Writes the plan into `wal_dir` whole: a staged file, synced, renamed, the directory
/// synced. PostgreSQL never sees a partial plan.
pub fn write(wal_dir: &Path, plan: &ReplayPlan) -> io::Result<()> {
    let mut json = serde_json::to_vec_pretty(plan).expect("a plan serialises");
    json.push(b'\n');
    let staged = wal_dir.join(format!("{PLAN_FILE}.tmp"));
    let mut file = crate::private_fs::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&staged)?;
    crate::private_fs::make_private(&file)?;
    file.write_all(&json)?;
    file.sync_all()?;
    fs::rename(&staged, wal_dir.join(PLAN_FILE))?;
    fs::File::open(wal_dir)?.sync_all()
}

/// The plan that binds the recovery running in `datadir` (restore_command's working
/// directory), from `wal_dir`: `Ok(None)` when there is none, or it was written for another
/// recovery; `Err` with a reason when a plan is there but cannot be read.
pub fn binding(wal_dir: &Path, datadir: &Path) -> Result<Option<ReplayPlan>, String> {
    let path = wal_dir.join(PLAN_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let plan: ReplayPlan = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: unreadable: {e}", path.display()))?;
    if plan.format != PLAN_FORMAT {
        return Err(format!(
            "{}: format {} is not {PLAN_FORMAT}",
            path.display(),
            plan.format
        ));
    }
    // A standby, or a recovery started after this one ended, is not this plan's.
    if datadir.join("standby.signal").exists() {
        return Ok(None);
    }
    match mtime_ns(&datadir.join("recovery.signal")) {
        Ok(ns) if ns == plan.recovery_signal_mtime_ns => Ok(Some(plan)),
        _ => Ok(None),
    }
}

pub fn heartbeat_path(wal_dir: &Path) -> PathBuf {
    wal_dir.join(HEARTBEAT_FILE)
}

/// Whether the claim is due for a refresh (never once released).
pub fn refresh_due(wal_dir: &Path, plan: &ReplayPlan) -> bool {
    let path = heartbeat_path(wal_dir);
    match fs::read(&path) {
        Ok(content) if content == b"released" => false,
        Ok(_) => fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_none_or(|age| age >= plan.refresh_interval()),
        Err(_) => true,
    }
}

/// Notes a refresh (or, `released`, that the claim is gone for good). Best effort.
pub fn note_heartbeat(wal_dir: &Path, released: bool) {
    let content: &[u8] = if released { b"released" } else { b"" };
    let _ = crate::private_fs::write(heartbeat_path(wal_dir), content);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn plan() -> ReplayPlan {
        ReplayPlan {
            format: PLAN_FORMAT,
            system_identifier: 7,
            wal_segment_size: SEG,
            command: "restore".into(),
            backup: "b".into(),
            claim: "00ff".into(),
            claim_stale_after_secs: 3600,
            timeline: 2,
            segments: vec![
                SegmentRun {
                    timeline: 1,
                    first: "000000010000000000000003".into(),
                    last: "000000010000000000000005".into(),
                },
                SegmentRun {
                    timeline: 2,
                    first: "000000020000000000000006".into(),
                    last: "000000020000000000000007".into(),
                },
            ],
            histories: vec!["00000002.history".into()],
            stops: "at the end".into(),
            recovery_signal_mtime_ns: 1,
            written: Utc::now(),
        }
    }

    #[test]
    fn what_the_plan_needs() {
        let plan = plan();
        let need = |name: &str| plan.needs(&WalFileName::parse(name).unwrap());
        assert_eq!(need("000000010000000000000004"), Need::Needed);
        assert_eq!(need("000000020000000000000007"), Need::Needed);
        assert_eq!(need("00000002.history"), Need::Needed);
        // Tried first by PostgreSQL on a newer timeline, or an older one's segment.
        assert_eq!(need("000000020000000000000005"), Need::Other);
        assert_eq!(need("000000010000000000000006"), Need::Other);
        assert_eq!(need("00000003.history"), Need::Other);
        // Past the last planned segment: the end of the archive.
        assert_eq!(need("000000020000000000000008"), Need::Beyond);
        assert_eq!(need("000000030000000000000009"), Need::Beyond);
        assert!(plan.ends_recovery(&WalFileName::parse("00000003.history").unwrap()));
        assert!(!plan.ends_recovery(&WalFileName::parse("00000002.history").unwrap()));
    }

    #[test]
    fn a_plan_binds_only_the_recovery_it_was_written_for() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("pg_wal");
        fs::create_dir(&wal).unwrap();
        assert_eq!(binding(&wal, dir.path()), Ok(None));
        let signal = dir.path().join("recovery.signal");
        fs::write(&signal, "").unwrap();
        let mut plan = plan();
        plan.recovery_signal_mtime_ns = mtime_ns(&signal).unwrap();
        write(&wal, &plan).unwrap();
        assert_eq!(binding(&wal, dir.path()), Ok(Some(plan.clone())));
        // A standby is not held to it.
        fs::write(dir.path().join("standby.signal"), "").unwrap();
        assert_eq!(binding(&wal, dir.path()), Ok(None));
        fs::remove_file(dir.path().join("standby.signal")).unwrap();
        // Nor a recovery.signal made later by hand.
        fs::remove_file(&signal).unwrap();
        assert_eq!(binding(&wal, dir.path()), Ok(None));
        fs::write(&signal, "").unwrap();
        let later = filetime_plus(&signal);
        assert_ne!(later, plan.recovery_signal_mtime_ns);
        assert_eq!(binding(&wal, dir.path()), Ok(None));
        // A damaged plan is said, not ignored.
        fs::write(wal.join(PLAN_FILE), "{").unwrap();
        assert!(binding(&wal, dir.path()).is_err());
    }

    /// Moves the file's mtime a second on, as a later write would.
    fn filetime_plus(path: &Path) -> i64 {
        let modified = fs::metadata(path).unwrap().modified().unwrap();
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(modified + Duration::from_secs(1))
            .unwrap();
        mtime_ns(path).unwrap()
    }

    #[test]
    fn the_heartbeat_is_refreshed_when_due_and_never_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan();
        assert!(refresh_due(dir.path(), &plan));
        note_heartbeat(dir.path(), false);
        assert!(!refresh_due(dir.path(), &plan));
        note_heartbeat(dir.path(), true);
        assert!(!refresh_due(dir.path(), &plan));
    }
}
