//! The configuration a server reads from outside its data directory (Debian's
//! `/etc/postgresql/<v>/<cluster>`, a `-c config_file=` elsewhere): found through the
//! server's own settings, stored in one data object of the backup, and listed in the
//! manifest with the paths the server read them from. Files inside the data directory are
//! in the backup already and are left to it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::catalog::backup::{ConfigFile, Configuration};
use crate::error::Result;
use crate::pg::config_files::{IncludeKind, include_dir_reads, includes};
use crate::server::Session;

use super::{SourceFile, blocking, copy_object};

/// PostgreSQL refuses include nesting deeper than this (`CONF_FILE_MAX_DEPTH`).
const MAX_DEPTH: usize = 10;

/// Where the server says its configuration is.
struct Settings {
    config_file: String,
    hba_file: String,
    ident_file: String,
    /// Every file `pg_file_settings` names (none when this role may not read it).
    sources: Vec<String>,
}

/// Stores the configuration files outside `pgdata` as data object `object` of backup `id`;
/// the manifest's record of them and the stored bytes. None when all of it lives in the data
/// directory, or when the server does not say where it is (a role without
/// `pg_read_all_settings`: the backup is taken without it, with a warning).
pub(super) async fn record(
    catalog: &Catalog,
    session: &Session,
    pgdata: &Path,
    id: &str,
    object: u32,
) -> Result<Option<(Configuration, u64)>> {
    let Some(settings) = settings(session).await else {
        return Ok(None);
    };
    let pgdata = pgdata.to_owned();
    let roots = [
        settings.config_file.clone(),
        settings.hba_file.clone(),
        settings.ident_file.clone(),
    ];
    let sources = settings.sources.clone();
    let found = blocking(move || Ok(outside_files(&roots, &sources, &pgdata))).await?;
    let mut configuration = Configuration {
        config_file: settings.config_file,
        hba_file: settings.hba_file,
        ident_file: settings.ident_file,
        files: Vec::new(),
    };
    if found.is_empty() {
        // All in the data directory: nothing to add to the backup.
        return Ok(None);
    }
    let (entries, stored) = copy_object(catalog, id, object, found).await?;
    configuration.files = entries
        .into_iter()
        .map(|f| ConfigFile {
            path: f.path,
            size: f.size,
            mode: f.mode,
            mtime: f.mtime,
            crc32c: f.crc32c,
            object: f.object,
            offset: f.offset,
        })
        .collect();
    for file in &configuration.files {
        tracing::info!("backup {id}: configuration file {} recorded", file.path);
    }
    Ok(Some((configuration, stored)))
}

async fn settings(session: &Session) -> Option<Settings> {
    let rows = session
        .simple_rows(
            "SELECT name, setting FROM pg_settings \
             WHERE name IN ('config_file', 'hba_file', 'ident_file')",
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(
                "the server's configuration files are not recorded (pg_settings: {e}): a \
                 restore gets only what the data directory holds"
            );
            return None;
        }
    };
    let value = |name: &str| {
        rows.iter()
            .find(|row| row.first().and_then(Option::as_deref) == Some(name))
            .and_then(|row| row.get(1).cloned().flatten())
            .filter(|path| path.starts_with('/'))
    };
    let (Some(config_file), Some(hba_file), Some(ident_file)) =
        (value("config_file"), value("hba_file"), value("ident_file"))
    else {
        tracing::warn!(
            "the server's configuration files are not recorded: this role may not read \
             config_file, hba_file and ident_file (grant it pg_read_all_settings)"
        );
        return None;
    };
    // Files with settings, as the server read them: a check on what the walk below finds.
    let sources = session
        .simple_rows(
            "SELECT DISTINCT sourcefile FROM pg_file_settings WHERE sourcefile IS NOT NULL",
        )
        .await
        .map(|rows| {
            rows.into_iter()
                .filter_map(|row| row.into_iter().next().flatten())
                .collect()
        })
        .unwrap_or_else(|e| {
            tracing::debug!("pg_file_settings: {e}");
            Vec::new()
        });
    Some(Settings {
        config_file,
        hba_file,
        ident_file,
        sources,
    })
}

