//! Which files of a data directory belong in a base backup (PostgreSQL's "Making a Base
//! Backup Using the Low Level API" and basebackup.c's exclusion lists). Pure: names in,
//! decisions out.

use std::collections::HashSet;

/// Directories whose contents are left out; the directory itself is kept (PostgreSQL expects
/// it to exist).
const EXCLUDE_DIR_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files left out wherever they are.
const EXCLUDE_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
    "recovery.signal",
    "standby.signal",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Include,
    Exclude,
    /// Keep the directory, leave out what is in it.
    IncludeEmpty,
}

/// The decision for one entry, by its path relative to the data directory (`/`-separated).
pub fn classify(relative_path: &str, is_dir: bool) -> Disposition {
    let name = relative_path.rsplit('/').next().unwrap_or(relative_path);
    if name.starts_with("pgsql_tmp") {
        return Disposition::Exclude;
    }
    if is_dir {
        if EXCLUDE_DIR_CONTENTS.contains(&relative_path) {
            return Disposition::IncludeEmpty;
        }
        return Disposition::Include;
    }
    if EXCLUDE_FILES.contains(&name) || name.starts_with("pg_internal.init") {
        return Disposition::Exclude;
    }
    Disposition::Include
}

/// Whether a directory holds a database's relation files: `base/<oid>` or
/// `pg_tblspc/<oid>/PG_<version>_<catversion>/<oid>`.
pub fn is_database_directory(relative_path: &str) -> bool {
    let parts: Vec<&str> = relative_path.split('/').collect();
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["base", db] => all_digits(db),
        ["pg_tblspc", spc, version, db] => {
            all_digits(spc) && version.starts_with("PG_") && all_digits(db)
        }
        _ => false,
    }
}

/// The files of unlogged relations in one database directory, but for their init fork:
/// PostgreSQL resets those relations from the init fork at the end of recovery.
pub fn unlogged_files<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> HashSet<&'a str> {
    let unlogged: HashSet<&str> = names
        .clone()
        .into_iter()
        .filter_map(|name| name.strip_suffix("_init"))
        .collect();
    names
        .into_iter()
        .filter(|name| {
            let relfilenode = name.split(['_', '.']).next().unwrap_or(name);
            let fork = name[relfilenode.len()..].split('.').next().unwrap_or("");
            unlogged.contains(relfilenode) && fork != "_init"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_postgresql_exclusions() {
        use Disposition::*;
        let cases = [
            ("pg_wal", true, IncludeEmpty),
            ("pg_replslot", true, IncludeEmpty),
            ("pg_stat_tmp", true, IncludeEmpty),
            ("base", true, Include),
            ("base/1/pgsql_tmp", true, Exclude),
            ("base/pgsql_tmp/pgsql_tmp123.0", false, Exclude),
            ("postmaster.pid", false, Exclude),
            ("postmaster.opts", false, Exclude),
            ("backup_label", false, Exclude),
            ("global/pg_internal.init", false, Exclude),
            ("base/16384/pg_internal.init", false, Exclude),
            ("global/pg_control", false, Include),
            ("base/16384/16385", false, Include),
            ("postgresql.auto.conf", false, Include),
            ("current_logfiles", false, Include),
            ("pg_xact/0000", false, Include),
        ];
        for (path, is_dir, expected) in cases {
            assert_eq!(classify(path, is_dir), expected, "{path}");
        }
    }

    #[test]
    fn finds_database_directories() {
        assert!(is_database_directory("base/16384"));
        assert!(is_database_directory(
            "pg_tblspc/16400/PG_15_202209061/16384"
        ));
        assert!(!is_database_directory("base"));
        assert!(!is_database_directory("global"));
        assert!(!is_database_directory("base/16384/16385"));
    }

    #[test]
    fn unlogged_relations_keep_only_their_init_fork() {
        let names = [
            "16385",
            "16385_fsm",
            "16385_vm",
            "16390",
            "16390.1",
            "16390_init",
            "16390_fsm",
            "16390_vm",
            "163901",
            "PG_VERSION",
        ];
        let mut excluded: Vec<_> = unlogged_files(names.iter().copied()).into_iter().collect();
        excluded.sort();
        assert_eq!(excluded, vec!["16390", "16390.1", "16390_fsm", "16390_vm"]);
    }
}
