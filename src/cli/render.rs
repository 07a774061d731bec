//! What each command prints: text for people, `--json` for scripts.

use crate::cli::restore_command::sh_quote;
use crate::commands::archive_get::{ArchiveGetReport, GetSource};
use crate::commands::archive_push::{ArchivePushReport, PushOutcome};
use crate::commands::backup::BackupReport;
use crate::commands::expire::ExpireReport;
use crate::commands::init::InitReport;
use crate::commands::list::ListReport;
use crate::commands::pin::PinReport;
use crate::commands::restore::RestoreReport;
use crate::commands::restore::config::{ConfigReport, Placement};
use crate::commands::restore::server::{ArchiveChoice, ArchiveMode, PortChoice, ServerCommands};
use crate::commands::run::Outcome;
use crate::commands::verify::VerifyReport;
use crate::pg::recovery_target::{RecoveryRequest, Target, TargetAction};
use crate::pg::timestamp::rfc3339_micros;
use crate::recovery::RestorePlan;
use crate::recovery::timelines::foreign_timeline_warning;

/// Prints what a command produced; `as_json` for the commands that have `--json`.
pub fn outcome(outcome: &Outcome, as_json: bool) {
    match outcome {
        Outcome::Init(report) => init(report),
        Outcome::Key(report) => key(report, as_json),
        Outcome::Prefetch(report) => tracing::info!(
            "prefetcher stopped ({:?}) after {} segments",
            report.stopped,
            report.fetched
        ),
        Outcome::Backup { report, expired } => {
            backup(report);
            match expired {
                None => {}
                Some(Ok(report)) => expire(report, false),
                Some(Err(error)) => eprintln!(
                    "pitr backup: the backup is complete, but expiring after it failed: \
                     {error}; run `pitr expire` once the cause is fixed"
                ),
            }
        }
        Outcome::Restore { report, recovery } => restore(report, recovery),
        Outcome::Drill(report) => drill(report, as_json),
        Outcome::RestoreTable(report) => restore_table(report, as_json),
        Outcome::List(report) => list(report, as_json),
        Outcome::Verify { report, .. } => verify(report, as_json),
        Outcome::Check(report) => check(report, as_json),
        Outcome::Metrics(text) => print!("{text}"),
        Outcome::History(report) => history(report, as_json),
        Outcome::Expire(report) => expire(report, as_json),
        Outcome::Pin(report) => pin(report),
    }
}

/// The JSON document of an outcome that has one (list, verify, expire, drill), for the report of
/// a command run on several repositories.
pub fn outcome_json(outcome: &Outcome) -> Option<serde_json::Value> {
    let value = match outcome {
        Outcome::List(report) => serde_json::to_value(report),
        Outcome::Verify { report, .. } => serde_json::to_value(report),
        Outcome::Expire(report) => serde_json::to_value(report),
        Outcome::Drill(report) => serde_json::to_value(report),
        _ => return None,
    };
    Some(value.expect("reports serialise"))
}

/// Prints `value` as the JSON documents are printed.
pub fn json_value(value: &serde_json::Value) {
    json(value)
}

fn json(report: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(report).expect("reports serialise")
    );
}

pub fn init(report: &InitReport) {
    let verb = if report.created {
        "initialised"
    } else {
        "already initialised"
    };
    println!(
        "{verb} repository {} for PostgreSQL {} cluster {} (WAL segments of {} bytes, \
         compression {})",
        report.location,
        report.identity.pg_version,
        report.identity.system_identifier,
        report.identity.wal_segment_size,
        report.identity.compression()
    );
    if let Some(fingerprints) = &report.key_fingerprints {
        println!(
            "encrypted ({}): keys {fingerprints}; keep a copy of the passphrase or key file \
             apart from the repository: without one, nothing in it can be read",
            crate::catalog::keys::CIPHER_NAME
        );
    }
}

