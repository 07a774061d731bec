//! `pitr backup --type incr|diff`: which backup to build on, what changed since its start
//! (the block maps archive-push stored, and the WAL since the last archived segment read
//! from `pg_wal`), and what each file of the cluster contributes: nothing (the parent's copy
//! stands), its changed blocks, or the whole file.

use std::collections::HashMap;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::catalog::Catalog;
use crate::catalog::backup::{BackupFile, BackupManifest, BackupType};
use crate::error::{Error, Result};
use crate::pg::block_map::{BlockMap, SegmentMapFrom};
use crate::pg::change_set::{ChangeSet, merge_maps};
use crate::pg::incremental::{FilePlan, ParentCheck, full_backup_reason, plan_file};
use crate::pg::relpath::relation_segment_of;
use crate::pg::timeline::{switch_point, timeline_of_segment, timeline_path};
use crate::pg::wal_blocks::Fork;
use crate::pg::wal_name::xlog_file_name;
use crate::pg::{Lsn, WalFileName};
use crate::server::Session;

use super::server_wal::ServerWal;
use super::{PART_SIZE, SourceFile};

/// How long a segment of the stretch that is not archived yet is waited for before the
/// backup compares pages instead.
const ARCHIVED_WAIT: Duration = Duration::from_secs(30);

/// Whether the server's archiver stores its WAL in the repository: then the segments (and
/// maps) a backup needs are awaited a while; otherwise only what is there serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ArchivedWal {
    Awaited,
    AsFound,
}

/// An incremental (or differential) backup's parent and what changed since its start.
pub(super) struct Incremental {
    pub backup_type: BackupType,
    pub parent: BackupManifest,
    /// The parent's place in its chain plus one.
    pub depth: u32,
    pub block_size: u32,
    /// What changed, or why pages are compared instead.
    pub changes: Result<ChangeSet, String>,
    /// The parent's entries by path, each naming the backup that holds its object.
    parent_files: HashMap<String, Vec<BackupFile>>,
}

/// What the cluster says about itself, for the choice of a parent.
#[derive(Clone, Copy)]
pub(super) struct ClusterFacts {
    pub data_checksums: bool,
    pub block_size: u32,
}

pub(super) async fn cluster_facts(session: &Session) -> Result<ClusterFacts> {
    let text = session
        .text(
            "reading data_checksums and block_size",
            "SELECT current_setting('data_checksums') || '|' || current_setting('block_size')",
        )
        .await?;
    let (checksums, block_size) = text.split_once('|').unwrap_or((&text, ""));
    ClusterFacts::parse(checksums, block_size)
}

/// The same over a replication connection (`SHOW`, which needs no SQL session).
pub(super) async fn replication_facts(
    connection: &mut crate::server::replication::ReplicationConnection,
) -> Result<ClusterFacts> {
    let mut values = Vec::new();
    for name in ["data_checksums", "block_size"] {
        let sql =
            crate::pg::replication::show_setting(name).map_err(|e| Error::Server(e.to_string()))?;
        let rows = connection.query_rows(&sql).await?;
        values.push(
            rows.first()
                .and_then(|row| row.first().cloned().flatten())
                .unwrap_or_default(),
        );
    }
    ClusterFacts::parse(&values[0], &values[1])
}

impl ClusterFacts {
    fn parse(checksums: &str, block_size: &str) -> Result<Self> {
        let block_size = block_size
            .parse()
            .map_err(|_| Error::Server(format!("block_size '{block_size}' is not a number")))?;
        Ok(ClusterFacts {
            data_checksums: checksums == "on",
            block_size,
        })
    }
}

/// Whether `backup` may be the parent of a backup of `kind`: any for an incremental one, a
/// full one for a differential one.
pub fn can_build_on(backup: &BackupManifest, kind: BackupType) -> bool {
    kind != BackupType::Diff || backup.backup_type.is_full()
}

/// The place in its chain a backup on `parent` takes: past every delta the parent's entries
/// hold (they hold their whole chain's), so that the deepest delta of a file is its newest.
fn depth_on(parent: &BackupManifest) -> u32 {
    let deepest = parent
        .files
        .iter()
        .filter_map(|f| f.delta.as_ref())
        .map(|d| d.depth);
    deepest.max().unwrap_or(0) + 1
}

