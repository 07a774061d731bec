//! Files and directories readable by their owner only, whatever the umask: the repository's
//! objects, staging files, locks and the spool hold a cluster's data and are created 0600
//! (files) and 0700 (directories). The umask can only take bits away, so each new entry is
//! also set to its mode explicitly (a umask of 0200 must not leave a file the owner cannot
//! write).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Creates the directory `dir` 0700; `AlreadyExists` when it is there (left as it is).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(DIR_MODE).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Creates `dir` and its missing ancestors, each new one 0700; those already there are left
/// as they are (a repository root or spool path the user made is the user's choice).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        result => result,
    }
}

/// Options that create a file 0600 (combine with [`make_private`] for the umask).
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Sets an open file to 0600.
pub fn make_private(file: &File) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
}

/// Writes `content` to `path` (created or truncated), 0600.
pub fn write(path: impl AsRef<Path>, content: impl AsRef<[u8]>) -> io::Result<()> {
    let mut file = file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path.as_ref())?;
    make_private(&file)?;
    file.write_all(content.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The umask is process-wide and unit tests run in threads: tests/it/confinement.rs runs
    /// pitr under permissive umasks; here, the modes under whatever umask the run has.
    #[test]
    fn new_entries_are_private_and_existing_ones_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        let dir = root.path().join("a/b");
        create_dir_all(&dir).unwrap();
        write(dir.join("f"), b"x").unwrap();
        assert_eq!(mode(&root.path().join("a")), DIR_MODE);
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&dir.join("f")), FILE_MODE);
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        create_dir_all(root.path()).unwrap();
        assert_eq!(mode(root.path()), 0o755);
    }
}
