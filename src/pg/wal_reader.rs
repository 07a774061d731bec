//! A WAL decoder: pages in, records out, no I/O (xlogreader.c's job, for what pitr needs).
//!
//! Feed it consecutive WAL bytes starting at a page boundary; it checks every page header,
//! reassembles records that span pages and segments, verifies each record's CRC-32C, and
//! decodes the records that recovery targets compare against (transaction commit and abort,
//! also of prepared transactions, and restore points). It stops at the end of valid WAL: a
//! zero length, a bad CRC, or a page that belongs to an older use of a recycled segment.

use std::collections::VecDeque;

use super::Lsn;
use super::cursor::Cursor;
use super::wal_blocks::{
    BlockDecodeError, HEADERS_PREFIX, RecordChanges, needs_main_data, record_changes_knowing,
};
use super::wal_page::{SIZE_OF_XLOG_LONG_PHD, XLP_LONG_HEADER, major_version_of_page_magic};

/// `SizeOfXLogShortPHD`.
const SIZE_OF_XLOG_SHORT_PHD: usize = 24;
/// `SizeOfXLogRecord`.
const SIZE_OF_XLOG_RECORD: usize = 24;
/// `XLogRecordMaxSize`: anything longer is garbage.
const XLOG_RECORD_MAX_SIZE: u32 = 1020 * 1024 * 1024;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;

