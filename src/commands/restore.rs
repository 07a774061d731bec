//! `pitr restore`: rebuilds a data directory from a backup, set up so that PostgreSQL
//! replays archived WAL (through `pitr archive-get`) up to the target.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::catalog::backup::{BackupFile, BackupManifest, Database};
use crate::catalog::replay::{ReplayClaim, SegmentRun};
use crate::catalog::{Catalog, CatalogError};
use crate::datadir::running_postmaster;
use crate::error::{Error, Result};
use crate::interrupt::{Interrupt, Signal};
use crate::ownership::{Owner, give_tree_to, running_as_root};
use crate::pg::backup_manifest::{ManifestEntry, render};
use crate::pg::guc::remove_recovery_settings;
use crate::pg::recovery_target::{TargetTimeline, recovery_settings};
use crate::pg::relpath::database_of;
use crate::recovery::plan::{PlanRequest, gather_and_plan};
use crate::recovery::timelines::{foreign_timeline_warning, timelines_without_backup};
use crate::recovery::walk::SegmentRuns;
use crate::recovery::{ArchiveView, RestorePlan};
use crate::replay_plan::{self, ReplayPlan};

use super::blocking;

pub mod config;
mod layers;
mod layout;
pub mod server;

use layers::Layers;
use layout::{CONTROL_FILE, CONTROL_FILE_RESTORING, LayoutError, RestoreLayout, plan_layout};
use server::{ConfiguredServer, PortChoice, ServerRequest, ServerSetup};

#[derive(Clone)]
pub struct RestoreOptions {
    pub pgdata: PathBuf,
    /// The target, and the backup if one is named.
    pub request: PlanRequest,
    pub jobs: usize,
    pub force: bool,
    /// Check and print the plan; write nothing.
    pub dry_run: bool,
    pub tablespace_map: HashMap<u32, PathBuf>,
    /// The `restore_command` to write, with `%f %p` at its end.
    pub restore_command: String,
    /// fsync everything written before reporting success (`--no-sync` turns it off).
    pub sync: bool,
    /// How the restored server archives and which port it takes.
    pub server: ServerRequest,
    pub progress: Arc<dyn crate::progress::Progress>,
    /// Run as root: the user the restored files are given to (`--owner`), over the one the
    /// backup recorded.
    pub owner: Option<Owner>,
    /// Restore only these databases (by name) and the cluster-wide files; the others' files
    /// are not read, and written as sparse files of zeros (empty: all restores).
    pub db_include: Vec<String>,
    /// Tablespaces `tablespace_map` does not name go to `<this>/<oid>` rather than to their
    /// original place (a scratch restore keeps everything under its directory).
    pub tablespace_root: Option<PathBuf>,
    /// The id of the replay claim to hold in the repository while recovery reads its WAL
    /// (`catalog::replay`); none for a dry run or where nothing needs it.
    pub claim: Option<String>,
    /// The command taking the claim, for expire's report (`restore`, `drill`…).
    pub command: &'static str,
    /// Where the configuration recorded outside the data directory goes.
    pub config: config::ConfigRequest,
    /// SIGINT, SIGTERM or SIGHUP stop the restore, the directory marked as an interrupted
    /// restore ([`Interrupt::listen`]); [`Interrupt::never`] where the caller handles signals
    /// itself (a drill's scratch restore).
    pub interrupt: Arc<Interrupt>,
}

/// In DIR while a restore writes it: a rerun takes a directory holding this for its own
/// interrupted run and starts over without `--force`. Removed before `global/pg_control`
/// is put in place, so a directory PostgreSQL can start never holds it.
pub const IN_PROGRESS_MARKER: &str = "pitr-restore.in-progress";

/// The marker's content: who wrote it, and the tablespace directories (outside DIR) the
/// restore writes, which a rerun empties too.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct InProgress {
    pid: u32,
    host: String,
    started_at: chrono::DateTime<Utc>,
    backup: String,
    #[serde(default)]
    tablespaces: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct RestoreReport {
    pub pgdata: PathBuf,
    pub plan: RestorePlan,
    /// Where each tablespace goes (or went), by OID: the only places outside DIR written.
    pub tablespaces: BTreeMap<u32, PathBuf>,
    /// Run as root: the user that owns the restored files, who must start the server.
    pub owner: Option<Owner>,
    /// Nothing was written (`--dry-run`).
    pub dry_run: bool,
    /// What restore set up for the restored server, and the command that starts it.
    pub server: ServerSetup,
    /// Timelines in the recovery path that came into the repository without a backup of
    /// their own (a restored copy that archived here?).
    pub foreign_timelines: Vec<u32>,
    pub files: usize,
    pub bytes: u64,
    /// Stored bytes of the backup objects read from the repository.
    pub bytes_read: u64,
    /// Databases not restored (`--db-include` left them out): to be dropped.
    pub excluded: Vec<Database>,
    pub elapsed: Duration,
}

pub async fn restore(catalog: &Catalog, options: &RestoreOptions) -> Result<RestoreReport> {
    let claim = match (&options.claim, options.dry_run) {
        (Some(id), false) => Some(ReplayClaim::planning(
            id,
            options.command,
            &options.pgdata.display().to_string(),
            Utc::now(),
        )),
        _ => None,
    };
    // Where no repository is (a mistyped --repo), say so before the claim would make one.
    catalog.identity().await?;
    if let Some(claim) = &claim {
        // Before the archive is read: an expire deciding meanwhile sees a restore planning
        // and removes nothing.
        catalog.put_replay_claim(claim).await?;
    }
    let mut result = restore_claimed(catalog, options, claim).await;
    if let (Err(_), Some(id)) = (&result, &options.claim) {
        // Nothing restored: nothing to hold.
        if let Err(e) = catalog.remove_replay_claim(id).await {
            tracing::warn!("could not remove the replay claim {id}: {e}");
        }
    }
    if let Err(Error::Interrupted { signal, message }) = &mut result {
        *message = interrupted_message(*signal, &options.pgdata);
    }
    result
}

