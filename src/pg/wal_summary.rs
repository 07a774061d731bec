//! What one WAL segment holds for recovery targets: the summary archive-push will store next
//! to each segment (issue 4), so that the recovery window and a restore's reach are known
//! without reading WAL again. Pure: bytes in, summary out.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use super::Lsn;
use super::block_map::{BlockMap, BlockMapBuilder};
use super::timestamp::optional_micros;
use super::wal_reader::{
    EndOfWal, RecordCheck, RecordKind, WalDecoder, XactAction, is_target_record, timestamp_to_utc,
};

/// Unfinished records larger than this are not carried to the next segment (commit and
/// restore point records are far smaller; full-page images are not carried at all).
pub const MAX_CARRY: usize = 64 << 10;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSummary {
    /// LSN of the first record completed in this segment.
    pub first_record: Option<Lsn>,
    /// End of the last record completed in this segment.
    pub last_record_end: Option<Lsn>,
    /// Commit times (also of prepared transactions), RFC 3339 UTC with microseconds.
    #[serde(with = "optional_micros")]
    pub first_commit_time: Option<DateTime<Utc>>,
    #[serde(with = "optional_micros")]
    pub last_commit_time: Option<DateTime<Utc>>,
    pub commits: u64,
    pub aborts: u64,
    /// Bounds of the transactions whose commit (also COMMIT PREPARED) ends in this segment,
    /// and of those whose abort does. Absent from summaries stored before pitr recorded them.
    #[serde(default)]
    pub commit_xids: Option<XidRange>,
    #[serde(default)]
    pub abort_xids: Option<XidRange>,
    pub restore_points: Vec<RestorePoint>,
    /// Where valid WAL ended inside the segment, if it did before the segment's end, and why.
    pub end_of_wal: Option<String>,
    /// A commit or restore point record that continues in the next segment.
    pub carry: Option<Carry>,
}

impl SegmentSummary {
    /// Whether a commit or abort of `xid` may end in this segment: a filter before decoding,
    /// never a proof. A summary without bounds (stored by an older pitr) may hold any xid
    /// among its commits and aborts.
    pub fn may_end_xid(&self, xid: u32) -> bool {
        let within = |bounds: Option<XidRange>, count: u64| {
            bounds.map_or(count > 0, |range| range.contains(xid))
        };
        within(self.commit_xids, self.commits) || within(self.abort_xids, self.aborts)
    }
}

/// The smallest and largest of some transaction ids, in plain `u32` order. Xids wrap around,
/// so a range is a filter only: it may hold ids that are not there, never miss one that is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XidRange {
    pub min: u32,
    pub max: u32,
}

impl XidRange {
    pub fn new(xid: u32) -> Self {
        XidRange { min: xid, max: xid }
    }

    /// The bounds widened to hold `xid` (a `None` range starts at it).
    pub fn include(range: Option<XidRange>, xid: u32) -> XidRange {
        range.map_or(XidRange::new(xid), |r| r.union(XidRange::new(xid)))
    }

