//! The repository layout: the only module that knows object names and holds the storage
//! handle. Commands ask for typed things (a WAL file, a backup's objects, a summary) and never
//! see a key they could build or a store they could write to behind the catalog's back.
//!
//! ```text
//! repository.json                                   identity of the cluster (RepositoryIdentity)
//! keys.json                                         an encrypted repository's wrapped data key (see `keys`)
//! wal/<TLI><LOG>/<segment>.lz4                      WAL segments, grouped 4 GB of WAL a folder
//! wal/<TLI><LOG>/<segment>.partial.lz4              partial segments written at promotion
//! wal/<TLI><LOG>/<segment>.<offset>.backup.lz4      backup history files
//! wal/history/<TLI>.history.lz4                     timeline history files
//! wal/.../<name>.summary.json                       the WAL index (see `wal_index`)
//! wal/rollup/<TLI>/<first segment>.<span>....json   the index of a group (see `rollup`)
//! backup/<id>/data/<n>.lz4, backup/<id>/manifest.json   base backups (see `backup`)
//! lock.json                                         the repository lock (see `lock`)
//! history/runs/<day>/<run>.json, history/latest/<command>.json   run history (see `history`)
//! ```
//! Every `.lz4` object is in the codec's format (frames and a checksummed trailer): the
//! catalog encodes what it stores and verifies what it reads. A repository initialised with
//! zstd names the same objects `.zst` (see [`object_suffix`]); the identity says which, and
//! the catalog learns it when it first reads the identity.
//!
//! In an encrypted repository (the identity names its cipher), every object but
//! repository.json, keys.json and lock.json is encrypted: codec objects seal their frames, and
//! metadata (manifests, summaries, rollups, history) is stored as a codec object of its JSON.
//! The object's key is bound into every seal, so an object copied or moved to another key
//! does not open.

pub mod backup;
pub mod block_map;
pub mod history;
pub mod keys;
pub mod lock;
pub mod replay;
pub mod rollup;
mod sealed;
pub mod tail;
pub mod wal;
pub mod wal_index;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::crypto::{DataKey, ObjectCipher};
use crate::codec::{
    self, CodecError, Compression, CompressionType, DecodeSummary, EncodeSummary, ObjectFormat,
};
use crate::pg::ControlFile;
use crate::pg::wal_file_check::{WalFileCheck, WalGeometry};
use crate::storage::{ObjectBody, PutMode, PutPayload, Storage, StorageError, read_all};
use keys::KeyMaterial;

const IDENTITY_KEY: &str = "repository.json";
/// Names of the staged files the catalog encodes into.
const STAGING_PREFIX: &str = ".pitr-put-";
pub const REPOSITORY_FORMAT: u32 = 1;
/// The format of an encrypted repository: a pitr that knows only format 1 refuses it by name
/// rather than failing on its objects.
pub const ENCRYPTED_REPOSITORY_FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Nothing at the location: most often a mistyped --repo, so the message does not invite
    /// `pitr init` there (init says what it created).
    #[error("no repository at {location} (check --repo)")]
    NotInitialised { location: String },
    #[error("repository identity {location}/{IDENTITY_KEY} is unreadable: {reason}")]
    CorruptIdentity { location: String, reason: String },
    #[error("the manifest of backup {id} is unreadable: {reason}")]
    CorruptManifest { id: String, reason: String },
    /// A stored object that fails its checksums or does not decode.
    #[error("{what} in {location} is corrupt: {reason}")]
    Corrupt {
        what: String,
        location: String,
        reason: String,
    },
    #[error("{what} is not in the repository {location}")]
    NotFound { what: String, location: String },
    /// The object is stored already (create-only puts).
    #[error("{what} is already in the repository {location}")]
    AlreadyStored { what: String, location: String },
    /// A local file pitr reads from or writes to failed, not the repository.
    #[error("{path}: {source}")]
    Local {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Another process holds the repository lock.
    #[error("{0}")]
    Locked(Box<lock::LockedBy>),
    /// The compression settings do not fit the repository's (see [`CompressionRequest`]).
    #[error("{0}")]
    Compression(String),
    /// The repository's data key could not be opened: a wrong or missing key, or a key
    /// given for a repository that is not encrypted.
    #[error("{0}")]
    Key(String),
}

