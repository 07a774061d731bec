//! `pitr backup`: a base backup of a running cluster into the repository.
//!
//! Non-exclusive: `pg_backup_start` and `pg_backup_stop` on one session, which ends the
//! backup if pitr dies. Files are streamed through the codec by `jobs` workers; files up to
//! [`BUNDLE_FILE_LIMIT`] are packed into bundles so that many tiny files cost few objects.
//! The manifest is written last: a backup interrupted at any point is never listed.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};

use crate::catalog::backup::{
    BackupDirectory, BackupFile, BackupManifest, BackupMethod, BackupType,
    INCREMENTAL_MANIFEST_FORMAT, MANIFEST_FORMAT, Tablespace,
};
use crate::catalog::{Catalog, RepositoryIdentity, total_bytes};
use crate::datadir::read_control;
use crate::error::{Error, Result};
use crate::interrupt::{Interrupt, Signal};
use crate::pg::WalFileName;
use crate::pg::backup_label::parse_backup_label;
use crate::pg::basebackup::{Disposition, classify, is_database_directory, unlogged_files};
use crate::pg::relpath::database_of;
use crate::pg::timeline::{HistoryEntry, parse_history, stop_segment_name};
use crate::pg::wal_name::backup_history_file_name;
use crate::server::{ArchiverStats, Session, connection_settings};

use super::blocking;
use incremental::DeltaJob;

mod config;
mod incremental;
mod inflate;
mod remote;
mod server_wal;
mod wal_receiver;

/// Files up to this size are packed together.
pub const BUNDLE_FILE_LIMIT: u64 = 256 << 10;
/// A bundle is closed once it holds this much.
pub const BUNDLE_SIZE: u64 = 8 << 20;
/// Files larger than this are stored in parts of this size, copied and restored in parallel.
pub const PART_SIZE: u64 = 32 << 20;

#[derive(Clone)]
pub struct BackupOptions {
    pub pgdata: Option<PathBuf>,
    pub dbname: Option<String>,
    pub fast: bool,
    pub jobs: usize,
    pub wal_timeout: Duration,
    pub progress: std::sync::Arc<dyn crate::progress::Progress>,
    /// Full, or built on a parent (`--type`).
    pub backup_type: BackupType,
    /// Keep this backup whatever the retention policy says (`--pin`).
    pub pin: bool,
    /// Notes shown by `list` (`--annotate key=value`).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// How the files are read (`--method`).
    pub method: BackupMethodChoice,
    /// Server-side throttling of a backup over the replication protocol, in kB/s.
    pub max_rate_kb: Option<u32>,
    /// How a backup over the replication protocol gets its WAL (`--wal-method`).
    pub wal_method: WalMethod,
    /// Whether the server compresses what it sends (`--network-compression`).
    pub network_compression: NetworkCompression,
}

/// `--network-compression`: whether the server compresses a backup over the replication
/// protocol before sending it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkCompression {
    /// LZ4 where the server can (PostgreSQL 15 and later, built with lz4) and is on another
    /// host; none elsewhere.
    #[default]
    Auto,
    /// LZ4, or the backup fails.
    Lz4,
    /// The files as they are.
    None,
}

/// `--wal-method`: where the WAL a backup over the replication protocol needs comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WalMethod {
    /// From the archive when the server's archiver is seen storing into this repository,
    /// otherwise streamed.
    #[default]
    Auto,
    /// Through the server's archive_command, awaited until `--wal-timeout`.
    Archive,
    /// Over a second replication connection with a temporary slot, stored into the
    /// repository as archive-push stores it (`pg_basebackup -X stream`).
    Stream,
}

/// `--method`: how the backup reads the cluster's files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackupMethodChoice {
    /// The data directory when it is on this host (`--pgdata`, or the server's
    /// `data_directory` where it exists here), otherwise the replication protocol.
    #[default]
    Auto,
    /// The data directory on this host, with `pg_backup_start`/`pg_backup_stop`.
    Local,
    /// `BASE_BACKUP` over a replication connection, from any host.
    Replication,
}

#[derive(Debug)]
pub struct BackupReport {
    pub manifest: BackupManifest,
    pub objects: u32,
    pub elapsed: Duration,
}

/// A file found in the data directory, or the part of it from `offset`.
#[derive(Clone, Debug)]
struct SourceFile {
    path: String,
    absolute: PathBuf,
    offset: u64,
    size: u64,
    mode: u32,
    mtime: i64,
}

/// Takes a backup under the repository lock, which it holds for the whole run: a second
/// backup (or an expire) meanwhile is refused at once, naming this one. SIGINT, SIGTERM and
/// SIGHUP stop it at the next object: what it wrote is removed, the lock released.
pub async fn backup(catalog: &Catalog, options: &BackupOptions) -> Result<BackupReport> {
    let started = Instant::now();
    let interrupt = Interrupt::listen();
    let identity = catalog.identity().await?;
    let lock = catalog.lock("backup").await?;
    let result = backup_locked(catalog, options, identity, started, &interrupt).await;
    lock.release().await;
    result
}

/// A stop before the backup claimed its id: nothing of it is in the repository.
fn stopped_before_writing(signal: Signal) -> Error {
    Error::Interrupted {
        signal,
        message: format!(
            "stopped by {}: nothing was written to the repository; run pitr backup again",
            signal.name()
        ),
    }
}

/// A stop after the claim; [`backup_locked`] says what its cleanup left.
fn stopped(signal: Signal) -> Error {
    Error::Interrupted {
        signal,
        message: format!("stopped by {}", signal.name()),
    }
}

/// The files an object holds, and its stored size.
pub(super) type CopiedObject = (Vec<BackupFile>, u64);

/// What is known before the backup's id is claimed, by how the files are read.
#[allow(clippy::large_enum_variant)] // one value per backup run
enum Prepared {
    Local(LocalPrepared),
    Remote(remote::Prepared),
}

/// Where the files come from, once a method is chosen.
enum Source {
    Local { session: Session, pgdata: PathBuf },
    Replication { session: Option<Session> },
}

/// A backup of PostgreSQL `server_major` into a repository of another major version.
fn wrong_major(server_major: u32, identity: &RepositoryIdentity) -> Result<()> {
    if server_major != identity.pg_version {
        return Err(Error::WrongRepository(format!(
            "the server runs PostgreSQL {server_major} but the repository holds PostgreSQL {}: \
             after pg_upgrade, start a new repository (pitr init) for the upgraded cluster",
            identity.pg_version
        )));
    }
    Ok(())
}

