//! Which relation blocks a WAL record changes, and which whole files it creates, truncates
//! or removes: what a block-incremental backup needs to know of each record (the rules of
//! PostgreSQL 17's WAL summarizer, for every version from 13). Pure: the bytes of one whole
//! record in, its block references and storage events out.
//!
//! A record's block references are in its headers, whatever its resource manager: every
//! page change PostgreSQL replays from WAL is one of them. What a record does to whole
//! files (create a fork, truncate one, copy or drop a database directory, drop relations
//! at commit or abort) is in its main data, decoded here for the record types that do it.
//! A record flagged `XLR_SPECIAL_REL_UPDATE` that this module does not know is reported as
//! [`StorageEvent::Unknown`]: its range cannot be described by blocks, and a backup must
//! then copy whole files.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::cursor::{Cursor, Truncated};
use super::wal_reader::XactRecord;

/// `SizeOfXLogRecord`.
const RECORD_HEADER: usize = 24;
/// `XLR_MAX_BLOCK_ID`.
const MAX_BLOCK_ID: u8 = 32;
pub(crate) const BLOCK_ID_DATA_SHORT: u8 = 255;
pub(crate) const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
/// PostgreSQL 14 and later.
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_WILL_INIT: u8 = 0x40;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;

/// `XLR_SPECIAL_REL_UPDATE`: the record changes relation files beyond its block references.
const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
const XLR_RMGR_INFO_MASK: u8 = 0xF0;

const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const RM_SMGR_ID: u8 = 2;
const RM_DBASE_ID: u8 = 4;

const XLOG_PARAMETER_CHANGE: u8 = 0x60;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const SMGR_TRUNCATE_HEAP: u32 = 0x0001;
const SMGR_TRUNCATE_VM: u32 = 0x0002;
const SMGR_TRUNCATE_FSM: u32 = 0x0004;

/// `wal_level` values in XLOG_PARAMETER_CHANGE.
const WAL_LEVEL_MINIMAL: i32 = 0;

/// A relation's storage: `RelFileNode` (13–15), `RelFileLocator` (16+).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RelFile {
    /// Tablespace OID (1663 pg_default, 1664 pg_global).
    pub tablespace: u32,
    /// Database OID (0 for shared relations).
    pub database: u32,
    pub relfilenode: u32,
}

/// A relation fork, as `ForkNumber`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fork {
    Main,
    FreeSpaceMap,
    VisibilityMap,
    Init,
}

impl Fork {
    fn from_number(number: u8) -> Option<Self> {
        match number {
            0 => Some(Fork::Main),
            1 => Some(Fork::FreeSpaceMap),
            2 => Some(Fork::VisibilityMap),
            3 => Some(Fork::Init),
            _ => None,
        }
    }
}

/// One block a record changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub file: RelFile,
    pub fork: Fork,
    pub block: u32,
    /// Replay writes the page from scratch (`BKPBLOCK_WILL_INIT`).
    pub will_init: bool,
    /// The record carries a full image of the page.
    pub has_image: bool,
}

/// What a record does to whole files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StorageEvent {
    /// A fork created, empty (`XLOG_SMGR_CREATE`).
    Created { file: RelFile, fork: Fork },
    /// Forks cut to `blocks` blocks (`XLOG_SMGR_TRUNCATE`): the main fork when `main`, the
    /// free space map and visibility map when flagged (their own limits follow from it).
    Truncated {
        file: RelFile,
        blocks: u32,
        main: bool,
        fsm: bool,
        vm: bool,
    },
    /// A database directory copied from another one, file by file, without WAL for its
    /// blocks (13/14's CREATE DATABASE, 15+'s `STRATEGY FILE_COPY`).
    DatabaseCopied {
        database: u32,
        tablespace: u32,
        source_database: u32,
        source_tablespace: u32,
    },
    /// A database directory created empty (15+'s `STRATEGY WAL_LOG`): its files follow as
    /// WAL-logged creations and page images.
    DatabaseCreated { database: u32, tablespace: u32 },
    /// A database's directories removed, in these tablespaces.
    DatabaseDropped {
        database: u32,
        tablespaces: Vec<u32>,
    },
    /// Relations whose files a commit or an abort removes.
    RelationsDropped { files: Vec<RelFile> },
    /// `wal_level` set by a parameter change; minimal means relation files may change
    /// without WAL from here on.
    WalLevel { minimal: bool },
    /// A record that changes relation files in a way this module does not describe.
    Unknown { rmid: u8, info: u8 },
}

