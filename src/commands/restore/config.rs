//! The configuration a backup recorded from outside the data directory, put where the
//! restored server finds it:
//!
//! - a restore into another directory than the backup's writes it into the data directory
//!   (`postgresql.conf`, `pg_hba.conf`, `pg_ident.conf`, included files beside), with the
//!   settings that name the original places adjusted or commented out: `pg_ctl -D DIR start`
//!   then reads it;
//! - in place, the files at the original paths are left as they are, unless
//!   `--restore-config` asks to write them back (the ones there are kept beside);
//! - `--config-dir DIR` writes them to DIR (Debian's `/etc/postgresql/<v>/<cluster>`), with
//!   `data_directory` naming the restored directory.
//!
//! [`plan`] is pure; [`place`] fetches, plans and writes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::catalog::backup::{BackupManifest, ConfigFile, Configuration};
use crate::error::{Error, Result};
use crate::ownership::{Owner, give_to, running_as_root};
use crate::pg::config_files::{
    Change, Edit, IncludeKind, debian_cluster, includes, lexical, resolve, rewrite,
};

/// What the user asked for the recorded configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigRequest {
    /// In place: write the recorded files back over those at the original paths.
    pub restore_config: bool,
    /// Write the configuration here instead (`--config-dir`).
    pub config_dir: Option<PathBuf>,
}

/// Where the recorded configuration goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Into the restored data directory (a restore elsewhere than the backup's).
    DataDirectory,
    /// In place: the files at the original paths are left as they are.
    Kept,
    /// In place with `--restore-config`: written back to the original paths.
    Original,
    /// `--config-dir DIR`.
    Directory(PathBuf),
}

/// What restore did with the recorded configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigReport {
    /// None: the backup records no configuration outside its data directory.
    pub placement: Option<Placement>,
    /// Each recorded file (its original path) and where it was written.
    pub written: Vec<(String, PathBuf)>,
    /// Files that were where one was written, and the name they are kept under.
    pub kept_aside: Vec<(PathBuf, PathBuf)>,
    /// The settings changed for the new place, one line each.
    pub changes: Vec<String>,
    /// The `postgresql.conf` the restored server reads, when not the data directory's.
    pub config_file: Option<PathBuf>,
}

/// Decides where the configuration goes.
pub fn placement(request: &ConfigRequest, in_place: bool) -> Placement {
    match (&request.config_dir, in_place, request.restore_config) {
        (Some(dir), _, _) => Placement::Directory(lexical(dir)),
        (None, true, true) => Placement::Original,
        (None, true, false) => Placement::Kept,
        (None, false, _) => Placement::DataDirectory,
    }
}

/// A file to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFile {
    pub original: String,
    pub destination: PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// What [`plan`] decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigPlan {
    pub files: Vec<PlannedFile>,
    /// Directories `include_dir` names: created even when empty (the server refuses a
    /// missing one).
    pub directories: Vec<PathBuf>,
    pub changes: Vec<String>,
    /// Where the restored server reads `postgresql.conf`, if the plan moves it.
    pub config_file: Option<PathBuf>,
}

