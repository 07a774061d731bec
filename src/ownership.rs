//! Who owns what pitr writes when it runs as root: PostgreSQL runs as the cluster's owner
//! (usually `postgres`) and can read nothing private that root owns, so a root run must
//! leave no object, directory or restored file owned by root (docs/operations.md,
//! "Running as root").

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

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
        let name_c = CString::new(name).ok()?;
        let (uid, gid, _) = passwd_entry(|pwd, buf, len, result| {
            // SAFETY: getpwnam_r writes only into pwd and buf (of len bytes).
            unsafe { libc::getpwnam_r(name_c.as_ptr(), pwd, buf, len, result) }
        })?;
        Some(Owner {
            user: Some(name.to_owned()),
            uid,
            gid,
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
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The name of user `uid`, if the system has one.
pub fn user_name(uid: u32) -> Option<String> {
    passwd_entry(|pwd, buf, len, result| {
        // SAFETY: getpwuid_r writes only into pwd and buf (of len bytes).
        unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
    })
    .map(|(_, _, name)| name)
}

/// The home directory of user `uid`.
fn home_of(uid: u32) -> Option<String> {
    let mut home = None;
    passwd_lookup(
        &mut |pwd, buf, len, result| {
            // SAFETY: as in user_name.
            unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
        },
        |pwd| {
            // SAFETY: pw_dir points into the buffer, NUL-terminated, while it lives.
            home = Some(
                unsafe { CStr::from_ptr(pwd.pw_dir) }
                    .to_string_lossy()
                    .into_owned(),
            );
        },
    );
    home
}

type PasswdCall<'a> = dyn FnMut(*mut libc::passwd, *mut libc::c_char, libc::size_t, *mut *mut libc::passwd) -> libc::c_int
    + 'a;

/// Uid, gid and name of the entry `call` finds.
fn passwd_entry(
    mut call: impl FnMut(
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
) -> Option<(u32, u32, String)> {
    let mut entry = None;
    passwd_lookup(&mut call, |pwd| {
        // SAFETY: pw_name points into the buffer, NUL-terminated, while it lives.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned();
        entry = Some((pwd.pw_uid, pwd.pw_gid, name));
    });
    entry
}

fn passwd_lookup(call: &mut PasswdCall<'_>, mut found: impl FnMut(&libc::passwd)) {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid value for getpw*_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = call(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
    if rc == 0 && !result.is_null() {
        found(&pwd);
    }
}

/// Becomes `owner` for good: supplementary groups cleared, then the group, then the user
/// (in that order: a process that gave up root can change neither). HOME follows, so that
/// ~/.pgpass is the user's. Every thread changes with the process (glibc's setxid).
pub fn become_owner(owner: &Owner) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on integers; setgroups with a count of 0 reads no memory.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(owner.gid))?;
        check(libc::setuid(owner.uid))?;
    }
    if let Some(home) = home_of(owner.uid) {
        // SAFETY: nothing reads the environment concurrently this early in a command.
        unsafe { std::env::set_var("HOME", home) };
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