/// What one record changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordChanges {
    pub blocks: Vec<BlockRef>,
    pub events: Vec<StorageEvent>,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BlockDecodeError {
    #[error("the record ends inside its block headers")]
    Truncated,
    #[error("block reference {id} out of order or beyond {MAX_BLOCK_ID}")]
    BadBlockId { id: u8 },
    #[error("block reference {id} has fork number {fork}")]
    BadFork { id: u8, fork: u8 },
    #[error("block reference {id} names the previous relation, but there is none")]
    NoPreviousRelation { id: u8 },
    #[error("the record's lengths do not add up ({headers} + {data} + {main} > {total})")]
    BadLengths {
        headers: usize,
        data: usize,
        main: usize,
        total: usize,
    },
    #[error("the main data of a {what} record is too short")]
    ShortMainData { what: &'static str },
    #[error("WAL of unsupported PostgreSQL {0}")]
    UnsupportedVersion(u32),
    #[error("transaction record: {0}")]
    Xact(String),
}

/// A record's bytes ran out: the headers or data they announce are not all there.
impl From<Truncated> for BlockDecodeError {
    fn from(_: Truncated) -> Self {
        BlockDecodeError::Truncated
    }
}

/// A record's block references and its main data (None when `record` holds only the
/// record's first bytes).
pub(crate) struct RecordHeaders<'a> {
    pub blocks: Vec<BlockRef>,
    pub main: Option<&'a [u8]>,
}

/// The bytes of a record that hold all its headers, whatever its block references: 33
/// block headers of at most 27 bytes, the origin, top-level xid and data headers, and
/// `XLogRecord`. A decoder may keep only these of a record whose main data it does not need.
pub const HEADERS_PREFIX: usize = 1024;

/// Whether a record (its first bytes: at least its header) is one whose main data tells
/// storage events, so that it is needed whole. A header too short to tell: yes.
pub fn needs_main_data(record: &[u8]) -> bool {
    match (record.get(17), record.get(16)) {
        (Some(&RM_XLOG_ID), Some(&info)) => info & XLR_RMGR_INFO_MASK == XLOG_PARAMETER_CHANGE,
        (Some(&rmid), Some(_)) => matches!(rmid, RM_XACT_ID | RM_SMGR_ID | RM_DBASE_ID),
        _ => true,
    }
}

