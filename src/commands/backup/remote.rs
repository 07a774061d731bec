//! `pitr backup` over the replication protocol (`--method replication`): `BASE_BACKUP`'s tar
//! streams are parsed as they arrive and cut into the objects a local backup writes (bundles
//! of small files, large files alone or in parts), each encoded and stored by its own task
//! while the next one arrives. Nothing is staged whole: an object's bytes pass through a
//! small channel to the encoder, which stages only the encoded object, as a local backup does.
//! The server's backup_manifest is checked against every file that arrived and kept with the
//! backup.

use std::io;

use bytes::Bytes;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use crate::catalog::backup::{
    BackupDirectory, BackupFile, BackupManifest, BackupMethod, BackupType,
    INCREMENTAL_MANIFEST_FORMAT, MANIFEST_FORMAT, Tablespace, tablespace_link,
};
use crate::catalog::{Catalog, RepositoryIdentity, total_bytes};
use crate::error::{Error, Result};
use crate::interrupt::Interrupt;
use crate::pg::WalFileName;
use crate::pg::backup_manifest::parse_server_manifest;
use crate::pg::relpath::database_of;
use crate::pg::replication::{
    self as replication, BackupStream, BackupStreamEvent, BaseBackupRequest, Syntax, base_backup,
    parse_backup_position, parse_backup_tablespaces, parse_timeline_history,
};
use crate::pg::tar_stream::{ArchiveEnd, EntryKind, TarEntry, TarEvent, TarStream};
use crate::pg::timeline::{parse_history, stop_segment_name};
use crate::pg::wal_name::backup_history_file_name;
use crate::server::replication::{
    ReplicationConnection, ReplicationError, ReplicationEvent, ReplicationMode,
};
use crate::server::{ArchiverStats, ConnectSettings, Session};

use super::incremental::{
    ArchivedWal, ClusterFacts, Incremental, PagePicker, Take, prepare as prepare_incremental,
    replication_facts,
};
use super::inflate::Inflater;
use super::server_wal::ServerWal;
use super::wal_receiver::{self, StreamedWal, WalConnection};
use super::{
    BUNDLE_FILE_LIMIT, BUNDLE_SIZE, BackupOptions, BackupReport, CONTROL_FILE, CopiedObject,
    NetworkCompression, PART_SIZE, SourceFile, WalMethod, WalWait, check_archiving, read_label,
    stopped, stopped_before_writing, wait_for_backup_wal, wrong_major,
};

/// An object's bytes are handed to its encoder in chunks of the codec's frame size, which
/// become its frames as they are: one wake-up of the encoder's thread per MiB, not per
/// 32 KiB message, and no second copy.
const HANDOFF_BYTES: usize = crate::codec::CHUNK_SIZE;
/// Chunks on their way to an object's encoder: with the one being gathered, 5 MiB per object
/// at most.
const CHANNEL_DEPTH: usize = 4;
/// backup_label and tablespace_map are a few hundred bytes; anything near this is not one.
const SMALL_FILE_LIMIT: u64 = 1 << 20;
/// A server manifest is about 150 bytes per file: this is millions of files.
const MANIFEST_LIMIT: usize = 1 << 30;

/// What is known before the backup's id is claimed.
pub(super) struct Prepared {
    connection: ReplicationConnection,
    /// An SQL session where the server allows one: the database names (for
    /// `restore --db-include`) and the archiver's state. A role with only REPLICATION
    /// rights has none, and the backup goes on without them.
    session: Option<Session>,
    syntax: Syntax,
    identity: RepositoryIdentity,
    archiver_before: Option<ArchiverStats>,
    /// archive_mode is off and `pitr receive-wal` brings the WAL (no backup history file).
    receiver_only: bool,
    data_directory: Option<String>,
    /// Where the WAL comes from: streamed over a second connection, or the archive.
    stream_wal: bool,
    settings: ConnectSettings,
    /// Checksums and block size, for the choice of a parent and for later backups' (none
    /// where the server would not say).
    facts: Option<ClusterFacts>,
    pub(super) start_time: DateTime<Utc>,
}

/// Opens the replication connection and checks that it reaches the repository's cluster.
pub(super) async fn prepare(
    catalog: &Catalog,
    settings: &ConnectSettings,
    session: Option<Session>,
    identity: RepositoryIdentity,
    wal_method: WalMethod,
    interrupt: &Interrupt,
) -> Result<Prepared> {
    let mut connection = interrupt
        .race(ReplicationConnection::connect(
            settings,
            ReplicationMode::Physical,
        ))
        .await
        .map_err(stopped_before_writing)??;
    let major = connection.server_major()?;
    wrong_major(major, &identity)?;
    let syntax = Syntax::for_major(major).map_err(|e| Error::Server(e.to_string()))?;
    let system = connection.identify_system().await?;
    if system.system_id != identity.system_identifier {
        return Err(Error::WrongRepository(format!(
            "the server has system identifier {}, but the repository belongs to {}",
            system.system_id, identity.system_identifier
        )));
    }
    // Only for the record (restore tells an in-place restore by it): a role without
    // pg_read_all_settings may not read it.
    let data_directory = match replication::show_setting("data_directory") {
        Ok(sql) => match connection.query_rows(&sql).await {
            Ok(rows) => rows.first().and_then(|row| row.first().cloned().flatten()),
            Err(e) => {
                tracing::debug!("SHOW data_directory: {e}");
                None
            }
        },
        Err(_) => None,
    };
    let facts = match replication_facts(&mut connection).await {
        Ok(facts) => Some(facts),
        Err(e) => {
            tracing::warn!("data_checksums and block_size are not recorded ({e})");
            None
        }
    };
    let stream_wal = match (wal_method, &session) {
        (WalMethod::Stream, _) => true,
        (WalMethod::Archive, _) => false,
        (WalMethod::Auto, None) => true,
        (WalMethod::Auto, Some(session)) => !archives_here(catalog, session).await,
    };
    if stream_wal {
        tracing::info!(
            "the backup's WAL is streamed over a second replication connection into the \
             repository"
        );
    } else {
        tracing::info!("the backup's WAL comes through the server's archive_command");
    }
    // Streamed WAL needs no archiver; archived WAL needs one that works.
    let (archiver_before, receiver_only) = match &session {
        Some(session) if !stream_wal => {
            let checked = check_archiving(session, interrupt).await?;
            (checked.stats, checked.receiver_only)
        }
        _ => (None, false),
    };
    Ok(Prepared {
        connection,
        session,
        syntax,
        identity,
        archiver_before,
        receiver_only,
        data_directory,
        stream_wal,
        settings: settings.clone(),
        facts,
        start_time: Utc::now(),
    })
}

