//! `pitr verify`: reads every object of the repository and proves it intact.
//!
//! Every WAL object and every object of every backup is decoded with bounded parallelism and
//! both of its checksums are checked; manifests are read and the objects they name must
//! exist. Then the WAL of each timeline is checked for gaps from the oldest backup's start
//! (also the parent timeline up to each switch point), each backup's own WAL range for
//! completeness, timeline history files for contradictions, and backups for a lost manifest.
//! Segments without a WAL index entry (archived by an older pitr) are indexed on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;

use crate::catalog::backup::BackupManifest;
use crate::catalog::wal::ArchivedFile;
use crate::catalog::{Catalog, CatalogError, StoredObject, total_bytes};
use crate::error::{EXIT_CORRUPT, EXIT_INCOMPLETE, EXIT_OK, Error, Result};
use crate::pg::backup_label::parse_backup_label;
use crate::pg::timeline::{HistoryEntry, parse_history, timeline_of_segment, timeline_path};
use crate::pg::wal_name::xlog_file_name;
use crate::pg::{WalFileKind, WalFileName};
use crate::recovery::ArchiveView;

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Objects read at once.
    pub jobs: usize,
    /// Only this backup, and the WAL from its start on.
    pub backup: Option<String>,
    /// An encrypted repository without its key gets the checksum-only verify: asked for
    /// explicitly (`--no-key`), since it proves much less than a verify with the key and must
    /// not pass for one in monitoring.
    pub without_key: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// An object whose checksums or structure are wrong.
    Corrupt { key: String, reason: String },
    /// An object that could not be read.
    Unreadable { key: String, reason: String },
    /// Segments absent where the WAL of a timeline must be continuous.
    MissingWal {
        timeline: u32,
        first: String,
        last: String,
        count: u64,
    },
    /// A timeline with WAL but no history file.
    MissingHistory { timeline: u32 },
    /// A history file that is invalid or contradicts its parent's.
    BadHistory { key: String, reason: String },
    /// A backup whose WAL from start to stop is not all archived: it cannot become consistent.
    BackupWalIncomplete { backup: String, missing: String },
    /// An object a backup's manifest names is not in the repository.
    MissingBackupObject { backup: String, key: String },
    /// An incremental backup whose parent (or an older backup of its chain) has no sound
    /// manifest.
    BrokenChain { backup: String, missing: String },
    /// A WAL summary that fails its checksum or does not parse; verify writes it again.
    DamagedSummary { file: String, reason: String },
    /// A backup that finished (its backup history file is archived) but has no manifest.
    MissingManifest { backup: String, key: String },
}

