use std::sync::Arc;

use chrono::TimeZone;

use super::*;
use crate::catalog::RepositoryIdentity;
use crate::codec::CompressionType;
use crate::pg::timeline::timeline_path;
use crate::pg::wal_summary::RestorePoint;
use crate::pg::{Lsn, WalFileName};
use crate::recovery::ArchiveView;
use crate::recovery::view::Needed;
use crate::storage::{MemoryStorage, Storage};

const SEG: u64 = 16 << 20;

fn key(timeline: u32, first: u64, span: u64) -> RollupKey {
    RollupKey {
        timeline,
        first_segno: first,
        span,
        last_commit: Some(Utc.timestamp_micros(1_795_428_131_120_334).unwrap()),
        stored_bytes: 4_194_304_000,
        restore_points: false,
    }
}

#[test]
fn keys_name_the_group_and_its_aggregates() {
    let k = key(1, 256, 256);
    let text = k.key(SEG);
    assert_eq!(
        text,
        "wal/rollup/00000001/000000010000000100000000.256.c1795428131120334.b4194304000.r0.json"
    );
    assert_eq!(RollupKey::parse(&text, SEG), Some(k.clone()));
    let none = RollupKey {
        last_commit: None,
        restore_points: true,
        ..key(3, 16, 16)
    };
    assert_eq!(RollupKey::parse(&none.key(SEG), SEG), Some(none));
    for bad in [
        // not aligned, unknown span, no such fields, not a rollup
        "wal/rollup/00000001/000000010000000000000010.256.c-.b1.r0.json",
        "wal/rollup/00000001/000000010000000000000000.32.c-.b1.r0.json",
        "wal/rollup/00000001/000000010000000000000000.16.c-.b1.r2.json",
        "wal/rollup/00000001/000000010000000000000000.16.c-.b1.r0.x.json",
        "wal/0000000100000000/000000010000000000000001.lz4",
        // the folder's timeline is not the segment's
        "wal/rollup/00000002/000000010000000000000000.16.c-.b1.r0.json",
    ] {
        assert_eq!(RollupKey::parse(bad, SEG), None, "{bad}");
    }
}

#[test]
fn group_prefixes_hold_the_group_whatever_the_segment_size() {
    // 16 MB: a large group is one folder, a small one a name prefix in it.
    assert_eq!(
        group_data_prefix(1, 256, 256, SEG),
        "wal/0000000100000001/0000000100000001000000"
    );
    assert_eq!(
        group_data_prefix(1, 272, 16, SEG),
        "wal/0000000100000001/00000001000000010000001"
    );
    // 1 MB: 4096 segments a folder, a group is a part of it.
    assert_eq!(
        group_data_prefix(1, 4096 + 512, 256, 1 << 20),
        "wal/0000000100000001/0000000100000001000002"
    );
    // 1 GB: 4 segments a folder, a group spans 64 folders.
    let prefix = group_data_prefix(2, 256, 256, 1 << 30);
    assert_eq!(prefix, "wal/00000002000000");
    for segno in 256..512 {
        let name = xlog_file_name(2, segno, 1 << 30);
        assert!(
            format!("wal/{}/{name}", &name[..16]).starts_with(&prefix),
            "{name}"
        );
    }
}

#[test]
fn only_folders_and_groups_without_rollups_are_listed() {
    let mut rollups = BTreeMap::new();
    for k in [key(1, 256, 256), key(1, 512, 16), key(1, 528, 16)] {
        rollups.insert((k.timeline, k.first_segno, k.span), k);
    }
    let folders: Vec<String> = [
        "wal/0000000100000000/",
        "wal/0000000100000001/",
        "wal/0000000100000002/",
        "wal/history/",
        "wal/rollup/",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        prefixes_to_list(&folders, &rollups, SEG),
        vec!["wal/0000000100000000/", "wal/0000000100000002/"]
    );
    // 1 MB segments: the groups of a folder, each on its own.
    let mut rollups = BTreeMap::new();
    let k = key(1, 256, 256);
    rollups.insert((1, 256, 256), k);
    let listed = prefixes_to_list(&folders[..1], &rollups, 1 << 20);
    assert_eq!(listed.len(), 15);
    assert_eq!(listed[0], "wal/0000000100000000/0000000100000000000000");
    assert_eq!(listed[1], "wal/0000000100000000/0000000100000000000002");
}

/// Segment `segno` of timeline 1 commits at second `segno`; segment 40 has a restore point.
fn summary_of(segno: u64) -> SegmentSummary {
    let time = Utc.timestamp_opt(1_700_000_000 + segno as i64, 0).unwrap();
    SegmentSummary {
        first_record: Some(Lsn(segno * SEG + 40)),
        last_commit_time: Some(time),
        first_commit_time: Some(time),
        commits: 1,
        restore_points: if segno == 40 {
            vec![RestorePoint {
                name: "here".into(),
                lsn: Lsn(segno * SEG + 100),
                time: None,
            }]
        } else {
            vec![]
        },
        ..SegmentSummary::default()
    }
}