/// Chooses how the files are read: `--method`, or for `auto` the data directory when it is
/// on this host, the replication protocol when it is not (or no SQL session opens).
async fn choose_source(
    settings: &crate::server::ConnectSettings,
    options: &BackupOptions,
    interrupt: &Interrupt,
) -> Result<Source> {
    let connected = interrupt
        .race(Session::connect(settings))
        .await
        .map_err(stopped_before_writing)?;
    let server_data_directory = async |session: &Session| {
        session
            .text("reading data_directory", "SHOW data_directory")
            .await
            .map(PathBuf::from)
    };
    match options.method {
        BackupMethodChoice::Local => {
            let session = connected?;
            let pgdata = match &options.pgdata {
                Some(dir) => dir.clone(),
                None => server_data_directory(&session).await?,
            };
            Ok(Source::Local { session, pgdata })
        }
        BackupMethodChoice::Replication => {
            if options.pgdata.is_some() {
                return Err(Error::Config(
                    "--pgdata names a local data directory, which a backup over the \
                     replication protocol does not read: drop --pgdata (or PGDATA), or use \
                     --method local"
                        .into(),
                ));
            }
            Ok(Source::Replication {
                session: without_sql(connected),
            })
        }
        BackupMethodChoice::Auto => match (connected, &options.pgdata) {
            (connected, Some(pgdata)) => Ok(Source::Local {
                session: connected?,
                pgdata: pgdata.clone(),
            }),
            (Ok(session), None) => match server_data_directory(&session).await {
                Ok(pgdata) if pgdata.join(CONTROL_FILE).exists() => {
                    Ok(Source::Local { session, pgdata })
                }
                _ => Ok(Source::Replication {
                    session: Some(session),
                }),
            },
            (connected, None) => Ok(Source::Replication {
                session: without_sql(connected),
            }),
        },
    }
}

/// A backup over the replication protocol goes on without an SQL session (a role with
/// REPLICATION only, a pg_hba.conf that allows only replication).
fn without_sql(connected: Result<Session>) -> Option<Session> {
    connected
        .inspect_err(|e| {
            tracing::info!(
                "no SQL session ({e}): the backup records no database names and cannot watch \
                 the archiver"
            )
        })
        .ok()
}

/// What a local backup knows before its id is claimed.
struct LocalPrepared {
    session: Session,
    pgdata: PathBuf,
    identity: RepositoryIdentity,
    archiver_before: Option<ArchiverStats>,
    /// archive_mode is off: WAL arrives by `pitr receive-wal`, which brings no backup
    /// history file.
    receiver_only: bool,
    start_time: DateTime<Utc>,
}

async fn backup_locked(
    catalog: &Catalog,
    options: &BackupOptions,
    identity: RepositoryIdentity,
    started: Instant,
    interrupt: &Interrupt,
) -> Result<BackupReport> {
    let settings = connection_settings(options.dbname.as_deref())?;
    if options.network_compression == NetworkCompression::Lz4
        && options.method == BackupMethodChoice::Local
    {
        return Err(Error::Config(
            "--network-compression lz4 compresses a backup over the replication protocol; a \
             local backup reads the data directory itself: drop it, or use --method replication"
                .into(),
        ));
    }
    if options.max_rate_kb.is_some() && options.method == BackupMethodChoice::Local {
        return Err(Error::Config(
            "--max-rate throttles a backup over the replication protocol; a local backup \
             reads the data directory itself: drop --max-rate, or use --method replication"
                .into(),
        ));
    }
    let prepared = match choose_source(&settings, options, interrupt).await? {
        Source::Local { session, pgdata } => {
            if options.network_compression == NetworkCompression::Lz4 {
                return Err(Error::Config(format!(
                    "--network-compression lz4 compresses a backup over the replication \
                     protocol, but the data directory {} is on this host: drop it, or use \
                     --method replication",
                    pgdata.display()
                )));
            }
            if options.max_rate_kb.is_some() {
                return Err(Error::Config(format!(
                    "--max-rate throttles a backup over the replication protocol, but the data \
                     directory {} is on this host: use --method replication to throttle it",
                    pgdata.display()
                )));
            }
            Prepared::Local(prepare_local(session, pgdata, identity, interrupt).await?)
        }
        Source::Replication { session } => Prepared::Remote({
            remote::prepare(
                catalog,
                &settings,
                session,
                identity,
                options.wal_method,
                interrupt,
            )
            .await?
        }),
    };
    catalog.remove_staging_leftovers().await;
    interrupt.check().map_err(stopped_before_writing)?;
    let start_time = match &prepared {
        Prepared::Local(prepared) => prepared.start_time,
        Prepared::Remote(prepared) => prepared.start_time,
    };
    let id = catalog
        .claim_backup_id(&start_time.format("%Y%m%dT%H%M%SZ").to_string())
        .await?;
    // From the claim on, every way out but success removes what this backup wrote: its
    // objects would otherwise hold space, and be taken for a backup that lost its manifest.
    // A signal is not a way out of its own: the copy stops at the next object, and every
    // write started has ended before the removal lists what to remove.
    let mut result = match prepared {
        Prepared::Local(prepared) => {
            backup_claimed(catalog, options, prepared, &id, started, interrupt).await
        }
        Prepared::Remote(prepared) => {
            remote::backup_claimed(catalog, options, prepared, &id, started, interrupt).await
        }
    };
    if let Err(error) = &mut result {
        options.progress.finish();
        let abandoned = catalog.abandon_backup(&id).await;
        match &abandoned {
            Ok(true) => tracing::info!("removed the objects of failed backup {id}"),
            Ok(false) => tracing::warn!(
                "backup {id}: its manifest was stored although the write reported an error; \
                 the backup is kept (see pitr list)"
            ),
            Err(e) => tracing::warn!(
                "removing the objects of failed backup {id}: {e}; pitr expire removes them later"
            ),
        }
        if let Error::Interrupted { signal, message } = error {
            *message = match abandoned {
                Ok(true) => format!(
                    "stopped by {}: backup {id} was not taken, and nothing of it is left in the \
                     repository; run pitr backup again",
                    signal.name()
                ),
                Ok(false) => format!(
                    "stopped by {}, but backup {id} was stored whole: it is kept (see pitr list)",
                    signal.name()
                ),
                Err(e) => format!(
                    "stopped by {}: backup {id} was not taken, and removing what it wrote failed \
                     ({e}); its leftovers are marked abandoned and pitr expire removes them; run \
                     pitr backup again",
                    signal.name()
                ),
            };
        }
    }
    result
}

