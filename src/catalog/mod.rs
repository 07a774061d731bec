//! The repository layout: the only module that knows object names.
//!
//! ```text
//! repository.json                                   identity of the cluster (RepositoryIdentity)
//! wal/<TLI><LOG>/<segment>.lz4                      WAL segments, grouped 4 GB of WAL a folder
//! wal/<TLI><LOG>/<segment>.partial.lz4              partial segments written at promotion
//! wal/<TLI><LOG>/<segment>.<offset>.backup.lz4      backup history files
//! wal/history/<TLI>.history.lz4                     timeline history files
//! wal/.../<name>.summary.json                       the WAL index (see `wal_index`)
//! ```
//! Every `.lz4` object is in the codec's format (LZ4 frames and a checksummed trailer).

pub mod backup;
pub mod wal_archive;
pub mod wal_index;

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::pg::{ControlFile, WalFileKind, WalFileName};
use crate::storage::{PutMode, PutPayload, Storage, StorageError, read_all};

pub const IDENTITY_KEY: &str = "repository.json";
pub const REPOSITORY_FORMAT: u32 = 1;
const WAL_PREFIX: &str = "wal/";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "repository {location} is not initialised: run `pitr --repo {location} init --pgdata \
         <data directory>` first"
    )]
    NotInitialised { location: String },
    #[error("repository identity {location}/{IDENTITY_KEY} is unreadable: {reason}")]
    CorruptIdentity { location: String, reason: String },
    #[error("the manifest of backup {id} is unreadable: {reason}")]
    CorruptManifest { id: String, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Which cluster a repository belongs to, recorded by `pitr init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryIdentity {
    pub format: u32,
    /// A string in JSON: 64-bit integers lose precision in many JSON readers.
    #[serde(with = "u64_as_string")]
    pub system_identifier: u64,
    pub pg_version: u32,
    pub pg_control_version: u32,
    pub catalog_version: u32,
    pub wal_segment_size: u64,
    pub wal_block_size: u32,
    pub created_at: String,
    pub created_by: String,
}

impl RepositoryIdentity {
    pub fn new(control: &ControlFile, pg_version: u32, now: DateTime<Utc>) -> Self {
        RepositoryIdentity {
            format: REPOSITORY_FORMAT,
            system_identifier: control.system_identifier,
            pg_version,
            pg_control_version: control.pg_control_version,
            catalog_version: control.catalog_version_no,
            wal_segment_size: u64::from(control.wal_segment_size),
            wal_block_size: control.wal_block_size,
            created_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            created_by: format!("pitr {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

mod u64_as_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(D::Error::custom)
    }
}

/// Outcome of recording an identity.
#[derive(Debug, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    /// The repository already belongs to this cluster.
    AlreadyThisCluster,
    /// The repository belongs to another cluster; nothing was changed.
    OtherCluster(Box<RepositoryIdentity>),
}

/// The object key of an archived WAL file.
pub fn wal_key(name: &WalFileName) -> String {
    match name.kind() {
        WalFileKind::History => format!("{WAL_PREFIX}history/{name}.lz4"),
        _ => format!("{WAL_PREFIX}{}/{name}.lz4", &name.as_str()[..16]),
    }
}

/// The WAL file an object key names, if it names one.
pub fn wal_name_of_key(key: &str) -> Option<WalFileName> {
    let leaf = key.strip_prefix(WAL_PREFIX)?.rsplit('/').next()?;
    let name = WalFileName::parse(leaf.strip_suffix(".lz4")?).ok()?;
    (wal_key(&name) == key).then_some(name)
}

#[derive(Clone, Debug)]
pub struct Catalog {
    storage: Arc<dyn Storage>,
}

impl Catalog {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Catalog { storage }
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub async fn identity(&self) -> Result<RepositoryIdentity, CatalogError> {
        let bytes = match read_all(&*self.storage, IDENTITY_KEY).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => {
                return Err(CatalogError::NotInitialised {
                    location: self.storage.location(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let corrupt = |reason: String| CatalogError::CorruptIdentity {
            location: self.storage.location(),
            reason,
        };
        let identity: RepositoryIdentity =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if identity.format != REPOSITORY_FORMAT {
            return Err(corrupt(format!(
                "repository format {} is not {REPOSITORY_FORMAT} (written by a newer pitr?)",
                identity.format
            )));
        }
        Ok(identity)
    }

    /// Records `identity` unless the repository already has one; never replaces it.
    pub async fn init(&self, identity: &RepositoryIdentity) -> Result<InitOutcome, CatalogError> {
        let mut json = serde_json::to_vec_pretty(identity).expect("identity serialises");
        json.push(b'\n');
        match self
            .storage
            .put(IDENTITY_KEY, PutPayload::from_bytes(json), PutMode::Create)
            .await
        {
            Ok(()) => Ok(InitOutcome::Created),
            Err(StorageError::AlreadyExists { .. }) => {
                let existing = self.identity().await?;
                if existing.system_identifier == identity.system_identifier {
                    Ok(InitOutcome::AlreadyThisCluster)
                } else {
                    Ok(InitOutcome::OtherCluster(Box::new(existing)))
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_keys_group_by_timeline_and_log() {
        let cases = [
            (
                "000000010000000A000000FF",
                "wal/000000010000000A/000000010000000A000000FF.lz4",
            ),
            (
                "000000020000000000000003.partial",
                "wal/0000000200000000/000000020000000000000003.partial.lz4",
            ),
            (
                "000000010000000000000002.00000028.backup",
                "wal/0000000100000000/000000010000000000000002.00000028.backup.lz4",
            ),
            ("00000002.history", "wal/history/00000002.history.lz4"),
        ];
        for (name, key) in cases {
            let parsed = WalFileName::parse(name).unwrap();
            assert_eq!(wal_key(&parsed), key);
            assert_eq!(wal_name_of_key(key), Some(parsed));
        }
        assert_eq!(wal_name_of_key("repository.json"), None);
        assert_eq!(
            wal_name_of_key("wal/0000000100000000/000000020000000000000001.lz4"),
            None
        );
    }

    #[test]
    fn identity_json_keeps_the_system_identifier_exact() {
        let control = ControlFile {
            system_identifier: 7_301_234_567_890_123_457,
            pg_control_version: 1300,
            catalog_version_no: 202_209_061,
            wal_block_size: 8192,
            wal_segment_size: 16 << 20,
            data_checksum_version: 0,
        };
        let identity = RepositoryIdentity::new(&control, 15, Utc::now());
        let json = serde_json::to_string(&identity).unwrap();
        assert!(
            json.contains("\"system_identifier\":\"7301234567890123457\""),
            "{json}"
        );
        let back: RepositoryIdentity = serde_json::from_str(&json).unwrap();
        assert_eq!(back, identity);
    }
}