/// The newest backup a backup of `kind` may build on whose start is on the cluster's
/// timeline history (`connects`), reading manifests newest first (ids are start times)
/// until one serves: a repository of many backups costs one read or a few, not all of them.
/// A damaged manifest is passed over, and so is a backup on a branch the cluster left (after
/// a point-in-time restore, the backups taken past the restore point on the old timeline):
/// the second value names the newest of those.
async fn newest_parent(
    catalog: &Catalog,
    kind: BackupType,
    connects: impl Fn(&BackupManifest) -> bool,
) -> Result<(Option<BackupManifest>, Option<String>)> {
    let objects = catalog.backup_objects().await?;
    let mut other_branch = None;
    for (id, _) in objects.iter().rev().filter(|(_, o)| o.manifest.is_some()) {
        match catalog.manifest(id).await {
            Ok(manifest) if can_build_on(&manifest, kind) && connects(&manifest) => {
                return Ok((Some(manifest), other_branch));
            }
            Ok(manifest) if can_build_on(&manifest, kind) => {
                tracing::info!(
                    "backup {id} is on a timeline branch this cluster did not follow: passed over"
                );
                other_branch.get_or_insert(manifest.id);
            }
            Ok(_) | Err(crate::catalog::CatalogError::NotFound { .. }) => {}
            Err(crate::catalog::CatalogError::CorruptManifest { id, reason }) => {
                tracing::warn!("backup {id} cannot be a parent: its manifest is damaged ({reason})")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((None, other_branch))
}

/// What the backup starting at `start` on `timeline` builds on, or why it is taken full
/// (logged by the caller). `history`: the timeline's history, from `pg_wal`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn prepare(
    catalog: &Catalog,
    kind: BackupType,
    facts: &ClusterFacts,
    wal: &ServerWal,
    start: Lsn,
    timeline: u32,
    archived: ArchivedWal,
    jobs: usize,
) -> Result<std::result::Result<Incremental, String>> {
    let Some(history) = wal.history(timeline).await? else {
        return Ok(Err(format!(
            "the history of timeline {timeline} is not on the server"
        )));
    };
    let path = timeline_path(timeline, &history);
    let connects = |parent: &BackupManifest| match switch_point(&path, parent.timeline) {
        Some(None) => parent.start_lsn <= start,
        Some(Some(end)) => end > parent.start_lsn,
        None => false,
    };
    let (parent, other_branch) = newest_parent(catalog, kind, connects).await?;
    let Some(parent) = parent else {
        let what = match kind {
            BackupType::Diff => "full backup",
            _ => "backup",
        };
        return Ok(Err(match other_branch {
            Some(id) => format!(
                "no {what} is on this cluster's timeline history (the newest, {id}, is on a \
                 branch it left)"
            ),
            None => format!("the repository holds no {what} to build on"),
        }));
    };
    let identity = catalog.identity().await?;
    let Some(parent_checksums) = parent.data_checksums else {
        return Ok(Err(format!(
            "the parent {} does not record whether data checksums were on (taken by an \
             earlier pitr)",
            parent.id
        )));
    };
    let check = ParentCheck {
        parent_system_identifier: parent.system_identifier.parse().unwrap_or(0),
        system_identifier: identity.system_identifier,
        parent_major: parent.pg_version,
        major: identity.pg_version,
        parent_checksums,
        checksums: facts.data_checksums,
        timeline_connects: connects(&parent),
    };
    if let Some(reason) = full_backup_reason(&check) {
        return Ok(Err(reason));
    }
    if parent.block_size.is_some_and(|b| b != facts.block_size) {
        return Ok(Err("the parent has another block size".into()));
    }
    let segment_size = identity.wal_segment_size;
    let changes = change_set(
        catalog,
        wal,
        archived,
        parent.start_lsn,
        start,
        &path,
        segment_size,
        facts.block_size as usize,
        jobs,
    )
    .await?;
    let changes = if changes.minimal_wal {
        return Ok(Err(format!(
            "wal_level was minimal since the parent {}: files may have changed without WAL",
            parent.id
        )));
    } else if changes.is_complete() {
        Ok(changes)
    } else {
        Err(changes.incomplete.join("; "))
    };
    let mut parent_files: HashMap<String, Vec<BackupFile>> = HashMap::new();
    for file in &parent.files {
        let mut entry = file.clone();
        entry.backup = Some(file.holder(&parent.id).to_owned());
        parent_files
            .entry(file.path.clone())
            .or_default()
            .push(entry);
    }
    Ok(Ok(Incremental {
        backup_type: kind,
        depth: depth_on(&parent),
        parent,
        block_size: facts.block_size,
        changes,
        parent_files,
    }))
}

/// What changed from `from` (the parent's start) to `until` (this backup's start) along
/// `path`: the first segment decoded from its archived copy, the block maps of the
/// segments after it, and the segment holding `until` (not archived yet) decoded from
/// the server's WAL, going on with the record the previous segment's summary carried.
#[allow(clippy::too_many_arguments)]
async fn change_set(
    catalog: &Catalog,
    wal: &ServerWal,
    archived: ArchivedWal,
    from: Lsn,
    until: Lsn,
    path: &[crate::pg::timeline::TimelineSpan],
    segment_size: u64,
    block_size: usize,
    jobs: usize,
) -> Result<ChangeSet> {
    let (first, last) = (
        from.segment_number(segment_size),
        until.segment_number(segment_size),
    );
    let names: Vec<WalFileName> = (first..=last)
        .map(|segno| {
            let timeline = timeline_of_segment(path, segno, segment_size);
            WalFileName::parse(&xlog_file_name(timeline, segno, segment_size))
                .expect("a segment name parses")
        })
        .collect();
    let segment_start = |segno: u64| Lsn(segno * segment_size);
    // Each map with what it is of (a segment, or a rolled-up group).
    let mut maps: Vec<(String, Option<BlockMap>)> = Vec::with_capacity(names.len());
    // The first segment, from the parent's start; it is the last too when both starts
    // share a segment.
    if first == last {
        let map =
            SegmentMapFrom::new(segment_start(first), segment_size, block_size, from).until(until);
        maps.push((
            names[0].to_string(),
            wal.decode(&names[0], map, until, segment_size).await?,
        ));
    } else {
        // Every segment but the last is complete: its map, and the summary that carries its
        // last record into the next, come once it is archived. Archiving runs in order, so
        // the last complete one is awaited; any other found missing is awaited below.
        let complete = &names[..names.len() - 1];
        let deadline = Instant::now() + ARCHIVED_WAIT;
        if archived == ArchivedWal::Awaited {
            wait_archived(catalog, &complete[complete.len() - 1..], deadline).await?;
        }
        // The first segment's records from `from` on; from the server where it is not
        // archived.
        let first_map = match catalog
            .block_map_from(&names[0], from, segment_size, block_size)
            .await?
        {
            Some(map) => Some(map),
            None => {
                let map = SegmentMapFrom::new(segment_start(first), segment_size, block_size, from);
                wal.decode(&names[0], map, Lsn(u64::MAX), segment_size)
                    .await?
            }
        };
        maps.push((names[0].to_string(), first_map));
        maps.extend(
            catalog
                .block_maps(&complete[1..], segment_size, jobs)
                .await?,
        );
        if archived == ArchivedWal::Awaited {
            for (label, map) in maps.iter_mut().skip(1).filter(|(_, m)| m.is_none()) {
                // Only single segments are missing (a group is read by its segments when
                // its rollup is).
                if let Ok(name) = WalFileName::parse(label) {
                    wait_archived(catalog, std::slice::from_ref(&name), deadline).await?;
                    *map = catalog.block_map(&name).await?;
                }
            }
        }
        // The record the segment before began and this one ends, from its summary.
        let previous = &names[names.len() - 2];
        let carry = catalog
            .segment_summary(previous)
            .await?
            .and_then(|summary| summary.carry);
        let decoder = crate::pg::wal_summary::segment_decoder(
            segment_start(last),
            segment_size,
            block_size,
            carry.as_ref(),
        );
        let map = SegmentMapFrom::resuming(decoder, segment_start(last)).until(until);
        maps.push((
            names[names.len() - 1].to_string(),
            wal.decode(&names[names.len() - 1], map, until, segment_size)
                .await?,
        ));
    }
    Ok(merge_maps(
        maps.iter()
            .map(|(label, map)| (label.as_str(), map.as_ref())),
    ))
}

/// Waits until `until` at most for segments of the stretch to be archived whole (the
/// archiver may lag a little, and archive-push stores a segment's summary last, after its
/// block map); those still missing then have no map, and pages are compared.
async fn wait_archived(catalog: &Catalog, names: &[WalFileName], until: Instant) -> Result<()> {
    let started = Instant::now();
    for name in names {
        while catalog.segment_summary(name).await?.is_none() && Instant::now() < until {
            tokio::time::sleep(super::archive_poll(started.elapsed())).await;
        }
    }
    Ok(())
}

/// What a backup takes of one file of the cluster.
pub(super) enum Take {
    /// The parent's entries stand for it.
    Parent(Vec<BackupFile>),
    /// These ranges of its blocks over the parent's entries.
    Blocks(Vec<BackupFile>, Vec<DeltaJob>),
    /// The whole file.
    Whole,
}

/// A range of a file whose changed blocks one delta entry holds.
#[derive(Clone, Debug)]
pub(super) struct DeltaJob {
    /// The file, `offset` and `size` being the byte range of this job.
    pub source: SourceFile,
    /// The file's size when listed.
    pub file_size: u64,
    /// The blocks to read (within the range), or None: compare every page's LSN.
    pub blocks: Option<Vec<u32>>,
    /// Pages past this block are taken whatever their LSN (the parent had fewer).
    pub parent_blocks: u64,
    /// Pages whose LSN is this or later changed since the parent.
    pub since: Lsn,
    pub depth: u32,
    pub block_size: u32,
}

impl Incremental {
    /// How the changes were learned, for the manifest and the report.
    pub fn changes_from(&self) -> String {
        match &self.changes {
            Ok(_) => "block maps".into(),
            Err(reason) => format!("page LSN scan ({reason})"),
        }
    }

    /// The parent's size of the file at `path`: its newest delta's size, else its end.
    fn parent_size(&self, path: &str) -> Option<u64> {
        let entries = self.parent_files.get(path)?;
        match entries
            .iter()
            .filter_map(|e| e.delta.as_ref())
            .max_by_key(|d| d.depth)
        {
            Some(delta) => Some(delta.file_size),
            None => entries.iter().map(|e| e.file_offset + e.size).max(),
        }
    }

    /// What to take of `file` (listed whole, offset 0).
    pub fn take(&self, file: &SourceFile) -> Take {
        let parent_size = self.parent_size(&file.path);
        let block_size = self.block_size;
        let blocks_per_segment = ((1u64 << 30) / u64::from(block_size)) as u32;
        let parent_entries = || {
            self.parent_files
                .get(&file.path)
                .cloned()
                .unwrap_or_default()
        };
        let job = |offset: u64, size: u64, blocks: Option<Vec<u32>>| DeltaJob {
            source: SourceFile {
                offset,
                size,
                ..file.clone()
            },
            file_size: file.size,
            blocks,
            parent_blocks: parent_size.unwrap_or(0).div_ceil(u64::from(block_size)),
            since: self.parent.start_lsn,
            depth: self.depth,
            block_size,
        };
        match &self.changes {
            Ok(changes) => match plan_file(
                &file.path,
                file.size,
                parent_size,
                changes,
                block_size,
                blocks_per_segment,
            ) {
                FilePlan::Unchanged => Take::Parent(parent_entries()),
                FilePlan::Whole(_) => Take::Whole,
                FilePlan::Blocks(blocks) => {
                    // Bounded entries, so that a file mostly changed is still read in
                    // parallel pieces.
                    let per_job = (PART_SIZE / u64::from(block_size)) as usize;
                    let jobs = if blocks.is_empty() {
                        vec![job(0, 0, Some(Vec::new()))]
                    } else {
                        blocks
                            .chunks(per_job)
                            .map(|chunk| job(0, file.size, Some(chunk.to_vec())))
                            .collect()
                    };
                    Take::Blocks(parent_entries(), jobs)
                }
            },
            Err(_) => {
                let relation = relation_segment_of(&file.path);
                if parent_size.is_none() || relation.is_none_or(|r| r.fork != Fork::Main) {
                    return Take::Whole;
                }
                let jobs = if file.size == 0 {
                    vec![job(0, 0, None)]
                } else {
                    (0..file.size)
                        .step_by(PART_SIZE as usize)
                        .map(|offset| job(offset, PART_SIZE.min(file.size - offset), None))
                        .collect()
                };
                Take::Blocks(parent_entries(), jobs)
            }
        }
    }
}

/// Reads the changed blocks of one object's delta jobs in turn, with positioned reads,
/// recording for each job the blocks it yielded, their length and CRC-32C.
pub(super) struct DeltaReader {
    pub jobs: Vec<DeltaJob>,
    /// Per job read so far: the blocks taken, the bytes and their CRC-32C.
    pub read: Vec<(Vec<u32>, u64, u32)>,
    file: Option<std::fs::File>,
    /// Blocks of the current job still to consider, next first.
    pending: std::collections::VecDeque<u32>,
    buffer: Vec<u8>,
    at: usize,
}

/// Blocks read at once where they run on.
const READ_BLOCKS: usize = 128;

impl DeltaReader {
    pub fn new(jobs: Vec<DeltaJob>) -> Self {
        DeltaReader {
            jobs,
            read: Vec::new(),
            file: None,
            pending: Default::default(),
            buffer: Vec::new(),
            at: 0,
        }
    }

    /// Opens the next job; false when none is left.
    fn next_job(&mut self) -> io::Result<bool> {
        let Some(job) = self.jobs.get(self.read.len()) else {
            return Ok(false);
        };
        self.read.push((Vec::new(), 0, 0));
        let block_size = u64::from(job.block_size);
        self.pending = match &job.blocks {
            Some(blocks) => blocks.iter().copied().collect(),
            None => {
                let first = job.source.offset / block_size;
                let end = (job.source.offset + job.source.size).div_ceil(block_size);
                (first..end).map(|b| b as u32).collect()
            }
        };
        self.file = match std::fs::File::open(&job.source.absolute) {
            Ok(file) => Some(file),
            // Gone since the listing: replay removes or remakes it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.pending.clear();
                None
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", job.source.path),
                ));
            }
        };
        Ok(true)
    }

    /// Fills the buffer with the next blocks the current job takes; false at its end.
    fn fill(&mut self) -> io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let index = self.read.len() - 1;
        let job = &self.jobs[index];
        let block_size = job.block_size as usize;
        let Some(file) = &self.file else {
            return Ok(false);
        };
        while let Some(&first) = self.pending.front() {
            // A run of consecutive blocks, read at once.
            let mut count = 1;
            while count < READ_BLOCKS
                && self
                    .pending
                    .get(count)
                    .is_some_and(|&b| b == first + count as u32)
            {
                count += 1;
            }
            self.buffer.resize(count * block_size, 0);
            let mut got = 0;
            while got < self.buffer.len() {
                let offset = u64::from(first) * block_size as u64 + got as u64;
                match file.read_at(&mut self.buffer[got..], offset) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("{}: {e}", job.source.path),
                        ));
                    }
                }
            }
            // Whole blocks only: a file cut since the listing ends here (replay cuts it).
            let whole = got / block_size;
            self.buffer.truncate(whole * block_size);
            if whole < count {
                self.pending.clear();
            } else {
                self.pending.drain(..count);
            }
            let taken: Vec<u32> = (0..whole as u32)
                .filter(|&i| {
                    let page = &self.buffer[i as usize * block_size..][..block_size];
                    job.blocks.is_some() || page_changed(page, u64::from(first + i), job)
                })
                .collect();
            if taken.len() < whole {
                // A page scan: keep only the changed pages.
                let mut kept = Vec::with_capacity(taken.len() * block_size);
                for &i in &taken {
                    kept.extend_from_slice(&self.buffer[i as usize * block_size..][..block_size]);
                }
                self.buffer = kept;
            }
            let record = &mut self.read[index];
            record.0.extend(taken.iter().map(|i| first + i));
            record.1 += self.buffer.len() as u64;
            record.2 = crc32c::crc32c_append(record.2, &self.buffer);
            self.at = 0;
            if !self.buffer.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl DeltaJob {
    /// The blocks it may take, `[first, end)`.
    fn covers(&self) -> (u64, u64) {
        let block_size = u64::from(self.block_size);
        match &self.blocks {
            Some(blocks) => match (blocks.first(), blocks.last()) {
                (Some(&first), Some(&last)) => (u64::from(first), u64::from(last) + 1),
                _ => (0, 0),
            },
            None => (
                self.source.offset / block_size,
                (self.source.offset + self.source.size).div_ceil(block_size),
            ),
        }
    }

    /// Its manifest entry: `blocks` taken, `size` bytes of CRC-32C `crc32c` at `offset` in
    /// data object `object`.
    pub fn entry(
        &self,
        blocks: &[u32],
        size: u64,
        crc32c: u32,
        object: u32,
        offset: u64,
    ) -> BackupFile {
        BackupFile {
            path: self.source.path.clone(),
            size,
            file_offset: 0,
            mode: self.source.mode,
            mtime: self.source.mtime,
            crc32c,
            object,
            offset,
            backup: None,
            delta: Some(crate::catalog::backup::Delta {
                runs: crate::pg::block_map::ranges_of(blocks),
                file_size: self.file_size,
                depth: self.depth,
            }),
        }
    }
}

