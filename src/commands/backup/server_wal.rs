//! The server's WAL that an incremental backup needs before the archive has it: the segment
//! holding the backup's start (still being written) and the timeline's history. A backup on
//! the database host reads them from `pg_wal`; one over the replication protocol streams
//! them from the server (`START_REPLICATION` without a slot from the segment's start: the
//! server keeps every segment from the backup's start checkpoint on).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::pg::block_map::{BlockMap, SegmentMapFrom};
use crate::pg::replication::{
    WalSenderMessage, decode_wal_sender_message, parse_timeline_history, start_replication,
    timeline_history,
};
use crate::pg::timeline::HistoryEntry;
use crate::pg::{Lsn, WalFileName};
use crate::server::ConnectSettings;
use crate::server::replication::{ReplicationConnection, ReplicationEvent, ReplicationMode};

use super::blocking;

/// A stream that sends nothing for this long is given up: pages are compared instead.
const STREAM_QUIET: Duration = Duration::from_secs(30);

/// Where the server's unarchived WAL is read.
#[allow(clippy::large_enum_variant)] // one per backup
pub(super) enum ServerWal {
    /// The data directory, on this host.
    Directory(PathBuf),
    /// The server, over the replication protocol.
    Replication(ConnectSettings),
}

impl ServerWal {
    /// Where `until` is inside segment `name` (or its end, for `u64::MAX`), as a byte count
    /// from the segment's start.
    fn limit(until: Lsn, segment_size: u64) -> u64 {
        match until.0 {
            u64::MAX => segment_size,
            lsn => (lsn % segment_size).max(1),
        }
    }

    /// The map of segment `name` fed to `map` up to `until` (records from `until` on are
    /// left out by `map`); None when the server no longer has the segment.
    pub async fn decode(
        &self,
        name: &WalFileName,
        map: SegmentMapFrom,
        until: Lsn,
        segment_size: u64,
    ) -> Result<Option<BlockMap>> {
        let limit = Self::limit(until, segment_size);
        match self {
            ServerWal::Directory(pgdata) => {
                // Whole pages: the page holding `until` is being written, its end unknown.
                let limit = limit.next_multiple_of(8192).min(segment_size);
                decode_file(&pgdata.join("pg_wal").join(name.as_str()), map, limit).await
            }
            ServerWal::Replication(settings) => {
                stream_segment(settings, name, map, limit, segment_size).await
            }
        }
    }

    /// The history of `timeline` (empty for 1); None when the server has none.
    pub async fn history(&self, timeline: u32) -> Result<Option<Vec<HistoryEntry>>> {
        if timeline <= 1 {
            return Ok(Some(Vec::new()));
        }
        let text = match self {
            ServerWal::Directory(pgdata) => {
                let path = pgdata
                    .join("pg_wal")
                    .join(format!("{timeline:08X}.history"));
                match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(_) => return Ok(None),
                }
            }
            ServerWal::Replication(settings) => {
                let mut connection =
                    ReplicationConnection::connect(settings, ReplicationMode::Physical).await?;
                let sql = timeline_history(timeline).map_err(|e| Error::Server(e.to_string()))?;
                let rows = match connection.query_rows(&sql).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::debug!("TIMELINE_HISTORY {timeline}: {e}");
                        return Ok(None);
                    }
                };
                drop(connection.close().await);
                let file =
                    parse_timeline_history(&rows).map_err(|e| Error::Server(e.to_string()))?;
                String::from_utf8_lossy(&file.content).into_owned()
            }
        };
        Ok(crate::pg::timeline::parse_history(timeline, &text).ok())
    }
}

/// The first `limit` bytes of the segment file at `path` through `map`.
async fn decode_file(path: &Path, mut map: SegmentMapFrom, limit: u64) -> Result<Option<BlockMap>> {
    let path = path.to_owned();
    blocking(move || {
        let mut handle = match std::fs::File::open(&path) {
            Ok(handle) => handle.take(limit),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::local_io(path.display(), e)),
        };
        io::copy(&mut handle, &mut map).map_err(|e| Error::local_io(path.display(), e))?;
        Ok(Some(map.finish()))
    })
    .await
}

/// The first `limit` bytes of segment `name`, streamed from the server through `map`. A
/// server that no longer has the segment refuses the stream: then None.
async fn stream_segment(
    settings: &ConnectSettings,
    name: &WalFileName,
    mut map: SegmentMapFrom,
    limit: u64,
    segment_size: u64,
) -> Result<Option<BlockMap>> {
    let start = name
        .start_lsn(segment_size)
        .ok_or_else(|| Error::Server(format!("{name} is not a segment")))?;
    let end = Lsn(start.0 + limit);
    let mut connection =
        ReplicationConnection::connect(settings, ReplicationMode::Physical).await?;
    let sql = start_replication(None, start, name.timeline())
        .map_err(|e| Error::Server(e.to_string()))?;
    if let Err(e) = connection.start(&sql).await {
        tracing::info!("the server cannot stream {name}: {e}");
        return Ok(None);
    }
    let mut received = start;
    while received < end {
        let event = tokio::time::timeout(STREAM_QUIET, connection.next_event())
            .await
            .map_err(|_| Error::Server(format!("the server sent no WAL of {name} for 30 s")))??;
        let payload = match event {
            Some(ReplicationEvent::CopyData(payload)) => payload,
            Some(ReplicationEvent::CopyStart { .. } | ReplicationEvent::CommandComplete(_)) => {
                continue;
            }
            // The timeline ended before `end`: what came is all there is of it.
            _ => break,
        };
        let message = decode_wal_sender_message(&payload)
            .map_err(|e| Error::Server(format!("the WAL stream: {e}")))?;
        let WalSenderMessage::XLogData {
            wal_start, data, ..
        } = message
        else {
            // Keepalives: the connection ends long before wal_sender_timeout.
            continue;
        };
        if wal_start != received {
            return Err(Error::Server(format!(
                "the WAL stream jumped from {received} to {wal_start}"
            )));
        }
        let take = (end.0 - received.0).min(data.len() as u64) as usize;
        map.feed(&data[..take]);
        received = Lsn(received.0 + take as u64);
    }
    // Ends the stream and the connection; the server needs no goodbye.
    drop(connection);
    Ok(Some(map.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_is_read_up_to_the_start_or_whole() {
        const SEGMENT: u64 = 16 << 20;
        assert_eq!(ServerWal::limit(Lsn(0x0300_2028), SEGMENT), 0x2028);
        assert_eq!(ServerWal::limit(Lsn(u64::MAX), SEGMENT), SEGMENT);
        // A start on the segment's first byte still reads its header.
        assert_eq!(ServerWal::limit(Lsn(0x0300_0000), SEGMENT), 1);
    }
}
