//! Every call into the operating system that the standard library does not wrap, behind safe
//! functions with narrow contracts. This is the one module where `unsafe` is allowed
//! (src/lib.rs denies it everywhere else): calls rustix wraps safely go through rustix; the
//! rest (the password database, glibc's process-wide set*id, sync_file_range, code run
//! between fork and exec, mapped reads) are here, each block with the reason it is sound.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use rustix::fs::{FallocateFlags, FlockOperation};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};

// ---- users ----

/// One entry of the password database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The home directory (libpq's `~`, where `~/.pgpass` and `~/.aws` are).
    pub home: PathBuf,
}

/// The entry of user `uid`; `None` when the system has none (or the database cannot be read).
pub fn user_by_uid(uid: u32) -> Option<UserEntry> {
    passwd_lookup(|pwd, buf, len, result| {
        // SAFETY: getpwuid_r writes only into `pwd`, the `len` bytes at `buf` and `result`,
        // which passwd_lookup gives it valid and exclusive for the call.
        unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
    })
}

/// The entry of the user called `name`.
pub fn user_by_name(name: &str) -> Option<UserEntry> {
    let name = CString::new(name).ok()?;
    passwd_lookup(|pwd, buf, len, result| {
        // SAFETY: as in user_by_uid; `name` is a NUL-terminated string that outlives the call.
        unsafe { libc::getpwnam_r(name.as_ptr(), pwd, buf, len, result) }
    })
}

/// The buffer for the strings of one entry starts here and doubles on ERANGE (an entry with
/// a long member list or home) up to the cap, past which the entry is taken as unreadable.
const PASSWD_BUFFER_START: usize = 1024;
const PASSWD_BUFFER_MAX: usize = 1 << 20;

type PasswdCall<'a> = dyn FnMut(*mut libc::passwd, *mut libc::c_char, libc::size_t, *mut *mut libc::passwd) -> libc::c_int
    + 'a;

fn passwd_lookup(
    mut call: impl FnMut(
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
) -> Option<UserEntry> {
    passwd_lookup_with(&mut call, PASSWD_BUFFER_START)
}

fn passwd_lookup_with(call: &mut PasswdCall<'_>, start: usize) -> Option<UserEntry> {
    let mut len = start.max(1);
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        // SAFETY: all-zero bytes are a valid libc::passwd (integers and null pointers).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        match call(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) {
            0 if result.is_null() => return None,
            0 => {
                let text = |ptr: *const libc::c_char| {
                    if ptr.is_null() {
                        return Vec::new();
                    }
                    // SAFETY: on success the getpw*_r functions point pw_name and pw_dir at
                    // NUL-terminated strings inside `buf`, which lives until the end of this
                    // iteration; the bytes are copied out before that.
                    unsafe { CStr::from_ptr(ptr) }.to_bytes().to_vec()
                };
                let name = text(pwd.pw_name);
                let home = text(pwd.pw_dir);
                return Some(UserEntry {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    uid: pwd.pw_uid,
                    gid: pwd.pw_gid,
                    home: PathBuf::from(OsStr::from_bytes(&home)),
                });
            }
            libc::ERANGE if len < PASSWD_BUFFER_MAX => len = len.saturating_mul(2),
            libc::EINTR => {}
            _ => return None,
        }
    }
}

/// The user whose rights this process has.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Becomes `uid` and `gid` for good, in every thread: supplementary groups cleared, then the
/// group, then the user (in that order: a process that gave up root can change neither).
pub fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: system calls on integers; setgroups with a count of 0 reads no memory. glibc's
    // wrappers, not rustix's raw system calls, because glibc changes every thread of the
    // process (its setxid broadcast) where the raw call changes only the calling one.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
    }
    Ok(())
}

// ---- processes ----

/// Whether process `pid` exists (signal 0: EPERM means it does, as another user's).
pub fn process_exists(pid: i32) -> bool {
    // 0 and negative numbers name process groups, not a process (and Pid::from_raw asserts
    // a number that is not negative).
    let Some(pid) = Some(pid).filter(|&p| p > 0).and_then(Pid::from_raw) else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == Errno::PERM,
    }
}

/// Whether process `pid` runs: it exists, and is no zombie (dead, not yet reaped: common
/// under a container init that does not reap), which counts as gone.
pub fn process_running(pid: i32) -> bool {
    process_exists(pid) && !is_zombie(pid)
}

/// From `/proc/<pid>/stat`: the state letter follows the parenthesised command name.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(matches!(state, 'Z' | 'X'))
        })
        .unwrap_or(false)
}

/// A signal pitr sends to a server it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// Fast shutdown.
    Interrupt,
    /// Immediate shutdown.
    Quit,
}