/// Checks the server and its data directory against the repository.
async fn prepare_local(
    session: Session,
    pgdata: PathBuf,
    identity: RepositoryIdentity,
    interrupt: &Interrupt,
) -> Result<LocalPrepared> {
    wrong_major(session.version()?.major, &identity)?;
    let server_sysid = session
        .text(
            "reading the system identifier",
            "SELECT system_identifier::text FROM pg_control_system()",
        )
        .await?;
    if server_sysid != identity.system_identifier.to_string() {
        return Err(Error::WrongRepository(format!(
            "the server has system identifier {server_sysid}, but the repository belongs to {}",
            identity.system_identifier
        )));
    }
    check_pgdata(&pgdata, identity.system_identifier)?;
    // Archiving that fails already would fail this backup only after the whole copy and
    // --wal-timeout: refused now.
    let checked = check_archiving(&session, interrupt).await?;
    Ok(LocalPrepared {
        session,
        pgdata,
        identity,
        archiver_before: checked.stats,
        receiver_only: checked.receiver_only,
        start_time: Utc::now(),
    })
}

/// How long a failing archiver is watched for a success before the backup is refused: after
/// a reload with a mended archive_command, PostgreSQL retries within a few seconds (after at
/// most its three one-second retries with the old one).
const ARCHIVER_GRACE: Duration = Duration::from_secs(5);

/// `pg_stat_archiver` before a byte is copied: a backup is restorable only once its WAL is
/// in the repository, which a failing archive_command (or none) never brings. A standby
/// archives only with archive_mode = always; otherwise its primary does, which this session
/// cannot see (and the wait for the WAL still has its deadline). Returns what was read.
async fn check_archiving(session: &Session, interrupt: &Interrupt) -> Result<ArchiveCheck> {
    let settings = session
        .text(
            "reading archive_mode",
            "SELECT concat_ws('|', current_setting('archive_mode'), pg_is_in_recovery())",
        )
        .await?;
    let (mode, in_recovery) = settings.split_once('|').unwrap_or((settings.as_str(), ""));
    let mut receiver_only = false;
    let archives_here = match (mode, in_recovery) {
        ("off", _) => {
            receiver_only = in_recovery != "true";
            if receiver_only && !receiver_streams(session).await {
                return Err(Error::Incomplete(
                    "archive_mode is off: no WAL reaches the repository, and a backup is \
                     restorable only with the WAL up to its end; nothing was copied: set \
                     archive_mode = on and archive_command = 'pitr archive-push %p' (see pitr \
                     check), restart PostgreSQL, then run backup again; or run pitr \
                     receive-wal; or take a backup that streams its own WAL: pitr backup \
                     --method replication"
                        .into(),
                ));
            }
            false
        }
        ("always", _) => true,
        (_, "true") => false,
        _ => true,
    };
    let started = Instant::now();
    loop {
        // The archiver's word is advice where it cannot be read (permissions).
        let stats = session.archiver_stats().await.ok();
        match stats.as_ref().and_then(archiving_failing) {
            Some(refusal) if archives_here => {
                if started.elapsed() >= ARCHIVER_GRACE {
                    return Err(Error::Incomplete(refusal));
                }
            }
            _ => {
                return Ok(ArchiveCheck {
                    stats,
                    receiver_only,
                });
            }
        }
        interrupt
            .race(tokio::time::sleep(Duration::from_millis(250)))
            .await
            .map_err(stopped_before_writing)?;
    }
}

/// What [`check_archiving`] read.
pub(super) struct ArchiveCheck {
    pub stats: Option<ArchiverStats>,
    /// archive_mode is off on a primary, where `pitr receive-wal` streams.
    pub receiver_only: bool,
}

/// Whether a `pitr receive-wal` streams from the server (by its application_name): with
/// archive_mode off, the backup's WAL may then still reach a repository (awaited until
/// --wal-timeout, as any).
async fn receiver_streams(session: &Session) -> bool {
    let sql = format!(
        "SELECT count(*)::text FROM pg_stat_replication WHERE application_name = '{}' \
         AND state = 'streaming'",
        crate::commands::receive_wal::APPLICATION_NAME
    );
    match session.text("looking for pitr receive-wal", &sql).await {
        Ok(count) if count != "0" => {
            tracing::info!(
                "archive_mode is off, but pitr receive-wal streams from the server: the \
                 backup waits for its WAL from it"
            );
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::debug!("{e}");
            false
        }
    }
}

/// The refusal of a backup while archiving fails (the last attempt failed, none succeeded
/// since), naming the segment and when.
fn archiving_failing(stats: &ArchiverStats) -> Option<String> {
    if !stats.failing() {
        return None;
    }
    Some(format!(
        "archiving is failing: archive_command failed for {} at {} and has not succeeded \
         since, so this backup's WAL would never reach the repository; nothing was copied: fix \
         archive_command (the server log says why it fails; pitr check --dbname … shows the \
         archiver), then run backup again",
        stats.last_failed_wal.as_deref().unwrap_or("a segment"),
        stats
            .last_failed_time
            .map_or_else(|| "an unknown time".into(), utc_seconds)
    ))
}