const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLR_INFO_MASK: u8 = 0x0F;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL `TimestampTz` as UTC time.
pub fn timestamp_to_utc(micros_since_2000: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_micros(
        micros_since_2000.checked_add(POSTGRES_EPOCH_UNIX_MICROS)?,
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    pub lsn: Lsn,
    /// First byte after the record (before alignment padding).
    pub end: Lsn,
    pub xid: u32,
    pub rmid: u8,
    pub info: u8,
    pub kind: RecordKind,
    /// The blocks and files it changes, when the decoder was asked for them
    /// ([`WalDecoder::with_changes`]); an error (a record PostgreSQL accepts but this
    /// module misreads) never stops decoding: what depends on it decides.
    pub changes: Option<Result<RecordChanges, BlockDecodeError>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Other,
    Switch,
    Xact(XactRecord),
    RestorePoint { name: String, time: i64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XactAction {
    Commit,
    Abort,
    Prepare,
    CommitPrepared,
    AbortPrepared,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XactRecord {
    pub action: XactAction,
    /// The relations whose files a commit or an abort removes.
    pub dropped: Vec<super::wal_blocks::RelFile>,
    /// The transaction the record ends: for prepared transactions the prepared one.
    pub xid: u32,
    /// `xact_time` (PostgreSQL timestamp: microseconds since 2000-01-01 UTC); none for PREPARE.
    pub time: Option<i64>,
}

/// How much of each record the decoder verifies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordCheck {
    /// Every record's CRC-32C, as PostgreSQL's own reader does.
    #[default]
    Full,
    /// The CRC-32C of transaction and XLOG records only (what recovery targets compare
    /// against); other records are checked by length and prev-link alone and never copied.
    /// About three times faster: what archive-push can afford on every segment.
    TargetRecords,
}

/// A record being reassembled across pages.
#[derive(Debug)]
struct Partial {
    start: Lsn,
    /// Bytes received so far, page headers excluded.
    received: usize,
    /// The record's bytes so far; only its header when its content is not needed.
    bytes: Vec<u8>,
}

/// Why decoding stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndOfWal {
    /// A record start holds zeros: nothing was written past here.
    ZeroLength(Lsn),
    /// A page belongs to an earlier use of a recycled segment, or is not WAL.
    BadPage { lsn: Lsn, reason: String },
    /// A record whose length or CRC is wrong.
    BadRecord { lsn: Lsn, reason: String },
}

/// Incremental decoder; see the module documentation.
#[derive(Debug)]
pub struct WalDecoder {
    wal_segment_size: u64,
    block_size: usize,
    check: RecordCheck,
    /// Decode each record's block references and storage events.
    changes: bool,
    magic: Option<u16>,
    pg_version: u32,
    /// LSN of the next page to decode, and the bytes of it received so far.
    page_lsn: Lsn,
    page: Vec<u8>,
    /// Where the next record starts; `None` while skipping a continuation we never saw begin.
    next_record: Option<Lsn>,
    /// Continuation bytes to skip at the very start (we began mid-record).
    skip_continuation: bool,
    /// There were such bytes.
    began_mid_record: bool,
    partial: Option<Partial>,
    /// Start of the last record decoded: the next one's `xl_prev` must point there.
    previous_record: Option<Lsn>,
    records: VecDeque<WalRecord>,
    end: Option<EndOfWal>,
}

impl WalDecoder {
    /// A decoder for WAL starting at `start`, which must be a page boundary.
    pub fn new(start: Lsn, wal_segment_size: u64, block_size: usize) -> Self {
        debug_assert_eq!(start.0 % block_size as u64, 0);
        WalDecoder {
            wal_segment_size,
            block_size,
            check: RecordCheck::Full,
            changes: false,
            magic: None,
            pg_version: 0,
            page_lsn: start,
            page: Vec::with_capacity(block_size),
            next_record: None,
            skip_continuation: true,
            began_mid_record: false,
            partial: None,
            previous_record: None,
            records: VecDeque::new(),
            end: None,
        }
    }

    /// The same decoder, verifying records as `check` says.
    pub fn checking(mut self, check: RecordCheck) -> Self {
        self.check = check;
        self
    }

    /// The same decoder, telling each record's block references and storage events
    /// ([`WalRecord::changes`]); of a record spanning pages it then keeps the first bytes
    /// (its headers), and all of those whose main data tells storage events.
    pub fn with_changes(mut self) -> Self {
        self.changes = true;
        self
    }

    /// A decoder that goes on with a record begun before `next_page`, whose bytes so far
    /// (without page headers) are `record_bytes`: how a segment's unfinished last record is
    /// completed from the next segment.
    pub fn resume(
        next_page: Lsn,
        wal_segment_size: u64,
        block_size: usize,
        record_start: Lsn,
        record_bytes: Vec<u8>,
        received: usize,
    ) -> Self {
        let mut decoder = WalDecoder::new(next_page, wal_segment_size, block_size);
        decoder.skip_continuation = false;
        decoder.partial = Some(Partial {
            start: record_start,
            received: received.max(record_bytes.len()),
            bytes: record_bytes,
        });
        decoder
    }

    /// The record still waiting for its continuation: its start, its bytes so far and how
    /// many were received (more than the bytes when, [`Self::with_changes`], only its
    /// headers are needed); none when only its header was kept (`RecordCheck::TargetRecords`
    /// and not a target record).
    pub fn unfinished_record(&self) -> Option<(Lsn, &[u8], usize)> {
        self.partial
            .as_ref()
            .filter(|partial| {
                partial.bytes.len() == partial.received
                    || (self.changes && partial.bytes.len() >= HEADERS_PREFIX)
            })
            .map(|partial| (partial.start, partial.bytes.as_slice(), partial.received))
    }

    /// Decoding began inside a record it never saw begin (a segment decoded alone whose
    /// first page continues the previous segment's last record): that record is not decoded.
    pub fn began_mid_record(&self) -> bool {
        self.began_mid_record
    }

    /// Decodes as much of `bytes` as completes pages; keeps the rest for the next call.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.end.is_none() {
            if self.page.is_empty() && bytes.len() >= self.block_size {
                // Whole pages straight from the caller's buffer: no copy.
                let (page, rest) = bytes.split_at(self.block_size);
                self.decode_page(page);
                self.page_lsn = self.page_lsn.plus(self.block_size);
                bytes = rest;
                continue;
            }
            let take = (self.block_size - self.page.len()).min(bytes.len());
            self.page.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.page.len() == self.block_size {
                let page = std::mem::take(&mut self.page);
                self.decode_page(&page);
                self.page = page;
                self.page.clear();
                self.page_lsn = self.page_lsn.plus(self.block_size);
            }
        }
    }

    pub fn next_record(&mut self) -> Option<WalRecord> {
        self.records.pop_front()
    }

    /// Set once decoding has stopped at the end of valid WAL.
    pub fn end_of_wal(&self) -> Option<&EndOfWal> {
        self.end.as_ref()
    }

    /// The major version the pages' magic names (0 before the first page).
    pub fn pg_version(&self) -> u32 {
        self.pg_version
    }

    fn stop(&mut self, end: EndOfWal) {
        self.end = Some(end);
        self.partial = None;
    }

    fn decode_page(&mut self, page: &[u8]) {
        let lsn = self.page_lsn;
        let page_end = lsn.plus(self.block_size).0;
        if self.partial.is_none() && self.next_record.is_some_and(|next| next.0 >= page_end) {
            return; // padding after XLOG_SWITCH: nothing to read until the next record
        }
        let bad_page = |reason: String| EndOfWal::BadPage { lsn, reason };
        let magic = u16::from_le_bytes([page[0], page[1]]);
        let info = u16::from_le_bytes([page[2], page[3]]);
        let page_address = u64::from_le_bytes(page[8..16].try_into().unwrap());
        let rem_len = u32::from_le_bytes(page[16..20].try_into().unwrap()) as usize;
        match self.magic {
            None => match major_version_of_page_magic(magic) {
                Some(version) => {
                    self.magic = Some(magic);
                    self.pg_version = version;
                }
                None => return self.stop(bad_page(format!("unknown page magic {magic:04X}"))),
            },
            Some(expected) if expected != magic => {
                return self.stop(bad_page(format!("page magic {magic:04X}")));
            }
            Some(_) => {}
        }
        if page_address != lsn.0 {
            return self.stop(bad_page(format!(
                "page address {} (a recycled segment's old content)",
                Lsn(page_address)
            )));
        }
        let header_len = if info & XLP_LONG_HEADER != 0 {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        };
        if (lsn.0 % self.wal_segment_size == 0) != (info & XLP_LONG_HEADER != 0) {
            return self.stop(bad_page("long header flag out of place".into()));
        }
        let mut offset = header_len;
        let continued = info & XLP_FIRST_IS_CONTRECORD != 0;

        if self.skip_continuation {
            // We started here: a continuation belongs to a record we cannot decode.
            self.skip_continuation = false;
            if continued {
                self.began_mid_record = true;
                let on_page = rem_len.min(self.block_size - offset);
                if rem_len > on_page {
                    self.skip_continuation = true; // goes on to the next page
                    return;
                }
                offset = maxalign(offset + on_page);
            }
            self.next_record = Some(lsn.plus(offset));
        } else if let Some(mut partial) = self.partial.take() {
            let total = record_total_len(&partial.bytes);
            let missing = total.map_or(usize::MAX, |t| t - partial.received);
            if !continued || total.is_some_and(|_| rem_len != missing) {
                return self.stop(EndOfWal::BadRecord {
                    lsn: partial.start,
                    reason: format!("continuation missing at {lsn} (rem_len {rem_len})"),
                });
            }
            let on_page = rem_len.min(self.block_size - offset);
            self.append(&mut partial, &page[offset..offset + on_page]);
            offset += on_page;
            // The end is where the last byte lies: page headers in between count in LSNs.
            let end = lsn.plus(offset);
            if !self.finish_record(partial, end) {
                return; // continues on the next page, or decoding stopped
            }
        } else if continued {
            // A continuation we did not expect: WAL from another history.
            return self.stop(bad_page("unexpected continuation record".into()));
        }
        if self.next_record == Some(lsn) {
            // A record "at" a page boundary starts after the page header.
            self.next_record = Some(lsn.plus(header_len));
        }
        self.decode_records_on_page(page, lsn);
    }

    /// Decodes the records that start on this page, from `self.next_record`.
    fn decode_records_on_page(&mut self, page: &[u8], page_lsn: Lsn) {
        while let Some(start) = self.next_record {
            if start.0 >= page_lsn.plus(self.block_size).0 {
                return; // starts on a later page
            }
            // Records are 8-aligned, so xl_tot_len is always on the page the record starts
            // on; where the arithmetic says otherwise (at the end of the LSN space), WAL ends.
            let length_field = start
                .0
                .checked_sub(page_lsn.0)
                .and_then(|at| page.get(usize::try_from(at).ok()?..))
                .and_then(|available| Some((available, record_total_len(available)?)));
            let Some((available, total)) = length_field else {
                return self.stop(EndOfWal::BadRecord {
                    lsn: start,
                    reason: "record length field outside its page".into(),
                });
            };
            self.next_record = None;
            if !self.check_length(start, total) {
                return;
            }
            if total > available.len() {
                let mut partial = Partial {
                    start,
                    received: 0,
                    bytes: Vec::new(),
                };
                self.append(&mut partial, available);
                self.partial = Some(partial);
                return;
            }
            if !self.complete_record(start, &available[..total], start.plus(total)) {
                return;
            }
        }
    }

    /// Adds the next piece of a record spanning pages; keeps only the header of a record whose
    /// content is not needed.
    fn append(&self, partial: &mut Partial, piece: &[u8]) {
        let contiguous = partial.bytes.len() == partial.received;
        partial.received += piece.len();
        if self.check == RecordCheck::Full {
            return partial.bytes.extend_from_slice(piece);
        }
        if !contiguous {
            return;
        }
        // The header first: it tells whether the rest is needed.
        let header_part = SIZE_OF_XLOG_RECORD
            .saturating_sub(partial.bytes.len())
            .min(piece.len());
        partial.bytes.extend_from_slice(&piece[..header_part]);
        let rest = &piece[header_part..];
        let keep = if is_target_record(&partial.bytes)
            || (self.changes && needs_main_data(&partial.bytes))
        {
            rest.len()
        } else if self.changes {
            // Block references are in the first bytes.
            HEADERS_PREFIX
                .saturating_sub(partial.bytes.len())
                .min(rest.len())
        } else {
            0
        };
        partial.bytes.extend_from_slice(&rest[..keep]);
    }

    /// Decodes a record spanning pages once its last piece has arrived at `end`.
    fn finish_record(&mut self, partial: Partial, end: Lsn) -> bool {
        let Some(total) = record_total_len(&partial.bytes) else {
            self.stop(EndOfWal::BadRecord {
                lsn: partial.start,
                reason: "record continued without its length field".into(),
            });
            return false;
        };
        if partial.received < total {
            self.partial = Some(partial);
            return false;
        }
        self.complete_record(partial.start, &partial.bytes, end)
    }

    /// False (and decoding stops) for the zero length that ends WAL or an impossible length.
    fn check_length(&mut self, start: Lsn, total: usize) -> bool {
        if total == 0 {
            self.stop(EndOfWal::ZeroLength(start));
            return false;
        }
        if total < SIZE_OF_XLOG_RECORD || total as u64 > u64::from(XLOG_RECORD_MAX_SIZE) {
            self.stop(EndOfWal::BadRecord {
                lsn: start,
                reason: format!("invalid record length {total}"),
            });
            return false;
        }
        true
    }

    /// Decodes a record ending at `end` (all its bytes, or only its header when its content
    /// is not needed); sets where the next one starts. False if decoding stopped.
    fn complete_record(&mut self, start: Lsn, data: &[u8], end: Lsn) -> bool {
        let prev = Lsn(u64::from_le_bytes(data[8..16].try_into().unwrap()));
        if self
            .previous_record
            .is_some_and(|expected| expected != prev)
        {
            self.stop(EndOfWal::BadRecord {
                lsn: start,
                reason: format!("record with incorrect prev-link {prev}"),
            });
            return false;
        }
        let check_crc = self.check == RecordCheck::Full || is_target_record(data);
        let decoded =
            decode_record(data, start, end, self.pg_version, check_crc).map(|mut record| {
                if self.changes {
                    let xact = match &record.kind {
                        RecordKind::Xact(xact) => Some(xact),
                        _ => None,
                    };
                    record.changes = Some(record_changes_knowing(data, self.pg_version, xact));
                }
                record
            });
        match decoded {
            Ok(record) => {
                let next = if record.kind == RecordKind::Switch {
                    // The rest of the segment is padding.
                    Lsn(end
                        .0
                        .div_ceil(self.wal_segment_size)
                        .saturating_mul(self.wal_segment_size))
                } else {
                    Lsn(end.0.checked_next_multiple_of(8).unwrap_or(u64::MAX))
                };
                self.records.push_back(record);
                self.next_record = Some(next);
                self.previous_record = Some(start);
                true
            }
            Err(reason) => {
                self.stop(EndOfWal::BadRecord { lsn: start, reason });
                false
            }
        }
    }
}

