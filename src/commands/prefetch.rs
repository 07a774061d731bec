//! The prefetcher behind archive-get: a background process that archive-get starts during
//! recovery. It fetches, verifies and decompresses the segments recovery will ask for next,
//! several at once, into the get spool, so that the following archive-get calls only check
//! and rename a file.
//!
//! Which segments come next is the archive's overview's answer (the WAL index: which
//! segments exist, on which timeline), walked along the timeline history the way
//! PostgreSQL reads it; nothing is probed. The spool holds at most `queue_max` bytes: the
//! window is the next `queue_max / segment size` segments after the last one served (the
//! cursor archive-get writes), and anything outside the window is removed.
//!
//! It stops, and removes the spool, when recovery ends (no recovery.signal or
//! standby.signal, or no postmaster), or when no segment was served for [`IDLE_LIMIT`].
//! Whatever it fails to fetch, archive-get fetches itself, with the normal error semantics.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::catalog::{Catalog, RepositoryIdentity};
use crate::error::{Error, Result};
use crate::pg::timeline::timeline_path;
use crate::pg::{Lsn, WalFileKind, WalFileName};
use crate::recovery::view::ArchiveView;
use crate::recovery::walk::Walk;
use crate::spool::{GetSpool, PREFETCH_STAGING_PREFIX};

use super::archive_get::fetch_verified;

/// How often the prefetcher looks at the cursor and the spool.
const TICK: Duration = Duration::from_millis(5);
/// How often it looks whether recovery still runs.
const RECOVERY_CHECK: Duration = Duration::from_millis(100);
/// No segment served for this long: recovery stalled or ended unseen; stop.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// The overview is loaded again at most this often when the walk reaches its end (WAL may
/// still be arriving: a standby following a primary's archive).
const RELOAD_AFTER: Duration = Duration::from_secs(10);
/// A segment whose fetch failed is tried again after this long (archive-get fetches it
/// itself meanwhile if recovery gets there first).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Bytes of the spool's own small files (cursor, lock, markers), kept out of the window.
const BOOKKEEPING: u64 = 4096;

#[derive(Clone, Debug)]
pub struct PrefetchOptions {
    /// The segment archive-get served when it started the prefetcher.
    pub after: String,
    pub spool: GetSpool,
    /// Segments fetched at once.
    pub parallel: usize,
    /// Most bytes the spool holds.
    pub queue_max: u64,
    /// The data directory in recovery (restore_command's working directory).
    pub pgdata: PathBuf,
    /// With several repositories: the others, in order, to fetch a segment from when this
    /// one's copy is missing, damaged or cannot be read.
    pub fallbacks: Vec<Catalog>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Another prefetcher holds the spool.
    AlreadyRunning,
    RecoveryEnded,
    Idle,
    /// `queue_max` holds less than one segment.
    SpoolTooSmall,
}

#[derive(Debug)]
pub struct PrefetchReport {
    pub fetched: u64,
    pub stopped: StopReason,
}

