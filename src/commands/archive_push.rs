//! `pitr archive-push PATH`: PostgreSQL's `archive_command`.
//!
//! Exit 0 means the file is durable in the repository. A file that is already archived with
//! identical content succeeds again (PostgreSQL retries after a crash); one with different
//! content is a conflict and the stored copy is never replaced.
//!
//! Beside each segment it stores the segment's summary (the WAL index: commit times, record
//! range, restore points), and beside each history file its switch points. The last
//! segment of a group completes the group's rollup (`catalog::rollup`).
//!
//! Look-ahead: with `parallel` above 1, one call also stores up to `parallel - 1` other files
//! PostgreSQL has marked ready (`archive_status/*.ready`), all at once, and leaves a mark in
//! the spool for each that became durable; PostgreSQL's own call for such a file then
//! returns at once ([`archived_ahead`]). The exit code is the asked file's alone: a
//! look-ahead failure is a warning and leaves no mark, so PostgreSQL's own call pushes that
//! file again and reports what goes wrong.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::oneshot;

use crate::catalog::{Catalog, RepositoryIdentity, Stored};
use crate::codec::{CompareWriter, EncodeSummary};
use crate::error::{Error, Result};
use crate::pg::timeline::{HistoryEntry, parse_history};
use crate::pg::wal_file_check::{Misnamed, WalFileCheck, check_wal_file};
use crate::pg::wal_page::SIZE_OF_XLOG_LONG_PHD;
use crate::pg::wal_summary::{SegmentSummarizer, SegmentSummary};
use crate::pg::{FEED_BYTES, WalFileKind, WalFileName, WalLongPageHeader};
use crate::spool::{FileStat, PushQueue, PushSpool, wal_dir_of};

use super::blocking;

#[derive(Clone, Debug)]
pub struct ArchivePushOptions {
    pub path: PathBuf,
    /// Compression workers, shared by the files stored at once.
    pub threads: usize,
    /// WAL files stored at once: `path` and up to `parallel - 1` others PostgreSQL marked
    /// ready (1: no look-ahead).
    pub parallel: usize,
    /// Where the look-ahead marks what it made durable; `None`: no look-ahead.
    pub spool: Option<PushSpool>,
    /// The file's WAL name, where `path`'s own name is not it (a queued copy).
    pub name: Option<WalFileName>,
}

