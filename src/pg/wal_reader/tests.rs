//! The decoder on WAL laid out as PostgreSQL writes it; the builders (`commit`, `write_wal`…)
//! serve other modules' tests too.

use super::*;
use crate::pg::wal_blocks::{BLOCK_ID_DATA_LONG, BLOCK_ID_DATA_SHORT};

pub(crate) const BLOCK: usize = 8192;
pub(crate) const SEGMENT: u64 = 1 << 20;
const MAGIC_15: u16 = 0xD110;

/// A record with main data only, CRC filled in.
fn record(rmid: u8, info: u8, xid: u32, main: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    if main.len() < 256 {
        body.push(BLOCK_ID_DATA_SHORT);
        body.push(main.len() as u8);
    } else {
        body.push(BLOCK_ID_DATA_LONG);
        body.extend_from_slice(&(main.len() as u32).to_le_bytes());
    }
    body.extend_from_slice(main);
    let total = (SIZE_OF_XLOG_RECORD + body.len()) as u32;
    let mut rec = Vec::new();
    rec.extend_from_slice(&total.to_le_bytes());
    rec.extend_from_slice(&xid.to_le_bytes());
    rec.extend_from_slice(&0u64.to_le_bytes()); // xl_prev: set by write_wal
    rec.extend_from_slice(&[info, rmid, 0, 0]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&body), &rec[..20]);
    rec.extend_from_slice(&crc.to_le_bytes());
    rec.extend_from_slice(&body);
    rec
}

pub(crate) fn commit(xid: u32, time: i64, subxacts: u32) -> Vec<u8> {
    let mut main = time.to_le_bytes().to_vec();
    main.extend_from_slice(&XACT_XINFO_HAS_SUBXACTS.to_le_bytes());
    main.extend_from_slice(&subxacts.to_le_bytes());
    for i in 0..subxacts {
        main.extend_from_slice(&(xid + 1 + i).to_le_bytes());
    }
    record(RM_XACT_ID, XLOG_XACT_HAS_INFO, xid, &main)
}

fn restore_point(name: &str, time: i64) -> Vec<u8> {
    let mut main = time.to_le_bytes().to_vec();
    let mut field = [0u8; 64];
    field[..name.len()].copy_from_slice(name.as_bytes());
    main.extend_from_slice(&field);
    record(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &main)
}

/// The record pointing back at the one before it, its CRC updated.
fn with_prev_link(rec: &[u8], prev: u64) -> Vec<u8> {
    let mut rec = rec.to_vec();
    rec[8..16].copy_from_slice(&prev.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[SIZE_OF_XLOG_RECORD..]), &rec[..20]);
    rec[20..24].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// Lays records out in pages from `start` as PostgreSQL writes them, each pointing back at
/// the one before.
pub(crate) fn write_wal(start: u64, records: &[Vec<u8>], pages: usize) -> Vec<u8> {
    write_wal_after(0, start, records, pages)
}