async fn backup_claimed(
    catalog: &Catalog,
    options: &BackupOptions,
    prepared: LocalPrepared,
    id: &str,
    started: Instant,
    interrupt: &Interrupt,
) -> Result<BackupReport> {
    let LocalPrepared {
        session,
        pgdata,
        identity,
        archiver_before,
        receiver_only,
        start_time,
    } = prepared;
    let label = format!("pitr backup {id}");
    // A spread checkpoint can take minutes: a signal meanwhile ends the session, which ends
    // the backup on the server.
    let start_lsn = interrupt
        .race(session.backup_start(&label, options.fast))
        .await
        .map_err(stopped)??;
    // A standby writes no backup history file: then only the stop segment is waited for.
    let from_standby = session
        .text("asking for recovery", "SELECT pg_is_in_recovery()::text")
        .await?
        == "true";
    tracing::info!(
        "backup {id} started at {start_lsn}{}",
        if from_standby { " on a standby" } else { "" }
    );

    let facts = incremental::cluster_facts(&session).await?;
    let incremental = match options.backup_type {
        BackupType::Full => None,
        kind => announce(
            id,
            build_on(catalog, &session, kind, &facts, &pgdata, start_lsn, options).await?,
        ),
    };

    // Which directory is which database, for restore --db-include.
    let (databases, superuser) = session.databases().await?;
    let walk_root = pgdata.clone();
    let (directories, files, tablespaces) = blocking(move || walk(&walk_root)).await?;
    // An incremental backup takes of each file nothing, its changed blocks or all of it.
    let mut reused: Vec<BackupFile> = Vec::new();
    let mut delta_jobs: Vec<incremental::DeltaJob> = Vec::new();
    let files = match &incremental {
        None => files,
        Some(incremental) => files
            .into_iter()
            .filter(|file| match incremental.take(file) {
                incremental::Take::Parent(entries) => {
                    reused.extend(entries);
                    false
                }
                incremental::Take::Blocks(entries, jobs) => {
                    reused.extend(entries);
                    delta_jobs.extend(jobs);
                    false
                }
                incremental::Take::Whole => true,
            })
            .collect(),
    };
    let (plan, control) = plan_objects(files);
    let delta_plan = plan_delta_objects(delta_jobs);
    let total = total_bytes(
        plan.iter()
            .flatten()
            .chain(&control)
            .map(|f| f.size)
            .chain(delta_plan.iter().flatten().map(DeltaJob::estimate)),
    );
    options.progress.start(&format!("backup {id}"), total);
    let plan: Vec<ObjectJob> = plan
        .into_iter()
        .map(ObjectJob::Files)
        .chain(delta_plan.into_iter().map(ObjectJob::Deltas))
        .collect();
    let mut object_count = (plan.len() + usize::from(control.is_some())) as u32;
    // After a failure or a signal no new object starts, and every started one runs to its
    // end (its staged file and put run on blocking threads, which cannot be cancelled):
    // then nothing writes while the failed backup's objects are removed.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let copy = |index: usize, job: ObjectJob| {
        let (progress, failed) = (options.progress.clone(), &failed);
        async move {
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(None);
            }
            interrupt.check().map_err(stopped)?;
            let size = job.estimate();
            let copied = match job {
                ObjectJob::Files(files) => copy_object(catalog, id, index as u32, files).await,
                ObjectJob::Deltas(jobs) => copy_delta_object(catalog, id, index as u32, jobs).await,
            }
            .inspect_err(|_| failed.store(true, std::sync::atomic::Ordering::Relaxed))?;
            progress.advance(size);
            Ok::<_, Error>(Some(copied))
        }
    };
    let results: Vec<Result<Option<CopiedObject>>> = stream::iter(plan.into_iter().enumerate())
        .map(|(index, files)| copy(index, files))
        .buffer_unordered(options.jobs.max(1))
        .collect()
        .await;
    let mut copied: Vec<CopiedObject> = results
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    // pg_control last, once every other file was read: recovery from a standby's backup
    // ends at the minimum recovery point of this copy, which must cover all the others.
    if let Some(control) = control {
        copied.extend(copy(copied.len(), ObjectJob::Files(vec![control])).await?);
    }
    // The configuration read from outside the data directory, in an object after the others.
    let configuration = config::record(catalog, &session, &pgdata, id, object_count).await?;
    if let Some((configuration, _)) = &configuration
        && !configuration.files.is_empty()
    {
        object_count += 1;
    }

    options.progress.finish();
    // The whole wait for the backup's WAL, pg_backup_stop included, is bounded by this.
    let wal_deadline = Instant::now().checked_add(options.wal_timeout);
    let (stop_lsn, backup_label, tablespace_map) = session.backup_stop().await?;
    let stop_time = Utc::now();
    let segment_size = identity.wal_segment_size;
    // Named here, not by pg_walfile_name, which a standby refuses.
    let (_, start_wal_segment, timeline) = read_label(
        &backup_label,
        "pg_backup_stop returned",
        start_lsn,
        segment_size,
    )?;
    let stop_wal_segment = if from_standby {
        let current = session.recovery_timeline().await?;
        let history = if current > timeline {
            let pgdata = pgdata.clone();
            blocking(move || timeline_history(&pgdata, current)).await?
        } else {
            Vec::new()
        };
        stop_segment_name(stop_lsn, current.max(timeline), &history, segment_size)
    } else {
        // A primary's timeline cannot change while it is one.
        stop_segment_name(stop_lsn, timeline, &[], segment_size)
    };
    let stop_segment =
        WalFileName::parse(&stop_wal_segment).map_err(|e| Error::Server(e.to_string()))?;
    tracing::info!("backup {id} stopped at {stop_lsn} ({stop_wal_segment})");
    let mut awaited = vec![stop_segment];
    if !from_standby && !receiver_only {
        let history = backup_history_file_name(awaited[0].timeline(), start_lsn, segment_size);
        awaited.push(WalFileName::parse(&history).map_err(|e| Error::Server(e.to_string()))?);
    }
    wait_for_backup_wal(
        catalog,
        Some(&session),
        options,
        WalWait {
            id,
            files: awaited,
            deadline: wal_deadline,
            archiver_before,
        },
        interrupt,
    )
    .await?;

    let mut files: Vec<BackupFile> = copied.iter().flat_map(|(f, _)| f.clone()).collect();
    files.extend(reused);
    sort_entries(&mut files);
    let manifest = BackupManifest {
        format: match incremental {
            Some(_) => INCREMENTAL_MANIFEST_FORMAT,
            None => MANIFEST_FORMAT,
        },
        id: id.to_owned(),
        label,
        system_identifier: identity.system_identifier.to_string(),
        pg_version: identity.pg_version,
        timeline,
        start_lsn,
        stop_lsn,
        start_time,
        stop_time,
        start_wal_segment,
        stop_wal_segment,
        backup_label,
        tablespace_map,
        tablespaces,
        size_bytes: logical_size(&files),
        stored_bytes: total_bytes(
            copied
                .iter()
                .map(|(_, stored)| *stored)
                .chain(configuration.as_ref().map(|(_, stored)| *stored)),
        ),
        directories,
        files,
        // Whom a restore run as root gives the files to.
        cluster_owner: crate::ownership::Owner::of(&pgdata).ok(),
        data_directory: Some(
            std::path::absolute(&pgdata)
                .unwrap_or(pgdata)
                .display()
                .to_string(),
        ),
        databases: databases
            .into_iter()
            .map(|(oid, name)| crate::catalog::backup::Database { oid, name })
            .collect(),
        superuser: Some(superuser),
        configuration: configuration.map(|(configuration, _)| configuration),
        method: BackupMethod::Local,
        server_manifest: None,
        backup_type: incremental
            .as_ref()
            .map_or(BackupType::Full, |i| i.backup_type),
        parent: incremental.as_ref().map(|i| i.parent.id.clone()),
        data_checksums: Some(facts.data_checksums),
        block_size: Some(facts.block_size),
        changes_from: incremental.as_ref().map(|i| i.changes_from()),
    };
    record_manifest(catalog, options, &manifest).await?;
    Ok(BackupReport {
        manifest,
        objects: object_count,
        elapsed: started.elapsed(),
    })
}

