//! Who owns what pitr writes when it runs as root: PostgreSQL runs as the cluster's owner
//! (usually `postgres`) and can read nothing private that root owns, so a root run must
//! leave no object, directory or restored file owned by root (docs/operations.md,
//! "Running as root").

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::sys;

/// A user and group, as recorded in a backup's manifest and as restored files get them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The user's name where the system knows it (looked up again on the restoring host).
    pub user: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The owner of `path` (not following a final symbolic link).
    pub fn of(path: &Path) -> io::Result<Owner> {
        let meta = fs::symlink_metadata(path)?;
        Ok(Owner {
            user: user_name(meta.uid()),
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    /// The owner of `path` by number only (no user-database lookup), when root runs for
    /// another user: what a root run gives the entries it creates under `path`.
    pub fn for_entries_under(path: &Path) -> Option<Owner> {
        if !running_as_root() {
            return None;
        }
        let meta = fs::metadata(path).ok()?;
        (meta.uid() != 0).then(|| Owner {
            user: None,
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    /// The user `name` of this system, with its primary group.
    pub fn user(name: &str) -> Option<Owner> {
        let entry = sys::user_by_name(name)?;
        Some(Owner {
            user: Some(name.to_owned()),
            uid: entry.uid,
            gid: entry.gid,
        })
    }

    /// The name for messages and commands: the user name, else `#uid`.
    pub fn name(&self) -> String {
        self.user
            .clone()
            .unwrap_or_else(|| format!("#{}", self.uid))
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// pitr runs with root's rights.
pub fn running_as_root() -> bool {
    effective_uid() == 0
}

/// The user whose rights pitr runs with.
pub fn effective_uid() -> u32 {
    sys::effective_uid()
}

/// The name of user `uid`, if the system has one.
pub fn user_name(uid: u32) -> Option<String> {
    sys::user_by_uid(uid).map(|entry| entry.name)
}

/// The home directory of the user this process became ([`become_owner`]): set once, read by
/// whatever looks in `~` afterwards (libpq's ~/.pgpass, the AWS SDK's ~/.aws), instead of a
/// HOME variable changed under a running multi-threaded process.
static BECAME_HOME: OnceLock<PathBuf> = OnceLock::new();

/// The home directory of the user pitr runs as: that of the user it became, else `HOME`,
/// else the password database's entry for the effective user.
pub fn home_dir() -> Option<PathBuf> {
    if let Some(home) = BECAME_HOME.get() {
        return Some(home.clone());
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| sys::user_by_uid(effective_uid()).map(|entry| entry.home))
}

/// The home directory of the user this process became, if it became one: `HOME` is then
/// still the starting user's.
pub fn became_home() -> Option<&'static Path> {
    BECAME_HOME.get().map(PathBuf::as_path)
}

/// Becomes `owner` for good: supplementary groups cleared, then the group, then the user
/// (in that order: a process that gave up root can change neither). `~` follows
/// ([`home_dir`]), so that ~/.pgpass is the user's. Every thread changes with the process
/// (glibc's setxid).
pub fn become_owner(owner: &Owner) -> io::Result<()> {
    sys::become_user(owner.uid, owner.gid)?;
    if let Some(entry) = sys::user_by_uid(owner.uid) {
        // A second call (none today) keeps the first home: the process cannot change user
        // again once it gave up root.
        let _ = BECAME_HOME.set(entry.home);
    }
    Ok(())
}

/// Gives `path` to `owner` (not following a symbolic link); a no-op unless running as root
/// for another user.
pub fn give_to(path: &Path, owner: Option<&Owner>) -> io::Result<()> {
    match owner {
        Some(owner) if running_as_root() && !owner.is_root() => {
            std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
        }
        _ => Ok(()),
    }
}

/// Gives `dir` and everything under it to `owner` (symbolic links themselves, never what they
/// point to).
pub fn give_tree_to(dir: &Path, owner: &Owner) -> io::Result<()> {
    give_to(dir, Some(owner))?;
    if !fs::symlink_metadata(dir)?.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            give_tree_to(&entry.path(), owner)?;
        } else {
            give_to(&entry.path(), Some(owner))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_user_zero_and_named() {
        let root = Owner::user("root").expect("every system has root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert!(Owner::user("no-such-user-pitr").is_none());
        assert_eq!(
            Owner {
                user: None,
                uid: 4242,
                gid: 1
            }
            .name(),
            "#4242"
        );
    }
}
