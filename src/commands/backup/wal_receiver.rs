//! The WAL of a backup over the replication protocol, received on a second replication
//! connection while the backup runs (as `pg_basebackup -X stream` does), for servers that do
//! not archive into this repository. A temporary slot, created before `BASE_BACKUP` starts
//! with its WAL reserved, keeps the server from removing what the backup needs; the server
//! drops it when the connection ends, however it ends.
//!
//! Each segment, from the one holding the backup's start to the one holding its end, is
//! written to a private temporary file and stored exactly as archive-push stores it (content
//! checks, index, rollups): a segment archive_command stores too is the same bytes, accepted
//! as already archived; different bytes are refused, never overwritten. A primary switches
//! segments when a backup ends, so the last segment completes at once; on a standby it
//! completes when its primary moves on, awaited until `--wal-timeout`.

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::catalog::{Catalog, RepositoryIdentity};
use crate::commands::archive_push::{ArchivePushOptions, archive_push};
use crate::error::{Error, Result};
use crate::pg::replication::{
    StandbyStatusUpdate, Syntax, WalSenderMessage, create_physical_slot, decode_wal_sender_message,
    parse_timeline_history, start_replication, timeline_history, to_pg_timestamp,
};
use crate::pg::{Lsn, WalFileName};
use crate::server::ConnectSettings;
use crate::server::replication::{ReplicationConnection, ReplicationEvent, ReplicationMode};

/// The server ends a silent receiver at wal_sender_timeout (60 s by default).
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// A replication connection holding the backup's temporary slot, before streaming.
pub(super) struct WalConnection {
    connection: ReplicationConnection,
    slot: String,
}

/// What the streaming stored.
pub(super) struct StreamedWal {
    pub segments: u32,
    pub last: WalFileName,
}

/// Opens the connection and creates the temporary slot, reserving the WAL from now on.
pub(super) async fn reserve(
    settings: &ConnectSettings,
    syntax: Syntax,
    id: &str,
) -> Result<WalConnection> {
    let mut connection =
        ReplicationConnection::connect(settings, ReplicationMode::Physical).await?;
    // Slot names: lower-case letters, digits and underscores; unique per backup and process.
    let slot = format!(
        "pitr_{}_{}",
        id.to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id()
    );
    let sql = create_physical_slot(syntax, &slot, true, true)
        .map_err(|e| Error::Server(e.to_string()))?;
    connection.simple_query(&sql).await.map_err(|e| {
        Error::Server(format!(
            "creating the temporary replication slot {slot} for the backup's WAL: {e}; \
             nothing was copied (or take the WAL from the server's archive_command: \
             --wal-method archive)"
        ))
    })?;
    Ok(WalConnection { connection, slot })
}

/// Where the streaming stands, for its error messages.
struct Position {
    /// WAL received so far (exclusive end).
    received: Lsn,
    /// WAL stored in the repository so far.
    stored: Lsn,
}