/// Reads the headers after `XLogRecord`: block references (their image headers skipped),
/// origin and top-level xid, then the main data's length, which ends the record.
/// `compressed_mask`: the version's `BKPIMAGE` compression bits. `record` may be the
/// record's first bytes only (at least its headers): its length is `xl_tot_len`'s.
pub(crate) fn record_headers(
    record: &[u8],
    compressed_mask: u8,
) -> Result<RecordHeaders<'_>, BlockDecodeError> {
    let total = record
        .first_chunk::<4>()
        .map(|len| u32::from_le_bytes(*len) as usize)
        .ok_or(BlockDecodeError::Truncated)?;
    let mut reader = Cursor::new(record, RECORD_HEADER);
    let mut blocks = Vec::new();
    let mut data_len = 0usize;
    let mut main_len = 0usize;
    let mut previous: Option<RelFile> = None;
    let mut last_id: Option<u8> = None;
    // Headers end where what remains is the data they announced (`DecodeXLogRecord`): a
    // record without main data ends with block data, not with a data header.
    while total.saturating_sub(reader.pos()) > data_len {
        let id = reader.u8()?;
        match id {
            BLOCK_ID_DATA_SHORT => {
                main_len = usize::from(reader.u8()?);
                break;
            }
            BLOCK_ID_DATA_LONG => {
                main_len = reader.u32()? as usize;
                break;
            }
            BLOCK_ID_ORIGIN => {
                reader.take(2)?;
            }
            BLOCK_ID_TOPLEVEL_XID => {
                reader.take(4)?;
            }
            id if id <= MAX_BLOCK_ID => {
                if last_id.is_some_and(|last| id <= last) {
                    return Err(BlockDecodeError::BadBlockId { id });
                }
                last_id = Some(id);
                let fork_flags = reader.u8()?;
                data_len += usize::from(reader.u16()?);
                let fork_number = fork_flags & BKPBLOCK_FORK_MASK;
                let fork = Fork::from_number(fork_number).ok_or(BlockDecodeError::BadFork {
                    id,
                    fork: fork_number,
                })?;
                let has_image = fork_flags & BKPBLOCK_HAS_IMAGE != 0;
                if has_image {
                    let length = reader.u16()?;
                    let _hole_offset = reader.u16()?;
                    let bimg_info = reader.u8()?;
                    data_len += usize::from(length);
                    if bimg_info & BKPIMAGE_HAS_HOLE != 0 && bimg_info & compressed_mask != 0 {
                        let _hole_length = reader.u16()?;
                    }
                }
                let file = if fork_flags & BKPBLOCK_SAME_REL != 0 {
                    previous.ok_or(BlockDecodeError::NoPreviousRelation { id })?
                } else {
                    reader.rel_file()?
                };
                previous = Some(file);
                let block = reader.u32()?;
                blocks.push(BlockRef {
                    file,
                    fork,
                    block,
                    will_init: fork_flags & BKPBLOCK_WILL_INIT != 0,
                    has_image,
                });
            }
            id => return Err(BlockDecodeError::BadBlockId { id }),
        }
    }
    let headers = reader.pos();
    if headers + data_len + main_len > total {
        return Err(BlockDecodeError::BadLengths {
            headers,
            data: data_len,
            main: main_len,
            total,
        });
    }
    Ok(RecordHeaders {
        blocks,
        main: (record.len() == total).then(|| &record[total - main_len..]),
    })
}

/// The block references and storage events of one record (its header included) of
/// PostgreSQL `major`: the whole record, or, where its resource manager's main data is not
/// needed ([`needs_main_data`]), at least its first [`HEADERS_PREFIX`] bytes.
pub fn record_changes(record: &[u8], major: u32) -> Result<RecordChanges, BlockDecodeError> {
    record_changes_knowing(record, major, None)
}

/// [`record_changes`] of a record whose transaction part the WAL decoder already read
/// (`xact`: what it made of a commit or abort), so that it is not read twice.
pub(crate) fn record_changes_knowing(
    record: &[u8],
    major: u32,
    xact: Option<&XactRecord>,
) -> Result<RecordChanges, BlockDecodeError> {
    if record.len() < RECORD_HEADER {
        return Err(BlockDecodeError::Truncated);
    }
    let version =
        super::PgVersion::of_major(major).ok_or(BlockDecodeError::UnsupportedVersion(major))?;
    let headers = record_headers(record, version.compressed_image_mask)?;
    let xid = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
    let (info, rmid) = (record[16], record[17]);
    let mut events = Vec::new();
    match headers.main {
        Some(main) => storage_events(rmid, info, xid, main, major, xact, &mut events)?,
        None if needs_main_data(record) => return Err(BlockDecodeError::Truncated),
        None if info & XLR_SPECIAL_REL_UPDATE != 0 => {
            events.push(StorageEvent::Unknown { rmid, info });
        }
        None => {}
    }
    Ok(RecordChanges {
        blocks: headers.blocks,
        events,
    })
}