pub fn key(report: &crate::commands::key::KeyReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("the report serialises")
        );
        return;
    }
    for fingerprint in &report.added {
        println!("added key {fingerprint}");
    }
    for fingerprint in &report.removed {
        println!("removed key {fingerprint}");
    }
    println!(
        "repository {} ({}, data key {}):",
        report.location, report.cipher, report.data_key
    );
    for key in &report.keys {
        let kms = key
            .kms_key_id
            .as_deref()
            .map(|id| format!(" {id}"))
            .unwrap_or_default();
        println!(
            "  {}  {}{kms}  added {}",
            key.fingerprint, key.kind, key.created_at
        );
    }
}

/// archive_command's output stays in the log at -v: PostgreSQL runs it for every segment.
pub fn receive_wal(report: &crate::commands::receive_wal::ReceiveWalReport) {
    match report.received {
        Some(end) => println!(
            "receive-wal stopped: {} files stored, WAL received up to {end}",
            report.stored
        ),
        None => println!("receive-wal stopped: {} files stored", report.stored),
    }
}

pub fn archive_push(report: &ArchivePushReport) {
    let mut ahead = if report.stored_ahead.is_empty() {
        String::new()
    } else {
        format!("; stored ahead: {}", report.stored_ahead.join(", "))
    };
    if !report.queued_for.is_empty() {
        ahead.push_str(&format!("; queued for {}", report.queued_for.join(", ")));
    }
    let Some(e) = &report.encoded else {
        tracing::info!(
            "{} was archived ahead by an earlier call (its spool mark matches); nothing to do",
            report.name
        );
        return;
    };
    let what = match report.outcome {
        PushOutcome::Stored => "archived",
        PushOutcome::AlreadyArchived | PushOutcome::ArchivedAhead => "already archived",
    };
    tracing::info!(
        "{what} {}: {} -> {} bytes (ratio {:.2}) in {:.1} ms{ahead}",
        report.name,
        e.original_len,
        e.stored_len,
        e.ratio(),
        report.elapsed.as_secs_f64() * 1e3
    );
}

pub fn copy(report: &crate::commands::copy::CopyReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    println!(
        "copied {} backup(s) ({} already there) and {} WAL file(s) ({} already there) from {} \
         into {}: {} read, {} stored, in {:.1} s",
        report.backups_copied.len(),
        report.backups_present,
        report.wal_copied,
        report.wal_present,
        report.source,
        report.target,
        bytesize::ByteSize(report.bytes_copied),
        bytesize::ByteSize(report.bytes_stored),
        report.elapsed.as_secs_f64()
    );
    for id in &report.backups_copied {
        println!("  backup {id}");
    }
}

pub fn archive_get(report: &ArchiveGetReport) {
    let from = match report.source {
        GetSource::Repository { stored_len } => format!("{stored_len} stored"),
        GetSource::Spool => "the prefetch spool".to_owned(),
        GetSource::Tail { end } => format!("the received tail, {end} bytes"),
    };
    tracing::info!(
        "restored {}: {} bytes from {from} in {:.1} ms",
        report.name,
        report.len,
        report.elapsed.as_secs_f64() * 1e3
    );
}

