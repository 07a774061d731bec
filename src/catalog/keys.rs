//! The keys of an encrypted repository: `keys.json`, the data key wrapped by each
//! key-encryption key (see `codec::crypto`), and unlocking it with what the settings give.
//!
//! ```text
//! {"format": 1, "cipher": "xchacha20-poly1305", "data_key": "<fingerprint>",
//!  "wraps": [{"fingerprint": "…", "kind": "passphrase", "created_at": "…",
//!             "salt": "<base64>", "argon2": {"memory_kib": 19456, …},
//!             "nonce": "<base64>", "wrapped": "<base64>"},
//!            {"kind": "key-file", …}, {"kind": "kms", "kms_key_id": "…", "wrapped": "…"}],
//!  "checksum": "sha256:…"}
//! ```
//! keys.json holds no secret: each wrap opens only with its key-encryption key. It is
//! replaced whole (under the repository lock) when a key is added or removed; no data object
//! changes.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Catalog, CatalogError, IDENTITY_KEY, InitOutcome, RepositoryIdentity, sealed};
use crate::codec::crypto::{Argon2Params, DataKey, Kek, NONCE_LEN, random_bytes};
use crate::storage::{PutMode, PutPayload, StorageError, read_all};

pub(super) const KEYS_KEY: &str = "keys.json";
const KEYS_FORMAT: u32 = 1;
pub const CIPHER_NAME: &str = "xchacha20-poly1305";
const SALT_LEN: usize = 16;
/// Shortest key file accepted: less would be weaker than the data key it protects.
pub const KEY_FILE_MIN_LEN: usize = 32;