/// The configuration files outside `pgdata`: `roots` (config, hba and ident file), the files
/// `postgresql.conf` includes, followed as the server does, and `sources`. Each once, in
/// that order.
fn outside_files(roots: &[String; 3], sources: &[String], pgdata: &Path) -> Vec<SourceFile> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut pending = vec![(PathBuf::from(&roots[0]), 0)];
    while let Some((file, depth)) = pending.pop() {
        if paths.contains(&file) {
            continue;
        }
        let Ok(text) = fs::read(&file) else {
            paths.push(file);
            continue;
        };
        paths.push(file.clone());
        if depth >= MAX_DEPTH {
            continue;
        }
        // Reversed onto the stack: files come out in the order the server reads them.
        let mut next = Vec::new();
        for include in includes(&text, &file) {
            match include.kind {
                IncludeKind::Include | IncludeKind::IncludeIfExists => next.push(include.target),
                IncludeKind::IncludeDir => {
                    let mut names: Vec<PathBuf> = fs::read_dir(&include.target)
                        .map(|entries| {
                            entries
                                .filter_map(|e| e.ok())
                                .filter(|e| {
                                    include_dir_reads(&e.file_name().to_string_lossy())
                                        && e.path().is_file()
                                })
                                .map(|e| e.path())
                                .collect()
                        })
                        .unwrap_or_default();
                    names.sort();
                    next.extend(names);
                }
            }
        }
        pending.extend(next.into_iter().rev().map(|path| (path, depth + 1)));
    }
    paths.extend(roots[1..].iter().map(PathBuf::from));
    paths.extend(sources.iter().map(PathBuf::from));
    let inside = fs::canonicalize(pgdata).unwrap_or_else(|_| pgdata.to_owned());
    let mut seen = BTreeSet::new();
    let mut files = Vec::new();
    for path in paths {
        if !seen.insert(path.clone()) {
            continue;
        }
        let canonical = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if canonical.starts_with(&inside) {
            continue;
        }
        // An `include_if_exists` target that is not there is no file of the configuration.
        let meta = match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!("configuration file {} is not recorded: {e}", path.display());
                continue;
            }
        };
        if let Err(e) = fs::File::open(&path) {
            tracing::warn!("configuration file {} is not recorded: {e}", path.display());
            continue;
        }
        files.push(SourceFile {
            path: path.display().to_string(),
            absolute: path,
            offset: 0,
            size: meta.len(),
            mode: meta.permissions().mode() & 0o7777,
            mtime: meta.mtime(),
        });
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_follows_includes_and_leaves_the_data_directory_out() {
        let dir = tempfile::tempdir().unwrap();
        let (etc, data) = (dir.path().join("etc"), dir.path().join("data"));
        fs::create_dir_all(etc.join("conf.d")).unwrap();
        fs::create_dir_all(&data).unwrap();
        let conf = etc.join("postgresql.conf");
        fs::write(
            &conf,
            format!(
                "include_dir 'conf.d'\ninclude_if_exists 'missing.conf'\ninclude '{}'\n",
                data.join("inside.conf").display()
            ),
        )
        .unwrap();
        fs::write(etc.join("conf.d/b.conf"), "work_mem = 8MB\n").unwrap();
        fs::write(etc.join("conf.d/a.conf"), "include '../deep.conf'\n").unwrap();
        fs::write(etc.join("conf.d/.hidden.conf"), "").unwrap();
        fs::write(etc.join("deep.conf"), "").unwrap();
        fs::write(etc.join("pg_hba.conf"), "local all all trust\n").unwrap();
        fs::write(data.join("inside.conf"), "").unwrap();
        fs::write(data.join("pg_ident.conf"), "").unwrap();
        let roots = [
            conf.display().to_string(),
            etc.join("pg_hba.conf").display().to_string(),
            data.join("pg_ident.conf").display().to_string(),
        ];
        let found: Vec<String> = outside_files(&roots, &[], &data)
            .into_iter()
            .map(|f| f.absolute.strip_prefix(&etc).unwrap().display().to_string())
            .collect();
        assert_eq!(
            found,
            [
                "postgresql.conf",
                "conf.d/a.conf",
                "deep.conf",
                "conf.d/b.conf",
                "pg_hba.conf"
            ]
        );
    }
}