impl Problem {
    fn is_damage(&self) -> bool {
        matches!(
            self,
            Problem::Corrupt { .. } | Problem::Unreadable { .. } | Problem::DamagedSummary { .. }
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Corrupt { key, reason } => write!(f, "corrupt: {key}: {reason}"),
            Problem::Unreadable { key, reason } => write!(f, "unreadable: {key}: {reason}"),
            Problem::MissingWal {
                timeline,
                first,
                last,
                count,
            } => write!(
                f,
                "missing WAL on timeline {timeline}: {first} to {last} ({count} segment{})",
                if *count == 1 { "" } else { "s" }
            ),
            Problem::MissingHistory { timeline } => write!(
                f,
                "timeline {timeline} has WAL but no history file {timeline:08X}.history"
            ),
            Problem::BadHistory { key, reason } => write!(f, "history: {key}: {reason}"),
            Problem::DamagedSummary { file, reason } => write!(
                f,
                "damaged WAL summary of {file}: {reason} (written again from the WAL)"
            ),
            Problem::BackupWalIncomplete { backup, missing } => write!(
                f,
                "backup {backup} cannot be restored: WAL segment {missing} of its range is missing"
            ),
            Problem::MissingBackupObject { backup, key } => write!(
                f,
                "backup {backup} cannot be restored: its object {key} is missing"
            ),
            Problem::BrokenChain { backup, missing } => write!(
                f,
                "backup {backup} cannot be restored: it builds on backup {missing}, which is \
                 gone or damaged"
            ),
            Problem::MissingManifest { backup, key } => write!(
                f,
                "backup {backup} finished (its backup history file is archived) but its manifest \
                 {key} is missing: it cannot be restored"
            ),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub objects: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub problems: Vec<Problem>,
    /// Backups that never finished: their leftover objects are not a problem.
    pub interrupted_backups: Vec<String>,
    /// Backups that failed and gave up, marked so by pitr: their leftover objects are not a
    /// problem either (`pitr expire` removes them).
    pub abandoned_backups: Vec<String>,
    /// Backups without manifest whose owner may still be taking them: not judged yet.
    pub running_backups: Vec<String>,
    /// Segments indexed now because they had no WAL index entry.
    pub indexed_segments: u64,
    /// False for an encrypted repository verified without its key: only the stored
    /// checksums were checked (no object authenticated, WAL continuity and backups not
    /// checked).
    pub authenticated: bool,
}

impl VerifyReport {
    /// True when some object is damaged (rather than only missing).
    pub fn has_damage(&self) -> bool {
        self.problems.iter().any(Problem::is_damage)
    }

    /// 0 intact, 5 when something is damaged, 8 when something is only missing.
    pub fn exit_code(&self) -> u8 {
        if self.ok {
            EXIT_OK
        } else if self.has_damage() {
            EXIT_CORRUPT
        } else {
            EXIT_INCOMPLETE
        }
    }
}

/// What reading one object showed.
enum Checked {
    Intact,
    /// The decoded text of a history or backup history file.
    Text(String),
    Problem(Problem),
}

/// An object to read.
struct Job {
    object: StoredObject,
    /// Decoded text is kept for history and backup history files.
    keep_text: bool,
    wal: Option<WalFileName>,
}

pub async fn verify(catalog: &Catalog, options: &VerifyOptions) -> Result<VerifyReport> {
    let started = Instant::now();
    let identity = catalog.identity().await?;
    if !catalog.can_decrypt() {
        if !options.without_key {
            return Err(Error::Key(format!(
                "repository {} is encrypted and no key was given: verify needs it to \
                 authenticate objects and check WAL and backups; give the key (passphrase_file, \
                 PITR_PASSPHRASE, key_file or kms_key_id), or pass --no-key for a check of the \
                 stored checksums only",
                catalog.location()
            )));
        }
        return verify_stored(catalog, options, started).await;
    }
    let segment_size = identity.wal_segment_size;
    let listing = catalog.wal_listing(segment_size).await?;
    let mut backup_dirs = catalog.backup_objects().await?;
    if let Some(id) = &options.backup {
        if backup_dirs.get(id).is_none_or(|b| b.manifest.is_none()) {
            return Err(Error::Config(format!(
                "no backup {id} in the repository (see `pitr list`)"
            )));
        }
        backup_dirs.retain(|dir_id, _| dir_id == id);
    }

    let mut problems = Vec::new();
    let mut manifests: Vec<BackupManifest> = Vec::new();
    for (id, objects) in &backup_dirs {
        if objects.manifest.is_none() {
            continue;
        }
        match catalog.manifest(id).await {
            Ok(manifest) => manifests.push(manifest),
            Err(e) => problems.push(Problem::Corrupt {
                key: objects.manifest_key(),
                reason: e.to_string(),
            }),
        }
    }
    // WAL before the oldest backup (or the chosen one) serves no restore.
    let floors = backup_floors(&manifests, segment_size);
    let floor = floors.values().min().copied();
    let wal_files: Vec<&ArchivedFile> = listing
        .files()
        .filter(|f| match (options.backup.is_some(), floor) {
            (true, Some(floor)) => f
                .name
                .segment_number(segment_size)
                .is_none_or(|s| s >= floor),
            _ => true,
        })
        .collect();

    let mut jobs: Vec<Job> = wal_files
        .iter()
        .map(|f| Job {
            object: f.object.clone(),
            keep_text: matches!(
                f.name.kind(),
                WalFileKind::History | WalFileKind::BackupHistory
            ),
            wal: Some(f.name.clone()),
        })
        .collect();
    for manifest in &manifests {
        // A manifest is read only from its own directory, and names its own id.
        let Some(objects) = backup_dirs.get(&manifest.id) else {
            continue;
        };
        let named: BTreeSet<u32> = manifest.objects();
        for n in named.iter().filter(|n| !objects.data.contains_key(n)) {
            problems.push(Problem::MissingBackupObject {
                backup: manifest.id.clone(),
                key: objects.data_key(*n),
            });
        }
        // The chain's objects it refers to, and the backups that hold them.
        for id in manifest.chain_ids() {
            if !manifests.iter().any(|m| m.id == id) {
                problems.push(Problem::BrokenChain {
                    backup: manifest.id.clone(),
                    missing: id.to_owned(),
                });
            }
        }
        for (holder, n) in manifest.referenced_objects() {
            if let Some(held) = backup_dirs.get(holder)
                && !held.data.contains_key(&n)
            {
                problems.push(Problem::MissingBackupObject {
                    backup: manifest.id.clone(),
                    key: held.data_key(n),
                });
            }
        }
        jobs.extend(objects.data.values().map(|object| Job {
            object: object.clone(),
            keep_text: false,
            wal: None,
        }));
    }
    let objects = jobs.len() as u64 + manifests.len() as u64;
    let bytes = total_bytes(
        jobs.iter().map(|j| j.object.size).chain(
            backup_dirs
                .values()
                .filter_map(|b| b.manifest.as_ref())
                .map(|m| m.size),
        ),
    );

    let checked: Vec<(Job, Checked)> = stream::iter(jobs)
        .map(|job| async move {
            let checked = check_object(catalog, &job.object, job.keep_text).await;
            (job, checked)
        })
        .buffer_unordered(options.jobs.max(1))
        .collect()
        .await;

    let mut histories = BTreeMap::new();
    let mut backup_history_texts = Vec::new();
    let mut damaged = BTreeSet::new();
    for (job, checked) in checked {
        match (checked, job.wal) {
            (Checked::Intact, _) => {}
            (Checked::Text(text), Some(name)) if name.kind() == WalFileKind::History => {
                match parse_history(name.timeline(), &text) {
                    Ok(entries) => {
                        histories.insert(name.timeline(), entries);
                    }
                    Err(reason) => problems.push(Problem::BadHistory {
                        key: job.object.key().to_owned(),
                        reason,
                    }),
                }
            }
            (Checked::Text(text), _) => backup_history_texts.push(text),
            (Checked::Problem(problem), name) => {
                damaged.extend(name);
                problems.push(problem);
            }
        }
    }
    problems.sort_by_key(|p| p.to_string());
    problems.extend(history_problems(&histories));
    // Below where retention expired WAL only backups' own ranges stay: not a gap.
    let expired = catalog.expired_wal().await?;
    let mut gap_floors = floors.clone();
    for (&timeline, &segno) in &expired {
        let floor = gap_floors.entry(timeline).or_insert(segno);
        *floor = (*floor).max(segno);
    }
    problems.extend(wal_gaps(
        wal_files.iter().map(|f| &f.name),
        &histories,
        segment_size,
        &gap_floors,
        &expired,
    ));

    let mut view = ArchiveView::new(&identity, listing, histories);
    problems.extend(backup_wal_problems(&view, &manifests));
    let finished_labels: BTreeSet<String> = backup_history_texts
        .iter()
        .filter_map(|text| parse_backup_label(text).ok()?.label)
        .collect();
    let mut interrupted_backups = Vec::new();
    let mut abandoned_backups = Vec::new();
    let mut running_backups = Vec::new();
    for (id, objects) in &backup_dirs {
        if objects.manifest.is_some() {
            continue;
        }
        // pitr's own word first: a backup that failed after PostgreSQL finished it (the
        // manifest write refused, say) has a backup history file, but no manifest is lost.
        let claim = catalog.backup_claim(id).await?;
        if objects.abandoned.is_some() {
            abandoned_backups.push(id.clone());
        } else if !super::expire::owner_gone(claim.as_ref()) {
            running_backups.push(id.clone());
        } else if finished_labels.contains(&format!("pitr backup {id}"))
            // Killed between PostgreSQL's end of the backup and its manifest (waiting for
            // its WAL): the run history, where it reaches, tells it from a lost manifest.
            && !match &claim {
                Some(claim) => catalog.backup_never_finished(id, claim.claimed_at).await?,
                None => false,
            }
        {
            problems.push(Problem::MissingManifest {
                backup: id.clone(),
                key: objects.manifest_key(),
            });
        } else {
            interrupted_backups.push(id.clone());
        }
    }
    // Damaged summaries are derived data: reported, then written again from the WAL.
    for (name, reason) in damaged_summaries(catalog, &view, options.jobs).await? {
        view.listing.summarised.remove(&name);
        if let Some(entries) = view
            .histories
            .get(&name.timeline())
            .filter(|_| name.kind() == WalFileKind::History)
        {
            catalog.put_history_summary(&name, entries).await?;
        }
        problems.push(Problem::DamagedSummary {
            file: name.to_string(),
            reason,
        });
    }
    let indexed_segments = index_missing(catalog, &mut view, &damaged, options).await?;
    // Rollups are derived data too: damaged ones reported and written again, missing ones
    // written, those of groups no longer whole removed.
    let rollups = catalog
        .repair_rollups(&view.listing, identity.wal_segment_size)
        .await?;
    for (key, reason) in rollups.damaged {
        problems.push(Problem::DamagedSummary { file: key, reason });
    }
    tracing::info!(
        "rollups: {} written, {} removed",
        rollups.written.len(),
        rollups.removed.len()
    );

    Ok(VerifyReport {
        ok: problems.is_empty(),
        objects,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        problems,
        interrupted_backups,
        abandoned_backups,
        running_backups,
        indexed_segments,
        authenticated: true,
    })
}

/// An encrypted repository without its key: every sealed object's stored bytes against its
/// stored checksum, which needs no key (a storage fault shows; tampering by someone who
/// can recompute a CRC does not, which only the key can prove).
async fn verify_stored(
    catalog: &Catalog,
    options: &VerifyOptions,
    started: Instant,
) -> Result<VerifyReport> {
    let objects = catalog.sealed_objects(options.backup.as_deref()).await?;
    let bytes = total_bytes(objects.iter().map(|o| o.size));
    let count = objects.len() as u64;
    let mut problems: Vec<Problem> = stream::iter(objects)
        .map(|object| async move {
            let key = object.key().to_owned();
            let checked = match catalog.open_object(&object, key.clone()).await {
                Ok(opened) => catalog.check_opened(opened).await,
                Err(e) => Err(e),
            };
            checked.err().map(|e| match e {
                CatalogError::Corrupt { reason, .. } => Problem::Corrupt { key, reason },
                e => Problem::Unreadable {
                    key,
                    reason: e.to_string(),
                },
            })
        })
        .buffer_unordered(options.jobs.max(1))
        .filter_map(|problem| async move { problem })
        .collect()
        .await;
    problems.sort_by_key(|p| p.to_string());
    Ok(VerifyReport {
        ok: problems.is_empty(),
        objects: count,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        problems,
        interrupted_backups: Vec::new(),
        abandoned_backups: Vec::new(),
        running_backups: Vec::new(),
        indexed_segments: 0,
        authenticated: false,
    })
}

/// Per timeline, the first segment a backup on it needs: gaps before it do not matter.
fn backup_floors(manifests: &[BackupManifest], segment_size: u64) -> BTreeMap<u32, u64> {
    let mut floors: BTreeMap<u32, u64> = BTreeMap::new();
    for manifest in manifests {
        let segno = manifest.start_lsn.segment_number(segment_size);
        floors
            .entry(manifest.timeline)
            .and_modify(|f| *f = (*f).min(segno))
            .or_insert(segno);
    }
    floors
}

/// The stored summaries that fail their checksum or do not parse.
async fn damaged_summaries(
    catalog: &Catalog,
    view: &ArchiveView,
    jobs: usize,
) -> Result<Vec<(WalFileName, String)>> {
    let found: Vec<Option<(WalFileName, String)>> = stream::iter(&view.listing.summarised)
        .map(|name| async move {
            let damage = catalog.summary_damage(name).await?;
            Ok::<_, Error>(damage.map(|reason| (name.clone(), reason)))
        })
        .buffer_unordered(jobs.max(1))
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// Backups whose WAL from start to stop is not all in the repository.
fn backup_wal_problems(view: &ArchiveView, manifests: &[BackupManifest]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for manifest in manifests {
        let Some(path) = view.path(manifest.timeline) else {
            continue; // reported as a missing history file
        };
        let walk = view.walk(&path, manifest.start_lsn);
        if !walk.reaches(manifest.stop_lsn.segment_number(view.segment_size)) {
            problems.push(Problem::BackupWalIncomplete {
                backup: manifest.id.clone(),
                missing: walk.missing,
            });
        }
    }
    problems
}

/// Indexes (and stores the summaries of) intact segments that have no WAL index entry, run
/// by run in order so that records straddling two segments are carried over.
async fn index_missing(
    catalog: &Catalog,
    view: &mut ArchiveView,
    damaged: &BTreeSet<WalFileName>,
    options: &VerifyOptions,
) -> Result<u64> {
    let segments: Vec<ArchivedFile> = view
        .listing
        .segments
        .values()
        .chain(view.listing.partials.values())
        .filter(|f| !damaged.contains(&f.name))
        .cloned()
        .collect();
    let segment_size = view.segment_size;
    let consecutive = |a: &ArchivedFile, b: &ArchivedFile| {
        let segno = |f: &ArchivedFile| f.name.segment_number(segment_size);
        a.name.timeline() == b.name.timeline() && segno(a).map(|s| s + 1) == segno(b)
    };
    let mut indexed = 0;
    let mut run: Vec<ArchivedFile> = Vec::new();
    let mut previous: Option<&ArchivedFile> = None;
    for file in &segments {
        let follows = previous.is_some_and(|p| consecutive(p, file));
        let summarised = view.listing.summarised.contains(&file.name);
        if !run.is_empty() && (summarised || !follows) {
            view.summarise(catalog, &std::mem::take(&mut run), options.jobs, true)
                .await?;
        }
        if !summarised {
            if let Some(previous) = previous.filter(|_| run.is_empty() && follows) {
                run.push(previous.clone()); // its carry completes this one's first record
            }
            run.push(file.clone());
            indexed += 1;
        }
        previous = Some(file);
    }
    if !run.is_empty() {
        view.summarise(catalog, &run, options.jobs, true).await?;
    }
    Ok(indexed)
}

async fn check_object(catalog: &Catalog, object: &StoredObject, keep_text: bool) -> Checked {
    let what = object.key().to_owned();
    let result = if keep_text {
        catalog
            .decode_object(object, what, Vec::new())
            .await
            .map(|(content, _)| Checked::Text(String::from_utf8_lossy(&content).into()))
    } else {
        catalog
            .decode_object(object, what, std::io::sink())
            .await
            .map(|_| Checked::Intact)
    };
    let key = object.key().to_owned();
    result.unwrap_or_else(|e| {
        Checked::Problem(match e {
            CatalogError::Corrupt { reason, .. } => Problem::Corrupt { key, reason },
            e => Problem::Unreadable {
                key,
                reason: e.to_string(),
            },
        })
    })
}

/// A history file lists its parent's history and then the switch from the parent.
fn history_problems(histories: &BTreeMap<u32, Vec<HistoryEntry>>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (&timeline, entries) in histories {
        let key = format!("{timeline:08X}.history");
        let bad = |reason: String| Problem::BadHistory {
            key: key.clone(),
            reason,
        };
        let Some(last) = entries.last() else {
            problems.push(bad("lists no parent timeline".into()));
            continue;
        };
        if last.timeline >= timeline {
            problems.push(bad(format!(
                "names timeline {} as an ancestor",
                last.timeline
            )));
            continue;
        }
        if let Some(parent) = histories.get(&last.timeline)
            && parent[..] != entries[..entries.len() - 1]
        {
            problems.push(bad(format!(
                "contradicts {:08X}.history: the ancestry of timeline {} differs",
                last.timeline, last.timeline
            )));
        }
    }
    problems
}

/// Segments missing inside each timeline's range, and on a parent up to each switch point;
/// not below where retention expired a timeline's WAL (`expired`).
fn wal_gaps<'a>(
    names: impl Iterator<Item = &'a WalFileName>,
    histories: &BTreeMap<u32, Vec<HistoryEntry>>,
    segment_size: u64,
    floors: &BTreeMap<u32, u64>,
    expired: &BTreeMap<u32, u64>,
) -> Vec<Problem> {
    let expired_at = |timeline: u32, segno: u64| expired.get(&timeline).is_some_and(|&e| segno < e);
    // Per timeline: full segments, and segments present at all (a .partial counts there).
    let mut full: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut present: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    // Where each timeline's WAL starts, before any floor: a child's first segments matter to
    // recovery through it from a parent's backup even below its own backups' floor.
    let mut first_present: BTreeMap<u32, u64> = BTreeMap::new();
    for name in names {
        let Some(segno) = name.segment_number(segment_size) else {
            continue;
        };
        if matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
            let first = first_present.entry(name.timeline()).or_insert(segno);
            *first = (*first).min(segno);
        }
        if floors
            .get(&name.timeline())
            .is_some_and(|&floor| segno < floor)
        {
            continue; // before every backup: no restore reads it
        }
        match name.kind() {
            WalFileKind::Segment => {
                full.entry(name.timeline()).or_default().insert(segno);
                present.entry(name.timeline()).or_default().insert(segno);
            }
            WalFileKind::Partial => {
                present.entry(name.timeline()).or_default().insert(segno);
            }
            _ => {}
        }
    }
    let mut problems = Vec::new();
    let mut missing_history = Vec::new();
    let mut missing = |timeline: u32, range: std::ops::RangeInclusive<u64>| {
        let (first, last) = (*range.start(), *range.end());
        problems.push(Problem::MissingWal {
            timeline,
            first: xlog_file_name(timeline, first, segment_size),
            last: xlog_file_name(timeline, last, segment_size),
            count: last.saturating_sub(first).saturating_add(1),
        });
    };
    for (&timeline, &floor) in floors {
        match present.get(&timeline).and_then(|s| s.first()) {
            Some(&first) if first > floor => missing(timeline, floor..=first - 1),
            // Expired to its end: only backups' own ranges (checked by their walks) stay.
            None if expired.get(&timeline).is_some_and(|&e| e >= floor) => {}
            None => missing(timeline, floor..=floor),
            _ => {}
        }
    }
    for (&timeline, segments) in &present {
        let mut previous: Option<u64> = None;
        for &segno in segments {
            if let Some(previous) = previous
                && segno > previous + 1
            {
                missing(timeline, previous + 1..=segno - 1);
            }
            previous = Some(segno);
        }
        // Only the last segment of a timeline may be partial.
        let Some(&last) = segments.last() else {
            continue;
        };
        for &segno in segments.range(..last) {
            if !full.get(&timeline).is_some_and(|f| f.contains(&segno)) {
                missing(timeline, segno..=segno);
            }
        }
        if timeline > 1 && !histories.contains_key(&timeline) {
            missing_history.push(Problem::MissingHistory { timeline });
        }
    }
    for (&timeline, entries) in histories {
        let Some(switch) = entries.last() else {
            continue;
        };
        let switch_segno = switch.switchpoint.segment_number(segment_size);
        // Recovery to this timeline reads the segment holding the switch point from this
        // timeline (XLogFileReadAnyTLI), and the one before it from the ancestor the history
        // assigns it to: that ancestor's WAL must reach it. Not always the parent: a switch
        // point behind the parent's own leaves the parent's span empty.
        let path = timeline_path(timeline, entries);
        if let Some(before) = switch_segno.checked_sub(1) {
            let ancestor = timeline_of_segment(&path, before, segment_size);
            if let Some(&have) = present.get(&ancestor).and_then(|s| s.last())
                && !expired_at(ancestor, before)
                && have < before
            {
                missing(ancestor, have + 1..=before);
            }
        }
        // The child's WAL starts in the segment holding the switch point.
        if let Some(&first) = first_present.get(&timeline) {
            if first > switch_segno && !expired_at(timeline, first - 1) {
                missing(timeline, switch_segno..=first - 1);
            }
        }
    }
    problems.extend(missing_history);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::Lsn;

    const SEG: u64 = 16 << 20;

    fn names(list: &[&str]) -> Vec<WalFileName> {
        list.iter()
            .map(|n| WalFileName::parse(n).unwrap())
            .collect()
    }

    #[test]
    fn continuous_timelines_have_no_gaps() {
        let wal = names(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003.partial",
            "000000020000000000000003",
            "000000020000000000000004",
        ]);
        let histories = BTreeMap::from([(
            2,
            vec![HistoryEntry {
                timeline: 1,
                switchpoint: Lsn(3 * SEG + 0x100),
            }],
        )]);
        assert_eq!(
            wal_gaps(
                wal.iter(),
                &histories,
                SEG,
                &BTreeMap::new(),
                &BTreeMap::new()
            ),
            vec![]
        );
        // A child whose first backup starts after its first segment still starts at the
        // switch.
        let floors = BTreeMap::from([(2, 4)]);
        assert_eq!(
            wal_gaps(wal.iter(), &histories, SEG, &floors, &BTreeMap::new()),
            vec![]
        );
    }