/// Where each original file goes and what it then says. `contents` holds the recorded
/// files' bytes by original path; `data_directory` is the backup's, `pgdata` the restored
/// one.
pub fn plan(
    configuration: &Configuration,
    contents: &BTreeMap<String, Vec<u8>>,
    placement: &Placement,
    data_directory: Option<&str>,
    pgdata: &Path,
) -> ConfigPlan {
    let target = match placement {
        Placement::Kept => {
            return ConfigPlan {
                config_file: Some(PathBuf::from(&configuration.config_file)),
                ..ConfigPlan::default()
            };
        }
        Placement::Original => {
            return ConfigPlan {
                files: configuration
                    .files
                    .iter()
                    .filter_map(|f| {
                        Some(PlannedFile {
                            original: f.path.clone(),
                            destination: PathBuf::from(&f.path),
                            content: contents.get(&f.path)?.clone(),
                            mode: f.mode,
                        })
                    })
                    .collect(),
                config_file: Some(PathBuf::from(&configuration.config_file)),
                ..ConfigPlan::default()
            };
        }
        Placement::DataDirectory => pgdata.to_owned(),
        Placement::Directory(dir) => dir.clone(),
    };
    let mapper = Mapper {
        configuration,
        config_dir: Path::new(&configuration.config_file)
            .parent()
            .unwrap_or(Path::new("/"))
            .to_owned(),
        data_directory: data_directory.map(|d| lexical(Path::new(d))),
        pgdata: pgdata.to_owned(),
        target: target.clone(),
    };
    let debian = match placement {
        Placement::Directory(dir) => debian_cluster(dir),
        _ => None,
    };
    let mut out = ConfigPlan::default();
    let (hba, ident) = (
        Path::new(&configuration.hba_file),
        Path::new(&configuration.ident_file),
    );
    for file in &configuration.files {
        let Some(content) = contents.get(&file.path) else {
            continue;
        };
        let original = Path::new(&file.path);
        let destination = mapper.map(original);
        // The authentication files hold no settings.
        let content = if original == hba || original == ident {
            content.clone()
        } else {
            let (text, changes) = rewrite(content, |name, value| {
                let edit = decide(&mapper, placement, debian.as_ref(), original, name, value);
                if name == "include_dir" {
                    let dir = match &edit {
                        Edit::Set(dir) => PathBuf::from(dir),
                        _ => resolve(&destination, value),
                    };
                    if !out.directories.contains(&dir) {
                        out.directories.push(dir);
                    }
                }
                edit
            });
            out.changes
                .extend(changes.iter().map(|c| describe(&destination, c)));
            text
        };
        out.files.push(PlannedFile {
            original: file.path.clone(),
            destination,
            content,
            mode: file.mode,
        });
    }
    let config_file = mapper.map(Path::new(&configuration.config_file));
    if config_file != pgdata.join("postgresql.conf") {
        out.config_file = Some(config_file);
    }
    out
}

/// Where the original paths go.
struct Mapper<'a> {
    configuration: &'a Configuration,
    /// The directory of the original `postgresql.conf`.
    config_dir: PathBuf,
    data_directory: Option<PathBuf>,
    pgdata: PathBuf,
    /// Where the configuration is written.
    target: PathBuf,
}

impl Mapper<'_> {
    fn map(&self, original: &Path) -> PathBuf {
        let original = lexical(original);
        // Files of the data directory are restored with it.
        if let Some(relative) = self
            .data_directory
            .as_ref()
            .and_then(|d| original.strip_prefix(d).ok())
        {
            return self.pgdata.join(relative);
        }
        let c = self.configuration;
        for (path, name) in [
            (&c.config_file, "postgresql.conf"),
            (&c.hba_file, "pg_hba.conf"),
            (&c.ident_file, "pg_ident.conf"),
        ] {
            if original == lexical(Path::new(path)) {
                return self.target.join(name);
            }
        }
        match original.strip_prefix(&self.config_dir) {
            Ok(relative) => self.target.join(relative),
            // Elsewhere on the host: under one directory of the target, by full path.
            Err(_) => self
                .target
                .join("pitr-config")
                .join(original.strip_prefix("/").unwrap_or(&original)),
        }
    }
}

/// What becomes of the setting `name = value` in the file `original` at its new place.
fn decide(
    mapper: &Mapper<'_>,
    placement: &Placement,
    debian: Option<&(String, String)>,
    original: &Path,
    name: &str,
    value: &str,
) -> Edit {
    let destination = mapper.map(original);
    let directory = matches!(placement, Placement::Directory(_));
    match name {
        "include" | "include_if_exists" | "include_dir" => {
            let moved = mapper.map(&resolve(original, value));
            if resolve(&destination, value) == moved {
                Edit::Keep
            } else {
                Edit::Set(moved.display().to_string())
            }
        }
        // In the data directory it is the default; elsewhere it must name the restored one.
        "data_directory" if directory => Edit::Set(mapper.pgdata.display().to_string()),
        "data_directory" | "config_file" => Edit::Drop,
        "hba_file" | "ident_file" => {
            let moved = mapper.map(&resolve(original, value));
            let default = mapper.target.join(if name == "hba_file" {
                "pg_hba.conf"
            } else {
                "pg_ident.conf"
            });
            if moved == default {
                Edit::Drop
            } else {
                Edit::Set(moved.display().to_string())
            }
        }
        // The original's pid file: the copy must not take it.
        "external_pid_file" => match debian {
            Some((version, cluster)) => {
                Edit::Set(format!("/var/run/postgresql/{version}-{cluster}.pid"))
            }
            None => Edit::Drop,
        },
        "cluster_name" => match debian {
            Some((version, cluster)) => Edit::Set(format!("{version}/{cluster}")),
            None => Edit::Keep,
        },
        _ => Edit::Keep,
    }
}

