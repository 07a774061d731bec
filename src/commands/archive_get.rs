//! `pitr archive-get NAME DEST`: PostgreSQL's `restore_command`.
//!
//! The object is decoded into a temporary file beside DEST and renamed onto DEST only after
//! both checksums and the length are verified, so PostgreSQL never reads a partial or
//! corrupt file.
//!
//! During recovery a background prefetcher (`commands::prefetch`) fetches the segments that
//! follow into the get spool; a call finds its segment there, checks it against the CRC-32C
//! in its name, and renames it onto DEST. A spooled copy that fails the check is removed and
//! the segment fetched from the repository as if it had never been spooled.
//!
//! A restore's replay plan (`replay_plan`, in `pg_wal/`) carries the pre-flight's proof into
//! the replay: a file the plan needs that the repository no longer holds is missing WAL
//! (exit 136: PostgreSQL aborts recovery), never "not found", which would end recovery on a
//! shorter history. While replay runs, archive-get keeps the restore's replay claim alive,
//! and lets it go when recovery is over.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

use crate::catalog::{Catalog, CatalogError};
use crate::error::{Error, Result};
use crate::pg::WalFileName;
use crate::replay_plan::{Need, ReplayPlan};
use crate::spool::{CrcWriter, GetSpool, holds_crc, wal_dir_of};

#[derive(Clone, Debug)]
pub struct ArchiveGetOptions {
    pub name: String,
    pub dest: PathBuf,
    /// The get spool, when prefetching is on.
    pub spool: Option<GetSpool>,
    /// How long a call waits for a segment the prefetcher is fetching before it fetches the
    /// segment itself.
    pub prefetch_wait: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetSource {
    /// Fetched from the repository by this call.
    Repository { stored_len: u64 },
    /// Renamed from the get spool, where the prefetcher had put it.
    Spool,
    /// Not archived whole: the tail `pitr receive-wal` uploaded, its first `end` bytes,
    /// zeros after them (where recovery finds the end of the WAL).
    Tail { end: u64 },
}

#[derive(Debug)]
pub struct ArchiveGetReport {
    pub name: String,
    /// Bytes written to DEST.
    pub len: u64,
    pub source: GetSource,
    pub elapsed: Duration,
}

const STAGING_PREFIX: &str = ".pitr-get-";

/// A segment from the get spool onto `dest`, without touching the repository; `None` when
/// the spool has no good copy (a bad copy is removed).
pub fn serve_from_spool(options: &ArchiveGetOptions) -> Result<Option<ArchiveGetReport>> {
    let started = Instant::now();
    let Some(spool) = &options.spool else {
        return Ok(None);
    };
    let Some(entry) = spool.find(&options.name) else {
        return Ok(None);
    };
    let local = |e| Error::local_io(entry.path.display(), e);
    match holds_crc(&entry.path, entry.crc32) {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                "the prefetched copy of {} in {} does not match its checksum; removed it, \
                 fetching {} from the repository",
                options.name,
                spool.dir.display(),
                options.name
            );
            let _ = std::fs::remove_file(&entry.path);
            return Ok(None);
        }
        // Taken by a concurrent call, or cleaned by the prefetcher.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(local(e)),
    }
    let len = match std::fs::metadata(&entry.path) {
        Ok(meta) => meta.len(),
        // Taken or cleaned since the checksum was read.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(local(e)),
    };
    // As for a fetched file, no sync: PostgreSQL makes durable what it keeps.
    match std::fs::rename(&entry.path, &options.dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // A spool_path on another filesystem: copy, staged beside DEST.
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_into_place(&entry.path, &options.dest)?;
            let _ = std::fs::remove_file(&entry.path);
        }
        Err(e) => return Err(local(e)),
    }
    Ok(Some(ArchiveGetReport {
        name: options.name.clone(),
        len,
        source: GetSource::Spool,
        elapsed: started.elapsed(),
    }))
}

fn copy_into_place(from: &Path, dest: &Path) -> Result<()> {
    let dir = wal_dir_of(dest);
    let mut staged = staging_file(&dir, STAGING_PREFIX)?;
    let mut source = File::open(from).map_err(|e| Error::local_io(from.display(), e))?;
    io::copy(&mut source, staged.as_file_mut()).map_err(|e| Error::local_io(dest.display(), e))?;
    staged
        .persist(dest)
        .map_err(|e| Error::local_io(dest.display(), e.error))?;
    Ok(())
}