impl CatalogError {
    /// Whether the repository refused this user a read or write (a local repository's files
    /// written by another user).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, CatalogError::Storage(StorageError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

/// Objects a retention lock kept from deletion, as deletions report them.
pub use crate::storage::Protected;

/// The total of sizes read from a repository or a data directory. Object sizes, rollup keys
/// and manifest fields are any u64 a damaged or crafted repository holds: a total past
/// u64::MAX stays at u64::MAX (a figure to show, never one to allocate by), where `+` would
/// panic in a debug build and wrap in a release one.
pub fn total_bytes(sizes: impl IntoIterator<Item = u64>) -> u64 {
    sizes.into_iter().fold(0, u64::saturating_add)
}

/// The key suffix of a compressed object: its format, as `lz4 -d` and `zstd -d` expect.
pub fn object_suffix(kind: CompressionType) -> &'static str {
    match kind {
        CompressionType::Lz4 => ".lz4",
        CompressionType::Zstd => ".zst",
    }
}

/// A compressed object's key without its suffix; listings accept either format.
fn strip_object_suffix(key: &str) -> Option<&str> {
    [CompressionType::Lz4, CompressionType::Zstd]
        .into_iter()
        .find_map(|kind| key.strip_suffix(object_suffix(kind)))
}

/// What the settings ask of compression; the repository's identity completes it. The type is
/// the repository's, fixed by `pitr init`; the level may change for newly written objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompressionRequest {
    pub kind: Option<CompressionType>,
    /// zstd only.
    pub level: Option<i32>,
}

impl CompressionRequest {
    /// What `pitr init` records: lz4, unless zstd is asked for (at its level, or 3).
    pub fn for_new_repository(self) -> Result<Compression, String> {
        match (self.kind, self.level) {
            (Some(CompressionType::Zstd), level) => Ok(Compression::Zstd {
                level: level.unwrap_or(Compression::DEFAULT_ZSTD_LEVEL),
            }),
            (_, Some(_)) => Err("compression_level applies to zstd only: give compression \
                                 zstd with it (--compression zstd), or drop the level"
                .to_owned()),
            (_, None) => Ok(Compression::Lz4),
        }
    }

    /// The compression of new objects in the repository at `location`, which recorded
    /// `recorded`.
    pub fn resolve(self, recorded: Compression, location: &str) -> Result<Compression, String> {
        let recorded_kind = recorded.kind().name();
        match (self.kind, recorded, self.level) {
            (Some(kind), ..) if kind != recorded.kind() => Err(format!(
                "repository {location} stores {recorded_kind} objects: the compression type is \
                 fixed when `pitr init` creates a repository; drop compression {} (--compression, \
                 PITR_COMPRESSION, the config file), or init a new repository with it",
                kind.name()
            )),
            (_, Compression::Lz4, Some(_)) => Err(format!(
                "repository {location} stores lz4 objects, which have no compression level; \
                 drop compression_level (--compression-level, PITR_COMPRESSION_LEVEL, the config \
                 file), or init a new repository with --compression zstd"
            )),
            (_, Compression::Zstd { level }, requested) => Ok(Compression::Zstd {
                level: requested.unwrap_or(level),
            }),
            (_, Compression::Lz4, None) => Ok(Compression::Lz4),
        }
    }
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
    /// How objects are compressed. Absent means lz4: repositories from before the choice, and
    /// lz4 ones, which leave it out so that earlier pitr versions still read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compression: Option<Compression>,
    /// The cipher of an encrypted repository (see `keys`); absent when not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
}