/// Says what an incremental backup builds on, or why it is taken full; the parent chosen.
fn announce(
    id: &str,
    chosen: std::result::Result<incremental::Incremental, String>,
) -> Option<incremental::Incremental> {
    let incremental = chosen
        .inspect_err(|reason| tracing::warn!("backup {id} is taken full: {reason}"))
        .ok()?;
    let changes = incremental.changes_from();
    match &incremental.changes {
        Ok(_) => tracing::info!(
            "backup {id} is {} on {} (changes from {changes})",
            incremental.backup_type.name(),
            incremental.parent.id
        ),
        Err(_) => tracing::warn!(
            "backup {id} is {} on {}, comparing every page: {changes}",
            incremental.backup_type.name(),
            incremental.parent.id
        ),
    }
    Some(incremental)
}

/// How long to wait before looking again for WAL the archiver is to store, `waited` into the
/// wait: often at first (an archiver that keeps up stores a segment within tens of
/// milliseconds, and an incremental backup takes little more), then every 250 ms.
fn archive_poll(waited: Duration) -> Duration {
    if waited < Duration::from_secs(2) {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(250)
    }
}

/// What an incremental backup starting at `start` builds on, or why it is taken full.
async fn build_on(
    catalog: &Catalog,
    session: &Session,
    kind: BackupType,
    facts: &incremental::ClusterFacts,
    pgdata: &Path,
    start: crate::pg::Lsn,
    options: &BackupOptions,
) -> Result<std::result::Result<incremental::Incremental, String>> {
    // The start checkpoint's timeline: backup_label is known only at the stop.
    let checkpoint = session
        .text(
            "reading the start checkpoint",
            "SELECT timeline_id::text || '|' || redo_lsn::text FROM pg_control_checkpoint()",
        )
        .await?;
    let (timeline, redo) = checkpoint.split_once('|').unwrap_or_default();
    let (Ok(timeline), Ok(redo)) = (timeline.parse::<u32>(), redo.parse::<crate::pg::Lsn>()) else {
        return Err(Error::Server(format!(
            "pg_control_checkpoint() returned '{checkpoint}'"
        )));
    };
    if redo != start {
        return Ok(Err(format!(
            "a checkpoint ({redo}) followed the backup's start ({start}) before its timeline \
             was read"
        )));
    }
    incremental::prepare(
        catalog,
        kind,
        facts,
        &server_wal::ServerWal::Directory(pgdata.to_owned()),
        start,
        timeline,
        incremental::ArchivedWal::Awaited,
        options.jobs,
    )
    .await
}

/// What one data object is made of: files (whole, or parts of large ones), or the changed
/// blocks of files an incremental backup takes in part.
enum ObjectJob {
    Files(Vec<SourceFile>),
    Deltas(Vec<DeltaJob>),
}

impl ObjectJob {
    /// The bytes it reads, about.
    fn estimate(&self) -> u64 {
        match self {
            ObjectJob::Files(files) => total_bytes(files.iter().map(|f| f.size)),
            ObjectJob::Deltas(jobs) => total_bytes(jobs.iter().map(DeltaJob::estimate)),
        }
    }
}

impl DeltaJob {
    /// The bytes it reads: its blocks, or its whole range for a page scan.
    fn estimate(&self) -> u64 {
        match &self.blocks {
            Some(blocks) => blocks.len() as u64 * u64::from(self.block_size),
            None => self.source.size,
        }
    }
}

/// Delta jobs bundled into objects of about [`BUNDLE_SIZE`], never two databases' in one.
fn plan_delta_objects(mut jobs: Vec<DeltaJob>) -> Vec<Vec<DeltaJob>> {
    jobs.sort_by(|a, b| {
        (database_of(&a.source.path), &a.source.path, a.source.offset).cmp(&(
            database_of(&b.source.path),
            &b.source.path,
            b.source.offset,
        ))
    });
    let mut plan: Vec<Vec<DeltaJob>> = Vec::new();
    let mut size = 0;
    for job in jobs {
        let starts_new = match plan.last().and_then(|object| object.last()) {
            None => true,
            Some(last) => {
                size >= BUNDLE_SIZE
                    || database_of(&last.source.path) != database_of(&job.source.path)
            }
        };
        if starts_new {
            plan.push(Vec::new());
            size = 0;
        }
        size += job.estimate();
        plan.last_mut().expect("pushed").push(job);
    }
    plan
}

/// Reads the changed blocks of one object's delta jobs, stores them, and returns their
/// manifest entries.
async fn copy_delta_object(
    catalog: &Catalog,
    id: &str,
    object: u32,
    jobs: Vec<DeltaJob>,
) -> Result<CopiedObject> {
    let reader = incremental::DeltaReader::new(jobs);
    let (reader, encoded) = catalog
        .store_backup_object(id, object, "the data directory", reader)
        .await?;
    let mut offset = 0;
    let mut entries = Vec::new();
    for (job, (blocks, size, crc32c)) in reader.jobs.iter().zip(&reader.read) {
        entries.push(job.entry(blocks, *size, *crc32c, object, offset));
        offset += size;
    }
    Ok((entries, encoded.stored_len))
}

/// A manifest's entries by path, a path's whole entries by offset, then its deltas oldest
/// first.
fn sort_entries(files: &mut [BackupFile]) {
    files.sort_by(|a, b| {
        let key = |f: &BackupFile| {
            f.delta
                .as_ref()
                .map_or((0, 0), |d| (d.depth, d.runs.first().map_or(0, |r| r[0])))
        };
        (&a.path, key(a), a.file_offset).cmp(&(&b.path, key(b), b.file_offset))
    });
}

