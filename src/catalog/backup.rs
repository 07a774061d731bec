//! Base backups in the repository:
//!
//! ```text
//! backup/<id>/claim.json       written first, create-only: the id is taken
//! backup/<id>/data/<n>.lz4     file contents: one large file, or a bundle of small files
//!                              (`.zst` in a zstd repository)
//! backup/<id>/manifest.json    written last, create-only: a backup exists once this does
//! backup/<id>/pin.json         pin and annotations (sealed, rewritten by `pitr pin`/`unpin`)
//! backup/<id>/abandoned.json   written by a backup that failed, while it removes its objects:
//!                              what is left is leftovers, not a backup that lost its manifest
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::wal::ArchivedFile;
use super::{Catalog, CatalogError, Stored, StoredObject, object_suffix, strip_object_suffix};
use crate::codec::{self, CompressionType, DecodeSummary, EncodeSummary};
use crate::pg::backup_label::parse_backup_label;
use crate::pg::timestamp::micros;
use crate::pg::{Lsn, WalFileKind, WalFileName};
use crate::storage::{Protected, PutMode, PutPayload, StorageError, read_all};

pub(super) const BACKUP_PREFIX: &str = "backup/";
const MANIFEST_LEAF: &str = "manifest.json";
/// Written first, create-only: the backup's id is taken.
pub(super) const CLAIM_LEAF: &str = "claim.json";
/// Pin and annotations, beside the sealed manifest they may not change.
const PIN_LEAF: &str = "pin.json";
/// A failed backup's word that it gave up: verify and expire take what is left for leftovers.
const ABANDONED_LEAF: &str = "abandoned.json";
/// Full backups are written in format 1, which every pitr reads; incremental ones in
/// format 2, which a pitr that cannot rebuild their files refuses to read.
pub const MANIFEST_FORMAT: u32 = 1;
pub const INCREMENTAL_MANIFEST_FORMAT: u32 = 2;
pub const PIN_FORMAT: u32 = 1;

pub(super) fn backup_prefix(id: &str) -> String {
    format!("{BACKUP_PREFIX}{id}/")
}

fn backup_object_stem(id: &str, object: u32) -> String {
    format!("{BACKUP_PREFIX}{id}/data/{object:06}")
}

pub(super) fn backup_object_key(id: &str, object: u32, kind: CompressionType) -> String {
    backup_object_stem(id, object) + object_suffix(kind)
}

pub(super) fn manifest_key(id: &str) -> String {
    format!("{BACKUP_PREFIX}{id}/{MANIFEST_LEAF}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    pub id: String,
    pub label: String,
    pub system_identifier: String,
    pub pg_version: u32,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// RFC 3339, UTC.
    #[serde(with = "micros")]
    pub start_time: DateTime<Utc>,
    #[serde(with = "micros")]
    pub stop_time: DateTime<Utc>,
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
    /// Who owned the data directory: a restore run as root gives the restored files to
    /// this user (none in manifests older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_owner: Option<crate::ownership::Owner>,
    /// The data directory the backup was taken from (absolute); none in manifests written
    /// before pitr recorded it. Restore tells an in-place restore from a copy by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_directory: Option<String>,
    /// The databases when the backup started, by OID (their files are under `base/<oid>/`):
    /// what `restore --db-include` names. Empty in manifests older than the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<Database>,
    /// The bootstrap superuser (the role with OID 10), whom a scratch server's checks
    /// connect as; none in manifests older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superuser: Option<String>,
    /// The configuration the server read from outside its data directory (Debian's
    /// `/etc/postgresql/<v>/<cluster>`, a `-c config_file=` elsewhere); none when it all lives
    /// in the data directory, or in manifests older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<Configuration>,
    /// How the files were read: from the data directory on this host (the default, and
    /// every manifest older than the field) or over the replication protocol.
    #[serde(default, skip_serializing_if = "BackupMethod::is_local")]
    pub method: BackupMethod,
    /// The server's own `backup_manifest` (backups over the replication protocol), checked
    /// against what arrived and kept in a data object of the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_manifest: Option<BackupFile>,
    /// Full, or incremental on a parent (`--type`); full in manifests older than the field.
    #[serde(default, skip_serializing_if = "BackupType::is_full")]
    pub backup_type: BackupType,
    /// The backup this one builds on (incremental and differential backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Whether the cluster had data checksums on; none in manifests older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_checksums: Option<bool>,
    /// The cluster's block size (`BLCKSZ`): where the blocks of delta entries go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// How an incremental backup learned what changed since its parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes_from: Option<String>,
}

/// `--type`: what a backup copies (pgBackRest's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    /// Every file.
    #[default]
    Full,
    /// What changed since the newest full backup.
    Diff,
    /// What changed since the newest backup of any type.
    Incr,
}