/// Whether the server archives into this repository: archiving is on, and the last segment
/// its archiver stored is here.
async fn archives_here(catalog: &Catalog, session: &Session) -> bool {
    let mode = session
        .text("reading archive_mode", "SHOW archive_mode")
        .await
        .unwrap_or_default();
    if mode == "off" || mode.is_empty() {
        return false;
    }
    let Some(last) = session
        .archiver_stats()
        .await
        .ok()
        .and_then(|stats| stats.last_archived_wal)
        .and_then(|name| WalFileName::parse(&name).ok())
    else {
        return false;
    };
    catalog.has_wal(&last).await.unwrap_or(false)
}

/// Takes the backup under the claimed `id`; on an error the caller removes what it wrote.
pub(super) async fn backup_claimed(
    catalog: &Catalog,
    options: &BackupOptions,
    prepared: Prepared,
    id: &str,
    started: Instant,
    interrupt: &Interrupt,
) -> Result<BackupReport> {
    let Prepared {
        mut connection,
        session,
        syntax,
        identity,
        archiver_before,
        receiver_only,
        data_directory,
        stream_wal,
        settings,
        facts,
        start_time,
    } = prepared;
    let label = format!("pitr backup {id}");
    let mut request = BaseBackupRequest {
        label: label.clone(),
        fast: options.fast,
        max_rate_kb: options.max_rate_kb,
        progress: true,
        manifest: true,
        wal: false,
        // pitr waits for the WAL itself, with a deadline and word of the archiver.
        wait_for_archive: false,
        server_lz4: match options.network_compression {
            NetworkCompression::None => false,
            // Compressing pays where bytes cross a network, not between processes of a host.
            NetworkCompression::Auto => {
                syntax == Syntax::OptionList && !connection.server_on_this_host()
            }
            NetworkCompression::Lz4 if syntax == Syntax::OptionList => true,
            NetworkCompression::Lz4 => {
                return Err(Error::Config(format!(
                    "--network-compression lz4 needs a server of PostgreSQL 15 or later, which \
                     compresses base backups; this one runs {syntax}: use \
                     --network-compression none"
                )));
            }
        },
    };
    let command = base_backup(syntax, &request).map_err(|e| Error::Config(e.to_string()))?;
    // The slot first: it holds the WAL from before the backup's start on.
    let wal = match stream_wal {
        true => Some(
            interrupt
                .race(wal_receiver::reserve(&settings, syntax, id))
                .await
                .map_err(stopped)??,
        ),
        false => None,
    };
    connection.start(&command).await?;
    // A server built without lz4 refuses at once, before its checkpoint: where lz4 was only
    // preferred, the backup goes on uncompressed.
    let mut first = None;
    if request.server_lz4 {
        match interrupt
            .race(connection.next_event())
            .await
            .map_err(stopped)?
        {
            Err(ReplicationError::Server(refusal))
                if cannot_compress(&refusal)
                    && options.network_compression == NetworkCompression::Lz4 =>
            {
                return Err(Error::Config(format!(
                    "the server cannot compress the backup ({}): use --network-compression \
                     none, or a PostgreSQL built with lz4",
                    refusal.message
                )));
            }
            Err(ReplicationError::Server(refusal)) if cannot_compress(&refusal) => {
                tracing::info!(
                    "the server cannot compress the backup ({}): it is sent uncompressed",
                    refusal.message
                );
                request.server_lz4 = false;
                let command =
                    base_backup(syntax, &request).map_err(|e| Error::Config(e.to_string()))?;
                connection.start(&command).await?;
            }
            event => first = Some(event),
        }
    }
    if request.server_lz4 {
        tracing::info!("the server compresses the backup with lz4");
    }
    let mut receiver = Receiver::new(catalog, id, options, syntax, request.server_lz4);
    receiver.incremental = match (options.backup_type, &facts) {
        (BackupType::Full, _) => Parent::None,
        (kind, Some(_)) => Parent::Wanted {
            kind,
            settings: settings.clone(),
            archived: match stream_wal {
                true => ArchivedWal::AsFound,
                false => ArchivedWal::Awaited,
            },
        },
        (kind, None) => {
            tracing::warn!(
                "backup {id} is taken full: the server did not say whether data checksums are \
                 on, which an {} backup checks against its parent",
                kind.name()
            );
            Parent::None
        }
    };
    receiver.facts = facts;
    receiver.wal = wal.map(|connection| WalStreaming::Reserved {
        connection,
        identity: identity.clone(),
    });
    let received = receiver.run(&mut connection, first, interrupt).await;
    let received = match received {
        Ok(received) => received,
        Err(error) => {
            receiver.abandon().await;
            return Err(error);
        }
    };
    let streamed = match receiver.wal.take() {
        Some(WalStreaming::Running { stop, task }) => {
            // None: no deadline (a timeout too large to add), as for the archive's wait.
            let deadline = Instant::now().checked_add(options.wal_timeout);
            let _ = stop.send(Some((received.stop, deadline)));
            Some(
                interrupt
                    .race(task)
                    .await
                    .map_err(stopped)?
                    .map_err(wal_failed)?,
            )
        }
        Some(WalStreaming::Ended(result)) => Some(result.map_err(wal_failed)?),
        _ => None,
    };
    let Received {
        start,
        stop,
        stop_timeline,
        copied,
        directories,
        tablespaces,
        tablespace_map,
        backup_label,
        server_manifest,
        listed,
        incremental,
    } = received;
    options.progress.finish();
    tracing::info!(
        "backup {id}: {} files received, {} objects",
        listed.len(),
        copied.len()
    );
    check_against_server_manifest(&server_manifest, &listed, identity.system_identifier)?;
    let manifest_object = copied.len() as u32;
    let manifest_entry =
        store_server_manifest(catalog, id, manifest_object, server_manifest).await?;

    let segment_size = identity.wal_segment_size;
    let (parsed_label, start_wal_segment, timeline) =
        read_label(&backup_label, "BASE_BACKUP sent", start, segment_size)?;
    let from_standby = parsed_label.backup_from.as_deref() == Some("standby");
    let history = if stop_timeline > timeline {
        let sql = replication::timeline_history(stop_timeline)
            .map_err(|e| Error::Server(e.to_string()))?;
        let rows = connection.query_rows(&sql).await?;
        let file = parse_timeline_history(&rows).map_err(|e| Error::Server(e.to_string()))?;
        parse_history(stop_timeline, &String::from_utf8_lossy(&file.content))
            .map_err(|e| Error::Server(format!("timeline {stop_timeline}'s history: {e}")))?
    } else {
        Vec::new()
    };
    let stop_wal_segment = stop_segment_name(stop, stop_timeline, &history, segment_size);
    let stop_segment =
        WalFileName::parse(&stop_wal_segment).map_err(|e| Error::Server(e.to_string()))?;
    tracing::info!("backup {id} stopped at {stop} ({stop_wal_segment})");
    // The backup is over on the server: the connection has nothing more to say.
    drop(connection.close().await);
    let stop_time = Utc::now();

    if let Some(StreamedWal { segments, last }) = &streamed {
        tracing::info!("backup {id}: {segments} WAL segments streamed, the last {last}");
    }
    let mut awaited = vec![stop_segment];
    // PostgreSQL writes a backup history file only where it archives.
    if !from_standby && streamed.is_none() && !receiver_only {
        let history = backup_history_file_name(timeline, start, segment_size);
        awaited.push(WalFileName::parse(&history).map_err(|e| Error::Server(e.to_string()))?);
    }
    let wal_deadline = Instant::now().checked_add(options.wal_timeout);
    wait_for_backup_wal(
        catalog,
        session.as_ref(),
        options,
        WalWait {
            id,
            files: awaited,
            deadline: wal_deadline,
            archiver_before,
        },
        interrupt,
    )
    .await?;

    let (databases, superuser) = match &session {
        Some(session) => match session.databases().await {
            Ok((databases, superuser)) => (databases, Some(superuser)),
            Err(e) => {
                tracing::warn!("backup {id}: the database names are not recorded ({e})");
                (Vec::new(), None)
            }
        },
        None => (Vec::new(), None),
    };
    let tablespace_map = tablespace_map.or_else(|| {
        (!tablespaces.is_empty()).then(|| {
            tablespaces
                .iter()
                .map(|t| format!("{} {}\n", t.oid, t.path))
                .collect()
        })
    });
    let mut files: Vec<BackupFile> = copied.iter().flat_map(|(f, _)| f.clone()).collect();
    let incremental = incremental.map(|(incremental, reused)| {
        files.extend(reused);
        incremental
    });
    super::sort_entries(&mut files);
    let object_count = copied.len() as u32 + 1;
    let manifest = BackupManifest {
        format: match incremental {
            Some(_) => INCREMENTAL_MANIFEST_FORMAT,
            None => MANIFEST_FORMAT,
        },
        id: id.to_owned(),
        label,
        system_identifier: identity.system_identifier.to_string(),
        pg_version: identity.pg_version,
        timeline,
        start_lsn: start,
        stop_lsn: stop,
        start_time,
        stop_time,
        start_wal_segment,
        stop_wal_segment,
        backup_label,
        tablespace_map,
        tablespaces,
        size_bytes: super::logical_size(&files),
        stored_bytes: total_bytes(
            copied
                .iter()
                .map(|(_, stored)| *stored)
                .chain([manifest_entry.1]),
        ),
        directories,
        files,
        cluster_owner: None,
        data_directory,
        databases: databases
            .into_iter()
            .map(|(oid, name)| crate::catalog::backup::Database { oid, name })
            .collect(),
        superuser,
        configuration: None,
        method: BackupMethod::Replication,
        server_manifest: Some(manifest_entry.0),
        backup_type: incremental
            .as_ref()
            .map_or(BackupType::Full, |i| i.backup_type),
        parent: incremental.as_ref().map(|i| i.parent.id.clone()),
        data_checksums: facts.as_ref().map(|f| f.data_checksums),
        block_size: facts.as_ref().map(|f| f.block_size),
        changes_from: incremental.as_ref().map(|i| i.changes_from()),
    };
    super::record_manifest(catalog, options, &manifest).await?;
    Ok(BackupReport {
        manifest,
        objects: object_count,
        elapsed: started.elapsed(),
    })
}