/// `write_wal` for WAL that goes on from a record at `prev`.
fn write_wal_after(prev: u64, start: u64, records: &[Vec<u8>], pages: usize) -> Vec<u8> {
    let mut wal = vec![0u8; pages * BLOCK];
    let header_len = |lsn: u64| {
        if lsn % SEGMENT == 0 {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        }
    };
    let write_header = |wal: &mut Vec<u8>, page: usize, rem_len: usize| {
        let lsn = start + (page * BLOCK) as u64;
        let at = page * BLOCK;
        let mut info = 0u16;
        if lsn % SEGMENT == 0 {
            info |= XLP_LONG_HEADER;
        }
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        wal[at..at + 2].copy_from_slice(&MAGIC_15.to_le_bytes());
        wal[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
        wal[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
        wal[at + 8..at + 16].copy_from_slice(&lsn.to_le_bytes());
        wal[at + 16..at + 20].copy_from_slice(&(rem_len as u32).to_le_bytes());
        if info & XLP_LONG_HEADER != 0 {
            // The system identifier of `RepositoryIdentity::for_tests`.
            wal[at + 24..at + 32].copy_from_slice(&1u64.to_le_bytes());
            wal[at + 32..at + 36].copy_from_slice(&(SEGMENT as u32).to_le_bytes());
            wal[at + 36..at + 40].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        }
    };
    for page in 0..pages {
        write_header(&mut wal, page, 0);
    }
    let mut pos = header_len(start); // offset in `wal`
    let mut prev = prev;
    for rec in records {
        if pos % BLOCK == 0 {
            pos += header_len(start + pos as u64);
        }
        let rec = &with_prev_link(rec, prev);
        prev = start + pos as u64;
        let mut written = 0;
        while written < rec.len() {
            if pos % BLOCK == 0 {
                let page = pos / BLOCK;
                write_header(&mut wal, page, rec.len() - written);
                pos += header_len(start + pos as u64);
            }
            let n = (BLOCK - pos % BLOCK).min(rec.len() - written);
            wal[pos..pos + n].copy_from_slice(&rec[written..written + n]);
            written += n;
            pos += n;
        }
        pos = maxalign(pos);
    }
    wal
}

fn decode_all(start: u64, wal: &[u8], feed_size: usize) -> (Vec<WalRecord>, Option<EndOfWal>) {
    let mut decoder = WalDecoder::new(Lsn(start), SEGMENT, BLOCK);
    let mut records = Vec::new();
    for piece in wal.chunks(feed_size) {
        decoder.feed(piece);
        while let Some(record) = decoder.next_record() {
            records.push(record);
        }
    }
    (records, decoder.end_of_wal().cloned())
}

#[test]
fn decodes_commits_and_restore_points_across_pages_and_segments() {
    let records = vec![
        commit(700, 1_000, 0),
        restore_point("before_migration", 2_000),
        commit(701, 3_000, 5000), // 20 kB: spans pages and the segment boundary
        commit(705, 4_000, 0),
    ];
    // Start near the end of a segment so that the big record crosses into the next one.
    let start = SEGMENT - 2 * BLOCK as u64;
    let wal = write_wal(start, &records, 6);
    for feed_size in [BLOCK, 1000, 7 * BLOCK] {
        let (decoded, end) = decode_all(start, &wal, feed_size);
        let kinds: Vec<_> = decoded.iter().map(|r| r.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                RecordKind::Xact(XactRecord {
                    dropped: Vec::new(),
                    action: XactAction::Commit,
                    xid: 700,
                    time: Some(1_000)
                }),
                RecordKind::RestorePoint {
                    name: "before_migration".into(),
                    time: 2_000
                },
                RecordKind::Xact(XactRecord {
                    dropped: Vec::new(),
                    action: XactAction::Commit,
                    xid: 701,
                    time: Some(3_000)
                }),
                RecordKind::Xact(XactRecord {
                    dropped: Vec::new(),
                    action: XactAction::Commit,
                    xid: 705,
                    time: Some(4_000)
                }),
            ],
            "feeding {feed_size} bytes at a time"
        );
        assert!(
            decoded[2].end.0 > SEGMENT,
            "the big record should cross the segment boundary"
        );
        assert!(matches!(end, Some(EndOfWal::ZeroLength(_))), "{end:?}");
    }
}

#[test]
fn starting_mid_record_skips_the_continuation() {
    let records = vec![commit(701, 3_000, 3000), commit(705, 4_000, 0)];
    let wal = write_wal(0, &records, 4);
    // Begin at the second page, inside the big record.
    let (decoded, _) = decode_all(BLOCK as u64, &wal[BLOCK..], BLOCK);
    assert_eq!(decoded.len(), 1);
    assert_eq!(decoded[0].xid, 705);
}

#[test]
fn a_corrupt_record_ends_the_wal_there() {
    let records = vec![
        commit(700, 1_000, 0),
        commit(701, 2_000, 0),
        commit(702, 3_000, 0),
    ];
    let mut wal = write_wal(0, &records, 1);
    let second = maxalign(SIZE_OF_XLOG_LONG_PHD + records[0].len());
    wal[second + 30] ^= 1;
    let (decoded, end) = decode_all(0, &wal, BLOCK);
    assert_eq!(decoded.len(), 1);
    assert!(matches!(end, Some(EndOfWal::BadRecord { lsn, .. }) if lsn == Lsn(second as u64)));
}

#[test]
fn a_page_from_an_older_use_ends_the_wal() {
    // The record continues on the second page, which belongs to another part of the WAL.
    let records = vec![commit(700, 1_000, 0), commit(701, 3_000, 3000)];
    let mut wal = write_wal(0, &records, 2);
    wal[BLOCK + 8..BLOCK + 16].copy_from_slice(&(5 * SEGMENT).to_le_bytes());
    let (decoded, end) = decode_all(0, &wal, BLOCK);
    assert_eq!(decoded.len(), 1);
    assert!(matches!(end, Some(EndOfWal::BadPage { .. })), "{end:?}");
}

#[test]
fn switch_skips_the_rest_of_the_segment_even_if_it_is_raw_zeros() {
    let switch = record(RM_XLOG_ID, XLOG_SWITCH, 0, &[]);
    let start = SEGMENT - 2 * BLOCK as u64;
    let mut wal = write_wal(start, &[switch], 3);
    // Padding pages as plain zeros, then a new segment with a commit.
    wal[BLOCK..2 * BLOCK].fill(0);
    let switch_lsn = start + SIZE_OF_XLOG_SHORT_PHD as u64;
    let next_segment = write_wal_after(switch_lsn, SEGMENT, &[commit(800, 9_000, 0)], 1);
    wal[2 * BLOCK..].copy_from_slice(&next_segment);
    let (decoded, _) = decode_all(start, &wal, BLOCK);
    assert_eq!(decoded.len(), 2);
    assert_eq!(decoded[0].kind, RecordKind::Switch);
    assert_eq!(decoded[1].xid, 800);
    assert_eq!(decoded[1].lsn, Lsn(SEGMENT + SIZE_OF_XLOG_LONG_PHD as u64));
}

/// Random and mutated pages: never a panic, never a hang, bounded output.
#[test]
fn survives_random_and_mutated_input() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let records = vec![
        commit(700, 1_000, 0),
        restore_point("p", 2),
        commit(701, 3_000, 3000),
    ];
    let good = write_wal(0, &records, 4);
    for round in 0..2000 {
        let mut wal = good.clone();
        if round % 4 == 0 {
            for byte in wal.iter_mut() {
                *byte = next() as u8;
            }
        } else {
            for _ in 0..(1 + next() % 8) {
                let at = (next() % wal.len() as u64) as usize;
                wal[at] = next() as u8;
            }
        }
        let (decoded, _) = decode_all(0, &wal, 1 + (next() % 9000) as usize);
        assert!(decoded.len() <= 4 * BLOCK / SIZE_OF_XLOG_RECORD);
    }
}