fn describe(file: &Path, change: &Change) -> String {
    match &change.new {
        Some(new) => format!(
            "{}: {} = '{}' (was '{}')",
            file.display(),
            change.name,
            new,
            change.old
        ),
        None => format!(
            "{}: {} = '{}' commented out",
            file.display(),
            change.name,
            change.old
        ),
    }
}

/// Whether `pgdata` is the backup's own data directory.
pub fn in_place(backup: &BackupManifest, pgdata: &Path) -> bool {
    backup
        .data_directory
        .as_deref()
        .is_some_and(|dir| super::layout::normalize(Path::new(dir)) == pgdata)
}

/// Fetches the recorded configuration of `backup`, checks it, and writes it where
/// [`placement`] says; `owner` gets what is written (a run as root).
pub async fn place(
    catalog: &Catalog,
    backup: &BackupManifest,
    request: &ConfigRequest,
    pgdata: &Path,
    owner: Option<&Owner>,
) -> Result<ConfigReport> {
    let Some(configuration) = &backup.configuration else {
        if request.restore_config || request.config_dir.is_some() {
            tracing::warn!(
                "backup {} recorded no configuration outside its data directory: \
                 --restore-config and --config-dir have nothing to write",
                backup.id
            );
        }
        return Ok(ConfigReport::default());
    };
    let placement = placement(request, in_place(backup, pgdata));
    let mut contents = BTreeMap::new();
    if placement != Placement::Kept {
        let objects: std::collections::BTreeSet<u32> =
            configuration.files.iter().map(|f| f.object).collect();
        for object in objects {
            let (bytes, _) = catalog
                .fetch_backup_object(&backup.id, object, "the configuration", Vec::new())
                .await?;
            for file in configuration.files.iter().filter(|f| f.object == object) {
                let piece = piece_of(&bytes, file).ok_or_else(|| Error::Corrupt {
                    what: format!("configuration file {} of backup {}", file.path, backup.id),
                    location: catalog.location(),
                    reason: "its bytes do not match the manifest's size and CRC-32C".into(),
                })?;
                contents.insert(file.path.clone(), piece.to_vec());
            }
        }
    }
    let planned = plan(
        configuration,
        &contents,
        &placement,
        backup.data_directory.as_deref(),
        pgdata,
    );
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut report = ConfigReport {
        placement: Some(placement.clone()),
        changes: planned.changes,
        config_file: planned.config_file,
        ..ConfigReport::default()
    };
    // Directories outside the data directory are readable as Debian makes /etc/postgresql.
    let dir_mode = |dir: &Path| {
        if dir.starts_with(pgdata) {
            0o700
        } else {
            0o755
        }
    };
    let parents = planned
        .files
        .iter()
        .filter_map(|f| f.destination.parent().map(Path::to_owned));
    for dir in planned.directories.iter().cloned().chain(parents) {
        create_dirs(&dir, dir_mode(&dir), owner)?;
    }
    for file in &planned.files {
        if let Some(aside) =
            write_beside(&file.destination, &file.content, file.mode, &stamp, owner)?
        {
            report.kept_aside.push((file.destination.clone(), aside));
        }
        report
            .written
            .push((file.original.clone(), file.destination.clone()));
    }
    Ok(report)
}

/// The bytes of `file` in its decoded object, if they are there and match its CRC-32C.
fn piece_of<'a>(object: &'a [u8], file: &ConfigFile) -> Option<&'a [u8]> {
    let start = usize::try_from(file.offset).ok()?;
    let end = usize::try_from(file.offset.checked_add(file.size)?).ok()?;
    object
        .get(start..end)
        .filter(|piece| crc32c::crc32c(piece) == file.crc32c)
}

/// Creates `dir` and the missing directories above it, given to `owner`.
fn create_dirs(dir: &Path, mode: u32, owner: Option<&Owner>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent, mode, owner)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Error::local_io(dir.display(), e)),
    }
    give_to(dir, owner).map_err(|e| Error::local_io(dir.display(), e))
}

