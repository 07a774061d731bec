//! `pitr drill`: a restore test with its RTO. Restores a backup into a scratch directory,
//! replays WAL to the target on a server that cannot disturb anything, checks that the
//! target was reached, runs pg_amcheck on every database and the user's checks, then stops
//! the server and removes the directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::catalog::backup::BackupManifest;
use crate::commands::restore::{RestoreOptions, RestoreReport};
use crate::commands::scratch::checks::UserCheck;
use crate::commands::scratch::{Scratch, pg_bin};
use crate::error::{Error, Result};
use crate::pg::Lsn;
use crate::pg::recovery_target::Target;
use crate::server::Session;

pub struct DrillOptions {
    /// What to restore and how: the target, the backup, jobs, restore_command.
    pub restore: RestoreOptions,
    /// Where the scratch directory is made.
    pub scratch_parent: PathBuf,
    pub keep: bool,
    pub pg_bin: Option<PathBuf>,
    pub amcheck: bool,
    pub checks: Vec<UserCheck>,
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct CheckOutcome {
    /// `target`, `amcheck` or `user`.
    pub kind: &'static str,
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    pub backup: String,
    pub target: String,
    pub scratch_dir: PathBuf,
    /// `--keep`: the directory stays (with the server stopped).
    pub kept: bool,
    pub bytes_restored: u64,
    pub bytes_read: u64,
    pub restore_seconds: f64,
    pub replay_seconds: f64,
    /// restore + replay: how long until the database accepted connections (the RTO).
    pub total_seconds: f64,
    pub checks_seconds: f64,
    /// Bytes of WAL from the backup's start to the last record replayed.
    pub wal_replayed_bytes: u64,
    pub replay_lsn: Option<String>,
    pub last_commit_time: Option<String>,
    /// PostgreSQL's own line on where recovery stopped, when it stopped at a target.
    pub recovery_stop: Option<String>,
    pub checks: Vec<CheckOutcome>,
    pub passed: bool,
}

pub async fn drill(catalog: &Catalog, options: &DrillOptions) -> Result<DrillReport> {
    let mut scratch = Scratch::create(
        &options.scratch_parent,
        "pitr-drill-",
        options.keep,
        "drill",
    )?;
    let result = tokio::select! {
        result = run(catalog, options, &mut scratch) => result,
        signal = crate::commands::scratch::interrupted() => Err(crate::commands::scratch::interruption(signal, &scratch)),
    };
    scratch.stop().await;
    scratch.release_claim(catalog).await;
    result
}

async fn run(
    catalog: &Catalog,
    options: &DrillOptions,
    scratch: &mut Scratch,
) -> Result<DrillReport> {
    // The binaries first: a missing PostgreSQL is found before a long restore.
    let identity = catalog.identity().await?;
    let bin = pg_bin::find(identity.pg_version, options.pg_bin.as_deref())?;
    let restored = scratch.restore(catalog, options.restore.clone()).await?;
    let backup = &restored.plan.backup;
    let replay = scratch.start(&bin).await?;
    let checks_started = Instant::now();
    let database = any_database(backup);
    let session = scratch.connect(&database).await?;
    let (replay_lsn, last_commit) = replay_position(&session).await?;
    let mut checks = vec![target_check(
        &restored,
        options,
        (replay_lsn, last_commit),
        identity.wal_segment_size,
        scratch,
    )];
    if options.amcheck {
        checks.push(amcheck(&bin, scratch, options.restore.jobs).await);
    }
    let mut sessions: HashMap<String, Session> = HashMap::from([(database, session)]);
    for check in &options.checks {
        checks.push(user_check(check, scratch, &mut sessions).await);
    }
    let wal_replayed_bytes = replay_lsn.map_or(0, |lsn| lsn.0.saturating_sub(backup.start_lsn.0));
    Ok(DrillReport {
        backup: backup.id.clone(),
        target: options.restore.request.recovery.target.to_string(),
        scratch_dir: scratch.root().to_owned(),
        kept: options.keep,
        bytes_restored: restored.bytes,
        bytes_read: restored.bytes_read,
        restore_seconds: restored.elapsed.as_secs_f64(),
        replay_seconds: replay.as_secs_f64(),
        total_seconds: (restored.elapsed + replay).as_secs_f64(),
        checks_seconds: checks_started.elapsed().as_secs_f64(),
        wal_replayed_bytes,
        replay_lsn: replay_lsn.map(|l| l.to_string()),
        last_commit_time: last_commit.map(|t| t.to_rfc3339()),
        recovery_stop: recovery_stop_line(scratch),
        passed: checks.iter().all(|c| c.passed),
        checks,
    })
}

/// A database to connect to for cluster-wide questions: postgres, else template1.
fn any_database(backup: &BackupManifest) -> String {
    let has = |name: &str| backup.databases.iter().any(|d| d.name == name);
    if has("postgres") || backup.databases.is_empty() {
        "postgres".into()
    } else {
        "template1".into()
    }
}

/// Where replay stopped: the last WAL record and the last commit it applied (both stay as
/// they were once recovery has ended).
async fn replay_position(session: &Session) -> Result<(Option<Lsn>, Option<DateTime<Utc>>)> {
    let rows = session
        .simple_rows(
            "SELECT pg_last_wal_replay_lsn()::text, \
             extract(epoch from pg_last_xact_replay_timestamp())::text",
        )
        .await
        .map_err(|e| Error::Server(format!("asking the scratch server where replay ended: {e}")))?;
    let row = rows.first().cloned().unwrap_or_default();
    let lsn = row.first().cloned().flatten().and_then(|t| t.parse().ok());
    let commit = row
        .get(1)
        .cloned()
        .flatten()
        .and_then(|t| t.parse::<f64>().ok())
        .and_then(|s| DateTime::from_timestamp_micros((s * 1e6).round() as i64));
    Ok((lsn, commit))
}

/// Whether the server stopped where it was asked to.
fn target_check(
    restored: &RestoreReport,
    options: &DrillOptions,
    (lsn, commit): (Option<Lsn>, Option<DateTime<Utc>>),
    wal_segment_size: u64,
    scratch: &Scratch,
) -> CheckOutcome {
    let backup = &restored.plan.backup;
    let target = &options.restore.request.recovery.target;
    let commit_text = commit.map_or_else(|| "none".into(), |t| t.to_rfc3339());
    let lsn_text = lsn.map_or_else(|| "none".into(), |l| l.to_string());
    let reached = format!("replay ended at {lsn_text}, last replayed commit {commit_text}");
    let (passed, detail) = match target {
        Target::Time(time) => (
            commit.is_none_or(|c| c <= *time),
            format!("{reached}; target {}", time.to_rfc3339()),
        ),
        Target::Lsn(want) => (
            lsn.is_some_and(|l| l >= *want),
            format!("{reached}; target {want}"),
        ),
        Target::Immediate => (
            lsn.is_some_and(|l| l >= backup.stop_lsn),
            format!("{reached}; the backup ends at {}", backup.stop_lsn),
        ),
        Target::End => {
            let last = restored
                .plan
                .segments
                .last_name()
                .and_then(|n| crate::pg::WalFileName::parse(&n).ok())
                .and_then(|n| n.start_lsn(wal_segment_size));
            match last {
                Some(start) => (
                    lsn.is_some_and(|l| l >= start),
                    format!("{reached}; the last archived segment starts at {start}"),
                ),
                None => (
                    lsn.is_some_and(|l| l >= backup.stop_lsn),
                    format!("{reached}; the backup ends at {}", backup.stop_lsn),
                ),
            }
        }
        // PostgreSQL refuses to end recovery short of an xid or a restore point.
        Target::Xid(_) | Target::Name(_) => (
            true,
            recovery_stop_line(scratch).unwrap_or_else(|| reached.clone()),
        ),
    };
    CheckOutcome {
        kind: "target",
        name: format!("reached {target}"),
        passed,
        detail,
    }
}

/// PostgreSQL's log line on where recovery stopped at a target.
fn recovery_stop_line(scratch: &Scratch) -> Option<String> {
    let log = std::fs::read_to_string(scratch.root().join("server.log")).ok()?;
    log.lines()
        .find(|l| l.contains("recovery stopping"))
        .map(|l| match l.find("recovery stopping") {
            Some(at) => l[at..].to_owned(),
            None => l.to_owned(),
        })
}

/// pg_amcheck on every database that accepts connections: heap and B-tree indexes, the
/// amcheck extension installed where missing (in the scratch cluster only).
async fn amcheck(bin: &std::path::Path, scratch: &Scratch, jobs: usize) -> CheckOutcome {
    let program = bin.join("pg_amcheck");
    let output = tokio::process::Command::new(&program)
        .arg("--host")
        .arg(scratch.socket_dir())
        .arg("--port")
        .arg(scratch.port().to_string())
        .arg("--username")
        .arg(scratch.superuser())
        .arg("--no-password")
        .arg("--all")
        .arg("--install-missing")
        .arg("--jobs")
        .arg(jobs.clamp(1, 8).to_string())
        .env_remove("PGDATABASE")
        .kill_on_drop(true)
        .output()
        .await;
    let (passed, detail) = match output {
        Err(e) => (false, format!("cannot run {}: {e}", program.display())),
        Ok(output) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            if output.status.success() && lines.is_empty() {
                (
                    true,
                    "no corruption in heap tables and B-tree indexes".into(),
                )
            } else {
                let shown: Vec<&str> = lines.iter().take(6).copied().collect();
                let more = lines.len().saturating_sub(shown.len());
                let mut detail = shown.join(" / ");
                if more > 0 {
                    detail.push_str(&format!(" (and {more} more lines)"));
                }
                (false, format!("pg_amcheck ({}): {detail}", output.status))
            }
        }
    };
    CheckOutcome {
        kind: "amcheck",
        name: "pg_amcheck --all".into(),
        passed,
        detail,
    }
}

