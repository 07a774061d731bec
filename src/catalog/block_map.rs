//! Block maps: beside each archived segment, the blocks its records change and its storage
//! events (`pg::block_map`), written by archive-push in the same pass as the summary, for
//! block-incremental backups.
//!
//! ```text
//! blockmap/<TLI><LOG>/<segment>.json            BlockMap of the segment
//! blockmap/<TLI><LOG>/<segment>.partial.json    of a partial segment
//! ```
//! Derived data, outside `wal/` so that nothing listing archived WAL meets it: a missing or
//! unreadable map only means a backup cannot rely on it for that segment.

use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};
use crate::pg::block_map::{BLOCK_MAP_FORMAT, BlockMap, SegmentMapFrom};
use crate::pg::change_set::{ChangeSet, merge_maps};
use crate::pg::{Lsn, WalFileName};
use crate::storage::{PutMode, PutPayload};

const BLOCK_MAP_PREFIX: &str = "blockmap/";

pub(super) fn block_map_key(name: &WalFileName) -> String {
    format!("{BLOCK_MAP_PREFIX}{}/{name}.json", &name.as_str()[..16])
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
        let mut maps = vec![
            self.block_map_from(first, from, segment_size, block_size)
                .await?,
        ];
        maps.extend(self.block_maps(rest, jobs).await?);
        Ok(merge_maps(
            segments
                .iter()
                .map(WalFileName::as_str)
                .zip(maps.iter().map(Option::as_ref)),
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

    /// The stored maps of `names`, in order, read `jobs` at a time (none where a segment
    /// has no map).
    pub async fn block_maps(
        &self,
        names: &[WalFileName],
        jobs: usize,
    ) -> Result<Vec<Option<BlockMap>>, CatalogError> {
        use futures_util::StreamExt;
        futures_util::stream::iter(names)
            .map(|name| self.block_map(name))
            .buffered(jobs.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }
}

/// A segment's first page header (`SizeOfXLogLongPHD`): its first record starts after it.
const LONG_PAGE_HEADER: u64 = 40;

#[cfg(test)]
mod tests {
    use super::*;

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
