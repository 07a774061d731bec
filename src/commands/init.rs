//! `pitr init`: records which cluster a repository belongs to.

use std::path::PathBuf;

use crate::catalog::{Catalog, InitOutcome, RepositoryIdentity};
use crate::codec::Compression;
use crate::datadir::read_cluster_identity;
use crate::error::{Error, Result};

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