/// Every file the server's manifest lists arrived with its size and checksum, and nothing
/// else did: the backup holds what the server meant to send.
fn check_against_server_manifest(
    bytes: &[u8],
    listed: &[ReceivedFile],
    system_identifier: u64,
) -> Result<()> {
    let refuse = |why: String| {
        Error::Server(format!(
            "the backup does not match the server's backup_manifest: {why}; nothing was \
             recorded; run pitr backup again"
        ))
    };
    let manifest = parse_server_manifest(bytes).map_err(|e| refuse(e.to_string()))?;
    if let Some(found) = manifest.system_identifier
        && found != system_identifier
    {
        return Err(refuse(format!(
            "it names system identifier {found}, the repository {system_identifier}"
        )));
    }
    let mut arrived: std::collections::HashMap<&str, &ReceivedFile> =
        listed.iter().map(|f| (f.path.as_str(), f)).collect();
    for file in &manifest.files {
        let Some(got) = arrived.remove(file.path.as_str()) else {
            return Err(refuse(format!(
                "{} is listed but did not arrive",
                file.path
            )));
        };
        if got.size != file.size {
            return Err(refuse(format!(
                "{} arrived with {} bytes, listed with {}",
                file.path, got.size, file.size
            )));
        }
        if let Some(crc) = file.crc32c
            && crc != got.crc32c
        {
            return Err(refuse(format!(
                "{} arrived with CRC-32C {:08x}, listed with {crc:08x}",
                file.path, got.crc32c
            )));
        }
    }
    if let Some(extra) = arrived.keys().min() {
        return Err(refuse(format!("{extra} arrived but is not listed")));
    }
    Ok(())
}

/// Stores the server's backup_manifest as data object `object`; its entry and stored size.
async fn store_server_manifest(
    catalog: &Catalog,
    id: &str,
    object: u32,
    bytes: Vec<u8>,
) -> Result<(BackupFile, u64)> {
    let entry = BackupFile {
        path: "backup_manifest".into(),
        size: bytes.len() as u64,
        file_offset: 0,
        mode: 0o600,
        mtime: Utc::now().timestamp(),
        crc32c: crc32c::crc32c(&bytes),
        object,
        offset: 0,
        backup: None,
        delta: None,
    };
    let (_, encoded) = catalog
        .store_backup_object(
            id,
            object,
            "the server's backup_manifest",
            io::Cursor::new(bytes),
        )
        .await?;
    Ok((entry, encoded.stored_len))
}

/// A whole file that arrived: what the server's manifest is checked against.
struct ReceivedFile {
    path: String,
    size: u64,
    crc32c: u32,
}

/// Everything a finished `BASE_BACKUP` delivered.
struct Received {
    start: crate::pg::Lsn,
    stop: crate::pg::Lsn,
    stop_timeline: u32,
    copied: Vec<CopiedObject>,
    directories: Vec<BackupDirectory>,
    tablespaces: Vec<Tablespace>,
    tablespace_map: Option<String>,
    backup_label: String,
    server_manifest: Vec<u8>,
    listed: Vec<ReceivedFile>,
    /// The parent, and the entries of it and its chain this backup takes.
    incremental: Option<(Incremental, Vec<BackupFile>)>,
}