/// Writes `content` to `path` through a staged file, synced and renamed: never a partial
/// file where the server reads. A file already there is kept beside as
/// `<name>.pitr-<stamp>` (returned); it gives its owner to the new one.
fn write_beside(
    path: &Path,
    content: &[u8],
    mode: u32,
    stamp: &str,
    owner: Option<&Owner>,
) -> Result<Option<PathBuf>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A file that already says the same is left as it is: nothing to keep beside.
    if fs::read(path).is_ok_and(|there| there == content) {
        return Ok(None);
    }
    let staging = path.with_file_name(format!("{name}.pitr-restore"));
    write_synced(&staging, content, mode)?;
    let existing = fs::symlink_metadata(path).ok();
    match &existing {
        Some(meta) if running_as_root() => {
            std::os::unix::fs::lchown(&staging, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| Error::local_io(staging.display(), e))?;
        }
        _ => give_to(&staging, owner).map_err(|e| Error::local_io(staging.display(), e))?,
    }
    let mut aside = None;
    if existing.is_some() {
        let mut candidate = path.with_file_name(format!("{name}.pitr-{stamp}"));
        let mut n = 1;
        while candidate.exists() {
            candidate = path.with_file_name(format!("{name}.pitr-{stamp}-{n}"));
            n += 1;
        }
        fs::rename(path, &candidate).map_err(|e| Error::local_io(path.display(), e))?;
        aside = Some(candidate);
    }
    fs::rename(&staging, path).map_err(|e| Error::local_io(path.display(), e))?;
    Ok(aside)
}

/// A file restore wrote into the data directory (or moved there), as `backup_manifest`
/// lists it for pg_verifybackup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenFile {
    /// Relative to the data directory.
    pub path: String,
    pub size: u64,
    pub crc32c: u32,
}

/// The files the placement wrote or kept beside inside `pgdata`, read back.
pub fn written_in(report: &ConfigReport, pgdata: &Path) -> Result<Vec<WrittenFile>> {
    let written = report.written.iter().map(|(_, path)| path);
    let aside = report.kept_aside.iter().map(|(_, aside)| aside);
    let mut files = Vec::new();
    for path in written.chain(aside) {
        let Ok(relative) = path.strip_prefix(pgdata) else {
            continue;
        };
        let bytes = fs::read(path).map_err(|e| Error::local_io(path.display(), e))?;
        files.push(WrittenFile {
            path: relative.display().to_string(),
            size: bytes.len() as u64,
            crc32c: crc32c::crc32c(&bytes),
        });
    }
    Ok(files)
}

/// Where the placement puts the configuration, the settings the restored server gets in
/// `postgresql.auto.conf` are not all it reads: postgresql-common (`pg_ctlcluster`) reads the
/// port from the configuration directory's `postgresql.conf`. Appends `settings` there for
/// `--config-dir`.
pub fn settle(report: &ConfigReport, settings: &[String]) -> Result<()> {
    let (Some(Placement::Directory(_)), Some(config_file)) =
        (&report.placement, &report.config_file)
    else {
        return Ok(());
    };
    let port: Vec<&String> = settings.iter().filter(|s| s.starts_with("port")).collect();
    if port.is_empty() {
        return Ok(());
    }
    let mut text = fs::read(config_file).map_err(|e| Error::local_io(config_file.display(), e))?;
    if !text.ends_with(b"\n") && !text.is_empty() {
        text.push(b'\n');
    }
    text.extend_from_slice(b"\n# Written by pitr restore: a port free on this host.\n");
    for line in port {
        text.extend_from_slice(format!("{line}\n").as_bytes());
    }
    let mode = fs::metadata(config_file).map(|m| m.mode()).unwrap_or(0o644);
    let staging = config_file.with_extension("conf.pitr-restore");
    let uid_gid = fs::metadata(config_file).map(|m| (m.uid(), m.gid())).ok();
    write_synced(&staging, &text, mode)?;
    if let (Some((uid, gid)), true) = (uid_gid, running_as_root()) {
        std::os::unix::fs::lchown(&staging, Some(uid), Some(gid))
            .map_err(|e| Error::local_io(staging.display(), e))?;
    }
    fs::rename(&staging, config_file).map_err(|e| Error::local_io(config_file.display(), e))
}

/// Writes `content` into `staging` (created with `mode`'s permission bits) and syncs it, to
/// be renamed into place.
fn write_synced(staging: &Path, content: &[u8], mode: u32) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o777)
        .open(staging)
        .and_then(|mut file| {
            file.write_all(content)?;
            file.sync_all()
        })
        .map_err(|e| Error::local_io(staging.display(), e))
}