/// A key management service that wraps and unwraps data keys (AWS KMS).
#[async_trait]
pub trait KeyService: Send + Sync + fmt::Debug {
    /// `plaintext` encrypted under `key_id`: an opaque blob naming its key.
    async fn encrypt(&self, key_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, String>;
    /// What `encrypt` encrypted; the blob names the key.
    async fn decrypt(&self, key_id: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, String>;
}

/// A key-encryption key as the settings give it. Secrets are wiped on drop and never
/// printed (`Debug` shows where they came from only).
#[derive(Clone)]
pub enum KeyMaterial {
    /// From `passphrase_file` or `PITR_PASSPHRASE`; `origin` names which, for messages.
    Passphrase {
        secret: Arc<Zeroizing<Vec<u8>>>,
        origin: String,
    },
    KeyFile {
        content: Arc<Zeroizing<Vec<u8>>>,
        path: PathBuf,
    },
    Kms {
        key_id: String,
        service: Arc<dyn KeyService>,
    },
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl KeyMaterial {
    /// A passphrase; `origin` names where it came from, for messages.
    pub fn passphrase(secret: &[u8], origin: &str) -> Self {
        KeyMaterial::Passphrase {
            secret: Arc::new(Zeroizing::new(secret.to_vec())),
            origin: origin.to_owned(),
        }
    }

    /// Where the key came from, for messages: never the key.
    pub fn describe(&self) -> String {
        match self {
            KeyMaterial::Passphrase { origin, .. } => format!("the passphrase from {origin}"),
            KeyMaterial::KeyFile { path, .. } => format!("the key file {}", path.display()),
            KeyMaterial::Kms { key_id, .. } => format!("the KMS key {key_id}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WrapKind {
    Passphrase,
    KeyFile,
    Kms,
}

impl WrapKind {
    pub fn name(self) -> &'static str {
        match self {
            WrapKind::Passphrase => "passphrase",
            WrapKind::KeyFile => "key-file",
            WrapKind::Kms => "kms",
        }
    }
}

/// The data key wrapped by one key-encryption key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wrap {
    /// The key-encryption key's fingerprint (for KMS, of its key id): how `pitr key remove`
    /// names a wrap.
    pub fingerprint: String,
    pub kind: WrapKind,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    argon2: Option<Argon2Params>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    wrapped: String,
}

/// `keys.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysFile {
    pub format: u32,
    pub cipher: String,
    /// The data key's fingerprint: every wrap must open to this key.
    pub data_key: String,
    pub wraps: Vec<Wrap>,
}

fn decode64(text: &Option<String>) -> Option<Vec<u8>> {
    BASE64.decode(text.as_deref()?).ok()
}

fn kms_fingerprint(key_id: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(format!("pitr kms key\0{key_id}"))[..8])
}

impl Wrap {
    /// `data_key` wrapped by `material`.
    pub async fn new(material: &KeyMaterial, data_key: &DataKey) -> Result<Wrap, CatalogError> {
        let created_at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let salt = random_bytes::<SALT_LEN>();
        let sealed_with = |kek: Kek, kind, argon2| {
            let (nonce, wrapped) = data_key.wrap(&kek);
            Wrap {
                fingerprint: kek.fingerprint().to_owned(),
                kind,
                created_at: created_at.clone(),
                salt: Some(BASE64.encode(salt)),
                argon2,
                kms_key_id: None,
                nonce: Some(BASE64.encode(nonce)),
                wrapped: BASE64.encode(wrapped),
            }
        };
        Ok(match material {
            KeyMaterial::Passphrase { secret, .. } => {
                let params = Argon2Params::DEFAULT;
                let kek = Kek::from_passphrase(secret, &salt, params).map_err(CatalogError::Key)?;
                sealed_with(kek, WrapKind::Passphrase, Some(params))
            }
            KeyMaterial::KeyFile { content, .. } => {
                sealed_with(Kek::from_key_file(content, &salt), WrapKind::KeyFile, None)
            }
            KeyMaterial::Kms { key_id, service } => {
                let blob = service
                    .encrypt(key_id, data_key.expose())
                    .await
                    .map_err(|e| CatalogError::Key(format!("KMS key {key_id}: {e}")))?;
                Wrap {
                    fingerprint: kms_fingerprint(key_id),
                    kind: WrapKind::Kms,
                    created_at,
                    salt: None,
                    argon2: None,
                    kms_key_id: Some(key_id.clone()),
                    nonce: None,
                    wrapped: BASE64.encode(blob),
                }
            }
        })
    }

    /// The data key, if `material` is this wrap's key; `Ok(None)` when it is not.
    async fn open(&self, material: &KeyMaterial) -> Result<Option<DataKey>, CatalogError> {
        let wrapped = BASE64
            .decode(&self.wrapped)
            .map_err(|e| CatalogError::Key(format!("keys.json: wrap {}: {e}", self.fingerprint)))?;
        let salt = decode64(&self.salt);
        let nonce: Option<[u8; NONCE_LEN]> = decode64(&self.nonce).and_then(|n| n.try_into().ok());
        let sealed = |kek: Kek| Ok(nonce.and_then(|nonce| DataKey::unwrap(&kek, &nonce, &wrapped)));
        match (self.kind, material, salt) {
            (WrapKind::Passphrase, KeyMaterial::Passphrase { secret, .. }, Some(salt)) => {
                let params = self.argon2.unwrap_or(Argon2Params::DEFAULT);
                sealed(Kek::from_passphrase(secret, &salt, params).map_err(CatalogError::Key)?)
            }
            (WrapKind::KeyFile, KeyMaterial::KeyFile { content, .. }, Some(salt)) => {
                sealed(Kek::from_key_file(content, &salt))
            }
            (WrapKind::Kms, KeyMaterial::Kms { key_id, service }, _)
                if self.kms_key_id.as_deref() == Some(key_id) =>
            {
                let plain = service
                    .decrypt(key_id, &wrapped)
                    .await
                    .map_err(|e| CatalogError::Key(format!("KMS key {key_id}: {e}")))?;
                Ok(DataKey::from_exposed(&plain))
            }
            _ => Ok(None),
        }
    }

    /// Whether `material` is this wrap's key (its fingerprint), for the cheap kinds.
    fn is_for(&self, material: &KeyMaterial) -> bool {
        matches!(
            (self.kind, material),
            (WrapKind::Passphrase, KeyMaterial::Passphrase { .. })
                | (WrapKind::KeyFile, KeyMaterial::KeyFile { .. })
        ) || matches!(material, KeyMaterial::Kms { key_id, .. }
            if self.kms_key_id.as_deref() == Some(key_id))
    }
}

impl KeysFile {
    pub fn new(data_key: &DataKey, wraps: Vec<Wrap>) -> Self {
        KeysFile {
            format: KEYS_FORMAT,
            cipher: CIPHER_NAME.to_owned(),
            data_key: data_key.fingerprint(),
            wraps,
        }
    }

    pub fn fingerprints(&self) -> String {
        self.wraps
            .iter()
            .map(|w| w.fingerprint.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The data key, opened with the first of `materials` that opens a wrap, and which wrap
    /// and which material opened it.
    pub async fn unlock(
        &self,
        materials: &[KeyMaterial],
    ) -> Result<(DataKey, usize, usize), CatalogError> {
        for (m, material) in materials.iter().enumerate() {
            for (w, wrap) in self
                .wraps
                .iter()
                .enumerate()
                .filter(|(_, w)| w.is_for(material))
            {
                if let Some(key) = wrap.open(material).await?
                    && key.fingerprint() == self.data_key
                {
                    return Ok((key, w, m));
                }
            }
        }
        let tried = materials
            .iter()
            .map(KeyMaterial::describe)
            .collect::<Vec<_>>()
            .join(", ");
        Err(CatalogError::Key(format!(
            "cannot decrypt: wrong key ({tried} opens none of the repository key fingerprints \
             {}): give a passphrase, key file or KMS key that `pitr key list` shows",
            self.fingerprints()
        )))
    }
}

/// The data key that a passphrase opened, kept in the local spool of archive-push and
/// archive-get (0600, beside pg_wal): PostgreSQL starts one process per WAL file, and each
/// would otherwise pay Argon2id. It is used only while keys.json still has the wrap it came
/// from and the passphrase given matches it (`verifier`), so a removed passphrase opens
/// nothing, cached or not. Whoever can read it can read the passphrase file and the data
/// directory beside it.
#[derive(Serialize, Deserialize)]
struct CachedKey {
    format: u32,
    wrap: String,
    verifier: String,
    data_key: String,
}

const KEY_CACHE_FORMAT: u32 = 1;
/// The cache's file name in a spool directory.
pub const KEY_CACHE_FILE: &str = "data-key.json";

/// The cache's file name for repository `number` (1 to 4) in a spool directory that serves
/// several (archive-get's): each keeps its own.
pub fn key_cache_file(number: u8) -> String {
    match number {
        1 => KEY_CACHE_FILE.to_owned(),
        n => format!("data-key-repo{n}.json"),
    }
}

fn cache_verifier(salt: &[u8], passphrase: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"pitr key cache v1\0")
        .chain_update((salt.len() as u64).to_le_bytes())
        .chain_update(salt)
        .chain_update(passphrase)
        .finalize();
    hex::encode(digest)
}

impl KeysFile {
    /// The cached data key at `path`, if a passphrase in `materials` opens its wrap.
    fn cached(&self, path: &std::path::Path, materials: &[KeyMaterial]) -> Option<DataKey> {
        let cached: CachedKey = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let wrap = self
            .wraps
            .iter()
            .find(|w| w.kind == WrapKind::Passphrase && w.fingerprint == cached.wrap)?;
        let salt = decode64(&wrap.salt)?;
        let given = materials.iter().any(|m| {
            matches!(m, KeyMaterial::Passphrase { secret, .. }
                if cache_verifier(&salt, secret) == cached.verifier)
        });
        let bytes = Zeroizing::new(BASE64.decode(&cached.data_key).ok()?);
        let key = DataKey::from_exposed(&bytes)?;
        (cached.format == KEY_CACHE_FORMAT && given && key.fingerprint() == self.data_key)
            .then_some(key)
    }
}

/// Writes the cache: a private file, replaced whole.
fn store_cached(
    path: &std::path::Path,
    wrap: &Wrap,
    passphrase: &[u8],
    key: &DataKey,
) -> std::io::Result<()> {
    use std::io::Write;
    let salt = decode64(&wrap.salt).ok_or_else(|| std::io::Error::other("wrap has no salt"))?;
    let cached = CachedKey {
        format: KEY_CACHE_FORMAT,
        wrap: wrap.fingerprint.clone(),
        verifier: cache_verifier(&salt, passphrase),
        data_key: BASE64.encode(key.expose()),
    };
    let json = Zeroizing::new(serde_json::to_vec(&cached).map_err(std::io::Error::other)?);
    // Only into a spool that exists (archive-push's look-ahead, archive-get's prefetch during
    // recovery make theirs): a call by hand leaves nothing behind.
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    // tempfile creates it 0600.
    let mut staged = tempfile::Builder::new()
        .prefix(".key-cache-")
        .tempfile_in(dir)?;
    staged.write_all(&json)?;
    staged.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl Catalog {
    /// The data key, opened with the configured key materials: from the local cache when
    /// there is one that still fits (see [`CachedKey`]), else by unwrapping (and then
    /// cached, when a passphrase opened it).
    pub(super) async fn open_data_key(&self, keys: &KeysFile) -> Result<DataKey, CatalogError> {
        if let Some(path) = &self.key_cache
            && let Some(key) = keys.cached(path, &self.key_materials)
        {
            return Ok(key);
        }
        let (key, wrap, material) = keys.unlock(&self.key_materials).await?;
        if let (Some(path), KeyMaterial::Passphrase { secret, .. }) =
            (&self.key_cache, &self.key_materials[material])
            && let Err(e) = store_cached(path, &keys.wraps[wrap], secret, &key)
        {
            tracing::debug!("cannot cache the data key in {}: {e}", path.display());
        }
        Ok(key)
    }

    /// The repository's keys.json.
    pub async fn keys_file(&self) -> Result<KeysFile, CatalogError> {
        let bytes = match read_all(&*self.storage, KEYS_KEY).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => {
                return Err(CatalogError::CorruptIdentity {
                    location: self.location(),
                    reason: format!(
                        "the repository is encrypted but {KEYS_KEY} is missing: its data key is \
                         lost unless a copy of {KEYS_KEY} can be put back"
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let keys: KeysFile = sealed::unseal(&bytes).map_err(|reason| CatalogError::Corrupt {
            what: KEYS_KEY.to_owned(),
            location: self.location(),
            reason,
        })?;
        if keys.format != KEYS_FORMAT || keys.cipher != CIPHER_NAME {
            return Err(CatalogError::Corrupt {
                what: KEYS_KEY.to_owned(),
                location: self.location(),
                reason: format!(
                    "format {} with cipher {} is not known to this pitr (written by a newer one?)",
                    keys.format, keys.cipher
                ),
            });
        }
        Ok(keys)
    }

    /// Replaces keys.json whole. Callers hold the repository lock and have proven that the
    /// new file still opens with a key they were given.
    /// Replaces keys.json (after a key was added or removed).
    pub async fn replace_keys_file(&self, keys: &KeysFile) -> Result<(), CatalogError> {
        self.put_keys_file(keys, PutMode::Overwrite).await
    }

    async fn put_keys_file(&self, keys: &KeysFile, mode: PutMode) -> Result<(), CatalogError> {
        self.storage
            .put(KEYS_KEY, PutPayload::from_bytes(sealed::seal(keys)), mode)
            .await?;
        Ok(())
    }

    /// The repository's data key, opened with the configured key materials.
    pub async fn data_key(&self) -> Result<DataKey, CatalogError> {
        self.identity().await?;
        match self.encryption.get() {
            Some(super::Encryption::On { key: Some(key), .. }) => Ok(key.clone()),
            Some(super::Encryption::On { key: None, .. }) => Err(self.key_needed()),
            _ => Err(CatalogError::Key(format!(
                "repository {} is not encrypted",
                self.location()
            ))),
        }
    }
}

impl Catalog {
    /// `pitr init --encrypt`: records `identity` encrypted, with a new data key wrapped by
    /// each of the configured key materials. An initialised repository of the same cluster
    /// that holds nothing yet is turned into an encrypted one; one that holds objects is
    /// refused (they would stay in clear).
    pub async fn init_encrypted(
        &self,
        identity: &RepositoryIdentity,
    ) -> Result<InitOutcome, CatalogError> {
        if self.key_materials.is_empty() {
            return Err(CatalogError::Key(
                "init --encrypt needs a key: set passphrase_file (--passphrase-file, \
                 PITR_PASSPHRASE_FILE), PITR_PASSPHRASE, key_file (--key-file) or kms_key_id \
                 (--kms-key-id)"
                    .to_owned(),
            ));
        }
        let identity = identity.clone().encrypted();
        let existing = match read_all(&*self.storage, IDENTITY_KEY).await {
            Ok(bytes) => Some(RepositoryIdentity::parse(&bytes).map_err(|reason| {
                CatalogError::CorruptIdentity {
                    location: self.location(),
                    reason,
                }
            })?),
            Err(StorageError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        match existing {
            Some(existing) if existing.system_identifier != identity.system_identifier => {
                return Ok(InitOutcome::OtherCluster(Box::new(existing)));
            }
            // Opening the data key proves the given key is one of the repository's.
            Some(existing) if existing.is_encrypted() => {
                self.identity().await?;
                return Ok(InitOutcome::AlreadyThisCluster);
            }
            Some(_) => self.refuse_unless_empty().await?,
            None => {}
        }
        let data_key = DataKey::generate();
        let mut wraps = Vec::new();
        for material in self.key_materials.iter() {
            wraps.push(Wrap::new(material, &data_key).await?);
        }
        // keys.json first: an identity that says "encrypted" without it would be a repository
        // nobody can open. Without an encrypted identity no object was sealed with an earlier
        // keys.json (an interrupted init), so replacing one loses nothing.
        self.put_keys_file(&KeysFile::new(&data_key, wraps), PutMode::Overwrite)
            .await?;
        let mode = if existing.is_some() {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        match self
            .storage
            .put(
                IDENTITY_KEY,
                PutPayload::from_bytes(sealed::seal(&identity)),
                mode,
            )
            .await
        {
            Ok(()) => {}
            // Another init won the race: its identity and keys stand.
            Err(StorageError::AlreadyExists { .. }) => {
                return Err(CatalogError::Key(format!(
                    "another pitr init ran on repository {} at the same time: run init again",
                    self.location()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let _ = self.compression.set(identity.compression());
        let _ = self.encryption.set(super::Encryption::On {
            fingerprints: self.keys_file().await?.fingerprints(),
            key: Some(data_key),
        });
        Ok(InitOutcome::Created)
    }

    /// Every object that is sealed in an encrypted repository (all but the identity, keys,
    /// lock and backup claims), for a check of stored checksums without the key; with
    /// `only_backup`, of the backups only that one's (WAL and the rest all the same).
    pub async fn sealed_objects(
        &self,
        only_backup: Option<&str>,
    ) -> Result<Vec<super::StoredObject>, CatalogError> {
        let other_backup = |key: &str| match only_backup {
            Some(id) => {
                key.starts_with(super::backup::BACKUP_PREFIX)
                    && !key.starts_with(&super::backup::backup_prefix(id))
            }
            None => false,
        };
        Ok(self
            .storage
            .list("")
            .await?
            .into_iter()
            .filter(|meta| is_sealed_key(&meta.key) && !other_backup(&meta.key))
            .map(|meta| super::StoredObject {
                key: meta.key,
                size: meta.size,
            })
            .collect())
    }

    /// Encryption may be turned on only while the repository holds no object but its
    /// identity (and run history or lock).
    async fn refuse_unless_empty(&self) -> Result<(), CatalogError> {
        let held: Vec<_> = self
            .storage
            .list("")
            .await?
            .into_iter()
            .filter(|meta| is_sealed_key(&meta.key))
            .collect();
        match held.first() {
            None => Ok(()),
            Some(first) => Err(CatalogError::Key(format!(
                "repository {} already holds {} unencrypted objects ({}…): encryption can be \
                 turned on only before anything is archived; use `pitr init --encrypt` on a new \
                 repository",
                self.location(),
                held.len(),
                first.key
            ))),
        }
    }
}

/// Whether the object at `key` is sealed in an encrypted repository.
fn is_sealed_key(key: &str) -> bool {
    key != IDENTITY_KEY
        && key != KEYS_KEY
        && key != super::lock::LOCK_KEY
        && !key.ends_with(super::backup::CLAIM_LEAF)
        && !key
            .rsplit('/')
            .next()
            .is_some_and(|leaf| leaf.starts_with('.'))
}
