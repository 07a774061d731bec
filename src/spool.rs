//! The local spool: a directory beside pg_wal (or `spool_path`) where archive-push records
//! which WAL files its look-ahead made durable in the repository (`push-…`), and where
//! archive-get's prefetcher leaves verified segments for the calls that follow (`get-…`).
//!
//! Each repository gets its own subdirectory, named by a hash of its URL, so that marks or
//! segments of one repository are never taken for another's.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Name of the default spool directory, inside the WAL file's directory (pg_wal).
pub const DEFAULT_SPOOL_DIR: &str = ".pitr-spool";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpoolKind {
    /// archive-push's marks of WAL files already durable in the repository.
    Push,
    /// archive-get's prefetched segments.
    Get,
}

/// The spool directory of `kind` for the repository `repo_url`: under `configured` when the
/// user set `spool_path`, else under `wal_dir/.pitr-spool` (`wal_dir`: the directory of the
/// `%p` PostgreSQL passed, pg_wal, so renames from the spool into it stay on one filesystem).
pub fn spool_dir(
    configured: Option<&Path>,
    wal_dir: &Path,
    kind: SpoolKind,
    repo_url: &str,
) -> PathBuf {
    let root = match configured {
        Some(dir) => dir.to_owned(),
        None => wal_dir.join(DEFAULT_SPOOL_DIR),
    };
    let digest = Sha256::digest(repo_url.as_bytes());
    let tag = match kind {
        SpoolKind::Push => "push",
        SpoolKind::Get => "get",
    };
    root.join(format!("{tag}-{}", hex::encode(&digest[..8])))
}

/// The directory of a WAL path as PostgreSQL passes it (`pg_wal/…`, relative to the data
/// directory, which is the working directory of archive and restore commands).
pub fn wal_dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_per_repository_and_kind() {
        let wal = Path::new("pg_wal");
        let a = spool_dir(None, wal, SpoolKind::Get, "s3://bucket/a");
        let b = spool_dir(None, wal, SpoolKind::Get, "s3://bucket/b");
        let push = spool_dir(None, wal, SpoolKind::Push, "s3://bucket/a");
        assert!(a.starts_with("pg_wal/.pitr-spool"));
        assert_ne!(a, b);
        assert_ne!(a, push);
        let configured = spool_dir(
            Some(Path::new("/var/spool/pitr")),
            wal,
            SpoolKind::Push,
            "x",
        );
        assert!(
            configured
                .to_str()
                .unwrap()
                .starts_with("/var/spool/pitr/push-")
        );
        assert_eq!(
            wal_dir_of(Path::new("pg_wal/RECOVERYXLOG")),
            Path::new("pg_wal")
        );
        assert_eq!(wal_dir_of(Path::new("RECOVERYXLOG")), Path::new("."));
    }
}