/// What an interrupted restore left, and how to go on.
fn interrupted_message(signal: Signal, pgdata: &Path) -> String {
    if pgdata.join(IN_PROGRESS_MARKER).exists() {
        format!(
            "stopped by {}: {} holds a partial restore, which PostgreSQL cannot start (it has no \
             global/pg_control) and which {IN_PROGRESS_MARKER} marks as restore's own: run the \
             same pitr restore again, and it starts over without --force (or remove the \
             directory)",
            signal.name(),
            pgdata.display()
        )
    } else {
        format!(
            "stopped by {}: nothing was written to {}; run pitr restore again",
            signal.name(),
            pgdata.display()
        )
    }
}

fn stopped(signal: Signal) -> Error {
    Error::Interrupted {
        signal,
        message: format!("stopped by {}", signal.name()),
    }
}

async fn restore_claimed(
    catalog: &Catalog,
    options: &RestoreOptions,
    mut claim: Option<ReplayClaim>,
) -> Result<RestoreReport> {
    let interrupt = &*options.interrupt;
    let started = Instant::now();
    check_creatable(&options.pgdata)?;
    let identity = catalog.identity().await?;
    let list = catalog.backup_list().await?;
    if let Some(damaged) = list
        .damaged
        .iter()
        .find(|d| options.request.backup.as_ref() == Some(&d.id))
    {
        return Err(Error::Corrupt {
            what: format!("the manifest of backup {}", damaged.id),
            location: catalog.location(),
            reason: format!("{}; restore another backup", damaged.reason),
        });
    }
    for damaged in &list.damaged {
        tracing::warn!(
            "backup {} is left out: its manifest is damaged ({})",
            damaged.id,
            damaged.reason
        );
    }
    let backups = list.manifests;
    let mut view = ArchiveView::load(catalog, &identity).await?;
    // The segments receive-wal is filling count as far as their tails reach.
    for tail in view.include_tails(catalog).await? {
        tracing::info!(
            "{} is not archived whole: its tail (the first {} bytes, from pitr receive-wal) \
             counts as far as it reaches",
            tail.segment,
            tail.end
        );
    }
    let foreign = timelines_without_backup(&view, &backups);
    // The pre-flight: everything recovery needs is in the repository, or nothing is written.
    // Reads only until the directory is prepared: a signal may drop them where they stand.
    let plan = interrupt
        .race(gather_and_plan(
            catalog,
            &mut view,
            &backups,
            &options.request,
            options.jobs,
        ))
        .await
        .map_err(stopped)??
        .inspect_err(|_| {
            for timeline in &foreign {
                tracing::warn!("{}", foreign_timeline_warning(*timeline));
            }
        })?;
    // ...and every path the manifest names stays inside DIR and the tablespaces.
    let mut tablespace_map = options.tablespace_map.clone();
    if let Some(root) = &options.tablespace_root {
        for tablespace in &plan.backup.tablespaces {
            tablespace_map
                .entry(tablespace.oid)
                .or_insert_with(|| root.join(tablespace.oid.to_string()));
        }
    }
    let layout =
        plan_layout(&plan.backup, &options.pgdata, &tablespace_map).map_err(|e| match e {
            e @ LayoutError::Unsafe { .. } => Error::Corrupt {
                what: format!("the manifest of backup {}", plan.backup.id),
                location: catalog.location(),
                reason: e.to_string(),
            },
            LayoutError::TablespaceOverlap { oid, dir, reason } => Error::invalid_input(
                dir.display(),
                format!(
                    "tablespace {oid} would be restored here, but this directory {reason}: map \
                     it elsewhere with --tablespace-map {oid}=DIR"
                ),
            ),
        })?;
    // The claim names what replay needs, before the probe below proves it is all there: an
    // expire that removes any of it from now on is one that ran before the claim was seen,
    // and the probe (or archive-get, later) finds the gap.
    if let Some(claim) = &mut claim {
        claim.backup = Some(plan.backup.id.clone());
        claim.segments = segment_runs(&plan.segments);
        claim.heartbeat = Utc::now();
        catalog.put_replay_claim(claim).await?;
    }
    // ...and this user can read every object it needs (a run as root may have left objects
    // only root can read).
    let mut wal = view.files(&plan.segments);
    wal.extend(plan.histories.iter().cloned());
    interrupt
        .race(catalog.probe_restore_objects(&plan.backup, &wal, options.jobs))
        .await
        .map_err(stopped)?
        .map_err(unreadable)?;
    let excluded = excluded_databases(&plan.backup, &options.db_include)?;
    let owner = restored_owner(
        options.owner.as_ref(),
        plan.backup.cluster_owner.as_ref(),
        &options.pgdata,
    )?;
    let mut server = server::before_configuration(
        layout.pgdata(),
        &options.server,
        plan.backup.data_directory.as_deref(),
        plan.backup.pg_version,
    );
    if options.dry_run {
        // The port the restore would write, from the backup's own configuration.
        let configured = backup_configuration(catalog, &plan.backup).await;
        let (port, _) = server::probe_port(&configured, layout.pgdata(), &options.server);
        server.port = Some(port);
    }
    let foreign_timelines = foreign_in_path(&view, &foreign, plan.timeline);
    let mut report = RestoreReport {
        pgdata: options.pgdata.clone(),
        plan,
        owner,
        tablespaces: layout.tablespaces().clone(),
        dry_run: options.dry_run,
        server,
        foreign_timelines,
        files: 0,
        bytes: 0,
        bytes_read: 0,
        excluded,
        elapsed: Duration::ZERO,
    };
    if !options.dry_run {
        interrupt.check().map_err(stopped)?;
        prepare_directory(&options.pgdata, options.force, &layout)?;
        write_marker(&options.pgdata, &report.plan.backup.id, &layout)?;
        let excluded: BTreeSet<u32> = report.excluded.iter().map(|d| d.oid).collect();
        let replay_plan = claim.as_ref().map(|claim| ReplayPlan {
            format: 1,
            system_identifier: identity.system_identifier,
            wal_segment_size: identity.wal_segment_size,
            command: options.command.to_owned(),
            backup: report.plan.backup.id.clone(),
            claim: claim.id.clone(),
            claim_stale_after_secs: catalog.replay_claim_stale_after().as_secs(),
            timeline: report.plan.timeline,
            segments: claim.segments.clone(),
            histories: report
                .plan
                .histories
                .iter()
                .map(|h| h.name.to_string())
                .collect(),
            stops: report.plan.stops.clone(),
            recovery_signal_mtime_ns: 0,
            written: Utc::now(),
        });
        let result = write_backup(
            catalog,
            &report.plan.backup,
            options,
            &layout,
            report.owner.as_ref(),
            &excluded,
            replay_plan,
        )
        .await;
        match &result {
            Ok(_) => {}
            // Left as it is, under its marker, for a rerun to start over: a signal asks to
            // stop now, not to wait for a large directory to be emptied.
            Err(Error::Interrupted { .. }) => {}
            Err(_) => {
                // Nothing half-restored stays where PostgreSQL or a user could start it.
                let _ = empty_directory(&options.pgdata);
                for dir in layout.tablespaces().values() {
                    let _ = empty_directory(dir);
                }
            }
        }
        let written = result?;
        (report.files, report.bytes, report.bytes_read, report.server) = written;
        // Who owns the directory is known only now (a run as root gave it away).
        report.server.commands = server::server_commands(
            &options.pgdata,
            report.plan.backup.pg_version,
            report.server.port.as_ref().map(PortChoice::port),
            &report.server.socket_directories,
            report.plan.backup.superuser.as_deref(),
        );
        let start = &report.server.commands.start;
        if let Some(start) = config::start_command(&report.server.configuration, start) {
            report.server.commands.start = start;
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A `pgdata` that does not exist yet is created in the nearest directory above it that
/// does: refused at once (dry run too) when that one is certainly not writable for this
/// user, rather than after the pre-flight. Group rights are not looked up: a directory
/// writable by its group passes (the creation then says).
fn check_creatable(pgdata: &Path) -> Result<()> {
    if fs::symlink_metadata(pgdata).is_ok() {
        return Ok(());
    }
    let Some((parent, meta)) = pgdata
        .ancestors()
        .skip(1)
        .find_map(|dir| Some((dir, fs::metadata(dir).ok()?)))
    else {
        return Ok(());
    };
    use std::os::unix::fs::MetadataExt;
    let me = crate::ownership::effective_uid();
    let writable = if me == 0 {
        true
    } else if meta.uid() == me {
        meta.mode() & 0o200 != 0
    } else {
        meta.mode() & 0o022 != 0
    };
    if writable || !meta.is_dir() {
        return Ok(());
    }
    let user = crate::ownership::user_name(me).unwrap_or_else(|| format!("#{me}"));
    Err(Error::invalid_input(
        pgdata.display(),
        format!(
            "cannot be created: {} is not writable by {user}: create the directory first, owned \
             by {user} (as root: mkdir, then chown), or restore as root",
            parent.display()
        ),
    ))
}

/// The backup's postgresql.conf and postgresql.auto.conf, read from its objects (a dry run
/// has no restored directory to read them from); what cannot be read counts as absent.
async fn backup_configuration(catalog: &Catalog, backup: &BackupManifest) -> ConfiguredServer {
    let mut texts: [Vec<u8>; 2] = Default::default();
    for (text, name) in texts
        .iter_mut()
        .zip(["postgresql.conf", "postgresql.auto.conf"])
    {
        // A small file, stored whole in one object.
        let Some(file) = backup
            .files
            .iter()
            .find(|f| f.path == name && f.file_offset == 0)
        else {
            continue;
        };
        let local = "the backup's configuration";
        let Ok((object, _)) = catalog
            .fetch_backup_object(file.holder(&backup.id), file.object, local, Vec::new())
            .await
        else {
            continue;
        };
        let bytes = usize::try_from(file.offset)
            .ok()
            .zip(usize::try_from(file.size).ok())
            .and_then(|(start, len)| object.get(start..start.checked_add(len)?));
        if let Some(bytes) = bytes.filter(|b| crc32c::crc32c(b) == file.crc32c) {
            *text = bytes.to_vec();
        }
    }
    ConfiguredServer::parse(&texts[0], &texts[1])
}

/// The planned segments as runs of names, for the claim and the replay plan.
fn segment_runs(segments: &SegmentRuns) -> Vec<SegmentRun> {
    segments
        .runs
        .iter()
        .filter(|(_, range)| !range.is_empty())
        .map(|(timeline, range)| SegmentRun {
            timeline: *timeline,
            first: segments.name((*timeline, range.start)),
            last: segments.name((*timeline, range.end - 1)),
        })
        .collect()
}

/// The databases of `backup` that `--db-include` leaves out (none when it names none); every
/// name must be one of the backup's databases.
fn excluded_databases(backup: &BackupManifest, include: &[String]) -> Result<Vec<Database>> {
    if include.is_empty() {
        return Ok(Vec::new());
    }
    if backup.databases.is_empty() {
        return Err(Error::invalid_input(
            "--db-include",
            format!(
                "backup {} does not record its databases (taken by an older pitr): restore it \
                 whole, without --db-include, or take a new backup",
                backup.id
            ),
        ));
    }
    for name in include {
        if !backup.databases.iter().any(|d| &d.name == name) {
            let names: Vec<&str> = backup.databases.iter().map(|d| d.name.as_str()).collect();
            return Err(Error::invalid_input(
                format!("--db-include {name}"),
                format!(
                    "backup {} holds no such database; it has {}",
                    backup.id,
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(backup
        .databases
        .iter()
        .filter(|d| !include.contains(&d.name))
        .cloned()
        .collect())
}

/// An object restore needs that this user may not read: said plainly, before anything is
/// written.
fn unreadable(error: CatalogError) -> Error {
    if !error.is_permission_denied() {
        return error.into();
    }
    Error::Incomplete(format!(
        "{error}: this user cannot read an object the restore needs (written by another user, \
         such as a run as root?); run pitr as the repository's owner or give the objects to \
         this user (chown -R); nothing was written"
    ))
}

/// Whom a restore run as root gives the files to: `--owner`, else the data directory's owner
/// the backup recorded (by name where this system knows it), else the owner of DIR's parent,
/// else `postgres`; never root, which PostgreSQL refuses to run as. None when not root.
fn restored_owner(
    requested: Option<&Owner>,
    recorded: Option<&Owner>,
    pgdata: &Path,
) -> Result<Option<Owner>> {
    if !running_as_root() {
        // Files are then this user's, whoever was asked for.
        return match requested {
            Some(owner) if owner.uid != crate::ownership::effective_uid() => {
                Err(Error::Config(format!(
                    "--owner {}: only root can give the restored files to another user",
                    owner.name()
                )))
            }
            _ => Ok(None),
        };
    }
    if let Some(owner) = requested {
        if owner.is_root() {
            return Err(Error::Config(
                "--owner: PostgreSQL does not run as root; name the user that will run it".into(),
            ));
        }
        return Ok(Some(owner.clone()));
    }
    let recorded = recorded.and_then(|owner| match &owner.user {
        Some(name) => Owner::user(name),
        None => Some(owner.clone()),
    });
    let parent = || pgdata.parent().and_then(|p| Owner::of(p).ok());
    [recorded, parent(), Owner::user("postgres")]
        .into_iter()
        .flatten()
        .find(|owner| !owner.is_root())
        .map(Some)
        .ok_or_else(|| {
            Error::Config(
                "run as root, restore gives the restored files to the cluster's owner, but the \
                 backup records none known here, DIR's parent is root's and there is no user \
                 postgres: name one with --owner USER"
                    .into(),
            )
        })
}

/// The timelines of `foreign` that recovery to `timeline` passes through.
fn foreign_in_path(view: &ArchiveView, foreign: &[u32], timeline: u32) -> Vec<u32> {
    let path = view.path(timeline).unwrap_or_default();
    foreign
        .iter()
        .copied()
        .filter(|t| path.iter().any(|span| span.timeline == *t))
        .collect()
}

/// Tablespaces go to their original place or as mapped; those directories must be empty or
/// absent.
fn check_tablespace_directories(layout: &RestoreLayout) -> Result<()> {
    for (oid, dir) in layout.tablespaces() {
        if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Error::invalid_input(
                dir.display(),
                format!(
                    "tablespace {oid} would be restored here, but the directory is not empty: \
                     empty it or map the tablespace elsewhere with --tablespace-map {oid}=DIR"
                ),
            ));
        }
    }
    Ok(())
}

/// DIR must be absent or empty (or `--force`), no postmaster may be running in it, and the
/// tablespaces' directories must be empty or absent: all checked before DIR is touched.
fn prepare_directory(pgdata: &Path, force: bool, layout: &RestoreLayout) -> Result<()> {
    if fs::metadata(pgdata).is_ok_and(|meta| !meta.is_dir()) {
        return Err(Error::invalid_input(
            pgdata.display(),
            "is a file, not a directory: give --pgdata a new or empty directory",
        ));
    }
    if let Some(pid) = running_postmaster(pgdata) {
        return Err(Error::invalid_input(
            pgdata.display(),
            format!("a postmaster (pid {pid}) is running in this directory: stop it first"),
        ));
    }
    let occupied = match fs::read_dir(pgdata) {
        Ok(mut entries) => Some(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(Error::invalid_input(
                pgdata.display(),
                "a part of this path is a file, not a directory: give --pgdata a new or \
                 empty directory",
            ));
        }
        Err(e) => return Err(Error::local_io(pgdata.display(), e)),
    };
    let interrupted = match occupied {
        Some(true) => interrupted_restore(pgdata),
        _ => None,
    };
    if occupied == Some(true) && !force && interrupted.is_none() {
        return Err(Error::invalid_input(
            pgdata.display(),
            "is not empty: restore into an empty directory, or pass --force to replace its \
             contents",
        ));
    }
    if let Some(earlier) = &interrupted {
        tracing::warn!(
            "{} holds an interrupted restore of backup {} (pid {} on {}, started {}): \
             starting it over",
            pgdata.display(),
            earlier.backup,
            earlier.pid,
            earlier.host,
            earlier
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        // Its tablespace directories hold its files too; only those this restore writes
        // again, which are checked to be empty below otherwise.
        for dir in layout.tablespaces().values() {
            if earlier.tablespaces.contains(dir) {
                empty_directory(dir).map_err(|e| Error::local_io(dir.display(), e))?;
            }
        }
    }
    check_tablespace_directories(layout)?;
    match occupied {
        Some(true) => empty_directory(pgdata).map_err(|e| Error::local_io(pgdata.display(), e))?,
        Some(false) => {}
        None => fs::create_dir_all(pgdata).map_err(|e| Error::local_io(pgdata.display(), e))?,
    }
    fs::set_permissions(pgdata, fs::Permissions::from_mode(layout.root_mode()))
        .map_err(|e| Error::local_io(pgdata.display(), e))
}

/// The marker of an interrupted restore in `pgdata`, if it holds one and is not startable
/// (a directory with `global/pg_control` was finished, or made by someone else).
fn interrupted_restore(pgdata: &Path) -> Option<InProgress> {
    if pgdata.join(CONTROL_FILE).exists() {
        return None;
    }
    let text = fs::read(pgdata.join(IN_PROGRESS_MARKER)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Marks DIR as being written by this restore, before anything else is written to it.
fn write_marker(pgdata: &Path, backup: &str, layout: &RestoreLayout) -> Result<()> {
    let marker = InProgress {
        pid: std::process::id(),
        host: crate::host_name().unwrap_or_default(),
        started_at: Utc::now(),
        backup: backup.to_owned(),
        tablespaces: layout.tablespaces().values().cloned().collect(),
    };
    let path = pgdata.join(IN_PROGRESS_MARKER);
    let json = serde_json::to_vec_pretty(&marker).expect("the marker serialises");
    crate::private_fs::write(&path, json).map_err(|e| Error::local_io(path.display(), e))
}

fn empty_directory(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Creates a directory of the restore (and missing ancestors) with `mode`, never through a
/// symbolic link already there.
fn create_restored_dir(dir: &Path, mode: u32) -> Result<()> {
    if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::invalid_input(
            dir.display(),
            "is a symbolic link: restore does not write through one",
        ));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(mode)))
        .map_err(|e| Error::local_io(dir.display(), e))
}

async fn write_backup(
    catalog: &Catalog,
    backup: &BackupManifest,
    options: &RestoreOptions,
    layout: &RestoreLayout,
    owner: Option<&Owner>,
    excluded: &BTreeSet<u32>,
    replay_plan: Option<ReplayPlan>,
) -> Result<(usize, u64, u64, ServerSetup)> {
    let interrupt = &*options.interrupt;
    let pgdata = layout.pgdata().to_owned();
    for dir in layout.tablespaces().values() {
        create_restored_dir(dir, layout.root_mode())?;
    }
    for directory in &backup.directories {
        let path = &directory.path;
        // The layout proved every link names a declared tablespace, listed once.
        if let Some(target) = layout.link_target(path) {
            let (links, link) = (pgdata.join("pg_tblspc"), pgdata.join(path));
            if !links.is_dir() {
                create_restored_dir(&links, layout.root_mode())?;
            }
            symlink(target, &link).map_err(|e| Error::local_io(link.display(), e))?;
            continue;
        }
        create_restored_dir(&layout.destination(path), layout.dir_mode(directory.mode))?;
    }

    // Objects in parallel, each from the backup of the chain that holds it; each writes
    // its files and checks their CRC-32C. A file rebuilt from a chain gets every block from
    // the newest entry holding it, so its entries may be written in any order.
    let layers = Arc::new(Layers::new(&backup.files, backup.block_size));
    let mut by_object: BTreeMap<(String, u32), Vec<BackupFile>> = BTreeMap::new();
    let mut file_sizes: HashMap<String, u64> = HashMap::new();
    for file in &backup.files {
        by_object
            .entry((file.holder(&backup.id).to_owned(), file.object))
            .or_default()
            .push(file.clone());
        if file.delta.is_none() {
            let end = file_sizes.entry(file.path.clone()).or_default();
            *end = (*end).max(file.file_offset.saturating_add(file.size));
        }
    }
    for (path, size) in layers.final_sizes() {
        file_sizes.insert(path.to_owned(), size);
    }
    // Objects of excluded databases alone are not read: their files become sparse files of
    // zeros, the size they had (recovery's full-page images rewrite what it touches).
    let (skipped, read): (Vec<_>, Vec<_>) = by_object.into_iter().partition(|(_, files)| {
        files
            .iter()
            .all(|f| database_of(&f.path).is_some_and(|oid| excluded.contains(&oid)))
    });
    for (_, files) in &skipped {
        for file in files {
            let size = file_sizes.get(file.path.as_str()).copied().unwrap_or(0);
            write_sparse(
                &layout.destination(&file.path),
                size,
                layout.file_mode(file.mode),
            )?;
        }
    }
    let to_read = crate::catalog::total_bytes(read.iter().flat_map(|(_, f)| f).map(|f| f.size));
    // Each object's files in the order of their bytes in it: a backup over the replication
    // protocol bundles them in the order the server sent them, not by path.
    let by_object: BTreeMap<(String, u32), Vec<BackupFile>> = read
        .into_iter()
        .map(|(object, mut files)| {
            files.sort_by_key(|f| f.offset);
            (object, files)
        })
        .collect();
    let file_sizes = Arc::new(file_sizes);
    let layout = Arc::new(layout.clone());
    // Interleave objects from the two ends of the list: parts of one large file (adjacent
    // objects) are then rarely written at once, which would serialize on the file's lock.
    let mut objects: Vec<((String, u32), Vec<BackupFile>)> = by_object.into_iter().collect();
    let mut interleaved = Vec::with_capacity(objects.len());
    while !objects.is_empty() {
        interleaved.push(objects.remove(0));
        if let Some(last) = objects.pop() {
            interleaved.push(last);
        }
    }
    options
        .progress
        .start(&format!("restore {}", backup.id), to_read);
    // On a failure no new object starts, and every started one runs to its end before this
    // returns: the caller then empties the directory with no writer left behind.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<(u64, u64)>> = stream::iter(interleaved)
        .map(|((holder, object), files)| {
            let splitter = FileSplitter {
                start_writeback: options.sync,
                partial: holder != backup.id,
                ..FileSplitter::new(files, file_sizes.clone(), layout.clone(), layers.clone())
            };
            let (progress, failed) = (options.progress.clone(), &failed);
            async move {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok((0, 0));
                }
                if let Err(signal) = interrupt.check() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(stopped(signal));
                }
                let written = restore_object(catalog, &holder, object, splitter).await;
                match &written {
                    Ok((bytes, _)) => progress.advance(*bytes),
                    Err(_) => failed.store(true, std::sync::atomic::Ordering::Relaxed),
                }
                written
            }
        })
        .buffer_unordered(options.jobs.max(1))
        .collect()
        .await;
    options.progress.finish();
    let written: Vec<(u64, u64)> = results.into_iter().collect::<Result<_>>()?;
    interrupt.check().map_err(stopped)?;
    // A file rebuilt from a chain takes its newest size: cut where it was truncated, or
    // extended with zeros where PostgreSQL extended it.
    for (path, size) in layers.final_sizes() {
        let destination = layout.destination(path);
        fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&destination)
            .and_then(|file| file.set_len(size))
            .map_err(|e| Error::local_io(destination.display(), e))?;
    }

    let tablespace_map = backup.tablespace_map.as_ref().map(|map| {
        // Lines are "<oid> <path>": point them at where the tablespaces now are.
        map.lines()
            .map(|line| match line.split_once(' ') {
                Some((oid, _)) => match oid.parse().ok().and_then(|o| layout.tablespaces().get(&o))
                {
                    Some(dir) => format!("{oid} {}\n", dir.display()),
                    None => format!("{line}\n"),
                },
                None => format!("{line}\n"),
            })
            .collect::<String>()
    });
    let write = |name: &str, content: &str| write_private_file(&pgdata.join(name), content);
    write("backup_label", &backup.backup_label)?;
    if let Some(map) = &tablespace_map {
        write("tablespace_map", map)?;
    }
    write("recovery.signal", "")?;
    // The configuration recorded outside the data directory, where the server reads it.
    let configuration = config::place(catalog, backup, &options.config, &pgdata, owner).await?;
    // Read from the restored configuration, before the settings below are added to it.
    let mut server = server::gather(
        &pgdata,
        &options.server,
        backup.data_directory.as_deref(),
        configuration.config_file.as_deref(),
    );
    config::settle(&configuration, &server.settings())?;
    server.configuration = configuration;
    // The timeline the pre-flight planned, named: recovery then follows the history that was
    // checked (not one archived since), and asks for a newer timeline's history file only
    // when it promotes, which tells archive-get that replay is over.
    let mut request = options.request.clone();
    if let Some(plan) = &replay_plan {
        request.recovery.timeline = Some(TargetTimeline::Number(plan.timeline));
    }
    append_recovery_settings(
        &pgdata,
        &options.restore_command,
        &request,
        &server.settings(),
    )?;
    if let Some(mut plan) = replay_plan {
        // Bound to this recovery.signal: PostgreSQL removes it at promotion.
        let signal = pgdata.join("recovery.signal");
        plan.recovery_signal_mtime_ns =
            replay_plan::mtime_ns(&signal).map_err(|e| Error::local_io(signal.display(), e))?;
        let wal_dir = pgdata.join("pg_wal");
        crate::private_fs::create_dir_all(&wal_dir)
            .and_then(|()| replay_plan::write(&wal_dir, &plan))
            .map_err(|e| Error::local_io(wal_dir.join(replay_plan::PLAN_FILE).display(), e))?;
    }
    // pg_verifybackup would take the excluded databases' empty files for corruption.
    if excluded.is_empty() {
        let written = config::written_in(&server.configuration, &pgdata)?;
        write_postgres_manifest(&layout, backup, tablespace_map.as_deref(), &written)?;
    }
    if let Some(owner) = owner {
        // Before the sync, which makes the new owners durable too.
        for root in std::iter::once(&pgdata).chain(layout.tablespaces().values()) {
            give_tree_to(root, owner).map_err(|e| Error::local_io(root.display(), e))?;
        }
    }
    if options.sync {
        interrupt.check().map_err(stopped)?;
        let mut roots = vec![pgdata.clone()];
        roots.extend(layout.tablespaces().values().cloned());
        sync_restored(roots, options.jobs).await?;
    }
    interrupt.check().map_err(stopped)?;
    // The marker goes before the directory becomes startable (durably so, when syncing): a
    // directory a server may have run in is never taken for an interrupted restore.
    let marker = pgdata.join(IN_PROGRESS_MARKER);
    fs::remove_file(&marker)
        .and_then(|()| {
            if options.sync {
                File::open(&pgdata)?.sync_all()
            } else {
                Ok(())
            }
        })
        .map_err(|e| Error::local_io(marker.display(), e))?;
    // Last, once everything else is durable: the file that makes the directory startable.
    let (restoring, control) = (
        pgdata.join(CONTROL_FILE_RESTORING),
        pgdata.join(CONTROL_FILE),
    );
    fs::rename(&restoring, &control).map_err(|e| Error::local_io(restoring.display(), e))?;
    if options.sync {
        let global = pgdata.join("global");
        File::open(&global)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::local_io(global.display(), e))?;
    }
    Ok((
        backup.file_count(),
        crate::catalog::total_bytes(written.iter().map(|w| w.0)),
        crate::catalog::total_bytes(written.iter().map(|w| w.1)),
        server,
    ))
}

/// A file of an excluded database: its size in zeros, no block allocated.
fn write_sparse(path: &Path, size: u64, mode: u32) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|file| {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.set_len(size)
        })
        .map_err(|e| Error::local_io(path.display(), e))
}

async fn restore_object(
    catalog: &Catalog,
    holder: &str,
    object: u32,
    splitter: FileSplitter,
) -> Result<(u64, u64)> {
    let local = "the restored files";
    let (splitter, stored) = match catalog
        .fetch_backup_object(holder, object, local, splitter)
        .await
    {
        Ok((splitter, summary)) => (splitter, summary.stored_len),
        // A file whose CRC-32C does not match is corruption, whichever side found it.
        Err(CatalogError::Local { source, .. }) if source.kind() == io::ErrorKind::InvalidData => {
            return Err(Error::Corrupt {
                what: format!("backup {holder}"),
                location: catalog.location(),
                reason: source.to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let written = blocking(move || splitter.finish()).await?;
    Ok((written, stored))
}

/// Cuts an object's decoded bytes into its files, checking each file's CRC-32C.
struct FileSplitter {
    files: Vec<BackupFile>,
    /// Whole sizes of files stored in parts, to reserve their blocks at once.
    file_sizes: Arc<HashMap<String, u64>>,
    layout: Arc<RestoreLayout>,
    /// Files rebuilt from a chain: which of an entry's blocks it writes.
    layers: Arc<Layers>,
    index: usize,
    current: Option<(File, u64, u32)>,
    /// The current entry's blocks, when it is a delta.
    delta_blocks: Vec<u32>,
    /// Some of the object's files are not restored from it (another backup's object).
    partial: bool,
    /// Bytes of the object passed so far.
    position: u64,
    written: u64,
    /// Start writing each finished file to disk at once, so that the final fsync pass finds
    /// little left to wait for.
    start_writeback: bool,
}

impl FileSplitter {
    fn new(
        files: Vec<BackupFile>,
        file_sizes: Arc<HashMap<String, u64>>,
        layout: Arc<RestoreLayout>,
        layers: Arc<Layers>,
    ) -> Self {
        FileSplitter {
            files,
            file_sizes,
            layout,
            layers,
            index: 0,
            current: None,
            delta_blocks: Vec::new(),
            partial: false,
            position: 0,
            written: 0,
            start_writeback: false,
        }
    }

    /// Opens the next file, and closes the ones that are empty.
    fn advance(&mut self) -> io::Result<()> {
        while self.current.is_none() && self.index < self.files.len() {
            let file = &self.files[self.index];
            let path = self.layout.destination(&file.path);
            let mode = self.layout.file_mode(file.mode);
            // Parts of one file are written by several workers, each at its offset; never
            // through a symbolic link.
            let mut handle = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            handle.set_permissions(fs::Permissions::from_mode(mode))?;
            if file.file_offset == 0 && file.delta.is_none() {
                preallocate(&handle, self.file_sizes.get(file.path.as_str()).copied());
            } else {
                io::Seek::seek(&mut handle, io::SeekFrom::Start(file.file_offset))?;
            }
            self.delta_blocks = layers::delta_blocks(file.delta.as_ref());
            self.current = Some((handle, 0, 0));
            self.close_if_complete()?;
        }
        Ok(())
    }

    fn close_if_complete(&mut self) -> io::Result<()> {
        let file = &self.files[self.index];
        if let Some((_, length, crc)) = &self.current
            && *length == file.size
        {
            if *crc != file.crc32c {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: checksum mismatch after restore", file.path),
                ));
            }
            if self.start_writeback
                && let Some((handle, _, _)) = &self.current
            {
                start_writeback(handle, file.file_offset, file.size);
            }
            self.current = None;
            self.index += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<u64> {
        self.advance()
            .map_err(|e| Error::local_io(self.layout.pgdata().display(), e))?;
        if self.index < self.files.len() {
            return Err(Error::Corrupt {
                what: self.files[self.index].path.clone(),
                location: "the backup".into(),
                reason: "the object ends before the file does".into(),
            });
        }
        Ok(self.written)
    }
}

impl Write for FileSplitter {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            self.advance()?;
            // Bytes of files this restore does not take from the object (an older backup's
            // object, of which a chain takes some files): passed over.
            let next = self.files.get(self.index).map_or(u64::MAX, |f| f.offset);
            if self.partial && self.position < next {
                let skip = (next - self.position).min(data.len() as u64) as usize;
                self.position += skip as u64;
                data = &data[skip..];
                continue;
            }
            let Some((handle, length, crc)) = &mut self.current else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the object holds more than its files",
                ));
            };
            let entry = &self.files[self.index];
            let want = (entry.size - *length) as usize;
            let n = want.min(data.len());
            let written = if self.layers.final_size(&entry.path).is_some() {
                write_layered(
                    handle,
                    entry,
                    &self.delta_blocks,
                    &self.layers,
                    *length,
                    &data[..n],
                )?
            } else {
                handle.write_all(&data[..n])?;
                n as u64
            };
            self.position += n as u64;
            *crc = crc32c::crc32c_append(*crc, &data[..n]);
            // In a large file, write-back starts every WRITEBACK_STEP, not only at its end
            // (a delta's blocks are few, and written where they go).
            let before = *length / WRITEBACK_STEP;
            *length += n as u64;
            if self.start_writeback && entry.delta.is_none() && *length / WRITEBACK_STEP > before {
                let done = before * WRITEBACK_STEP;
                start_writeback(handle, entry.file_offset + done, *length - done);
            }
            self.written += written;
            data = &data[n..];
            self.close_if_complete()?;
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the bytes `data` of a layered file's entry, which start `at` bytes into the
/// entry, block by block where the entry is the newest holder; returns the bytes written.
fn write_layered(
    handle: &File,
    entry: &BackupFile,
    delta_blocks: &[u32],
    layers: &Layers,
    at: u64,
    data: &[u8],
) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let block_size = layers.block_size();
    let depth = entry.delta.as_ref().map_or(0, |d| d.depth);
    let Some(layered) = layers.file(&entry.path) else {
        handle.write_all_at(data, entry.file_offset + at)?;
        return Ok(data.len() as u64);
    };
    let mut position = at;
    let mut written = 0;
    // Blocks this entry writes that follow each other in the file go in one write.
    let mut run: Option<(u64, usize, usize)> = None; // file offset, start in data, length
    let mut consumed = 0;
    while consumed < data.len() {
        let (index, within) = (position / block_size, position % block_size);
        let n = ((block_size - within) as usize).min(data.len() - consumed);
        let block = layers::block_of(entry, delta_blocks, index, block_size);
        if layered.writes(depth, block, block_size) {
            let offset = match entry.delta {
                Some(_) => block * block_size + within,
                None => entry.file_offset + position,
            };
            run = match run {
                Some((start, from, len)) if start + len as u64 == offset => {
                    Some((start, from, len + n))
                }
                other => {
                    if let Some((start, from, len)) = other {
                        handle.write_all_at(&data[from..from + len], start)?;
                        written += len as u64;
                    }
                    Some((offset, consumed, n))
                }
            };
        }
        position += n as u64;
        consumed += n;
    }
    if let Some((start, from, len)) = run {
        handle.write_all_at(&data[from..from + len], start)?;
        written += len as u64;
    }
    Ok(written)
}

/// restore_command, the recovery target and the server's own settings (`archive_mode`,
/// `port`), after what postgresql.auto.conf holds less the recovery settings the backup
/// carried (commented out: another target kind beside ours stops the server). Written beside
/// the file, synced and renamed: never a half-written config.
fn append_recovery_settings(
    pgdata: &Path,
    restore_command: &str,
    request: &PlanRequest,
    server_settings: &[String],
) -> Result<()> {
    let mut lines = vec![String::new(), "# Written by pitr restore.".to_owned()];
    lines.extend(recovery_settings(restore_command, &request.recovery));
    lines.extend(server_settings.iter().cloned());
    let path = pgdata.join("postgresql.auto.conf");
    let carried = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::local_io(path.display(), e)),
    };
    let mut content = remove_recovery_settings(&carried);
    content.extend_from_slice(format!("{}\n", lines.join("\n")).as_bytes());
    let staging = pgdata.join("postgresql.auto.conf.pitr-restore");
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .and_then(|mut file| {
            file.write_all(&content)?;
            file.sync_all()
        })
        .map_err(|e| Error::local_io(staging.display(), e))?;
    fs::rename(&staging, &path).map_err(|e| Error::local_io(path.display(), e))
}

