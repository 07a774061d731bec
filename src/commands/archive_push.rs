//! `pitr archive-push PATH`: PostgreSQL's `archive_command`.
//!
//! Exit 0 means the file is durable in the repository. A file that is already archived with
//! identical content succeeds again (PostgreSQL retries after a crash); one with different
//! content is a conflict and the stored copy is never replaced.
//!
//! Beside each segment it stores the segment's summary (the WAL index: commit times, record
//! range, restore points), and beside each history file its switch points. The last
//! segment of a group completes the group's rollup (`catalog::rollup`).

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, RepositoryIdentity, Stored};
use crate::codec::{CompareWriter, EncodeSummary};
use crate::error::{Error, Result};
use crate::pg::timeline::parse_history;
use crate::pg::wal_page::SIZE_OF_XLOG_LONG_PHD;
use crate::pg::wal_summary::{SegmentSummary, summarize_segment};
use crate::pg::{WalFileKind, WalFileName, WalLongPageHeader, wal_name};

use super::blocking;

#[derive(Clone, Debug)]
pub struct ArchivePushOptions {
    pub path: PathBuf,
    /// Compression workers.
    pub threads: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    /// The repository held an identical copy already.
    AlreadyArchived,
}

#[derive(Debug)]
pub struct ArchivePushReport {
    pub name: String,
    pub outcome: PushOutcome,
    pub encoded: EncodeSummary,
    pub elapsed: Duration,
}

pub async fn archive_push(
    catalog: &Catalog,
    options: &ArchivePushOptions,
) -> Result<ArchivePushReport> {
    let started = Instant::now();
    let path = options.path.clone();
    let name = file_name_of(&path)?;
    let identity = catalog.identity().await?;
    if name.holds_wal_pages() {
        check_segment(&path, &name, &identity)?;
    }
    // The previous segment's summary (read while compressing) completes a record that
    // straddles the boundary.
    let (stored, previous) = tokio::join!(
        catalog.store_wal(&name, &path, options.threads),
        previous_summary(catalog, &name, &identity)
    );
    let (stored, encoded) = stored?;
    let outcome = match stored {
        Stored::New => PushOutcome::Stored,
        Stored::AlreadyThere => {
            compare_with_stored(catalog, &name, &path).await?;
            tracing::warn!("{name} was already archived with identical content; nothing to do");
            PushOutcome::AlreadyArchived
        }
    };
    index(catalog, &name, &path, &identity, previous).await?;
    // A group this segment completes gets its rollup; derived data, so a failure only
    // leaves overviews reading the group segment by segment.
    if let Err(e) = catalog
        .roll_up_after(&name, identity.wal_segment_size)
        .await
    {
        tracing::warn!("cannot write the rollup of the group {name} completes: {e}");
    }
    catalog.remove_staging_leftovers().await;
    tracing::debug!("stored and indexed after {:?}", started.elapsed());
    Ok(ArchivePushReport {
        name: name.to_string(),
        outcome,
        encoded,
        elapsed: started.elapsed(),
    })
}

/// The summary of the segment before `name` on its timeline, if it has one. Errors only
/// cost the straddling record, so they are logged, not raised.
async fn previous_summary(
    catalog: &Catalog,
    name: &WalFileName,
    identity: &RepositoryIdentity,
) -> Option<SegmentSummary> {
    let segno = name
        .segment_number(identity.wal_segment_size)?
        .checked_sub(1)?;
    let previous = WalFileName::parse(&wal_name::xlog_file_name(
        name.timeline(),
        segno,
        identity.wal_segment_size,
    ))
    .ok()?;
    match catalog.segment_summary(&previous).await {
        Ok(summary) => summary,
        Err(e) => {
            tracing::warn!("cannot read the summary of {previous}: {e}");
            None
        }
    }
}