pub async fn prefetch(catalog: &Catalog, options: &PrefetchOptions) -> Result<PrefetchReport> {
    let spool = &options.spool;
    let Some(_lock) = spool
        .lock_prefetcher()
        .map_err(|e| Error::local_io(spool.dir.display(), e))?
    else {
        return Ok(PrefetchReport {
            fetched: 0,
            stopped: StopReason::AlreadyRunning,
        });
    };
    let identity = catalog.identity().await?;
    let segment_size = identity.wal_segment_size;
    // A spool left by recovery from another cluster's repository at this URL is not ours.
    if spool
        .read_identity()
        .is_some_and(|id| id.trim() != identity.system_identifier.to_string())
    {
        for entry in spool.entries() {
            let _ = std::fs::remove_file(&entry.path);
        }
    }
    spool
        .write_identity(identity.system_identifier)
        .map_err(|e| Error::local_io(spool.dir.display(), e))?;
    spool.remove_fetching_markers();
    crate::staging::remove_leftovers(&spool.dir, PREFETCH_STAGING_PREFIX, true);

    let capacity = (options.queue_max.saturating_sub(BOOKKEEPING) / segment_size) as usize;
    if capacity == 0 {
        tracing::warn!(
            "archive_get_queue_max ({} bytes) holds no whole segment of {segment_size} bytes: \
             not prefetching",
            options.queue_max
        );
        return Ok(PrefetchReport {
            fetched: 0,
            stopped: StopReason::SpoolTooSmall,
        });
    }
    let parallel = options.parallel.max(1);

    let mut cursor = Cursor::parse(&options.after, segment_size)
        .ok_or_else(|| Error::invalid_input(&options.after, "not a WAL segment name"))?;
    let (mut view, mut walk) = load_walk(catalog, &identity, &cursor).await?;
    let mut loaded_at = Instant::now();
    let mut last_progress = Instant::now();
    let mut in_flight: JoinSet<(String, Result<()>)> = JoinSet::new();
    let mut fetching: HashSet<String> = HashSet::new();
    let mut failed: HashMap<String, Instant> = HashMap::new();
    let mut fetched = 0u64;
    let mut checked_recovery = Instant::now() - RECOVERY_CHECK;

    let stopped = loop {
        if checked_recovery.elapsed() > RECOVERY_CHECK {
            if !crate::datadir::in_recovery(&options.pgdata) {
                break StopReason::RecoveryEnded;
            }
            checked_recovery = Instant::now();
        }
        if last_progress.elapsed() > IDLE_LIMIT {
            break StopReason::Idle;
        }
        if let Some(served) = spool
            .read_cursor()
            .and_then(|c| Cursor::parse(&c, segment_size))
            .filter(|c| c.name != cursor.name)
        {
            cursor = served;
            last_progress = Instant::now();
            let segno = cursor.segno;
            if !walk.reaches(segno) {
                // Past what the overview showed: WAL arrived since; look again.
                (view, walk) = load_walk(catalog, &identity, &cursor).await?;
                loaded_at = Instant::now();
            } else if walk.index_of(cursor.name.timeline(), segno).is_none() {
                // Recovery reads another timeline than the newest (a target timeline).
                walk = plan(&view, &cursor, false);
            }
        }
        let window = window(&walk, cursor.segno, capacity);
        let wanted: HashSet<&str> = window.iter().map(String::as_str).collect();
        let mut held = HashSet::new();
        for entry in spool.entries() {
            if wanted.contains(entry.name.as_str()) {
                held.insert(entry.name);
            } else {
                let _ = std::fs::remove_file(&entry.path);
            }
        }
        for name in &window {
            // In flight may be a segment that left the window (recovery got it elsewhere):
            // it still takes room until it lands and is removed.
            if in_flight.len() >= parallel || held.len() + in_flight.len() >= capacity {
                break;
            }
            let retry_due = failed.get(name).is_none_or(|at| at.elapsed() > RETRY_AFTER);
            if held.contains(name) || fetching.contains(name) || !retry_due {
                continue;
            }
            let Ok(wal_name) = WalFileName::parse(name) else {
                continue;
            };
            fetching.insert(name.clone());
            let (catalog, spool, name) = (catalog.clone(), spool.clone(), name.clone());
            let fallbacks = options.fallbacks.clone();
            in_flight.spawn(async move {
                let mut result = fetch_one(&catalog, &spool, &wal_name, segment_size).await;
                for fallback in &fallbacks {
                    let Err(e) = &result else { break };
                    tracing::warn!(
                        "prefetch of {name} from {}: {e}; trying {}",
                        catalog.location(),
                        fallback.location()
                    );
                    result = fetch_one(fallback, &spool, &wal_name, segment_size).await;
                }
                (name, result)
            });
        }
        if window.len() < capacity && loaded_at.elapsed() > RELOAD_AFTER {
            (view, walk) = load_walk(catalog, &identity, &cursor).await?;
            loaded_at = Instant::now();
        }
        tokio::select! {
            Some(done) = in_flight.join_next() => {
                let (name, result) = done.expect("prefetch task panicked");
                fetching.remove(&name);
                match result {
                    Ok(()) => {
                        fetched += 1;
                        failed.remove(&name);
                    }
                    Err(e) => {
                        tracing::warn!("prefetching {name}: {e}; archive-get will fetch it itself");
                        failed.insert(name, Instant::now());
                    }
                }
            }
            () = tokio::time::sleep(TICK) => {}
        }
    };
    in_flight.abort_all();
    while in_flight.join_next().await.is_some() {}
    spool.remove();
    Ok(PrefetchReport { fetched, stopped })
}