impl ArchivePushOptions {
    /// `path` alone, without look-ahead.
    pub fn single(path: PathBuf, threads: usize) -> Self {
        ArchivePushOptions {
            path,
            threads,
            parallel: 1,
            spool: None,
            name: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    /// The repository held an identical copy already.
    AlreadyArchived,
    /// An earlier call's look-ahead stored it: its spool mark matches the file.
    ArchivedAhead,
}

#[derive(Debug)]
pub struct ArchivePushReport {
    pub name: String,
    pub outcome: PushOutcome,
    /// What was encoded; `None` when the file was archived ahead.
    pub encoded: Option<EncodeSummary>,
    pub elapsed: Duration,
    /// Files the look-ahead made durable in this call (marked, unless a mark could not be
    /// written or the file changed meanwhile: both logged).
    pub stored_ahead: Vec<String>,
    /// Files the look-ahead tried and failed (logged; PostgreSQL's own call retries them).
    pub failed_ahead: Vec<String>,
    /// With several repositories: those that could not be reached, which hold the file in
    /// their local queue until a later call catches them up.
    pub queued_for: Vec<String>,
}

/// PostgreSQL's call for a file an earlier call's look-ahead made durable: the report,
/// without touching the repository. `None`: push it. Also removes marks whose file is gone.
pub fn archived_ahead(options: &ArchivePushOptions) -> Option<ArchivePushReport> {
    let started = Instant::now();
    let spool = options.spool.as_ref()?;
    spool.clean(&wal_dir_of(&options.path));
    let name = file_name_of(&options.path).ok()?;
    let file = FileStat::read(&options.path).ok()?;
    spool
        .proves_durable(&name, &file)
        .then(|| ArchivePushReport {
            name: name.to_string(),
            outcome: PushOutcome::ArchivedAhead,
            encoded: None,
            elapsed: started.elapsed(),
            stored_ahead: Vec::new(),
            failed_ahead: Vec::new(),
            queued_for: Vec::new(),
        })
}

/// A file the look-ahead stores: where it is and what it was before it was read.
#[derive(Debug)]
struct AheadFile {
    name: WalFileName,
    path: PathBuf,
    stat: FileStat,
}

pub async fn archive_push(
    catalog: &Catalog,
    options: &ArchivePushOptions,
) -> Result<ArchivePushReport> {
    let started = Instant::now();
    let path = options.path.clone();
    let name = match &options.name {
        Some(name) => name.clone(),
        None => file_name_of(&path)?,
    };
    let identity = catalog.identity().await?;
    let ahead = match &options.spool {
        Some(spool) if options.parallel > 1 && spool.prepare() => {
            ready_files(spool, &path, &name, options.parallel - 1)
        }
        _ => Vec::new(),
    };
    // The cores are shared: memory and CPU stay those of one push.
    let threads = (options.threads / (1 + ahead.len())).max(1);
    let names: Vec<WalFileName> = std::iter::once(name.clone())
        .chain(ahead.iter().map(|file| file.name.clone()))
        .collect();
    let mut links = link_consecutive(&names, identity.wal_segment_size).into_iter();
    let asked_links = links.next().expect("one link per file");
    let identity = &identity;
    let asked = push_file(catalog, &name, &path, identity, threads, asked_links);
    let pushes_ahead = ahead.iter().zip(links).map(|(file, links)| async move {
        let result = push_file(catalog, &file.name, &file.path, identity, threads, links).await;
        match result {
            Ok(_) => {
                let spool = options.spool.clone().expect("look-ahead has a spool");
                let (name, path, stat) = (file.name.clone(), file.path.clone(), file.stat);
                blocking(move || {
                    mark_durable(&spool, &name, &path, &stat);
                    Ok(())
                })
                .await?;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    "look-ahead: {} was not archived: {e}; PostgreSQL's own call for it will \
                     try again",
                    file.name
                );
                Err(e)
            }
        }
    });
    let (asked, ahead_results) = tokio::join!(asked, join_all(pushes_ahead));

    let mut stored: Vec<&WalFileName> = Vec::new();
    if asked.is_ok() {
        stored.push(&name);
    }
    let (mut stored_ahead, mut failed_ahead) = (Vec::new(), Vec::new());
    for (file, result) in ahead.iter().zip(&ahead_results) {
        match result {
            Ok(()) => {
                stored.push(&file.name);
                stored_ahead.push(file.name.to_string());
            }
            Err(_) => failed_ahead.push(file.name.to_string()),
        }
    }
    // In name order, once all are stored: a group completes with its last segment only if
    // the segments before it are in the repository (the look-ahead may store them at once).
    stored.sort();
    for name in stored {
        // Derived data: a failure only leaves overviews reading the group segment by segment.
        if let Err(e) = catalog.roll_up_after(name, identity.wal_segment_size).await {
            tracing::warn!("cannot write the rollup of the group {name} completes: {e}");
        }
    }
    catalog.remove_staging_leftovers().await;
    let (outcome, encoded) = asked?;
    tracing::debug!("stored and indexed after {:?}", started.elapsed());
    Ok(ArchivePushReport {
        name: name.to_string(),
        outcome,
        encoded: Some(encoded),
        elapsed: started.elapsed(),
        stored_ahead,
        failed_ahead,
        queued_for: Vec::new(),
    })
}

/// Marks `name` durable if the file is still the one that was read; a mark for a file that
/// changed meanwhile would speak for bytes that were never stored.
fn mark_durable(spool: &PushSpool, name: &WalFileName, path: &Path, before: &FileStat) {
    match FileStat::read(path) {
        Ok(now) if now == *before => {
            if let Err(e) = spool.mark(name, before) {
                tracing::warn!(
                    "look-ahead: {name} is archived, but its mark in {} could not be written: \
                     {e}; PostgreSQL's call for it will check it in the repository",
                    spool.dir().display()
                );
            } else {
                tracing::debug!("look-ahead: {name} archived and marked");
            }
        }
        _ => tracing::warn!("look-ahead: {name} changed while it was archived; not marked"),
    }
}

/// Up to `limit` files besides `asked` that PostgreSQL marked ready in the directory of
/// `path`, in [`look_ahead_order`], without those a mark already proves durable.
fn ready_files(
    spool: &PushSpool,
    path: &Path,
    asked: &WalFileName,
    limit: usize,
) -> Vec<AheadFile> {
    let wal_dir = wal_dir_of(path);
    let status_dir = wal_dir.join("archive_status");
    let entries = match std::fs::read_dir(&status_dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::debug!("look-ahead: cannot list {}: {e}", status_dir.display());
            return Vec::new();
        }
    };
    let ready = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok());
    let mut files = Vec::new();
    for name in look_ahead_order(asked, ready) {
        if files.len() == limit {
            break;
        }
        let path = wal_dir.join(name.as_str());
        // Gone, or not a file of ours to read: PostgreSQL's own call will say.
        let Ok(stat) = FileStat::read(&path) else {
            continue;
        };
        if !spool.proves_durable(&name, &stat) {
            files.push(AheadFile { name, path, stat });
        }
    }
    files
}