impl BackupType {
    pub fn is_full(&self) -> bool {
        *self == BackupType::Full
    }

    pub fn name(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }
}

/// How a backup read the cluster's files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMethod {
    /// From the data directory, on the database host (`pg_backup_start`/`pg_backup_stop`).
    #[default]
    Local,
    /// Over a replication connection (`BASE_BACKUP`), from any host.
    Replication,
}

impl BackupMethod {
    pub fn is_local(&self) -> bool {
        *self == BackupMethod::Local
    }

    pub fn name(self) -> &'static str {
        match self {
            BackupMethod::Local => "local",
            BackupMethod::Replication => "replication",
        }
    }
}

/// Where the server read its configuration, and the files of it kept outside the data
/// directory (stored in a data object of the backup like any other file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// The server's `config_file`, `hba_file` and `ident_file` settings (absolute).
    pub config_file: String,
    pub hba_file: String,
    pub ident_file: String,
    /// The files outside the data directory: those three and every file they include.
    pub files: Vec<ConfigFile>,
}

/// A configuration file kept outside the data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Where the server read it (absolute).
    pub path: String,
    pub size: u64,
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    pub crc32c: u32,
    /// The object that holds the contents, and where in its decoded bytes they start.
    pub object: u32,
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub oid: u32,
    pub name: String,
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
    /// The backup whose object that is, when not this one: an incremental backup refers to
    /// its ancestors' copies of what did not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Set when the entry holds some blocks of the file, laid over the older entries of the
    /// same path: its bytes are those blocks, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
}

/// Blocks of a file changed since an older backup of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The blocks, as `[first, count]` runs within the file, ascending and apart.
    pub runs: Vec<[u32; 2]>,
    /// The file's size at the backup that took these blocks: a newer delta's size wins, and
    /// the file is cut or extended to it.
    pub file_size: u64,
    /// The place in the chain of the backup that took these blocks (1 for the first
    /// incremental on a full): among a path's deltas the deepest is the newest.
    pub depth: u32,
}

impl Delta {
    /// How many blocks the runs hold.
    pub fn block_count(&self) -> u64 {
        self.runs.iter().map(|[_, count]| u64::from(*count)).sum()
    }

    /// The blocks, ascending.
    pub fn blocks(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs
            .iter()
            .flat_map(|&[first, count]| (0..count).map(move |i| first + i))
    }
}

impl BackupFile {
    /// The backup whose object holds this entry's bytes, `this` when none other is named.
    pub fn holder<'a>(&'a self, this: &'a str) -> &'a str {
        self.backup.as_deref().unwrap_or(this)
    }
}

impl BackupManifest {
    /// The files of the backup: a file stored in several parts (a large one) counts once.
    /// backup and restore both report this figure.
    pub fn file_count(&self) -> usize {
        self.files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }

    /// Parses a stored manifest and checks everything restore will rely on, so that no
    /// content can make it write outside the data directory, overflow or panic.
    pub fn parse(bytes: &[u8], id: &str) -> Result<Self, String> {
        super::sealed::unseal::<BackupManifest>(bytes)?.checked(id)
    }

    /// The manifest, if it passes [`BackupManifest::check`].
    fn checked(self, id: &str) -> Result<Self, String> {
        self.check(id)?;
        Ok(self)
    }

