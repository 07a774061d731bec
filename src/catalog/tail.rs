//! The received tail of the WAL: the segment `pitr receive-wal` is filling, uploaded every
//! `--partial-interval` and when the stream stops, so that a restore after the primary's loss
//! reaches the last commit the repository holds.
//!
//! ```text
//! tail/<segment>.<end>.lz4      end: the bytes of the segment it holds, 8 hex digits
//! ```
//!
//! Each upload is a new object (create-only, as everything in the repository); the older
//! tails of the segment, which the newer one holds from its first byte on (the same stream),
//! are removed after it is stored, and all of a segment's tails once the whole segment is
//! archived. Outside `wal/`, so that nothing that lists archived WAL takes a tail for a
//! segment.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::wal::ArchivedFile;
use super::{Catalog, CatalogError, Stored, StoredObject, object_suffix, strip_object_suffix};
use crate::codec;
use crate::pg::{WalFileKind, WalFileName};
use crate::storage::{ObjectMeta, StorageError};

const TAIL_PREFIX: &str = "tail/";

/// A stored tail: the first `end` bytes of `segment`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTail {
    pub segment: WalFileName,
    pub end: u64,
    /// When it was stored, where the repository says.
    pub uploaded: Option<std::time::SystemTime>,
    key: String,
    /// Stored (compressed) size.
    size: u64,
}

impl StoredTail {
    /// The tail as the archived file of its segment, for a restore's view of the archive:
    /// recovery reads it as that segment (archive-get serves it, zero-padded).
    pub fn as_segment(&self) -> ArchivedFile {
        ArchivedFile {
            name: self.segment.clone(),
            object: StoredObject {
                key: self.key.clone(),
                size: self.size,
            },
        }
    }
}

fn tail_stem(segment: &WalFileName, end: u64) -> String {
    format!("{TAIL_PREFIX}{segment}.{end:08X}")
}

/// The tail an object is, if it is one.
fn tail_of(meta: &ObjectMeta) -> Option<StoredTail> {
    let stem = strip_object_suffix(&meta.key)?;
    let (segment, end) = stem.strip_prefix(TAIL_PREFIX)?.split_once('.')?;
    let segment = WalFileName::parse(segment).ok()?;
    if segment.kind() != WalFileKind::Segment || end.len() != 8 {
        return None;
    }
    let end = u64::from_str_radix(end, 16).ok()?;
    Some(StoredTail {
        segment,
        end,
        uploaded: meta.modified,
        key: meta.key.clone(),
        size: meta.size,
    })
}

impl Catalog {
    /// Stores `source` (the first bytes of `segment`, its whole length) as a tail.
    pub async fn store_tail(
        &self,
        segment: &WalFileName,
        source: &Path,
    ) -> Result<StoredTail, CatalogError> {
        let end = std::fs::metadata(source)
            .map_err(|e| CatalogError::Local {
                path: source.display().to_string(),
                source: e,
            })?
            .len();
        let key = tail_stem(segment, end) + object_suffix(self.object_kind().await?);
        let format = self.object_format(&key).await?;
        let path = source.to_owned();
        // Already there: the same bytes of the same stream, uploaded before a restart.
        let (_stored, _, ()): (Stored, _, ()) = self
            .store_encoded(key.clone(), source.display().to_string(), move |staged| {
                let input = File::open(&path).map_err(codec::CodecError::Read)?;
                Ok((codec::encode(&input, staged, format, 1)?, ()))
            })
            .await?;
        let meta = self.storage.head(&key).await.ok();
        Ok(StoredTail {
            segment: segment.clone(),
            end,
            uploaded: meta.as_ref().and_then(|m| m.modified),
            key,
            size: meta.map_or(0, |m| m.size),
        })
    }

    /// Every stored tail, oldest segment first, each segment's shortest first.
    pub async fn tails(&self) -> Result<Vec<StoredTail>, CatalogError> {
        let mut tails: Vec<StoredTail> = self
            .storage
            .list(TAIL_PREFIX)
            .await?
            .iter()
            .filter_map(tail_of)
            .collect();
        tails.sort_by(|a, b| (&a.segment, a.end).cmp(&(&b.segment, b.end)));
        Ok(tails)
    }

    /// The stored tails of `segment` (one listing of its prefix), in no particular order.
    pub async fn tails_of(&self, segment: &WalFileName) -> Result<Vec<StoredTail>, CatalogError> {
        let prefix = format!("{TAIL_PREFIX}{segment}.");
        Ok(self
            .storage
            .list(&prefix)
            .await?
            .iter()
            .filter_map(tail_of)
            .filter(|tail| tail.segment == *segment)
            .collect())
    }

    /// The longest stored tail of `segment`.
    pub async fn newest_tail(
        &self,
        segment: &WalFileName,
    ) -> Result<Option<StoredTail>, CatalogError> {
        Ok(self
            .tails_of(segment)
            .await?
            .into_iter()
            .max_by_key(|tail| tail.end))
    }

    /// Streams a tail's bytes, verified, into `out`.
    pub async fn fetch_tail<W: Write + Send + 'static>(
        &self,
        tail: &StoredTail,
        local: &str,
        out: W,
    ) -> Result<(W, codec::DecodeSummary), CatalogError> {
        self.decode_key(
            &tail.key,
            format!("the received tail of {} ({} bytes)", tail.segment, tail.end),
            local,
            out,
        )
        .await
    }

    /// Removes tails the caller proved redundant (a longer tail of the same segment, or the
    /// whole segment, is stored).
    pub async fn delete_tails(&self, tails: &[StoredTail]) -> Result<(), CatalogError> {
        for tail in tails {
            match self.storage.delete(&tail.key).await {
                Ok(()) | Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keys_name_the_segment_and_its_end() {
        let segment = WalFileName::parse("000000010000000000000005").unwrap();
        let stem = tail_stem(&segment, 0x00A3_F000);
        assert_eq!(stem, "tail/000000010000000000000005.00A3F000");
        let meta = |key: &str| ObjectMeta {
            key: key.to_owned(),
            size: 10,
            modified: None,
        };
        let tail = tail_of(&meta(&format!("{stem}.lz4"))).unwrap();
        assert_eq!((tail.segment, tail.end), (segment, 0x00A3_F000));
        for bad in [
            "tail/000000010000000000000005.lz4",
            "tail/000000010000000000000005.XYZ.lz4",
            "tail/00000002.history.00000010.lz4",
            "wal/000000010000000000000005.00A3F000.lz4",
        ] {
            assert!(tail_of(&meta(bad)).is_none(), "{bad}");
        }
    }
}