/// Archives segments `segnos` of timeline 1 (objects of a few bytes) with their summaries,
/// rolling up as archive-push does.
async fn archive(catalog: &Catalog, store: &MemoryStorage, segnos: impl Iterator<Item = u64>) {
    for segno in segnos {
        let name = WalFileName::parse(&xlog_file_name(1, segno, SEG)).unwrap();
        store
            .put(
                &super::super::wal::wal_key(&name, CompressionType::Lz4),
                PutPayload::from_bytes(vec![0u8; 10 + segno as usize % 7]),
                PutMode::Create,
            )
            .await
            .unwrap();
        catalog
            .put_segment_summary(&name, &summary_of(segno))
            .await
            .unwrap();
        catalog.roll_up_after(&name, SEG).await.unwrap();
    }
}

async fn rollup_keys(store: &MemoryStorage) -> Vec<(u64, u64)> {
    store
        .list(ROLLUP_PREFIX)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| RollupKey::parse(&m.key, SEG))
        .map(|k| (k.first_segno, k.span))
        .collect()
}

fn setup() -> (Arc<MemoryStorage>, Catalog, RepositoryIdentity) {
    let store = Arc::new(MemoryStorage::new("rollup"));
    let identity = RepositoryIdentity::for_tests(SEG, 8192);
    let catalog = Catalog::new(store.clone()).knowing(&identity);
    (store, catalog, identity)
}

#[tokio::test]
async fn groups_roll_up_small_then_large_and_overviews_match_full_listings() {
    let (store, catalog, identity) = setup();
    // Segments 1 to 600: group 0 lacks segment 0, groups 256 and (small) 512..592 are
    // complete, 592.. is being filled.
    archive(&catalog, &store, 1..=600).await;
    let mut expected: Vec<(u64, u64)> = (1..16)
        .map(|i| (i * 16, 16))
        .chain([(256, 256)])
        .chain((32..37).map(|i| (i * 16, 16)))
        .collect();
    expected.sort();
    let mut found = rollup_keys(&store).await;
    found.sort();
    assert_eq!(
        found, expected,
        "small rollups inside a large one are removed"
    );

    let overview = catalog.wal_overview(SEG, 4).await.unwrap();
    let full = catalog.wal_listing(SEG).await.unwrap();
    assert_eq!(full.segments.len(), 600);
    // Listed one by one: the folders not covered whole (segments 1..=255 and 512..=600).
    assert_eq!(overview.segments.len(), 255 + 89);
    assert_eq!(overview.segment_bounds(1), Some((1, 600)));
    assert_eq!(overview.segment_bounds(1), full.segment_bounds(1));

    let path = timeline_path(1, &[]);
    let mut rolled = ArchiveView::new(&identity, overview, BTreeMap::new());
    let mut plain = ArchiveView::new(&identity, full, BTreeMap::new());
    let start = Lsn(3 * SEG + 40);
    let (walk_rolled, walk_plain) = (rolled.walk(&path, start), plain.walk(&path, start));
    assert_eq!(walk_rolled.segments, walk_plain.segments);
    assert_eq!(walk_rolled.missing, walk_plain.missing);
    assert!(!walk_rolled.gap);
    // Whole groups are decided on their keys: the outline reads the single segments only.
    rolled
        .load_summaries(&catalog, &walk_rolled.segments, &Needed::Outline, 4)
        .await
        .unwrap();
    plain
        .load_summaries(&catalog, &walk_plain.segments, &Needed::Everything, 4)
        .await
        .unwrap();
    assert_eq!(
        rolled.last_commit(&walk_rolled.segments),
        plain.last_commit(&walk_plain.segments)
    );
    assert!(
        rolled.summary_of(1, 300).is_none(),
        "group 256 was not read"
    );
    assert_eq!(
        rolled.stored_bytes(&walk_rolled.segments),
        plain.stored_bytes(&walk_plain.segments)
    );

    // The first commit after a time inside group 256: that group alone is read.
    let time = Utc.timestamp_opt(1_700_000_000 + 300, 0).unwrap();
    rolled
        .load_summaries(
            &catalog,
            &walk_rolled.segments,
            &Needed::FirstCommitAfter(time),
            4,
        )
        .await
        .unwrap();
    let after = |s: &SegmentSummary| s.last_commit_time.is_some_and(|t| t > time);
    let may = |k: &RollupKey| k.last_commit.is_some_and(|t| t > time);
    assert_eq!(
        rolled.find(&walk_rolled.segments, may, after),
        plain.find(&walk_plain.segments, may, after)
    );
    assert_eq!(
        rolled.find(&walk_rolled.segments, may, after),
        Some((301 - 3, 1, 301))
    );
    assert!(
        rolled.summary_of(1, 520).is_none(),
        "groups after it were not read"
    );
    // The newest commit of the timeline: the tail's summaries and the rollups' keys.
    let mut fresh = ArchiveView::new(
        &identity,
        catalog.wal_overview(SEG, 4).await.unwrap(),
        BTreeMap::new(),
    );
    assert_eq!(
        fresh.newest_commit(&catalog, 1, 4).await.unwrap(),
        summary_of(600).last_commit_time
    );
    assert_eq!(fresh.newest_commit(&catalog, 2, 4).await.unwrap(), None);
    // Sizes inside a group read are exact.
    let segment_300 = rolled.file(1, 300).unwrap();
    assert_eq!(segment_300.size(), plain.file(1, 300).unwrap().size());
}