    fn check(&self, id: &str) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT && self.format != INCREMENTAL_MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not {MANIFEST_FORMAT} or {INCREMENTAL_MANIFEST_FORMAT} \
                 (written by a newer pitr?)",
                self.format
            ));
        }
        if self.backup_type.is_full() != self.parent.is_none() {
            return Err("a full backup names a parent, or an incremental one none".into());
        }
        for named in self
            .parent
            .iter()
            .chain(self.files.iter().filter_map(|f| f.backup.as_ref()))
        {
            if !is_backup_id(named) {
                return Err(format!(
                    "'{named}' is not a backup id: the manifest is unsafe (tampered with?)"
                ));
            }
        }
        if self.id != id {
            return Err(format!("it names backup '{}', not '{id}'", self.id));
        }
        if self.timeline == 0 {
            return Err("timeline 0 does not exist".into());
        }
        if self.stop_lsn < self.start_lsn {
            return Err(format!(
                "its stop LSN {} precedes its start LSN {}",
                self.stop_lsn, self.start_lsn
            ));
        }
        for segment in [&self.start_wal_segment, &self.stop_wal_segment] {
            if WalFileName::parse(segment).map(|n| n.kind()) != Ok(WalFileKind::Segment) {
                return Err(format!("'{segment}' is not a WAL segment name"));
            }
        }
        let label = parse_backup_label(&self.backup_label)
            .map_err(|e| format!("its backup_label is invalid: {e}"))?;
        if label.start_lsn != self.start_lsn {
            return Err(format!(
                "its backup_label starts at {}, the manifest at {}",
                label.start_lsn, self.start_lsn
            ));
        }
        for tablespace in &self.tablespaces {
            if !tablespace.path.starts_with('/') || has_bad_component(&tablespace.path) {
                return Err(format!(
                    "tablespace {} has the invalid path '{}'",
                    tablespace.oid, tablespace.path
                ));
            }
        }
        for path in self.directories.iter().map(|d| d.path.as_str()) {
            check_relative(path)?;
            if let Some(oid) = tablespace_link(path)
                && !self.tablespaces.iter().any(|t| t.oid == oid)
            {
                return Err(format!(
                    "'{path}' links a tablespace the manifest does not list: the manifest is \
                     unsafe (tampered with?)"
                ));
            }
        }
        if let Some(configuration) = &self.configuration {
            let settings = [
                &configuration.config_file,
                &configuration.hba_file,
                &configuration.ident_file,
            ];
            let paths = configuration.files.iter().map(|f| &f.path);
            for path in settings.into_iter().chain(paths) {
                if !path.starts_with('/') || has_bad_component(path) {
                    return Err(format!(
                        "the configuration file '{path}' is not an absolute path: the manifest \
                         is unsafe (tampered with?)"
                    ));
                }
            }
            for file in &configuration.files {
                if file.offset.checked_add(file.size).is_none() {
                    return Err(format!("{}: offset and size overflow", file.path));
                }
            }
        }
        if !self.files.iter().any(|f| f.path == "global/pg_control") {
            return Err("it lists no global/pg_control: not a whole data directory".into());
        }
        for file in &self.files {
            check_relative(&file.path)?;
            if file.file_offset.checked_add(file.size).is_none()
                || file.offset.checked_add(file.size).is_none()
            {
                return Err(format!("{}: offset and size overflow", file.path));
            }
            if let Some(delta) = &file.delta {
                self.check_delta(file, delta)?;
            }
        }
        Ok(())
    }

    /// A delta's blocks are where its bytes say: ascending runs inside the file's size, as
    /// many blocks as the entry holds bytes.
    fn check_delta(&self, file: &BackupFile, delta: &Delta) -> Result<(), String> {
        let bad = |why: &str| Err(format!("{}: its delta {why}", file.path));
        // PostgreSQL's BLCKSZ is a power of two from 1 kB to 32 kB.
        let Some(block_size) = self
            .block_size
            .filter(|b| b.is_power_of_two() && (1024..=32768).contains(b))
        else {
            return bad("has no block size to place its blocks by");
        };
        if self.format != INCREMENTAL_MANIFEST_FORMAT || file.file_offset != 0 {
            return bad("is in a manifest that cannot hold one");
        }
        let mut end = 0u64;
        for &[first, count] in &delta.runs {
            let (first, count) = (u64::from(first), u64::from(count));
            if count == 0 || first < end {
                return bad("has runs out of order");
            }
            end = first + count;
        }
        if end > delta.file_size.div_ceil(u64::from(block_size)) {
            return bad("has blocks past the file's end");
        }
        if delta.block_count().checked_mul(u64::from(block_size)) != Some(file.size) {
            return bad("holds a number of blocks its size does not");
        }
        Ok(())
    }
}

