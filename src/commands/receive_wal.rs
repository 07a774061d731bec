//! `pitr receive-wal`: streams WAL over a physical replication slot into the repository, so
//! that the repository is seconds behind the server rather than a segment (or
//! `archive_timeout`) behind.
//!
//! Received WAL goes into a spool on local disk first, as `<segment>.partial`, fsynced in
//! batches (whenever the stream is caught up, and before a segment is closed); the flush
//! position reported to the server, which lets the slot release WAL, is what the spool holds
//! durably. A completed segment is renamed to its own name in the spool and stored exactly as
//! archive-push stores it (the same object, checks, index and rollups; identical content is
//! accepted, different content refused and set aside, never overwritten), then removed from
//! the spool. A restart resumes from the spool: completed segments are stored, and a partial
//! segment is streamed again from its start (the slot holds it on the server).
//!
//! At the end of a timeline (a promotion) the stream follows the next one: its history file
//! is stored as archive-push stores history files, and the old timeline's last segment as
//! `<segment>.partial`, as PostgreSQL's archiver stores it at promotion.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::catalog::tail::StoredTail;
use crate::catalog::{Catalog, RepositoryIdentity};
use crate::commands::archive_push::{ArchivePushOptions, archive_push};
use crate::error::{Error, Result};
use crate::interrupt::Interrupt;
use crate::pg::replication::{
    self as replication, StandbyStatusUpdate, Syntax, WalSenderMessage, create_physical_slot,
    decode_wal_sender_message, parse_read_replication_slot, parse_timeline_history,
    read_replication_slot, start_replication, timeline_history, to_pg_timestamp,
};
use crate::pg::{Lsn, WalFileName};
use crate::server::ConnectSettings;
use crate::server::replication::{
    ReplicationConnection, ReplicationError, ReplicationEvent, ReplicationMode,
};

/// The application_name the receiver connects with unless the conninfo names one: what
/// `synchronous_standby_names` lists, and how `pitr backup` tells that WAL still reaches a
/// repository where archive_mode is off.
pub const APPLICATION_NAME: &str = "pitr_receive_wal";
/// Suffix of the segment being received in the spool.
const PARTIAL: &str = ".partial";
/// Where segments whose stored copy differs are set aside, in the spool.
const CONFLICTS_DIR: &str = "conflicts";
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// WAL received but not yet fsynced, at most (under a stream that never pauses).
const MAX_UNFLUSHED: u64 = 4 << 20;

#[derive(Clone, Debug)]
pub struct ReceiveWalOptions {
    pub dbname: Option<String>,
    /// The physical replication slot streamed from.
    pub slot: String,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// The spool directory on local disk.
    pub spool: PathBuf,
    /// Report WAL as flushed as soon as it is durable where this says (for a receiver named
    /// in `synchronous_standby_names`), not only every `status_interval`; None: report the
    /// spool's position every `status_interval`.
    pub synchronous: Option<Synchronous>,
    /// How often the position is reported when nothing else prompts it.
    pub status_interval: Duration,
    /// How often the segment being filled is uploaded as the repository's tail (and when
    /// the stream stops); None: only when the stream stops.
    pub partial_interval: Option<Duration>,
}

/// `--synchronous`: where WAL must be durable before the server hears it is flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// Fsynced in the spool on the receiver's host.
    Spool,
    /// Stored in the repository (the tail, uploaded as soon as the stream is caught up):
    /// losing the receiver's host as well loses nothing acknowledged.
    Repository,
}

#[derive(Debug, Default)]
pub struct ReceiveWalReport {
    /// Segments (and history and partial files) stored in the repository.
    pub stored: u64,
    /// The end of the WAL received when the command stopped.
    pub received: Option<Lsn>,
}