/// Fetches the file from the repository. The caller has tried [`serve_from_spool`] (before
/// opening the repository); this tries the spool again only for a segment the prefetcher was
/// fetching at that moment, once it has landed.
pub async fn archive_get(
    catalog: &Catalog,
    options: &ArchiveGetOptions,
) -> Result<ArchiveGetReport> {
    let started = Instant::now();
    let name =
        WalFileName::parse(&options.name).map_err(|e| Error::invalid_input(&options.name, e))?;
    if let Some(spool) = &options.spool
        && wait_for_prefetcher(spool, &options.name, options.prefetch_wait).await
        && let Some(report) = serve_from_spool(options)?
    {
        return Ok(report);
    }
    // A missing or foreign repository must not look like "no such segment" to recovery.
    let identity = catalog.identity().await?;
    let expected_len = name.holds_wal_pages().then_some(identity.wal_segment_size);

    let dest = options.dest.clone();
    let dir = wal_dir_of(&dest);
    // What a killed archive-get left in pg_wal goes first (each is a preallocated segment).
    crate::staging::remove_leftovers(&dir, STAGING_PREFIX, true);
    let fetched = fetch_verified(
        catalog,
        &name,
        &dir,
        STAGING_PREFIX,
        expected_len,
        &dest.display().to_string(),
    )
    .await;
    let (staged, fetched) = match fetched {
        Err(Error::NotFound {
            name: missing,
            location,
        }) => match fetch_tail(catalog, &name, &dir, identity.wal_segment_size, &dest).await? {
            Some(served) => return Ok(served(started)),
            None => {
                return Err(Error::NotFound {
                    name: missing,
                    location,
                });
            }
        },
        other => other?,
    };
    // Whole before it appears. Not synced: PostgreSQL makes durable what it keeps
    // (durable_rename in KeepFileRestoredFromArchive) and, after a crash, asks again for what
    // it had not kept (pgBackRest skips the sync for the same reason).
    staged
        .persist(&dest)
        .map_err(|e| Error::local_io(dest.display(), e.error))?;
    Ok(ArchiveGetReport {
        name: name.to_string(),
        len: fetched.len,
        source: GetSource::Repository {
            stored_len: fetched.stored_len,
        },
        elapsed: started.elapsed(),
    })
}

/// "Not found" for `name` (in `location`), held to the replay plan: the error recovery must
/// stop on when the plan needs the file, or when a plan is there but cannot be read; `None`
/// when "not found" may stand (no plan, or beyond what it needs).
pub fn missing_from_plan(
    plan: &std::result::Result<Option<ReplayPlan>, String>,
    name: &WalFileName,
    location: &str,
) -> Option<Error> {
    match plan {
        Ok(None) => None,
        Err(reason) => Some(Error::Incomplete(format!(
            "{name} is not in the repository {location}, and the replay plan {reason}, so \
             archive-get cannot tell whether recovery needs it: recovery stops here. Repair or \
             remove the plan file (removing it lets recovery end at the end of the archive)"
        ))),
        Ok(Some(plan)) if plan.needs(name) == Need::Needed => {
            let what = if name.kind() == crate::pg::WalFileKind::History {
                "history file"
            } else {
                "WAL segment"
            };
            Some(Error::Incomplete(format!(
                "{what} {name} is no longer in the repository {location}, but `pitr {}` found it \
                 there and recovery needs it to reach its target (backup {}, segments {}): \
                 recovery stops here rather than end on a shorter history. Put the object back \
                 (or restore again) and start the server again",
                plan.command,
                plan.backup,
                plan.span()
            )))
        }
        Ok(Some(_)) => None,
    }
}

/// What archive-get does about the restore's replay claim after a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimStep {
    Nothing,
    /// Write the claim again with a new heartbeat.
    Refresh,
    /// Recovery is over: remove the claim.
    Release,
}