#[test]
fn summaries_carry_a_commit_that_straddles_segments() {
    use crate::pg::wal_summary::summarize_segment;
    // A big commit that begins in the first segment and ends in the second.
    let records = vec![
        commit(700, 1_000, 0),
        commit(701, 3_000_000, 5000),
        commit(702, 4_000_000, 0),
    ];
    let start = SEGMENT - BLOCK as u64;
    let wal = write_wal(start, &records, 4);
    let first_segment = &wal[..BLOCK];
    let second_segment = &wal[BLOCK..];

    let first = summarize_segment(first_segment, Lsn(start), SEGMENT, BLOCK, None);
    assert_eq!(first.commits, 1);
    assert!(first.carry.is_some(), "{first:?}");

    let second = summarize_segment(
        second_segment,
        Lsn(SEGMENT),
        SEGMENT,
        BLOCK,
        first.carry.as_ref(),
    );
    assert_eq!(second.commits, 2, "{second:?}");
    assert_eq!(
        second
            .first_commit_time
            .map(crate::pg::timestamp::rfc3339_micros)
            .as_deref(),
        Some("2000-01-01T00:00:03.000000Z")
    );
    assert_eq!(
        second
            .last_commit_time
            .map(crate::pg::timestamp::rfc3339_micros)
            .as_deref(),
        Some("2000-01-01T00:00:04.000000Z")
    );

    // Without the carry, the straddling commit cannot be decoded.
    let alone = summarize_segment(second_segment, Lsn(SEGMENT), SEGMENT, BLOCK, None);
    assert_eq!(alone.commits, 1);
}

