//! What a block-incremental backup takes of one file (issue 27): nothing (the parent's copy
//! stands), some blocks, or the whole file, and why. Pure: the file's path and sizes and the
//! stretch's change set in, a plan out.

use super::Lsn;
use super::change_set::ChangeSet;
use super::relpath::relation_segment_of;
use super::wal_blocks::Fork;

/// What to take of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilePlan {
    /// The parent's copy is the file's content.
    Unchanged,
    /// Read these blocks (numbers within the file, ascending); every other block is the
    /// parent's, and the file is cut or extended to its size now.
    Blocks(Vec<u32>),
    /// Copy the whole file.
    Whole(WholeReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WholeReason {
    /// Not a relation file (configuration, catalogs' maps, pg_xact…): small, and not
    /// described by block references.
    NotARelation,
    /// Free space map, visibility map or init fork: small, and not reliably WAL-logged.
    SmallFork,
    /// Not in the parent.
    New,
    /// Its fork was created (or its relfilenode used again) in the stretch.
    Created,
    /// Its database was copied from a template without WAL for its blocks.
    DatabaseCopied,
    /// The change set cannot tell (see `ChangeSet::incomplete`).
    Unknown,
}

/// The plan for the file at `path` (relative to the data directory) of `size` bytes, whose
/// parent copy had `parent_size` bytes (None: the parent has no such file), given what
/// changed since the parent's start. `blocks_per_segment`: `RELSEG_SIZE`.
pub fn plan_file(
    path: &str,
    size: u64,
    parent_size: Option<u64>,
    changes: &ChangeSet,
    block_size: u32,
    blocks_per_segment: u32,
) -> FilePlan {
    let Some(relation) = relation_segment_of(path) else {
        return FilePlan::Whole(WholeReason::NotARelation);
    };
    if relation.fork != Fork::Main {
        return FilePlan::Whole(WholeReason::SmallFork);
    }
    let Some(parent_size) = parent_size else {
        return FilePlan::Whole(WholeReason::New);
    };
    if !changes.is_complete() {
        return FilePlan::Whole(WholeReason::Unknown);
    }
    let file = relation.file;
    // Dropped and back (a relfilenode used again) without its creation seen: whole, too.
    if changes.created.contains(&(file, relation.fork)) || changes.dropped.contains(&file) {
        return FilePlan::Whole(WholeReason::Created);
    }
    if changes
        .copied_databases
        .contains(&(file.tablespace, file.database))
    {
        return FilePlan::Whole(WholeReason::DatabaseCopied);
    }
    let block_size = u64::from(block_size);
    let blocks_now = size.div_ceil(block_size);
    let first = u64::from(relation.segment) * u64::from(blocks_per_segment);
    // Truncated in the stretch: every block from the limit on may be new without a record.
    let truncated_at = changes
        .truncated
        .get(&(file, relation.fork))
        .map(|&limit| u64::from(limit).saturating_sub(first));
    let blocks_before = parent_size
        .div_ceil(block_size)
        .min(truncated_at.unwrap_or(u64::MAX));
    let mut blocks: Vec<u32> = Vec::new();
    if let Some(ranges) = changes.blocks.get(&(file, relation.fork)) {
        let end = first + blocks_now;
        for &[start, count] in ranges {
            let (from, to) = (
                u64::from(start).max(first),
                (u64::from(start) + u64::from(count)).min(end),
            );
            blocks.extend((from..to).map(|b| (b - first) as u32));
        }
    }
    // Blocks past the parent's end (or a truncation) that no record names: PostgreSQL
    // extends files with zero pages before it logs them; read them as they are.
    let mut past_parent = (blocks_before..blocks_now)
        .map(|b| b as u32)
        .filter(|b| blocks.binary_search(b).is_err())
        .peekable();
    if past_parent.peek().is_some() {
        let extra: Vec<u32> = past_parent.collect();
        blocks.extend(extra);
        blocks.sort_unstable();
    }
    if blocks.is_empty() && size == parent_size && truncated_at.is_none() {
        FilePlan::Unchanged
    } else {
        FilePlan::Blocks(blocks)
    }
}

/// The blocks of `pages` (consecutive pages of a relation file, the first being block
/// `first_block`) whose page LSN is `since` or later: the fallback where block maps cannot
/// tell what changed (WAL-G's delta, pg_probackup's PAGE mode read every page the same way).
/// Every WAL-logged change of a page sets its LSN to the record's; a page of zeros (an
/// extension not yet logged) has none and is not counted here.
pub fn pages_changed_since(
    pages: &[u8],
    first_block: u32,
    block_size: usize,
    since: Lsn,
) -> Vec<u32> {
    pages
        .chunks(block_size)
        .zip(first_block..)
        .filter(|(page, _)| page.len() >= 8 && page_lsn(page) >= since)
        .map(|(_, block)| block)
        .collect()
}

/// `pd_lsn`: the page header's first 8 bytes, the LSN's high and low halves.
fn page_lsn(page: &[u8]) -> Lsn {
    let high = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    let low = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    Lsn((u64::from(high) << 32) | u64::from(low))
}

/// Why a backup asked to be incremental must be full: what the parent and the cluster
/// now disagree on, as the backup knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentCheck {
    pub parent_system_identifier: u64,
    pub system_identifier: u64,
    pub parent_major: u32,
    pub major: u32,
    pub parent_checksums: bool,
    pub checksums: bool,
    /// The parent's timeline is this backup's or one of its ancestors, branching off
    /// after the parent's start.
    pub timeline_connects: bool,
}

