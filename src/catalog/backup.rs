//! Base backups in the repository:
//!
//! ```text
//! backup/<id>/data/<n>.lz4     file contents: one large file, or a bundle of small files
//! backup/<id>/manifest.json    written last, create-only: a backup exists once this does
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};
use crate::storage::{ObjectMeta, PutMode, PutPayload, StorageError, read_all};

pub const BACKUP_PREFIX: &str = "backup/";
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    pub id: String,
    pub label: String,
    pub system_identifier: String,
    pub pg_version: u32,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// RFC 3339, UTC.
    pub start_time: String,
    pub stop_time: String,
    pub start_wal_segment: String,
    pub stop_wal_segment: String,
    /// Contents returned by pg_backup_stop, written into the restored directory.
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    pub tablespaces: Vec<Tablespace>,
    /// Sum of the files' sizes.
    pub size_bytes: u64,
    /// Sum of the stored objects' sizes.
    pub stored_bytes: u64,
    pub directories: Vec<BackupDirectory>,
    pub files: Vec<BackupFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    /// Where the tablespace lived: `pg_tblspc/<oid>` pointed there.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDirectory {
    /// Relative to the data directory; tablespace contents under `pg_tblspc/<oid>/`.
    pub path: String,
    pub mode: u32,
}

/// A file, or a part of a large file (parts are stored and restored in parallel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Relative to the data directory; tablespace contents under `pg_tblspc/<oid>/`.
    pub path: String,
    /// Bytes of this entry: the whole file, or one part of it.
    pub size: u64,
    /// Where in the file this entry's bytes go (0 for whole files).
    #[serde(default)]
    pub file_offset: u64,
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// CRC-32C of this entry's bytes (PostgreSQL's backup_manifest checksum for whole files).
    pub crc32c: u32,
    /// The object that holds the contents, and where in its decoded bytes they start.
    pub object: u32,
    pub offset: u64,
}

pub fn backup_object_key(id: &str, object: u32) -> String {
    format!("{BACKUP_PREFIX}{id}/data/{object:06}.lz4")
}

pub fn manifest_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}{id}/manifest.json")
}

impl Catalog {
    /// Records a finished backup; it is listed and restorable from then on.
    pub async fn put_manifest(&self, manifest: &BackupManifest) -> Result<(), CatalogError> {
        let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        self.storage()
            .put(
                &manifest_key(&manifest.id),
                PutPayload::from_bytes(json),
                PutMode::Create,
            )
            .await?;
        Ok(())
    }

    /// Every finished backup, oldest first.
    pub async fn backups(&self) -> Result<Vec<BackupManifest>, CatalogError> {
        let mut manifests = Vec::new();
        for meta in self.storage().list(BACKUP_PREFIX).await? {
            let Some(id) = meta
                .key
                .strip_prefix(BACKUP_PREFIX)
                .and_then(|rest| rest.strip_suffix("/manifest.json"))
            else {
                continue;
            };
            let bytes = match read_all(&**self.storage(), &meta.key).await {
                Ok(bytes) => bytes,
                Err(StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let manifest: BackupManifest =
                serde_json::from_slice(&bytes).map_err(|e| CatalogError::CorruptManifest {
                    id: id.to_owned(),
                    reason: e.to_string(),
                })?;
            if manifest.format == MANIFEST_FORMAT {
                manifests.push(manifest);
            }
        }
        manifests.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(manifests)
    }
}

/// What `backup/<id>/` holds, manifest or not (a backup interrupted, or a manifest lost).
#[derive(Clone, Debug, Default)]
pub struct BackupObjects {
    pub manifest: Option<ObjectMeta>,
    pub data: Vec<ObjectMeta>,
}

impl Catalog {
    /// Every backup directory's objects, by backup id.
    pub async fn backup_objects(&self) -> Result<BTreeMap<String, BackupObjects>, CatalogError> {
        let mut backups: BTreeMap<String, BackupObjects> = BTreeMap::new();
        for meta in self.storage().list(BACKUP_PREFIX).await? {
            let Some((id, rest)) = meta
                .key
                .strip_prefix(BACKUP_PREFIX)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let entry = backups.entry(id.to_owned()).or_default();
            if rest == "manifest.json" {
                entry.manifest = Some(meta);
            } else if rest.starts_with("data/") {
                entry.data.push(meta);
            }
        }
        Ok(backups)
    }

    /// One backup's manifest.
    pub async fn manifest(&self, id: &str) -> Result<BackupManifest, CatalogError> {
        let bytes = read_all(&**self.storage(), &manifest_key(id)).await?;
        serde_json::from_slice(&bytes).map_err(|e| CatalogError::CorruptManifest {
            id: id.to_owned(),
            reason: e.to_string(),
        })
    }
}