/// Transaction records, restore points and switches, or a header too short to tell: the
/// records whose content the decoder needs (not the full-page images XLOG also logs).
pub(crate) fn is_target_record(record: &[u8]) -> bool {
    const INFO_OFFSET: usize = 16;
    const RMID_OFFSET: usize = 17;
    if record.len() <= RMID_OFFSET {
        return true;
    }
    match record[RMID_OFFSET] {
        RM_XACT_ID => true,
        RM_XLOG_ID => matches!(
            record[INFO_OFFSET] & !XLR_INFO_MASK,
            XLOG_SWITCH | XLOG_RESTORE_POINT
        ),
        _ => false,
    }
}

fn maxalign(n: usize) -> usize {
    n.saturating_add(7) & !7
}

fn record_total_len(data: &[u8]) -> Option<usize> {
    data.first_chunk::<4>()
        .map(|len| u32::from_le_bytes(*len) as usize)
}

/// Verifies a complete record's CRC (if asked) and decodes what pitr needs from it.
fn decode_record(
    data: &[u8],
    lsn: Lsn,
    end: Lsn,
    pg_version: u32,
    check_crc: bool,
) -> Result<WalRecord, String> {
    if check_crc {
        let stored_crc = u32::from_le_bytes(data[20..24].try_into().unwrap());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&data[SIZE_OF_XLOG_RECORD..]), &data[..20]);
        if crc != stored_crc {
            return Err(format!(
                "record CRC mismatch (stored {stored_crc:08X}, computed {crc:08X})"
            ));
        }
    }
    let xid = u32::from_le_bytes(data[4..8].try_into().unwrap());
    let info = data[16];
    let rmid = data[17];
    let kind = match (rmid, info & !XLR_INFO_MASK) {
        (RM_XLOG_ID, XLOG_SWITCH) => RecordKind::Switch,
        (RM_XLOG_ID, XLOG_RESTORE_POINT) => {
            let main = main_data(data, pg_version)?;
            if main.len() < 8 {
                return Err("restore point record too short".into());
            }
            let time = i64::from_le_bytes(main[0..8].try_into().unwrap());
            let name = &main[8..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            RecordKind::RestorePoint {
                name: String::from_utf8_lossy(name).into_owned(),
                time,
            }
        }
        (RM_XACT_ID, _) => {
            match decode_xact(info, xid, main_data(data, pg_version)?, pg_version)? {
                Some(xact) => RecordKind::Xact(xact),
                None => RecordKind::Other,
            }
        }
        _ => RecordKind::Other,
    };
    Ok(WalRecord {
        lsn,
        end,
        xid,
        rmid,
        info,
        kind,
        changes: None,
    })
}

