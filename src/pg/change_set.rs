//! What changed in a stretch of WAL, from the block maps of its segments: the blocks to
//! read for a block-incremental backup, the files and database directories to copy whole,
//! and why, when the maps cannot tell, a backup must compare every file instead. Pure: maps
//! in, a change set out.
//!
//! The maps are of whole segments, so a change set may hold more than the stretch changed,
//! never less: a backup reads a few blocks more, never misses one.

use std::collections::{BTreeMap, BTreeSet};

use super::block_map::{BlockMap, runs_contain};
use super::wal_blocks::{Fork, RelFile, StorageEvent};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Changed blocks per relation fork, as `[first, count]` runs, ascending and apart.
    pub blocks: BTreeMap<(RelFile, Fork), Vec<[u32; 2]>>,
    /// Forks created in the stretch: copied whole (a relfilenode used again after a drop
    /// names a new file whatever the parent held under that name).
    pub created: BTreeSet<(RelFile, Fork)>,
    /// Relation files a commit or abort removed.
    pub dropped: BTreeSet<RelFile>,
    /// The smallest size, in blocks, each fork was truncated to: every block from there on
    /// may have changed without a record naming it (PostgreSQL extends files with zero pages
    /// before it logs them), so all of them present now are read.
    pub truncated: BTreeMap<(RelFile, Fork), u32>,
    /// Database directories `(tablespace, database)` copied from a template without WAL for
    /// their blocks, or dropped (and perhaps made again under the same OID): every file in
    /// them is copied whole.
    pub copied_databases: BTreeSet<(u32, u32)>,
    /// Why the maps do not describe the stretch (a segment without a map, a map that
    /// starts inside a record or could not read one, `wal_level = minimal`, a record that
    /// changes files in a way maps do not tell): then every file must be compared.
    pub incomplete: Vec<String>,
    /// `wal_level` was set to minimal in the stretch: an incremental backup must be full.
    pub minimal_wal: bool,
}

impl ChangeSet {
    /// Whether the maps describe every change of the stretch.
    pub fn is_complete(&self) -> bool {
        self.incomplete.is_empty()
    }

    /// Whether `block` of the fork changed (or the whole fork must be copied).
    pub fn changed(&self, file: RelFile, fork: Fork, block: u32) -> bool {
        if self.created.contains(&(file, fork))
            || self
                .copied_databases
                .contains(&(file.tablespace, file.database))
            || self
                .truncated
                .get(&(file, fork))
                .is_some_and(|&limit| block >= limit)
        {
            return true;
        }
        self.blocks
            .get(&(file, fork))
            .is_some_and(|ranges| runs_contain(ranges, block))
    }
}

/// Merges the maps of a stretch's segments, in order; `None` for a segment without a map
/// (named, for the reason). The first map may start inside a record that began before the
/// stretch: that record is before the stretch, so its blocks do not count.
pub fn merge_maps<'a>(
    maps: impl IntoIterator<Item = (&'a str, Option<&'a BlockMap>)>,
) -> ChangeSet {
    let mut set = ChangeSet::default();
    let mut runs: BTreeMap<(RelFile, Fork), Vec<[u32; 2]>> = BTreeMap::new();
    for (i, (segment, map)) in maps.into_iter().enumerate() {
        let Some(map) = map else {
            set.incomplete.push(format!(
                "{segment} has no block map (archived before pitr made them)"
            ));
            continue;
        };
        if map.starts_incomplete && i > 0 {
            set.incomplete.push(format!(
                "the block map of {segment} misses the record its first page continues"
            ));
        }
        if map.unreadable_records > 0 {
            set.incomplete.push(format!(
                "the block map of {segment} could not read {} record(s)",
                map.unreadable_records
            ));
        }
        for fork in &map.forks {
            runs.entry((fork.file, fork.fork))
                .or_default()
                .extend_from_slice(&fork.ranges);
        }
        for event in &map.events {
            match &event.event {
                StorageEvent::Created { file, fork } => {
                    set.created.insert((*file, *fork));
                }
                StorageEvent::RelationsDropped { files } => set.dropped.extend(files),
                StorageEvent::DatabaseCopied {
                    database,
                    tablespace,
                    ..
                } => {
                    set.copied_databases.insert((*tablespace, *database));
                }
                StorageEvent::Truncated {
                    file,
                    blocks,
                    main,
                    fsm,
                    vm,
                } => {
                    let forks = [
                        (*main, Fork::Main),
                        (*fsm, Fork::FreeSpaceMap),
                        (*vm, Fork::VisibilityMap),
                    ];
                    for (_, fork) in forks.into_iter().filter(|(truncated, _)| *truncated) {
                        let limit = set.truncated.entry((*file, fork)).or_insert(*blocks);
                        *limit = (*limit).min(*blocks);
                    }
                }
                StorageEvent::DatabaseDropped {
                    database,
                    tablespaces,
                } => {
                    for tablespace in tablespaces {
                        set.copied_databases.insert((*tablespace, *database));
                    }
                }
                StorageEvent::WalLevel { minimal: true } => {
                    set.minimal_wal = true;
                    set.incomplete.push(format!(
                        "wal_level was set to minimal at {} (files may change without WAL)",
                        event.lsn
                    ));
                }
                StorageEvent::Unknown { rmid, info } => set.incomplete.push(format!(
                    "a record at {} (resource manager {rmid}, info {info:#04x}) changes \
                     relation files in a way block maps do not describe",
                    event.lsn
                )),
                // A database made by WAL logs every block it writes.
                StorageEvent::DatabaseCreated { .. }
                | StorageEvent::WalLevel { minimal: false } => {}
            }
        }
    }
    set.blocks = runs
        .into_iter()
        .map(|(key, ranges)| (key, merge_runs(ranges)))
        .collect();
    set
}