/// The storage events of a record, from its main data.
fn storage_events(
    rmid: u8,
    info: u8,
    xid: u32,
    main: &[u8],
    major: u32,
    xact: Option<&XactRecord>,
    events: &mut Vec<StorageEvent>,
) -> Result<(), BlockDecodeError> {
    let short = |what| BlockDecodeError::ShortMainData { what };
    let mut data = Cursor::new(main, 0);
    let kind = info & XLR_RMGR_INFO_MASK;
    match rmid {
        RM_SMGR_ID if kind == XLOG_SMGR_CREATE => {
            let file = data.rel_file().map_err(|_| short("SMGR create"))?;
            let fork_number = data.u32().map_err(|_| short("SMGR create"))?;
            let fork = u8::try_from(fork_number)
                .ok()
                .and_then(Fork::from_number)
                .ok_or(short("SMGR create"))?;
            events.push(StorageEvent::Created { file, fork });
        }
        RM_SMGR_ID if kind == XLOG_SMGR_TRUNCATE => {
            let blocks = data.u32().map_err(|_| short("SMGR truncate"))?;
            let file = data.rel_file().map_err(|_| short("SMGR truncate"))?;
            let flags = data.u32().map_err(|_| short("SMGR truncate"))?;
            events.push(StorageEvent::Truncated {
                file,
                blocks,
                main: flags & SMGR_TRUNCATE_HEAP != 0,
                fsm: flags & SMGR_TRUNCATE_FSM != 0,
                vm: flags & SMGR_TRUNCATE_VM != 0,
            });
        }
        RM_DBASE_ID => events.push(database_event(kind, &mut data, major)?),
        RM_XACT_ID => {
            // Commits and aborts (also of prepared transactions) name the relations whose
            // files go with them.
            let dropped = match xact {
                Some(xact) => xact.dropped.clone(),
                None => super::wal_reader::decode_xact(info, xid, main, major)
                    .map_err(BlockDecodeError::Xact)?
                    .map(|xact| xact.dropped)
                    .unwrap_or_default(),
            };
            if !dropped.is_empty() {
                events.push(StorageEvent::RelationsDropped { files: dropped });
            }
        }
        RM_XLOG_ID if kind == XLOG_PARAMETER_CHANGE => {
            // xl_parameter_change: MaxConnections, max_worker_processes,
            // max_wal_senders (12+), max_prepared_xacts, max_locks_per_xact, wal_level.
            data.take(20).map_err(|_| short("parameter change"))?;
            let wal_level = data.u32().map_err(|_| short("parameter change"))? as i32;
            events.push(StorageEvent::WalLevel {
                minimal: wal_level == WAL_LEVEL_MINIMAL,
            });
        }
        _ if info & XLR_SPECIAL_REL_UPDATE != 0 => {
            events.push(StorageEvent::Unknown { rmid, info });
        }
        _ => {}
    }
    Ok(())
}

/// A database record: 13/14 create (a copy) 0x00 and drop 0x10; 15+ create by copy 0x00,
/// create by WAL 0x10, drop 0x20.
fn database_event(
    kind: u8,
    data: &mut Cursor<'_>,
    major: u32,
) -> Result<StorageEvent, BlockDecodeError> {
    let short = || BlockDecodeError::ShortMainData { what: "database" };
    let copied = |data: &mut Cursor<'_>| -> Result<StorageEvent, BlockDecodeError> {
        Ok(StorageEvent::DatabaseCopied {
            database: data.u32().map_err(|_| short())?,
            tablespace: data.u32().map_err(|_| short())?,
            source_database: data.u32().map_err(|_| short())?,
            source_tablespace: data.u32().map_err(|_| short())?,
        })
    };
    let dropped = |data: &mut Cursor<'_>| -> Result<StorageEvent, BlockDecodeError> {
        let database = data.u32().map_err(|_| short())?;
        let count = data.u32().map_err(|_| short())?;
        let tablespaces = (0..count)
            .map(|_| data.u32().map_err(|_| short()))
            .collect::<Result<_, _>>()?;
        Ok(StorageEvent::DatabaseDropped {
            database,
            tablespaces,
        })
    };
    match (major >= 15, kind) {
        (_, 0x00) => copied(data),
        (false, 0x10) | (true, 0x20) => dropped(data),
        (true, 0x10) => Ok(StorageEvent::DatabaseCreated {
            database: data.u32().map_err(|_| short())?,
            tablespace: data.u32().map_err(|_| short())?,
        }),
        (_, info) => Ok(StorageEvent::Unknown {
            rmid: RM_DBASE_ID,
            info,
        }),
    }
}

#[cfg(test)]
mod tests;