/// The WAL files whose archive status files (`<name>.ready`) are among `status_files`, in
/// the order the look-ahead takes them: history files first, as PostgreSQL archives them,
/// then by name; never `asked`.
fn look_ahead_order(
    asked: &WalFileName,
    status_files: impl IntoIterator<Item = String>,
) -> Vec<WalFileName> {
    let mut names: Vec<WalFileName> = status_files
        .into_iter()
        .filter_map(|file| WalFileName::parse(file.strip_suffix(".ready")?).ok())
        .filter(|name| name != asked)
        .collect();
    names.sort_by(|a, b| {
        let history_first = |n: &WalFileName| n.kind() != WalFileKind::History;
        (history_first(a), a.as_str()).cmp(&(history_first(b), b.as_str()))
    });
    names
}

/// How a file's summary reaches the next segment stored in the same call: that segment's
/// first record may begin in this one (the carry), and the repository has no summary of
/// this one yet.
#[derive(Debug, Default)]
struct SummaryLinks {
    from_previous: Option<oneshot::Receiver<SegmentSummary>>,
    to_next: Option<oneshot::Sender<SegmentSummary>>,
}

/// One [`SummaryLinks`] per name: linked where a name is the segment after another.
fn link_consecutive(names: &[WalFileName], segment_size: u64) -> Vec<SummaryLinks> {
    let mut links: Vec<SummaryLinks> = names.iter().map(|_| SummaryLinks::default()).collect();
    for (next, name) in names.iter().enumerate() {
        if let Some(previous) = previous_segment(name, segment_size)
            && let Some(previous) = names.iter().position(|n| *n == previous)
        {
            let (tx, rx) = oneshot::channel();
            links[previous].to_next = Some(tx);
            links[next].from_previous = Some(rx);
        }
    }
    links
}

/// The segment before `name` on its timeline, for segments and partial segments.
fn previous_segment(name: &WalFileName, segment_size: u64) -> Option<WalFileName> {
    if !name.holds_wal_pages() {
        return None;
    }
    let segno = name.segment_number(segment_size)?.checked_sub(1)?;
    WalFileName::segment(name.timeline(), segno, segment_size)
}

