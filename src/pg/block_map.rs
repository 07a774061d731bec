//! The blocks a stretch of WAL changes, per relation fork, and its storage events: what
//! archive-push stores beside each segment so that a block-incremental backup reads only
//! the blocks changed since its parent (issue 27). Pure: records' changes in, a map out.
//!
//! Block numbers are kept as sorted, merged ranges; events keep their LSN, since their order
//! against a backup's start decides what they mean (a truncation before the parent's start
//! is in the parent already).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Lsn;
use super::wal_blocks::{Fork, RecordChanges, RelFile, StorageEvent};
use super::wal_reader::{RecordCheck, WalDecoder};

/// The stored form's version.
pub const BLOCK_MAP_FORMAT: u32 = 1;
/// Block numbers noted per fork before they are sorted and merged in place: bounds memory
/// on a long segment that touches the same blocks again and again.
const COMPACT_AT: usize = 1 << 16;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMap {
    pub format: u32,
    /// The map may miss the blocks of one record: decoding began inside it (the segment's
    /// first record began in the previous segment, and its headers were not carried over).
    pub starts_incomplete: bool,
    /// Records whose changes could not be read (the map misses what they changed).
    #[serde(default)]
    pub unreadable_records: u64,
    /// Forks with changed blocks, ordered by relation and fork.
    pub forks: Vec<ForkBlocks>,
    /// Storage events in LSN order.
    pub events: Vec<MapEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkBlocks {
    pub file: RelFile,
    pub fork: Fork,
    /// `[first, count]` runs of changed blocks, ascending and apart.
    pub ranges: Vec<[u32; 2]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEvent {
    pub lsn: Lsn,
    pub event: StorageEvent,
}

impl ForkBlocks {
    /// Whether `block` is among the changed ones.
    pub fn contains(&self, block: u32) -> bool {
        runs_contain(&self.ranges, block)
    }
}

/// Whether ascending, apart `[first, count]` runs hold `block`.
pub fn runs_contain(ranges: &[[u32; 2]], block: u32) -> bool {
    let at = ranges.partition_point(|[first, _]| *first <= block);
    at > 0 && {
        let [first, count] = ranges[at - 1];
        u64::from(block) < u64::from(first) + u64::from(count)
    }
}

/// Builds a map from records in order.
#[derive(Debug, Default)]
pub struct BlockMapBuilder {
    /// Each fork's key, in the order of `noted`: searched in place while there are few
    /// (cheaper than hashing, and a segment mostly touches few forks).
    keys: Vec<(RelFile, Fork)>,
    /// Where each fork's blocks are noted in `noted`, once there are many.
    index: HashMap<(RelFile, Fork), usize>,
    noted: Vec<Vec<u32>>,
    events: Vec<MapEvent>,
    starts_incomplete: bool,
    unreadable_records: u64,
}

impl BlockMapBuilder {
    pub fn new(starts_incomplete: bool) -> Self {
        BlockMapBuilder {
            starts_incomplete,
            ..Self::default()
        }
    }

    /// Notes that decoding began inside a record.
    pub fn mark_incomplete_start(&mut self) {
        self.starts_incomplete = true;
    }

    /// Notes a record whose changes could not be read.
    pub fn add_unreadable(&mut self) {
        self.unreadable_records += 1;
    }

    /// Adds one record's changes.
    pub fn add(&mut self, lsn: Lsn, changes: RecordChanges) {
        for block in changes.blocks {
            let at = self.place_of((block.file, block.fork));
            let noted = &mut self.noted[at];
            if noted.last() != Some(&block.block) {
                noted.push(block.block);
                if noted.len() >= COMPACT_AT && noted.len().is_power_of_two() {
                    noted.sort_unstable();
                    noted.dedup();
                }
            }
        }
        self.events.extend(
            changes
                .events
                .into_iter()
                .map(|event| MapEvent { lsn, event }),
        );
    }

    /// Where `key`'s blocks are noted (a new place for a new fork).
    fn place_of(&mut self, key: (RelFile, Fork)) -> usize {
        const SEARCHED_IN_PLACE: usize = 32;
        if self.keys.len() <= SEARCHED_IN_PLACE {
            if let Some(at) = self.keys.iter().position(|k| *k == key) {
                return at;
            }
        } else if let Some(&at) = self.index.get(&key) {
            return at;
        }
        let at = self.keys.len();
        self.keys.push(key);
        self.noted.push(Vec::new());
        if self.keys.len() > SEARCHED_IN_PLACE {
            if self.index.is_empty() {
                self.index
                    .extend(self.keys.iter().enumerate().map(|(at, key)| (*key, at)));
            } else {
                self.index.insert(key, at);
            }
        }
        at
    }

    pub fn finish(self) -> BlockMap {
        let mut forks: Vec<ForkBlocks> = self
            .keys
            .into_iter()
            .zip(self.noted)
            .map(|((file, fork), mut blocks)| {
                blocks.sort_unstable();
                blocks.dedup();
                ForkBlocks {
                    file,
                    fork,
                    ranges: ranges_of(&blocks),
                }
            })
            .collect();
        forks.sort_by_key(|f| (f.file, f.fork));
        BlockMap {
            format: BLOCK_MAP_FORMAT,
            starts_incomplete: self.starts_incomplete,
            unreadable_records: self.unreadable_records,
            forks,
            events: self.events,
        }
    }
}

/// The block map of the records of one segment from `from` on, built as the segment's
/// bytes arrive (`std::io::Write`, so that a fetched segment streams through it): a
/// stretch's first segment, where the whole segment's map would also hold what changed
/// before the stretch began. A record that began before the segment is before `from`.
#[derive(Debug)]
pub struct SegmentMapFrom {
    decoder: WalDecoder,
    builder: BlockMapBuilder,
    from: Lsn,
    until: Lsn,
}

impl SegmentMapFrom {
    pub fn new(segment_start: Lsn, segment_size: u64, block_size: usize, from: Lsn) -> Self {
        Self::resuming(
            WalDecoder::new(segment_start, segment_size, block_size),
            from,
        )
    }

    /// The same from `decoder` (one that goes on with the previous segment's last record).
    pub fn resuming(decoder: WalDecoder, from: Lsn) -> Self {
        SegmentMapFrom {
            decoder: decoder.checking(RecordCheck::TargetRecords).with_changes(),
            builder: BlockMapBuilder::new(false),
            from,
            until: Lsn(u64::MAX),
        }
    }

    /// The same, leaving out the records from `until` on: a segment still being written,
    /// read up to where its bytes are known to be whole.
    pub fn until(mut self, until: Lsn) -> Self {
        self.until = until;
        self
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.decoder.feed(bytes);
        while let Some(record) = self.decoder.next_record() {
            if record.lsn < self.from || record.lsn >= self.until {
                continue;
            }
            match record.changes {
                Some(Ok(changes)) => self.builder.add(record.lsn, changes),
                Some(Err(_)) => self.builder.add_unreadable(),
                None => {}
            }
        }
    }

    /// The map; it starts incomplete where decoding began inside a record it never saw
    /// begin.
    pub fn finish(mut self) -> BlockMap {
        if self.decoder.began_mid_record() {
            self.builder.mark_incomplete_start();
        }
        self.builder.finish()
    }
}

impl std::io::Write for SegmentMapFrom {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // Bounded pieces: decoded records queue per call.
        for piece in bytes.chunks(super::FEED_BYTES) {
            self.feed(piece);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One map of consecutive segments' maps, in order: what [`crate::pg::change_set::merge_maps`]
/// makes of it is what it makes of them. None when a map after the first starts inside a
/// record it never saw begin: that gap is the later segment's to report, so such segments
/// stay apart.
pub fn roll_up<'a>(maps: impl IntoIterator<Item = &'a BlockMap>) -> Option<BlockMap> {
    let mut rolled = BlockMap {
        format: BLOCK_MAP_FORMAT,
        ..BlockMap::default()
    };
    let mut runs: std::collections::BTreeMap<(RelFile, Fork), Vec<[u32; 2]>> = Default::default();
    for (i, map) in maps.into_iter().enumerate() {
        if i == 0 {
            rolled.starts_incomplete = map.starts_incomplete;
        } else if map.starts_incomplete {
            return None;
        }
        rolled.unreadable_records = rolled
            .unreadable_records
            .saturating_add(map.unreadable_records);
        for fork in &map.forks {
            runs.entry((fork.file, fork.fork))
                .or_default()
                .extend_from_slice(&fork.ranges);
        }
        rolled.events.extend(map.events.iter().cloned());
    }
    rolled.forks = runs
        .into_iter()
        .map(|((file, fork), ranges)| ForkBlocks {
            file,
            fork,
            ranges: super::change_set::merge_runs(ranges),
        })
        .collect();
    Some(rolled)
}

/// Runs of consecutive numbers in sorted, distinct `blocks`.
pub(crate) fn ranges_of(blocks: &[u32]) -> Vec<[u32; 2]> {
    let mut ranges: Vec<[u32; 2]> = Vec::new();
    for &block in blocks {
        match ranges.last_mut() {
            Some([first, count]) if u64::from(*first) + u64::from(*count) == u64::from(block) => {
                *count += 1;
            }
            _ => ranges.push([block, 1]),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::wal_blocks::BlockRef;

    #[test]
    fn a_rolled_up_map_merges_as_its_parts_do() {
        let map = |starts_incomplete: bool, ranges: Vec<[u32; 2]>, lsn: u64| BlockMap {
            format: BLOCK_MAP_FORMAT,
            starts_incomplete,
            unreadable_records: 1,
            forks: vec![ForkBlocks {
                file: file(16384),
                fork: Fork::Main,
                ranges,
            }],
            events: vec![MapEvent {
                lsn: Lsn(lsn),
                event: StorageEvent::Created {
                    file: file(lsn as u32),
                    fork: Fork::Main,
                },
            }],
        };
        let parts = [
            map(true, vec![[5, 3], [20, 1]], 100),
            map(false, vec![[0, 6], [21, 4]], 200),
            map(false, vec![[30, 2]], 300),
        ];
        let rolled = roll_up(&parts).unwrap();
        assert!(rolled.starts_incomplete);
        assert_eq!(rolled.unreadable_records, 3);
        assert_eq!(rolled.forks[0].ranges, [[0, 8], [20, 5], [30, 2]]);
        let lsns: Vec<u64> = rolled.events.iter().map(|e| e.lsn.0).collect();
        assert_eq!(lsns, [100, 200, 300]);
        let merged = |maps: &[(&str, Option<&BlockMap>)]| {
            crate::pg::change_set::merge_maps(maps.iter().copied())
        };
        let before = map(false, vec![], 50);
        let separate = merged(&[
            ("a", Some(&before)),
            ("b", Some(&parts[0])),
            ("c", Some(&parts[1])),
            ("d", Some(&parts[2])),
        ]);
        let together = merged(&[("a", Some(&before)), ("b to d", Some(&rolled))]);
        assert_eq!(separate.blocks, together.blocks);
        assert_eq!(separate.created, together.created);
        // A later part that starts inside a record is left apart.
        let gap = map(true, vec![], 400);
        assert!(roll_up([&parts[0], &gap]).is_none());
    }

    fn file(node: u32) -> RelFile {
        RelFile {
            tablespace: 1663,
            database: 5,
            relfilenode: node,
        }
    }

    fn refs(node: u32, fork: Fork, blocks: &[u32]) -> RecordChanges {
        RecordChanges {
            blocks: blocks
                .iter()
                .map(|&block| BlockRef {
                    file: file(node),
                    fork,
                    block,
                    will_init: false,
                    has_image: false,
                })
                .collect(),
            events: Vec::new(),
        }
    }

    #[test]
    fn blocks_merge_into_ranges_per_fork() {
        let mut builder = BlockMapBuilder::new(false);
        builder.add(Lsn(100), refs(16384, Fork::Main, &[5, 3, 4, 4, 9]));
        builder.add(Lsn(200), refs(16384, Fork::VisibilityMap, &[0]));
        builder.add(Lsn(300), refs(16384, Fork::Main, &[6, u32::MAX]));
        builder.add(
            Lsn(400),
            RecordChanges {
                blocks: Vec::new(),
                events: vec![StorageEvent::RelationsDropped {
                    files: vec![file(16390)],
                }],
            },
        );
        let map = builder.finish();
        assert_eq!(
            map.forks,
            vec![
                ForkBlocks {
                    file: file(16384),
                    fork: Fork::Main,
                    ranges: vec![[3, 4], [9, 1], [u32::MAX, 1]],
                },
                ForkBlocks {
                    file: file(16384),
                    fork: Fork::VisibilityMap,
                    ranges: vec![[0, 1]],
                },
            ]
        );
        assert_eq!(map.events.len(), 1);
        assert_eq!(map.events[0].lsn, Lsn(400));
        let main = &map.forks[0];
        for (block, changed) in [(2, false), (3, true), (6, true), (7, false), (9, true)] {
            assert_eq!(main.contains(block), changed, "{block}");
        }
        assert!(main.contains(u32::MAX));
        // Stored and read back.
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(serde_json::from_str::<BlockMap>(&json).unwrap(), map);
    }

    #[test]
    fn many_forks_are_found_again_past_the_in_place_search() {
        let mut builder = BlockMapBuilder::new(false);
        for round in 0..3u32 {
            for node in 0..100 {
                builder.add(Lsn(1), refs(node, Fork::Main, &[round * 10 + node % 3]));
            }
        }
        let map = builder.finish();
        assert_eq!(map.forks.len(), 100);
        for fork in &map.forks {
            let node = fork.file.relfilenode;
            let expected: Vec<[u32; 2]> = (0..3).map(|r| [r * 10 + node % 3, 1]).collect();
            assert_eq!(fork.ranges, expected, "{node}");
        }
    }

    #[test]
    fn a_long_run_of_repeats_stays_small() {
        let mut builder = BlockMapBuilder::new(true);
        for round in 0..(4 * COMPACT_AT as u32) {
            builder.add(
                Lsn(u64::from(round)),
                refs(1, Fork::Main, &[round % 7, 100]),
            );
        }
        let noted: usize = builder.noted.iter().map(Vec::len).sum();
        assert!(noted <= 2 * COMPACT_AT, "{noted}");
        let map = builder.finish();
        assert!(map.starts_incomplete);
        assert_eq!(map.forks[0].ranges, vec![[0, 7], [100, 1]]);
    }
}
