//! The recovery window of a timeline: from the end of the earliest backup recovery can start
//! from, to the last commit that recovery from some backup reaches without a gap. `pitr list`
//! shows it and restore's refusal of a target beyond it names its end: both from
//! [`recovery_window`], so that they never disagree.

use chrono::{DateTime, Utc};

use crate::catalog::backup::BackupManifest;
use crate::catalog::{Catalog, CatalogError};
use crate::pg::timeline::TimelineSpan;

use super::view::{ArchiveView, Needed};
use super::walk::{Walk, path_holds_backup};

/// Times a restore can target on one timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// When the earliest backup usable on the timeline finished.
    pub from: DateTime<Utc>,
    /// The last commit reachable from a backup without a gap; none if no commit is.
    pub until: Option<DateTime<Utc>>,
}

/// The backups on `path` whose WAL the archive holds up to their consistency, with the walk
/// recovery from each takes.
fn usable<'a>(
    view: &'a ArchiveView,
    path: &'a [TimelineSpan],
    backups: &'a [BackupManifest],
) -> impl Iterator<Item = (&'a BackupManifest, Walk)> + 'a {
    backups
        .iter()
        .filter(|backup| path_holds_backup(path, backup))
        .map(|backup| (backup, view.walk(path, backup.start_lsn)))
        .filter(|(backup, walk)| walk.reaches(backup.stop_lsn.segment_number(view.segment_size)))
}

/// Reads the summaries [`recovery_window`] needs for the timeline at the end of `path`: those
/// of the segments outside whole groups (the groups' keys give the rest).
pub async fn load_window(
    catalog: &Catalog,
    view: &mut ArchiveView,
    path: &[TimelineSpan],
    backups: &[BackupManifest],
    jobs: usize,
) -> Result<(), CatalogError> {
    let walks: Vec<Walk> = usable(view, path, backups).map(|(_, walk)| walk).collect();
    for walk in walks {
        view.load_summaries(catalog, &walk.segments, &Needed::Outline, jobs)
            .await?;
    }
    Ok(())
}

/// The window of the timeline at the end of `path`, over the summaries [`load_window`] read;
/// none when no backup is usable on it. Pure.
pub fn recovery_window(
    view: &ArchiveView,
    path: &[TimelineSpan],
    backups: &[BackupManifest],
) -> Option<Window> {
    let mut window: Option<Window> = None;
    for (backup, walk) in usable(view, path, backups) {
        let last = view.last_commit(&walk.segments);
        window = Some(match window {
            None => Window {
                from: backup.stop_time,
                until: last,
            },
            Some(w) => Window {
                from: w.from.min(backup.stop_time),
                until: w.until.max(last),
            },
        });
    }
    window
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;
    use crate::catalog::RepositoryIdentity;
    use crate::catalog::wal::WalListing;
    use crate::pg::WalFileName;
    use crate::pg::wal_name::xlog_file_name;
    use crate::pg::wal_summary::SegmentSummary;
    use crate::recovery::plan::tests::backup;

    const SEG: u64 = 16 << 20;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 10, minute, 0).unwrap()
    }

    /// Segments 2..=`last` of timeline 1; `commits` as (segno, minute of its last commit).
    fn view(last: u64, missing: &[u64], commits: &[(u64, u32)]) -> ArchiveView {
        let identity = RepositoryIdentity::for_tests(SEG, 8192);
        let files: Vec<(WalFileName, u64)> = (2..=last)
            .filter(|s| !missing.contains(s))
            .map(|s| {
                (
                    WalFileName::parse(&xlog_file_name(1, s, SEG)).unwrap(),
                    1000,
                )
            })
            .collect();
        let mut view = ArchiveView::new(
            &identity,
            WalListing::from_files(files, SEG),
            BTreeMap::new(),
        );
        for segno in 2..=last {
            let summary = SegmentSummary {
                last_commit_time: commits.iter().find(|c| c.0 == segno).map(|c| at(c.1)),
                ..SegmentSummary::default()
            };
            let name = WalFileName::parse(&xlog_file_name(1, segno, SEG)).unwrap();
            view.insert_summary(name, summary);
        }
        view
    }

    #[test]
    fn the_window_ends_at_the_last_commit_even_before_the_newest_backup() {
        // Commits until 10:20 in segment 4; backup b (segments 6..7) was taken after it on an
        // idle primary: its own WAL holds no commit, the timeline's window still ends at 10:20.
        let view = view(8, &[], &[(3, 5), (4, 20)]);
        let path = view.path(1).unwrap();
        let backups = [backup("a", 1, 2, 3, 10), backup("b", 1, 6, 7, 30)];
        let window = recovery_window(&view, &path, &backups).unwrap();
        assert_eq!(window.from, at(10));
        assert_eq!(window.until, Some(at(20)));
        // With b alone, no commit is reachable.
        let window = recovery_window(&view, &path, &backups[1..]).unwrap();
        assert_eq!((window.from, window.until), (at(30), None));
    }

    #[test]
    fn a_gap_ends_a_backups_reach_and_an_unusable_backup_counts_for_nothing() {
        // Segment 5 is missing: from a, recovery reaches 10:20 (segment 4); b starts after the
        // gap and reaches 10:40; c needs the missing segment to become consistent.
        let view = view(8, &[5], &[(4, 20), (7, 40)]);
        let path = view.path(1).unwrap();
        let a = backup("a", 1, 2, 3, 10);
        let b = backup("b", 1, 6, 6, 30);
        let c = backup("c", 1, 4, 5, 25);
        let window = recovery_window(&view, &path, &[a.clone(), c.clone()]).unwrap();
        assert_eq!((window.from, window.until), (at(10), Some(at(20))));
        let window = recovery_window(&view, &path, &[a, b, c.clone()]).unwrap();
        assert_eq!((window.from, window.until), (at(10), Some(at(40))));
        assert_eq!(recovery_window(&view, &path, &[c]), None);
    }
}