/// Picks the pages a file's delta jobs take as its pages arrive in order (a backup over
/// the replication protocol receives every file whole), keeping for each job where its
/// bytes go and what it took.
pub(super) struct PagePicker {
    jobs: Vec<DeltaJob>,
    /// The job covering the pages arriving now.
    current: usize,
    /// Where the current job's next listed block is in its list.
    listed_at: usize,
    taken: Vec<Picked>,
}

/// Per job: its object and offset once placed, the blocks taken, their bytes and CRC-32C.
type Picked = (Option<(u32, u64)>, Vec<u32>, u64, u32);

impl PagePicker {
    pub fn new(jobs: Vec<DeltaJob>) -> Self {
        let taken = vec![(None, Vec::new(), 0, 0); jobs.len()];
        PagePicker {
            jobs,
            current: 0,
            listed_at: 0,
            taken,
        }
    }

    /// Moves to the job covering `block`; true when it must be placed before it takes a
    /// page.
    pub fn reach(&mut self, block: u32) -> bool {
        while self
            .jobs
            .get(self.current)
            .is_some_and(|job| job.covers().1 <= u64::from(block))
        {
            self.current += 1;
            self.listed_at = 0;
        }
        self.current < self.jobs.len() && self.taken[self.current].0.is_none()
    }

