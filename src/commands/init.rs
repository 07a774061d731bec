//! `pitr init`: records which cluster a repository belongs to.

use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, InitOutcome, RepositoryIdentity};
use crate::codec::Compression;
use crate::datadir::read_control;
use crate::error::{Error, Result};
use crate::ownership::{Owner, give_to, running_as_root};

#[derive(Clone, Debug)]
pub struct InitOptions {
    pub pgdata: PathBuf,
    /// How the repository's objects are compressed, for good: its type is fixed here.
    pub compression: Compression,
    /// Encrypt the repository, with the catalog's key materials.
    pub encrypt: bool,
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

pub async fn init(catalog: &Catalog, options: &InitOptions) -> Result<InitReport> {
    let identity = read_cluster_identity(&options.pgdata)?.with_compression(options.compression);
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
                options.pgdata.display(),
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