    /// The bounds of both.
    pub fn union(self, other: XidRange) -> XidRange {
        XidRange {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    pub fn contains(&self, xid: u32) -> bool {
        (self.min..=self.max).contains(&xid)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub name: String,
    pub lsn: Lsn,
    /// None when the record's timestamp is out of range.
    #[serde(with = "optional_micros")]
    pub time: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carry {
    pub record_start: Lsn,
    /// The record's bytes so far, without page headers, base64.
    pub bytes: String,
    /// How many bytes of the record were received, where `bytes` holds only its first
    /// ones (its headers: a block map needs no more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
}

/// Summarises `segment`, which starts at `segment_start`; `carry_in` is the previous
/// segment's carry, if any, so that a record straddling the boundary is counted here.
/// Uses `RecordCheck::TargetRecords`: archive-push runs this on every segment.
pub fn summarize_segment(
    segment: &[u8],
    segment_start: Lsn,
    wal_segment_size: u64,
    block_size: usize,
    carry_in: Option<&Carry>,
) -> SegmentSummary {
    let mut summarizer =
        SegmentSummarizer::new(segment_start, wal_segment_size, block_size, carry_in);
    // A bounded piece at a time, so that decoded records never pile up.
    for piece in segment.chunks(super::FEED_BYTES) {
        summarizer.feed(piece);
    }
    summarizer.finish()
}

/// `summarize_segment` for a segment that arrives in pieces (e.g. straight from the
/// decompressor, so that a 1 GB segment is never held whole).
#[derive(Debug)]
pub struct SegmentSummarizer {
    decoder: WalDecoder,
    /// The segment's block map, when asked for.
    map: Option<BlockMapBuilder>,
    summary: SegmentSummary,
    commit_times: Option<(i64, i64)>,
    records: Option<(Lsn, Lsn)>,
}

impl SegmentSummarizer {
    pub fn new(
        segment_start: Lsn,
        wal_segment_size: u64,
        block_size: usize,
        carry_in: Option<&Carry>,
    ) -> Self {
        SegmentSummarizer {
            decoder: segment_decoder(segment_start, wal_segment_size, block_size, carry_in),
            map: None,
            summary: SegmentSummary::default(),
            commit_times: None,
            records: None,
        }
    }

    /// The same summarizer, building the segment's block map as well (one decoding pass);
    /// its carry then holds any record's headers, for the next segment's map.
    pub fn with_block_map(mut self) -> Self {
        self.decoder = self.decoder.with_changes();
        self.map = Some(BlockMapBuilder::new(false));
        self
    }

    /// The next bytes of the segment; keep pieces small (decoded records queue per call).
    pub fn feed(&mut self, piece: &[u8]) {
        self.decoder.feed(piece);
        while let Some(mut record) = self.decoder.next_record() {
            if let (Some(map), Some(changes)) = (self.map.as_mut(), record.changes.take()) {
                match changes {
                    Ok(changes) => map.add(record.lsn, changes),
                    Err(e) => {
                        tracing::debug!("block map: the record at {}: {e}", record.lsn);
                        map.add_unreadable();
                    }
                }
            }
            let first = self.records.map_or(record.lsn, |(first, _)| first);
            self.records = Some((first, record.end));
            match record.kind {
                RecordKind::Xact(xact) => match (xact.action, xact.time) {
                    (XactAction::Commit | XactAction::CommitPrepared, Some(time)) => {
                        self.summary.commits += 1;
                        self.summary.commit_xids =
                            Some(XidRange::include(self.summary.commit_xids, xact.xid));
                        self.commit_times = Some(match self.commit_times {
                            None => (time, time),
                            Some((first, last)) => (first.min(time), last.max(time)),
                        });
                    }
                    (XactAction::Abort | XactAction::AbortPrepared, _) => {
                        self.summary.aborts += 1;
                        self.summary.abort_xids =
                            Some(XidRange::include(self.summary.abort_xids, xact.xid));
                    }
                    _ => {}
                },
                RecordKind::RestorePoint { name, time } => {
                    self.summary.restore_points.push(RestorePoint {
                        name,
                        lsn: record.lsn,
                        time: timestamp_to_utc(time),
                    })
                }
                _ => {}
            }
        }
    }

    pub fn finish(self) -> SegmentSummary {
        self.finish_with_map().0
    }

    /// The summary, and the block map when asked for ([`Self::with_block_map`]).
    pub fn finish_with_map(self) -> (SegmentSummary, Option<BlockMap>) {
        let map = self.map.map(|mut map| {
            if self.decoder.began_mid_record() {
                map.mark_incomplete_start();
            }
            map.finish()
        });
        let mut summary = self.summary;
        if let Some((first, end)) = self.records {
            summary.first_record = Some(first);
            summary.last_record_end = Some(end);
        }
        if let Some((first, last)) = self.commit_times {
            // An out-of-range timestamp (a damaged record that passed its CRC) counts as none.
            summary.first_commit_time = timestamp_to_utc(first);
            summary.last_commit_time = timestamp_to_utc(last);
        }
        summary.end_of_wal = self.decoder.end_of_wal().map(|end| match end {
            EndOfWal::ZeroLength(lsn) => format!("{lsn}: no more WAL"),
            EndOfWal::BadPage { lsn, reason } | EndOfWal::BadRecord { lsn, reason } => {
                format!("{lsn}: {reason}")
            }
        });
        summary.carry = self
            .decoder
            .unfinished_record()
            .filter(|(_, bytes, _)| {
                bytes.len() <= MAX_CARRY && (is_target_record(bytes) || map.is_some())
            })
            .map(|(start, bytes, received)| Carry {
                record_start: start,
                bytes: BASE64.encode(bytes),
                received: (received > bytes.len()).then_some(received as u64),
            });
        (summary, map)
    }
}

/// A decoder of one segment that first completes the previous segment's carried record.
/// `RecordCheck::TargetRecords`: the records it decodes are the ones whose CRC it checks.
pub(crate) fn segment_decoder(
    segment_start: Lsn,
    wal_segment_size: u64,
    block_size: usize,
    carry_in: Option<&Carry>,
) -> WalDecoder {
    // A carry that does not decode (a damaged summary) is dropped: the record it held is
    // then not seen, as if it had been too large to carry.
    let resumed = carry_in.and_then(|carry| {
        let bytes = BASE64.decode(&carry.bytes).ok()?;
        let received = carry.received.map_or(bytes.len(), |r| r as usize);
        Some(WalDecoder::resume(
            segment_start,
            wal_segment_size,
            block_size,
            carry.record_start,
            bytes,
            received,
        ))
    });
    resumed
        .unwrap_or_else(|| WalDecoder::new(segment_start, wal_segment_size, block_size))
        .checking(RecordCheck::TargetRecords)
}

impl super::FeedWal for SegmentSummarizer {
    fn feed(&mut self, piece: &[u8]) {
        SegmentSummarizer::feed(self, piece);
    }
}
