//! Where an xid target's transaction ended: the segments of a walk whose summaries may hold
//! its commit or abort are decoded through the catalog, in the order recovery reads them,
//! until one does. What each decode found goes into the view for the pure decision.

use futures_util::StreamExt;

use crate::catalog::wal::ArchivedFile;
use crate::catalog::{Catalog, CatalogError};
use crate::pg::WalWriter;
use crate::pg::xact_end::XactEndFinder;

use super::view::{ArchiveView, open_in_order};

/// Searches `files` (a walk, summarised) for the end of transaction `xid`; `jobs` objects
/// are opened ahead, each is decoded as a stream (never held whole).
pub async fn search_walk(
    catalog: &Catalog,
    view: &mut ArchiveView,
    files: &[ArchivedFile],
    xid: u32,
    jobs: usize,
) -> Result<(), CatalogError> {
    if files.iter().any(|f| view.xact_end(f, xid).is_some()) {
        return Ok(());
    }
    let to_decode: Vec<(usize, ArchivedFile)> = files
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            !view.searched_for_xid(f, xid) && view.summary(f).is_none_or(|s| s.may_end_xid(xid))
        })
        .map(|(i, f)| (i, f.clone()))
        .collect();
    let mut opened = open_in_order(catalog, to_decode, jobs);
    while let Some((index, file, opened)) = opened.next().await {
        let opened = opened?;
        let Some(start) = file.name.start_lsn(view.segment_size) else {
            continue;
        };
        // A record that ends here but began in the segment before is found only with that
        // segment's carry; the walk's first segment has none.
        let carry = index
            .checked_sub(1)
            .and_then(|previous| view.summary(&files[previous]))
            .and_then(|s| s.carry.clone());
        let finder = XactEndFinder::new(
            start,
            view.segment_size,
            view.block_size,
            carry.as_ref(),
            xid,
        );
        let (WalWriter(finder), _) = catalog
            .decode_opened(opened, "the transaction search", WalWriter(finder))
            .await?;
        let found = finder.finish();
        let is_found = found.is_some();
        // A miss in a walk's first segment is not final: an older backup's walk decodes it
        // again with the carry of the segment before.
        if is_found || index > 0 {
            view.insert_xact_end(file.name, xid, found);
        }
        if is_found {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::catalog::RepositoryIdentity;
    use crate::pg::wal_name::xlog_file_name;
    use crate::pg::wal_reader::tests::{BLOCK, SEGMENT, abort, commit, write_wal};
    use crate::pg::wal_summary::{SegmentSummary, summarize_segment};
    use crate::pg::{Lsn, WalFileName};
    use crate::storage::MemoryStorage;

    /// Segments 1 to 3 of timeline 1, one page each: 700 commits in 1, 701 in 2, 702
    /// commits and 703 aborts in 3. Returns the catalog, the view and the walk's files.
    async fn archive(dir: &std::path::Path) -> (Catalog, ArchiveView, Vec<ArchivedFile>) {
        let catalog = Catalog::new(Arc::new(MemoryStorage::new("xid")))
            .knowing(&RepositoryIdentity::for_tests(SEGMENT, BLOCK as u32));
        let contents = [
            vec![commit(700, 1_000, 0)],
            vec![commit(701, 2_000, 0)],
            vec![commit(702, 3_000, 0), abort(703, 4_000)],
        ];
        for (segno, records) in (1u64..).zip(contents) {
            let name = WalFileName::parse(&xlog_file_name(1, segno, SEGMENT)).unwrap();
            let path = dir.join(name.to_string());
            std::fs::write(&path, write_wal(segno * SEGMENT, &records, 1)).unwrap();
            catalog.store_wal(&name, &path, 1).await.unwrap();
        }
        let identity = RepositoryIdentity::for_tests(SEGMENT, BLOCK as u32);
        let listing = catalog.wal_listing(SEGMENT).await.unwrap();
        let view = ArchiveView::new(&identity, listing, BTreeMap::new());
        let files: Vec<ArchivedFile> = (1..=3)
            .map(|segno| view.listing.segment(1, segno).unwrap().clone())
            .collect();
        (catalog, view, files)
    }

    #[tokio::test]
    async fn only_segments_whose_bounds_hold_the_xid_are_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, mut view, files) = archive(dir.path()).await;
        for (segno, file) in (1u64..).zip(&files) {
            let (wal, _) = catalog
                .decode_object(&file.object, "test".into(), Vec::new())
                .await
                .unwrap();
            let summary = summarize_segment(&wal, Lsn(segno * SEGMENT), SEGMENT, BLOCK, None);
            view.insert_summary(file.name.clone(), summary);
        }
        search_walk(&catalog, &mut view, &files, 703, 2)
            .await
            .unwrap();
        let end = view.xact_end(&files[2], 703).unwrap();
        assert!(!end.committed);
        assert!(
            !view.searched_for_xid(&files[1], 703),
            "its bounds rule it out"
        );
    }

    #[tokio::test]
    async fn summaries_without_bounds_have_their_segments_decoded_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, mut view, files) = archive(dir.path()).await;
        let stored_by_older_pitr = SegmentSummary {
            commits: 1,
            ..SegmentSummary::default()
        };
        for file in &files {
            view.insert_summary(file.name.clone(), stored_by_older_pitr.clone());
        }
        search_walk(&catalog, &mut view, &files, 702, 2)
            .await
            .unwrap();
        let end = view.xact_end(&files[2], 702).unwrap();
        assert!(end.committed);
        assert_eq!(end.lsn.segment_number(SEGMENT), 3);
        // A miss in the walk's first segment is not recorded: without the carry of the
        // segment before, it is not final.
        assert!(!view.searched_for_xid(&files[0], 702));
        assert!(view.searched_for_xid(&files[1], 702));
        // Searching a walk that has the end already decodes nothing more.
        search_walk(&catalog, &mut view, &files, 702, 2)
            .await
            .unwrap();
        assert!(!view.searched_for_xid(&files[0], 702));
        // Not there at all: every candidate decoded, nothing found (the misses recorded but
        // for the walk's first segment).
        search_walk(&catalog, &mut view, &files[1..], 9, 2)
            .await
            .unwrap();
        assert!(!view.searched_for_xid(&files[1], 9) && view.searched_for_xid(&files[2], 9));
        assert!(files.iter().all(|f| view.xact_end(f, 9).is_none()));
    }
}
