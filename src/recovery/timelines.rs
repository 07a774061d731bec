//! Timelines that came into the repository without a backup of their own: a restored copy
//! that was promoted while still archiving here leaves one, and recovery to the latest
//! timeline (PostgreSQL's default) would follow the copy's data rather than production's.

use crate::catalog::backup::BackupManifest;

use super::view::ArchiveView;

/// The timelines with a history file in the repository on which no backup was taken, nor
/// on any timeline descending from them, other than the newest backup's timeline: newest
/// first. Right after a real failover the new timeline is one of them until the next backup.
pub fn timelines_without_backup(view: &ArchiveView, backups: &[BackupManifest]) -> Vec<u32> {
    let newest = backups
        .iter()
        .max_by(|a, b| (a.stop_time, &a.id).cmp(&(b.stop_time, &b.id)))
        .map(|b| b.timeline);
    let covered = |timeline: u32| {
        backups.iter().any(|backup| {
            view.path(backup.timeline)
                .is_some_and(|path| path.iter().any(|span| span.timeline == timeline))
        })
    };
    view.histories
        .keys()
        .rev()
        .copied()
        .filter(|&t| Some(t) != newest && !covered(t))
        .collect()
}

/// What restore and `pitr list` say about such a timeline.
pub fn foreign_timeline_warning(timeline: u32) -> String {
    format!(
        "timeline {timeline} has no backup taken on it or after it: if a restored copy archived \
         it here, recovery to the latest timeline (the default) follows the copy's data; pass \
         --target-timeline current to stay on the backup's timeline (after a real failover, \
         take a backup on the new timeline)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::wal::WalListing;
    use crate::pg::timeline::parse_history;
    use std::collections::BTreeMap;

    fn backup(id: &str, timeline: u32, minute: u32) -> BackupManifest {
        crate::recovery::plan::tests::backup(id, timeline, 2, 2, minute)
    }

    fn view(histories: &[(u32, &str)]) -> ArchiveView {
        let identity = crate::catalog::RepositoryIdentity::for_tests(16 << 20, 8192);
        let histories: BTreeMap<u32, _> = histories
            .iter()
            .map(|(t, text)| (*t, parse_history(text).unwrap()))
            .collect();
        ArchiveView::new(&identity, WalListing::default(), histories)
    }

    #[test]
    fn a_timeline_without_a_backup_on_it_or_after_it_is_foreign() {
        // Timeline 2 branched from 1 (a restored copy), 3 from 1 later (production).
        let v = view(&[(2, "1\t0/3000000\tcopy\n"), (3, "1\t0/5000000\tfailover\n")]);
        assert_eq!(
            timelines_without_backup(&v, &[backup("a", 1, 1)]),
            vec![3, 2]
        );
        // The newest backup is on 3: 2 remains foreign, 3 and 1 are covered.
        let backups = [backup("a", 1, 1), backup("b", 3, 2)];
        assert_eq!(timelines_without_backup(&v, &backups), vec![2]);
        // A backup on a timeline descending from 2 covers it.
        let v = view(&[
            (2, "1\t0/3000000\tx\n"),
            (3, "1\t0/3000000\tx\n2\t0/4000000\ty\n"),
        ]);
        assert!(timelines_without_backup(&v, &[backup("c", 3, 1)]).is_empty());
    }
}