#[tokio::test]
async fn a_damaged_rollup_falls_back_to_the_segments_of_its_group() {
    let (store, catalog, identity) = setup();
    archive(&catalog, &store, 1..=520).await;
    let overview = catalog.wal_overview(SEG, 4).await.unwrap();
    let key = overview.rollups[&(1, 256, 256)].clone();
    let object = key.key(SEG);
    let text = String::from_utf8(crate::storage::read_all(&*store, &object).await.unwrap())
        .unwrap()
        .replace("\"commits\": 1", "\"commits\": 2");
    store
        .put(&object, PutPayload::from_bytes(text), PutMode::Overwrite)
        .await
        .unwrap();
    assert!(catalog.read_rollup(&key, SEG).await.unwrap().is_none());
    assert!(
        catalog
            .rollup_damage(&key, SEG)
            .await
            .unwrap()
            .unwrap()
            .contains("checksum")
    );
    let mut view = ArchiveView::new(&identity, overview, BTreeMap::new());
    let walk = view.walk(&timeline_path(1, &[]), Lsn(300 * SEG));
    view.load_summaries(&catalog, &walk.segments, &Needed::Everything, 4)
        .await
        .unwrap();
    assert_eq!(view.summary_of(1, 300), Some(&summary_of(300)));
    assert!(!view.listing.rollups.contains_key(&(1, 256, 256)));
    assert!(view.listing.segment(1, 300).is_some(), "listed one by one");
    // Writing the group again repairs it.
    let written = catalog.roll_up_group(1, 256, 256, SEG).await.unwrap();
    assert_eq!(written.as_ref(), Some(&key));
    assert!(catalog.read_rollup(&key, SEG).await.unwrap().is_some());
}

#[tokio::test]
async fn a_gap_keeps_its_group_unrolled_and_is_seen() {
    let (store, catalog, identity) = setup();
    archive(&catalog, &store, (1..=530).filter(|s| *s != 300)).await;
    let found = rollup_keys(&store).await;
    assert!(!found.contains(&(256, 256)) && !found.contains(&(288, 16)));
    assert!(found.contains(&(272, 16)) && found.contains(&(304, 16)));
    // A push of the missing segment out of order does not complete the group by itself;
    // `roll_up_group` (verify) does.
    archive(&catalog, &store, 300..=300).await;
    assert!(!rollup_keys(&store).await.contains(&(256, 256)));
    store
        .delete(&super::super::wal::wal_key(
            &WalFileName::parse(&xlog_file_name(1, 300, SEG)).unwrap(),
            CompressionType::Lz4,
        ))
        .await
        .unwrap();
    let overview = catalog.wal_overview(SEG, 4).await.unwrap();
    let view = ArchiveView::new(&identity, overview, BTreeMap::new());
    let walk = view.walk(&timeline_path(1, &[]), Lsn(2 * SEG));
    assert_eq!(walk.missing_segno, 300);
    assert!(walk.gap);
}

#[tokio::test]
async fn deleting_wal_removes_the_rollups_it_touches_first() {
    let (store, catalog, identity) = setup();
    archive(&catalog, &store, 1..=600).await;
    // What retention removes: the segments before 300.
    let listing = catalog.wal_listing(SEG).await.unwrap();
    let before: Vec<_> = listing
        .segments
        .range(..(1, 300))
        .map(|(_, f)| f.clone())
        .collect();
    assert_eq!(before.len(), 299);
    catalog.delete_wal_files(&before, SEG).await.unwrap();
    let mut found = rollup_keys(&store).await;
    found.sort();
    // Group 256 is cut: its whole small groups after 300 are rolled up again.
    assert_eq!(
        found,
        vec![
            (304, 16),
            (320, 16),
            (336, 16),
            (352, 16),
            (368, 16),
            (384, 16),
            (400, 16),
            (416, 16),
            (432, 16),
            (448, 16),
            (464, 16),
            (480, 16),
            (496, 16),
            (512, 16),
            (528, 16),
            (544, 16),
            (560, 16),
            (576, 16),
        ]
    );
    let overview = catalog.wal_overview(SEG, 4).await.unwrap();
    assert_eq!(overview.segment_bounds(1), Some((300, 600)));
    let view = ArchiveView::new(&identity, overview, BTreeMap::new());
    let walk = view.walk(&timeline_path(1, &[]), Lsn(300 * SEG));
    assert_eq!(walk.len(), 301);
    assert!(!walk.gap);
}

