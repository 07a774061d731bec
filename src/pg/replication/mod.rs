//! PostgreSQL's streaming replication protocol (protocol-replication.html): the commands pitr
//! sends on a `replication=true` connection, the result rows they return, and the CopyData
//! sub-messages of `START_REPLICATION` and `BASE_BACKUP`. Pure: strings and bytes in, typed
//! values out; the connection (socket, startup, auth, COPY framing) lives in `server`.
//!
//! The syntax changed in PostgreSQL 15 ([`Syntax`]): `BASE_BACKUP` and
//! `CREATE_REPLICATION_SLOT` took an option list, and `BASE_BACKUP` moved from one COPY per
//! tablespace of raw tar bytes to one COPY of typed messages. Both layouts decode to the same
//! [`BackupStreamEvent`]s through [`BackupStream`].
//!
//! Every decoder is total: any input gives a value or a [`ProtocolError`], never a panic, and
//! no length read from the wire sizes an allocation.

mod backup_stream;
mod commands;
#[cfg(test)]
mod no_panic;
mod results;
mod wal_stream;

pub use backup_stream::{BackupStream, BackupStreamEvent};
pub use commands::{
    BaseBackupRequest, MAX_LABEL_BYTES, MAX_RATE_KB, MIN_RATE_KB, base_backup,
    create_physical_slot, drop_slot, identify_system, quote_identifier, quote_literal,
    read_replication_slot, show_setting, start_replication, timeline_history, validate_slot_name,
};
pub use results::{
    BackupPosition, BackupTablespace, CreatedSlot, IdentifySystem, ReplicationSlot, Row, SlotType,
    TimelineHistory, TimelineSwitch, parse_backup_position, parse_backup_tablespaces,
    parse_created_slot, parse_identify_system, parse_read_replication_slot, parse_timeline_history,
    parse_timeline_switch, parse_wal_segment_size,
};
pub use wal_stream::{
    HotStandbyFeedback, PG_EPOCH_UNIX_SECONDS, StandbyStatusUpdate, WalSenderMessage,
    decode_wal_sender_message, from_pg_timestamp, pg_timestamp_to_system_time, to_pg_timestamp,
};

use std::fmt;

/// The oldest major version pitr's replication client speaks to.
pub const OLDEST_MAJOR: u32 = 13;

/// The two grammars of the replication commands that differ between versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// PostgreSQL 13 and 14: positional keywords (`BASE_BACKUP LABEL 'x' FAST NOWAIT`), one
    /// CopyOut per tablespace of raw tar bytes, then one for the manifest.
    Positional,
    /// PostgreSQL 15 and later: option lists (`BASE_BACKUP (LABEL 'x', CHECKPOINT 'fast')`),
    /// one CopyOut of typed messages (`n`, `d`, `p`, `m`). pitr sends each version the form
    /// that version's own pg_basebackup sends.
    OptionList,
}

impl Syntax {
    /// The syntax of a server of major version `major` (`server_version_num / 10000`).
    pub fn for_major(major: u32) -> Result<Syntax, CommandError> {
        match major {
            m if m < OLDEST_MAJOR => Err(CommandError::UnsupportedVersion(major)),
            13 | 14 => Ok(Syntax::Positional),
            _ => Ok(Syntax::OptionList),
        }
    }
}

impl fmt::Display for Syntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Syntax::Positional => "PostgreSQL 13/14",
            Syntax::OptionList => "PostgreSQL 15 or later",
        })
    }
}

/// A replication command pitr refuses to build.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error(
        "PostgreSQL {0} is too old for pitr's replication client (it needs 13 or later): \
         upgrade the server or back up on the database host"
    )]
    UnsupportedVersion(u32),
    #[error(
        "invalid replication slot name '{0}': use 1 to 63 characters of lower-case letters, \
         digits and underscores"
    )]
    InvalidSlotName(String),
    #[error(
        "invalid backup label: {0}; use one line of at most {max} bytes without NUL",
        max = MAX_LABEL_BYTES
    )]
    InvalidLabel(&'static str),
    #[error(
        "--max-rate {0} kB/s is out of range: PostgreSQL accepts {min} to {max} kB/s",
        min = MIN_RATE_KB,
        max = MAX_RATE_KB
    )]
    MaxRateOutOfRange(u32),
    #[error("timeline {0} does not exist: PostgreSQL's timelines start at 1")]
    InvalidTimeline(u32),
    #[error("{command} needs PostgreSQL 15 or later; the server runs {syntax}")]
    NeedsOptionList {
        command: &'static str,
        syntax: Syntax,
    },
    #[error("invalid setting name '{0}': use letters, digits, underscores and dots")]
    InvalidSettingName(String),
}

/// What a server sent that is not what the replication protocol says it sends.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("{command} returned {rows} rows where one was expected: is this a PostgreSQL server?")]
    RowCount { command: &'static str, rows: usize },
    #[error(
        "{command} returned {columns} columns where at least {expected} were expected: is this \
         a PostgreSQL server?"
    )]
    ColumnCount {
        command: &'static str,
        columns: usize,
        expected: usize,
    },
    #[error("{command} returned NULL for {column}, which PostgreSQL always sets")]
    NullColumn {
        command: &'static str,
        column: &'static str,
    },
    #[error("{command} returned '{value}' for {column}: {what}")]
    BadColumn {
        command: &'static str,
        column: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("BASE_BACKUP listed {0}")]
    BadTablespaceList(&'static str),
    #[error("empty CopyData message from the server")]
    EmptyMessage,
    #[error("unknown {stream} message type 0x{tag:02X} from the server")]
    UnknownMessage { stream: &'static str, tag: u8 },
    #[error("{message} message of {len} bytes where {need} were expected")]
    MessageLength {
        message: &'static str,
        len: usize,
        need: usize,
    },
    #[error("new-archive message is malformed: {0}")]
    BadArchiveMessage(&'static str),
    #[error("progress message reports {0} bytes done, a negative count")]
    NegativeProgress(i64),
    #[error("base backup stream out of order: {0}")]
    BackupStreamOrder(&'static str),
    #[error("base backup stream ended early: {0}")]
    BackupStreamIncomplete(String),
}