pub fn backup(report: &BackupReport) {
    let m = &report.manifest;
    println!(
        "backup {} complete{}: {} files, {} bytes ({} stored in {} objects), WAL {} to {} \
         (timeline {}), {:.1} s",
        m.id,
        match m.method {
            crate::catalog::backup::BackupMethod::Local => "",
            crate::catalog::backup::BackupMethod::Replication => " (over the replication protocol)",
        },
        m.file_count(),
        m.size_bytes,
        m.stored_bytes,
        report.objects,
        m.start_lsn,
        m.stop_lsn,
        m.timeline,
        report.elapsed.as_secs_f64()
    );
    if let Some(parent) = &m.parent {
        let own = m.files.iter().filter(|f| f.backup.is_none());
        let (deltas, whole): (Vec<_>, Vec<_>) = own.partition(|f| f.delta.is_some());
        let blocks: u64 = deltas
            .iter()
            .filter_map(|f| f.delta.as_ref())
            .map(|d| d.block_count())
            .sum();
        let paths = |files: &[&crate::catalog::backup::BackupFile]| {
            files
                .iter()
                .map(|f| f.path.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        println!(
            "{} backup on {parent}: {blocks} changed blocks of {} files, {} files whole, the \
             rest from the chain (changes from {})",
            m.backup_type.name(),
            paths(&deltas),
            paths(&whole),
            m.changes_from.as_deref().unwrap_or("unknown")
        );
    }
    if let Some(configuration) = &m.configuration {
        println!(
            "configuration outside the data directory recorded ({} files): {}",
            configuration.files.len(),
            configuration.config_file
        );
    }
}

/// The pre-flight's findings: in full for `--dry-run`, in one line otherwise.
fn plan(plan: &RestorePlan, request: &RecoveryRequest, full: bool) {
    let count = plan.segments.len();
    let range = match (plan.segments.first_name(), plan.segments.last_name()) {
        (Some(first), Some(last)) => {
            format!("{} to {} ({count} segment{})", first, last, plural(count))
        }
        _ => "none".into(),
    };
    let timeline = format!(
        "timeline {} (--target-timeline {})",
        plan.timeline,
        request.timeline.unwrap_or_default()
    );
    if !full {
        println!(
            "pre-flight: the repository holds the WAL needed, {range}; recovery follows \
             {timeline} and stops {}",
            plan.stops
        );
        return;
    }
    let backup = &plan.backup;
    let histories: Vec<String> = plan.histories.iter().map(|h| h.name.to_string()).collect();
    println!("restore plan");
    println!(
        "  backup:    {} (timeline {}, {} to {}, finished {})",
        backup.id,
        backup.timeline,
        backup.start_lsn,
        backup.stop_lsn,
        rfc3339_micros(backup.stop_time)
    );
    println!("  timeline:  {}", &timeline["timeline ".len()..]);
    println!("  WAL:       {range}");
    if !histories.is_empty() {
        println!("  history:   {}", histories.join(", "));
    }
    println!("  stops:     {}", plan.stops);
    println!(
        "  bytes:     {} to read ({} of backup objects, {} of WAL); {} restored before replay",
        backup.stored_bytes + plan.wal_bytes,
        backup.stored_bytes,
        plan.wal_bytes,
        backup.size_bytes
    );
}

pub fn restore(report: &RestoreReport, request: &RecoveryRequest) {
    plan(&report.plan, request, report.dry_run);
    for timeline in &report.foreign_timelines {
        println!("warning: {}", foreign_timeline_warning(*timeline));
    }
    for (oid, dir) in &report.tablespaces {
        println!("tablespace {oid} into {}", dir.display());
    }
    let server = &report.server;
    let off = server.archive.mode() == ArchiveMode::Off;
    let archive = match (&server.archive, off) {
        (ArchiveChoice::Elsewhere(Some(dir)), _) => format!(
            "archive_mode = off: the restored server does not archive into the repository \
             (restored outside the backup's data directory {dir}; --archive-mode preserve \
             archives as it did)"
        ),
        (ArchiveChoice::Elsewhere(None), _) => "archive_mode = off: the restored server does \
             not archive into the repository (the backup does not record its data directory; \
             --archive-mode preserve archives as it did)"
            .to_owned(),
        (_, true) => "archive_mode = off: the restored server does not archive into the \
             repository (--archive-mode off)"
            .to_owned(),
        (ArchiveChoice::InPlace, false) => "archive settings kept: the restored server archives \
             as the backup's cluster did (restored in place; --archive-mode off stops it)"
            .to_owned(),
        (_, false) => "archive settings kept: the restored server archives as the backup's \
             cluster did (--archive-mode preserve)"
            .to_owned(),
    };
    let written = if report.dry_run {
        "would write"
    } else {
        "wrote"
    };
    if off {
        println!("{written} {archive}");
    } else {
        println!("{archive}");
    }
    match &server.port {
        Some(PortChoice::Moved { from, to }) => println!(
            "{written} port = {to}: port {from} is in use on this host (the cluster the backup \
             came from?)"
        ),
        Some(PortChoice::Asked { port, busy }) => {
            println!("{written} port = {port} (--port)");
            if *busy {
                println!(
                    "warning: port {port} is in use on this host: the server will not start until it is free"
                );
            }
        }
        Some(PortChoice::Busy(port)) => println!(
            "warning: port {port} and the ports above it are in use on this host: choose one \
             with --port"
        ),
        Some(PortChoice::Configured(port)) if report.dry_run => println!(
            "would write no port: the server would listen on port {port}, as the backup's \
             configuration says (free on this host)"
        ),
        Some(PortChoice::Configured(_)) | None => {}
    }
    if report.dry_run {
        println!("dry run: nothing was written");
        return;
    }
    let pgdata = report.pgdata.display();
    println!(
        "restored backup {} into {pgdata}: {} files, {} bytes in {:.1} s ({} bytes read from \
         the repository)",
        report.plan.backup.id,
        report.files,
        report.bytes,
        report.elapsed.as_secs_f64(),
        report.bytes_read
    );
    if !report.excluded.is_empty() {
        let names: Vec<&str> = report.excluded.iter().map(|d| d.name.as_str()).collect();
        println!(
            "not restored (--db-include): {}; their files are empty and PostgreSQL cannot \
             open them: once the server is up, DROP DATABASE each of them",
            names.join(", ")
        );
    }
    for line in configuration_lines(&server.configuration) {
        println!("{line}");
    }
    let commands = &server.commands;
    let paused = !matches!(request.target, Target::End)
        && matches!(request.action, None | Some(TargetAction::Pause));
    let then = match (&request.target, request.action) {
        (Target::End, _) | (_, Some(TargetAction::Promote)) => {
            "then end recovery and accept writes"
        }
        (_, Some(TargetAction::Shutdown)) => "then shut down",
        _ => "then pause (PostgreSQL's default recovery_target_action)",
    };
    let port = server
        .port
        .as_ref()
        .map_or_else(String::new, |p| format!(" on port {}", p.port()));
    println!("Next: {}", shell_words(&commands.start));
    println!(
        "PostgreSQL will listen{port}, replay WAL from the repository (restore_command runs \
         pitr archive-get) up to {}, {then}; it logs to {}.",
        request.target,
        commands.log.display()
    );
    if paused {
        for line in paused_guidance(commands) {
            println!("{line}");
        }
    }
}

/// What a copy paused at its target is, and the commands that end its recovery.
fn paused_guidance(commands: &ServerCommands) -> Vec<String> {
    let mut lines = vec![
        "Paused, the copy is read-only, and what a transaction in flight at the target \
         dropped or altered (the DROP TABLE restored to just before, say) stays locked by the \
         startup process until the copy is promoted: a query on such a table waits (SET \
         statement_timeout to look without waiting)."
            .to_owned(),
        format!(
            "To end recovery there and accept writes: {}",
            shell_words(&commands.promote)
        ),
    ];
    if let Some(resume) = &commands.resume {
        lines.push(format!("  or, from SQL: {}", shell_words(resume)));
    }
    lines
}

/// Words as one command line for /bin/sh.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| sh_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What restore did with the configuration the backup recorded outside its data directory.
fn configuration_lines(report: &ConfigReport) -> Vec<String> {
    let mut lines = Vec::new();
    match &report.placement {
        None => return lines,
        Some(Placement::Kept) => lines.push(format!(
            "configuration: in place, the files at the original paths are left as they are \
             ({}); --restore-config writes the backup's back",
            report
                .config_file
                .as_ref()
                .map_or_else(String::new, |f| f.display().to_string())
        )),
        Some(Placement::Original) => {
            lines.push("configuration: written back to the original paths".into());
        }
        Some(Placement::DataDirectory) => lines.push(
            "configuration: the backup's (recorded outside the data directory) is written into \
             the data directory"
                .into(),
        ),
        Some(Placement::Directory(dir)) => {
            lines.push(format!("configuration: written into {}", dir.display()));
        }
    }
    for (original, written) in &report.written {
        lines.push(format!("  {original} -> {}", written.display()));
    }
    for (path, aside) in &report.kept_aside {
        lines.push(format!(
            "  {} was there: kept as {}",
            path.display(),
            aside.display()
        ));
    }
    for change in &report.changes {
        lines.push(format!("  changed for the new place: {change}"));
    }
    lines
}

pub fn list(report: &ListReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    if report.backups.is_empty() {
        println!("no backups");
    }
    for damaged in &report.damaged_backups {
        println!(
            "backup {}  DAMAGED, cannot be restored: {} (see pitr verify)",
            damaged.id, damaged.reason
        );
    }
    for b in &report.backups {
        println!(
            "backup {}  {}{}  {} .. {}  LSN {} .. {}  timeline {}  {} bytes ({} stored){}{}{}",
            b.id,
            b.backup_type,
            b.parent
                .as_ref()
                .map_or(String::new(), |parent| format!(" on {parent}")),
            b.start_time,
            b.stop_time,
            b.start_lsn,
            b.stop_lsn,
            b.timeline,
            b.size_bytes,
            b.stored_bytes,
            if b.method == "replication" {
                "  over replication"
            } else {
                ""
            },
            if b.pinned { "  pinned" } else { "" },
            notes(&b.annotations).map_or(String::new(), |notes| format!("  {notes}"))
        );
    }
    for w in &report.wal {
        println!(
            "wal timeline {}: {} .. {}",
            w.timeline, w.first_segment, w.last_segment
        );
    }
    for t in &report.tails {
        println!(
            "wal tail timeline {}: {} up to {} ({} bytes received by pitr receive-wal; restore \
             without a target replays it)",
            t.timeline, t.segment, t.end_lsn, t.bytes
        );
    }
    for w in &report.recovery_window {
        println!(
            "recovery window timeline {}: {} .. {}",
            w.timeline,
            w.from,
            w.until.as_deref().unwrap_or("(no commit reachable yet)")
        );
    }
    // The tree, once there is more than one timeline: where each came from.
    if report.timelines.len() > 1 {
        for t in &report.timelines {
            let origin = match (t.parent, t.switch_point) {
                (Some(parent), Some(at)) => format!("forked from timeline {parent} at {at}"),
                _ => "first timeline".to_owned(),
            };
            let backups = if t.backups.is_empty() {
                "no backups".to_owned()
            } else {
                format!("backups {}", t.backups.join(", "))
            };
            println!(
                "{}timeline {}: {origin}; {backups}",
                "  ".repeat(t.depth),
                t.timeline
            );
        }
    }
    for timeline in &report.timelines_without_backup {
        println!("warning: {}", foreign_timeline_warning(*timeline));
    }
}

pub fn verify(report: &VerifyReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    for problem in &report.problems {
        println!("{problem}");
    }
    for id in &report.interrupted_backups {
        println!(
            "note: backup {id} was interrupted before it finished; its objects are leftovers, \
             not a restorable backup"
        );
    }
    for id in &report.abandoned_backups {
        println!(
            "warning: backup {id} was abandoned: it failed and could not remove all it wrote; \
             its objects are leftovers, not a restorable backup (pitr expire removes them)"
        );
    }
    for id in &report.running_backups {
        println!("note: backup {id} has no manifest yet: it is still being taken");
    }
    if report.indexed_segments > 0 {
        println!(
            "indexed {} segments that had no WAL index entry",
            report.indexed_segments
        );
    }
    let outcome = match report.problems.len() {
        0 => "intact".to_owned(),
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    println!(
        "verified {} objects ({} bytes stored) in {:.1} s: {outcome}",
        report.objects, report.bytes, report.seconds
    );
    if !report.authenticated {
        println!(
            "note: the repository is encrypted and no key was given: only stored checksums were \
             checked; give the key to authenticate every object and check WAL and backups"
        );
    }
}

pub fn check(report: &crate::commands::check::CheckReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    for c in &report.checks {
        println!("{}", c.line());
    }
}

pub fn history(report: &crate::commands::history::HistoryReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    if report.runs.is_empty() {
        println!("no runs recorded");
        return;
    }
    println!(
        "{:<20}  {:<8}  {:>8}  {:<8}  {:>12}  {:<18}  error",
        "start", "command", "seconds", "status", "bytes", "backup"
    );
    for run in &report.runs {
        let seconds = (run.end - run.start).num_milliseconds() as f64 / 1000.0;
        println!(
            "{:<20}  {:<8}  {:>8.1}  {:<8}  {:>12}  {:<18}  {}",
            run.start.format("%Y-%m-%dT%H:%M:%SZ"),
            run.command,
            seconds,
            run.status.as_str(),
            run.bytes
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            run.backup_id.as_deref().unwrap_or("-"),
            run.error.as_deref().unwrap_or("")
        );
    }
}

/// What expire kept and why, and exactly what it removed (or, with --dry-run, would).
pub fn expire(report: &ExpireReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for kept in &report.kept_backups {
        let rules: Vec<String> = kept.rules.iter().map(ToString::to_string).collect();
        let periods = if kept.periods.is_empty() {
            String::new()
        } else {
            format!(" ({})", kept.periods.join(", "))
        };
        println!(
            "keep backup {} (timeline {}, stopped {}): {}{periods}",
            kept.id,
            kept.timeline,
            kept.stop_time,
            rules.join(", ")
        );
    }
    for removed in &report.removed_backups {
        println!(
            "{verb} backup {} (timeline {}, stopped {}): no rule keeps it",
            removed.id, removed.timeline, removed.stop_time
        );
    }
    for wal in &report.kept_wal {
        use crate::recovery::retention::WalReason;
        let why = match &wal.reason {
            WalReason::Continuous { backup } => {
                format!("continuous WAL for point-in-time recovery from backup {backup}")
            }
            WalReason::Consistency { backup } => {
                format!("what backup {backup} needs to become consistent")
            }
            WalReason::NewTimeline => "a timeline no backup has reached yet".to_owned(),
            WalReason::Replay { claim, backup } => {
                format!("replayed by a restore of backup {backup} in flight (claim {claim})")
            }
        };
        println!(
            "keep WAL timeline {}: {} .. {}: {why}",
            wal.timeline,
            wal.first_segment,
            wal.last_segment.as_deref().unwrap_or("(its end)")
        );
    }
    for range in &report.removed_wal_ranges {
        if range.count == 1 {
            println!("{verb} WAL {}", range.first);
        } else {
            println!(
                "{verb} WAL {} .. {} ({} files)",
                range.first, range.last, range.count
            );
        }
    }
    for claim in &report.replay_claims {
        println!(
            "held: `pitr {}` on host {} ({}) replays backup {} (WAL {} .. {}; heartbeat {} s ago)",
            claim.command,
            claim.host,
            claim.pgdata,
            claim.backup.as_deref().unwrap_or("(planning)"),
            claim.first_segment.as_deref().unwrap_or("-"),
            claim.last_segment.as_deref().unwrap_or("-"),
            claim.heartbeat_age_seconds
        );
    }
    for claim in &report.stale_replay_claims {
        println!(
            "ignored stale replay claim {} (`pitr {}` on host {}, {}; heartbeat {} s ago)",
            claim.id, claim.command, claim.host, claim.pgdata, claim.heartbeat_age_seconds
        );
    }
    if let Some(why) = &report.held_back {
        println!("held back: {why}");
    }
    for id in &report.removed_interrupted_backups {
        println!("{verb} interrupted backup {id} (no manifest, its owner is gone)");
    }
    for id in &report.running_backups {
        println!("left alone: backup {id} has no manifest yet and may still be running");
    }
    for damaged in &report.damaged_backups {
        println!(
            "left alone: backup {} is damaged ({}); see pitr verify",
            damaged.id, damaged.reason
        );
    }
    for protected in &report.protected {
        println!(
            "protected until {}: {} (a retention lock; a later run removes it)",
            protected.until.as_deref().unwrap_or("(unknown)"),
            protected.key
        );
    }
    for tail in &report.removed_tails {
        println!("{verb} the received tail {tail} (redundant)");
    }
    println!(
        "{verb} {} backup{}, {} WAL file{}, {} interrupted backup{}{}",
        report.removed_backups.len(),
        plural(report.removed_backups.len()),
        report.removed_wal.len(),
        plural(report.removed_wal.len()),
        report.removed_interrupted_backups.len(),
        plural(report.removed_interrupted_backups.len()),
        if report.dry_run {
            String::new()
        } else {
            format!(
                " ({} objects, {} staging files)",
                report.deleted_objects, report.removed_staging_files
            )
        }
    );
}

pub fn pin(report: &PinReport) {
    println!(
        "backup {} {}{}",
        report.id,
        if report.pinned {
            "pinned"
        } else {
            "not pinned"
        },
        notes(&report.annotations).map_or(String::new(), |notes| format!(", notes: {notes}"))
    );
}

/// "s" unless there is one.
fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// A backup's notes as `key=value` pairs; none when it has none.
fn notes(annotations: &std::collections::BTreeMap<String, String>) -> Option<String> {
    (!annotations.is_empty()).then(|| {
        let pairs: Vec<String> = annotations
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        pairs.join(" ")
    })
}

pub fn drill(report: &crate::commands::drill::DrillReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    println!(
        "drill {}: backup {}, recovered to {}",
        if report.passed { "PASSED" } else { "FAILED" },
        report.backup,
        report.target
    );
    println!(
        "  restore:  {:.1} s, {} bytes restored ({} bytes read from the repository)",
        report.restore_seconds, report.bytes_restored, report.bytes_read
    );
    println!(
        "  replay:   {:.1} s, {} bytes of WAL replayed (to {})",
        report.replay_seconds,
        report.wal_replayed_bytes,
        report.replay_lsn.as_deref().unwrap_or("unknown")
    );
    println!(
        "  total:    {:.1} s until the database accepted connections (the RTO measured)",
        report.total_seconds
    );
    if let Some(commit) = &report.last_commit_time {
        println!("  last replayed commit: {commit}");
    }
    if let Some(stop) = &report.recovery_stop {
        println!("  PostgreSQL: {stop}");
    }
    println!("  checks ({:.1} s):", report.checks_seconds);
    for check in &report.checks {
        println!(
            "    {} {} ({}): {}",
            if check.passed { "ok  " } else { "FAIL" },
            check.name,
            check.kind,
            check.detail
        );
    }
    if report.kept {
        println!(
            "scratch directory kept: {} (the server is stopped)",
            report.scratch_dir.display()
        );
    } else {
        println!(
            "scratch directory {} removed, its server stopped",
            report.scratch_dir.display()
        );
    }
}

pub fn restore_table(report: &crate::commands::restore_table::RestoreTableReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    for table in &report.tables {
        println!(
            "restored {} as of {} into {}: {} rows",
            table.from, report.target, table.into, table.rows
        );
    }
    if report.replaced {
        println!("the live table(s) were replaced in one transaction");
    }
    println!(
        "backup {}, database {}: {} bytes read from the repository; restore {:.1} s, replay \
         {:.1} s, export {:.1} s, load {:.1} s, {:.1} s in all",
        report.backup,
        report.database,
        report.bytes_read,
        report.restore_seconds,
        report.replay_seconds,
        report.export_seconds,
        report.load_seconds,
        report.total_seconds
    );
}
