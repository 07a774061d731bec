//! Which database a file of a data directory belongs to, from its path alone (PostgreSQL's
//! `relpath.c` layout): `base/<dboid>/…` and `pg_tblspc/<spcoid>/<version dir>/<dboid>/…`.

/// The OID of the database whose directory holds `path` (relative to the data directory,
/// tablespace contents under `pg_tblspc/<oid>/`), or None for a file of no database (global
/// catalogs, WAL, configuration).
pub fn database_of(path: &str) -> Option<u32> {
    let mut parts = path.split('/');
    let oid = match parts.next()? {
        "base" => parts.next()?,
        "pg_tblspc" => {
            parts.next()?; // the tablespace
            parts.next()?; // PG_<major>_<catversion>
            parts.next()?
        }
        _ => return None,
    };
    // A file directly in base/ (none in PostgreSQL) is no database's.
    parts.next()?;
    oid.parse().ok().filter(|&oid| oid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_files_are_told_from_cluster_wide_ones() {
        assert_eq!(database_of("base/16384/16385"), Some(16384));
        assert_eq!(database_of("base/1/PG_VERSION"), Some(1));
        assert_eq!(database_of("base/16384/16385_fsm"), Some(16384));
        assert_eq!(
            database_of("pg_tblspc/16400/PG_15_202209061/16384/16401.1"),
            Some(16384)
        );
        assert_eq!(database_of("global/1262"), None);
        assert_eq!(database_of("global/pg_control"), None);
        assert_eq!(database_of("base/16384"), None);
        assert_eq!(database_of("base/pgsql_tmp/x"), None);
        assert_eq!(database_of("pg_tblspc/16400/PG_15_202209061"), None);
        assert_eq!(database_of("postgresql.conf"), None);
        assert_eq!(database_of("pg_wal/000000010000000000000001"), None);
    }
}