/// After a call for `name` that `found` the file or not: recovery is over when PostgreSQL
/// asks for a newer timeline's history (it promotes), or finds no segment past the plan (the
/// end of the archive, or a target reached); otherwise the heartbeat, when due.
pub fn claim_step(plan: &ReplayPlan, name: &WalFileName, found: bool, wal_dir: &Path) -> ClaimStep {
    if plan.ends_recovery(name) || (!found && plan.needs(name) == Need::Beyond) {
        ClaimStep::Release
    } else if crate::replay_plan::refresh_due(wal_dir, plan) {
        ClaimStep::Refresh
    } else {
        ClaimStep::Nothing
    }
}

/// Takes the step; a failure is a warning (recovery goes on; a claim left behind goes stale).
pub async fn take_claim_step(
    catalog: &Catalog,
    plan: &ReplayPlan,
    step: ClaimStep,
    wal_dir: &Path,
) {
    let pgdata = std::path::absolute(".")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let result = match step {
        ClaimStep::Nothing => return,
        ClaimStep::Refresh => {
            catalog
                .put_replay_claim(&plan.as_claim(&pgdata, chrono::Utc::now()))
                .await
        }
        ClaimStep::Release => catalog.remove_replay_claim(&plan.claim).await,
    };
    match result {
        Ok(()) => crate::replay_plan::note_heartbeat(wal_dir, step == ClaimStep::Release),
        Err(e) => tracing::warn!("the replay claim {} in the repository: {e}", plan.claim),
    }
}

/// While the running prefetcher fetches `name`, waits (up to `limit`) for it to finish
/// rather than fetch the same segment twice; whether it was fetching `name`.
async fn wait_for_prefetcher(spool: &GetSpool, name: &str, limit: Duration) -> bool {
    let marker = spool.fetching_marker(name);
    if !marker.exists() {
        return false;
    }
    let started = Instant::now();
    while marker.exists() && started.elapsed() < limit && spool.prefetcher_running() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// What [`fetch_verified`] wrote.
#[derive(Clone, Copy, Debug)]
pub struct Fetched {
    pub len: u64,
    pub stored_len: u64,
    /// CRC-32C of the bytes written (the spool's check; hardware-computed, so cheap to
    /// repeat when a spooled copy is served).
    pub crc32: u32,
}

/// Fetches the archived `name`, verified (both checksums and the length), into a new staging
/// file in `dir`; `local` names the destination in messages. The file is removed if
/// anything fails, so no partial copy is ever left where it could be read.
pub async fn fetch_verified(
    catalog: &Catalog,
    name: &WalFileName,
    dir: &Path,
    prefix: &str,
    expected_len: Option<u64>,
    local: &str,
) -> Result<(NamedTempFile, Fetched)> {
    let staged = staging_file(dir, prefix)?;
    if let Some(len) = expected_len {
        preallocate(staged.as_file(), len);
    }
    let writer = CrcWriter::new(staged);
    let (writer, decoded) = catalog
        .fetch_wal(name, local, writer)
        .await
        .map_err(|e| match e {
            CatalogError::NotFound { location, .. } => Error::NotFound {
                name: name.to_string(),
                location,
            },
            e => e.into(),
        })?;
    Ok((
        writer.inner,
        Fetched {
            len: decoded.original_len,
            stored_len: decoded.stored_len,
            crc32: writer.crc32c,
        },
    ))
}

/// A segment not archived whole, from the newest tail receive-wal uploaded of it: its bytes,
/// then zeros to the segment's size (PostgreSQL refuses a short file from the archive, and
/// reads the zeros as the end of the WAL). None without a tail.
async fn fetch_tail(
    catalog: &Catalog,
    name: &WalFileName,
    dir: &Path,
    segment_size: u64,
    dest: &Path,
) -> Result<Option<impl FnOnce(Instant) -> ArchiveGetReport + use<>>> {
    if name.kind() != crate::pg::WalFileKind::Segment {
        return Ok(None);
    }
    let Some(tail) = catalog.newest_tail(name).await? else {
        return Ok(None);
    };
    let staged = staging_file(dir, STAGING_PREFIX)?;
    preallocate(staged.as_file(), segment_size);
    let local = dest.display().to_string();
    let (staged, decoded) = catalog.fetch_tail(&tail, &local, staged).await?;
    if decoded.original_len != tail.end || tail.end > segment_size {
        return Err(Error::Corrupt {
            what: format!("the received tail of {name}"),
            location: catalog.location(),
            reason: format!(
                "it holds {} bytes, its key says {}",
                decoded.original_len, tail.end
            ),
        });
    }
    staged
        .as_file()
        .set_len(segment_size)
        .map_err(|e| Error::local_io(dest.display(), e))?;
    staged
        .persist(dest)
        .map_err(|e| Error::local_io(dest.display(), e.error))?;
    tracing::warn!(
        "{name} is not archived whole: served the tail pitr receive-wal uploaded, its first {} \
         bytes (recovery ends where they end)",
        tail.end
    );
    let name = name.to_string();
    Ok(Some(move |started: Instant| ArchiveGetReport {
        name,
        len: segment_size,
        source: GetSource::Tail { end: tail.end },
        elapsed: started.elapsed(),
    }))
}

fn staging_file(dir: &Path, prefix: &str) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&crate::staging::prefix_for_this_process(prefix))
        .tempfile_in(dir)
        .map_err(|e| Error::local_io(dir.display(), e))
}