/// An object whose bytes are still arriving: they go to its encoding task.
struct OpenObject {
    index: u32,
    sender: mpsc::Sender<io::Result<Vec<u8>>>,
    /// None once awaited.
    task: Option<tokio::task::JoinHandle<Result<u64>>>,
    entries: Vec<BackupFile>,
    length: u64,
    /// The database of its files (bundles never mix two).
    database: Option<u32>,
    /// Bytes not yet handed to the encoder: the next chunk.
    pending: Vec<u8>,
}

/// Where the current tar entry's bytes go.
enum Sink {
    Bundle,
    /// The object of the current part of a large file (or of pg_control).
    Alone,
    /// Kept in memory: backup_label, tablespace_map.
    Kept(Vec<u8>),
    /// Nothing: the parent's copy stands (an incremental backup).
    Parent,
    /// The changed pages only, into the bundle (an incremental backup).
    Pages(Box<PageSink>),
}

/// A file of which an incremental backup takes some pages.
struct PageSink {
    picker: PagePicker,
    /// The page being received, and its number.
    page: Vec<u8>,
    block: u32,
    block_size: usize,
}

/// What the backup builds on.
#[allow(clippy::large_enum_variant)] // one per backup
enum Parent {
    /// A full backup.
    None,
    /// To be chosen once the start is known, over connections made with `settings`.
    Wanted {
        kind: BackupType,
        settings: ConnectSettings,
        archived: ArchivedWal,
    },
    Chosen(Incremental),
}

/// The tar entry being received.
struct CurrentFile {
    path: String,
    size: u64,
    mode: u32,
    mtime: i64,
    sink: Sink,
    /// Bytes of the file received; the CRC-32C of its parts before the current one.
    received: u64,
    whole_crc: u32,
    /// The current part: where it starts in the file, its bytes so far and their CRC-32C.
    part_offset: u64,
    part_length: u64,
    part_crc: u32,
    /// Where the current part starts in its object.
    object_offset: u64,
}

/// The archive being parsed, and where its entries go in the data directory.
struct Archive {
    tar: TarStream,
    /// `""` for the main data directory, `pg_tblspc/<oid>/` for a tablespace.
    prefix: String,
    /// The archive arrives LZ4-compressed by the server (`COMPRESSION 'lz4'`).
    inflater: Option<Inflater>,
}

/// Drives one `BASE_BACKUP`: its result sets, its archives and manifest, into objects.
struct Receiver<'a> {
    catalog: &'a Catalog,
    id: &'a str,
    options: &'a BackupOptions,
    syntax: Syntax,
    /// The server compresses each archive (`COMPRESSION 'lz4'`).
    server_lz4: bool,
    stream: Option<BackupStream>,
    archive: Option<Archive>,
    current: Option<CurrentFile>,
    bundle: Option<OpenObject>,
    alone: Option<OpenObject>,
    next_object: u32,
    in_flight: FuturesUnordered<BoxFuture<'static, Result<CopiedObject>>>,
    copied: Vec<CopiedObject>,
    positions: Vec<(crate::pg::Lsn, u32)>,
    directories: Vec<BackupDirectory>,
    /// Tablespace OIDs and locations as BASE_BACKUP listed them.
    listed_tablespaces: Vec<(u32, String)>,
    backup_label: Option<Vec<u8>>,
    tablespace_map: Option<Vec<u8>>,
    manifest: Vec<u8>,
    listed: Vec<ReceivedFile>,
    /// The WAL received on a second connection, once the start position is known.
    wal: Option<WalStreaming>,
    incremental: Parent,
    facts: Option<ClusterFacts>,
    /// Entries of the parent's chain that stand for files (or their unchanged pages).
    reused: Vec<BackupFile>,
    /// Entries of the changed pages this backup took.
    page_entries: Vec<BackupFile>,
}

/// The WAL stream of a backup whose server does not archive into the repository.
#[allow(clippy::large_enum_variant)] // one per backup
enum WalStreaming {
    Reserved {
        connection: WalConnection,
        identity: RepositoryIdentity,
    },
    /// Polled beside the base backup's stream (not spawned: archive-push's future, which it
    /// runs, is not provably `Send`).
    Running {
        /// The stop point, and until when the segment holding it may take to complete.
        stop: tokio::sync::watch::Sender<Option<(crate::pg::Lsn, Option<Instant>)>>,
        task: WalTask,
    },
    /// Ended before the base backup did: its result.
    Ended(Result<StreamedWal>),
}

type WalTask = std::pin::Pin<Box<dyn std::future::Future<Output = Result<StreamedWal>>>>;

/// The WAL task's next step, for `select!`; pending forever when none runs.
async fn wal_step(wal: &mut Option<WalStreaming>) -> Result<StreamedWal> {
    match wal {
        Some(WalStreaming::Running { task, .. }) => task.await,
        _ => std::future::pending().await,
    }
}

impl<'a> Receiver<'a> {
    fn new(
        catalog: &'a Catalog,
        id: &'a str,
        options: &'a BackupOptions,
        syntax: Syntax,
        server_lz4: bool,
    ) -> Self {
        Receiver {
            catalog,
            id,
            options,
            syntax,
            server_lz4,
            stream: None,
            archive: None,
            current: None,
            bundle: None,
            alone: None,
            next_object: 0,
            in_flight: FuturesUnordered::new(),
            copied: Vec::new(),
            positions: Vec::new(),
            directories: Vec::new(),
            listed_tablespaces: Vec::new(),
            backup_label: None,
            tablespace_map: None,
            manifest: Vec::new(),
            listed: Vec::new(),
            wal: None,
            incremental: Parent::None,
            facts: None,
            reused: Vec::new(),
            page_entries: Vec::new(),
        }
    }