/// The record's main data: the last bytes, after block images and block data
/// (`DecodeXLogRecord`).
fn main_data(data: &[u8], pg_version: u32) -> Result<&[u8], String> {
    let version = super::PgVersion::of_major(pg_version)
        .ok_or_else(|| format!("WAL of unsupported PostgreSQL {pg_version}"))?;
    super::wal_blocks::record_headers(data, version.compressed_image_mask)
        .map_err(|e| e.to_string())?
        .main
        .ok_or_else(|| "record truncated".to_owned())
}

// xl_xact_xinfo flags (xact.h).
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

/// Decodes a transaction record's main data (`ParseCommitRecord`, `ParseAbortRecord`).
pub(crate) fn decode_xact(
    info: u8,
    xid: u32,
    main: &[u8],
    pg_version: u32,
) -> Result<Option<XactRecord>, String> {
    let action = match info & XLOG_XACT_OPMASK {
        0x00 => XactAction::Commit,
        0x10 => XactAction::Prepare,
        0x20 => XactAction::Abort,
        0x30 => XactAction::CommitPrepared,
        0x40 => XactAction::AbortPrepared,
        _ => return Ok(None), // assignment, invalidations
    };
    if action == XactAction::Prepare {
        return Ok(Some(XactRecord {
            action,
            dropped: Vec::new(),
            xid,
            time: None,
        }));
    }
    let mut cursor = Cursor::new(main, 0);
    let time = cursor.i64()?;
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        cursor.u32()?
    } else {
        0
    };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        cursor.take(8)?;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        cursor.skip_array(4)?;
    }
    let mut dropped = Vec::new();
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let count = cursor.u32()?;
        for _ in 0..count {
            dropped.push(cursor.rel_file()?);
        }
    }
    let dropped_stats =
        super::PgVersion::of_major(pg_version).is_some_and(|v| v.xact_dropped_stats);
    if dropped_stats && xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        cursor.skip_array(12)?; // xl_xact_stats_item: kind, dboid, objoid
    }
    let commit = matches!(action, XactAction::Commit | XactAction::CommitPrepared);
    if commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        cursor.skip_array(16)?; // SharedInvalidationMessage
    }
    let mut xid = xid;
    if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        xid = cursor.u32()?;
    }
    Ok(Some(XactRecord {
        action,
        dropped,
        xid,
        time: Some(time),
    }))
}

#[cfg(test)]
pub(crate) mod tests;
