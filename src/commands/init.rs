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
}

#[derive(Debug)]
pub struct InitReport {
    pub identity: RepositoryIdentity,
    /// False when the repository already belonged to this cluster.
    pub created: bool,
    pub location: String,
}

pub async fn init(catalog: &Catalog, options: &InitOptions) -> Result<InitReport> {
    let identity = read_cluster_identity(&options.pgdata)?.with_compression(options.compression);
    let location = catalog.location();
    match catalog.init(&identity).await? {
        InitOutcome::Created => Ok(InitReport {
            identity,
            created: true,
            location,
        }),
        InitOutcome::AlreadyThisCluster => Ok(InitReport {
            identity: catalog.identity().await?,
            created: false,
            location,
        }),
        InitOutcome::OtherCluster(existing) => Err(Error::WrongRepository(format!(
            "repository {location} already belongs to the cluster with system identifier {}, \
             not to {} (system identifier {}); use another repository for this cluster",
            existing.system_identifier,
            options.pgdata.display(),
            identity.system_identifier
        ))),
    }
}