/// Stores one file and its index entry.
async fn push_file(
    catalog: &Catalog,
    name: &WalFileName,
    path: &Path,
    identity: &RepositoryIdentity,
    threads: usize,
    links: SummaryLinks,
) -> Result<(PushOutcome, EncodeSummary)> {
    // Before anything is stored: a file that is not what its name says never is, and a
    // stored history that every retry refuses would stop archiving for good.
    let (checked_path, checked_name, checked_identity) =
        (path.to_owned(), name.clone(), identity.clone());
    blocking(move || {
        if checked_name.holds_wal_pages() {
            check_segment(&checked_path, &checked_name, &checked_identity)
        } else {
            check_text_file(&checked_path, &checked_name, &checked_identity)?;
            if checked_name.kind() == WalFileKind::History {
                read_history(&checked_path, &checked_name)?;
            }
            Ok(())
        }
    })
    .await?;
    // The previous segment's summary (read while compressing) completes a record that
    // straddles the boundary.
    let (stored, previous) = tokio::join!(
        catalog.store_wal(name, path, threads),
        previous_summary(catalog, name, identity, links.from_previous)
    );
    let (stored, encoded) = stored?;
    let outcome = match stored {
        Stored::New => PushOutcome::Stored,
        Stored::AlreadyThere => {
            // Another push of the same file may still be writing it where the store does not
            // make a put atomic (s3s-fs, some S3-compatible servers): a read that breaks off is
            // tried again before it counts (a corrupt copy counts at once).
            let mut attempt = 1;
            loop {
                match compare_with_stored(catalog, name, path).await {
                    Err(Error::Storage(_)) if attempt < 3 => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    }
                    result => break result?,
                }
            }
            tracing::warn!("{name} was already archived with identical content; nothing to do");
            PushOutcome::AlreadyArchived
        }
    };
    index(catalog, name, path, identity, previous, links.to_next).await?;
    Ok((outcome, encoded))
}

/// The summary of the segment before `name` on its timeline, if it has one: handed over by
/// its push in this call, else read from the repository. Errors only cost the straddling
/// record, so they are logged, not raised.
async fn previous_summary(
    catalog: &Catalog,
    name: &WalFileName,
    identity: &RepositoryIdentity,
    from_previous: Option<oneshot::Receiver<SegmentSummary>>,
) -> Option<SegmentSummary> {
    if let Some(handed) = from_previous
        && let Ok(summary) = handed.await
    {
        return Some(summary);
    }
    let previous = previous_segment(name, identity.wal_segment_size)?;
    match catalog.segment_summary(&previous).await {
        Ok(summary) => summary,
        Err(e) => {
            tracing::warn!("cannot read the summary of {previous}: {e}");
            None
        }
    }
}

/// Stores the WAL index entry of an archived segment or history file. Runs also when the
/// file was already archived, so that a retry completes an index that a crash left out.
async fn index(
    catalog: &Catalog,
    name: &WalFileName,
    path: &Path,
    identity: &RepositoryIdentity,
    previous: Option<SegmentSummary>,
    to_next: Option<oneshot::Sender<SegmentSummary>>,
) -> Result<()> {
    match name.kind() {
        WalFileKind::Segment | WalFileKind::Partial => {
            // check_segment proved the name's segment is this cluster's.
            let Some(start) = name.start_lsn(identity.wal_segment_size) else {
                return Ok(());
            };
            let (segment_size, block_size) =
                (identity.wal_segment_size, identity.wal_block_size as usize);
            let path = path.to_owned();
            let (summary, map) = blocking(move || {
                let carry = previous.as_ref().and_then(|p| p.carry.as_ref());
                let mut summarizer =
                    SegmentSummarizer::new(start, segment_size, block_size, carry).with_block_map();
                for_each_window(&path, |window| {
                    for piece in window.chunks(FEED_BYTES) {
                        summarizer.feed(piece);
                    }
                })?;
                Ok(summarizer.finish_with_map())
            })
            .await?;
            if let Some(next) = to_next {
                let _ = next.send(summary.clone());
            }
            // The map first: a summary present means the segment was indexed whole.
            if let Some(map) = &map {
                catalog.put_block_map(name, map).await?;
            }
            catalog.put_segment_summary(name, &summary).await?;
        }
        WalFileKind::History => {
            let entries = read_history(path, name)?;
            catalog.put_history_summary(name, &entries).await?;
        }
        WalFileKind::BackupHistory => {}
    }
    Ok(())
}

