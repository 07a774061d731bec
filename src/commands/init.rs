//! `pitr init`: records which cluster a repository belongs to.

use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::catalog::{Catalog, InitOutcome, RepositoryIdentity};
use crate::error::{Error, Result};
use crate::pg::ControlFile;

#[derive(Clone, Debug)]
pub struct InitOptions {
    pub pgdata: PathBuf,
}

#[derive(Debug)]
pub struct InitReport {
    pub identity: RepositoryIdentity,
    /// False when the repository already belonged to this cluster.
    pub created: bool,
    pub location: String,
}

/// Reads `global/pg_control` and `PG_VERSION` of a data directory.
pub fn read_cluster_identity(pgdata: &Path) -> Result<RepositoryIdentity> {
    let control_path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&control_path).map_err(|e| {
        Error::invalid_input(
            control_path.display(),
            format!("{e}: is --pgdata (or PGDATA) the cluster's data directory?"),
        )
    })?;
    let control =
        ControlFile::parse(&bytes).map_err(|e| Error::invalid_input(control_path.display(), e))?;
    let version_path = pgdata.join("PG_VERSION");
    let version_text = std::fs::read_to_string(&version_path)
        .map_err(|e| Error::invalid_input(version_path.display(), e))?;
    let pg_version: u32 = version_text.trim().parse().map_err(|_| {
        Error::invalid_input(
            version_path.display(),
            format!(
                "'{}' is not a PostgreSQL major version",
                version_text.trim()
            ),
        )
    })?;
    if !(13..=17).contains(&pg_version) {
        return Err(Error::invalid_input(
            version_path.display(),
            format!("PostgreSQL {pg_version} is not supported (13 to 17 are)"),
        ));
    }
    Ok(RepositoryIdentity::new(&control, pg_version, Utc::now()))
}

pub async fn init(catalog: &Catalog, options: &InitOptions) -> Result<InitReport> {
    let identity = read_cluster_identity(&options.pgdata)?;
    let location = catalog.storage().location();
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