    /// `first`: the command's first event, where it was already read.
    async fn run(
        &mut self,
        connection: &mut ReplicationConnection,
        mut first: Option<std::result::Result<Option<ReplicationEvent>, ReplicationError>>,
        interrupt: &Interrupt,
    ) -> Result<Received> {
        loop {
            let step = match first.take() {
                Some(event) => Ok(Ok(event)),
                None => tokio::select! {
                    event = interrupt.race(connection.next_event()) => Ok(event),
                    ended = wal_step(&mut self.wal) => Err(ended),
                },
            };
            let event = match step {
                Ok(event) => event,
                Err(ended) => {
                    // Its future is done: never polled again.
                    let failed = ended.is_err();
                    self.wal = Some(WalStreaming::Ended(ended));
                    if failed && let Some(WalStreaming::Ended(Err(e))) = self.wal.take() {
                        return Err(wal_failed(e));
                    }
                    continue;
                }
            };
            let event = event.map_err(stopped)?.map_err(|e| {
                Error::Server(format!(
                    "the base backup failed: {e}; nothing of it is recorded; run pitr \
                         backup again"
                ))
            })?;
            let Some(event) = event else { break };
            match event {
                ReplicationEvent::ResultSet(set) => {
                    self.result_set(set.rows)?;
                    if self.positions.len() == 1 && self.stream.is_none() {
                        self.choose_parent().await?;
                    }
                }
                ReplicationEvent::CopyStart { .. } => {
                    let began = self.stream()?.copy_out_began().map_err(protocol)?;
                    if let Some(event) = began {
                        self.stream_event(event, &Bytes::new()).await?;
                    }
                }
                ReplicationEvent::CopyData(payload) => {
                    let event = self.stream()?.copy_data(&payload).map_err(protocol)?;
                    self.stream_event(event, &payload).await?;
                }
                ReplicationEvent::CopyDone => {
                    self.end_archive().await?;
                    self.stream()?.copy_done().map_err(protocol)?;
                }
                ReplicationEvent::CommandComplete(_) => {}
                ReplicationEvent::Ready => break,
            }
        }
        if self.positions.len() != 2 {
            return Err(Error::Server(
                "BASE_BACKUP ended before it sent its end position; nothing of the backup is \
                 recorded; run pitr backup again"
                    .into(),
            ));
        }
        self.close_bundle().await?;
        while let Some(done) = self.in_flight.next().await {
            self.copied.push(done?);
        }
        let backup_label = self
            .backup_label
            .take()
            .ok_or_else(|| Error::Server("the base backup held no backup_label".into()))?;
        let backup_label = String::from_utf8(backup_label)
            .map_err(|_| Error::Server("the backup_label BASE_BACKUP sent is not UTF-8".into()))?;
        // Each tablespace as a local backup records it: where it was, and its link.
        let tablespaces: Vec<Tablespace> = self
            .listed_tablespaces
            .iter()
            .map(|(oid, location)| Tablespace {
                oid: *oid,
                path: location.clone(),
            })
            .collect();
        let mut directories = std::mem::take(&mut self.directories);
        directories.extend(tablespaces.iter().map(|t| BackupDirectory {
            path: format!("pg_tblspc/{}", t.oid),
            mode: 0o700,
        }));
        directories.sort_by(|a, b| a.path.cmp(&b.path));
        directories.dedup_by(|a, b| a.path == b.path);
        let tablespace_map = match self.tablespace_map.take() {
            Some(map) => Some(String::from_utf8(map).map_err(|_| {
                Error::Server("the tablespace_map BASE_BACKUP sent is not UTF-8".into())
            })?),
            None => None,
        };
        let (start, _) = self.positions[0];
        let (stop, stop_timeline) = self.positions[1];
        Ok(Received {
            start,
            stop,
            stop_timeline,
            copied: std::mem::take(&mut self.copied),
            directories,
            tablespaces,
            tablespace_map,
            backup_label,
            server_manifest: std::mem::take(&mut self.manifest),
            listed: std::mem::take(&mut self.listed),
            incremental: match std::mem::replace(&mut self.incremental, Parent::None) {
                Parent::Chosen(incremental) => {
                    let mut reused = std::mem::take(&mut self.reused);
                    reused.append(&mut self.page_entries);
                    Some((incremental, reused))
                }
                _ => None,
            },
        })
    }

    /// Once the start is known: the parent of an incremental backup, and what changed since
    /// its start (the server's stream waits meanwhile).
    async fn choose_parent(&mut self) -> Result<()> {
        if !matches!(self.incremental, Parent::Wanted { .. }) {
            return Ok(());
        }
        let Parent::Wanted {
            kind,
            settings,
            archived,
        } = std::mem::replace(&mut self.incremental, Parent::None)
        else {
            return Ok(());
        };
        let (Some(facts), Some(&(start, timeline))) = (&self.facts, self.positions.first()) else {
            return Ok(());
        };
        let chosen = prepare_incremental(
            self.catalog,
            kind,
            facts,
            &ServerWal::Replication(settings),
            start,
            timeline,
            archived,
            self.options.jobs,
        )
        .await?;
        if let Some(incremental) = super::announce(self.id, chosen) {
            self.incremental = Parent::Chosen(incremental);
        }
        Ok(())
    }

