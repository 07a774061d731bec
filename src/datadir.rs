//! A local PostgreSQL data directory: which cluster it holds, and whether a server runs in it.

use std::path::Path;

use crate::error::{Error, Result};
use crate::pg::version::unsupported_message;
use crate::pg::{ControlFile, PgVersion};

/// A file every data directory has could not be read: most likely --pgdata is wrong.
fn not_a_data_directory(path: &Path, e: std::io::Error) -> Error {
    Error::invalid_input(
        path.display(),
        format!("{e}: is --pgdata (or PGDATA) the cluster's data directory?"),
    )
}

/// Reads `PG_VERSION` and `global/pg_control` of a data directory: the control file and the
/// major version. The version comes first: a cluster of a version pitr does not support gets
/// one line saying so, not a complaint about a control file laid out in a way pitr does not
/// know.
pub fn read_control(pgdata: &Path) -> Result<(ControlFile, u32)> {
    let version_path = pgdata.join("PG_VERSION");
    let version_text = std::fs::read_to_string(&version_path)
        .map_err(|e| not_a_data_directory(&version_path, e))?;
    let pg_version: u32 = version_text.trim().parse().map_err(|_| {
        Error::invalid_input(
            version_path.display(),
            format!(
                "'{}' is not a PostgreSQL major version",
                version_text.trim()
            ),
        )
    })?;
    let Some(version) = PgVersion::of_major(pg_version) else {
        return Err(Error::invalid_input(
            version_path.display(),
            unsupported_message(pg_version),
        ));
    };
    let control_path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&control_path).map_err(|e| not_a_data_directory(&control_path, e))?;
    let control =
        ControlFile::parse(&bytes).map_err(|e| Error::invalid_input(control_path.display(), e))?;
    if control.pg_control_version != version.control_version {
        return Err(Error::invalid_input(
            control_path.display(),
            format!(
                "control file version {} does not belong to PostgreSQL {pg_version} (which \
                 writes {}), as PG_VERSION says: the data directory is inconsistent",
                control.pg_control_version, version.control_version
            ),
        ));
    }
    Ok((control, pg_version))
}

/// The pid of a postmaster running in `pgdata`, from `postmaster.pid`.
pub fn running_postmaster(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid = text.lines().next()?.trim().parse::<i32>().ok()?;
    (pid > 0 && crate::sys::process_running(pid)).then_some(pid)
}

/// Whether a server runs recovery in `pgdata`: a signal file asks for it (PostgreSQL
/// removes recovery.signal when recovery ends) and the postmaster runs.
pub fn in_recovery(pgdata: &Path) -> bool {
    (pgdata.join("recovery.signal").exists() || pgdata.join("standby.signal").exists())
        && running_postmaster(pgdata).is_some()
}
