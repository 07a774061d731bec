//! Replay claims: `replay/<id>.json`, one per restore, drill or restore-table whose recovery
//! still reads WAL from the repository. It names the backup and the segments the restore's
//! pre-flight planned, and carries a heartbeat; `pitr expire` keeps what a live claim names,
//! and ignores (and removes) a claim whose heartbeat is older than
//! `replay_claim_stale_after`.
//!
//! A claim is plain JSON, like `lock.json`: it holds names, nothing secret, and archive-get
//! refreshes it without opening the data key.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};
use crate::storage::{PutMode, PutPayload, StorageError, read_all};

const REPLAY_PREFIX: &str = "replay/";
const CLAIM_FORMAT: u32 = 1;
/// How old a claim's heartbeat may grow before expire takes its holder for gone. Long,
/// because the heartbeat is refreshed by archive-get, which runs only while PostgreSQL
/// replays: the time between `pitr restore` and starting the server counts too.
pub const DEFAULT_REPLAY_CLAIM_STALE_AFTER: Duration = Duration::from_secs(3600);

/// Consecutive segments of one timeline, by name (first and last included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRun {
    pub timeline: u32,
    pub first: String,
    pub last: String,
}

/// What a restore in flight needs from the repository: the content of `replay/<id>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayClaim {
    pub format: u32,
    /// Random hex, unique to one restore; the key's name.
    pub id: String,
    pub command: String,
    pub host: String,
    pub pid: u32,
    /// The restored data directory.
    pub pgdata: String,
    pub started: DateTime<Utc>,
    pub heartbeat: DateTime<Utc>,
    /// None while the restore plans: until it knows which backup and WAL, it holds them all.
    pub backup: Option<String>,
    /// The segments recovery reads, in order.
    #[serde(default)]
    pub segments: Vec<SegmentRun>,
}

impl ReplayClaim {
    /// A claim for a restore that has not planned yet.
    pub fn planning(id: &str, command: &str, pgdata: &str, now: DateTime<Utc>) -> Self {
        ReplayClaim {
            format: CLAIM_FORMAT,
            id: id.to_owned(),
            command: command.to_owned(),
            host: crate::host_name().unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            pgdata: pgdata.to_owned(),
            started: now,
            heartbeat: now,
            backup: None,
            segments: Vec::new(),
        }
    }

    /// True when the heartbeat is older than `stale_after` at `now`.
    pub fn is_stale(&self, now: DateTime<Utc>, stale_after: Duration) -> bool {
        (now - self.heartbeat)
            .to_std()
            .is_ok_and(|age| age > stale_after)
    }

    /// Seconds since the heartbeat.
    pub fn age_seconds(&self, now: DateTime<Utc>) -> i64 {
        (now - self.heartbeat).num_seconds().max(0)
    }

    fn record(&self) -> Bytes {
        let mut json = serde_json::to_vec_pretty(self).expect("a claim serialises");
        json.push(b'\n');
        json.into()
    }
}

/// A new claim id: 128 random bits in hex.
pub fn new_claim_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Ids name keys: hex only.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn claim_key(id: &str) -> String {
    format!("{REPLAY_PREFIX}{id}.json")
}

/// A claim object that cannot be read as a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedClaim {
    pub key: String,
    pub reason: String,
}

impl Catalog {
    /// How old a replay claim's heartbeat may grow (see [`DEFAULT_REPLAY_CLAIM_STALE_AFTER`]).
    pub fn with_replay_claim_stale_after(mut self, stale_after: Duration) -> Self {
        self.replay_claim_stale_after = stale_after;
        self
    }

    pub fn replay_claim_stale_after(&self) -> Duration {
        self.replay_claim_stale_after
    }

    /// Writes (or rewrites) `claim`.
    pub async fn put_replay_claim(&self, claim: &ReplayClaim) -> Result<(), CatalogError> {
        debug_assert!(valid_id(&claim.id), "claim ids are made by new_claim_id");
        self.storage
            .put(
                &claim_key(&claim.id),
                PutPayload::from_bytes(claim.record()),
                PutMode::Overwrite,
            )
            .await?;
        Ok(())
    }

    /// Removes claim `id`; one already gone is no error.
    pub async fn remove_replay_claim(&self, id: &str) -> Result<(), CatalogError> {
        if !valid_id(id) {
            return Ok(());
        }
        match self.storage.delete(&claim_key(id)).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every claim in the repository, and the objects under `replay/` that are not claims.
    pub async fn replay_claims(
        &self,
    ) -> Result<(Vec<ReplayClaim>, Vec<DamagedClaim>), CatalogError> {
        let mut claims = Vec::new();
        let mut damaged = Vec::new();
        for object in self.storage.list(REPLAY_PREFIX).await? {
            let bytes = match read_all(self.storage.as_ref(), &object.key).await {
                Ok(bytes) => bytes,
                // Released since the listing.
                Err(StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            match serde_json::from_slice::<ReplayClaim>(&bytes) {
                Ok(claim) if claim_key(&claim.id) == object.key => claims.push(claim),
                Ok(claim) => damaged.push(DamagedClaim {
                    key: object.key,
                    reason: format!("it names claim '{}'", claim.id),
                }),
                Err(e) => damaged.push(DamagedClaim {
                    key: object.key,
                    reason: e.to_string(),
                }),
            }
        }
        Ok((claims, damaged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use std::sync::Arc;

    #[tokio::test]
    async fn claims_are_written_refreshed_listed_and_removed() {
        let catalog = Catalog::new(Arc::new(MemoryStorage::default()));
        let t0 = Utc::now() - chrono::Duration::hours(2);
        let id = new_claim_id();
        let mut claim = ReplayClaim::planning(&id, "restore", "/data", t0);
        claim.backup = Some("20260101T000000Z".into());
        catalog.put_replay_claim(&claim).await.unwrap();
        let (claims, damaged) = catalog.replay_claims().await.unwrap();
        assert_eq!(claims, vec![claim.clone()]);
        assert!(damaged.is_empty());
        assert!(claims[0].is_stale(Utc::now(), Duration::from_secs(3600)));
        // Refreshed as restore and archive-get do: the claim written again with a new heartbeat.
        claim.heartbeat = Utc::now();
        catalog.put_replay_claim(&claim).await.unwrap();
        let (claims, _) = catalog.replay_claims().await.unwrap();
        assert!(!claims[0].is_stale(Utc::now(), Duration::from_secs(3600)));
        catalog.remove_replay_claim(&id).await.unwrap();
        catalog.remove_replay_claim(&id).await.unwrap();
        assert!(catalog.replay_claims().await.unwrap().0.is_empty());
    }
}
