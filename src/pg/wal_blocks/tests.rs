use super::*;

/// `BKPBLOCK_HAS_DATA` (the decoder reads data lengths whatever this flag says).
const BKPBLOCK_HAS_DATA_FOR_TEST: u8 = 0x20;

/// A record of `rmid`/`info` with these block headers (already encoded) and main data; its
/// block data and images, `payload` bytes, between them.
fn record(rmid: u8, info: u8, headers: &[u8], payload: usize, main: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; RECORD_HEADER];
    bytes[16] = info;
    bytes[17] = rmid;
    bytes.extend_from_slice(headers);
    if !main.is_empty() {
        if main.len() < 256 {
            bytes.push(BLOCK_ID_DATA_SHORT);
            bytes.push(main.len() as u8);
        } else {
            bytes.push(BLOCK_ID_DATA_LONG);
            bytes.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
    }
    bytes.extend(std::iter::repeat_n(0xAB, payload));
    bytes.extend_from_slice(main);
    let total = bytes.len() as u32;
    bytes[0..4].copy_from_slice(&total.to_le_bytes());
    bytes
}

fn rel(spc: u32, db: u32, node: u32) -> Vec<u8> {
    [spc, db, node]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn file(spc: u32, db: u32, node: u32) -> RelFile {
    RelFile {
        tablespace: spc,
        database: db,
        relfilenode: node,
    }
}

#[test]
fn block_references_follow_the_headers() {
    let mut headers = Vec::new();
    // Block 0: main fork, 10 bytes of data, its relation.
    headers.extend_from_slice(&[0, BKPBLOCK_HAS_DATA_FOR_TEST, 10, 0]);
    headers.extend(rel(1663, 5, 16384));
    headers.extend_from_slice(&7u32.to_le_bytes());
    // Block 1: the visibility map fork of the same relation, an image with a hole,
    // compressed (15+: lz4), will init.
    headers.extend_from_slice(&[
        1,
        2 | BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL | BKPBLOCK_WILL_INIT,
    ]);
    headers.extend_from_slice(&0u16.to_le_bytes());
    headers.extend_from_slice(&100u16.to_le_bytes()); // image length
    headers.extend_from_slice(&40u16.to_le_bytes()); // hole offset
    headers.push(BKPIMAGE_HAS_HOLE | 0x08);
    headers.extend_from_slice(&8000u16.to_le_bytes()); // hole length
    headers.extend_from_slice(&3u32.to_le_bytes());
    // An origin between them and the data.
    headers.extend_from_slice(&[BLOCK_ID_ORIGIN, 1, 0]);
    let bytes = record(10, 0x00, &headers, 110, b"main");
    let changes = record_changes(&bytes, 15).unwrap();
    assert_eq!(
        changes.blocks,
        vec![
            BlockRef {
                file: file(1663, 5, 16384),
                fork: Fork::Main,
                block: 7,
                will_init: false,
                has_image: false,
            },
            BlockRef {
                file: file(1663, 5, 16384),
                fork: Fork::VisibilityMap,
                block: 3,
                will_init: true,
                has_image: true,
            },
        ]
    );
    assert!(changes.events.is_empty());
    // On 13, 0x08 is not a compression bit: no hole length is read, and what follows is
    // misread; an error, where 13's own bit (0x02) reads as 15's did.
    assert!(record_changes(&bytes, 13).is_err());
    let mut on_13 = bytes.clone();
    let flags_at = RECORD_HEADER + 4 + 12 + 4 + 2 + 2 + 2 + 2;
    assert_eq!(on_13[flags_at], BKPIMAGE_HAS_HOLE | 0x08);
    on_13[flags_at] = BKPIMAGE_HAS_HOLE | 0x02;
    assert_eq!(record_changes(&on_13, 13).unwrap(), changes);
}

#[test]
fn malformed_headers_are_errors_not_panics() {
    // Same relation without one before it.
    let headers = [0, BKPBLOCK_SAME_REL, 0, 0, 1, 0, 0, 0];
    assert_eq!(
        record_changes(&record(10, 0, &headers, 0, b""), 15),
        Err(BlockDecodeError::NoPreviousRelation { id: 0 })
    );
    // Block ids out of order.
    let mut headers = vec![3, 0, 0, 0];
    headers.extend(rel(1663, 5, 1));
    headers.extend_from_slice(&0u32.to_le_bytes());
    headers.extend_from_slice(&[2, BKPBLOCK_SAME_REL, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        record_changes(&record(10, 0, &headers, 0, b""), 15),
        Err(BlockDecodeError::BadBlockId { id: 2 })
    );
    // A fork number beyond the init fork.
    let headers = [0, 7, 0, 0];
    assert!(matches!(
        record_changes(&record(10, 0, &headers, 0, b""), 15),
        Err(BlockDecodeError::BadFork { fork: 7, .. })
    ));
    // Data longer than the record.
    let mut headers = vec![0, BKPBLOCK_HAS_DATA_FOR_TEST, 0xFF, 0x7F];
    headers.extend(rel(1663, 5, 1));
    headers.extend_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        record_changes(&record(10, 0, &headers, 0, b""), 15),
        Err(BlockDecodeError::BadLengths { .. })
    ));
    // Every prefix of a good record: an error, never a panic.
    let mut headers = vec![0, 0, 0, 0];
    headers.extend(rel(1663, 5, 1));
    headers.extend_from_slice(&0u32.to_le_bytes());
    let good = record(RM_SMGR_ID, XLOG_SMGR_CREATE, &headers, 0, &[0; 16]);
    for len in 0..good.len() {
        let _ = record_changes(&good[..len], 15);
    }
}