/// The reason to take a full backup instead, or None when an incremental one may build on
/// the parent.
pub fn full_backup_reason(check: &ParentCheck) -> Option<String> {
    if check.parent_system_identifier != check.system_identifier {
        return Some(format!(
            "the parent belongs to another cluster (system identifier {}, now {})",
            check.parent_system_identifier, check.system_identifier
        ));
    }
    if check.parent_major != check.major {
        return Some(format!(
            "the parent is of PostgreSQL {}, the cluster now runs {}",
            check.parent_major, check.major
        ));
    }
    if check.parent_checksums != check.checksums {
        return Some(format!(
            "data checksums were turned {} since the parent",
            if check.checksums { "on" } else { "off" }
        ));
    }
    if !check.timeline_connects {
        return Some(
            "the cluster's timeline history does not pass through the parent's start".into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::wal_blocks::RelFile;

    const BLOCK: u32 = 8192;
    const SEGMENT: u32 = 131_072;

    fn file(node: u32) -> RelFile {
        RelFile {
            tablespace: 1663,
            database: 5,
            relfilenode: node,
        }
    }

    fn changes() -> ChangeSet {
        let mut set = ChangeSet::default();
        set.blocks
            .insert((file(100), Fork::Main), vec![[2, 2], [131_071, 3]]);
        set.created.insert((file(200), Fork::Main));
        set.dropped.insert(file(300));
        set.copied_databases.insert((1663, 16400));
        set
    }

    fn plan(path: &str, size: u64, parent: Option<u64>) -> FilePlan {
        plan_file(path, size, parent, &changes(), BLOCK, SEGMENT)
    }

    #[test]
    fn every_block_from_a_truncation_on_is_taken() {
        let mut set = changes();
        // Truncated to 4 blocks, then extended again to 9 with zero pages no record names.
        set.truncated.insert((file(100), Fork::Main), 4);
        let size = 9 * u64::from(BLOCK);
        assert_eq!(
            plan_file("base/5/100", size, Some(size), &set, BLOCK, SEGMENT),
            FilePlan::Blocks(vec![2, 3, 4, 5, 6, 7, 8])
        );
        // The same size as the parent, no block named: still read from the limit on.
        set.truncated.insert((file(101), Fork::Main), 7);
        assert_eq!(
            plan_file("base/5/101", size, Some(size), &set, BLOCK, SEGMENT),
            FilePlan::Blocks(vec![7, 8])
        );
        assert!(set.changed(file(101), Fork::Main, 7) && !set.changed(file(101), Fork::Main, 6));
    }

    #[test]
    fn changed_blocks_are_taken_per_segment_file() {
        let size = 10 * u64::from(BLOCK);
        assert_eq!(
            plan("base/5/100", size, Some(size)),
            FilePlan::Blocks(vec![2, 3])
        );
        // The second 1 GiB file holds blocks 131072 on: the run across the boundary.
        assert_eq!(
            plan("base/5/100.1", size, Some(size)),
            FilePlan::Blocks(vec![0, 1])
        );
        // A relation without changes.
        assert_eq!(plan("base/5/101", size, Some(size)), FilePlan::Unchanged);
        // Grown: the new blocks too; shrunk: only changed blocks within the new size.
        assert_eq!(
            plan("base/5/101", size + 2 * u64::from(BLOCK), Some(size)),
            FilePlan::Blocks(vec![10, 11])
        );
        assert_eq!(
            plan("base/5/100", 3 * u64::from(BLOCK), Some(size)),
            FilePlan::Blocks(vec![2])
        );
        assert_eq!(
            plan("base/5/101", 3 * u64::from(BLOCK), Some(size)),
            FilePlan::Blocks(vec![])
        );
    }

    #[test]
    fn pages_are_taken_by_their_lsn() {
        let page = |lsn: u64| {
            let mut page = vec![0u8; BLOCK as usize];
            page[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
            page[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
            page
        };
        let pages: Vec<u8> = [0x1_0000_0000u64, 0x2_0000_0010, 0, 0x2_0000_0000, 0x9]
            .iter()
            .flat_map(|&lsn| page(lsn))
            .collect();
        assert_eq!(
            pages_changed_since(&pages, 40, BLOCK as usize, Lsn(0x2_0000_0000)),
            vec![41, 43]
        );
        assert!(pages_changed_since(&[], 0, BLOCK as usize, Lsn(1)).is_empty());
    }

    #[test]
    fn a_full_backup_is_forced_where_the_parent_does_not_fit() {
        let fits = ParentCheck {
            parent_system_identifier: 7,
            system_identifier: 7,
            parent_major: 15,
            major: 15,
            parent_checksums: true,
            checksums: true,
            timeline_connects: true,
        };
        assert_eq!(full_backup_reason(&fits), None);
        let cases = [
            (
                ParentCheck {
                    system_identifier: 8,
                    ..fits.clone()
                },
                "another cluster",
            ),
            (
                ParentCheck {
                    major: 16,
                    ..fits.clone()
                },
                "PostgreSQL 15",
            ),
            (
                ParentCheck {
                    checksums: false,
                    ..fits.clone()
                },
                "turned off",
            ),
            (
                ParentCheck {
                    timeline_connects: false,
                    ..fits.clone()
                },
                "timeline history",
            ),
        ];
        for (check, said) in cases {
            let reason = full_backup_reason(&check).unwrap();
            assert!(reason.contains(said), "{reason}");
        }
    }

    #[test]
    fn whole_files_and_why() {
        let size = u64::from(BLOCK);
        let whole = |reason| FilePlan::Whole(reason);
        assert_eq!(
            plan("postgresql.conf", 10, Some(10)),
            whole(WholeReason::NotARelation)
        );
        assert_eq!(
            plan("base/5/100_vm", size, Some(size)),
            whole(WholeReason::SmallFork)
        );
        assert_eq!(plan("base/5/100", size, None), whole(WholeReason::New));
        assert_eq!(
            plan("base/5/200", size, Some(size)),
            whole(WholeReason::Created)
        );
        assert_eq!(
            plan("base/5/300", size, Some(size)),
            whole(WholeReason::Created)
        );
        assert_eq!(
            plan("base/16400/1259", size, Some(size)),
            whole(WholeReason::DatabaseCopied)
        );
        let mut unknown = changes();
        unknown.incomplete.push("no map".into());
        assert_eq!(
            plan_file("base/5/101", size, Some(size), &unknown, BLOCK, SEGMENT),
            whole(WholeReason::Unknown)
        );
    }
}