    fn stream(&mut self) -> Result<&mut BackupStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| protocol("a COPY stream before the tablespace list"))
    }

    /// The start position, the tablespace list, the end position, in that order.
    fn result_set(&mut self, rows: Vec<Vec<Option<String>>>) -> Result<()> {
        if self.positions.is_empty() {
            let start = parse_backup_position(&rows).map_err(protocol)?;
            self.positions.push((start.lsn, start.timeline));
            if let Some(WalStreaming::Reserved {
                connection,
                identity,
            }) = self.wal.take()
            {
                let (stop, stop_receiver) = tokio::sync::watch::channel(None);
                let task = Box::pin(connection.stream(
                    self.catalog.clone(),
                    identity,
                    start.lsn,
                    start.timeline,
                    stop_receiver,
                ));
                self.wal = Some(WalStreaming::Running { stop, task });
            }
        } else if self.stream.is_none() {
            let list = parse_backup_tablespaces(&rows).map_err(protocol)?;
            let estimate = list.iter().map(|t| {
                t.size_kb
                    .unwrap_or(0)
                    .max(0)
                    .unsigned_abs()
                    .saturating_mul(1024)
            });
            self.options
                .progress
                .start(&format!("backup {}", self.id), total_bytes(estimate));
            self.listed_tablespaces = list
                .iter()
                .filter_map(|t| Some((t.oid?, t.location.clone()?)))
                .collect();
            self.stream = Some(BackupStream::new(self.syntax, &list, true));
        } else {
            self.stream()?.finish().map_err(protocol)?;
            let stop = parse_backup_position(&rows).map_err(protocol)?;
            self.positions.push((stop.lsn, stop.timeline));
        }
        Ok(())
    }

    /// One event of the stream; `payload` is the COPY message it was read from.
    async fn stream_event(&mut self, event: BackupStreamEvent<'_>, payload: &Bytes) -> Result<()> {
        match event {
            BackupStreamEvent::ArchiveStart { oid, .. } => {
                self.end_archive().await?;
                let prefix = match oid {
                    Some(oid) => format!("pg_tblspc/{oid}/"),
                    None => String::new(),
                };
                self.archive = Some(Archive {
                    tar: TarStream::new(),
                    prefix,
                    inflater: self.server_lz4.then(Inflater::lz4),
                });
            }
            BackupStreamEvent::ArchiveData(bytes) if self.server_lz4 => {
                let mut pending = Some(payload.slice_ref(bytes));
                loop {
                    let inflater = self
                        .archive
                        .as_mut()
                        .and_then(|archive| archive.inflater.as_mut())
                        .ok_or_else(|| protocol("archive data before an archive began"))?;
                    match inflater.step(&mut pending).await.map_err(inflate_error)? {
                        Some(piece) => self.inflated(piece).await?,
                        None if pending.is_none() => break,
                        None => {}
                    }
                }
            }
            BackupStreamEvent::ArchiveData(bytes) => self.archive_bytes(bytes).await?,
            BackupStreamEvent::Progress(_) => {}
            BackupStreamEvent::ManifestStart => self.end_archive().await?,
            BackupStreamEvent::ManifestData(bytes) => {
                if self.manifest.len() + bytes.len() > MANIFEST_LIMIT {
                    return Err(Error::Server(format!(
                        "the server's backup_manifest exceeds {MANIFEST_LIMIT} bytes"
                    )));
                }
                self.manifest.extend_from_slice(bytes);
            }
        }
        Ok(())
    }

    /// The archive's tar bytes (inflated where the server compressed them).
    async fn archive_bytes(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.options.progress.advance(bytes.len() as u64);
        loop {
            let archive = self
                .archive
                .as_mut()
                .ok_or_else(|| protocol("archive data before an archive began"))?;
            let Some(tar_event) = archive.tar.next_event(&mut bytes).map_err(tar_error)? else {
                return Ok(());
            };
            match tar_event {
                TarEvent::Entry(entry) => {
                    let prefix = archive.prefix.clone();
                    self.entry(&prefix, entry).await?
                }
                TarEvent::Data(data) => self.data(data).await?,
                TarEvent::EntryEnd => self.entry_end().await?,
                TarEvent::End => {}
            }
        }
    }

    /// A piece the inflater gave, parsed, then given back to be filled again.
    async fn inflated(&mut self, piece: Vec<u8>) -> Result<()> {
        self.archive_bytes(&piece).await?;
        if let Some(inflater) = self.archive.as_ref().and_then(|a| a.inflater.as_ref()) {
            inflater.recycle(piece);
        }
        Ok(())
    }

    /// The current archive is over (the next began, the manifest began, or its COPY ended).
    async fn end_archive(&mut self) -> Result<()> {
        // What the decoder still holds is the archive's end.
        while let Some(inflater) = self.archive.as_mut().and_then(|a| a.inflater.as_mut()) {
            match inflater.next_after_end().await.map_err(inflate_error)? {
                Some(piece) => self.inflated(piece).await?,
                None => break,
            }
        }
        let Some(archive) = self.archive.take() else {
            return Ok(());
        };
        let end = match self.syntax {
            Syntax::Positional => ArchiveEnd::MarkerOrTransport,
            Syntax::OptionList => ArchiveEnd::Marker,
        };
        archive.tar.finish(end).map_err(tar_error)?;
        // Each archive's small files in bundles of their own.
        self.close_bundle().await
    }

    async fn entry(&mut self, prefix: &str, entry: TarEntry) -> Result<()> {
        let path = format!("{prefix}{}", entry.path);
        match entry.kind {
            EntryKind::Directory => {
                self.directories.push(BackupDirectory {
                    path,
                    mode: entry.mode,
                });
            }
            EntryKind::Symlink { target } => {
                let listed = tablespace_link(&path)
                    .filter(|_| prefix.is_empty())
                    .and_then(|oid| {
                        self.listed_tablespaces
                            .iter()
                            .find(|(listed, _)| *listed == oid)
                    });
                match listed {
                    // Recorded from the list (the server sends links only where it sends
                    // no tablespace_map).
                    Some((_, location)) if *location == target => {}
                    _ => {
                        return Err(Error::Server(format!(
                            "the server sent a symbolic link {path} -> {target} that is not a \
                             tablespace it listed: pitr does not store other links"
                        )));
                    }
                }
            }
            EntryKind::Hardlink { target } => {
                return Err(Error::Server(format!(
                    "the server sent a hard link {path} -> {target}, which PostgreSQL never \
                     writes"
                )));
            }
            EntryKind::File { size } => self.file(path, size, &entry).await?,
        }
        Ok(())
    }

    async fn file(&mut self, path: String, size: u64, entry: &TarEntry) -> Result<()> {
        let mtime = i64::try_from(entry.mtime).unwrap_or(i64::MAX);
        let take = match &self.incremental {
            Parent::Chosen(incremental)
                if !matches!(
                    path.as_str(),
                    "backup_label" | "tablespace_map" | CONTROL_FILE
                ) =>
            {
                incremental.take(&SourceFile {
                    path: path.clone(),
                    // Never opened: the bytes arrive in the stream.
                    absolute: Default::default(),
                    offset: 0,
                    size,
                    mode: entry.mode,
                    mtime,
                })
            }
            _ => Take::Whole,
        };
        let sink = if matches!(path.as_str(), "backup_label" | "tablespace_map") {
            if size > SMALL_FILE_LIMIT {
                return Err(Error::Server(format!(
                    "the server sent a {path} of {size} bytes"
                )));
            }
            Sink::Kept(Vec::with_capacity(size as usize))
        } else if let Take::Parent(entries) = take {
            self.reused.extend(entries);
            Sink::Parent
        } else if let Take::Blocks(entries, jobs) = take {
            self.reused.extend(entries);
            let block_size = jobs.first().map_or(8192, |job| job.block_size) as usize;
            Sink::Pages(Box::new(PageSink {
                picker: PagePicker::new(jobs),
                page: Vec::with_capacity(block_size),
                block: 0,
                block_size,
            }))
        } else if size > BUNDLE_FILE_LIMIT || path == CONTROL_FILE {
            self.open_alone().await?;
            Sink::Alone
        } else {
            self.bundle_for(database_of(&path)).await?;
            Sink::Bundle
        };
        let object_offset = match sink {
            Sink::Bundle => self.bundle.as_ref().map_or(0, |b| b.length),
            _ => 0,
        };
        self.current = Some(CurrentFile {
            path,
            size,
            mode: entry.mode,
            mtime,
            sink,
            received: 0,
            whole_crc: 0,
            part_offset: 0,
            part_length: 0,
            part_crc: 0,
            object_offset,
        });
        Ok(())
    }

    /// The open bundle, a new one once it is full or of another database; its index and
    /// length.
    async fn bundle_for(&mut self, database: Option<u32>) -> Result<(u32, u64)> {
        let full = self
            .bundle
            .as_ref()
            .is_some_and(|bundle| bundle.database != database || bundle.length >= BUNDLE_SIZE);
        if full {
            self.close_bundle().await?;
        }
        if self.bundle.is_none() {
            let mut object = self.open_object().await?;
            object.database = database;
            self.bundle = Some(object);
        }
        let bundle = self.bundle.as_ref().expect("opened above");
        Ok((bundle.index, bundle.length))
    }

    async fn data(&mut self, mut bytes: &[u8]) -> Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|c| matches!(c.sink, Sink::Parent | Sink::Pages(_)))
        {
            return self.changed_pages(bytes).await;
        }
        while !bytes.is_empty() {
            let current = self
                .current
                .as_mut()
                .ok_or_else(|| protocol("file data outside a file"))?;
            let alone = matches!(current.sink, Sink::Alone);
            if alone && current.part_length == PART_SIZE {
                // A new part once this one is full.
                self.next_part().await?;
                continue;
            }
            let take = if alone {
                (PART_SIZE - current.part_length).min(bytes.len() as u64) as usize
            } else {
                bytes.len()
            };
            let (piece, rest) = bytes.split_at(take);
            bytes = rest;
            current.part_crc = crc32c::crc32c_append(current.part_crc, piece);
            current.received += piece.len() as u64;
            current.part_length += piece.len() as u64;
            let object = match &mut current.sink {
                Sink::Kept(kept) => {
                    kept.extend_from_slice(piece);
                    continue;
                }
                Sink::Bundle => self.bundle.as_mut(),
                Sink::Alone => self.alone.as_mut(),
                Sink::Parent | Sink::Pages(_) => unreachable!("taken above"),
            }
            .ok_or_else(|| protocol("file data without an object"))?;
            object.length += piece.len() as u64;
            send(object, piece).await?;
        }
        Ok(())
    }

    /// The bytes of a file an incremental backup takes in part or not at all: every byte
    /// counts for the check against the server's manifest; the pages the file's jobs take
    /// go to the bundle.
    async fn changed_pages(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let current = self
                .current
                .as_mut()
                .ok_or_else(|| protocol("file data outside a file"))?;
            let take = match &current.sink {
                Sink::Pages(pages) => (pages.block_size - pages.page.len()).min(bytes.len()),
                _ => bytes.len(),
            };
            let (piece, rest) = bytes.split_at(take);
            bytes = rest;
            current.part_crc = crc32c::crc32c_append(current.part_crc, piece);
            current.received += piece.len() as u64;
            current.part_length += piece.len() as u64;
            let Sink::Pages(pages) = &mut current.sink else {
                continue;
            };
            pages.page.extend_from_slice(piece);
            if pages.page.len() < pages.block_size {
                continue;
            }
            let block = pages.block;
            pages.block += 1;
            if pages.picker.reach(block) {
                let database = database_of(&current.path);
                let (object, offset) = self.bundle_for(database).await?;
                if let Some(Sink::Pages(pages)) = self.current.as_mut().map(|c| &mut c.sink) {
                    pages.picker.place(object, offset);
                }
            }
            let (Some(current), Some(bundle)) = (self.current.as_mut(), self.bundle.as_mut())
            else {
                // Not placed: no job covers the page.
                if let Some(Sink::Pages(pages)) = self.current.as_mut().map(|c| &mut c.sink) {
                    pages.page.clear();
                }
                continue;
            };
            let Sink::Pages(pages) = &mut current.sink else {
                unreachable!("matched above")
            };
            if pages.picker.takes(block, &pages.page) {
                bundle.length += pages.page.len() as u64;
                send(bundle, &pages.page).await?;
            }
            pages.page.clear();
        }
        Ok(())
    }

    /// The current part of a large file is complete: its object closes, the next opens.
    async fn next_part(&mut self) -> Result<()> {
        self.finish_part();
        self.close_alone().await?;
        self.open_alone().await?;
        if let Some(current) = self.current.as_mut() {
            current.part_offset += current.part_length;
            current.part_length = 0;
            current.part_crc = 0;
            current.object_offset = 0;
        }
        Ok(())
    }

    /// Records the current part in its object's entries, and its CRC in the whole file's
    /// (combined, rather than computed twice over the same bytes).
    fn finish_part(&mut self) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        current.whole_crc = crc32c::crc32c_combine(
            current.whole_crc,
            current.part_crc,
            current.part_length as usize,
        );
        let current = &*current;
        let object = match current.sink {
            Sink::Bundle => self.bundle.as_mut(),
            Sink::Alone => self.alone.as_mut(),
            Sink::Kept(_) | Sink::Parent | Sink::Pages(_) => None,
        };
        if let Some(object) = object {
            object.entries.push(BackupFile {
                path: current.path.clone(),
                size: current.part_length,
                file_offset: current.part_offset,
                mode: current.mode,
                mtime: current.mtime,
                crc32c: current.part_crc,
                object: object.index,
                offset: current.object_offset,
                backup: None,
                delta: None,
            });
        }
    }

    async fn entry_end(&mut self) -> Result<()> {
        let Some(current) = self.current.as_ref() else {
            // Directories and links end too.
            return Ok(());
        };
        if current.received != current.size {
            return Err(protocol("a file ended before its size"));
        }
        if let Sink::Pages(pages) = &current.sink
            && pages.picker.unplaced()
        {
            // Jobs the file ended before (a file cut since it was listed) hold no bytes.
            let (object, offset) = self.bundle_for(database_of(&current.path)).await?;
            if let Some(Sink::Pages(pages)) = self.current.as_mut().map(|c| &mut c.sink) {
                pages.picker.place_rest(object, offset);
            }
        }
        self.finish_part();
        let current = self.current.take().expect("checked above");
        self.listed.push(ReceivedFile {
            path: current.path.clone(),
            size: current.size,
            crc32c: current.whole_crc,
        });
        match current.sink {
            Sink::Alone => self.close_alone().await?,
            Sink::Kept(bytes) if current.path == "backup_label" => self.backup_label = Some(bytes),
            Sink::Kept(bytes) => self.tablespace_map = Some(bytes),
            Sink::Pages(pages) => self.page_entries.extend(pages.picker.entries()),
            Sink::Bundle | Sink::Parent => {}
        }
        Ok(())
    }

    /// Starts the next object's encoding task, once fewer than `jobs` are being stored.
    async fn open_object(&mut self) -> Result<OpenObject> {
        while self.in_flight.len() >= self.options.jobs.max(1) {
            match self.in_flight.next().await {
                Some(done) => self.copied.push(done?),
                None => break,
            }
        }
        // Failures surface as early as they can.
        while let Some(Some(done)) = self.in_flight.next().now_or_never() {
            self.copied.push(done?);
        }
        let index = self.next_object;
        self.next_object += 1;
        let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
        let (catalog, id) = (self.catalog.clone(), self.id.to_owned());
        let task = tokio::spawn(async move {
            let mut receiver = receiver;
            let chunks = std::iter::from_fn(move || receiver.blocking_recv());
            let encoded = catalog
                .store_backup_chunks(&id, index, "the server's base backup", chunks)
                .await?;
            Ok(encoded.stored_len)
        });
        Ok(OpenObject {
            index,
            sender,
            task: Some(task),
            entries: Vec::new(),
            length: 0,
            database: None,
            pending: Vec::with_capacity(HANDOFF_BYTES),
        })
    }

    async fn open_alone(&mut self) -> Result<()> {
        let object = self.open_object().await?;
        self.alone = Some(object);
        Ok(())
    }

    async fn close_bundle(&mut self) -> Result<()> {
        match self.bundle.take() {
            Some(object) => self.close(object).await,
            None => Ok(()),
        }
    }

    async fn close_alone(&mut self) -> Result<()> {
        match self.alone.take() {
            Some(object) => self.close(object).await,
            None => Ok(()),
        }
    }

    /// Its bytes are all sent: the end of the channel ends the object.
    async fn close(&mut self, mut object: OpenObject) -> Result<()> {
        hand_over(&mut object).await?;
        let OpenObject {
            sender,
            task,
            entries,
            ..
        } = object;
        drop(sender);
        self.in_flight.push(
            async move {
                let stored = match task {
                    Some(task) => joined(task.await)?,
                    None => return Err(Error::Server("an object's store failed".into())),
                };
                Ok((entries, stored))
            }
            .boxed(),
        );
        Ok(())
    }

    /// After a failure: the objects still open fail, and every task has ended before the
    /// caller removes what the backup wrote.
    async fn abandon(&mut self) {
        self.options.progress.finish();
        for object in [self.bundle.take(), self.alone.take()]
            .into_iter()
            .flatten()
        {
            let _ = object
                .sender
                .send(Err(io::Error::other("the base backup stopped")))
                .await;
            drop(object.sender);
            if let Some(task) = object.task {
                let _ = task.await;
            }
        }
        while self.in_flight.next().await.is_some() {}
        // Without a stop point the stream ends at once (its stored WAL stays: it is the
        // server's, as archive-push would have stored it).
        if let Some(WalStreaming::Running { stop, task }) = self.wal.take() {
            drop(stop);
            let _ = task.await;
        }
    }
}