/// The segment recovery asked for last, with its number and start: checked once where it is
/// read (the command line, the cursor file in the data directory), so that nothing after it
/// can fail on a name out of range for the segment size.
#[derive(Clone, Debug)]
struct Cursor {
    name: WalFileName,
    segno: u64,
    start: Lsn,
}

impl Cursor {
    fn parse(name: &str, segment_size: u64) -> Option<Self> {
        let name = WalFileName::parse(name)
            .ok()
            .filter(|n| n.kind() == WalFileKind::Segment)?;
        Some(Cursor {
            segno: name.segment_number(segment_size)?,
            start: name.start_lsn(segment_size)?,
            name,
        })
    }
}

/// The archive's overview, read again, and the walk from `cursor` along the newest timeline.
async fn load_walk(
    catalog: &Catalog,
    identity: &RepositoryIdentity,
    cursor: &Cursor,
) -> Result<(ArchiveView, Walk)> {
    let view = ArchiveView::load(catalog, identity).await?;
    let walk = plan(&view, cursor, true);
    Ok((view, walk))
}

/// The segments recovery reads from `cursor` on: along the newest timeline descending from
/// the cursor's (`recovery_target_timeline = 'latest'`, the default), or along the cursor's
/// own timeline once recovery showed it follows that one.
fn plan(view: &ArchiveView, cursor: &Cursor, latest: bool) -> Walk {
    let timeline = cursor.name.timeline();
    let target = if latest {
        view.latest_timeline(timeline)
    } else {
        timeline
    };
    let path = view
        .path(target)
        .unwrap_or_else(|| timeline_path(timeline, &[]));
    view.walk(&path, cursor.start)
}

/// The names of the first `capacity` segments of `walk` after segment `cursor_segno`.
fn window(walk: &Walk, cursor_segno: u64, capacity: usize) -> Vec<String> {
    walk.segments
        .iter()
        .filter(|&(_, segno)| segno > cursor_segno)
        .take(capacity)
        .map(|segment| walk.segments.name(segment))
        .collect()
}

/// Fetches `name` into the spool: verified into a staging file, then renamed to
/// its entry name, while a `.fetching` marker tells archive-get to wait for it.
async fn fetch_one(
    catalog: &Catalog,
    spool: &GetSpool,
    name: &WalFileName,
    segment_size: u64,
) -> Result<()> {
    let marker = spool.fetching_marker(name.as_str());
    let _ = crate::private_fs::write(&marker, b"");
    let result = async {
        let (staged, fetched) = fetch_verified(
            catalog,
            name,
            &spool.dir,
            PREFETCH_STAGING_PREFIX,
            Some(segment_size),
            &spool.dir.display().to_string(),
        )
        .await?;
        // Not synced: a copy a crash tore fails its checksum when served, and is fetched
        // again.
        let entry = spool.entry_path(name.as_str(), fetched.crc32);
        staged
            .persist(&entry)
            .map_err(|e| Error::local_io(entry.display(), e.error))?;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&marker);
    result
}

/// Starts `pitr archive-get-prefetch` in its own session, so that it outlives the
/// archive-get call that starts it, with that call's settings (`env`, as PITR_… variables).
pub fn start(spool: &std::path::Path, after: &str, env: &[(String, String)]) {
    use std::process::Stdio;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spool = std::path::absolute(spool).unwrap_or_else(|_| spool.to_owned());
    let mut command = std::process::Command::new(exe);
    command
        .arg("archive-get-prefetch")
        .arg("--spool")
        .arg(&spool)
        .arg(after)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_for_prefetcher());
    crate::sys::spawn_in_new_session(&mut command);
    match command.spawn() {
        // Not waited for: it runs on after this call.
        Ok(child) => drop(child),
        Err(e) => tracing::warn!("cannot start the prefetcher: {e}"),
    }
}

/// The server's log when this process writes to a file (pg_ctl -l); nothing when stderr is
/// a pipe, whose reader (PostgreSQL's collector, or a caller waiting for the end of output)
/// must not be held open by a process that outlives this call.
fn stderr_for_prefetcher() -> std::process::Stdio {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr();
    let is_file = stderr
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.is_file());
    if is_file {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    }
}