pub(crate) fn abort(xid: u32, time: i64) -> Vec<u8> {
    record(RM_XACT_ID, 0x20, xid, &time.to_le_bytes())
}

#[test]
fn summaries_bound_xids_and_decoding_finds_where_one_ended() {
    use crate::pg::wal_summary::{XidRange, summarize_segment};
    use crate::pg::xact_end::find_xact_end;
    // 701 straddles the segment boundary; 705 aborts in the second segment.
    let records = vec![
        commit(700, 1_000, 0),
        abort(703, 2_000),
        commit(701, 3_000_000, 5000),
        commit(702, 4_000_000, 0),
        abort(705, 5_000_000),
    ];
    let start = SEGMENT - BLOCK as u64;
    let wal = write_wal(start, &records, 4);
    let (first_segment, second_segment) = wal.split_at(BLOCK);
    let first = summarize_segment(first_segment, Lsn(start), SEGMENT, BLOCK, None);
    assert_eq!(first.commit_xids, Some(XidRange::new(700)));
    assert_eq!(first.abort_xids, Some(XidRange::new(703)));
    let carry = first.carry.as_ref();
    let second = summarize_segment(second_segment, Lsn(SEGMENT), SEGMENT, BLOCK, carry);
    assert_eq!(second.commit_xids, Some(XidRange { min: 701, max: 702 }));
    assert_eq!(second.abort_xids, Some(XidRange::new(705)));
    assert!(second.may_end_xid(701) && second.may_end_xid(705) && !second.may_end_xid(703));

    let find = |segment: &[u8], at: u64, carry, xid| {
        find_xact_end(segment, Lsn(at), SEGMENT, BLOCK, carry, xid)
    };
    // The straddling commit is found where it ends, at the LSN where it starts.
    let straddling = find(second_segment, SEGMENT, carry, 701).unwrap();
    let expected_lsn = start
        + maxalign(maxalign(SIZE_OF_XLOG_SHORT_PHD + records[0].len()) + records[1].len()) as u64;
    assert_eq!(straddling.lsn, Lsn(expected_lsn));
    assert!(straddling.committed);
    assert_eq!(
        straddling.time.map(crate::pg::timestamp::rfc3339_micros),
        Some("2000-01-01T00:00:03.000000Z".to_owned())
    );
    assert_eq!(
        find(second_segment, SEGMENT, None, 701),
        None,
        "needs the carry"
    );
    let aborted = find(second_segment, SEGMENT, carry, 705).unwrap();
    assert!(!aborted.committed);
    assert!(find(first_segment, start, None, 703).is_some_and(|end| !end.committed));
    assert_eq!(
        find(second_segment, SEGMENT, carry, 700),
        None,
        "ended earlier"
    );
    assert_eq!(find(second_segment, SEGMENT, carry, 9), None);
}

#[test]
fn summaries_without_bounds_may_hold_any_xid_they_count() {
    use crate::pg::wal_summary::SegmentSummary;
    let stored_by_older_pitr: SegmentSummary = serde_json::from_str(
        r#"{"first_record":null,"last_record_end":null,"first_commit_time":null,
            "last_commit_time":null,"commits":3,"aborts":0,"restore_points":[],"end_of_wal":null,
            "carry":null}"#,
    )
    .unwrap();
    assert_eq!(stored_by_older_pitr.commit_xids, None);
    assert!(stored_by_older_pitr.may_end_xid(12345));
    assert!(
        !SegmentSummary::default().may_end_xid(12345),
        "no commits, no aborts"
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn valid_wal() -> Vec<u8> {
        let records = vec![
            commit(700, 1_000, 0),
            restore_point("p", 2),
            commit(701, 3_000, 3000),
            record(RM_XLOG_ID, XLOG_SWITCH, 0, &[]),
        ];
        write_wal(SEGMENT - 2 * BLOCK as u64, &records, 4)
    }

    /// Both checking modes: no panic, and every record takes at least its header, so the
    /// output is bounded by the input.
    fn decode_bounded(start: u64, wal: &[u8], feed: usize) {
        let (records, _) = decode_all(start, wal, feed.max(1));
        assert!(records.len() <= wal.len() / SIZE_OF_XLOG_RECORD + 1);
        let mut decoder =
            WalDecoder::new(Lsn(start), SEGMENT, BLOCK).checking(RecordCheck::TargetRecords);
        let mut count = 0;
        for piece in wal.chunks(feed.max(1)) {
            decoder.feed(piece);
            count += std::iter::from_fn(|| decoder.next_record()).count();
        }
        assert!(count <= wal.len() / SIZE_OF_XLOG_RECORD + 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_pages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4 * BLOCK), feed in 1usize..10_000) {
            decode_bounded(0, &bytes, feed);
        }

        #[test]
        fn random_pages_with_a_valid_header_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), BLOCK..3 * BLOCK),
            feed in 1usize..10_000,
        ) {
            // A plausible long header so that decoding gets past the first page check.
            bytes[0..2].copy_from_slice(&MAGIC_15.to_le_bytes());
            bytes[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
            bytes[8..16].copy_from_slice(&0u64.to_le_bytes());
            decode_bounded(0, &bytes, feed);
        }

        #[test]
        fn mutated_wal_never_panics(
            mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            feed in 1usize..10_000,
        ) {
            let mut wal = valid_wal();
            for (at, value) in mutations {
                let at = at.index(wal.len());
                wal[at] = value;
            }
            decode_bounded(SEGMENT - 2 * BLOCK as u64, &wal, feed);
        }
    }
}

