//! Which database a file of a data directory belongs to, from its path alone (PostgreSQL's
//! `relpath.c` layout): `base/<dboid>/…` and `pg_tblspc/<spcoid>/<version dir>/<dboid>/…`;
//! and which relation fork and segment a file holds.

use super::wal_blocks::{Fork, RelFile};

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

/// `GLOBALTABLESPACE_OID` and `DEFAULTTABLESPACE_OID`.
const GLOBAL_TABLESPACE: u32 = 1664;
const DEFAULT_TABLESPACE: u32 = 1663;

/// One segment file of a relation fork.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelationSegment {
    pub file: RelFile,
    pub fork: Fork,
    /// The `.N` suffix: which `RELSEG_SIZE` stretch of the fork the file holds.
    pub segment: u32,
}

/// The relation fork and segment a data-directory file holds (`relpath.c`'s layout:
/// `global/<node>`, `base/<db>/<node>`, `pg_tblspc/<spc>/<version>/<db>/<node>`, with
/// `_fsm`, `_vm`, `_init` and `.N`), or None for any other file (temporary relations
/// `t<backend>_<node>` included: they are never WAL-logged).
pub fn relation_segment_of(path: &str) -> Option<RelationSegment> {
    let parts: Vec<&str> = path.split('/').collect();
    let (tablespace, database, leaf) = match parts.as_slice() {
        ["global", leaf] => (GLOBAL_TABLESPACE, 0, *leaf),
        ["base", db, leaf] => (DEFAULT_TABLESPACE, oid(db)?, *leaf),
        ["pg_tblspc", spc, _version, db, leaf] => (oid(spc)?, oid(db)?, *leaf),
        _ => return None,
    };
    let (stem, segment) = match leaf.split_once('.') {
        Some((stem, n)) => (stem, number(n)?),
        None => (leaf, 0),
    };
    let (node, fork) = match stem.split_once('_') {
        Some((node, "fsm")) => (node, Fork::FreeSpaceMap),
        Some((node, "vm")) => (node, Fork::VisibilityMap),
        Some((node, "init")) => (node, Fork::Init),
        Some(_) => return None,
        None => (stem, Fork::Main),
    };
    Some(RelationSegment {
        file: RelFile {
            tablespace,
            database,
            relfilenode: oid(node)?,
        },
        fork,
        segment,
    })
}

/// A decimal number as PostgreSQL writes one: digits only, no leading zero.
fn number(text: &str) -> Option<u32> {
    let plain = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    plain.then(|| text.parse().ok()).flatten()
}

fn oid(text: &str) -> Option<u32> {
    number(text).filter(|&oid| oid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_named_by_their_fork_and_segment() {
        let file = |spc, db, node| RelFile {
            tablespace: spc,
            database: db,
            relfilenode: node,
        };
        let seg = |f, fork, segment| {
            Some(RelationSegment {
                file: f,
                fork,
                segment,
            })
        };
        assert_eq!(
            relation_segment_of("base/5/16384"),
            seg(file(1663, 5, 16384), Fork::Main, 0)
        );
        assert_eq!(
            relation_segment_of("base/5/16384.3"),
            seg(file(1663, 5, 16384), Fork::Main, 3)
        );
        assert_eq!(
            relation_segment_of("base/5/16384_vm"),
            seg(file(1663, 5, 16384), Fork::VisibilityMap, 0)
        );
        assert_eq!(
            relation_segment_of("base/5/16384_fsm.1"),
            seg(file(1663, 5, 16384), Fork::FreeSpaceMap, 1)
        );
        assert_eq!(
            relation_segment_of("base/5/16390_init"),
            seg(file(1663, 5, 16390), Fork::Init, 0)
        );
        assert_eq!(
            relation_segment_of("global/1262"),
            seg(file(1664, 0, 1262), Fork::Main, 0)
        );
        assert_eq!(
            relation_segment_of("pg_tblspc/16400/PG_15_202209061/5/16401.12"),
            seg(file(16400, 5, 16401), Fork::Main, 12)
        );
        for other in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "base/5/pg_internal.init",
            "base/5/t3_16384",
            "base/5/16384_foo",
            "base/5/16384.01",
            "base/5/016384",
            "base/5/16384.",
            "base/pgsql_tmp/pgsql_tmp1.0",
            "pg_wal/000000010000000000000001",
            "pg_xact/0000",
            "postgresql.conf",
            "pg_tblspc/16400/PG_15_202209061/5",
        ] {
            assert_eq!(relation_segment_of(other), None, "{other}");
        }
    }

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