/// The switch points of the history file at `path`, read as PostgreSQL reads it: refused
/// (invalid input) only where PostgreSQL would refuse it.
fn read_history(path: &Path, name: &WalFileName) -> Result<Vec<HistoryEntry>> {
    let text = std::fs::read(path).map_err(|e| Error::local_io(path.display(), e))?;
    parse_history(name.timeline(), &String::from_utf8_lossy(&text)).map_err(|e| {
        Error::invalid_input(
            path.display(),
            format!("not a timeline history PostgreSQL could read: {e}"),
        )
    })
}

/// Hands `path` to `read` a mapped window at a time: only one window's pages count in this
/// process's memory, however many files are summarised at once.
fn for_each_window(path: &Path, mut read: impl FnMut(&[u8])) -> Result<()> {
    const WINDOW: u64 = 2 << 20;
    let local = |e: std::io::Error| Error::local_io(path.display(), e);
    let file = File::open(path).map_err(local)?;
    let len = file.metadata().map_err(local)?.len();
    let mut offset = 0;
    while offset < len {
        let window_len = WINDOW.min(len - offset);
        // A segment PostgreSQL is archiving: the contract of map_wal_segment. The window is at
        // most WINDOW bytes, so it fits a usize.
        let window =
            crate::sys::map_wal_segment(&file, offset, window_len as usize).map_err(local)?;
        read(&window);
        offset += window_len;
    }
    Ok(())
}

fn file_name_of(path: &Path) -> Result<WalFileName> {
    let leaf = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid_input(path.display(), "not a file path"))?;
    WalFileName::parse(leaf).map_err(|e| Error::invalid_input(path.display(), e))
}

/// Refuses WAL from another cluster, or a file that is not the segment its name says.
fn check_segment(path: &Path, name: &WalFileName, identity: &RepositoryIdentity) -> Result<()> {
    let invalid = |reason: String| Error::invalid_input(path.display(), reason);
    let local = |e: std::io::Error| Error::local_io(path.display(), e);
    let file = File::open(path).map_err(local)?;
    let len = file.metadata().map_err(local)?.len();
    let mut page = [0u8; SIZE_OF_XLOG_LONG_PHD];
    file.read_exact_at(&mut page, 0)
        .map_err(|e| invalid(format!("cannot read the WAL page header: {e}")))?;
    if page.iter().all(|&b| b == 0) {
        return Err(refused(path, Misnamed::Zeros));
    }
    let header =
        WalLongPageHeader::parse(&page).map_err(|e| Error::invalid_input(path.display(), e))?;

    // The version first: after pg_upgrade the system identifier differs too, and the
    // version names the reason.
    if header.pg_major_version != identity.pg_version {
        return Err(Error::WrongRepository(format!(
            "{name} was written by PostgreSQL {} but the repository holds PostgreSQL {}: \
             after pg_upgrade, start a new repository (pitr init) for the upgraded cluster",
            header.pg_major_version, identity.pg_version
        )));
    }
    if header.system_identifier != identity.system_identifier {
        return Err(Error::WrongRepository(format!(
            "{name} comes from the cluster with system identifier {}, but repository \
             belongs to system identifier {}: archive each cluster to its own repository",
            header.system_identifier, identity.system_identifier
        )));
    }
    if u64::from(header.wal_segment_size) != identity.wal_segment_size {
        return Err(Error::WrongRepository(format!(
            "{name} has WAL segment size {} but the repository was initialised for {}",
            header.wal_segment_size, identity.wal_segment_size
        )));
    }
    if len != identity.wal_segment_size {
        return Err(invalid(format!(
            "is {len} bytes, but WAL segments of this cluster are {} bytes",
            identity.wal_segment_size
        )));
    }
    if name.start_lsn(identity.wal_segment_size).is_none() {
        return Err(invalid(format!(
            "the name is out of range for WAL segments of {} bytes",
            identity.wal_segment_size
        )));
    }
    // Every page, as archive-get and verify will check it: a file renamed to another
    // segment's name is refused before anything is stored.
    let mut check = WalFileCheck::new(name, identity.wal_geometry());
    for_each_window(path, |window| check.feed(window))?;
    check.finish().map_err(|misnamed| refused(path, misnamed))
}