/// A backup id names a directory of the repository: a plain name, never a path.
fn is_backup_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl BackupManifest {
    /// Every data object of this backup's own that the manifest names: the data
    /// directory's and the configuration's.
    pub fn objects(&self) -> std::collections::BTreeSet<u32> {
        let config = self.configuration.iter().flat_map(|c| &c.files);
        self.files
            .iter()
            .filter(|f| f.backup.is_none())
            .chain(&self.server_manifest)
            .map(|f| f.object)
            .chain(config.map(|f| f.object))
            .collect()
    }

    /// The objects of other backups (the chain's) that the manifest refers to.
    pub fn referenced_objects(&self) -> std::collections::BTreeSet<(&str, u32)> {
        self.files
            .iter()
            .filter_map(|f| Some((f.backup.as_deref()?, f.object)))
            .collect()
    }

    /// The backups whose objects this one's files come from, this one included.
    pub fn chain_ids(&self) -> std::collections::BTreeSet<&str> {
        let mut ids: std::collections::BTreeSet<&str> = self
            .files
            .iter()
            .filter_map(|f| f.backup.as_deref())
            .collect();
        ids.insert(&self.id);
        ids.extend(self.parent.as_deref());
        ids
    }
}

/// `pg_tblspc/<oid>`, the link to a tablespace.
pub fn tablespace_link(path: &str) -> Option<u32> {
    path.strip_prefix("pg_tblspc/")?.parse().ok()
}

fn has_bad_component(path: &str) -> bool {
    path.contains('\0')
        || path
            .split('/')
            .skip(1)
            .any(|part| part.is_empty() || part == "." || part == "..")
}

/// A path inside the data directory: relative, without `.` or `..`.
fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') || has_bad_component(&format!("/{path}")) {
        return Err(format!(
            "'{path}' is not a path inside the data directory: the manifest is unsafe \
             (tampered with?)"
        ));
    }
    Ok(())
}

/// The backups of a repository: those that can be restored, and those whose manifest is
/// damaged (they cannot, and nothing else is held back by them).
#[derive(Clone, Debug, Default)]
pub struct BackupList {
    pub manifests: Vec<BackupManifest>,
    pub damaged: Vec<DamagedBackup>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedBackup {
    pub id: String,
    pub reason: String,
}

/// What `backup/<id>/` holds, manifest or not (a backup interrupted, or a manifest lost).
#[derive(Clone, Debug, Default)]
pub struct BackupObjects {
    pub id: String,
    pub manifest: Option<StoredObject>,
    /// Data objects by number.
    pub data: BTreeMap<u32, StoredObject>,
    pub claim: Option<StoredObject>,
    pub pin: Option<StoredObject>,
    /// Written by a backup that failed and gave up (`abandoned.json`).
    pub abandoned: Option<StoredObject>,
    /// The repository's object format: the keys of data objects not listed.
    object_kind: CompressionType,
}

/// `backup/<id>/claim.json`: who took the id, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupClaim {
    pub pid: u32,
    pub claimed_at: DateTime<Utc>,
    /// Claims written before hosts were recorded have none.
    #[serde(default)]
    pub host: Option<String>,
}

/// `backup/<id>/pin.json`: whether retention must keep the backup, and the user's notes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPin {
    pub format: u32,
    pub id: String,
    pub pinned: bool,
    pub annotations: BTreeMap<String, String>,
    #[serde(with = "micros")]
    pub updated_at: DateTime<Utc>,
}

impl BackupPin {
    pub fn new(id: &str) -> Self {
        BackupPin {
            format: PIN_FORMAT,
            id: id.to_owned(),
            pinned: false,
            annotations: BTreeMap::new(),
            updated_at: Self::now(),
        }
    }

    /// Now, to the microsecond the object records.
    pub fn now() -> DateTime<Utc> {
        let now = Utc::now();
        DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
    }

    fn checked(self, id: &str) -> Result<Self, String> {
        let pin = self;
        if pin.format != PIN_FORMAT {
            return Err(format!("pin format {} is not {PIN_FORMAT}", pin.format));
        }
        if pin.id != id {
            return Err(format!("it names backup '{}', not '{id}'", pin.id));
        }
        Ok(pin)
    }
}

/// What a removal did: objects gone, and those a retention lock kept (left for a later run).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Deletion {
    pub deleted: u64,
    pub protected: Vec<Protected>,
}

