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
    /// in order, the first holding `from`): the first segment's records from `from` on,
    /// decoded from its archived copy, then the block maps of the others, read `jobs` at a
    /// time.
    pub async fn change_set(
        &self,
        from: Lsn,
        segments: &[WalFileName],
        segment_size: u64,
        block_size: usize,
        jobs: usize,
    ) -> Result<ChangeSet, CatalogError> {
        use futures_util::StreamExt;
        let Some((first, rest)) = segments.split_first() else {
            return Ok(ChangeSet::default());
        };
        let first_map = match first.start_lsn(segment_size) {
            Some(start) => {
                let builder = SegmentMapFrom::new(start, segment_size, block_size, from);
                match self.fetch_wal(first, "a block map", builder).await {
                    Ok((builder, _)) => Some(builder.finish()),
                    Err(CatalogError::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let mut maps: Vec<Option<BlockMap>> = vec![first_map];
        let others: Vec<Option<BlockMap>> = futures_util::stream::iter(rest)
            .map(|name| self.block_map(name))
            .buffered(jobs.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        maps.extend(others);
        Ok(merge_maps(
            segments
                .iter()
                .map(WalFileName::as_str)
                .zip(maps.iter().map(Option::as_ref)),
        ))
    }
}

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
