//! Block maps: beside each archived segment, the blocks its records change and its storage
//! events (`pg::block_map`), written by archive-push in the same pass as the summary, for
//! block-incremental backups.
//!
//! ```text
//! blockmap/<TLI><LOG>/<segment>.json            BlockMap of the segment
//! blockmap/<TLI><LOG>/<segment>.partial.json    of a partial segment
//! blockmap/rollup/<TLI>/<first segment>.<span>.json
//!                                               one map of a group of the WAL rollups' spans
//! ```
//! Derived data, outside `wal/` so that nothing listing archived WAL meets it: a missing or
//! unreadable map only means a backup cannot rely on it for that segment. Rollups are
//! written beside the WAL rollups (archive-push, when a group completes), so that the change
//! set of a long stretch merges a few objects, not one per segment; unlike WAL rollups the
//! small ones stay beside a large one, for stretches that begin or end inside it. They go
//! before any segment of their group does.

use serde::{Deserialize, Serialize};

use futures_util::{StreamExt, stream};

use super::rollup::SPANS;
use super::{Catalog, CatalogError};
use crate::pg::block_map::{BLOCK_MAP_FORMAT, BlockMap, SegmentMapFrom, roll_up};
use crate::pg::change_set::{ChangeSet, merge_maps};
use crate::pg::wal_name::xlog_file_name;
use crate::pg::{Lsn, WalFileName};
use crate::storage::{PutMode, PutPayload};

const BLOCK_MAP_PREFIX: &str = "blockmap/";
const BLOCK_MAP_ROLLUP_PREFIX: &str = "blockmap/rollup/";
/// Groups of this many segments or more are rolled up from the rollups inside them.
const SMALL_SPAN: u64 = SPANS[SPANS.len() - 1];

pub(super) fn block_map_key(name: &WalFileName) -> String {
    format!("{BLOCK_MAP_PREFIX}{}/{name}.json", &name.as_str()[..16])
}

pub(super) fn block_map_rollup_key(
    timeline: u32,
    first: u64,
    span: u64,
    segment_size: u64,
) -> String {
    format!(
        "{BLOCK_MAP_ROLLUP_PREFIX}{timeline:08X}/{}.{span}.json",
        xlog_file_name(timeline, first, segment_size)
    )
}

/// The stored form of a rollup: the map, and the group it is of.
#[derive(Serialize, Deserialize)]
struct StoredRollup {
    first_segment: String,
    span: u64,
    #[serde(flatten)]
    map: BlockMap,
}

/// A stretch of consecutive segments read as one map: a group's rollup, or one segment's.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// `span` segments from `at`, a group of the rollups' spans.
    Group {
        at: usize,
        span: u64,
    },
    Segment(usize),
}

/// How `names` (consecutive segments) are read: whole groups by their rollups, the largest
/// first, the segments outside any by their own maps.
fn pieces(names: &[WalFileName], segment_size: u64) -> Vec<Piece> {
    let segno = |at: usize| names[at].segment_number(segment_size);
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < names.len() {
        let group = segno(at).and_then(|first| {
            SPANS.iter().copied().find(|&span| {
                let end = at + span as usize;
                first % span == 0
                    && end <= names.len()
                    && (at..end).all(|i| {
                        segno(i) == Some(first + (i - at) as u64)
                            && names[i].timeline() == names[at].timeline()
                    })
            })
        });
        match group {
            Some(span) => {
                pieces.push(Piece::Group { at, span });
                at += span as usize;
            }
            None => {
                pieces.push(Piece::Segment(at));
                at += 1;
            }
        }
    }
    pieces
}

/// The stored form: the map, and the segment it is of (a copy under another segment's key
/// is caught on read).
#[derive(Serialize, Deserialize)]
struct StoredBlockMap {
    segment: String,
    #[serde(flatten)]
    map: BlockMap,
}