/// PostgreSQL's backup_manifest for the restored files, for pg_verifybackup.
fn write_postgres_manifest(
    layout: &RestoreLayout,
    backup: &BackupManifest,
    tablespace_map: Option<&str>,
    configuration: &[config::WrittenFile],
) -> Result<()> {
    let now = Utc::now().timestamp();
    let label_crc = crc32c::crc32c(backup.backup_label.as_bytes());
    let map_crc = tablespace_map.map(|m| crc32c::crc32c(m.as_bytes()));
    let mut entries: Vec<ManifestEntry<'_>> = vec![ManifestEntry {
        path: "backup_label",
        size: backup.backup_label.len() as u64,
        mtime: now,
        crc32c: Some(label_crc),
    }];
    if let (Some(map), Some(crc)) = (tablespace_map, map_crc) {
        entries.push(ManifestEntry {
            path: "tablespace_map",
            size: map.len() as u64,
            mtime: now,
            crc32c: Some(crc),
        });
    }
    // One entry per file: parts combine into the whole file's CRC-32C. A file rebuilt from
    // a chain has its size and no checksum (none was taken of the whole).
    let layers = Layers::new(&backup.files, backup.block_size);
    let mut whole: BTreeMap<&str, (u64, i64, Option<u32>)> = BTreeMap::new();
    for (path, size) in layers.final_sizes() {
        whole.insert(path, (size, now, None));
    }
    for part in &backup.files {
        // pg_verifybackup skips postgresql.auto.conf, which restore has changed.
        if part.path == "postgresql.auto.conf" || layers.final_size(&part.path).is_some() {
            continue;
        }
        let entry = whole.entry(&part.path).or_insert((0, part.mtime, Some(0)));
        if part.file_offset != entry.0 {
            // A gap (the file shrank and grew during the backup): checksum what was written.
            let path = layout.destination(&part.path);
            let bytes = fs::read(&path).map_err(|e| Error::local_io(path.display(), e))?;
            *entry = (bytes.len() as u64, part.mtime, Some(crc32c::crc32c(&bytes)));
            continue;
        }
        entry.2 = entry
            .2
            .map(|crc| crc32c::crc32c_combine(crc, part.crc32c, part.size as usize));
        entry.0 = entry.0.saturating_add(part.size);
    }
    // The configuration restore wrote into the directory, and the files it kept beside.
    for file in configuration {
        whole.insert(&file.path, (file.size, now, Some(file.crc32c)));
    }
    entries.extend(
        whole
            .iter()
            .map(|(path, (size, mtime, crc32c))| ManifestEntry {
                path,
                size: *size,
                mtime: *mtime,
                crc32c: *crc32c,
            }),
    );
    let text = render(&entries, backup.timeline, backup.start_lsn, backup.stop_lsn);
    write_private_file(&layout.pgdata().join("backup_manifest"), &text)
}