impl Deletion {
    pub fn add(&mut self, other: Deletion) {
        self.deleted += other.deleted;
        self.protected.extend(other.protected);
    }
}

impl BackupObjects {
    /// The key the manifest has, or would have, for messages.
    pub fn manifest_key(&self) -> String {
        manifest_key(&self.id)
    }

    /// The key data object `n` has, or would have, for messages.
    pub fn data_key(&self, n: u32) -> String {
        backup_object_key(&self.id, n, self.object_kind)
    }
}

impl Catalog {
    /// Claims a new backup id: `base` if no backup has used it (objects of an interrupted
    /// backup count), else `base-2`, `base-3`…; leftovers are never overwritten or adopted.
    /// The claim is a create-only object, so two backups started in the same second (even
    /// from two hosts) get two ids.
    pub async fn claim_backup_id(&self, base: &str) -> Result<String, CatalogError> {
        let claim = serde_json::json!({
            "pid": std::process::id(),
            "claimed_at": crate::pg::timestamp::rfc3339_micros(Utc::now()),
            "host": crate::host_name().unwrap_or_default(),
        });
        for attempt in 1u32.. {
            let id = if attempt == 1 {
                base.to_owned()
            } else {
                format!("{base}-{attempt}")
            };
            if !self.storage.list(&backup_prefix(&id)).await?.is_empty() {
                continue;
            }
            let payload = PutPayload::from_bytes(claim.to_string());
            match self
                .storage
                .put(
                    &format!("{}{CLAIM_LEAF}", backup_prefix(&id)),
                    payload,
                    PutMode::Create,
                )
                .await
            {
                Ok(()) => return Ok(id),
                Err(StorageError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    /// Encodes what `reader` yields as data object `object` of backup `id` (handing the
    /// reader back, with what it learned); `source` names it in messages.
    pub async fn store_backup_object<R: Read + Send + 'static>(
        &self,
        id: &str,
        object: u32,
        source: &str,
        reader: R,
    ) -> Result<(R, EncodeSummary), CatalogError> {
        self.store_backup_encoded(id, object, source, move |staged, format| {
            let mut reader = reader;
            let encoded = codec::encode_reader(&mut reader, staged, format, 1)?;
            Ok((encoded, reader))
        })
        .await
    }

    /// The same from chunks of at most [`codec::CHUNK_SIZE`] the caller already holds (a
    /// backup over the replication protocol), each encoded as it is.
    pub async fn store_backup_chunks<I>(
        &self,
        id: &str,
        object: u32,
        source: &str,
        chunks: I,
    ) -> Result<EncodeSummary, CatalogError>
    where
        I: Iterator<Item = std::io::Result<Vec<u8>>> + Send + 'static,
    {
        let (_, encoded) = self
            .store_backup_encoded(id, object, source, move |staged, format| {
                Ok((codec::encode_owned_chunks(chunks, staged, format, 1)?, ()))
            })
            .await?;
        Ok(encoded)
    }

    async fn store_backup_encoded<T: Send + 'static>(
        &self,
        id: &str,
        object: u32,
        source: &str,
        encode: impl FnOnce(
            &std::fs::File,
            codec::ObjectFormat,
        ) -> Result<(EncodeSummary, T), codec::CodecError>
        + Send
        + 'static,
    ) -> Result<(T, EncodeSummary), CatalogError> {
        let key = backup_object_key(id, object, self.object_kind().await?);
        let format = self.object_format(&key).await?;
        let (stored, encoded, extra) = self
            .store_encoded(key.clone(), source.to_owned(), move |staged| {
                encode(staged, format)
            })
            .await?;
        match stored {
            Stored::New => Ok((extra, encoded)),
            Stored::AlreadyThere => Err(CatalogError::AlreadyStored {
                what: key,
                location: self.location(),
            }),
        }
    }

    /// Streams data object `object` of backup `id`, verified, into `out`.
    pub async fn fetch_backup_object<W: Write + Send + 'static>(
        &self,
        id: &str,
        object: u32,
        local: &str,
        out: W,
    ) -> Result<(W, DecodeSummary), CatalogError> {
        let key = backup_object_key(id, object, self.object_kind().await?);
        self.decode_key(&key, key.clone(), local, out).await
    }

    /// Decodes data object `object` of backup `id`, verifying it; its decoded length.
    pub async fn check_backup_object(&self, id: &str, object: u32) -> Result<u64, CatalogError> {
        let (_, decoded) = self
            .fetch_backup_object(id, object, "(verify)", std::io::sink())
            .await?;
        Ok(decoded.original_len)
    }

    /// Removes data object `object` of backup `id`: for a copy that found its own earlier,
    /// interrupted attempt at an object damaged, before it writes the object again.
    pub async fn remove_backup_object(&self, id: &str, object: u32) -> Result<(), CatalogError> {
        let key = backup_object_key(id, object, self.object_kind().await?);
        self.storage.delete(&key).await?;
        Ok(())
    }

    /// Takes backup id `id` for a copy of another repository's backup of that id: its claim,
    /// unless an earlier copy (being resumed) took it. The manifest comes last, as for a
    /// backup.
    pub async fn claim_copied_backup(&self, id: &str) -> Result<(), CatalogError> {
        let claim = serde_json::json!({
            "pid": std::process::id(),
            "claimed_at": crate::pg::timestamp::rfc3339_micros(Utc::now()),
            "host": crate::host_name().unwrap_or_default(),
        });
        let key = format!("{}{CLAIM_LEAF}", backup_prefix(id));
        match self
            .storage
            .put(
                &key,
                PutPayload::from_bytes(claim.to_string()),
                PutMode::Create,
            )
            .await
        {
            Ok(()) | Err(StorageError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Proves, before a restore writes anything, that this user can read every object it
    /// needs: `backup`'s data objects and the WAL files `wal` (a HEAD each, `jobs` at once;
    /// a local repository opens each file). The first object that cannot be read is the
    /// error.
    pub async fn probe_restore_objects(
        &self,
        backup: &BackupManifest,
        wal: &[ArchivedFile],
        jobs: usize,
    ) -> Result<(), CatalogError> {
        use futures_util::{StreamExt, TryStreamExt, stream};
        let kind = self.object_kind().await?;
        let own = backup.objects();
        let referenced = backup.referenced_objects();
        let keys = own
            .into_iter()
            .map(|n| backup_object_key(&backup.id, n, kind))
            .chain(
                referenced
                    .into_iter()
                    .map(|(id, n)| backup_object_key(id, n, kind)),
            )
            .chain(wal.iter().map(|f| f.object.key().to_owned()));
        stream::iter(keys)
            .map(|key| async move {
                match self.storage.head(&key).await {
                    Ok(_) => Ok(()),
                    Err(StorageError::NotFound { .. }) => Err(CatalogError::NotFound {
                        what: key,
                        location: self.location(),
                    }),
                    Err(e) => Err(e.into()),
                }
            })
            .buffer_unordered(jobs.max(1))
            .try_collect()
            .await
    }

    /// Records a finished backup; it is listed and restorable from then on. A manifest that
    /// a later read would refuse is refused now, while the backup can still be retaken.
    pub async fn put_manifest(&self, manifest: &BackupManifest) -> Result<(), CatalogError> {
        manifest
            .check(&manifest.id)
            .map_err(|reason| CatalogError::CorruptManifest {
                id: manifest.id.clone(),
                reason,
            })?;
        let key = manifest_key(&manifest.id);
        let json = self.seal_meta(&key, manifest).await?;
        self.storage
            .put(&key, PutPayload::from_bytes(json), PutMode::Create)
            .await?;
        Ok(())
    }

    /// Every finished backup whose manifest is sound, oldest first; a damaged manifest
    /// costs only its own backup (logged; `backup_list` names them).
    pub async fn backups(&self) -> Result<Vec<BackupManifest>, CatalogError> {
        let list = self.backup_list().await?;
        for damaged in &list.damaged {
            tracing::warn!(
                "backup {} is left out: its manifest is damaged ({})",
                damaged.id,
                damaged.reason
            );
        }
        Ok(list.manifests)
    }

    /// Every finished backup, oldest first, and those whose manifest is damaged.
    pub async fn backup_list(&self) -> Result<BackupList, CatalogError> {
        let mut list = BackupList::default();
        for (id, objects) in self.backup_objects().await? {
            if objects.manifest.is_none() {
                continue;
            }
            match self.manifest(&id).await {
                Ok(manifest) => list.manifests.push(manifest),
                // Deleted since the listing.
                Err(CatalogError::NotFound { .. }) => {}
                Err(CatalogError::CorruptManifest { id, reason }) => {
                    list.damaged.push(DamagedBackup { id, reason })
                }
                Err(e) => return Err(e),
            }
        }
        list.manifests.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    /// Every backup directory's objects, by backup id.
    pub async fn backup_objects(&self) -> Result<BTreeMap<String, BackupObjects>, CatalogError> {
        let object_kind = self.object_kind().await?;
        let mut backups: BTreeMap<String, BackupObjects> = BTreeMap::new();
        for meta in self.storage.list(BACKUP_PREFIX).await? {
            let Some((id, rest)) = meta
                .key
                .strip_prefix(BACKUP_PREFIX)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let entry = backups
                .entry(id.to_owned())
                .or_insert_with(|| BackupObjects {
                    id: id.to_owned(),
                    object_kind,
                    ..BackupObjects::default()
                });
            let number = rest
                .strip_prefix("data/")
                .and_then(strip_object_suffix)
                .and_then(|n| n.parse::<u32>().ok());
            let object = StoredObject {
                size: meta.size,
                key: meta.key.clone(),
            };
            if rest == MANIFEST_LEAF {
                entry.manifest = Some(object);
            } else if rest == CLAIM_LEAF {
                entry.claim = Some(object);
            } else if rest == PIN_LEAF {
                entry.pin = Some(object);
            } else if rest == ABANDONED_LEAF {
                entry.abandoned = Some(object);
            } else if let Some(n) = number
                .filter(|&n| strip_object_suffix(&meta.key) == Some(&backup_object_stem(id, n)))
            {
                entry.data.insert(n, object);
            }
        }
        Ok(backups)
    }

    /// One backup's manifest, checked.
    pub async fn manifest(&self, id: &str) -> Result<BackupManifest, CatalogError> {
        let key = manifest_key(id);
        let bytes = match read_all(&*self.storage, &key).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound { .. }) => {
                return Err(CatalogError::NotFound {
                    what: format!("backup {id}"),
                    location: self.location(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.unseal_meta::<BackupManifest>(&key, bytes)
            .await?
            .and_then(|manifest| manifest.checked(id))
            .map_err(|reason| CatalogError::CorruptManifest {
                id: id.to_owned(),
                reason,
            })
    }

    /// Removes a backup: its backup history file (so that a removal cut short never looks
    /// like a finished backup that lost its manifest), then the manifest (so that it is no
    /// longer listed), then its data and pin, the claim last. Objects a retention lock keeps
    /// stop the removal where it stands (a protected manifest leaves the backup whole).
    /// Leftovers of an interrupted backup go the same way. Whether the backup may go is the
    /// caller's proof to make (retention).
    pub async fn delete_backup(
        &self,
        id: &str,
        backup_history: Option<&ArchivedFile>,
    ) -> Result<Deletion, CatalogError> {
        let objects = self.storage.list(&backup_prefix(id)).await?;
        let (manifest, claim) = (
            manifest_key(id),
            format!("{}{CLAIM_LEAF}", backup_prefix(id)),
        );
        let mut done = Deletion::default();
        let steps: [Vec<String>; 4] = [
            backup_history
                .map(|f| f.object.key().to_owned())
                .into_iter()
                .collect(),
            objects
                .iter()
                .filter(|o| o.key == manifest)
                .map(|o| o.key.clone())
                .collect(),
            objects
                .iter()
                .filter(|o| o.key != manifest && o.key != claim)
                .map(|o| o.key.clone())
                .collect(),
            objects
                .iter()
                .filter(|o| o.key == claim)
                .map(|o| o.key.clone())
                .collect(),
        ];
        for keys in steps {
            let step = self.delete_keys(&keys).await?;
            let stop = !step.protected.is_empty();
            done.add(step);
            if stop {
                break;
            }
        }
        Ok(done)
    }

    /// Removes what a failed backup `id` wrote, leaving the objects of every other backup
    /// and all WAL alone: marked abandoned first (so that leftovers of a removal cut short
    /// are never taken for a finished backup that lost its manifest), then its data and pin,
    /// the mark and the claim last. A manifest that is there after all (a put reported
    /// failed after it stored) keeps the whole backup: `Ok(false)`.
    pub async fn abandon_backup(&self, id: &str) -> Result<bool, CatalogError> {
        let manifest = manifest_key(id);
        match self.storage.head(&manifest).await {
            Ok(_) => return Ok(false),
            Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let (claim, mark) = (
            format!("{}{CLAIM_LEAF}", backup_prefix(id)),
            format!("{}{ABANDONED_LEAF}", backup_prefix(id)),
        );
        let record = serde_json::json!({
            "pid": std::process::id(),
            "abandoned_at": crate::pg::timestamp::rfc3339_micros(Utc::now()),
            "host": crate::host_name().unwrap_or_default(),
        })
        .to_string();
        let put_mark = || async {
            self.storage
                .put(
                    &mark,
                    PutPayload::from_bytes(record.clone()),
                    PutMode::Overwrite,
                )
                .await
        };
        // A full repository may refuse the mark until the data is gone: tried again then.
        let mut marked = put_mark().await.is_ok();
        let objects = self.storage.list(&backup_prefix(id)).await?;
        let data: Vec<String> = objects
            .iter()
            .map(|o| o.key.clone())
            .filter(|key| *key != claim && *key != mark && *key != manifest)
            .collect();
        let removed = self.delete_keys(&data).await;
        if !matches!(&removed, Ok(d) if d.protected.is_empty()) {
            if !marked {
                marked = put_mark().await.is_ok();
            }
            if !marked {
                tracing::warn!("backup {id}: could not mark its leftovers abandoned");
            }
            removed?;
            return Ok(true);
        }
        self.delete_keys(&[mark, claim]).await?;
        Ok(true)
    }

    /// Deletes `keys` in one call of the store; what a lock kept is reported.
    pub(super) async fn delete_keys(&self, keys: &[String]) -> Result<Deletion, CatalogError> {
        if keys.is_empty() {
            return Ok(Deletion::default());
        }
        let protected = self.storage.delete_many(keys).await?;
        Ok(Deletion {
            // The store's answer, not ours: a count it gets wrong must not wrap.
            deleted: keys.len().saturating_sub(protected.len()) as u64,
            protected,
        })
    }

    /// Who claimed `id`, if the claim is there and readable.
    pub async fn backup_claim(&self, id: &str) -> Result<Option<BackupClaim>, CatalogError> {
        let key = format!("{}{CLAIM_LEAF}", backup_prefix(id));
        match read_all(&*self.storage, &key).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The pin and annotations of backup `id`; none when never pinned or annotated.
    pub async fn backup_pin(&self, id: &str) -> Result<Option<BackupPin>, CatalogError> {
        let key = format!("{}{PIN_LEAF}", backup_prefix(id));
        let Some(read) = self.read_meta::<BackupPin>(&key).await? else {
            return Ok(None);
        };
        read.and_then(|pin| pin.checked(id))
            .map(Some)
            .map_err(|reason| CatalogError::Corrupt {
                what: key,
                location: self.location(),
                reason,
            })
    }

    /// Records the pin and annotations of a backup, replacing what was there. The manifest
    /// stays as it was sealed.
    pub async fn put_backup_pin(&self, pin: &BackupPin) -> Result<(), CatalogError> {
        let key = format!("{}{PIN_LEAF}", backup_prefix(&pin.id));
        let json = self.seal_meta(&key, pin).await?;
        self.storage
            .put(&key, PutPayload::from_bytes(json), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// The pins of every backup directory that has one, and those that cannot be read.
    pub async fn backup_pins(
        &self,
        objects: &BTreeMap<String, BackupObjects>,
    ) -> Result<(BTreeMap<String, BackupPin>, Vec<DamagedBackup>), CatalogError> {
        let mut pins = BTreeMap::new();
        let mut damaged = Vec::new();
        for id in objects.values().filter(|o| o.pin.is_some()).map(|o| &o.id) {
            match self.backup_pin(id).await {
                Ok(Some(pin)) => {
                    pins.insert(id.clone(), pin);
                }
                Ok(None) => {}
                Err(CatalogError::Corrupt { reason, .. }) => damaged.push(DamagedBackup {
                    id: id.clone(),
                    reason,
                }),
                Err(e) => return Err(e),
            }
        }
        Ok((pins, damaged))
    }
}
