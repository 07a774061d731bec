//! Where and with which mode each entry of a backup manifest is restored, decided before a
//! byte is written. The manifest comes from the repository, and whoever can write there must
//! not be able to make a restore write anywhere but into the data directory and the
//! tablespaces' directories, nor loosen a mode: this is the one place that decides both, with
//! no I/O, so that every rule has a unit test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use crate::catalog::backup::BackupManifest;

/// pg_control is restored under this name and renamed last: without it PostgreSQL refuses to
/// start, so a restore cut short (kill -9, power loss) leaves a directory no one can start
/// by mistake as a crashed primary.
pub const CONTROL_FILE: &str = "global/pg_control";
pub const CONTROL_FILE_RESTORING: &str = "global/pg_control.pitr-restoring";

/// Where tablespace links live, relative to the data directory.
const TABLESPACE_LINKS: &str = "pg_tblspc";

/// PostgreSQL's modes (`pg_file_create_mode`, `pg_dir_create_mode`): owner only, or with
/// group read when the cluster was initialised with `initdb --allow-group-access`.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;
const GROUP_FILE_MODE: u32 = 0o640;
const GROUP_DIR_MODE: u32 = 0o750;

/// The restore's destinations, proven confined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreLayout {
    pgdata: PathBuf,
    /// Each tablespace's directory: where it was, or where `--tablespace-map` puts it.
    tablespaces: BTreeMap<u32, PathBuf>,
    /// Whether the cluster allowed group access (modes 0640/0750).
    group_access: bool,
}

/// Why a manifest cannot be restored as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// An entry no backup pitr takes can hold: the manifest was tampered with (its checksum
    /// is no defence against whoever can write to the repository: it carries no secret).
    #[error("'{path}' {reason}: the manifest is unsafe (tampered with?); nothing was written")]
    Unsafe { path: String, reason: String },
    /// A tablespace's directory would overlap the data directory or another tablespace.
    #[error(
        "tablespace {oid} would be restored into {dir}, which {reason}: map it elsewhere with \
         --tablespace-map {oid}=DIR"
    )]
    TablespaceOverlap {
        oid: u32,
        dir: PathBuf,
        reason: String,
    },
}