/// A file of the restored directory, readable by its owner only, as PostgreSQL's are.
fn write_private_file(path: &Path, content: &str) -> Result<()> {
    fs::write(path, content)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o600)))
        .map_err(|e| Error::local_io(path.display(), e))
}

/// fsyncs every file and directory under `roots` (the data directory and the tablespaces),
/// many at once: a restore reported done survives a power loss.
async fn sync_restored(roots: Vec<PathBuf>, jobs: usize) -> Result<()> {
    let paths = blocking(move || {
        let mut paths = Vec::new();
        let mut pending = roots;
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).map_err(|e| Error::local_io(dir.display(), e))? {
                let entry = entry.map_err(|e| Error::local_io(dir.display(), e))?;
                let kind = entry
                    .file_type()
                    .map_err(|e| Error::local_io(entry.path().display(), e))?;
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() {
                    paths.push(entry.path());
                }
                // Tablespace links: their targets are roots of their own.
            }
            paths.push(dir);
        }
        Ok(paths)
    })
    .await?;
    let batches: Vec<Vec<PathBuf>> = paths.chunks(16).map(<[PathBuf]>::to_vec).collect();
    stream::iter(batches)
        .map(|batch| {
            blocking(move || {
                for path in batch {
                    File::open(&path)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| Error::local_io(path.display(), e))?;
                }
                Ok(())
            })
        })
        // fsync mostly waits for the journal: many in flight share its commits.
        .buffer_unordered(jobs.max(1) * 8)
        .try_collect::<()>()
        .await
}

