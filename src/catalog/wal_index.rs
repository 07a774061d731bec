//! The WAL index: a small JSON object beside each archived segment, written by archive-push
//! (or later by `pitr verify`) so that the recovery window and a restore's reach are known
//! without reading WAL again.
//!
//! ```text
//! wal/<TLI><LOG>/<segment>.summary.json            SegmentSummary of <segment>.lz4 (.zst)
//! wal/<TLI><LOG>/<segment>.partial.summary.json    of a partial segment
//! wal/history/<TLI>.history.summary.json           the history file's switch points
//! ```
//! Summaries are derived data: rewritten freely, and a missing or unreadable one only means
//! the segment is indexed again from its WAL.

use serde::{Deserialize, Serialize};

use super::wal::{WAL_PREFIX, wal_stem};
use super::{Catalog, CatalogError};
use crate::pg::timeline::HistoryEntry;
use crate::pg::wal_summary::SegmentSummary;
use crate::pg::{Lsn, WalFileKind, WalFileName};
use crate::storage::{PutMode, PutPayload};

pub const SUMMARY_FORMAT: u32 = 1;
const SUMMARY_SUFFIX: &str = ".summary.json";

/// The key of the summary of an archived segment, partial segment or history file.
pub(super) fn summary_key(name: &WalFileName) -> String {
    wal_stem(name) + SUMMARY_SUFFIX
}

/// The WAL file whose summary a key names, if it names one.
pub(super) fn wal_name_of_summary_key(key: &str) -> Option<WalFileName> {
    let leaf = key.strip_prefix(WAL_PREFIX)?.rsplit('/').next()?;
    let name = WalFileName::parse(leaf.strip_suffix(SUMMARY_SUFFIX)?).ok()?;
    (summary_key(&name) == key).then_some(name)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSegmentSummary {
    pub format: u32,
    pub segment: String,
    #[serde(flatten)]
    pub summary: SegmentSummary,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHistorySummary {
    pub format: u32,
    pub timeline: u32,
    /// Ancestors, oldest first, each with the LSN where its child branched off.
    pub switch_points: Vec<SwitchPoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchPoint {
    pub timeline: u32,
    pub switchpoint: Lsn,
}

impl StoredHistorySummary {
    pub fn new(timeline: u32, entries: &[HistoryEntry]) -> Self {
        StoredHistorySummary {
            format: SUMMARY_FORMAT,
            timeline,
            switch_points: entries
                .iter()
                .map(|e| SwitchPoint {
                    timeline: e.timeline,
                    switchpoint: e.switchpoint,
                })
                .collect(),
        }
    }
}

/// A summary carries the name of the file it summarises: one copied over another file's
/// key (a sync tool renaming, objects restored from a copy) is caught on every read.
fn misnamed_segment_summary(name: &WalFileName, stored: &StoredSegmentSummary) -> Option<String> {
    (stored.segment != name.as_str()).then(|| format!("holds the summary of {}", stored.segment))
}

impl Catalog {
    /// Records what a segment holds, replacing any earlier summary of it.
    pub async fn put_segment_summary(
        &self,
        name: &WalFileName,
        summary: &SegmentSummary,
    ) -> Result<(), CatalogError> {
        let stored = StoredSegmentSummary {
            format: SUMMARY_FORMAT,
            segment: name.to_string(),
            summary: summary.clone(),
        };
        self.put_summary(name, &stored).await
    }

    pub async fn put_history_summary(
        &self,
        name: &WalFileName,
        entries: &[HistoryEntry],
    ) -> Result<(), CatalogError> {
        debug_assert_eq!(name.kind(), WalFileKind::History);
        let stored = StoredHistorySummary::new(name.timeline(), entries);
        self.put_summary(name, &stored).await
    }

    async fn put_summary(
        &self,
        name: &WalFileName,
        stored: &impl Serialize,
    ) -> Result<(), CatalogError> {
        let key = summary_key(name);
        let json = self.seal_meta(&key, stored).await?;
        self.storage
            .put(&key, PutPayload::from_bytes(json), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// The stored summary of a segment; none if absent, damaged, of another format or
    /// another segment's (then the segment is indexed again from its WAL).
    pub async fn segment_summary(
        &self,
        name: &WalFileName,
    ) -> Result<Option<SegmentSummary>, CatalogError> {
        match self.read_summary::<StoredSegmentSummary>(name).await? {
            Some(Ok(stored)) if stored.format == SUMMARY_FORMAT => {
                match misnamed_segment_summary(name, &stored) {
                    None => Ok(Some(stored.summary)),
                    Some(reason) => {
                        tracing::warn!("the summary of {name} {reason}; indexing it again");
                        Ok(None)
                    }
                }
            }
            Some(Err(reason)) => {
                tracing::warn!("the summary of {name} is damaged ({reason}); indexing it again");
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Why the stored summary of `name` cannot be used, if it is there and damaged or holds
    /// another file's summary.
    pub async fn summary_damage(&self, name: &WalFileName) -> Result<Option<String>, CatalogError> {
        let damage = match name.kind() {
            WalFileKind::History => match self.read_summary::<StoredHistorySummary>(name).await? {
                Some(Ok(stored)) if stored.timeline != name.timeline() => Some(format!(
                    "holds the summary of {:08X}.history",
                    stored.timeline
                )),
                found => found.and_then(Result::err),
            },
            _ => match self.read_summary::<StoredSegmentSummary>(name).await? {
                Some(Ok(stored)) => misnamed_segment_summary(name, &stored),
                found => found.and_then(Result::err),
            },
        };
        Ok(damage)
    }

    /// None when absent; the parsed summary, or why it is damaged.
    async fn read_summary<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        name: &WalFileName,
    ) -> Result<Option<Result<T, String>>, CatalogError> {
        self.read_meta(&summary_key(name)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_keys_sit_beside_their_objects() {
        let cases = [
            (
                "000000010000000A000000FF",
                "wal/000000010000000A/000000010000000A000000FF.summary.json",
            ),
            (
                "000000020000000000000003.partial",
                "wal/0000000200000000/000000020000000000000003.partial.summary.json",
            ),
            (
                "00000002.history",
                "wal/history/00000002.history.summary.json",
            ),
        ];
        for (name, key) in cases {
            let parsed = WalFileName::parse(name).unwrap();
            assert_eq!(summary_key(&parsed), key);
            assert_eq!(wal_name_of_summary_key(key), Some(parsed));
            assert_eq!(
                super::super::wal::wal_name_of_key(key),
                None,
                "not a WAL object"
            );
        }
    }
}
