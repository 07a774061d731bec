//! Where an xid target's transaction ended: the segments of a walk whose summaries may hold
//! its commit or abort are decoded through the catalog, in the order recovery reads them,
//! until one does. What each decode found goes into the view for the pure decision.

use futures_util::{StreamExt, stream};

use crate::catalog::wal::ArchivedFile;
use crate::catalog::{Catalog, CatalogError};
use crate::pg::xact_end::XactEndFinder;

use super::view::ArchiveView;

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
    let mut opened = stream::iter(to_decode)
        .map(|(index, file)| async move {
            let opened = catalog
                .open_object(&file.object, file.name.to_string())
                .await;
            (index, file, opened)
        })
        .buffered(jobs.max(1));
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
        let (finder, _) = catalog
            .decode_opened(opened, "the transaction search", finder)
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
