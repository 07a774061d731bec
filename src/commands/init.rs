//! `pitr init`: records which cluster a repository belongs to.

use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, InitOutcome, RepositoryIdentity};
use crate::codec::Compression;
use crate::datadir::read_control;
use crate::error::{Error, Result};
use crate::ownership::{Owner, give_to, running_as_root};

#[derive(Clone, Debug)]
pub struct InitOptions {
    pub cluster: ClusterSource,
    /// How the repository's objects are compressed, for good: its type is fixed here.
    pub compression: Compression,
    /// Encrypt the repository, with the catalog's key materials.
    pub encrypt: bool,
}

/// Where init learns the cluster's identity.
#[derive(Clone, Debug)]
pub enum ClusterSource {
    /// Its data directory, on this host (PG_VERSION and global/pg_control).
    DataDirectory(PathBuf),
    /// Its server, over a connection (`--dbname`, libpq's rules): a backup host needs no
    /// access to the database host's files.
    Server { dbname: Option<String> },
}

impl ClusterSource {
    /// The data directory, for a local cluster.
    pub fn data_directory(&self) -> Option<&Path> {
        match self {
            ClusterSource::DataDirectory(pgdata) => Some(pgdata),
            ClusterSource::Server { .. } => None,
        }
    }
}

#[derive(Debug)]
pub struct InitReport {
    pub identity: RepositoryIdentity,
    /// False when the repository already belonged to this cluster.
    pub created: bool,
    pub location: String,
    /// The fingerprints of the keys that open an encrypted repository.
    pub key_fingerprints: Option<String>,
}

/// Run as root, `pitr init` gives a new local repository to the data directory's owner, who
/// archives into it (PostgreSQL runs archive_command as that user): the directory is made
/// for that user, and the store gives every entry a root run creates to the directory's
/// owner. A directory root owns already (`sudo mkdir`) is given over while empty, and refused
/// otherwise, since that user could not write it.
pub fn prepare_local_repository(root: &Path, pgdata: &Path) -> Result<()> {
    if !running_as_root() {
        return Ok(());
    }
    // Not a data directory: say so before a directory is made for nothing.
    read_control(pgdata)?;
    let owner = Owner::of(pgdata).map_err(|e| Error::local_io(pgdata.display(), e))?;
    if owner.is_root() {
        return Ok(());
    }
    let dir_owner = match std::fs::symlink_metadata(root) {
        Ok(_) => Owner::of(root).map_err(|e| Error::local_io(root.display(), e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Catalog::create_local_root(root, &owner)
                .map_err(|e| Error::local_io(root.display(), e));
        }
        Err(e) => return Err(Error::local_io(root.display(), e)),
    };
    if !dir_owner.is_root() {
        return Ok(());
    }
    let empty = std::fs::read_dir(root)
        .map_err(|e| Error::local_io(root.display(), e))?
        .next()
        .is_none();
    if empty {
        return give_to(root, Some(&owner)).map_err(|e| Error::local_io(root.display(), e));
    }
    Err(Error::invalid_input(
        root.display(),
        format!(
            "the repository directory belongs to root, and {user} (who owns {pgdata} and \
             archives) could not write it: `chown -R {user}: {root}` first, or run `sudo -u \
             {user} pitr --repo {root} init --pgdata {pgdata}`",
            user = owner.name(),
            pgdata = pgdata.display(),
            root = root.display()
        ),
    ))
}

/// The identity a repository of the cluster in `pgdata` records.
pub fn read_cluster_identity(pgdata: &Path) -> Result<RepositoryIdentity> {
    let (control, pg_version) = read_control(pgdata)?;
    Ok(RepositoryIdentity::new(
        &control,
        pg_version,
        chrono::Utc::now(),
    ))
}

/// The identity of the cluster a server runs: asked over SQL (pg_control_system() and the
/// server's settings), or, where the role may open replication connections only, over one
/// (IDENTIFY_SYSTEM, the server's version and WAL sizes; the control and catalog versions
/// are those of its major release).
pub async fn server_cluster_identity(dbname: Option<&str>) -> Result<RepositoryIdentity> {
    let settings = crate::server::connection_settings(dbname)?;
    match sql_cluster_identity(&settings).await {
        Ok(identity) => Ok(identity),
        Err(sql) => replication_cluster_identity(&settings)
            .await
            .map_err(|replication| {
                Error::Server(format!(
                    "reading the cluster's identity: over SQL: {sql}; over a replication \
                 connection: {replication}"
                ))
            }),
    }
}

async fn replication_cluster_identity(
    settings: &crate::server::ConnectSettings,
) -> Result<RepositoryIdentity> {
    use crate::pg::replication::{parse_wal_segment_size, show_setting};
    use crate::server::replication::{ReplicationConnection, ReplicationMode};
    let mut connection =
        ReplicationConnection::connect(settings, ReplicationMode::Physical).await?;
    let major = connection.server_major()?;
    let version = crate::pg::version::PgVersion::of_major(major).ok_or_else(|| {
        Error::Server(format!(
            "the server runs PostgreSQL {major}, which pitr does not support (13 to 18)"
        ))
    })?;
    let system = connection.identify_system().await?;
    let show = |name: &str| show_setting(name).map_err(|e| Error::Server(e.to_string()));
    let segment = connection.query_rows(&show("wal_segment_size")?).await?;
    let wal_segment_size =
        parse_wal_segment_size(&segment).map_err(|e| Error::Server(e.to_string()))?;
    let block = connection.query_rows(&show("wal_block_size")?).await?;
    let wal_block_size = block
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| Error::Server("SHOW wal_block_size answered no number".into()))?;
    let _ = connection.close().await;
    let facts = crate::catalog::ClusterFacts {
        system_identifier: system.system_id,
        pg_version: major,
        pg_control_version: version.control_version,
        catalog_version: version.catalog_version,
        wal_segment_size,
        wal_block_size,
    };
    Ok(RepositoryIdentity::of_cluster(&facts, chrono::Utc::now()))
}

