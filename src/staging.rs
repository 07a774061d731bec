//! Staging files: a file is written under a temporary name and renamed or linked into place
//! only when whole. A process killed meanwhile leaves its staging file behind; the next run
//! removes such leftovers, and only those: a file whose writer still runs is left alone.
//!
//! Names carry the writer's pid (`<prefix><pid>-<random>`), so that a leftover is known as
//! one as soon as its writer is gone; a file older than [`STALE_AFTER`] is a leftover
//! whatever its name says (a pid can be reused).

use std::path::Path;
use std::time::{Duration, SystemTime};

/// No operation keeps a staging file this long.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// The name prefix for a staging file of this process.
pub fn prefix_for_this_process(prefix: &str) -> String {
    format!("{prefix}{}-", std::process::id())
}

/// Removes leftovers in `dir` whose names start with `prefix`: those whose writer (the pid
/// in the name) no longer runs, when `by_pid`, and those older than [`STALE_AFTER`].
/// Best effort: returns how many went.
pub fn remove_leftovers(dir: &Path, prefix: &str, by_pid: bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let writer_gone = by_pid
            && rest
                .split('-')
                .next()
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| pid > 0 && !crate::sys::process_running(pid));
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if (writer_gone || stale) && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(
                "removed the leftover staging file {}",
                entry.path().display()
            );
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_leftovers_of_gone_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir
            .path()
            .join(format!("{}x", prefix_for_this_process(".s-")));
        // pid 0 is never a process we wrote with; an absurd pid is gone.
        let gone = dir.path().join(".s-2147483646-x");
        let other = dir.path().join("keep-2147483646-x");
        for path in [&mine, &gone, &other] {
            std::fs::write(path, b"x").unwrap();
        }
        assert_eq!(remove_leftovers(dir.path(), ".s-", true), 1);
        assert!(mine.exists() && !gone.exists() && other.exists());
        assert_eq!(remove_leftovers(dir.path(), ".s-", false), 0);
    }
}