    /// The current job's bytes go to `object` from `offset` on.
    pub fn place(&mut self, object: u32, offset: u64) {
        if let Some(taken) = self.taken.get_mut(self.current) {
            taken.0 = Some((object, offset));
        }
    }

    /// Whether the current job takes page `block`, recorded if so.
    pub fn takes(&mut self, block: u32, page: &[u8]) -> bool {
        let Some(job) = self.jobs.get(self.current) else {
            return false;
        };
        let take = match &job.blocks {
            Some(blocks) => {
                while blocks.get(self.listed_at).is_some_and(|&b| b < block) {
                    self.listed_at += 1;
                }
                blocks.get(self.listed_at) == Some(&block)
            }
            None => {
                let (first, end) = job.covers();
                (first..end).contains(&u64::from(block))
                    && page_changed(page, u64::from(block), job)
            }
        };
        if take {
            let taken = &mut self.taken[self.current];
            taken.1.push(block);
            taken.2 += page.len() as u64;
            taken.3 = crc32c::crc32c_append(taken.3, page);
        }
        take
    }

    /// Whether a job has no place: the file ended before it took anything.
    pub fn unplaced(&self) -> bool {
        self.taken.iter().any(|t| t.0.is_none())
    }

    /// Places every job still without a place (they hold no bytes) at `offset` of `object`.
    pub fn place_rest(&mut self, object: u32, offset: u64) {
        for taken in &mut self.taken {
            taken.0.get_or_insert((object, offset));
        }
    }

