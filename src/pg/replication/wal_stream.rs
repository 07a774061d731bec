//! The CopyBoth messages of `START_REPLICATION ... PHYSICAL` (protocol-replication.html,
//! walsender.c `XLogSendPhysical`/`WalSndKeepalive`, walreceiver.c `XLogWalRcvSendReply`):
//! the payloads inside CopyData, big-endian, with times as microseconds since 2000-01-01 UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

use super::ProtocolError;
use crate::pg::Lsn;

/// 2000-01-01 00:00:00 UTC, PostgreSQL's epoch, in Unix seconds.
pub const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
const PG_EPOCH_UNIX_MICROS: i64 = PG_EPOCH_UNIX_SECONDS * 1_000_000;

/// A message from the walsender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalSenderMessage<'a> {
    /// `w`: WAL bytes starting at `wal_start`.
    XLogData {
        wal_start: Lsn,
        /// The end of WAL on the server when it sent this.
        wal_end: Lsn,
        send_time: i64,
        data: &'a [u8],
    },
    /// `k`: the server's position; `reply_requested` asks for a [`StandbyStatusUpdate`] at
    /// once, lest the server end the connection at wal_sender_timeout.
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

impl WalSenderMessage<'_> {
    /// The last byte of WAL `XLogData` carries, exclusive: where the next message starts.
    /// None where the claimed start and length run past the end of the LSN space.
    pub fn data_end(&self) -> Option<Lsn> {
        match self {
            WalSenderMessage::XLogData {
                wal_start, data, ..
            } => u64::try_from(data.len())
                .ok()
                .and_then(|len| wal_start.0.checked_add(len))
                .map(Lsn),
            WalSenderMessage::Keepalive { .. } => None,
        }
    }
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(slice) = bytes.get(at..at.saturating_add(8)) {
        word.copy_from_slice(slice);
    }
    u64::from_be_bytes(word)
}

const XLOG_DATA_HEADER: usize = 1 + 8 + 8 + 8;
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

/// Decodes one CopyData payload of the replication stream.
pub fn decode_wal_sender_message(payload: &[u8]) -> Result<WalSenderMessage<'_>, ProtocolError> {
    let (&tag, _) = payload.split_first().ok_or(ProtocolError::EmptyMessage)?;
    match tag {
        b'w' => {
            if payload.len() < XLOG_DATA_HEADER {
                return Err(ProtocolError::MessageLength {
                    message: "XLogData",
                    len: payload.len(),
                    need: XLOG_DATA_HEADER,
                });
            }
            Ok(WalSenderMessage::XLogData {
                wal_start: Lsn(be_u64(payload, 1)),
                wal_end: Lsn(be_u64(payload, 9)),
                send_time: be_u64(payload, 17) as i64,
                data: payload.get(XLOG_DATA_HEADER..).unwrap_or_default(),
            })
        }
        b'k' => {
            // Exactly: a longer keepalive is a newer protocol pitr should not half-read.
            if payload.len() != KEEPALIVE_LEN {
                return Err(ProtocolError::MessageLength {
                    message: "keepalive",
                    len: payload.len(),
                    need: KEEPALIVE_LEN,
                });
            }
            Ok(WalSenderMessage::Keepalive {
                wal_end: Lsn(be_u64(payload, 1)),
                send_time: be_u64(payload, 9) as i64,
                reply_requested: payload.get(17).is_some_and(|&b| b != 0),
            })
        }
        tag => Err(ProtocolError::UnknownMessage {
            stream: "replication",
            tag,
        }),
    }
}

/// `r`: what the standby has written, flushed and applied; the server frees WAL a slot holds
/// up to `flush`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
    /// The client's clock, microseconds since 2000-01-01 ([`to_pg_timestamp`]).
    pub clock: i64,
    /// Ask the server to answer at once (with a keepalive).
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    pub const LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

    /// The CopyData payload.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = b'r';
        out[1..9].copy_from_slice(&self.write.0.to_be_bytes());
        out[9..17].copy_from_slice(&self.flush.0.to_be_bytes());
        out[17..25].copy_from_slice(&self.apply.0.to_be_bytes());
        out[25..33].copy_from_slice(&self.clock.to_be_bytes());
        out[33] = u8::from(self.reply_requested);
        out
    }
}

/// `h`: the standby's oldest transaction, which a hot standby sends so that the primary keeps
/// the rows its queries read. pitr runs no queries on what it receives: it sends xmin 0
/// ("none") if at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    pub clock: i64,
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

impl HotStandbyFeedback {
    pub const LEN: usize = 1 + 8 + 4 * 4;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = b'h';
        out[1..9].copy_from_slice(&self.clock.to_be_bytes());
        out[9..13].copy_from_slice(&self.xmin.to_be_bytes());
        out[13..17].copy_from_slice(&self.xmin_epoch.to_be_bytes());
        out[17..21].copy_from_slice(&self.catalog_xmin.to_be_bytes());
        out[21..25].copy_from_slice(&self.catalog_xmin_epoch.to_be_bytes());
        out
    }
}

/// A time as PostgreSQL sends it: microseconds since 2000-01-01 UTC. Times outside i64's
/// range saturate (PostgreSQL's own limits are far inside it).
pub fn to_pg_timestamp(time: SystemTime) -> i64 {
    let unix_micros = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map(|m| -m)
            .unwrap_or(i64::MIN),
    };
    unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS)
}

/// A PostgreSQL timestamp as a UTC time; None outside what chrono represents.
pub fn from_pg_timestamp(micros: i64) -> Option<DateTime<Utc>> {
    let unix_micros = micros.checked_add(PG_EPOCH_UNIX_MICROS)?;
    DateTime::from_timestamp_micros(unix_micros)
}