/// Refuses a history or backup history file whose text is not the file its name says.
fn check_text_file(path: &Path, name: &WalFileName, identity: &RepositoryIdentity) -> Result<()> {
    let text = std::fs::read(path).map_err(|e| Error::local_io(path.display(), e))?;
    check_wal_file(name, identity.wal_geometry(), &text).map_err(|misnamed| refused(path, misnamed))
}

fn refused(path: &Path, misnamed: Misnamed) -> Error {
    Error::invalid_input(path.display(), format!("it {misnamed}; nothing was stored"))
}

/// Succeeds only if the stored object decodes to exactly the bytes at `path`.
pub(crate) async fn compare_with_stored(
    catalog: &Catalog,
    name: &WalFileName,
    path: &Path,
) -> Result<()> {
    let local = File::open(path).map_err(|e| Error::local_io(path.display(), e))?;
    let compare = CompareWriter::new(BufReader::with_capacity(1 << 20, local));
    let (compare, _) = catalog
        .fetch_wal(name, &path.display().to_string(), compare)
        .await
        .map_err(|e| {
            let mut e = Error::from(e);
            if let Error::Corrupt { reason, .. } = &mut e {
                reason.push_str("; it was left in place for inspection");
            }
            e
        })?;
    let identical = compare
        .finish()
        .map_err(|e| Error::local_io(path.display(), e))?;
    if identical {
        Ok(())
    } else {
        Err(Error::Conflict {
            name: name.to_string(),
            location: catalog.location(),
        })
    }
}

/// archive-push as PostgreSQL calls it: into every repository (or the one `repo_index`
/// picks), each with its look-ahead and its queue (see [`push_to_each`]).
pub async fn push(
    repositories: &crate::commands::run::Repositories,
    path: PathBuf,
    threads: usize,
) -> Result<ArchivePushReport> {
    match repositories.selected().as_slice() {
        [one] => push_one(one, path, threads).await,
        several => push_to_each(several, path, threads).await,
    }
}

/// archive-push into one repository, with the look-ahead: a file an earlier call's
/// look-ahead stored returns before the repository (or its S3 client) is opened, so that
/// PostgreSQL's calls for the files stored ahead cost a few local system calls.
async fn push_one(
    access: &crate::commands::run::Access,
    path: PathBuf,
    threads: usize,
) -> Result<ArchivePushReport> {
    let spool = access.settings.spool()?;
    let repository = access.config.spool_key();
    let dir = push_spool_dir(access, &path)?;
    let key_cache = dir.join(crate::catalog::keys::KEY_CACHE_FILE);
    let options = ArchivePushOptions {
        path,
        threads,
        parallel: spool.push_parallel,
        spool: Some(PushSpool::new(dir, repository)),
        name: None,
    };
    if let Some(report) = archived_ahead(&options) {
        return Ok(report);
    }
    let catalog = access.open_with_key_cache(key_cache).await?;
    archive_push(&catalog, &options).await
}

/// The directory of archive-push's marks (and key cache) for `access`, beside the WAL at
/// `path` (or in spool_path).
fn push_spool_dir(access: &crate::commands::run::Access, path: &Path) -> Result<PathBuf> {
    Ok(crate::spool::spool_dir(
        access.settings.spool()?.spool_path.as_deref(),
        &wal_dir_of(path),
        crate::spool::SpoolKind::Push,
        &access.config.spool_key(),
    ))
}