/// The sum of the files' sizes once rebuilt: a file with deltas counts its newest size.
fn logical_size(files: &[BackupFile]) -> u64 {
    let mut sizes: std::collections::BTreeMap<&str, (u32, u64)> = Default::default();
    for file in files {
        let (depth, size) = match &file.delta {
            Some(delta) => (delta.depth, delta.file_size),
            None => (0, file.file_offset.saturating_add(file.size)),
        };
        let entry = sizes.entry(&file.path).or_insert((depth, size));
        if depth > entry.0 || (depth == entry.0 && size > entry.1) {
            *entry = (depth, size);
        }
    }
    total_bytes(sizes.values().map(|(_, size)| *size))
}

/// Stores the manifest, last: the backup exists from then on, pinned and annotated as asked.
async fn record_manifest(
    catalog: &Catalog,
    options: &BackupOptions,
    manifest: &BackupManifest,
) -> Result<()> {
    if options.pin || !options.annotations.is_empty() {
        // Before the manifest: the backup is pinned from the moment it exists.
        let mut pin = crate::catalog::backup::BackupPin::new(&manifest.id);
        pin.pinned = options.pin;
        pin.annotations = options.annotations.clone();
        catalog.put_backup_pin(&pin).await?;
    }
    catalog.put_manifest(manifest).await?;
    Ok(())
}

/// The history of `timeline` from the server's `pg_wal` (a standby keeps the history files
/// of the timelines it followed).
fn timeline_history(pgdata: &Path, timeline: u32) -> Result<Vec<HistoryEntry>> {
    let path = pgdata
        .join("pg_wal")
        .join(format!("{timeline:08X}.history"));
    let text = fs::read_to_string(&path).map_err(|e| {
        Error::Server(format!(
            "the standby moved to timeline {timeline} during the backup, and its history file \
             {} cannot be read ({e}): which timeline the stop point is on is unknown; run \
             backup again",
            path.display()
        ))
    })?;
    parse_history(timeline, &text).map_err(|e| Error::invalid_input(path.display(), e))
}

/// The data directory must be the server's and hold the repository's cluster.
fn check_pgdata(pgdata: &Path, system_identifier: u64) -> Result<()> {
    let found = read_control(pgdata)?.0.system_identifier;
    if found != system_identifier {
        return Err(Error::WrongRepository(format!(
            "{} belongs to system identifier {found}, the repository to {system_identifier}",
            pgdata.display()
        )));
    }
    Ok(())
}

type Walked = (Vec<BackupDirectory>, Vec<SourceFile>, Vec<Tablespace>);

/// Everything a base backup holds, by PostgreSQL's rules; tablespaces through pg_tblspc.
fn walk(pgdata: &Path) -> Result<Walked> {
    let mut directories = Vec::new();
    let mut files = Vec::new();
    let mut tablespaces = Vec::new();
    let mut pending = vec![(pgdata.to_owned(), String::new())];
    while let Some((dir, relative)) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // vanished
            Err(e) => return Err(Error::local_io(dir.display(), e)),
        };
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::local_io(dir.display(), e))?;
            names.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
        let skip_unlogged = if is_database_directory(&relative) {
            unlogged_files(names.iter().map(|(n, _)| n.as_str()))
                .into_iter()
                .map(str::to_owned)
                .collect()
        } else {
            std::collections::HashSet::new()
        };
        for (name, path) in names {
            let path_rel = if relative.is_empty() {
                name.clone()
            } else {
                format!("{relative}/{name}")
            };
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::local_io(path.display(), e)),
            };
            if meta.file_type().is_symlink() && relative == "pg_tblspc" {
                let target =
                    fs::read_link(&path).map_err(|e| Error::local_io(path.display(), e))?;
                let oid: u32 = name.parse().map_err(|_| {
                    Error::invalid_input(path.display(), "a tablespace link not named by an OID")
                })?;
                tablespaces.push(Tablespace {
                    oid,
                    path: target.display().to_string(),
                });
                directories.push(BackupDirectory {
                    path: path_rel.clone(),
                    mode: 0o700,
                });
                pending.push((target, path_rel));
                continue;
            }
            // Other links (pg_wal elsewhere, say) are followed.
            let meta = if meta.file_type().is_symlink() {
                match fs::metadata(&path) {
                    Ok(meta) => meta,
                    Err(_) => continue,
                }
            } else {
                meta
            };
            let is_dir = meta.is_dir();
            match classify(&path_rel, is_dir) {
                Disposition::Exclude => continue,
                Disposition::IncludeEmpty => {
                    directories.push(BackupDirectory {
                        path: path_rel,
                        mode: meta.permissions().mode() & 0o7777,
                    });
                    continue;
                }
                Disposition::Include => {}
            }
            if is_dir {
                directories.push(BackupDirectory {
                    path: path_rel.clone(),
                    mode: meta.permissions().mode() & 0o7777,
                });
                pending.push((path, path_rel));
            } else if meta.is_file() && !skip_unlogged.contains(&name) {
                files.push(SourceFile {
                    path: path_rel,
                    absolute: path,
                    offset: 0,
                    size: meta.len(),
                    mode: meta.permissions().mode() & 0o7777,
                    mtime: meta.mtime(),
                });
            }
        }
    }
    directories.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((directories, files, tablespaces))
}

/// The file PostgreSQL takes a standby backup's end point from: copied after all others.
pub(super) const CONTROL_FILE: &str = "global/pg_control";

/// Large files alone, small files packed into bundles: one entry per object; and
/// `global/pg_control`, which goes into an object of its own, the last.
fn plan_objects(mut files: Vec<SourceFile>) -> (Vec<Vec<SourceFile>>, Option<SourceFile>) {
    let control = files
        .iter()
        .position(|f| f.path == CONTROL_FILE)
        .map(|at| files.remove(at));
    // The cluster-wide files first, then each database's together.
    files.sort_by(|a, b| (database_of(&a.path), &a.path).cmp(&(database_of(&b.path), &b.path)));
    let mut plan = Vec::new();
    let mut bundle: Vec<SourceFile> = Vec::new();
    let mut bundle_size = 0;
    for file in files {
        if file.size > PART_SIZE {
            for offset in (0..file.size).step_by(PART_SIZE as usize) {
                let mut part = file.clone();
                part.offset = offset;
                part.size = PART_SIZE.min(file.size - offset);
                plan.push(vec![part]);
            }
            continue;
        }
        if file.size > BUNDLE_FILE_LIMIT {
            plan.push(vec![file]);
            continue;
        }
        // One object never holds files of two databases (or of one and the cluster-wide
        // ones): restore --db-include then skips whole objects.
        if bundle
            .last()
            .is_some_and(|last| database_of(&last.path) != database_of(&file.path))
        {
            plan.push(std::mem::take(&mut bundle));
            bundle_size = 0;
        }
        bundle_size += file.size;
        bundle.push(file);
        if bundle_size >= BUNDLE_SIZE {
            plan.push(std::mem::take(&mut bundle));
            bundle_size = 0;
        }
    }
    if !bundle.is_empty() {
        plan.push(bundle);
    }
    (plan, control)
}