impl Catalog {
    /// Records a segment's block map, replacing any earlier one.
    pub async fn put_block_map(
        &self,
        name: &WalFileName,
        map: &BlockMap,
    ) -> Result<(), CatalogError> {
        let key = block_map_key(name);
        let stored = StoredBlockMap {
            segment: name.to_string(),
            map: map.clone(),
        };
        let json = self.seal_meta(&key, &stored).await?;
        self.storage
            .put(&key, PutPayload::from_bytes(json), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// A segment's block map; none when absent, damaged, of another format or another
    /// segment's.
    pub async fn block_map(&self, name: &WalFileName) -> Result<Option<BlockMap>, CatalogError> {
        match self
            .read_meta::<StoredBlockMap>(&block_map_key(name))
            .await?
        {
            Some(Ok(stored))
                if stored.segment == name.as_str() && stored.map.format == BLOCK_MAP_FORMAT =>
            {
                Ok(Some(stored.map))
            }
            Some(Err(reason)) => {
                tracing::warn!("the block map of {name} is damaged ({reason})");
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// What changed in the WAL from `from` to the end of `segments` (the stretch's segments,
    /// in order, the first holding `from`): the first segment's map from `from` on
    /// ([`Catalog::block_map_from`]), then the block maps of the others, read `jobs` at a
    /// time.
    pub async fn change_set(
        &self,
        from: Lsn,
        segments: &[WalFileName],
        segment_size: u64,
        block_size: usize,
        jobs: usize,
    ) -> Result<ChangeSet, CatalogError> {
        let Some((first, rest)) = segments.split_first() else {
            return Ok(ChangeSet::default());
        };
        let mut maps = vec![(
            first.to_string(),
            self.block_map_from(first, from, segment_size, block_size)
                .await?,
        )];
        maps.extend(self.block_maps(rest, segment_size, jobs).await?);
        Ok(merge_maps(
            maps.iter()
                .map(|(label, map)| (label.as_str(), map.as_ref())),
        ))
    }

    /// The map of the records of archived segment `name` from `from` on; none when the
    /// segment is not archived. Its stored map serves when no record starts in it before
    /// `from` (the record it carries in from the segment before adds blocks, never hides
    /// one); otherwise the records are decoded from the archived copy.
    pub async fn block_map_from(
        &self,
        name: &WalFileName,
        from: Lsn,
        segment_size: u64,
        block_size: usize,
    ) -> Result<Option<BlockMap>, CatalogError> {
        let Some(start) = name.start_lsn(segment_size) else {
            return Ok(None);
        };
        let first_record = self
            .segment_summary(name)
            .await?
            .and_then(|summary| summary.first_record);
        let nothing_before = from.0 <= start.0 + LONG_PAGE_HEADER
            || first_record.is_some_and(|r| r >= start && r >= from);
        if nothing_before && let Some(stored) = self.block_map(name).await? {
            return Ok(Some(stored));
        }
        let builder = SegmentMapFrom::new(start, segment_size, block_size, from);
        match self.fetch_wal(name, "a block map", builder).await {
            Ok((builder, _)) => Ok(Some(builder.finish())),
            Err(CatalogError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stored maps of consecutive segments `names`, in order, each with what it is of
    /// (a segment, or a group of them): rolled-up groups where whole groups are in `names`
    /// and their rollups serve, the segments' own maps elsewhere (none where a segment has
    /// no map), read `jobs` at a time.
    pub async fn block_maps(
        &self,
        names: &[WalFileName],
        segment_size: u64,
        jobs: usize,
    ) -> Result<Vec<(String, Option<BlockMap>)>, CatalogError> {
        let read = |piece: Piece| async move {
            let range = match piece {
                Piece::Segment(at) => at..at + 1,
                Piece::Group { at, span } => {
                    let name = &names[at];
                    let first = name.segment_number(segment_size).unwrap_or_default();
                    let end = at + span as usize;
                    if let Some(map) = self
                        .block_map_rollup(name.timeline(), first, span, segment_size)
                        .await?
                    {
                        let label = format!("{name} to {}", names[end - 1]);
                        return Ok(vec![(label, Some(map))]);
                    }
                    at..end
                }
            };
            let maps = self.segment_maps(&names[range.clone()], jobs).await?;
            Ok::<_, CatalogError>(
                names[range]
                    .iter()
                    .map(|name| name.to_string())
                    .zip(maps)
                    .collect::<Vec<_>>(),
            )
        };
        let read: Vec<Vec<(String, Option<BlockMap>)>> = stream::iter(pieces(names, segment_size))
            .map(read)
            .buffered(jobs.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(read.into_iter().flatten().collect())
    }

    /// The stored maps of `names`, in order, read `jobs` at a time (none where a segment
    /// has no map).
    async fn segment_maps(
        &self,
        names: &[WalFileName],
        jobs: usize,
    ) -> Result<Vec<Option<BlockMap>>, CatalogError> {
        stream::iter(names)
            .map(|name| self.block_map(name))
            .buffered(jobs.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// The rollup of a group's block maps; none when absent, damaged or of another group.
    async fn block_map_rollup(
        &self,
        timeline: u32,
        first: u64,
        span: u64,
        segment_size: u64,
    ) -> Result<Option<BlockMap>, CatalogError> {
        let key = block_map_rollup_key(timeline, first, span, segment_size);
        match self.read_meta::<StoredRollup>(&key).await? {
            Some(Ok(stored))
                if stored.first_segment == xlog_file_name(timeline, first, segment_size)
                    && stored.span == span
                    && stored.map.format == BLOCK_MAP_FORMAT =>
            {
                Ok(Some(stored.map))
            }
            Some(Err(reason)) => {
                tracing::warn!("the block map rollup {key} is damaged ({reason})");
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Writes one map of the group of `span` segments from `first` when every one has its
    /// map (a large group from the small rollups inside it where they are all there);
    /// returns whether it was written.
    pub async fn roll_up_block_maps(
        &self,
        timeline: u32,
        first: u64,
        span: u64,
        segment_size: u64,
    ) -> Result<bool, CatalogError> {
        let mut parts: Option<Vec<Option<BlockMap>>> = None;
        if span > SMALL_SPAN {
            let small: Vec<Option<BlockMap>> =
                stream::iter((first..first + span).step_by(SMALL_SPAN as usize))
                    .map(|small| self.block_map_rollup(timeline, small, SMALL_SPAN, segment_size))
                    .buffered(READ_AHEAD)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<_, _>>()?;
            parts = small.iter().all(Option::is_some).then_some(small);
        }
        let parts = match parts {
            Some(parts) => parts,
            None => {
                let names: Option<Vec<WalFileName>> = (first..first + span)
                    .map(|segno| WalFileName::segment(timeline, segno, segment_size))
                    .collect();
                let Some(names) = names else {
                    return Ok(false);
                };
                self.segment_maps(&names, READ_AHEAD).await?
            }
        };
        let Some(parts) = parts.into_iter().collect::<Option<Vec<BlockMap>>>() else {
            return Ok(false);
        };
        let Some(map) = roll_up(&parts) else {
            return Ok(false);
        };
        let key = block_map_rollup_key(timeline, first, span, segment_size);
        let stored = StoredRollup {
            first_segment: xlog_file_name(timeline, first, segment_size),
            span,
            map,
        };
        let json = self.seal_meta(&key, &stored).await?;
        self.storage
            .put(&key, PutPayload::from_bytes(json), PutMode::Overwrite)
            .await?;
        Ok(true)
    }
}

/// Maps read at once when a rollup is built.
const READ_AHEAD: usize = 16;

/// A segment's first page header (`SizeOfXLogLongPHD`): its first record starts after it.
const LONG_PAGE_HEADER: u64 = 40;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::RepositoryIdentity;
    use crate::pg::block_map::{ForkBlocks, MapEvent};
    use crate::pg::wal_blocks::{Fork, RelFile, StorageEvent};
    use crate::storage::Storage;
    use std::sync::Arc;

    const SEGMENT: u64 = 16 << 20;

    fn segment(segno: u64) -> WalFileName {
        WalFileName::segment(1, segno, SEGMENT).unwrap()
    }

    /// A map of segment `segno`: blocks of two relations it shares with its neighbours, and
    /// every fifth one cuts a relation.
    fn map_of(segno: u64) -> BlockMap {
        let file = |node| RelFile {
            tablespace: 1663,
            database: 5,
            relfilenode: node,
        };
        let block = segno as u32;
        BlockMap {
            format: BLOCK_MAP_FORMAT,
            starts_incomplete: false,
            unreadable_records: u64::from(segno == 0x33),
            forks: vec![
                ForkBlocks {
                    file: file(16384),
                    fork: Fork::Main,
                    ranges: vec![[block * 2, 3]],
                },
                ForkBlocks {
                    file: file(16384 + block % 3),
                    fork: Fork::Main,
                    ranges: vec![[block, 1], [1000, 2]],
                },
            ],
            events: match segno % 5 {
                0 => vec![MapEvent {
                    lsn: Lsn(segno * SEGMENT + 100),
                    event: StorageEvent::Truncated {
                        file: file(16390),
                        blocks: block,
                        main: true,
                        fsm: false,
                        vm: true,
                    },
                }],
                _ => Vec::new(),
            },
        }
    }

    #[test]
    fn a_stretch_is_read_by_the_whole_groups_in_it() {
        let names: Vec<WalFileName> = (0xF2..0x212).map(segment).collect();
        let pieces = pieces(&names, SEGMENT);
        // 0xF2..0xFF alone, 0x100..0x1FF as one group, 0x200..0x20F as one, 0x210, 0x211.
        let mut expected: Vec<Piece> = (0..14).map(Piece::Segment).collect();
        expected.push(Piece::Group { at: 14, span: 256 });
        expected.push(Piece::Group { at: 270, span: 16 });
        expected.extend([Piece::Segment(286), Piece::Segment(287)]);
        assert_eq!(pieces, expected);
        // A timeline switch inside a group keeps it apart.
        let mut switched = names.clone();
        switched[280] = WalFileName::segment(2, 0xF2 + 280, SEGMENT).unwrap();
        assert!(!self::pieces(&switched, SEGMENT).contains(&Piece::Group { at: 270, span: 16 }));
    }

    #[tokio::test]
    async fn rolled_up_maps_give_the_change_set_their_segments_give() {
        let store = Arc::new(crate::storage::MemoryStorage::new("maps"));
        let catalog =
            Catalog::new(store.clone()).knowing(&RepositoryIdentity::for_tests(SEGMENT, 8192));
        for segno in 0x10..0x40 {
            catalog
                .put_block_map(&segment(segno), &map_of(segno))
                .await
                .unwrap();
        }
        // 0x30's group lacks a map: it has no rollup.
        store.delete(&block_map_key(&segment(0x3A))).await.unwrap();
        for first in [0x10, 0x20, 0x30] {
            let written = catalog
                .roll_up_block_maps(1, first, 16, SEGMENT)
                .await
                .unwrap();
            assert_eq!(written, first != 0x30, "group {first:X}");
        }
        let names: Vec<WalFileName> = (0x12..0x3C).map(segment).collect();
        let read = catalog.block_maps(&names, SEGMENT, 4).await.unwrap();
        let labels: Vec<&str> = read.iter().map(|(label, _)| label.as_str()).collect();
        assert_eq!(labels.len(), 14 + 1 + 12);
        assert_eq!(
            labels[14],
            "000000010000000000000020 to 00000001000000000000002F"
        );
        let each: Vec<(String, Option<BlockMap>)> = names
            .iter()
            .map(|name| {
                let segno = name.segment_number(SEGMENT).unwrap();
                (name.to_string(), (segno != 0x3A).then(|| map_of(segno)))
            })
            .collect();
        let merge = |maps: &[(String, Option<BlockMap>)]| {
            crate::pg::change_set::merge_maps(
                maps.iter()
                    .map(|(label, map)| (label.as_str(), map.as_ref())),
            )
        };
        let (rolled, separate) = (merge(&read), merge(&each));
        assert_eq!(rolled.blocks, separate.blocks);
        assert_eq!(rolled.truncated, separate.truncated);
        assert_eq!(rolled.incomplete.len(), separate.incomplete.len());
        // A damaged rollup: its group is read segment by segment.
        let key = block_map_rollup_key(1, 0x20, 16, SEGMENT);
        store
            .put(
                &key,
                PutPayload::from_bytes("{".to_owned()),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let read = catalog.block_maps(&names, SEGMENT, 4).await.unwrap();
        assert_eq!(read.len(), names.len());
        assert_eq!(merge(&read), separate);
        // Removing a segment of a group removes the group's rollups.
        catalog
            .roll_up_block_maps(1, 0x20, 16, SEGMENT)
            .await
            .unwrap();
        store
            .put(
                "wal/0000000100000000/000000010000000000000025.lz4",
                PutPayload::from_bytes("x".to_owned()),
                PutMode::Create,
            )
            .await
            .unwrap();
        let listing = catalog.wal_listing(SEGMENT).await.unwrap();
        let files: Vec<_> = listing.segments.values().cloned().collect();
        catalog.delete_wal_files(&files, SEGMENT).await.unwrap();
        assert!(store.object(&key).is_none());
        assert!(
            store
                .object(&block_map_rollup_key(1, 0x10, 16, SEGMENT))
                .is_some()
        );
    }

    #[test]
    fn block_map_keys_sit_outside_wal() {
        let name = WalFileName::parse("000000010000000A000000FF").unwrap();
        assert_eq!(
            block_map_key(&name),
            "blockmap/000000010000000A/000000010000000A000000FF.json"
        );
        let partial = WalFileName::parse("000000020000000000000003.partial").unwrap();
        assert_eq!(
            block_map_key(&partial),
            "blockmap/0000000200000000/000000020000000000000003.partial.json"
        );
    }
}