/// Reserves a segment's blocks up front: one extent allocation instead of one per page as
/// the data arrives (measured: 16 MB written in 2.6 ms instead of 3.7 ms on ext4). The file's
/// size is left alone, so a shorter result is not padded.
fn preallocate(file: &std::fs::File, len: u64) {
    // Best effort: filesystems without fallocate simply allocate as they write.
    let _ = crate::sys::preallocate(file, len);
}

/// One `restore_command` call: what [`serve`] needs beside the repository's settings.
#[derive(Clone, Debug)]
pub struct ArchiveGetRequest {
    pub name: String,
    pub dest: PathBuf,
    /// The settings as `PITR_…` variables, for a prefetcher this call starts.
    pub prefetcher_env: Vec<(String, String)>,
}

/// archive-get as PostgreSQL calls it: a segment the prefetcher spooled is served before the
/// repository (or its S3 client) is opened. A restore's replay plan decides whether "not
/// found" may stand, and archive-get keeps the restore's replay claim alive meanwhile. During
/// recovery, a served segment moves the prefetcher's cursor (and starts one if none runs).
pub async fn serve(
    repositories: &crate::commands::run::Repositories,
    request: &ArchiveGetRequest,
) -> Result<ArchiveGetReport> {
    let order = repositories.selected();
    // The spool is the first repository's: one prefetcher per recovery.
    let access = order[0];
    let options = archive_get_options(access, &request.name, &request.dest)?;
    // restore_command runs in the data directory; the plan is in pg_wal beside DEST.
    let wal_dir = wal_dir_of(&request.dest);
    let plan = crate::replay_plan::binding(&wal_dir, Path::new("."));
    let mut catalog = None;
    let outcome = match serve_from_spool(&options)? {
        Some(report) => Ok(report),
        None => {
            let planned = matches!(plan, Ok(Some(_)));
            fetch_in_turn(&order, &options, planned, &mut catalog).await
        }
    };
    let wal_name = WalFileName::parse(&request.name).ok();
    let found = match &outcome {
        Ok(_) => Some(true),
        Err(Error::NotFound { location, .. }) => {
            if let Some(missing) = wal_name
                .as_ref()
                .and_then(|n| missing_from_plan(&plan, n, location))
            {
                return Err(missing);
            }
            Some(false)
        }
        Err(_) => None,
    };
    let Some(found) = found else {
        return outcome;
    };
    if let (Ok(Some(plan)), Some(wal_name)) = (&plan, &wal_name) {
        let step = claim_step(plan, wal_name, found, &wal_dir);
        if step != ClaimStep::Nothing {
            let opened = match catalog.take() {
                Some(opened) => Ok(opened),
                None => archive_get_catalog(access, &options).await,
            };
            match opened {
                Ok(opened) => take_claim_step(&opened, plan, step, &wal_dir).await,
                Err(e) => tracing::warn!("the replay claim {}: {e}", plan.claim),
            }
        }
    }
    let report = outcome?;
    after_serving(&options, &request.prefetcher_env);
    Ok(report)
}

