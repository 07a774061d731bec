//! Timelines that came into the repository without a backup of their own: a restored copy
//! that was promoted while still archiving here leaves one, and recovery to the latest
//! timeline (PostgreSQL's default) would follow the copy's data rather than production's.

use std::collections::BTreeSet;

use crate::catalog::backup::BackupManifest;
use crate::pg::Lsn;

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

/// One timeline of the repository's tree, with its origin.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TimelineOrigin {
    pub timeline: u32,
    /// The timeline it forked from (its history file's last line); none for a first one.
    pub parent: Option<u32>,
    /// Where it forked: the first LSN of this timeline.
    pub switch_point: Option<Lsn>,
    /// Ancestors in its history file: the indentation of `pitr list`'s tree.
    pub depth: usize,
    /// The backups taken on it.
    pub backups: Vec<String>,
}

/// Every timeline with WAL, a history file or a backup, as a tree: each after its parent,
/// children in number order.
pub fn timeline_tree(view: &ArchiveView, backups: &[BackupManifest]) -> Vec<TimelineOrigin> {
    let mut timelines: BTreeSet<u32> = view.listing.timelines();
    timelines.extend(view.histories.keys());
    timelines.extend(backups.iter().map(|b| b.timeline));
    let origin = |timeline: u32| {
        let history = view.histories.get(&timeline);
        let parent = history.and_then(|h| h.last());
        TimelineOrigin {
            timeline,
            parent: parent.map(|p| p.timeline),
            switch_point: parent.map(|p| p.switchpoint),
            depth: history.map_or(0, Vec::len),
            backups: backups
                .iter()
                .filter(|b| b.timeline == timeline)
                .map(|b| b.id.clone())
                .collect(),
        }
    };
    let all: Vec<TimelineOrigin> = timelines.into_iter().map(origin).collect();
    let known: BTreeSet<u32> = all.iter().map(|o| o.timeline).collect();
    let mut ordered = Vec::with_capacity(all.len());
    // Roots: no parent, or a parent that left no trace here.
    let mut stack: Vec<&TimelineOrigin> = all
        .iter()
        .filter(|o| o.parent.is_none_or(|p| !known.contains(&p)))
        .rev()
        .collect();
    while let Some(node) = stack.pop() {
        ordered.push(node.clone());
        stack.extend(all.iter().filter(|o| o.parent == Some(node.timeline)).rev());
    }
    ordered
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
            .map(|(t, text)| (*t, parse_history(*t, text).unwrap()))
            .collect();
        ArchiveView::new(&identity, WalListing::default(), histories)
    }

    #[test]
    fn the_tree_puts_each_timeline_under_its_parent() {
        let v = view(&[
            (2, "1\t0/3000000\tcopy\n"),
            (3, "1\t0/5000000\tfailover\n"),
            (4, "1\t0/3000000\tx\n2\t0/4000000\ty\n"),
        ]);
        let tree = timeline_tree(&v, &[backup("a", 1, 1), backup("c", 2, 2)]);
        let shape: Vec<(u32, Option<u32>, usize)> = tree
            .iter()
            .map(|o| (o.timeline, o.parent, o.depth))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, None, 0),
                (2, Some(1), 1),
                (4, Some(2), 2),
                (3, Some(1), 1)
            ]
        );
        assert_eq!(tree[1].switch_point, Some(Lsn(0x300_0000)));
        assert_eq!(tree[1].backups, vec!["c".to_owned()]);
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