/// Reads the files of one object in turn, each up to the size it had when listed (a file
/// that grows is cut there, one that shrinks or vanishes is taken as it is: WAL replay from
/// the backup's start makes them consistent).
struct BundleReader {
    files: Vec<SourceFile>,
    current: Option<io::Take<File>>,
    length: u64,
    crc: u32,
    /// Per file: None if it vanished, else its length and CRC-32C.
    read: Vec<Option<(u64, u32)>>,
}

impl Read for BundleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let index = self.read.len();
            let Some(source) = self.files.get(index) else {
                return Ok(0);
            };
            let current = match &mut self.current {
                Some(current) => current,
                None => match File::open(&source.absolute).and_then(|mut file| {
                    io::Seek::seek(&mut file, io::SeekFrom::Start(source.offset))?;
                    Ok(file)
                }) {
                    Ok(file) => {
                        self.length = 0;
                        self.crc = 0;
                        self.current.insert(file.take(source.size))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.read.push(None);
                        continue;
                    }
                    Err(e) => {
                        return Err(io::Error::new(e.kind(), format!("{}: {e}", source.path)));
                    }
                },
            };
            match current.read(buf) {
                Ok(0) => {
                    self.read.push(Some((self.length, self.crc)));
                    self.current = None;
                }
                Ok(n) => {
                    self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
                    self.length += n as u64;
                    return Ok(n);
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", source.path))),
            }
        }
    }
}

/// Encodes one planned object, stores it, and returns its files' manifest entries.
async fn copy_object(
    catalog: &Catalog,
    id: &str,
    object: u32,
    files: Vec<SourceFile>,
) -> Result<(Vec<BackupFile>, u64)> {
    let reader = BundleReader {
        files,
        current: None,
        length: 0,
        crc: 0,
        read: Vec::new(),
    };
    let (reader, encoded) = catalog
        .store_backup_object(id, object, "the data directory", reader)
        .await?;
    let mut offset = 0;
    let mut entries = Vec::new();
    for (source, read) in reader.files.iter().zip(&reader.read) {
        let Some((size, crc32c)) = *read else {
            continue;
        };
        entries.push(BackupFile {
            path: source.path.clone(),
            size,
            file_offset: source.offset,
            mode: source.mode,
            mtime: source.mtime,
            crc32c,
            object,
            offset,
            backup: None,
            delta: None,
        });
        offset += size;
    }
    Ok((entries, encoded.stored_len))
}

/// A backup_label's start segment and timeline, checked against the start position `start`;
/// `from` says which label it is in errors.
fn read_label(
    text: &str,
    from: &str,
    start: crate::pg::Lsn,
    segment_size: u64,
) -> Result<(crate::pg::backup_label::BackupLabel, String, u32)> {
    let label = parse_backup_label(text)
        .map_err(|e| Error::Server(format!("the backup_label {from}: {e}")))?;
    let start_segment = WalFileName::parse(&label.start_wal_file)
        .ok()
        .filter(|name| {
            name.segment_number(segment_size) == Some(start.segment_number(segment_size))
        })
        .ok_or_else(|| {
            Error::Server(format!(
                "the backup_label names {} for the start {start}",
                label.start_wal_file
            ))
        })?;
    let timeline = label.start_timeline.unwrap_or(start_segment.timeline());
    let start_wal_segment = label.start_wal_file.clone();
    Ok((label, start_wal_segment, timeline))
}

/// Waits for the backup's WAL, then ends the progress line; a signal meanwhile stops it.
async fn wait_for_backup_wal(
    catalog: &Catalog,
    session: Option<&Session>,
    options: &BackupOptions,
    wait: WalWait<'_>,
    interrupt: &Interrupt,
) -> Result<()> {
    let waited = wait_for_wal(catalog, session, options, wait, interrupt).await;
    options.progress.finish();
    waited?;
    interrupt.check().map_err(stopped)
}

/// What a backup waits for before it is listed.
struct WalWait<'a> {
    id: &'a str,
    /// The segment holding the stop point and the backup history file (a primary's): what
    /// `pg_backup_stop(wait_for_archive => true)` waits for, but with a deadline.
    files: Vec<WalFileName>,
    /// None: no deadline (a timeout too large to add).
    deadline: Option<Instant>,
    /// `pg_stat_archiver` before the backup started.
    archiver_before: Option<ArchiverStats>,
}

/// A line about the wait once it has lasted this long, then every [`NOTE_EVERY`].
const NOTE_AFTER: Duration = Duration::from_secs(2);
const NOTE_EVERY: Duration = Duration::from_secs(5);

/// A backup is restorable only with the WAL up to its stop point in the repository. Waits
/// for it until the deadline, telling what the archiver does meanwhile.
async fn wait_for_wal(
    catalog: &Catalog,
    session: Option<&Session>,
    options: &BackupOptions,
    wait: WalWait<'_>,
    interrupt: &Interrupt,
) -> Result<()> {
    let started = Instant::now();
    let mut pending = wait.files;
    let mut archiver = wait.archiver_before;
    let mut failing_since = archiver
        .as_ref()
        .filter(|stats| stats.failing())
        .and_then(|stats| stats.last_failed_time);
    let mut next_stats = started;
    let mut next_note = started + NOTE_AFTER;
    loop {
        let mut still_pending = Vec::new();
        for name in pending {
            if !catalog.has_wal(&name).await? {
                still_pending.push(name);
            }
        }
        pending = still_pending;
        let Some(first) = pending.first() else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= next_stats {
            // The archiver's word is advice: without it the deadline still holds.
            let stats = match session {
                Some(session) => session.archiver_stats().await.map_err(|e| e.to_string()),
                None => Err("no SQL session".to_owned()),
            };
            match stats {
                Ok(stats) => {
                    if !stats.failing() {
                        failing_since = None;
                    } else if failing_since.is_none() {
                        failing_since = stats.last_failed_time;
                    }
                    archiver = Some(stats);
                }
                Err(e) => tracing::debug!("{e}"),
            }
            next_stats = now + Duration::from_secs(1);
        }
        let state = WaitState {
            waiting_for: first,
            waited: now.duration_since(started),
            timeout: options.wal_timeout,
            archiver: archiver.as_ref(),
            failing_since,
        };
        if wait.deadline.is_some_and(|deadline| now >= deadline) {
            return Err(Error::Incomplete(state.timed_out(wait.id)));
        }
        if now >= next_note {
            options.progress.note(&state.waiting());
            next_note = now + NOTE_EVERY;
        }
        interrupt
            .race(tokio::time::sleep(archive_poll(
                now.duration_since(started),
            )))
            .await
            .map_err(stopped)?;
    }
}