/// How much of a large file is written before its write-back is started.
const WRITEBACK_STEP: u64 = 4 << 20;

/// Asks the kernel to write a range of a file to disk now, without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, as PostgreSQL's initdb does before its fsyncs):
/// write-back overlaps the rest of the restore. Best effort; the fsync pass makes it durable.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let _ = crate::sys::start_writeback(file, offset, len);
}

/// Reserves a file's blocks at once rather than page by page as data arrives (less work
/// for the filesystem); the size is left alone. Best effort.
fn preallocate(file: &File, len: Option<u64>) {
    if let Some(len) = len {
        let _ = crate::sys::preallocate(file, len);
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn a_root_restore_never_gives_the_files_to_root() {
        if !running_as_root() {
            return; // only root chooses an owner
        }
        let root = Owner::user("root").unwrap();
        let nobody = Owner {
            user: None,
            uid: 65534,
            gid: 65534,
        };
        let dir = Path::new("/tmp/no-such-parent-pitr/data");
        assert!(matches!(
            restored_owner(Some(&root), None, dir),
            Err(Error::Config(_))
        ));
        assert_eq!(
            restored_owner(Some(&nobody), Some(&root), dir).unwrap(),
            Some(nobody.clone())
        );
        // A recorded owner known only by number is taken as recorded.
        assert_eq!(
            restored_owner(None, Some(&nobody), dir).unwrap(),
            Some(nobody.clone())
        );
        // A recorded root, and a parent that is root's, fall through to postgres (if any).
        let fallback = restored_owner(None, Some(&root), Path::new("/data"));
        match Owner::user("postgres") {
            Some(postgres) => assert_eq!(fallback.unwrap(), Some(postgres)),
            None => assert!(matches!(fallback, Err(Error::Config(_)))),
        }
    }
}

#[cfg(test)]
mod marker_tests {
    use super::*;

    #[test]
    fn only_a_marked_directory_without_pg_control_is_an_interrupted_restore() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path();
        assert!(interrupted_restore(pgdata).is_none());
        let marker = InProgress {
            pid: 42,
            host: "db1".into(),
            started_at: Utc::now(),
            backup: "20261207T010000Z".into(),
            tablespaces: vec![PathBuf::from("/srv/ts")],
        };
        fs::write(
            pgdata.join(IN_PROGRESS_MARKER),
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
        let found = interrupted_restore(pgdata).expect("marked");
        assert_eq!(
            (found.backup.as_str(), found.tablespaces),
            ("20261207T010000Z", vec![PathBuf::from("/srv/ts")])
        );
        // A directory that can be started was finished (or made by someone else).
        fs::create_dir(pgdata.join("global")).unwrap();
        fs::write(pgdata.join(CONTROL_FILE), b"").unwrap();
        assert!(interrupted_restore(pgdata).is_none());
        // Nor is a marker that does not parse taken for one.
        fs::remove_file(pgdata.join(CONTROL_FILE)).unwrap();
        fs::write(pgdata.join(IN_PROGRESS_MARKER), b"{").unwrap();
        assert!(interrupted_restore(pgdata).is_none());
    }
}