impl RepositoryIdentity {
    /// How the repository's objects are compressed (the level: of those `init` wrote).
    pub fn compression(&self) -> Compression {
        self.compression.unwrap_or(Compression::Lz4)
    }

    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = (compression != Compression::Lz4).then_some(compression);
        self
    }

    /// The identity of the same repository, encrypted.
    pub fn encrypted(mut self) -> Self {
        self.format = ENCRYPTED_REPOSITORY_FORMAT;
        self.encryption = Some(keys::CIPHER_NAME.to_owned());
        self
    }

    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// What the first page of each of this cluster's WAL segments names.
    pub fn wal_geometry(&self) -> WalGeometry {
        WalGeometry {
            system_identifier: self.system_identifier,
            segment_size: self.wal_segment_size,
            block_size: self.wal_block_size,
        }
    }

    pub fn new(control: &ControlFile, pg_version: u32, now: DateTime<Utc>) -> Self {
        let facts = ClusterFacts {
            system_identifier: control.system_identifier,
            pg_version,
            pg_control_version: control.pg_control_version,
            catalog_version: control.catalog_version_no,
            wal_segment_size: u64::from(control.wal_segment_size),
            wal_block_size: control.wal_block_size,
        };
        Self::of_cluster(&facts, now)
    }

    /// The identity of the cluster `facts` describe (read from its control file, or asked of
    /// its server).
    pub fn of_cluster(facts: &ClusterFacts, now: DateTime<Utc>) -> Self {
        RepositoryIdentity {
            format: REPOSITORY_FORMAT,
            system_identifier: facts.system_identifier,
            pg_version: facts.pg_version,
            pg_control_version: facts.pg_control_version,
            catalog_version: facts.catalog_version,
            wal_segment_size: facts.wal_segment_size,
            wal_block_size: facts.wal_block_size,
            created_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            created_by: format!("pitr {}", env!("CARGO_PKG_VERSION")),
            compression: None,
            encryption: None,
        }
    }

    /// An identity for constructed archives in tests.
    #[cfg(test)]
    pub(crate) fn for_tests(wal_segment_size: u64, wal_block_size: u32) -> Self {
        RepositoryIdentity {
            format: REPOSITORY_FORMAT,
            system_identifier: 1,
            pg_version: 15,
            pg_control_version: 1300,
            catalog_version: 1,
            wal_segment_size,
            wal_block_size,
            created_at: String::new(),
            created_by: String::new(),
            compression: None,
            encryption: None,
        }
    }

    /// Parses `repository.json`, refusing values no cluster has (a segment size that is not a
    /// power of two would break every WAL computation later).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let identity: RepositoryIdentity = sealed::unseal(bytes)?;
        let expected_format = match identity.encryption.as_deref() {
            None => REPOSITORY_FORMAT,
            Some(keys::CIPHER_NAME) => ENCRYPTED_REPOSITORY_FORMAT,
            Some(other) => return Err(format!("cipher {other} is not known to this pitr")),
        };
        if identity.format != expected_format {
            return Err(format!(
                "repository format {} is not {expected_format} (written by a newer pitr?)",
                identity.format
            ));
        }
        if !crate::pg::is_valid_wal_segment_size(identity.wal_segment_size) {
            return Err(format!(
                "WAL segment size {} is not a power of two from 1 MB to 1 GB",
                identity.wal_segment_size
            ));
        }
        if !identity.wal_block_size.is_power_of_two()
            || !(1024..=65536).contains(&identity.wal_block_size)
        {
            return Err(format!(
                "WAL block size {} is not a power of two from 1 kB to 64 kB",
                identity.wal_block_size
            ));
        }
        if let Compression::Zstd { level } = identity.compression() {
            if !Compression::ZSTD_LEVELS.contains(&level) {
                return Err(format!("zstd level {level} is not from 1 to 22"));
            }
        }
        Ok(identity)
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

/// What a repository records of its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFacts {
    pub system_identifier: u64,
    /// The major version.
    pub pg_version: u32,
    pub pg_control_version: u32,
    pub catalog_version: u32,
    pub wal_segment_size: u64,
    pub wal_block_size: u32,
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

/// An object found by a listing. Its key is the catalog's: commands show it in messages but
/// can only hand the object back to the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    key: String,
    /// Stored (compressed) size.
    pub size: u64,
}

impl StoredObject {
    /// The key, for messages and reports.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// An object being read: its body, not yet decoded or verified.
pub struct OpenedObject {
    key: String,
    what: String,
    body: ObjectBody,
}

/// Whether a create-only store found the object already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    New,
    AlreadyThere,
}

#[derive(Clone, Debug)]
pub struct Catalog {
    storage: Arc<dyn Storage>,
    lock_stale_after: std::time::Duration,
    replay_claim_stale_after: std::time::Duration,
    compression_request: CompressionRequest,
    /// The compression of new objects, known from the first read of the identity on (the
    /// commands read it first, so knowing it costs no request).
    compression: Arc<OnceLock<Compression>>,
    /// The keys the settings give, to open an encrypted repository's data key.
    key_materials: Arc<Vec<KeyMaterial>>,
    /// Known from the first read of the identity on (opening the data key costs a KDF).
    encryption: Arc<OnceLock<Encryption>>,
    /// Where archive-push and archive-get keep the data key a passphrase opened (see
    /// `keys::CachedKey`).
    key_cache: Option<PathBuf>,
    /// What WAL objects must hold, known from the first read of the identity on.
    wal_geometry: Arc<OnceLock<WalGeometry>>,
}