/// Where a wait for WAL stands: what the lines about it say.
struct WaitState<'a> {
    waiting_for: &'a WalFileName,
    waited: Duration,
    timeout: Duration,
    archiver: Option<&'a ArchiverStats>,
    /// When archiving was first seen failing, with no success since.
    failing_since: Option<DateTime<Utc>>,
}

fn utc_seconds(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl WaitState<'_> {
    /// The archiver's side: failing (which file, since when) or the last file it archived.
    fn archiver_says(&self) -> Option<String> {
        let stats = self.archiver?;
        if stats.failing() {
            let since = self.failing_since.or(stats.last_failed_time)?;
            return Some(format!(
                "archiving is failing since {} (last failed: {})",
                utc_seconds(since),
                stats.last_failed_wal.as_deref().unwrap_or("unknown")
            ));
        }
        stats
            .last_archived_wal
            .as_ref()
            .map(|wal| format!("PostgreSQL last archived {wal}"))
    }

    /// The progress line.
    fn waiting(&self) -> String {
        let mut line = format!(
            "waiting for {} to reach the repository ({} s of {} s)",
            self.waiting_for,
            self.waited.as_secs(),
            self.timeout.as_secs()
        );
        if let Some(archiver) = self.archiver_says() {
            line.push_str(&format!(": {archiver}"));
        }
        line
    }

    /// The error at the deadline.
    fn timed_out(&self, id: &str) -> String {
        let mut message = format!(
            "backup {id} was not recorded: {} did not reach the repository within {} s; ",
            self.waiting_for,
            self.timeout.as_secs()
        );
        match self.archiver_says() {
            Some(archiver) if self.archiver.is_some_and(ArchiverStats::failing) => message
                .push_str(&format!(
                    "{archiver}: fix archive_command, then run backup again"
                )),
            Some(archiver) => message.push_str(&format!(
                "{archiver}: is archive_command pushing to this repository?"
            )),
            None => message.push_str("is archive_command pushing to this repository?"),
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(row: &str) -> ArchiverStats {
        ArchiverStats::parse(row)
    }

    #[test]
    fn a_wait_names_the_failing_segment_and_since_when() {
        let name = WalFileName::parse("000000010000000000000007").unwrap();
        let failing =
            stats("5|9|000000010000000000000004|1764979200|000000010000000000000005|1764979500");
        let state = WaitState {
            waiting_for: &name,
            waited: Duration::from_secs(7),
            timeout: Duration::from_secs(10),
            archiver: Some(&failing),
            failing_since: DateTime::from_timestamp(1_764_979_260, 0),
        };
        assert_eq!(
            state.waiting(),
            "waiting for 000000010000000000000007 to reach the repository (7 s of 10 s): \
             archiving is failing since 2025-12-06T00:01:00Z (last failed: \
             000000010000000000000005)"
        );
        assert_eq!(
            state.timed_out("20261206T045500Z"),
            "backup 20261206T045500Z was not recorded: 000000010000000000000007 did not reach \
             the repository within 10 s; archiving is failing since 2025-12-06T00:01:00Z (last \
             failed: 000000010000000000000005): fix archive_command, then run backup again"
        );
        // Not seen failing before: the last failure is the earliest known.
        let state = WaitState {
            failing_since: None,
            ..state
        };
        assert!(
            state
                .waiting()
                .contains("failing since 2025-12-06T00:05:00Z")
        );
    }

    #[test]
    fn a_wait_without_failures_asks_where_archiving_goes() {
        let name = WalFileName::parse("000000010000000000000007").unwrap();
        let healthy = stats("5|0|000000010000000000000006|1764979200||");
        let state = WaitState {
            waiting_for: &name,
            waited: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            archiver: Some(&healthy),
            failing_since: None,
        };
        assert!(
            state.timed_out("b").ends_with(
                "PostgreSQL last archived 000000010000000000000006: is archive_command \
                 pushing to this repository?"
            ),
            "{}",
            state.timed_out("b")
        );
        let state = WaitState {
            archiver: None,
            ..state
        };
        assert!(
            state
                .timed_out("b")
                .ends_with("within 10 s; is archive_command pushing to this repository?")
        );
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    fn file(path: &str, size: u64) -> SourceFile {
        SourceFile {
            path: path.into(),
            absolute: PathBuf::from("/nonexistent").join(path),
            offset: 0,
            size,
            mode: 0o600,
            mtime: 0,
        }
    }

    #[test]
    fn an_object_holds_the_files_of_one_database_at_most() {
        let (plan, control) = plan_objects(vec![
            file("base/5/1259", 8192),
            file("global/pg_control", 8192),
            file("global/1262", 8192),
            file("base/16384/1259", 8192),
            file("base/16384/2619", 8192),
            file("base/5/2619", 8192),
            file("PG_VERSION", 3),
        ]);
        let databases: Vec<Vec<Option<u32>>> = plan
            .iter()
            .map(|object| object.iter().map(|f| database_of(&f.path)).collect())
            .collect();
        assert_eq!(
            databases,
            [
                vec![None, None],
                vec![Some(5), Some(5)],
                vec![Some(16384), Some(16384)],
            ]
        );
        // pg_control in no bundle: the backup copies it alone, after every other object.
        assert_eq!(control.unwrap().path, "global/pg_control");
        assert!(plan.iter().flatten().all(|f| f.path != "global/pg_control"));
    }
}