    #[test]
    fn gaps_inside_a_timeline_and_before_a_switch_are_found() {
        let wal = names(&[
            "000000010000000000000001",
            "000000010000000000000004",
            "000000020000000000000007",
        ]);
        let histories = BTreeMap::from([(
            2,
            vec![HistoryEntry {
                timeline: 1,
                switchpoint: Lsn(6 * SEG + 0x100),
            }],
        )]);
        let found: Vec<String> = wal_gaps(
            wal.iter(),
            &histories,
            SEG,
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
        .iter()
        .map(|p| p.to_string())
        .collect();
        assert_eq!(
            found,
            vec![
                "missing WAL on timeline 1: 000000010000000000000002 to 000000010000000000000003 (2 segments)",
                "missing WAL on timeline 1: 000000010000000000000005 to 000000010000000000000005 (1 segment)",
                "missing WAL on timeline 2: 000000020000000000000006 to 000000020000000000000006 (1 segment)",
            ]
        );
    }

    #[test]
    fn wal_that_retention_expired_is_no_gap() {
        // A pinned backup's range (2-3) on timeline 1, which was expired to its end (9) after
        // timeline 2 branched at segment 6; timeline 2 kept from segment 7.
        let wal = names(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000020000000000000007",
            "000000020000000000000008",
        ]);
        let histories = BTreeMap::from([(
            2,
            vec![HistoryEntry {
                timeline: 1,
                switchpoint: Lsn(6 * SEG + 0x100),
            }],
        )]);
        let expired = BTreeMap::from([(1, 9), (2, 7)]);
        let floors = BTreeMap::from([(1, 9), (2, 7)]);
        assert_eq!(
            wal_gaps(wal.iter(), &histories, SEG, &floors, &expired),
            vec![]
        );
        // Without the record the same repository has gaps.
        let floors = BTreeMap::from([(1, 2), (2, 7)]);
        assert!(!wal_gaps(wal.iter(), &histories, SEG, &floors, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn switch_points_that_go_back_are_no_problem() {
        // PostgreSQL 15's t/028_pitr_timelines.pl: timeline 3 left 2 (at 0/3018C48) before 2
        // began (0/3018CB0); timeline 1's segment 3 was never archived whole.
        let entry = |timeline, lsn| HistoryEntry {
            timeline,
            switchpoint: Lsn(lsn),
        };
        let histories = BTreeMap::from([
            (2, vec![entry(1, 0x301_8CB0)]),
            (3, vec![entry(1, 0x301_8CB0), entry(2, 0x301_8C48)]),
        ]);
        assert_eq!(history_problems(&histories), vec![]);
        let wal = names(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000020000000000000003",
            "000000030000000000000003",
            "000000030000000000000004",
        ]);
        let none = BTreeMap::new();
        assert_eq!(wal_gaps(wal.iter(), &histories, SEG, &none, &none), vec![]);
        // The segment before the switch must still be there, on the timeline that holds it.
        let wal = names(&["000000010000000000000001", "000000030000000000000003"]);
        let found: Vec<String> = wal_gaps(wal.iter(), &histories, SEG, &none, &none)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(
            found.iter().all(|p| p.contains("000000010000000000000002")) && !found.is_empty(),
            "{found:?}"
        );
    }

    #[test]
    fn contradicting_histories_are_found() {
        let entry = |timeline, lsn| HistoryEntry {
            timeline,
            switchpoint: Lsn(lsn),
        };
        let histories = BTreeMap::from([
            (2, vec![entry(1, 0x300_0000)]),
            (3, vec![entry(1, 0x400_0000), entry(2, 0x500_0000)]),
        ]);
        let problems = history_problems(&histories);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .to_string()
                .contains("contradicts 00000002.history")
        );
    }
}