/// The queue archive-push keeps for `access` beside the WAL at `path` (or in spool_path).
fn queue_of(access: &crate::commands::run::Access, path: &Path) -> Result<PushQueue> {
    let spool = access.settings.spool()?;
    Ok(PushQueue::new(crate::spool::spool_dir(
        spool.spool_path.as_deref(),
        &wal_dir_of(path),
        crate::spool::SpoolKind::Queue,
        &access.config.queue_key(),
    )))
}

/// How one repository of several took the file.
enum Took {
    Stored(ArchivePushReport),
    /// Lagging: a queued copy stands for it until the repository is caught up.
    Queued,
}

/// The file into each of several repositories at once. Exit 0 means it is durable in each,
/// or durable in at least one and, for each that could not be reached, in that one's local
/// queue (at most `archive_push_queue_max` bytes per repository). A repository with a queue
/// is caught up first, in name order, and is tried once per call (not for the whole retry
/// time) while it stays unreachable; the files meanwhile join its queue.
async fn push_to_each(
    targets: &[&crate::commands::run::Access],
    path: PathBuf,
    threads: usize,
) -> Result<ArchivePushReport> {
    let started = Instant::now();
    let name = file_name_of(&path)?;
    // Each repository compresses (and encrypts) with its own settings: the cores are shared.
    let threads = (threads / targets.len()).max(1);
    let pushes = targets.iter().map(|access| {
        let path = path.clone();
        async move {
            let queue = queue_of(access, &path)?;
            if !queue.entries().is_empty() {
                match catch_up(access, &queue, &path, threads).await {
                    Ok(count) => tracing::warn!(
                        "{}: caught up {count} queued WAL file(s)",
                        access.describe()
                    ),
                    Err(e) if queueable(&e) => {
                        tracing::warn!("{} is still behind: {e}", access.describe());
                        return Ok(Took::Queued);
                    }
                    Err(e) => return Err(e),
                }
            }
            push_one(access, path, threads).await.map(Took::Stored)
        }
    });
    let results = join_all(pushes).await;
    let stored_somewhere = results.iter().any(|r| matches!(r, Ok(Took::Stored(_))));
    let mut report = None;
    let mut queued_for = Vec::new();
    let mut failure = None;
    for (access, result) in targets.iter().zip(results) {
        let lagging = match result {
            Ok(Took::Stored(stored)) => {
                report.get_or_insert(stored);
                continue;
            }
            Ok(Took::Queued) => None,
            Err(e) if queueable(&e) => Some(e),
            Err(e) => {
                tracing::error!("{}: {e}", access.describe());
                failure.get_or_insert(e);
                continue;
            }
        };
        if !stored_somewhere {
            failure.get_or_insert(lagging.unwrap_or_else(|| {
                Error::Incomplete(format!(
                    "{name} is in no repository: every one is unreachable"
                ))
            }));
            continue;
        }
        match enqueue(access, &name, &path) {
            Ok(()) => {
                if let Some(e) = lagging {
                    tracing::warn!(
                        "{name} is queued for {}, which cannot be reached ({e}); the others \
                         hold it, and a later archive-push catches it up",
                        access.describe()
                    );
                }
                queued_for.push(access.describe());
            }
            Err(e) => {
                tracing::error!("{e}");
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let mut report = report.unwrap_or_else(|| ArchivePushReport {
        name: name.to_string(),
        outcome: PushOutcome::Stored,
        encoded: None,
        elapsed: Duration::ZERO,
        stored_ahead: Vec::new(),
        failed_ahead: Vec::new(),
        queued_for: Vec::new(),
    });
    report.elapsed = started.elapsed();
    report.queued_for = queued_for;
    Ok(report)
}

/// Whether `error` says the repository could not be reached (a queue may stand in for it),
/// rather than that the file or the settings are wrong (which no queue mends).
fn queueable(error: &Error) -> bool {
    matches!(error, Error::Storage(e) if !matches!(e, crate::storage::StorageError::Config(_)))
}

/// Adds the file to `access`'s queue, within `archive_push_queue_max`.
fn enqueue(access: &crate::commands::run::Access, name: &WalFileName, path: &Path) -> Result<()> {
    let queue = queue_of(access, path)?;
    let max = access.settings.spool()?.push_queue_max;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::local_io(path.display(), e))?
        .len();
    let queued = queue.bytes();
    if max == 0 || queued + len > max {
        return Err(Error::Incomplete(format!(
            "{name} could not be stored in {}, and its queue ({} queued in {}) would pass \
             archive_push_queue_max ({}): archiving stops until it can be reached (or raise \
             archive_push_queue_max)",
            access.describe(),
            bytesize::ByteSize(queued),
            queue.dir.display(),
            bytesize::ByteSize(max)
        )));
    }
    queue
        .add(name, path)
        .map_err(|e| Error::local_io(queue.dir.display(), e))?;
    Ok(())
}

/// Stores `access`'s queued files into it, in order, removing each once stored; one try per
/// file, with no retries beyond a few seconds. The number stored.
async fn catch_up(
    access: &crate::commands::run::Access,
    queue: &PushQueue,
    wal_path: &Path,
    threads: usize,
) -> Result<usize> {
    let probe = access.probing();
    // The key cache of its pushes: a passphrase costs no key derivation per call.
    let key_cache = push_spool_dir(access, wal_path)?.join(crate::catalog::keys::KEY_CACHE_FILE);
    let catalog = probe.open_with_key_cache(key_cache).await?;
    let mut count = 0;
    for entry in queue.entries() {
        let intact = crate::spool::holds_crc(&entry.path, entry.crc32)
            .map_err(|e| Error::local_io(entry.path.display(), e))?;
        if !intact {
            return Err(Error::Corrupt {
                what: format!("the queued copy of {}", entry.name),
                location: queue.dir.display().to_string(),
                reason: format!(
                    "it does not match its checksum; another repository holds {}: copy it \
                     from there (pitr copy), then remove the queued file",
                    entry.name
                ),
            });
        }
        let options = ArchivePushOptions {
            name: Some(entry.name.clone()),
            ..ArchivePushOptions::single(entry.path.clone(), threads)
        };
        archive_push(&catalog, &options).await?;
        queue.remove(&entry);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(name: &str) -> WalFileName {
        WalFileName::parse(name).unwrap()
    }

    #[test]
    fn look_ahead_takes_history_files_first_then_names_in_order() {
        let asked = wal("000000010000000000000003");
        let status_files = [
            "000000010000000000000005.ready",
            "000000010000000000000003.ready", // the asked file itself
            "000000010000000000000004.ready",
            "000000010000000000000002.done", // archived already
            "00000002.history.ready",
            "000000010000000000000004.00000028.backup.ready",
            "000000010000000000000006.partial.ready",
            "xlogtemp.123.ready", // not a WAL file name
            "000000010000000000000007",
        ]
        .map(String::from);
        let order: Vec<String> = look_ahead_order(&asked, status_files)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            order,
            [
                "00000002.history",
                "000000010000000000000004",
                "000000010000000000000004.00000028.backup",
                "000000010000000000000005",
                "000000010000000000000006.partial",
            ]
        );
    }

    #[test]
    fn summaries_are_handed_on_between_consecutive_segments_only() {
        let size = 16 << 20;
        let names = [
            wal("000000010000000000000003"),
            wal("000000010000000000000005"),
            wal("000000010000000000000004"),
            wal("00000002.history"),
            wal("000000020000000000000006"),
            wal("000000010000000000000006.partial"),
        ];
        let links = link_consecutive(&names, size);
        let linked = |i: usize| (links[i].from_previous.is_some(), links[i].to_next.is_some());
        assert_eq!(linked(0), (false, true)); // 3 → 4
        assert_eq!(linked(2), (true, true)); // 3 → 4 → 5
        assert_eq!(linked(1), (true, true)); // 4 → 5 → partial 6
        assert_eq!(linked(3), (false, false));
        assert_eq!(linked(4), (false, false)); // timeline 2 has no segment 5 here
        assert_eq!(linked(5), (true, false));
    }
}