    /// The jobs' manifest entries.
    pub fn entries(&self) -> Vec<BackupFile> {
        self.jobs
            .iter()
            .zip(&self.taken)
            .map(|(job, (place, blocks, size, crc))| {
                let (object, offset) = place.unwrap_or_default();
                job.entry(blocks, *size, *crc, object, offset)
            })
            .collect()
    }
}

/// Whether a page found by a scan changed since the parent: past the parent's end, all
/// zeros (a page PostgreSQL extended the file with, or cut and extended again), or stamped
/// by a record from the parent's start on.
fn page_changed(page: &[u8], block: u64, job: &DeltaJob) -> bool {
    block >= job.parent_blocks
        || page.iter().all(|&b| b == 0)
        || !crate::pg::incremental::pages_changed_since(page, 0, page.len(), job.since).is_empty()
}

impl Read for DeltaReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.buffer.len() {
                let n = (self.buffer.len() - self.at).min(out.len());
                out[..n].copy_from_slice(&self.buffer[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if !self.read.is_empty() && self.fill()? {
                continue;
            }
            if !self.next_job()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest(id: &str, kind: BackupType, start: u64) -> BackupManifest {
        let mut manifest: BackupManifest = serde_json::from_value(serde_json::json!({
            "format": 1, "id": id, "label": id, "system_identifier": "1", "pg_version": 15,
            "timeline": 1, "start_lsn": format!("0/{start:X}"), "stop_lsn": format!("0/{start:X}"),
            "start_time": "2026-12-07T00:00:00Z", "stop_time": "2026-12-07T00:00:00Z",
            "start_wal_segment": "000000010000000000000001",
            "stop_wal_segment": "000000010000000000000001",
            "backup_label": "", "tablespace_map": null, "tablespaces": [], "size_bytes": 0,
            "stored_bytes": 0, "directories": [], "files": []
        }))
        .unwrap();
        manifest.backup_type = kind;
        if !kind.is_full() {
            manifest.parent = Some("x".into());
        }
        manifest
    }

    /// A relation file of `pages` pages, page `i` stamped with LSN `lsns[i]` and filled
    /// with `i`.
    fn relation(dir: &Path, lsns: &[u64]) -> SourceFile {
        let mut bytes = Vec::new();
        for (i, lsn) in lsns.iter().enumerate() {
            let mut page = vec![i as u8 + 1; 8192];
            page[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
            page[4..8].copy_from_slice(&(*lsn as u32).to_le_bytes());
            if *lsn == 0 {
                page.fill(0);
            }
            bytes.extend(page);
        }
        let absolute = dir.join("16384");
        std::fs::write(&absolute, &bytes).unwrap();
        SourceFile {
            path: "base/5/16384".into(),
            absolute,
            offset: 0,
            size: bytes.len() as u64,
            mode: 0o600,
            mtime: 0,
        }
    }

    fn delta_job(source: &SourceFile, blocks: Option<Vec<u32>>, parent_blocks: u64) -> DeltaJob {
        DeltaJob {
            source: source.clone(),
            file_size: source.size,
            blocks,
            parent_blocks,
            since: Lsn(0x1_0000),
            depth: 1,
            block_size: 8192,
        }
    }

    /// Per job: the blocks it yielded, their length and CRC-32C.
    type JobsRead = Vec<(Vec<u32>, u64, u32)>;

    fn read_all(jobs: Vec<DeltaJob>) -> (Vec<u8>, JobsRead) {
        let mut reader = DeltaReader::new(jobs);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        (out, reader.read)
    }

    #[test]
    fn a_delta_reads_the_listed_blocks_or_the_pages_a_scan_finds_changed() {
        let dir = tempfile::tempdir().unwrap();
        // Pages 1 and 4 changed since the parent's start, 3 is zeros, 5 is past its end.
        let file = relation(dir.path(), &[0x100, 0x2_0000, 0x100, 0, 0x1_0000, 0x100]);
        let (bytes, read) = read_all(vec![delta_job(&file, Some(vec![1, 2, 5]), 5)]);
        assert_eq!(read[0].0, [1, 2, 5]);
        assert_eq!(
            (
                bytes.len(),
                bytes[100],
                bytes[8192 + 100],
                bytes[2 * 8192 + 100]
            ),
            (3 * 8192, 2, 3, 6)
        );
        assert_eq!(read[0].2, crc32c::crc32c(&bytes));
        let (bytes, read) = read_all(vec![delta_job(&file, None, 5)]);
        assert_eq!(read[0].0, [1, 3, 4, 5]);
        assert_eq!(bytes.len() as u64, read[0].1);
        // A file cut since the listing ends at its last whole block; one gone yields none.
        let listed = delta_job(&file, Some(vec![1, 4, 5]), 6);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file.absolute)
            .unwrap()
            .set_len(4 * 8192 + 100)
            .unwrap();
        let mut gone = delta_job(&file, Some(vec![0]), 6);
        gone.source.absolute = dir.path().join("gone");
        let (bytes, read) = read_all(vec![listed, gone]);
        assert_eq!(
            (read[0].0.as_slice(), read[1].0.as_slice()),
            (&[1][..], &[][..])
        );
        assert_eq!(bytes.len(), 8192);
    }

    /// What a picker takes of `file`'s pages arriving in order: its entries and the bytes
    /// it sent, every job placed in object 7.
    fn pick(file: &SourceFile, jobs: Vec<DeltaJob>) -> (Vec<BackupFile>, Vec<u8>) {
        let bytes = std::fs::read(&file.absolute).unwrap();
        let mut picker = PagePicker::new(jobs);
        let mut sent = Vec::new();
        for (block, page) in bytes.chunks_exact(8192).enumerate() {
            let block = block as u32;
            if picker.reach(block) {
                picker.place(7, sent.len() as u64);
            }
            if picker.takes(block, page) {
                sent.extend_from_slice(page);
            }
        }
        if picker.unplaced() {
            picker.place_rest(7, sent.len() as u64);
        }
        (picker.entries(), sent)
    }

    #[test]
    fn pages_picked_from_a_stream_are_those_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = relation(
            dir.path(),
            &[0x100, 0x2_0000, 0x100, 0, 0x1_0000, 0x100, 0x3_0000],
        );
        let ranges = |first: u64, size: u64| {
            let mut job = delta_job(&file, None, 5);
            job.source.offset = first * 8192;
            job.source.size = size * 8192;
            job
        };
        let cases = [
            // Listed blocks in two jobs, one listing nothing.
            vec![
                delta_job(&file, Some(vec![1, 2]), 5),
                delta_job(&file, Some(vec![]), 5),
                delta_job(&file, Some(vec![5, 6]), 5),
            ],
            // A page scan in two ranges.
            vec![ranges(0, 4), ranges(4, 3)],
            // Blocks past the file's end (cut since the listing).
            vec![delta_job(&file, Some(vec![6, 9]), 5)],
        ];
        for jobs in cases {
            let (read, reads) = read_all(jobs.clone());
            let (entries, sent) = pick(&file, jobs.clone());
            assert_eq!(sent, read);
            let mut offset = 0;
            for ((job, entry), (blocks, size, crc)) in jobs.iter().zip(&entries).zip(&reads) {
                // An empty entry's offset is any within the object.
                let at = if *size == 0 { entry.offset } else { offset };
                assert!(at <= sent.len() as u64);
                assert_eq!(*entry, job.entry(blocks, *size, *crc, 7, at));
                offset += size;
            }
        }
    }

    #[test]
    fn diff_builds_on_a_full_backup_and_deltas_go_deeper() {
        let full = manifest("a", BackupType::Full, 0x100);
        let mut incr = manifest("b", BackupType::Incr, 0x200);
        assert!(can_build_on(&full, BackupType::Diff) && can_build_on(&incr, BackupType::Incr));
        assert!(!can_build_on(&incr, BackupType::Diff));
        assert_eq!(depth_on(&full), 1);
        // The parent's entries hold its chain's deltas, the deepest one its own.
        let delta = |depth| BackupFile {
            path: "base/5/16384".into(),
            size: 0,
            file_offset: 0,
            mode: 0o600,
            mtime: 0,
            crc32c: 0,
            object: 0,
            offset: 0,
            backup: None,
            delta: Some(crate::catalog::backup::Delta {
                runs: Vec::new(),
                file_size: 0,
                depth,
            }),
        };
        incr.files = vec![delta(1), delta(3), delta(2)];
        assert_eq!(depth_on(&incr), 4);
    }
}