/// The same as a `SystemTime`, for comparing with the local clock.
pub fn pg_timestamp_to_system_time(micros: i64) -> Option<SystemTime> {
    let unix_micros = micros.checked_add(PG_EPOCH_UNIX_MICROS)?;
    let magnitude = Duration::from_micros(unix_micros.unsigned_abs());
    if unix_micros >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog_data(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![b'w'];
        bytes.extend_from_slice(&start.to_be_bytes());
        bytes.extend_from_slice(&end.to_be_bytes());
        bytes.extend_from_slice(&time.to_be_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn decodes_xlog_data() {
        let bytes = xlog_data(0x1_0300_0000, 0x1_0400_0000, 123_456, b"record bytes");
        let message = decode_wal_sender_message(&bytes).unwrap();
        assert_eq!(
            message,
            WalSenderMessage::XLogData {
                wal_start: Lsn(0x1_0300_0000),
                wal_end: Lsn(0x1_0400_0000),
                send_time: 123_456,
                data: b"record bytes",
            }
        );
        assert_eq!(message.data_end(), Some(Lsn(0x1_0300_000C)));
        let empty = xlog_data(5, 5, -1, b"");
        assert!(matches!(
            decode_wal_sender_message(&empty).unwrap(),
            WalSenderMessage::XLogData {
                data: [],
                send_time: -1,
                ..
            }
        ));
        let at_end = xlog_data(u64::MAX, 0, 0, b"x");
        assert_eq!(decode_wal_sender_message(&at_end).unwrap().data_end(), None);
    }

    #[test]
    fn decodes_keepalive() {
        let mut bytes = vec![b'k'];
        bytes.extend_from_slice(&0x2000028u64.to_be_bytes());
        bytes.extend_from_slice(&7i64.to_be_bytes());
        bytes.push(1);
        assert_eq!(
            decode_wal_sender_message(&bytes).unwrap(),
            WalSenderMessage::Keepalive {
                wal_end: Lsn(0x2000028),
                send_time: 7,
                reply_requested: true
            }
        );
        bytes[17] = 0;
        assert!(matches!(
            decode_wal_sender_message(&bytes).unwrap(),
            WalSenderMessage::Keepalive {
                reply_requested: false,
                ..
            }
        ));
        bytes.push(0);
        assert!(decode_wal_sender_message(&bytes).is_err());
    }

    #[test]
    fn rejects_short_empty_and_unknown() {
        assert_eq!(
            decode_wal_sender_message(&[]),
            Err(ProtocolError::EmptyMessage)
        );
        assert_eq!(
            decode_wal_sender_message(&[b'w'; 24]),
            Err(ProtocolError::MessageLength {
                message: "XLogData",
                len: 24,
                need: 25
            })
        );
        assert!(decode_wal_sender_message(b"k").is_err());
        assert_eq!(
            decode_wal_sender_message(b"z123"),
            Err(ProtocolError::UnknownMessage {
                stream: "replication",
                tag: b'z'
            })
        );
    }

    #[test]
    fn encodes_status_update_and_feedback() {
        let update = StandbyStatusUpdate {
            write: Lsn(0x0102_0304_0506_0708),
            flush: Lsn(2),
            apply: Lsn(0),
            clock: -2,
            reply_requested: true,
        };
        let bytes = update.encode();
        assert_eq!(bytes.len(), 34);
        assert_eq!(bytes[0], b'r');
        assert_eq!(&bytes[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&bytes[9..17], &2u64.to_be_bytes());
        assert_eq!(&bytes[17..25], &[0; 8]);
        assert_eq!(
            &bytes[25..33],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE]
        );
        assert_eq!(bytes[33], 1);

        let feedback = HotStandbyFeedback {
            clock: 1,
            xmin: 0x0A0B_0C0D,
            xmin_epoch: 2,
            catalog_xmin: 0,
            catalog_xmin_epoch: 0,
        }
        .encode();
        assert_eq!(feedback.len(), 25);
        assert_eq!(feedback[0], b'h');
        assert_eq!(&feedback[1..9], &1i64.to_be_bytes());
        assert_eq!(&feedback[9..13], &[0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(&feedback[13..17], &2u32.to_be_bytes());
    }

    #[test]
    fn timestamps_count_from_2000() {
        let y2000 = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECONDS as u64);
        assert_eq!(to_pg_timestamp(y2000), 0);
        assert_eq!(to_pg_timestamp(UNIX_EPOCH), -PG_EPOCH_UNIX_MICROS);
        assert_eq!(
            to_pg_timestamp(y2000 + Duration::from_micros(1_500_001)),
            1_500_001
        );
        assert_eq!(
            from_pg_timestamp(0).unwrap().to_rfc3339(),
            "2000-01-01T00:00:00+00:00"
        );
        assert_eq!(
            from_pg_timestamp(818_035_920_123_456).unwrap(),
            "2025-12-03T00:12:00.123456Z"
                .parse::<DateTime<Utc>>()
                .unwrap()
        );
        assert_eq!(from_pg_timestamp(i64::MAX), None);
        assert_eq!(pg_timestamp_to_system_time(0), Some(y2000));
        assert_eq!(
            pg_timestamp_to_system_time(-PG_EPOCH_UNIX_MICROS),
            Some(UNIX_EPOCH)
        );
        assert_eq!(pg_timestamp_to_system_time(i64::MAX), None);
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(to_pg_timestamp(before), -PG_EPOCH_UNIX_MICROS - 1_000_000);
        assert_eq!(
            pg_timestamp_to_system_time(-PG_EPOCH_UNIX_MICROS - 1_000_000),
            Some(before)
        );
    }
}