/// Stores the WAL index entry of an archived segment or history file. Runs also when the
/// file was already archived, so that a retry completes an index that a crash left out.
async fn index(
    catalog: &Catalog,
    name: &WalFileName,
    path: &Path,
    identity: &RepositoryIdentity,
    previous: Option<SegmentSummary>,
) -> Result<()> {
    match name.kind() {
        WalFileKind::Segment | WalFileKind::Partial => {
            // check_segment proved the name's segment is this cluster's.
            let Some(start) = name.start_lsn(identity.wal_segment_size) else {
                return Ok(());
            };
            let (segment_size, block_size) =
                (identity.wal_segment_size, identity.wal_block_size as usize);
            let path = path.to_owned();
            let summary = blocking(move || {
                let local = |e: std::io::Error| Error::local_io(path.display(), e);
                let file = File::open(&path).map_err(local)?;
                // SAFETY: PostgreSQL does not modify a segment while archiving it.
                let wal = unsafe { memmap2::Mmap::map(&file) }.map_err(local)?;
                let carry = previous.as_ref().and_then(|p| p.carry.as_ref());
                Ok(summarize_segment(
                    &wal,
                    start,
                    segment_size,
                    block_size,
                    carry,
                ))
            })
            .await?;
            catalog.put_segment_summary(name, &summary).await?;
        }
        WalFileKind::History => {
            let text =
                std::fs::read_to_string(path).map_err(|e| Error::local_io(path.display(), e))?;
            let entries =
                parse_history(&text).map_err(|e| Error::invalid_input(path.display(), e))?;
            catalog.put_history_summary(name, &entries).await?;
        }
        WalFileKind::BackupHistory => {}
    }
    Ok(())
}

fn file_name_of(path: &Path) -> Result<WalFileName> {
    let leaf = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid_input(path.display(), "not a file path"))?;
    WalFileName::parse(leaf).map_err(|e| Error::invalid_input(path.display(), e))
}

/// Refuses WAL from another cluster, or a file that is not the segment its name says.
fn check_segment(path: &Path, name: &WalFileName, identity: &RepositoryIdentity) -> Result<()> {
    let invalid = |reason: String| Error::invalid_input(path.display(), reason);
    let local = |e: std::io::Error| Error::local_io(path.display(), e);
    let file = File::open(path).map_err(local)?;
    let len = file.metadata().map_err(local)?.len();
    let mut page = [0u8; SIZE_OF_XLOG_LONG_PHD];
    file.read_exact_at(&mut page, 0)
        .map_err(|e| invalid(format!("cannot read the WAL page header: {e}")))?;
    let header =
        WalLongPageHeader::parse(&page).map_err(|e| Error::invalid_input(path.display(), e))?;

    if header.system_identifier != identity.system_identifier {
        return Err(Error::WrongRepository(format!(
            "{name} comes from the cluster with system identifier {}, but repository \
             belongs to system identifier {}: archive each cluster to its own repository",
            header.system_identifier, identity.system_identifier
        )));
    }
    if u64::from(header.wal_segment_size) != identity.wal_segment_size {
        return Err(Error::WrongRepository(format!(
            "{name} has WAL segment size {} but the repository was initialised for {}",
            header.wal_segment_size, identity.wal_segment_size
        )));
    }
    if header.pg_major_version != identity.pg_version {
        return Err(Error::WrongRepository(format!(
            "{name} was written by PostgreSQL {} but the repository holds PostgreSQL {}",
            header.pg_major_version, identity.pg_version
        )));
    }
    if len != identity.wal_segment_size {
        return Err(invalid(format!(
            "is {len} bytes, but WAL segments of this cluster are {} bytes",
            identity.wal_segment_size
        )));
    }
    let Some(expected) = name.start_lsn(identity.wal_segment_size) else {
        return Err(invalid(format!(
            "the name is out of range for WAL segments of {} bytes",
            identity.wal_segment_size
        )));
    };
    if header.page_address != expected {
        return Err(invalid(format!(
            "holds WAL from {} but its name says {} (should start at {})",
            wal_name::xlog_file_name(
                name.timeline(),
                header
                    .page_address
                    .segment_number(identity.wal_segment_size),
                identity.wal_segment_size
            ),
            name.segment_name().unwrap_or_default(),
            expected
        )));
    }
    Ok(())
}

/// Succeeds only if the stored object decodes to exactly the bytes at `path`.
async fn compare_with_stored(catalog: &Catalog, name: &WalFileName, path: &Path) -> Result<()> {
    let local = File::open(path).map_err(|e| Error::local_io(path.display(), e))?;
    let compare = CompareWriter::new(BufReader::with_capacity(1 << 20, local));
    let (compare, _) = catalog
        .fetch_wal(name, &path.display().to_string(), compare)
        .await
        .map_err(|e| {
            let mut e = Error::from(e);
            if let Error::Corrupt { reason, .. } = &mut e {
                reason.push_str("; it was left in place for inspection");
            }
            e
        })?;
    let identical = compare
        .finish()
        .map_err(|e| Error::local_io(path.display(), e))?;
    if identical {
        Ok(())
    } else {
        Err(Error::Conflict {
            name: name.to_string(),
            location: catalog.location(),
        })
    }
}