#[test]
fn storage_events_are_read_from_the_main_data() {
    let mut create = rel(1663, 5, 16390);
    create.extend_from_slice(&3u32.to_le_bytes());
    let changes = record_changes(
        &record(RM_SMGR_ID, XLOG_SMGR_CREATE | 1, &[], 0, &create),
        16,
    );
    assert_eq!(
        changes.unwrap().events,
        vec![StorageEvent::Created {
            file: file(1663, 5, 16390),
            fork: Fork::Init,
        }]
    );

    let mut truncate = 12u32.to_le_bytes().to_vec();
    truncate.extend(rel(1663, 5, 16384));
    truncate.extend_from_slice(&(SMGR_TRUNCATE_HEAP | SMGR_TRUNCATE_VM).to_le_bytes());
    let changes = record_changes(
        &record(RM_SMGR_ID, XLOG_SMGR_TRUNCATE, &[], 0, &truncate),
        13,
    );
    assert_eq!(
        changes.unwrap().events,
        vec![StorageEvent::Truncated {
            file: file(1663, 5, 16384),
            blocks: 12,
            main: true,
            fsm: false,
            vm: true,
        }]
    );

    let four: Vec<u8> = [16400u32, 1663, 1, 1663]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let copied = StorageEvent::DatabaseCopied {
        database: 16400,
        tablespace: 1663,
        source_database: 1,
        source_tablespace: 1663,
    };
    for major in [13, 15, 18] {
        let changes = record_changes(&record(RM_DBASE_ID, 0x00, &[], 0, &four), major);
        assert_eq!(changes.unwrap().events, vec![copied.clone()], "{major}");
    }
    // 15+: created by WAL; 13/14: 0x10 is the drop.
    let changes = record_changes(&record(RM_DBASE_ID, 0x10, &[], 0, &four[..8]), 15);
    assert_eq!(
        changes.unwrap().events,
        vec![StorageEvent::DatabaseCreated {
            database: 16400,
            tablespace: 1663,
        }]
    );
    let drop: Vec<u8> = [16400u32, 2, 1663, 16500]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let dropped = StorageEvent::DatabaseDropped {
        database: 16400,
        tablespaces: vec![1663, 16500],
    };
    for (major, info) in [(13, 0x10), (14, 0x10), (15, 0x20), (17, 0x20)] {
        let changes = record_changes(&record(RM_DBASE_ID, info, &[], 0, &drop), major);
        assert_eq!(changes.unwrap().events, vec![dropped.clone()], "{major}");
    }

    // A parameter change to wal_level minimal.
    let mut parameters = vec![0u8; 20];
    parameters.extend_from_slice(&0u32.to_le_bytes());
    parameters.extend_from_slice(&[0, 0]);
    let changes = record_changes(
        &record(RM_XLOG_ID, XLOG_PARAMETER_CHANGE, &[], 0, &parameters),
        15,
    );
    assert_eq!(
        changes.unwrap().events,
        vec![StorageEvent::WalLevel { minimal: true }]
    );

    // An unknown record that says it changes relation files.
    let changes = record_changes(&record(11, 0x30 | XLR_SPECIAL_REL_UPDATE, &[], 0, b""), 15);
    assert_eq!(
        changes.unwrap().events,
        vec![StorageEvent::Unknown {
            rmid: 11,
            info: 0x30 | XLR_SPECIAL_REL_UPDATE,
        }]
    );
}

#[test]
fn a_commit_names_the_relations_it_drops() {
    // xact_time, xinfo (dbinfo, subxacts, relfilenodes), dbinfo, 1 subxact, 2 relations.
    let mut main = 0i64.to_le_bytes().to_vec();
    main.extend_from_slice(&0b111u32.to_le_bytes());
    main.extend_from_slice(&[5, 0, 0, 0, 0x7F, 0x06, 0, 0]);
    main.extend_from_slice(&1u32.to_le_bytes());
    main.extend_from_slice(&900u32.to_le_bytes());
    main.extend_from_slice(&2u32.to_le_bytes());
    main.extend(rel(1663, 5, 16384));
    main.extend(rel(1663, 5, 16387));
    let changes = record_changes(&record(RM_XACT_ID, 0x80, &[], 0, &main), 15).unwrap();
    assert_eq!(
        changes.events,
        vec![StorageEvent::RelationsDropped {
            files: vec![file(1663, 5, 16384), file(1663, 5, 16387)]
        }]
    );
    // Without relations: no event.
    let main = [0u8; 8];
    let changes = record_changes(&record(RM_XACT_ID, 0x00, &[], 0, &main), 15).unwrap();
    assert!(changes.events.is_empty());
}

#[test]
fn a_record_without_main_data_ends_with_its_block_data() {
    // A full-page image (FPI_FOR_HINT): one block header, then 8192 image bytes; read as
    // headers, the image would be garbage block ids.
    let mut headers = vec![0, 1 | BKPBLOCK_HAS_IMAGE, 0, 0];
    headers.extend_from_slice(&8192u16.to_le_bytes());
    headers.extend_from_slice(&0u16.to_le_bytes());
    headers.push(0);
    headers.extend(rel(1663, 1, 1255));
    headers.extend_from_slice(&2u32.to_le_bytes());
    let mut bytes = record(RM_XLOG_ID, 0xC0, &headers, 0, b"");
    bytes.extend(std::iter::repeat_n(7u8, 8192));
    let total = bytes.len() as u32;
    bytes[0..4].copy_from_slice(&total.to_le_bytes());
    let changes = record_changes(&bytes, 15).unwrap();
    assert_eq!(
        changes.blocks,
        vec![BlockRef {
            file: file(1663, 1, 1255),
            fork: Fork::FreeSpaceMap,
            block: 2,
            will_init: false,
            has_image: true,
        }]
    );
}