/// The file from the first repository of `order` that has a verified copy: one that is
/// missing, corrupt or cannot be reached is passed over (and logged) for the next. `catalog`
/// is left holding the repository that served, else the first that could be opened.
///
/// When none served: not found where every repository said so, or where some did and a
/// restore's replay plan is bound (it turns "not found" of a file recovery needs into
/// missing WAL, so a repository lost for good does not stop a recovery the others complete);
/// else the first other error, since an unreadable repository may hold the file and "not
/// found" would end recovery early.
async fn fetch_in_turn(
    order: &[&crate::commands::run::Access],
    options: &ArchiveGetOptions,
    planned: bool,
    catalog: &mut Option<Catalog>,
) -> Result<ArchiveGetReport> {
    let (mut not_found, mut failed) = (None, None);
    for (i, access) in order.iter().enumerate() {
        let error = match archive_get_catalog(access, options).await {
            Ok(opened) => match archive_get(&opened, options).await {
                Ok(report) => {
                    if i > 0 {
                        tracing::warn!("{}: served from {}", options.name, access.describe());
                    }
                    *catalog = Some(opened);
                    return Ok(report);
                }
                Err(e) => {
                    catalog.get_or_insert(opened);
                    e
                }
            },
            Err(e) => e,
        };
        if let Some(next) = order.get(i + 1) {
            let said = format!(
                "{}: {}: {error}; trying {}",
                options.name,
                access.describe(),
                next.describe()
            );
            match error {
                Error::NotFound { .. } => tracing::info!("{said}"),
                _ => tracing::warn!("{said}"),
            }
        }
        match error {
            Error::NotFound { .. } => not_found.get_or_insert(error),
            _ => failed.get_or_insert(error),
        };
    }
    match (not_found, failed) {
        (Some(not_found), Some(failed)) if planned => {
            tracing::warn!(
                "{}: not found, and one repository could not be read ({failed}); the replay \
                 plan says whether recovery needs it",
                options.name
            );
            Err(not_found)
        }
        (not_found, failed) => Err(failed.or(not_found).expect("at least one repository")),
    }
}

/// The repository for archive-get, with the spool's key cache.
async fn archive_get_catalog(
    access: &crate::commands::run::Access,
    options: &ArchiveGetOptions,
) -> Result<Catalog> {
    match &options.spool {
        Some(spool) => {
            let key_cache = spool
                .dir
                .join(crate::catalog::keys::key_cache_file(access.number));
            access.open_with_key_cache(key_cache).await
        }
        None => access.open().await,
    }
}

/// archive-get's options: the get spool when prefetching is on.
fn archive_get_options(
    access: &crate::commands::run::Access,
    name: &str,
    dest: &Path,
) -> Result<ArchiveGetOptions> {
    let spool_config = access.settings.spool()?;
    let spool = (spool_config.get_prefetch > 0).then(|| {
        GetSpool::new(crate::spool::spool_dir(
            spool_config.spool_path.as_deref(),
            &wal_dir_of(dest),
            crate::spool::SpoolKind::Get,
            &access.config.spool_key(),
        ))
    });
    Ok(ArchiveGetOptions {
        name: name.to_owned(),
        dest: dest.to_owned(),
        spool,
        prefetch_wait: access.config.retry.attempt_timeout,
    })
}

/// After a segment was served during recovery: tells the prefetcher how far recovery got,
/// and starts one if none runs. Best effort: prefetching only ever saves time.
fn after_serving(options: &ArchiveGetOptions, prefetcher_env: &[(String, String)]) {
    let Some(spool) = &options.spool else { return };
    let is_segment = WalFileName::parse(&options.name)
        .is_ok_and(|name| name.kind() == crate::pg::WalFileKind::Segment);
    // restore_command runs in the data directory; elsewhere (a call by hand) nothing is
    // prefetched.
    if !is_segment || !crate::datadir::in_recovery(Path::new(".")) {
        return;
    }
    if let Err(e) = crate::private_fs::create_dir_all(&spool.dir)
        .and_then(|()| spool.write_cursor(&options.name))
    {
        tracing::warn!("cannot write to the spool {}: {e}", spool.dir.display());
        return;
    }
    if !spool.prefetcher_running() {
        crate::commands::prefetch::start(&spool.dir, &options.name, prefetcher_env);
    }
}