/// Gathers `piece` for the object's encoder, handed over a chunk at a time.
async fn send(object: &mut OpenObject, mut piece: &[u8]) -> Result<()> {
    while !piece.is_empty() {
        let take = (HANDOFF_BYTES - object.pending.len()).min(piece.len());
        object.pending.extend_from_slice(&piece[..take]);
        piece = &piece[take..];
        if object.pending.len() == HANDOFF_BYTES {
            hand_over(object).await?;
        }
    }
    Ok(())
}

/// Hands what is gathered to the object's encoder.
async fn hand_over(object: &mut OpenObject) -> Result<()> {
    if object.pending.is_empty() {
        return Ok(());
    }
    let chunk = std::mem::replace(&mut object.pending, Vec::with_capacity(HANDOFF_BYTES));
    if object.sender.send(Ok(chunk)).await.is_ok() {
        return Ok(());
    }
    // The task ended early: its error says why.
    Err(match object.task.take() {
        Some(task) => match joined(task.await) {
            Err(e) => e,
            Ok(_) => Error::Server("an object was stored before its end arrived".into()),
        },
        None => Error::Server("an object's store failed".into()),
    })
}

fn joined(result: std::result::Result<Result<u64>, tokio::task::JoinError>) -> Result<u64> {
    result.map_err(|e| Error::Server(format!("storing an object failed: {e}")))?
}