/// Runs until interrupted (SIGINT, SIGTERM: the spool is flushed first, and the command
/// ends with 0). Connection failures are retried with backoff;
/// what cannot change by waiting (the wrong cluster, a missing slot, a refused segment) ends
/// it.
pub async fn receive_wal(
    catalog: &Catalog,
    options: &ReceiveWalOptions,
    interrupt: &Interrupt,
) -> Result<ReceiveWalReport> {
    let identity = catalog.identity().await?;
    let mut settings = crate::server::connection_settings(options.dbname.as_deref())?;
    // "pitr" is every pitr connection's default.
    if settings.application_name == "pitr" {
        settings.application_name = APPLICATION_NAME.to_owned();
    }
    std::fs::create_dir_all(&options.spool)
        .map_err(|e| Error::local_io(options.spool.display(), e))?;
    let mut receiver = Receiver {
        catalog,
        options,
        identity,
        report: ReceiveWalReport::default(),
        queue: VecDeque::new(),
        tail_uploaded: None,
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        // What the spool holds first; a store that fails is retried as a connection is.
        let outcome = match receiver.store_completed(interrupt).await {
            Ok(()) => receiver.session(&settings, interrupt).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Ended::Stopped) => return Ok(receiver.report),
            Ok(Ended::Progressed) => backoff = Duration::from_secs(1),
            Err(e) if permanent(&e) => {
                receiver.upload_tail().await;
                return Err(e);
            }
            Err(e) => {
                // The server may be gone for good: what the spool holds goes to the
                // repository now.
                receiver.upload_tail().await;
                tracing::warn!(
                    "receive-wal: {e}; connecting again in {}s",
                    backoff.as_secs()
                );
                if interrupt.race(tokio::time::sleep(backoff)).await.is_err() {
                    return Ok(receiver.report);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Failures that waiting does not mend.
fn permanent(error: &Error) -> bool {
    matches!(
        error,
        Error::Config(_)
            | Error::WrongRepository(_)
            | Error::Conflict { .. }
            | Error::Incomplete(_)
    )
}

/// How a streaming session ended without an error.
enum Ended {
    /// Interrupted: the spool is flushed.
    Stopped,
    /// The server ended the stream after WAL arrived (reconnect at once).
    Progressed,
}

struct Receiver<'a> {
    catalog: &'a Catalog,
    options: &'a ReceiveWalOptions,
    identity: RepositoryIdentity,
    report: ReceiveWalReport,
    /// Completed files in the spool, in the order they are stored.
    queue: VecDeque<PathBuf>,
    /// The last tail uploaded.
    tail_uploaded: Option<StoredTail>,
}

/// The segment being written in the spool.
struct OpenSegment {
    name: WalFileName,
    file: File,
    path: PathBuf,
}

/// Where the stream stands.
struct Position {
    timeline: u32,
    /// The end of what was received.
    received: Lsn,
    /// The end of what the spool holds durably.
    flushed: Lsn,
    /// The end of what the repository holds (whole segments and the tail).
    stored: Lsn,
    /// Report `stored` as flushed (`--synchronous=repository`), not `flushed`.
    until_stored: bool,
}

impl Position {
    fn at(timeline: u32, start: Lsn, until_stored: bool) -> Self {
        Position {
            timeline,
            received: start,
            flushed: start,
            stored: start,
            until_stored,
        }
    }

    /// What the server hears is flushed: what it may release, and, for a synchronous
    /// receiver, what its commits wait for.
    fn durable(&self) -> Lsn {
        if self.until_stored {
            self.stored.min(self.flushed)
        } else {
            self.flushed
        }
    }
}

impl Receiver<'_> {
    fn segment_size(&self) -> u64 {
        self.identity.wal_segment_size
    }

    /// One connection: from the spool's or the repository's end, until the stream ends or
    /// fails.
    async fn session(
        &mut self,
        settings: &ConnectSettings,
        interrupt: &Interrupt,
    ) -> Result<Ended> {
        let Ok(connected) = interrupt
            .race(ReplicationConnection::connect(
                settings,
                ReplicationMode::Physical,
            ))
            .await
        else {
            return Ok(Ended::Stopped);
        };
        let mut connection = connected?;
        let major = connection.server_major()?;
        if major != self.identity.pg_version {
            return Err(Error::WrongRepository(format!(
                "the server runs PostgreSQL {major} but the repository holds PostgreSQL {}",
                self.identity.pg_version
            )));
        }
        let syntax = Syntax::for_major(major).map_err(|e| Error::Server(e.to_string()))?;
        let system = connection.identify_system().await?;
        if system.system_id != self.identity.system_identifier {
            return Err(Error::WrongRepository(format!(
                "the server has system identifier {}, but the repository belongs to {}",
                system.system_id, self.identity.system_identifier
            )));
        }
        let slot_start = self.slot(&mut connection, syntax).await?;
        let (timeline, start) = self
            .start_point(system.timeline, slot_start.unwrap_or(system.xlogpos))
            .await?;
        tracing::info!(
            "receive-wal: streaming from {start} on timeline {timeline} (slot {})",
            self.options.slot
        );
        self.stream(&mut connection, timeline, start, interrupt)
            .await
    }

    /// Creates the slot where asked and missing; its restart position where the server
    /// tells it (15+).
    async fn slot(
        &self,
        connection: &mut ReplicationConnection,
        syntax: Syntax,
    ) -> Result<Option<Lsn>> {
        let name = &self.options.slot;
        let mut exists = None;
        if syntax == Syntax::OptionList {
            let sql =
                read_replication_slot(syntax, name).map_err(|e| Error::Config(e.to_string()))?;
            let rows = connection.query_rows(&sql).await?;
            let slot =
                parse_read_replication_slot(&rows).map_err(|e| Error::Server(e.to_string()))?;
            exists = Some(slot.is_some());
            if let Some(slot) = slot {
                if slot.slot_type != replication::SlotType::Physical {
                    return Err(Error::Config(format!(
                        "the replication slot {name} is a logical slot: receive-wal needs a \
                         physical one (drop it, or name another with --slot)"
                    )));
                }
                if slot.restart_lsn.is_some() {
                    return Ok(slot.restart_lsn);
                }
            }
        }
        if self.options.create_slot && exists != Some(true) {
            let sql = create_physical_slot(syntax, name, false, true)
                .map_err(|e| Error::Config(e.to_string()))?;
            match connection.simple_query(&sql).await {
                Ok(_) => tracing::info!("receive-wal: created the replication slot {name}"),
                // 42710: it exists (13/14, where it could not be read first).
                Err(ReplicationError::Server(e)) if e.code == "42710" => {}
                Err(e) => {
                    return Err(Error::Server(format!(
                        "creating the replication slot {name}: {e}"
                    )));
                }
            }
        } else if exists == Some(false) {
            return Err(Error::Config(format!(
                "the replication slot {name} does not exist: add --create-slot, or create it \
                 with SELECT pg_create_physical_replication_slot('{name}', true)"
            )));
        }
        Ok(None)
    }

    /// Where to stream from: the spool's partial segment (again from its start), else the
    /// end of the repository's WAL on the server's timeline, else the slot's (or the
    /// server's) position; always a segment's start.
    async fn start_point(&self, server_timeline: u32, fallback: Lsn) -> Result<(u32, Lsn)> {
        let size = self.segment_size();
        if let Some((name, _)) = self.partial_in_spool()? {
            let segno = name.segment_number(size).unwrap_or(0);
            return Ok((name.timeline(), Lsn(segno * size)));
        }
        let listing = self.catalog.wal_overview(size, 4).await?;
        let newest = listing
            .segments
            .keys()
            .filter(|(tli, _)| *tli == server_timeline)
            .map(|(_, segno)| *segno)
            .chain(
                listing
                    .rollups
                    .keys()
                    .filter(|(tli, _, _)| *tli == server_timeline)
                    .map(|(_, first, span)| first + span - 1),
            )
            .max();
        let start = match newest {
            Some(segno) => Lsn((segno + 1) * size),
            None => Lsn(fallback.0 - fallback.0 % size),
        };
        Ok((server_timeline, start))
    }

    /// The `<segment>.partial` file in the spool, if any (at most one is there).
    fn partial_in_spool(&self) -> Result<Option<(WalFileName, PathBuf)>> {
        let mut found = None;
        for (name, path) in self.spool_files()? {
            if let Some(segment) = name.strip_suffix(PARTIAL)
                && let Ok(wal) = WalFileName::parse(segment)
                && found
                    .as_ref()
                    .is_none_or(|(f, _): &(WalFileName, PathBuf)| wal > *f)
            {
                found = Some((wal, path));
            }
        }
        Ok(found)
    }

    fn spool_files(&self) -> Result<Vec<(String, PathBuf)>> {
        let spool = &self.options.spool;
        let entries = std::fs::read_dir(spool).map_err(|e| Error::local_io(spool.display(), e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::local_io(spool.display(), e))?;
            if entry.file_type().is_ok_and(|t| t.is_file())
                && let Ok(name) = entry.file_name().into_string()
            {
                files.push((name, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Stores the completed files the spool holds (a previous run's, or this one's).
    async fn store_completed(&mut self, interrupt: &Interrupt) -> Result<()> {
        for (name, path) in self.spool_files()? {
            // The partial segment is streamed again, not stored.
            let complete = !name.ends_with(PARTIAL) && WalFileName::parse(&name).is_ok();
            if complete && !self.queue.contains(&path) {
                self.queue.push_back(path);
            }
        }
        while let Some(path) = self.queue.front().cloned() {
            if interrupt.check().is_err() {
                return Ok(());
            }
            self.store(&path).await?;
            self.queue.pop_front();
        }
        Ok(())
    }

    /// Uploads the spool's partial segment as the repository's tail, when it grew since the
    /// last upload, then removes the shorter tails it supersedes; the end of the WAL the
    /// stored tail holds. Best effort: a failure is logged, and the next upload or the whole
    /// segment makes up for it.
    async fn upload_tail(&mut self) -> Option<Lsn> {
        let partial = match self.partial_in_spool() {
            Ok(Some(partial)) => partial,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("receive-wal: the tail: {e}");
                return None;
            }
        };
        let (segment, path) = partial;
        let start = segment.start_lsn(self.segment_size())?;
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        let previous = self
            .tail_uploaded
            .take_if(|t| t.segment == segment && t.end <= len);
        if let Some(previous) = &previous
            && previous.end == len
        {
            self.tail_uploaded = Some(previous.clone());
            return Some(Lsn(start.0 + len));
        }
        if len == 0 {
            return None;
        }
        match self.catalog.store_tail(&segment, &path).await {
            Ok(stored) => {
                let said = format!(
                    "receive-wal: uploaded the tail of {segment}, {} bytes",
                    stored.end
                );
                // Each caught-up moment uploads one when synchronous with the repository.
                if self.options.synchronous == Some(Synchronous::Repository) {
                    tracing::debug!("{said}");
                } else {
                    tracing::info!("{said}");
                }
                let end = Lsn(start.0 + stored.end);
                self.tail_uploaded = Some(stored.clone());
                // The one this run uploaded before is superseded; others (an earlier run's)
                // are found by listing, once per segment.
                match previous {
                    Some(previous) => {
                        if let Err(e) = self.catalog.delete_tails(&[previous]).await {
                            tracing::warn!("receive-wal: removing a superseded tail: {e}");
                        }
                    }
                    None => self.remove_tails(&segment, Some(stored.end)).await,
                }
                Some(end)
            }
            Err(e) => {
                tracing::warn!("receive-wal: uploading the tail of {segment}: {e}");
                None
            }
        }
    }

    /// Removes `segment`'s tails shorter than `below` (all of them without).
    async fn remove_tails(&self, segment: &WalFileName, below: Option<u64>) {
        let redundant: Vec<_> = match self.catalog.tails_of(segment).await {
            Ok(tails) => tails
                .into_iter()
                .filter(|t| below.is_none_or(|end| t.end < end))
                .collect(),
            Err(e) => {
                tracing::warn!("receive-wal: listing the tails: {e}");
                return;
            }
        };
        if let Err(e) = self.catalog.delete_tails(&redundant).await {
            tracing::warn!("receive-wal: removing superseded tails of {segment}: {e}");
        }
    }

    /// Stores one completed file as archive-push does, then removes it from the spool.
    async fn store(&mut self, path: &Path) -> Result<()> {
        match archive_push(
            self.catalog,
            &ArchivePushOptions::single(path.to_owned(), 1),
        )
        .await
        {
            Ok(report) => {
                tracing::info!("receive-wal: stored {}", report.name);
                self.report.stored += 1;
                std::fs::remove_file(path).map_err(|e| Error::local_io(path.display(), e))?;
                // The whole segment (or the old timeline's .partial) supersedes its tails.
                let stem = report.name.trim_end_matches(PARTIAL);
                if let Ok(segment) = WalFileName::parse(stem)
                    && segment.kind() == crate::pg::WalFileKind::Segment
                {
                    self.remove_tails(&segment, None).await;
                }
                Ok(())
            }
            Err(Error::Conflict { name, location }) => {
                let aside = self.options.spool.join(CONFLICTS_DIR);
                std::fs::create_dir_all(&aside).map_err(|e| Error::local_io(aside.display(), e))?;
                let target = aside.join(path.file_name().unwrap_or_default());
                std::fs::rename(path, &target).map_err(|e| Error::local_io(target.display(), e))?;
                Err(Error::Conflict {
                    name: format!(
                        "{name} (the streamed copy differs from the stored one; it is kept in \
                         {}: compare them before anything else)",
                        target.display()
                    ),
                    location,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn stream(
        &mut self,
        connection: &mut ReplicationConnection,
        mut timeline: u32,
        start: Lsn,
        interrupt: &Interrupt,
    ) -> Result<Ended> {
        let size = self.segment_size();
        let until_stored = self.options.synchronous == Some(Synchronous::Repository);
        let mut position = Position::at(timeline, start, until_stored);
        let mut progressed = false;
        loop {
            if timeline > 1 {
                self.store_history(connection, timeline).await?;
            }
            let sql = start_replication(Some(&self.options.slot), position.received, timeline)
                .map_err(|e| Error::Server(e.to_string()))?;
            connection.start(&sql).await?;
            let mut segment: Option<OpenSegment> = None;
            let mut unflushed = false;
            // WAL arrived that a synchronous receiver has not reported yet.
            let mut unreported = false;
            let synchronous = self.options.synchronous.is_some();
            let mut status = tokio::time::interval_at(
                tokio::time::Instant::now() + self.options.status_interval,
                self.options.status_interval,
            );
            let mut tail_every = self.options.partial_interval.map(|every| {
                let mut timer =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                // After a long store, one upload, not a burst.
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                timer
            });
            // Ends with the next timeline's number and start, when the server ends the
            // stream at a timeline switch.
            let switched = loop {
                let event = tokio::select! {
                    biased;
                    signal = interrupt.wait() => {
                        let _ = signal;
                        self.flush_and_report(connection, &mut segment, &mut position).await?;
                        self.upload_tail().await;
                        return Ok(Ended::Stopped);
                    }
                    event = connection.next_event() => {
                        event.map_err(|e| stream_refused(e, &self.options.slot))?
                    }
                    // Caught up (nothing else ready): one fsync (and, synchronous, one
                    // report) for everything received since the last.
                    _ = std::future::ready(()), if unflushed || (synchronous && unreported) => {
                        self.flush(&mut segment, &mut position)?;
                        unflushed = false;
                        if synchronous {
                            self.make_durable(&mut position).await;
                            send_status(connection, &position).await?;
                            unreported = false;
                        }
                        continue;
                    }
                    _ = status.tick() => {
                        // A tail upload that failed is tried again.
                        self.make_durable(&mut position).await;
                        send_status(connection, &position).await?;
                        continue;
                    }
                    _ = tick(&mut tail_every) => {
                        if !until_stored {
                            self.upload_tail().await;
                        }
                        continue;
                    }
                };
                let Some(event) = event else {
                    break None;
                };
                let payload = match event {
                    ReplicationEvent::CopyData(payload) => payload,
                    ReplicationEvent::ResultSet(set) => {
                        // The end of the timeline: the next one and where it starts.
                        break Some(set.rows);
                    }
                    ReplicationEvent::CopyDone => {
                        let _ = connection.send_copy_done().await;
                        continue;
                    }
                    _ => continue,
                };
                let message = decode_wal_sender_message(&payload)
                    .map_err(|e| Error::Server(format!("the WAL stream: {e}")))?;
                let (wal_start, data) = match message {
                    WalSenderMessage::Keepalive {
                        reply_requested, ..
                    } => {
                        if reply_requested {
                            if unflushed {
                                self.flush(&mut segment, &mut position)?;
                                unflushed = false;
                            }
                            send_status(connection, &position).await?;
                        }
                        continue;
                    }
                    WalSenderMessage::XLogData {
                        wal_start, data, ..
                    } => (wal_start, data),
                };
                if wal_start != position.received {
                    return Err(Error::Server(format!(
                        "the WAL stream jumped from {} to {wal_start}",
                        position.received
                    )));
                }
                progressed = true;
                unreported = true;
                let completed = self.write(&mut segment, &mut position, data)?;
                unflushed = position.received > position.flushed;
                if position.received.0 - position.flushed.0 >= MAX_UNFLUSHED {
                    self.flush(&mut segment, &mut position)?;
                    unflushed = false;
                }
                let any_completed = !completed.is_empty();
                for path in completed {
                    send_status(connection, &position).await?;
                    self.queue.push_back(path);
                }
                // Stored between messages: a store is short next to wal_sender_timeout.
                while let Some(path) = self.queue.front().cloned() {
                    self.store(&path).await?;
                    self.queue.pop_front();
                }
                if any_completed {
                    // Every segment before the one being filled is stored whole.
                    let segment_start = Lsn(position.received.0 - position.received.0 % size);
                    position.stored = position.stored.max(segment_start);
                    if until_stored {
                        send_status(connection, &position).await?;
                    }
                }
            };
            self.flush(&mut segment, &mut position)?;
            let Some(rows) = switched else {
                return if progressed {
                    Ok(Ended::Progressed)
                } else {
                    Err(Error::Server("the server ended the WAL stream".into()))
                };
            };
            // Wait for the command's end before the next one.
            while let Some(event) = connection.next_event().await? {
                if event == ReplicationEvent::Ready {
                    break;
                }
            }
            let (next, next_start) = parse_next_timeline(&rows)?;
            // The old timeline's last segment, up to the switch: kept as PostgreSQL's
            // archiver keeps it at promotion.
            if let Some(open) = segment.take() {
                // Full size, zeros after the switch point, as PostgreSQL writes a `.partial`.
                open.file
                    .set_len(size)
                    .and_then(|()| open.file.sync_all())
                    .map_err(|e| Error::local_io(open.path.display(), e))?;
                self.queue.push_back(open.path);
            }
            while let Some(path) = self.queue.front().cloned() {
                self.store(&path).await?;
                self.queue.pop_front();
            }
            tracing::info!(
                "receive-wal: timeline {timeline} ended at {next_start}; following timeline {next}"
            );
            timeline = next;
            position = Position::at(
                timeline,
                Lsn(next_start.0 - next_start.0 % size),
                until_stored,
            );
        }
    }

    /// Writes `data` at the received position; the paths of segments it completed.
    fn write(
        &self,
        segment: &mut Option<OpenSegment>,
        position: &mut Position,
        mut data: &[u8],
    ) -> Result<Vec<PathBuf>> {
        let size = self.segment_size();
        let mut completed = Vec::new();
        while !data.is_empty() {
            let at = position.received;
            let offset = at.0 % size;
            if segment.is_none() {
                *segment = Some(self.open_segment(position.timeline, at)?);
            }
            let open = segment.as_mut().expect("opened above");
            let take = (size - offset).min(data.len() as u64) as usize;
            open.file
                .write_all(&data[..take])
                .map_err(|e| Error::local_io(open.path.display(), e))?;
            data = &data[take..];
            position.received = Lsn(at.0 + take as u64);
            if position.received.0 % size == 0 {
                let open = segment.take().expect("open above");
                open.file
                    .sync_all()
                    .map_err(|e| Error::local_io(open.path.display(), e))?;
                let done = self.options.spool.join(open.name.to_string());
                std::fs::rename(&open.path, &done)
                    .map_err(|e| Error::local_io(done.display(), e))?;
                sync_dir(&self.options.spool)?;
                position.flushed = position.received;
                completed.push(done);
            }
        }
        Ok(completed)
    }

    /// The spool file of the segment holding `at`, positioned at `at`.
    fn open_segment(&self, timeline: u32, at: Lsn) -> Result<OpenSegment> {
        let size = self.segment_size();
        let name = WalFileName::segment(timeline, at.segment_number(size), size)
            .ok_or_else(|| Error::Server(format!("no segment holds {at}")))?;
        let path = self.options.spool.join(format!("{name}{PARTIAL}"));
        // From a segment's start (always, but at a timeline switch inside one), the file is
        // written anew: its length is then what was received, which its tail uploads. The
        // server still has the segment: the slot holds the one its restart point is in.
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(at.0 % size == 0)
            .open(&path)
            .map_err(|e| Error::local_io(path.display(), e))?;
        file.seek(SeekFrom::Start(at.0 % size))
            .map_err(|e| Error::local_io(path.display(), e))?;
        sync_dir(&self.options.spool)?;
        Ok(OpenSegment { name, file, path })
    }

    fn flush(&self, segment: &mut Option<OpenSegment>, position: &mut Position) -> Result<()> {
        if let Some(open) = segment.as_mut() {
            open.file
                .sync_data()
                .map_err(|e| Error::local_io(open.path.display(), e))?;
        }
        position.flushed = position.received;
        Ok(())
    }

    /// With `--synchronous=repository`, stores what the spool holds as the tail, so that
    /// it can be reported flushed.
    async fn make_durable(&mut self, position: &mut Position) {
        if position.until_stored
            && position.stored < position.flushed
            && let Some(end) = self.upload_tail().await
        {
            position.stored = position.stored.max(end.min(position.flushed));
        }
    }

    async fn flush_and_report(
        &mut self,
        connection: &mut ReplicationConnection,
        segment: &mut Option<OpenSegment>,
        position: &mut Position,
    ) -> Result<()> {
        self.flush(segment, position)?;
        self.report.received = Some(position.received);
        // Best effort: the connection may be what failed.
        let _ = send_status(connection, position).await;
        Ok(())
    }

    /// The history file of `timeline`, stored as archive-push stores one.
    async fn store_history(
        &mut self,
        connection: &mut ReplicationConnection,
        timeline: u32,
    ) -> Result<()> {
        let sql = timeline_history(timeline).map_err(|e| Error::Server(e.to_string()))?;
        let rows = connection.query_rows(&sql).await?;
        let history = parse_timeline_history(&rows).map_err(|e| Error::Server(e.to_string()))?;
        let path = self.options.spool.join(history.filename.to_string());
        write_durably(&path, &history.content)?;
        self.store(&path).await
    }
}

/// START_REPLICATION's result set at a timeline's end: the next timeline and its start.
fn parse_next_timeline(rows: &[Vec<Option<String>>]) -> Result<(u32, Lsn)> {
    let bad = || Error::Server("the server ended the timeline without naming the next one".into());
    let row = rows.first().ok_or_else(bad)?;
    let timeline = row
        .first()
        .cloned()
        .flatten()
        .and_then(|t| t.parse::<u32>().ok())
        .ok_or_else(bad)?;
    let start = row
        .get(1)
        .cloned()
        .flatten()
        .and_then(|l| l.parse::<Lsn>().ok())
        .ok_or_else(bad)?;
    Ok((timeline, start))
}

/// An error of the stream; a missing slot (13/14, where it is not read first) is the user's
/// to fix, not a connection's to retry.
fn stream_refused(error: ReplicationError, slot: &str) -> Error {
    match error {
        // The slot was invalidated, or the WAL it should have held is gone: a gap that no
        // retry fills.
        ReplicationError::Server(e) if e.code == "55000" || e.code == "58P01" => {
            Error::Incomplete(format!(
                "the server no longer has the WAL to stream from the slot {slot} ({}): the \
                 archive has a gap from there; take a new backup (pitr backup), drop the \
                 slot and start receive-wal again with --create-slot",
                e.message
            ))
        }
        ReplicationError::Server(e) if e.code == "42704" => Error::Config(format!(
            "the replication slot {slot} does not exist: add --create-slot, or create it with \
             SELECT pg_create_physical_replication_slot('{slot}', true)"
        )),
        other => other.into(),
    }
}

/// The timer's next tick; never without one.
async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn send_status(connection: &mut ReplicationConnection, position: &Position) -> Result<()> {
    let update = StandbyStatusUpdate {
        write: position.received,
        flush: position.durable(),
        apply: position.durable(),
        clock: to_pg_timestamp(SystemTime::now()),
        reply_requested: false,
    };
    connection.send_copy_data(&update.encode()).await?;
    Ok(())
}

fn write_durably(path: &Path, content: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| Error::local_io(path.display(), e))?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::local_io(path.display(), e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::local_io(dir.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_timeline_is_read_from_the_result_set() {
        let rows = vec![vec![Some("2".to_owned()), Some("0/5000A0".to_owned())]];
        assert_eq!(parse_next_timeline(&rows).unwrap(), (2, Lsn(0x5000A0)));
        assert!(parse_next_timeline(&[]).is_err());
        assert!(parse_next_timeline(&[vec![Some("x".into()), None]]).is_err());
    }
}