/// The command that starts the restored server where `pg_ctl -D DIR start` does not read
/// its configuration: `pg_ctlcluster` for a Debian configuration directory, else the usual
/// pg_ctl command (`pg_ctl_start`, ending in `start`) with `config_file`. None: the usual
/// one reads it.
pub fn start_command(report: &ConfigReport, pg_ctl_start: &[String]) -> Option<Vec<String>> {
    let config_file = report.config_file.as_ref()?;
    if let Some((version, cluster)) = config_file.parent().and_then(debian_cluster) {
        return Some(vec![
            "pg_ctlcluster".into(),
            version,
            cluster,
            "start".into(),
        ]);
    }
    let mut words = pg_ctl_start.to_vec();
    let at = words.len().saturating_sub(1);
    words.splice(
        at..at,
        [
            "-o".to_owned(),
            format!("-c config_file={}", config_file.display()),
        ],
    );
    Some(words)
}

/// The include directives of the configuration read from `config_file`, followed: the text
/// the server reads, in its order (for the port and socket settings).
pub fn expanded(config_file: &Path) -> Vec<u8> {
    fn expand(file: &Path, depth: usize, out: &mut Vec<u8>) {
        let Ok(text) = fs::read(file) else {
            return;
        };
        for line in text.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.push(b'\n');
            }
            if depth >= 10 {
                continue;
            }
            for include in includes(line, file) {
                match include.kind {
                    IncludeKind::Include | IncludeKind::IncludeIfExists => {
                        expand(&include.target, depth + 1, out)
                    }
                    IncludeKind::IncludeDir => {
                        let mut names: Vec<PathBuf> = fs::read_dir(&include.target)
                            .map(|entries| {
                                entries
                                    .filter_map(|e| e.ok())
                                    .filter(|e| {
                                        crate::pg::config_files::include_dir_reads(
                                            &e.file_name().to_string_lossy(),
                                        )
                                    })
                                    .map(|e| e.path())
                                    .collect()
                            })
                            .unwrap_or_default();
                        names.sort();
                        for name in names {
                            expand(&name, depth + 1, out);
                        }
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    expand(config_file, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_file_is_taken_only_whole_and_with_its_checksum() {
        let object = b"port = 5433\nlocal all all peer\n";
        let file = |offset: u64, size: u64, crc32c: u32| ConfigFile {
            path: "/etc/x".into(),
            size,
            mode: 0o644,
            mtime: 0,
            crc32c,
            object: 0,
            offset,
        };
        let hba = crc32c::crc32c(b"local all all peer\n");
        assert_eq!(
            piece_of(object, &file(12, 19, hba)),
            Some(&b"local all all peer\n"[..])
        );
        // Another CRC (a manifest changed), past the end, an offset that overflows: refused.
        assert_eq!(piece_of(object, &file(12, 19, hba ^ 1)), None);
        assert_eq!(piece_of(object, &file(12, 40, hba)), None);
        assert_eq!(piece_of(object, &file(u64::MAX, 2, hba)), None);
    }

    fn debian() -> (Configuration, BTreeMap<String, Vec<u8>>) {
        let etc = "/etc/postgresql/15/main";
        let file = |name: &str| ConfigFile {
            path: format!("{etc}/{name}"),
            size: 0,
            mode: 0o644,
            mtime: 0,
            crc32c: 0,
            object: 9,
            offset: 0,
        };
        let configuration = Configuration {
            config_file: format!("{etc}/postgresql.conf"),
            hba_file: format!("{etc}/pg_hba.conf"),
            ident_file: format!("{etc}/pg_ident.conf"),
            files: vec![
                file("postgresql.conf"),
                file("conf.d/a.conf"),
                file("pg_hba.conf"),
                file("pg_ident.conf"),
            ],
        };
        let mut contents = BTreeMap::new();
        contents.insert(
            format!("{etc}/postgresql.conf"),
            b"data_directory = '/var/lib/postgresql/15/main'\n\
              hba_file = '/etc/postgresql/15/main/pg_hba.conf'\n\
              ident_file = '/etc/postgresql/15/main/pg_ident.conf'\n\
              external_pid_file = '/var/run/postgresql/15-main.pid'\n\
              port = 5433\ninclude_dir = 'conf.d'\n\
              include_if_exists = '/etc/postgresql/15/main/extra.conf'\n\
              cluster_name = '15/main'\n"
                .to_vec(),
        );
        contents.insert(format!("{etc}/conf.d/a.conf"), b"work_mem = 8MB\n".to_vec());
        contents.insert(
            format!("{etc}/pg_hba.conf"),
            b"local all all peer\n".to_vec(),
        );
        contents.insert(format!("{etc}/pg_ident.conf"), Vec::new());
        (configuration, contents)
    }

    fn text(plan: &ConfigPlan, destination: &str) -> String {
        let file = plan
            .files
            .iter()
            .find(|f| f.destination == Path::new(destination))
            .unwrap();
        String::from_utf8(file.content.clone()).unwrap()
    }

    #[test]
    fn into_a_new_directory_the_configuration_joins_the_data() {
        let (configuration, contents) = debian();
        let pgdata = Path::new("/srv/copy");
        let plan = plan(
            &configuration,
            &contents,
            &Placement::DataDirectory,
            Some("/var/lib/postgresql/15/main"),
            pgdata,
        );
        let destinations: Vec<&Path> = plan.files.iter().map(|f| f.destination.as_path()).collect();
        assert_eq!(
            destinations,
            [
                "/srv/copy/postgresql.conf",
                "/srv/copy/conf.d/a.conf",
                "/srv/copy/pg_hba.conf",
                "/srv/copy/pg_ident.conf"
            ]
            .map(Path::new)
        );
        let conf = text(&plan, "/srv/copy/postgresql.conf");
        assert!(conf.contains("# pitr restore: data_directory"), "{conf}");
        assert!(conf.contains("# pitr restore: hba_file"), "{conf}");
        assert!(conf.contains("# pitr restore: ident_file"), "{conf}");
        assert!(conf.contains("# pitr restore: external_pid_file"), "{conf}");
        assert!(
            conf.contains("\nport = 5433\ninclude_dir = 'conf.d'\n"),
            "{conf}"
        );
        assert!(
            conf.contains("include_if_exists = '/srv/copy/extra.conf'"),
            "{conf}"
        );
        assert!(conf.contains("cluster_name = '15/main'\n"), "{conf}");
        assert_eq!(plan.directories, [PathBuf::from("/srv/copy/conf.d")]);
        assert_eq!(plan.config_file, None);
        assert_eq!(plan.changes.len(), 5, "{:?}", plan.changes);
    }

    #[test]
    fn a_config_directory_names_the_restored_data_and_its_own_cluster() {
        let (configuration, contents) = debian();
        let dir = PathBuf::from("/etc/postgresql/15/copy");
        let plan = plan(
            &configuration,
            &contents,
            &Placement::Directory(dir.clone()),
            Some("/var/lib/postgresql/15/main"),
            Path::new("/srv/copy"),
        );
        let conf = text(&plan, "/etc/postgresql/15/copy/postgresql.conf");
        assert!(conf.contains("data_directory = '/srv/copy'\t"), "{conf}");
        assert!(
            conf.contains("external_pid_file = '/var/run/postgresql/15-copy.pid'"),
            "{conf}"
        );
        assert!(conf.contains("cluster_name = '15/copy'"), "{conf}");
        assert_eq!(plan.config_file, Some(dir.join("postgresql.conf")));
        let report = ConfigReport {
            config_file: plan.config_file.clone(),
            ..ConfigReport::default()
        };
        assert_eq!(
            start_command(&report, &["pg_ctl".into(), "start".into()]).unwrap(),
            ["pg_ctlcluster", "15", "copy", "start"]
        );
    }

    #[test]
    fn in_place_the_files_stay_unless_asked() {
        let (configuration, contents) = debian();
        let kept = plan(
            &configuration,
            &contents,
            &Placement::Kept,
            None,
            Path::new("/x"),
        );
        assert!(kept.files.is_empty());
        let back = plan(
            &configuration,
            &contents,
            &Placement::Original,
            None,
            Path::new("/x"),
        );
        assert_eq!(back.files.len(), 4);
        assert!(
            back.files
                .iter()
                .all(|f| f.original == f.destination.display().to_string())
        );
        assert_eq!(placement(&ConfigRequest::default(), true), Placement::Kept);
        assert_eq!(
            placement(
                &ConfigRequest {
                    restore_config: true,
                    config_dir: None
                },
                true
            ),
            Placement::Original
        );
        assert_eq!(
            placement(&ConfigRequest::default(), false),
            Placement::DataDirectory
        );
    }
}