/// Whether the repository is encrypted and, if so, its data key when a key opened it.
#[derive(Clone, Debug)]
enum Encryption {
    Off,
    /// Without a key, objects can be listed and their stored checksums checked, not read.
    On {
        key: Option<DataKey>,
        fingerprints: String,
    },
}

impl Catalog {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Catalog {
            storage,
            lock_stale_after: lock::DEFAULT_LOCK_STALE_AFTER,
            replay_claim_stale_after: replay::DEFAULT_REPLAY_CLAIM_STALE_AFTER,
            compression_request: CompressionRequest::default(),
            compression: Arc::new(OnceLock::new()),
            key_materials: Arc::new(Vec::new()),
            encryption: Arc::new(OnceLock::new()),
            key_cache: None,
            wal_geometry: Arc::new(OnceLock::new()),
        }
    }

    /// Keeps the data key a passphrase opens in this local file (a spool directory).
    pub fn with_key_cache(mut self, path: PathBuf) -> Self {
        self.key_cache = Some(path);
        self
    }

    /// The keys that open an encrypted repository (passphrase, key file, KMS key).
    pub fn with_key_materials(mut self, materials: Vec<KeyMaterial>) -> Self {
        self.key_materials = Arc::new(materials);
        self
    }

    pub fn key_materials(&self) -> &[KeyMaterial] {
        &self.key_materials
    }

    /// Whether the repository is encrypted (known once the identity was read).
    pub fn is_encrypted(&self) -> bool {
        matches!(self.encryption.get(), Some(Encryption::On { .. }))
    }

    /// Whether objects can be read: not encrypted, or encrypted and a key opened it.
    pub fn can_decrypt(&self) -> bool {
        !matches!(
            self.encryption.get(),
            Some(Encryption::On { key: None, .. })
        )
    }

    fn key_needed(&self) -> CatalogError {
        let fingerprints = match self.encryption.get() {
            Some(Encryption::On { fingerprints, .. }) => fingerprints.clone(),
            _ => String::new(),
        };
        CatalogError::Key(format!(
            "cannot decrypt: repository {} is encrypted and no key was given (repository key \
             fingerprints {fingerprints}): set passphrase_file (--passphrase-file, \
             PITR_PASSPHRASE_FILE), PITR_PASSPHRASE, key_file or kms_key_id",
            self.location()
        ))
    }

    /// Learns the repository's encryption from its identity, opening the data key once.
    async fn learn_encryption(&self, identity: &RepositoryIdentity) -> Result<(), CatalogError> {
        if self.encryption.get().is_some() {
            return Ok(());
        }
        let encryption = if !identity.is_encrypted() {
            if let Some(material) = self.key_materials.first() {
                return Err(CatalogError::Key(format!(
                    "repository {} is not encrypted, but {} was given: drop the key settings \
                     for this repository, or use `pitr init --encrypt` on a new one (a \
                     repository that lost its encryption may have been tampered with)",
                    self.location(),
                    material.describe()
                )));
            }
            Encryption::Off
        } else {
            let keys = self.keys_file().await?;
            let key = if self.key_materials.is_empty() {
                None
            } else {
                Some(self.open_data_key(&keys).await?)
            };
            Encryption::On {
                key,
                fingerprints: keys.fingerprints(),
            }
        };
        let _ = self.encryption.set(encryption);
        Ok(())
    }

    /// The encryption state, reading the identity if it was not read yet.
    async fn encryption(&self) -> Result<&Encryption, CatalogError> {
        if self.encryption.get().is_none() {
            self.identity().await?;
        }
        self.encryption
            .get()
            .ok_or_else(|| CatalogError::NotInitialised {
                location: self.location(),
            })
    }

    /// How the object at `key` is written: the compression, sealed for `key` when encrypted.
    async fn object_format(&self, key: &str) -> Result<ObjectFormat, CatalogError> {
        let compression = self.compression().await?;
        Ok(ObjectFormat {
            compression,
            cipher: self.object_cipher(key).await?,
        })
    }

    /// The cipher of the object at `key`: `None` when the repository is not encrypted.
    async fn object_cipher(&self, key: &str) -> Result<Option<ObjectCipher>, CatalogError> {
        match self.encryption().await? {
            Encryption::Off => Ok(None),
            Encryption::On {
                key: Some(data_key),
                ..
            } => Ok(Some(data_key.for_object(key))),
            Encryption::On { key: None, .. } => Err(self.key_needed()),
        }
    }

    /// A metadata object's bytes: its sealed JSON, encrypted for `key` in an encrypted
    /// repository.
    async fn seal_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, CatalogError> {
        let json = sealed::seal(value);
        let Some(cipher) = self.object_cipher(key).await? else {
            return Ok(json);
        };
        let mut object = Vec::with_capacity(json.len() / 2 + 128);
        let format = ObjectFormat {
            compression: self.compression().await?,
            cipher: Some(cipher),
        };
        codec::encode_reader(&json[..], &mut object, format, 1)
            .map_err(|e| CatalogError::Key(format!("cannot encrypt {key}: {e}")))?;
        Ok(object)
    }

    /// A metadata object read from `key`, parsed: decrypted and authenticated first in an
    /// encrypted repository (where plain JSON is refused as tampering), then checked by
    /// `sealed::unseal`. The inner error says why the object is damaged; the outer one, that
    /// it cannot be read at all (no key).
    async fn unseal_meta<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<Result<T, String>, CatalogError> {
        let Some(cipher) = self.object_cipher(key).await? else {
            return Ok(sealed::unseal(&bytes));
        };
        let mut json = Vec::with_capacity(bytes.len() * 4);
        Ok(
            match codec::decode_with(&bytes[..], &mut json, Some(&cipher)) {
                Ok(_) => sealed::unseal(&json),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// The metadata object at `key`, read and unsealed (see [`Self::unseal_meta`]); None
    /// when there is none.
    async fn read_meta<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Result<T, String>>, CatalogError> {
        match read_all(&*self.storage, key).await {
            Ok(bytes) => Ok(Some(self.unseal_meta(key, bytes).await?)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Compression as the settings ask; checked against the identity when it is read.
    pub fn with_compression_request(mut self, request: CompressionRequest) -> Self {
        self.compression_request = request;
        self
    }

    /// The compression new objects get: the identity's type, at the requested level if any.
    /// Known once the identity was read (by [`Catalog::open`], or by [`Catalog::init`]); an
    /// uninitialised repository has none, and nothing is stored or read in one.
    async fn compression(&self) -> Result<Compression, CatalogError> {
        if let Some(&compression) = self.compression.get() {
            return Ok(compression);
        }
        self.identity().await?;
        self.compression
            .get()
            .copied()
            .ok_or_else(|| CatalogError::NotInitialised {
                location: self.location(),
            })
    }

    /// The key suffix of the repository's compressed objects.
    async fn object_kind(&self) -> Result<CompressionType, CatalogError> {
        Ok(self.compression().await?.kind())
    }

    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        self.storage.location()
    }

    pub async fn identity(&self) -> Result<RepositoryIdentity, CatalogError> {
        let bytes = match read_all(&*self.storage, IDENTITY_KEY).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => {
                return Err(CatalogError::NotInitialised {
                    location: self.location(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let identity =
            RepositoryIdentity::parse(&bytes).map_err(|reason| CatalogError::CorruptIdentity {
                location: self.location(),
                reason,
            })?;
        let compression = self
            .compression_request
            .resolve(identity.compression(), &self.location())
            .map_err(CatalogError::Compression)?;
        let _ = self.compression.set(compression);
        let _ = self.wal_geometry.set(identity.wal_geometry());
        self.learn_encryption(&identity).await?;
        Ok(identity)
    }

    /// The repository as a command works on it: its identity read, the compression of new
    /// objects resolved against the settings, and an encrypted repository's data key opened
    /// (when a key was given). An uninitialised repository is refused here, before anything
    /// is stored or read.
    pub async fn open(self) -> Result<Catalog, CatalogError> {
        self.identity().await?;
        Ok(self)
    }

    /// Creates a local repository's root directory, given to `owner` (init run as root for
    /// a cluster another user owns).
    pub fn create_local_root(
        root: &std::path::Path,
        owner: &crate::ownership::Owner,
    ) -> std::io::Result<()> {
        crate::storage::FsStorage::new(root.to_owned()).create_root(Some(owner))
    }

    /// A catalog that knows `identity` as if it had read it (an unencrypted one), for unit
    /// tests over stores that hold no identity object.
    #[cfg(test)]
    pub(crate) fn knowing(self, identity: &RepositoryIdentity) -> Self {
        let _ = self.compression.set(identity.compression());
        let _ = self.wal_geometry.set(identity.wal_geometry());
        let _ = self.encryption.set(Encryption::Off);
        self
    }

    /// Records `identity` unless the repository already has one; never replaces it.
    pub async fn init(&self, identity: &RepositoryIdentity) -> Result<InitOutcome, CatalogError> {
        let json = sealed::seal(identity);
        match self
            .storage
            .put(IDENTITY_KEY, PutPayload::from_bytes(json), PutMode::Create)
            .await
        {
            Ok(()) => {
                let _ = self.compression.set(identity.compression());
                Ok(InitOutcome::Created)
            }
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

    /// Removes staging files that killed writers left: in the repository's own staging
    /// directory (which other hosts may share, so by age only), or this host's temporary
    /// directory. Best effort; returns how many went.
    pub async fn remove_staging_leftovers(&self) -> u64 {
        let dir = self.storage.staging_dir().map(PathBuf::from);
        blocking(move || {
            Ok(match dir {
                Some(dir) => crate::staging::remove_leftovers(&dir, "", false),
                None => {
                    crate::staging::remove_leftovers(&std::env::temp_dir(), STAGING_PREFIX, true)
                }
            })
        })
        .await
        .unwrap_or(0)
    }

    /// Encodes what `encode` produces into a staged file and stores it create-only under
    /// `key`. `source` names the local input in messages.
    async fn store_encoded<T: Send + 'static>(
        &self,
        key: String,
        source: String,
        encode: impl FnOnce(&File) -> Result<(EncodeSummary, T), CodecError> + Send + 'static,
    ) -> Result<(Stored, EncodeSummary, T), CatalogError> {
        let staging_dir = self
            .storage
            .staging_dir()
            .map_or_else(std::env::temp_dir, PathBuf::from);
        let (staged, encoded, extra) = blocking(move || {
            let stage_error = |e| StorageError::io("stage", staging_dir.display(), e);
            crate::private_fs::create_dir_all(&staging_dir).map_err(stage_error)?;
            let staged = tempfile::Builder::new()
                .prefix(&crate::staging::prefix_for_this_process(STAGING_PREFIX))
                .tempfile_in(&staging_dir)
                .map_err(stage_error)?;
            let (encoded, extra) = encode(staged.as_file()).map_err(|e| match e {
                CodecError::Read(source_error) => CatalogError::Local {
                    path: source,
                    source: source_error,
                },
                CodecError::Write(e) => stage_error(e).into(),
                CodecError::Corrupt(reason) => stage_error(std::io::Error::other(reason)).into(),
                CodecError::Encrypted => unreachable!("encoding never decrypts"),
            })?;
            Ok((staged, encoded, extra))
        })
        .await?;
        let payload = PutPayload::from_file(
            staged.path().to_owned(),
            encoded.stored_len,
            encoded.object_crc32,
        );
        let stored = match self.storage.put(&key, payload, PutMode::Create).await {
            Ok(()) => Stored::New,
            Err(StorageError::AlreadyExists { .. }) => Stored::AlreadyThere,
            Err(e) => return Err(e.into()),
        };
        Ok((stored, encoded, extra))
    }

    /// Opens the object at `key` for [`Catalog::decode_opened`]; opening ahead of decoding
    /// keeps a slow store's latency off the decoder's path.
    async fn open_key(&self, key: &str, what: String) -> Result<OpenedObject, CatalogError> {
        match self.storage.get(key).await {
            Ok(body) => Ok(OpenedObject {
                key: key.to_owned(),
                what,
                body,
            }),
            Err(StorageError::NotFound { .. }) => Err(CatalogError::NotFound {
                what,
                location: self.location(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a listed object; `what` names it in messages.
    pub async fn open_object(
        &self,
        object: &StoredObject,
        what: String,
    ) -> Result<OpenedObject, CatalogError> {
        self.open_key(&object.key, what).await
    }

    /// Streams the decoded, verified content of an opened object into `out` (handed back
    /// with what was verified); `local` names `out` in messages. `out` has seen every byte
    /// only when this returns `Ok`.
    pub async fn decode_opened<W: Write + Send + 'static>(
        &self,
        opened: OpenedObject,
        local: &str,
        out: W,
    ) -> Result<(W, DecodeSummary), CatalogError> {
        let (location, local) = (self.location(), local.to_owned());
        let OpenedObject { key, what, body } = opened;
        let cipher = self.object_cipher(&key).await?;
        let check = self.wal_content_check(&key).await?;
        blocking(move || {
            let mut out = NamedContent { out, check };
            match codec::decode_with(body.into_blocking_reader(), &mut out, cipher.as_ref()) {
                Ok(decoded) => match out.verdict() {
                    Ok(out) => Ok((out, decoded)),
                    Err(reason) => Err(CatalogError::Corrupt {
                        what,
                        location,
                        reason,
                    }),
                },
                Err(CodecError::Corrupt(reason)) => Err(CatalogError::Corrupt {
                    what,
                    location,
                    reason,
                }),
                Err(CodecError::Read(e)) => Err(StorageError::io("read", key, e).into()),
                Err(CodecError::Write(source)) => Err(CatalogError::Local {
                    path: local,
                    source,
                }),
                // Only an unencrypted repository decodes without a cipher.
                Err(CodecError::Encrypted) => Err(CatalogError::Corrupt {
                    what,
                    location,
                    reason: "an encrypted object in a repository that is not encrypted".into(),
                }),
            }
        })
        .await
    }

    /// How a WAL object at `key` proves it holds the file its key names; none for other
    /// objects, or in a repository not initialised (tests).
    async fn wal_content_check(&self, key: &str) -> Result<Option<WalFileCheck>, CatalogError> {
        let Some(name) = wal::wal_name_of_key(key) else {
            return Ok(None);
        };
        if self.wal_geometry.get().is_none() {
            match self.identity().await {
                Ok(_) | Err(CatalogError::NotInitialised { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self
            .wal_geometry
            .get()
            .map(|&geometry| WalFileCheck::new(&name, geometry)))
    }

    /// Checks an opened object's stored bytes against its stored checksum without decoding
    /// them: all that can be proven of an encrypted object without the key.
    pub async fn check_opened(&self, opened: OpenedObject) -> Result<u64, CatalogError> {
        let location = self.location();
        let OpenedObject { key, what, body } = opened;
        blocking(
            move || match codec::check_stored(body.into_blocking_reader()) {
                Ok(checked) => Ok(checked.stored_len),
                Err(CodecError::Read(e)) => Err(StorageError::io("read", key, e).into()),
                Err(e) => Err(CatalogError::Corrupt {
                    what,
                    location,
                    reason: e.to_string(),
                }),
            },
        )
        .await
    }

    async fn decode_key<W: Write + Send + 'static>(
        &self,
        key: &str,
        what: String,
        local: &str,
        out: W,
    ) -> Result<(W, DecodeSummary), CatalogError> {
        let opened = self.open_key(key, what).await?;
        self.decode_opened(opened, local, out).await
    }

    /// The decoded content of a small listed object (a history or backup history file).
    pub async fn read_object(
        &self,
        object: &StoredObject,
        what: String,
    ) -> Result<Vec<u8>, CatalogError> {
        let (content, _) = self
            .decode_key(&object.key, what, "memory", Vec::new())
            .await?;
        Ok(content)
    }

    /// Streams a listed object's decoded, verified content into `out`.
    pub async fn decode_object<W: Write + Send + 'static>(
        &self,
        object: &StoredObject,
        what: String,
        out: W,
    ) -> Result<(W, DecodeSummary), CatalogError> {
        self.decode_key(&object.key, what, "the decoder's output", out)
            .await
    }
}

/// A decoder's output that checks, as the bytes pass, that a WAL object holds the file its
/// key names: a whole, valid object copied over another's key passes every checksum (an
/// encrypted repository binds the key to the object; an unencrypted one needs this).
struct NamedContent<W> {
    out: W,
    check: Option<WalFileCheck>,
}

impl<W> NamedContent<W> {
    /// The output, or why the content is not the named file.
    fn verdict(self) -> Result<W, String> {
        match self.check {
            Some(check) => {
                let name = check.name().clone();
                check
                    .finish()
                    .map_err(|misnamed| format!("not {name}: it {misnamed}"))?;
                Ok(self.out)
            }
            None => Ok(self.out),
        }
    }
}

impl<W: Write> Write for NamedContent<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(check) = &mut self.check {
            check.feed(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Runs file- and CPU-bound work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, CatalogError> {
    crate::run_blocking(work).await
}

#[cfg(test)]
mod tests;