/// Sends `signal` to process `pid` (a child of ours); a process already gone is no error.
pub fn send_signal(pid: u32, signal: StopSignal) {
    let signal = match signal {
        StopSignal::Interrupt => Signal::INT,
        StopSignal::Quit => Signal::QUIT,
    };
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The child `command` starts runs in a session of its own, so that it outlives this
/// process and its terminal.
pub fn spawn_in_new_session(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are
    // allowed: setsid is one, and the closure allocates nothing.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// The child `command` starts gets SIGQUIT when this process dies (even by kill -9).
pub fn quit_with_parent(command: &mut Command) {
    // SAFETY: as in spawn_in_new_session: prctl is a plain system call, nothing allocates.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        });
    }
}

/// This machine's host name; `None` when the system will not say.
pub fn host_name() -> Option<String> {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_bytes();
    (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
}

// ---- files ----

/// A lock [`try_lock`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// Takes a `flock` lock on `file` without waiting: `Ok(false)` while another descriptor holds
/// a conflicting one. The lock lasts until the file is closed.
pub fn try_lock(file: &File, kind: LockKind) -> io::Result<bool> {
    let operation = match kind {
        LockKind::Shared => FlockOperation::NonBlockingLockShared,
        LockKind::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    match rustix::fs::flock(file, operation) {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reserves the first `len` bytes of `file`'s blocks at once rather than page by page as data
/// arrives; the file's size is left alone. Filesystems without fallocate return an error the
/// caller may ignore: they simply allocate as they write.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    rustix::fs::fallocate(file, FallocateFlags::KEEP_SIZE, 0, len).map_err(io::Error::from)
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk now, without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Not durability: an fsync still is.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let offset = libc::off64_t::try_from(offset).map_err(|_| invalid())?;
    let len = libc::off64_t::try_from(len).map_err(|_| invalid())?;
    // SAFETY: a system call on integers and a descriptor `file` keeps open; it reads and
    // writes no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Maps `len` bytes of `file` from `offset`, read-only, for a file no process writes in place
/// or truncates while it is mapped. pitr maps only WAL segments that PostgreSQL has handed to
/// archive_command: PostgreSQL leaves such a segment alone until the command returns (it
/// recycles it only after a success), and pitr itself never writes to it.
///
/// Were the file truncated anyway, reading the lost pages raises SIGBUS (the process dies; no
/// wrong byte is archived); were it rewritten in place, the bytes read would be the new ones,
/// and the object's checksum, computed from the same mapped bytes, would still match them.
pub fn map_wal_segment(file: &File, offset: u64, len: usize) -> io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and private to the caller; the contract above (no
    // writer, no truncation while mapped) holds for the files it is given.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_uid_zero_by_number_and_name() {
        let root = user_by_uid(0).expect("every system has root");
        assert_eq!(root.name, "root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.home.is_absolute(), "{root:?}");
        assert_eq!(user_by_name("root"), Some(root));
    }

    #[test]
    fn the_postgres_user_is_found_both_ways() {
        // The test machines run PostgreSQL as `postgres` (tests/it/common).
        let Some(postgres) = user_by_name("postgres") else {
            panic!("no postgres user on this machine");
        };
        assert_ne!(postgres.uid, 0);
        assert_eq!(user_by_uid(postgres.uid).as_ref(), Some(&postgres));
    }

    #[test]
    fn unknown_users_are_none() {
        // No system allocates the largest uid (it is (uid_t)-1, "no change" to chown).
        assert_eq!(user_by_uid(u32::MAX), None);
        assert_eq!(user_by_name("no-such-user-pitr"), None);
        assert_eq!(user_by_name("nul\0inside"), None);
    }

    #[test]
    fn a_buffer_too_small_grows_until_the_entry_fits() {
        let mut sizes = Vec::new();
        let entry = passwd_lookup_with(
            &mut |pwd, buf, len, result| {
                sizes.push(len);
                // SAFETY: as in user_by_uid.
                unsafe { libc::getpwuid_r(0, pwd, buf, len, result) }
            },
            1,
        );
        assert_eq!(entry.map(|e| e.name).as_deref(), Some("root"));
        assert!(sizes.len() > 1, "no retry on ERANGE: {sizes:?}");
        assert!(sizes.windows(2).all(|w| w[1] == w[0] * 2), "{sizes:?}");
    }

    #[test]
    fn preallocation_reserves_blocks_and_keeps_the_size() {
        use std::os::unix::fs::MetadataExt;
        let file = tempfile::tempfile().unwrap();
        match preallocate(&file, 1 << 20) {
            Ok(()) => {
                let meta = file.metadata().unwrap();
                assert_eq!(meta.len(), 0);
                assert!(meta.blocks() * 512 >= 1 << 20, "{} blocks", meta.blocks());
            }
            // tmpfs and others without fallocate: the callers ignore it.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}"),
        }
        preallocate(&file, 0).unwrap();
    }

    #[test]
    fn locks_conflict_between_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = File::create(&path).unwrap();
        let second = File::open(&path).unwrap();
        assert!(try_lock(&first, LockKind::Exclusive).unwrap());
        assert!(!try_lock(&second, LockKind::Shared).unwrap());
        drop(first);
        assert!(try_lock(&second, LockKind::Shared).unwrap());
    }

    #[test]
    fn this_process_exists_and_pid_zero_is_no_process() {
        assert!(process_exists(std::process::id() as i32));
        assert!(!process_exists(0));
        assert!(!process_exists(-1));
        assert!(host_name().is_some());
    }
}