/// Sorted, merged `[first, count]` runs (overlapping and adjacent ones joined).
pub(crate) fn merge_runs(mut ranges: Vec<[u32; 2]>) -> Vec<[u32; 2]> {
    ranges.sort_unstable();
    let mut merged: Vec<[u32; 2]> = Vec::with_capacity(ranges.len());
    for [first, count] in ranges {
        let end = u64::from(first) + u64::from(count);
        match merged.last_mut() {
            Some([last_first, last_count])
                if u64::from(*last_first) + u64::from(*last_count) >= u64::from(first) =>
            {
                let last_end = (u64::from(*last_first) + u64::from(*last_count)).max(end);
                *last_count = u32::try_from(last_end - u64::from(*last_first)).unwrap_or(u32::MAX);
            }
            _ => merged.push([first, count]),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::Lsn;
    use crate::pg::block_map::{BLOCK_MAP_FORMAT, ForkBlocks, MapEvent};

    fn file(node: u32) -> RelFile {
        RelFile {
            tablespace: 1663,
            database: 5,
            relfilenode: node,
        }
    }

    fn map(forks: Vec<ForkBlocks>, events: Vec<StorageEvent>) -> BlockMap {
        BlockMap {
            format: BLOCK_MAP_FORMAT,
            starts_incomplete: false,
            unreadable_records: 0,
            forks,
            events: events
                .into_iter()
                .map(|event| MapEvent {
                    lsn: Lsn(0x100),
                    event,
                })
                .collect(),
        }
    }

    fn blocks(node: u32, ranges: Vec<[u32; 2]>) -> ForkBlocks {
        ForkBlocks {
            file: file(node),
            fork: Fork::Main,
            ranges,
        }
    }

    #[test]
    fn maps_merge_into_one_set() {
        let first = map(
            vec![blocks(1, vec![[0, 2], [10, 1]])],
            vec![StorageEvent::Created {
                file: file(2),
                fork: Fork::Main,
            }],
        );
        let mut second = map(
            vec![
                blocks(1, vec![[1, 3], [11, 1], [20, 1]]),
                blocks(3, vec![[5, 1]]),
            ],
            vec![
                StorageEvent::RelationsDropped {
                    files: vec![file(4)],
                },
                StorageEvent::DatabaseCopied {
                    database: 16400,
                    tablespace: 1663,
                    source_database: 1,
                    source_tablespace: 1663,
                },
            ],
        );
        // Starting inside a record is the stretch's own business only after the first map.
        let mut first_incomplete = first.clone();
        first_incomplete.starts_incomplete = true;
        let set = merge_maps([("A", Some(&first_incomplete)), ("B", Some(&second))]);
        assert!(set.is_complete(), "{:?}", set.incomplete);
        assert_eq!(
            set.blocks[&(file(1), Fork::Main)],
            vec![[0, 4], [10, 2], [20, 1]]
        );
        assert_eq!(set.blocks[&(file(3), Fork::Main)], vec![[5, 1]]);
        assert!(set.changed(file(1), Fork::Main, 3));
        assert!(!set.changed(file(1), Fork::Main, 4));
        assert!(!set.changed(file(1), Fork::FreeSpaceMap, 0));
        // Created forks and copied databases: every block.
        assert!(set.changed(file(2), Fork::Main, 999));
        let copied = RelFile {
            tablespace: 1663,
            database: 16400,
            relfilenode: 1259,
        };
        assert!(set.changed(copied, Fork::VisibilityMap, 7));
        assert_eq!(set.dropped, BTreeSet::from([file(4)]));

        second.starts_incomplete = true;
        let set = merge_maps([("A", Some(&first)), ("B", Some(&second)), ("C", None)]);
        assert_eq!(set.incomplete.len(), 2, "{:?}", set.incomplete);
        assert!(set.incomplete[0].contains("B"));
        assert!(set.incomplete[1].contains("C has no block map"));
    }

    #[test]
    fn minimal_wal_and_unknown_records_make_the_set_incomplete() {
        let minimal = map(vec![], vec![StorageEvent::WalLevel { minimal: true }]);
        let unknown = map(
            vec![],
            vec![StorageEvent::Unknown {
                rmid: 99,
                info: 0x31,
            }],
        );
        let replica = map(vec![], vec![StorageEvent::WalLevel { minimal: false }]);
        assert!(!merge_maps([("A", Some(&minimal))]).is_complete());
        assert!(!merge_maps([("A", Some(&unknown))]).is_complete());
        assert!(merge_maps([("A", Some(&replica))]).is_complete());
    }

    #[test]
    fn runs_join_where_they_touch_or_overlap() {
        assert_eq!(
            merge_runs(vec![[5, 2], [0, 1], [7, 1], [1, 1], [20, 5], [22, 1]]),
            vec![[0, 2], [5, 3], [20, 5]]
        );
        assert_eq!(
            merge_runs(vec![[u32::MAX - 1, 2], [u32::MAX, 1]]),
            vec![[u32::MAX - 1, 2]]
        );
    }
}