/// One user check, read-only, in its database.
async fn user_check(
    check: &UserCheck,
    scratch: &Scratch,
    sessions: &mut HashMap<String, Session>,
) -> CheckOutcome {
    let outcome = |passed: bool, detail: String| CheckOutcome {
        kind: "user",
        name: check.label(),
        passed,
        detail,
    };
    if !sessions.contains_key(&check.database) {
        match scratch.connect(&check.database).await {
            Ok(session) => {
                sessions.insert(check.database.clone(), session);
            }
            Err(e) => return outcome(false, e.to_string()),
        }
    }
    let session = &sessions[&check.database];
    if let Err(e) = session
        .simple_rows("SET default_transaction_read_only = on")
        .await
    {
        return outcome(false, e);
    }
    match session.simple_rows(&check.sql).await {
        Err(e) => outcome(false, format!("in database {}: {e}", check.database)),
        Ok(rows) => match check.judge(&rows) {
            None => outcome(
                true,
                format!(
                    "{} row{}",
                    rows.len(),
                    if rows.len() == 1 { "" } else { "s" }
                ),
            ),
            Some(why) => outcome(false, why),
        },
    }
}

/// The drill's failing checks in one line (for the error and the history).
pub fn failures(report: &DrillReport) -> String {
    report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} failed: {}", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ")
}
