//! Where a transaction ended: the commit or abort record of one xid in one segment, found by
//! decoding it (the summaries' xid bounds only say where to look). Pure: bytes in.

use chrono::{DateTime, Utc};

use super::Lsn;
use super::wal_reader::{RecordKind, WalDecoder, XactAction, timestamp_to_utc};
use super::wal_summary::{Carry, segment_decoder};

/// The record that ended a transaction, as recovery meets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XactEnd {
    /// Start of the commit or abort record: `recovery_target_xid` stops after it.
    pub lsn: Lsn,
    /// COMMIT or COMMIT PREPARED; otherwise ABORT or ABORT PREPARED.
    pub committed: bool,
    /// The record's `xact_time`; none when out of range.
    pub time: Option<DateTime<Utc>>,
}

/// The end of transaction `xid` among the records that complete in `segment` (which starts
/// at `segment_start`; `carry_in` is the previous segment's carry, as for its summary).
pub fn find_xact_end(
    segment: &[u8],
    segment_start: Lsn,
    wal_segment_size: u64,
    block_size: usize,
    carry_in: Option<&Carry>,
    xid: u32,
) -> Option<XactEnd> {
    let mut finder = XactEndFinder::new(segment_start, wal_segment_size, block_size, carry_in, xid);
    for piece in segment.chunks(super::FEED_BYTES) {
        finder.feed(piece);
    }
    finder.finish()
}

/// `find_xact_end` for a segment that arrives in pieces (straight from the decompressor).
#[derive(Debug)]
pub struct XactEndFinder {
    decoder: WalDecoder,
    xid: u32,
    found: Option<XactEnd>,
}

impl XactEndFinder {
    pub fn new(
        segment_start: Lsn,
        wal_segment_size: u64,
        block_size: usize,
        carry_in: Option<&Carry>,
        xid: u32,
    ) -> Self {
        XactEndFinder {
            decoder: segment_decoder(segment_start, wal_segment_size, block_size, carry_in),
            xid,
            found: None,
        }
    }

    /// The next bytes of the segment; once the end is found the rest is ignored.
    pub fn feed(&mut self, piece: &[u8]) {
        if self.found.is_some() {
            return;
        }
        self.decoder.feed(piece);
        while let Some(record) = self.decoder.next_record() {
            let RecordKind::Xact(xact) = record.kind else {
                continue;
            };
            let committed = match xact.action {
                XactAction::Commit | XactAction::CommitPrepared => true,
                XactAction::Abort | XactAction::AbortPrepared => false,
                XactAction::Prepare => continue,
            };
            // One end per xid (until the counter wraps): the first is the one recovery meets.
            if xact.xid == self.xid && self.found.is_none() {
                self.found = Some(XactEnd {
                    lsn: record.lsn,
                    committed,
                    time: xact.time.and_then(timestamp_to_utc),
                });
            }
        }
    }

    pub fn finish(self) -> Option<XactEnd> {
        self.found
    }
}

impl super::FeedWal for XactEndFinder {
    fn feed(&mut self, piece: &[u8]) {
        XactEndFinder::feed(self, piece);
    }
}