/// The WAL stream's failure, said as the backup's.
fn wal_failed(error: Error) -> Error {
    match error {
        Error::Server(message) => Error::Server(format!(
            "the backup's WAL stream failed: {message}; nothing of the backup is recorded; run \
             pitr backup again"
        )),
        other => other,
    }
}

fn protocol(error: impl std::fmt::Display) -> Error {
    Error::Server(format!("the base backup stream: {error}"))
}

/// A server built without lz4 refuses `COMPRESSION 'lz4'` with "invalid compression
/// specification: this build does not support compression with LZ4" (42601, a syntax error);
/// feature_not_supported (0A000) is the code meant for it.
fn cannot_compress(refusal: &crate::server::replication::ServerError) -> bool {
    refusal.code == "0A000" || (refusal.code == "42601" && refusal.message.contains("compression"))
}

fn inflate_error(error: io::Error) -> Error {
    Error::Server(format!(
        "the LZ4 stream the server sent does not inflate: {error}; nothing of the backup is \
         recorded; run pitr backup again (or with --network-compression none)"
    ))
}

fn tar_error(error: crate::pg::tar_stream::TarError) -> Error {
    Error::Server(format!("the base backup's tar stream: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::Lsn;
    use crate::pg::backup_manifest::{ManifestEntry, render};

    fn arrived(path: &str, bytes: &[u8]) -> ReceivedFile {
        ReceivedFile {
            path: path.into(),
            size: bytes.len() as u64,
            crc32c: crc32c::crc32c(bytes),
        }
    }

    fn listing(files: &[(&str, &[u8])]) -> Vec<u8> {
        let entries: Vec<ManifestEntry<'_>> = files
            .iter()
            .map(|(path, bytes)| ManifestEntry {
                path,
                size: bytes.len() as u64,
                mtime: 0,
                crc32c: Some(crc32c::crc32c(bytes)),
            })
            .collect();
        render(&entries, 1, Lsn(0x100_0000), Lsn(0x200_0000)).into_bytes()
    }

    #[test]
    fn what_arrived_must_be_what_the_server_listed() {
        let files: [(&str, &[u8]); 2] = [("backup_label", b"label"), ("base/5/1259", b"page")];
        let manifest = listing(&files);
        let all = [
            arrived("backup_label", b"label"),
            arrived("base/5/1259", b"page"),
        ];
        check_against_server_manifest(&manifest, &all, 7).unwrap();

        let refused = |received: &[ReceivedFile]| {
            check_against_server_manifest(&manifest, received, 7)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(&all[..1]).contains("base/5/1259 is listed but did not arrive"));
        let extra = [
            arrived("backup_label", b"label"),
            arrived("base/5/1259", b"page"),
            arrived("base/5/9999", b"x"),
        ];
        assert!(refused(&extra).contains("base/5/9999 arrived but is not listed"));
        let shorter = [
            arrived("backup_label", b"label"),
            arrived("base/5/1259", b"pag"),
        ];
        assert!(refused(&shorter).contains("arrived with 3 bytes, listed with 4"));
        let changed = [
            arrived("backup_label", b"label"),
            arrived("base/5/1259", b"pagf"),
        ];
        assert!(refused(&changed).contains("arrived with CRC-32C"));
        // A damaged manifest is no proof either way.
        let mut damaged = manifest.clone();
        let at = damaged.iter().position(|b| *b == b'4').unwrap();
        damaged[at] = b'5';
        assert!(
            check_against_server_manifest(&damaged, &all, 7)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
    }
}