async fn sql_cluster_identity(
    settings: &crate::server::ConnectSettings,
) -> Result<RepositoryIdentity> {
    let session = crate::server::Session::connect(settings).await?;
    let version = session.version()?;
    // One round trip: the control file's fields and the two WAL sizes, as text.
    let rows = session
        .simple_rows(
            "SELECT system_identifier, pg_control_version, catalog_version_no, \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
             current_setting('wal_block_size') FROM pg_control_system()",
        )
        .await
        .map_err(|e| Error::Server(format!("reading the cluster's identity: {e}")))?;
    let row = rows.first().map(Vec::as_slice).unwrap_or_default();
    let number = |column: usize, what: &str| -> Result<u64> {
        let text = row.get(column).cloned().flatten().unwrap_or_default();
        text.trim().parse::<u64>().map_err(|_| {
            Error::Server(format!(
                "the server answered '{text}' for {what}, not a number"
            ))
        })
    };
    let as_u32 = |column: usize, what: &str| -> Result<u32> {
        let value = number(column, what)?;
        u32::try_from(value)
            .map_err(|_| Error::Server(format!("the server's {what} {value} is out of range")))
    };
    let facts = crate::catalog::ClusterFacts {
        system_identifier: number(0, "the system identifier")?,
        pg_version: version.major,
        pg_control_version: as_u32(1, "pg_control_version")?,
        catalog_version: as_u32(2, "catalog_version_no")?,
        wal_segment_size: number(3, "the WAL segment size")?,
        wal_block_size: as_u32(4, "wal_block_size")?,
    };
    if facts.pg_control_version != version.control_version {
        return Err(Error::Server(format!(
            "the server reports control file version {} for PostgreSQL {}, which writes {}",
            facts.pg_control_version, version.major, version.control_version
        )));
    }
    Ok(RepositoryIdentity::of_cluster(&facts, chrono::Utc::now()))
}

pub async fn init(catalog: &Catalog, options: &InitOptions) -> Result<InitReport> {
    let identity = match &options.cluster {
        ClusterSource::DataDirectory(pgdata) => read_cluster_identity(pgdata)?,
        ClusterSource::Server { dbname } => server_cluster_identity(dbname.as_deref()).await?,
    }
    .with_compression(options.compression);
    let location = catalog.location();
    let outcome = if options.encrypt {
        catalog.init_encrypted(&identity).await?
    } else {
        catalog.init(&identity).await?
    };
    let created = match outcome {
        InitOutcome::Created => true,
        InitOutcome::AlreadyThisCluster => false,
        InitOutcome::OtherCluster(existing) => {
            return Err(Error::WrongRepository(format!(
                "repository {location} already belongs to the cluster with system identifier {}, \
             not to {} (system identifier {}); use another repository for this cluster",
                existing.system_identifier,
                match &options.cluster {
                    ClusterSource::DataDirectory(pgdata) => pgdata.display().to_string(),
                    ClusterSource::Server { .. } => "the server's cluster".to_owned(),
                },
                identity.system_identifier
            )));
        }
    };
    let identity = catalog.identity().await?;
    let key_fingerprints = if identity.is_encrypted() {
        Some(catalog.keys_file().await?.fingerprints())
    } else {
        None
    };
    Ok(InitReport {
        identity,
        created,
        location,
        key_fingerprints,
    })
}