#[tokio::test]
async fn repair_writes_missing_rollups_and_removes_stale_ones() {
    let (store, catalog, _) = setup();
    archive(&catalog, &store, 1..=600).await;
    // As if archived by a pitr without rollups.
    for meta in store.list(ROLLUP_PREFIX).await.unwrap() {
        store.delete(&meta.key).await.unwrap();
    }
    let listing = catalog.wal_listing(SEG).await.unwrap();
    let repair = catalog.repair_rollups(&listing, SEG).await.unwrap();
    let mut found = rollup_keys(&store).await;
    found.sort();
    let mut expected: Vec<(u64, u64)> = (1..16)
        .map(|i| (i * 16, 16))
        .chain([(256, 256)])
        .chain((32..37).map(|i| (i * 16, 16)))
        .collect();
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(repair.written.len(), expected.len());
    assert!(repair.removed.is_empty() && repair.damaged.is_empty());

    // A segment removed by hand: the rollups naming it go; one damaged is written again.
    let gone = WalFileName::parse(&xlog_file_name(1, 300, SEG)).unwrap();
    store
        .delete(&super::super::wal::wal_key(&gone, CompressionType::Lz4))
        .await
        .unwrap();
    let small = catalog.wal_overview(SEG, 2).await.unwrap().rollups[&(1, 512, 16)].clone();
    store
        .put(
            &small.key(SEG),
            PutPayload::from_bytes("{}"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let listing = catalog.wal_listing(SEG).await.unwrap();
    let repair = catalog.repair_rollups(&listing, SEG).await.unwrap();
    assert_eq!(repair.removed.len(), 1, "{:?}", repair.removed);
    assert_eq!(repair.damaged.len(), 1);
    let found = rollup_keys(&store).await;
    assert!(!found.contains(&(256, 256)) && found.contains(&(512, 16)));
    // The whole small groups of the cut large group get their own.
    assert!(found.contains(&(256, 16)) && !found.contains(&(288, 16)));
    assert!(catalog.read_rollup(&small, SEG).await.unwrap().is_some());
}

#[tokio::test]
async fn removing_a_range_in_the_middle_removes_only_the_rollups_over_it() {
    let (store, catalog, _) = setup();
    archive(&catalog, &store, 1..=600).await;
    let before = rollup_keys(&store).await;
    let removed = catalog
        .delete_rollups_overlapping(1, 240..300, SEG)
        .await
        .unwrap();
    assert_eq!(removed, 2, "the small group 240 and the large group 256");
    let after = rollup_keys(&store).await;
    assert_eq!(after.len(), before.len() - 2);
    assert!(!after.contains(&(240, 16)) && !after.contains(&(256, 256)));
    assert!(after.contains(&(224, 16)) && after.contains(&(512, 16)));
}

proptest::proptest! {
    /// Keys and contents are outside input: any of them parses or is refused, never panics.
    #[test]
    fn rollup_keys_and_contents_never_panic(
        key in "wal/rollup/[0-9A-F]{8}/[0-9A-F]{24}\\.[0-9]{1,4}\\.c[-0-9]{1,20}\\.b[0-9]{1,22}\\.r[0-9]\\.json",
        junk in ".*",
        flip in 0usize..4000,
        shift in 20u32..=30,
    ) {
        for text in [&key, &junk] {
            if let Some(parsed) = RollupKey::parse(text, 1 << shift) {
                proptest::prop_assert_eq!(&parsed.key(1 << shift), text);
            }
        }
        let segments = (0..16)
            .map(|s| RolledSegment {
                segment: xlog_file_name(1, 16 + s, SEG),
                size: 10,
                summary: summary_of(16 + s),
            })
            .collect();
        let rollup = Rollup::new(1, 16, SEG, segments);
        let expected = rollup.key(SEG).unwrap();
        let mut bytes = super::super::sealed::seal(&rollup);
        let at = flip % bytes.len();
        bytes[at] ^= 0x04;
        if let Ok(read) = super::super::sealed::unseal::<Rollup>(&bytes) {
            let _ = read.check(&expected, SEG);
        }
    }
}
