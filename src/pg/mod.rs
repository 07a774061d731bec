//! PostgreSQL formats: pure code, bytes in and values out, no I/O.
//!
//! Names follow PostgreSQL's own (`XLogFileName`, `IsXLogFileName`…) so that a reader can
//! find the C counterpart in `src/include/access/xlog_internal.h` and `pg_control.h`.

pub mod backup_label;
pub mod backup_manifest;
pub mod basebackup;
pub mod block_map;
pub mod change_set;
pub mod config_files;
pub mod control;
mod cursor;
pub mod guc;
pub mod incremental;
pub mod lsn;
pub mod recovery_target;
pub mod relpath;
pub mod replication;
pub mod tar_stream;
pub mod timeline;
pub mod timestamp;
pub mod version;
pub mod wal_blocks;
pub mod wal_file_check;
pub mod wal_name;
pub mod wal_page;
pub mod wal_reader;
pub mod wal_summary;
pub mod xact_end;

pub use control::ControlFile;
pub use lsn::Lsn;
pub use version::PgVersion;
pub use wal_name::{WalFileKind, WalFileName};
pub use wal_page::WalLongPageHeader;

/// Bytes of WAL handed to a decoder at a time: decoded records queue per piece, so a small
/// piece bounds memory.
pub const FEED_BYTES: usize = 64 << 10;

/// Something that consumes WAL in pieces (a summarizer, a transaction search).
pub trait FeedWal {
    fn feed(&mut self, piece: &[u8]);
}

/// A [`FeedWal`] as a writer, so that the decompressor can stream a segment into it in
/// bounded pieces (decoded records queue per piece).
pub struct WalWriter<T>(pub T);

impl<T: FeedWal> std::io::Write for WalWriter<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for piece in buf.chunks(FEED_BYTES) {
            self.0.feed(piece);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A PostgreSQL file that is not what it should be.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PgFormatError {
    #[error(
        "'{0}' is not a WAL file name (expected a 24-hex-digit segment, TTTTTTTT.history, \
         a .partial segment or a .backup file)"
    )]
    NotAWalFileName(String),
    #[error("invalid LSN '{0}': expected X/X in hexadecimal, e.g. 0/16B3748")]
    InvalidLsn(String),
    #[error("file is {len} bytes, too short for a WAL page header ({need} bytes)")]
    ShortPage { len: usize, need: usize },
    #[error(
        "unknown WAL page magic 0x{0:04X}: not a WAL segment, or written by a PostgreSQL \
         version pitr does not support (it supports {range})",
        range = version::SupportedRange
    )]
    UnknownPageMagic(u16),
    #[error("first page of the segment lacks the long header flag (xlp_info 0x{0:04X})")]
    NotLongHeader(u16),
    #[error("invalid WAL segment size {0} (must be a power of two from 1 MB to 1 GB)")]
    InvalidSegmentSize(u64),
    #[error("control file is {0} bytes, expected at least {1}")]
    ShortControlFile(usize, usize),
    #[error("control file has no float format marker: not a pg_control file")]
    NoFloatFormat,
    #[error(
        "control file checksum mismatch (stored {stored:08X}, computed {computed:08X}): the \
         file is corrupt"
    )]
    ControlFileChecksum { stored: u32, computed: u32 },
    #[error(
        "control file version {0} is not one pitr knows: the cluster runs a PostgreSQL version \
         pitr does not support (it supports {range})",
        range = version::SupportedRange
    )]
    UnsupportedControlVersion(u32),
}

/// PostgreSQL accepts WAL segment sizes that are powers of two from 1 MB to 1 GB.
pub fn is_valid_wal_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}
