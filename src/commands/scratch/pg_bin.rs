//! Finds the PostgreSQL binaries of a major version: `--pg-bin`, then `pg_config --bindir`
//! and `postgres` on PATH, then where Debian, RHEL and source builds put them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The directory holding `postgres` (and pg_amcheck, pg_dump…) of major version `major`.
pub fn find(major: u32, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return match version_of(dir) {
            Some(found) if found == major => Ok(dir.to_owned()),
            Some(found) => Err(Error::Config(format!(
                "--pg-bin {}: holds PostgreSQL {found}, but the backup is of PostgreSQL \
                 {major}: name the directory of PostgreSQL {major}'s binaries",
                dir.display()
            ))),
            None => Err(Error::Config(format!(
                "--pg-bin {}: no runnable postgres there: name the directory that holds \
                 PostgreSQL {major}'s postgres, pg_ctl and pg_dump",
                dir.display()
            ))),
        };
    }
    let candidates = candidates(major);
    candidates
        .iter()
        .find(|dir| version_of(dir) == Some(major))
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
            Error::Config(format!(
                "PostgreSQL {major}'s binaries were not found (looked in {}): install them \
                 (Debian: apt-get install postgresql-{major}) or name their directory with \
                 --pg-bin",
                looked.join(", ")
            ))
        })
}

fn candidates(major: u32) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        dirs.push(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        ));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|d| d.join("postgres").is_file()));
    }
    dirs.extend(
        [
            format!("/usr/lib/postgresql/{major}/bin"),
            format!("/usr/pgsql-{major}/bin"),
            format!("/opt/pgsql-{major}/bin"),
            format!("/usr/local/pgsql-{major}/bin"),
            "/usr/local/pgsql/bin".to_owned(),
            format!("/opt/homebrew/opt/postgresql@{major}/bin"),
            format!("/usr/local/opt/postgresql@{major}/bin"),
        ]
        .map(PathBuf::from),
    );
    dirs.dedup();
    dirs
}

/// The major version `dir/postgres --version` reports.
fn version_of(dir: &Path) -> Option<u32> {
    let output = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    major_of(&String::from_utf8_lossy(&output.stdout))
}

/// `postgres (PostgreSQL) 15.4 (Debian 15.4-1)` → 15; `9.6.24` → 9 (never a backup here).
fn major_of(version: &str) -> Option<u32> {
    let number = version.split_whitespace().nth(2)?;
    number
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_major_version_is_read_from_postgres_version() {
        assert_eq!(
            major_of("postgres (PostgreSQL) 15.4 (Debian 15.4-1.pgdg120+1)\n"),
            Some(15)
        );
        assert_eq!(major_of("postgres (PostgreSQL) 17beta1\n"), Some(17));
        assert_eq!(major_of("garbage"), None);
    }

    #[test]
    fn a_named_directory_of_another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = find(15, Some(dir.path())).unwrap_err().to_string();
        assert!(error.contains("--pg-bin"), "{error}");
    }
}