/// A heap-like record of `len` bytes of main data: content the decoder need not keep.
fn other_record(len: usize) -> Vec<u8> {
    const RM_HEAP_ID: u8 = 10;
    record(RM_HEAP_ID, 0, 42, &vec![7u8; len])
}

#[test]
fn target_records_mode_finds_the_same_records_without_keeping_others() {
    let records = vec![
        other_record(9000), // spans pages
        commit(700, 1_000, 0),
        other_record(100),
        commit(701, 3_000, 4000), // spans pages: kept whole
        other_record(20_000),
        restore_point("after", 5_000),
    ];
    let wal = write_wal(0, &records, 8);
    let decode = |check: RecordCheck| {
        let mut decoder = WalDecoder::new(Lsn(0), SEGMENT, BLOCK).checking(check);
        decoder.feed(&wal);
        std::iter::from_fn(|| decoder.next_record()).collect::<Vec<_>>()
    };
    let full = decode(RecordCheck::Full);
    assert_eq!(full.len(), records.len());
    assert_eq!(decode(RecordCheck::TargetRecords), full);
}

#[test]
fn target_records_mode_still_checks_target_records_and_prev_links() {
    let records = vec![other_record(100), commit(700, 1_000, 0), other_record(100)];
    let wal = write_wal(0, &records, 1);
    let commit_at = maxalign(SIZE_OF_XLOG_LONG_PHD + records[0].len());
    let third_at = maxalign(commit_at + records[1].len());
    for (at, expected_decoded) in [(commit_at + 30, 1), (third_at + 8, 2)] {
        let mut broken = wal.clone();
        broken[at] ^= 1; // the commit's content, then the third record's xl_prev
        let mut decoder =
            WalDecoder::new(Lsn(0), SEGMENT, BLOCK).checking(RecordCheck::TargetRecords);
        decoder.feed(&broken);
        let decoded = std::iter::from_fn(|| decoder.next_record()).count();
        assert_eq!(decoded, expected_decoded, "flip at {at}");
        assert!(matches!(
            decoder.end_of_wal(),
            Some(EndOfWal::BadRecord { .. })
        ));
    }
}

#[test]
fn wal_at_the_end_of_the_lsn_space_decodes_without_overflow() {
    // The last four pages of the LSN space (a segment named `…FFFFFFFF000000FF` ends there,
    // and a repository may hold one): the page after the last would be at 2^64.
    let start = 0u64.wrapping_sub(4 * BLOCK as u64);
    // A record that runs into the last page, and a commit after it there.
    let records = [other_record(3 * BLOCK), commit(7, 1_000_000, 0)];
    let wal = write_wal(start, &records, 4);
    for feed_size in [BLOCK, 1000] {
        let (records, _) = decode_all(start, &wal, feed_size);
        assert_eq!(records.len(), 2, "{feed_size}");
    }
}