impl WalConnection {
    /// Streams from the segment holding `start` on `timeline` until the segment holding the
    /// stop point (sent on `stop` when the backup ends) is complete and stored.
    pub(super) async fn stream(
        mut self,
        catalog: Catalog,
        identity: RepositoryIdentity,
        start: Lsn,
        timeline: u32,
        mut stop: watch::Receiver<Option<(Lsn, Option<Instant>)>>,
    ) -> Result<StreamedWal> {
        let segment_size = identity.wal_segment_size;
        let dir = tempfile::Builder::new()
            .prefix("pitr-backup-wal-")
            .tempdir()
            .map_err(|e| Error::local_io("a temporary directory for the backup's WAL", e))?;
        if timeline > 1 {
            self.store_history(&catalog, timeline, dir.path().to_owned())
                .await?;
        }
        let first = Lsn(start.0 - start.0 % segment_size);
        let sql = start_replication(Some(&self.slot), first, timeline)
            .map_err(|e| Error::Server(e.to_string()))?;
        self.connection.start(&sql).await?;
        let mut position = Position {
            received: first,
            stored: first,
        };
        let mut segment: Option<(WalFileName, std::fs::File, PathBuf)> = None;
        let mut segments = 0;
        let mut last = None;
        // Not at once: the stream may not have begun (a status outside it is refused).
        let mut status =
            tokio::time::interval_at(tokio::time::Instant::now() + STATUS_EVERY, STATUS_EVERY);
        loop {
            // Done once the segment holding the stop point is stored.
            let stop_at = *stop.borrow();
            if let Some((stop_lsn, _)) = stop_at {
                let needed = segment_end(Lsn(stop_lsn.0.saturating_sub(1)), segment_size);
                if position.stored >= needed {
                    break;
                }
            }
            let deadline = stop_at.and_then(|(_, deadline)| deadline);
            let event = tokio::select! {
                event = self.connection.next_event() => event?,
                _ = status.tick() => {
                    self.send_status(&position).await?;
                    continue;
                }
                changed = stop.changed(), if stop_at.is_none() => {
                    if changed.is_err() {
                        return Err(Error::Server("the backup ended without its stop point".into()));
                    }
                    continue;
                }
                _ = sleep_until(deadline) => {
                    let waiting = WalFileName::segment(
                        timeline,
                        position.received.segment_number(segment_size),
                        segment_size,
                    )
                    .map_or_else(|| "the last segment".to_owned(), |n| n.to_string());
                    return Err(Error::Incomplete(format!(
                        "the WAL the backup needs up to {waiting} did not arrive before \
                         --wal-timeout: on a standby, the segment completes when the \
                         primary switches to the next one (set archive_timeout there, or \
                         run pg_switch_wal() on the primary), then run pitr backup again"
                    )));
                }
            };
            let Some(event) = event else {
                return Err(Error::Server(
                    "the server ended the WAL stream before the backup's last segment".into(),
                ));
            };
            let payload = match event {
                ReplicationEvent::CopyData(payload) => payload,
                ReplicationEvent::CopyStart { .. } | ReplicationEvent::CommandComplete(_) => {
                    continue;
                }
                ReplicationEvent::ResultSet(_)
                | ReplicationEvent::CopyDone
                | ReplicationEvent::Ready => {
                    return Err(Error::Server(format!(
                        "the server ended the WAL stream at {} before the backup's last \
                         segment (did the timeline change during the backup?); run pitr \
                         backup again",
                        position.received
                    )));
                }
            };
            let message = decode_wal_sender_message(&payload)
                .map_err(|e| Error::Server(format!("the WAL stream: {e}")))?;
            let (wal_start, data) = match message {
                WalSenderMessage::Keepalive {
                    reply_requested, ..
                } => {
                    if reply_requested {
                        self.send_status(&position).await?;
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
            let mut data = data;
            while !data.is_empty() {
                let at = position.received;
                let offset = at.0 % segment_size;
                if segment.is_none() {
                    let name = WalFileName::segment(
                        timeline,
                        at.segment_number(segment_size),
                        segment_size,
                    )
                    .ok_or_else(|| Error::Server(format!("no segment holds {at}")))?;
                    let path = dir.path().join(name.to_string());
                    let mut file = std::fs::File::create(&path)
                        .map_err(|e| Error::local_io(path.display(), e))?;
                    file.seek(SeekFrom::Start(offset))
                        .map_err(|e| Error::local_io(path.display(), e))?;
                    segment = Some((name, file, path));
                }
                let Some((name, file, _)) = segment.as_mut() else {
                    unreachable!("opened above")
                };
                let take = (segment_size - offset).min(data.len() as u64) as usize;
                file.write_all(&data[..take])
                    .map_err(|e| Error::local_io(name, e))?;
                data = &data[take..];
                position.received = Lsn(at.0 + take as u64);
                if position.received.0 % segment_size == 0 {
                    let (name, file, path) = segment.take().expect("open above");
                    drop(file);
                    store_segment(&catalog, &path).await?;
                    std::fs::remove_file(&path).map_err(|e| Error::local_io(path.display(), e))?;
                    position.stored = position.received;
                    segments += 1;
                    last = Some(name);
                    // The slot may let the server remove what is stored.
                    self.send_status(&position).await?;
                }
            }
        }
        // The server ends the stream on CopyDone; the temporary slot goes with the connection.
        let _ = self.connection.send_copy_done().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(event)) = self.connection.next_event().await {
                if event == ReplicationEvent::Ready {
                    break;
                }
            }
        })
        .await;
        let last = last.ok_or_else(|| Error::Server("no WAL segment was streamed".into()))?;
        Ok(StreamedWal { segments, last })
    }

    async fn send_status(&mut self, position: &Position) -> Result<()> {
        let update = StandbyStatusUpdate {
            write: position.received,
            flush: position.stored,
            apply: position.stored,
            clock: to_pg_timestamp(SystemTime::now()),
            reply_requested: false,
        };
        self.connection.send_copy_data(&update.encode()).await?;
        Ok(())
    }

    /// The history file of `timeline`, stored as archive-push stores one: recovery follows
    /// the timeline only with it.
    async fn store_history(
        &mut self,
        catalog: &Catalog,
        timeline: u32,
        dir: PathBuf,
    ) -> Result<()> {
        let sql = timeline_history(timeline).map_err(|e| Error::Server(e.to_string()))?;
        let rows = self.connection.query_rows(&sql).await?;
        let history = parse_timeline_history(&rows).map_err(|e| Error::Server(e.to_string()))?;
        let path = dir.join(history.filename.to_string());
        std::fs::write(&path, &history.content).map_err(|e| Error::local_io(path.display(), e))?;
        store_segment(catalog, &path).await?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}

/// Stores a segment as archive-push does (its checks, index and rollup).
async fn store_segment(catalog: &Catalog, path: &std::path::Path) -> Result<()> {
    let report = archive_push(catalog, &ArchivePushOptions::single(path.to_owned(), 1))
        .await
        .map_err(|e| match e {
            Error::Conflict { .. } => e,
            other => Error::Server(format!("storing the backup's WAL: {other}")),
        })?;
    tracing::info!("streamed {} into the repository", report.name);
    Ok(())
}

/// The end (exclusive) of the segment holding `lsn`.
fn segment_end(lsn: Lsn, segment_size: u64) -> Lsn {
    Lsn((lsn.0 / segment_size)
        .saturating_add(1)
        .saturating_mul(segment_size))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_ends_with_the_segment_holding_the_stop_point() {
        const SEGMENT: u64 = 16 << 20;
        // The stop point inside a segment: that segment, whole.
        assert_eq!(segment_end(Lsn(0x2A00_0100 - 1), SEGMENT), Lsn(0x2B00_0000));
        // A stop point on a boundary: the segment before it (the byte before the stop).
        assert_eq!(segment_end(Lsn(0x2B00_0000 - 1), SEGMENT), Lsn(0x2B00_0000));
        // The end of the LSN space saturates instead of overflowing.
        assert_eq!(segment_end(Lsn(u64::MAX), SEGMENT), Lsn(u64::MAX));
    }
}