fn unsafe_entry(path: &str, reason: impl Into<String>) -> LayoutError {
    LayoutError::Unsafe {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Decides where `manifest` is restored into `pgdata` (absolute), tablespaces moved as
/// `tablespace_map` says, and proves that every entry lands inside the data directory or a
/// declared tablespace's directory. Refused: absolute paths, empty, `.` or `..` components,
/// NUL; entries whose mode names a file type (a symbolic link, a device); anything under
/// `pg_tblspc/` but the links of declared tablespaces and their contents; tablespace
/// directories that overlap the data directory or each other.
pub fn plan_layout(
    manifest: &BackupManifest,
    pgdata: &Path,
    tablespace_map: &HashMap<u32, PathBuf>,
) -> Result<RestoreLayout, LayoutError> {
    let pgdata = normalize(pgdata);
    let mut tablespaces = BTreeMap::new();
    for tablespace in &manifest.tablespaces {
        let recorded = &tablespace.path;
        if !recorded.starts_with('/') || !is_clean(recorded.trim_start_matches('/')) {
            return Err(unsafe_entry(
                recorded,
                format!(
                    "is not a plain absolute path for tablespace {}",
                    tablespace.oid
                ),
            ));
        }
        let dir = match tablespace_map.get(&tablespace.oid) {
            Some(mapped) => normalize(mapped),
            None => PathBuf::from(recorded),
        };
        if tablespaces.insert(tablespace.oid, dir).is_some() {
            return Err(unsafe_entry(
                recorded,
                format!("declares tablespace {} twice", tablespace.oid),
            ));
        }
    }
    for (&oid, dir) in &tablespaces {
        let overlap = |other: &Path| dir.starts_with(other) || other.starts_with(dir);
        let reason = if overlap(&pgdata) {
            Some(format!("overlaps the data directory {}", pgdata.display()))
        } else {
            tablespaces
                .iter()
                .find(|&(&other, other_dir)| other != oid && overlap(other_dir))
                .map(|(other, _)| format!("overlaps the directory of tablespace {other}"))
        };
        if let Some(reason) = reason {
            return Err(LayoutError::TablespaceOverlap {
                oid,
                dir: dir.clone(),
                reason,
            });
        }
    }

    let mut links = BTreeSet::new();
    for directory in &manifest.directories {
        let path = directory.path.as_str();
        check_entry(path, directory.mode, &tablespaces)?;
        if let Some(oid) = link_oid(path) {
            if !links.insert(oid) {
                return Err(unsafe_entry(path, "is listed twice"));
            }
        }
    }
    for file in &manifest.files {
        let path = file.path.as_str();
        check_entry(path, file.mode, &tablespaces)?;
        if path == TABLESPACE_LINKS || link_oid(path).is_some() {
            return Err(unsafe_entry(path, "is a file where a tablespace link goes"));
        }
    }
    // A file is no directory, and holds no entry: found now rather than halfway through.
    let files: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    let directories: BTreeSet<&str> = manifest
        .directories
        .iter()
        .map(|d| d.path.as_str())
        .collect();
    if let Some(path) = directories.intersection(&files).next() {
        return Err(unsafe_entry(path, "is both a file and a directory"));
    }
    for path in directories.iter().chain(files.iter()) {
        let mut ancestors = path.match_indices('/').map(|(end, _)| &path[..end]);
        if let Some(file) = ancestors.find(|a| files.contains(a)) {
            return Err(unsafe_entry(
                path,
                format!("is inside '{file}', which is a file"),
            ));
        }
    }

    let group_access = manifest
        .directories
        .iter()
        .find(|d| d.path == "global")
        .is_some_and(|d| d.mode & 0o050 == 0o050);
    let layout = RestoreLayout {
        pgdata,
        tablespaces,
        group_access,
    };
    // By construction; proved again so that a later change to the rules cannot open a way out.
    let paths = manifest.directories.iter().map(|d| &d.path);
    for path in paths.chain(manifest.files.iter().map(|f| &f.path)) {
        if !layout.is_confined(&layout.destination(path)) {
            return Err(unsafe_entry(
                path,
                "resolves outside the data directory and the tablespaces",
            ));
        }
    }
    Ok(layout)
}

/// One directory or file entry: a clean relative path, a plain mode, and under `pg_tblspc/`
/// only a declared tablespace's link or contents.
fn check_entry(
    path: &str,
    mode: u32,
    tablespaces: &BTreeMap<u32, PathBuf>,
) -> Result<(), LayoutError> {
    if path.starts_with('/') {
        return Err(unsafe_entry(path, "is an absolute path"));
    }
    if !is_clean(path) {
        return Err(unsafe_entry(
            path,
            "is not a plain path inside the data directory (empty, '.' or '..' components, NUL)",
        ));
    }
    if mode & !0o7777 != 0 {
        let kind = if mode & 0o170000 == 0o120000 {
            "a symbolic link (only pg_tblspc/<oid> may be one)"
        } else {
            "a special file"
        };
        return Err(unsafe_entry(path, format!("has mode {mode:o}, {kind}")));
    }
    if let Some(rest) = path.strip_prefix("pg_tblspc/") {
        let name = rest.split('/').next().unwrap_or(rest);
        let declared = canonical_oid(name).filter(|oid| tablespaces.contains_key(oid));
        if declared.is_none() {
            return Err(unsafe_entry(
                path,
                "is under pg_tblspc but not in a tablespace the manifest declares (a link \
                 pointing elsewhere)",
            ));
        }
    }
    Ok(())
}

/// `pg_tblspc/<oid>`, a tablespace link (by PostgreSQL's spelling of an OID).
fn link_oid(path: &str) -> Option<u32> {
    canonical_oid(path.strip_prefix("pg_tblspc/")?)
}

/// An OID written as PostgreSQL writes it: decimal digits, no sign, no leading zero.
fn canonical_oid(name: &str) -> Option<u32> {
    let digits = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
    let oid: u32 = name.parse().ok().filter(|_| digits)?;
    (oid.to_string() == name).then_some(oid)
}

/// Relative, `/`-separated, with no empty, `.` or `..` component and no NUL.
fn is_clean(path: &str) -> bool {
    !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// `path` absolute, with `.` and `..` resolved by the names alone.
pub(super) fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => normal.push(name),
            Component::ParentDir => {
                normal.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    normal
}

impl RestoreLayout {
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Each tablespace's directory, by OID.
    pub fn tablespaces(&self) -> &BTreeMap<u32, PathBuf> {
        &self.tablespaces
    }

    /// The directory a tablespace link `path` points to, if it is one.
    pub fn link_target(&self, path: &str) -> Option<&Path> {
        link_oid(path)
            .and_then(|oid| self.tablespaces.get(&oid))
            .map(PathBuf::as_path)
    }

    /// Where entry `path` is written: tablespace contents straight into the tablespace's
    /// directory, never through the link, and pg_control under its temporary name.
    pub fn destination(&self, path: &str) -> PathBuf {
        if path == CONTROL_FILE {
            return self.pgdata.join(CONTROL_FILE_RESTORING);
        }
        if let Some((name, inner)) = path
            .strip_prefix("pg_tblspc/")
            .and_then(|rest| rest.split_once('/'))
            && let Some(dir) = canonical_oid(name).and_then(|oid| self.tablespaces.get(&oid))
        {
            return dir.join(inner);
        }
        self.pgdata.join(path)
    }

    fn is_confined(&self, destination: &Path) -> bool {
        let inside = |root: &Path| destination.starts_with(root) && destination != root;
        inside(&self.pgdata) || self.tablespaces.values().any(|dir| inside(dir))
    }

    /// The mode of the data directory and of the tablespaces' directories.
    pub fn root_mode(&self) -> u32 {
        if self.group_access {
            GROUP_DIR_MODE
        } else {
            DIR_MODE
        }
    }

    /// A restored file's mode: as recorded, but never more than PostgreSQL's (0600, or 0640
    /// with group access: no set-id, sticky, execute or world bits), and readable and writable
    /// by its owner.
    pub fn file_mode(&self, recorded: u32) -> u32 {
        let most = if self.group_access {
            GROUP_FILE_MODE
        } else {
            FILE_MODE
        };
        (recorded & most) | FILE_MODE
    }

    /// A restored directory's mode, by the same rule (0700, or 0750 with group access).
    pub fn dir_mode(&self, recorded: u32) -> u32 {
        (recorded & self.root_mode()) | DIR_MODE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::backup::{BackupDirectory, BackupFile, Tablespace};
    use crate::pg::Lsn;
    use chrono::DateTime;

    const PGDATA: &str = "/srv/restore/data";

    fn manifest() -> BackupManifest {
        let file = |path: &str, mode| BackupFile {
            path: path.into(),
            size: 1,
            file_offset: 0,
            mode,
            mtime: 0,
            crc32c: 0,
            object: 0,
            offset: 0,
            backup: None,
            delta: None,
        };
        let dir = |path: &str, mode| BackupDirectory {
            path: path.into(),
            mode,
        };
        BackupManifest {
            format: 1,
            id: "b".into(),
            label: "b".into(),
            system_identifier: "1".into(),
            pg_version: 15,
            timeline: 1,
            start_lsn: Lsn(0x2000028),
            stop_lsn: Lsn(0x2000100),
            start_time: DateTime::UNIX_EPOCH,
            stop_time: DateTime::UNIX_EPOCH,
            start_wal_segment: "000000010000000000000002".into(),
            stop_wal_segment: "000000010000000000000002".into(),
            backup_label: String::new(),
            tablespace_map: None,
            tablespaces: vec![Tablespace {
                oid: 16384,
                path: "/srv/ts1".into(),
            }],
            size_bytes: 0,
            stored_bytes: 0,
            directories: vec![
                dir("global", 0o700),
                dir("base", 0o700),
                dir("pg_tblspc", 0o700),
                dir("pg_tblspc/16384", 0o700),
                dir("pg_tblspc/16384/PG_15_202209061", 0o700),
            ],
            files: vec![
                file("global/pg_control", 0o600),
                file("base/1/1259", 0o600),
                file("pg_tblspc/16384/PG_15_202209061/5/16385", 0o600),
            ],
            cluster_owner: None,
            data_directory: None,
            databases: Vec::new(),
            superuser: None,
            configuration: None,
            method: Default::default(),
            server_manifest: None,
            backup_type: crate::catalog::backup::BackupType::Full,
            parent: None,
            data_checksums: None,
            block_size: None,
            changes_from: None,
        }
    }

    fn layout_of(m: &BackupManifest) -> Result<RestoreLayout, LayoutError> {
        plan_layout(m, Path::new(PGDATA), &HashMap::new())
    }

    fn refused_path(m: &BackupManifest) -> String {
        match layout_of(m) {
            Err(LayoutError::Unsafe { path, .. }) => path,
            other => panic!("not refused as unsafe: {other:?}"),
        }
    }

    #[test]
    fn a_sound_manifest_lands_in_the_data_directory_and_its_tablespaces() {
        let layout = layout_of(&manifest()).unwrap();
        assert_eq!(
            layout.destination("base/1/1259"),
            Path::new("/srv/restore/data/base/1/1259")
        );
        assert_eq!(
            layout.destination("global/pg_control"),
            Path::new("/srv/restore/data/global/pg_control.pitr-restoring")
        );
        // Straight into the tablespace's directory, not through the link.
        assert_eq!(
            layout.destination("pg_tblspc/16384/PG_15_202209061/5/16385"),
            Path::new("/srv/ts1/PG_15_202209061/5/16385")
        );
        assert_eq!(
            layout.link_target("pg_tblspc/16384"),
            Some(Path::new("/srv/ts1"))
        );
        assert_eq!(layout.link_target("pg_tblspc"), None);
        // Remapped, and the data directory given with `..`.
        let map = HashMap::from([(16384, PathBuf::from("/mnt/./ts"))]);
        let layout = plan_layout(&manifest(), Path::new("/srv/x/../restore/data"), &map).unwrap();
        assert_eq!(layout.pgdata(), Path::new(PGDATA));
        assert_eq!(
            layout.destination("pg_tblspc/16384/PG_15_202209061/5/16385"),
            Path::new("/mnt/ts/PG_15_202209061/5/16385")
        );
    }

    #[test]
    fn paths_that_leave_the_data_directory_are_refused() {
        for bad in [
            "../escaped/x",
            "base/../../x",
            "/etc/x",
            "base//1",
            "./base",
            "base/.",
            "",
            "base/\0x",
        ] {
            let mut m = manifest();
            m.files[1].path = bad.into();
            assert_eq!(refused_path(&m), bad, "file {bad:?}");
            let mut m = manifest();
            m.directories[1].path = bad.into();
            assert_eq!(refused_path(&m), bad, "directory {bad:?}");
        }
        let mut m = manifest();
        m.files[1].path = "/etc/x".into();
        let message = layout_of(&m).unwrap_err().to_string();
        assert_eq!(
            message,
            "'/etc/x' is an absolute path: the manifest is unsafe (tampered with?); nothing was \
             written"
        );
    }

    #[test]
    fn links_other_than_declared_tablespaces_are_refused() {
        type Tamper = fn(&mut BackupManifest);
        let cases: [(&str, Tamper); 8] = [
            // A symbolic link by its mode, wherever it is.
            ("pg_wal", |m| {
                m.directories.push(dir_entry("pg_wal", 0o120777))
            }),
            ("base/1/1259", |m| m.files[1].mode = 0o120777),
            ("base/1/1259", |m| m.files[1].mode = 0o060600),
            // A link to a tablespace the manifest does not declare.
            ("pg_tblspc/99999", |m| {
                m.directories.push(dir_entry("pg_tblspc/99999", 0o700))
            }),
            ("pg_tblspc/99999/x", |m| {
                m.files[2].path = "pg_tblspc/99999/x".into()
            }),
            // Another spelling of a declared OID.
            ("pg_tblspc/016384", |m| {
                m.directories.push(dir_entry("pg_tblspc/016384", 0o700))
            }),
            // The same link twice, or a file where the link goes.
            ("pg_tblspc/16384", |m| {
                m.directories.push(dir_entry("pg_tblspc/16384", 0o700))
            }),
            ("pg_tblspc/16384", |m| {
                m.files[1].path = "pg_tblspc/16384".into()
            }),
        ];
        for (path, tamper) in cases {
            let mut m = manifest();
            tamper(&mut m);
            assert_eq!(refused_path(&m), path);
        }
        let mut m = manifest();
        m.tablespaces[0].path = "relative/ts".into();
        assert_eq!(refused_path(&m), "relative/ts");
        m.tablespaces[0].path = "/srv/../etc".into();
        assert_eq!(refused_path(&m), "/srv/../etc");
    }

    #[test]
    fn a_file_is_neither_a_directory_nor_holds_entries() {
        let mut m = manifest();
        m.files.push(m.files[1].clone());
        m.files[3].path = "base".into();
        assert_eq!(refused_path(&m), "base");
        let mut m = manifest();
        m.files[1].path = "global/pg_control/x".into();
        assert_eq!(refused_path(&m), "global/pg_control/x");
        // Parts of one large file are entries of the same path.
        let mut m = manifest();
        m.files.push(m.files[1].clone());
        assert!(layout_of(&m).is_ok());
    }

    fn dir_entry(path: &str, mode: u32) -> BackupDirectory {
        BackupDirectory {
            path: path.into(),
            mode,
        }
    }

    #[test]
    fn tablespaces_may_not_overlap_the_data_directory_or_each_other() {
        for (recorded, mapped) in [
            ("/srv/restore/data/ts", None),
            ("/srv/restore", None),
            ("/srv/ts1", Some("/")),
            ("/srv/ts1", Some("/srv/restore/data/pg_wal")),
        ] {
            let mut m = manifest();
            m.tablespaces[0].path = recorded.into();
            let map: HashMap<u32, PathBuf> = mapped
                .map(|dir| (16384, PathBuf::from(dir)))
                .into_iter()
                .collect();
            let err = plan_layout(&m, Path::new(PGDATA), &map).unwrap_err();
            assert!(
                matches!(err, LayoutError::TablespaceOverlap { oid: 16384, .. }),
                "{recorded}: {err:?}"
            );
        }
        let mut m = manifest();
        m.tablespaces.push(Tablespace {
            oid: 16390,
            path: "/srv/ts1/inner".into(),
        });
        let err = layout_of(&m).unwrap_err().to_string();
        assert!(
            err.contains("overlaps the directory of tablespace"),
            "{err}"
        );
    }

    #[test]
    fn modes_are_postgresql_s_at_most() {
        let layout = layout_of(&manifest()).unwrap();
        assert_eq!(layout.root_mode(), 0o700);
        for (recorded, restored) in [
            (0o600, 0o600),
            (0o640, 0o600),
            (0o4755, 0o600),
            (0o7777, 0o600),
            (0o400, 0o600),
        ] {
            assert_eq!(layout.file_mode(recorded), restored, "{recorded:o}");
        }
        assert_eq!(layout.dir_mode(0o3777), 0o700);
        assert_eq!(layout.dir_mode(0o750), 0o700);

        // initdb --allow-group-access: `global` (as the data directory) is 0750.
        let mut m = manifest();
        m.directories[0].mode = 0o750;
        let layout = layout_of(&m).unwrap();
        assert_eq!(layout.root_mode(), 0o750);
        for (recorded, restored) in [
            (0o640, 0o640),
            (0o600, 0o600),
            (0o4755, 0o640),
            (0o666, 0o640),
        ] {
            assert_eq!(layout.file_mode(recorded), restored, "{recorded:o}");
        }
        assert_eq!(layout.dir_mode(0o750), 0o750);
        assert_eq!(layout.dir_mode(0o2777), 0o750);
        assert_eq!(layout.dir_mode(0o700), 0o700);
    }
}
