//! `pitr copy`: backups and WAL from one repository into another (a local repository into
//! the off-site one), so that either can restore on its own.
//!
//! Only what the target lacks is copied, and each object is verified on both sides: read
//! from the source through its checksums, stored in the target with the target's own
//! compression and keys, and read back from the target. WAL goes through archive-push's own
//! path (its checks, summaries and block maps); a backup's data objects go first and its
//! manifest last, so a copy cut short leaves no listed backup, and the next run resumes it
//! (objects already there and sound are kept, a damaged one is written again).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::catalog::backup::BackupManifest;
use crate::commands::archive_push::{ArchivePushOptions, archive_push, compare_with_stored};
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Only this backup and those it builds on; `None`: every backup.
    pub backup: Option<String>,
    /// Copy the WAL archive too.
    pub wal: bool,
    /// Objects copied at once.
    pub jobs: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    pub source: String,
    pub target: String,
    /// Backups copied by this run, oldest first.
    pub backups_copied: Vec<String>,
    /// Backups the target held already.
    pub backups_present: usize,
    /// Backup data objects copied (those a resumed copy found sound are not counted).
    pub objects_copied: u64,
    pub wal_copied: u64,
    pub wal_present: u64,
    /// Bytes read from the source, decoded.
    pub bytes_copied: u64,
    /// Bytes stored in the target.
    pub bytes_stored: u64,
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Copies from `source` into `target`, under the target's repository lock.
pub async fn copy(source: &Catalog, target: &Catalog, options: &CopyOptions) -> Result<CopyReport> {
    let started = Instant::now();
    let from = source.identity().await?;
    let to = target.identity().await?;
    if (
        from.system_identifier,
        from.pg_version,
        from.wal_segment_size,
    ) != (to.system_identifier, to.pg_version, to.wal_segment_size)
    {
        return Err(Error::WrongRepository(format!(
            "{} belongs to PostgreSQL {} cluster {} ({} byte segments), {} to PostgreSQL {} \
             cluster {} ({} byte segments): copy only between repositories of one cluster",
            source.location(),
            from.pg_version,
            from.system_identifier,
            from.wal_segment_size,
            target.location(),
            to.pg_version,
            to.system_identifier,
            to.wal_segment_size
        )));
    }
    let lock = target.lock("copy").await?;
    let mut report = CopyReport {
        source: source.location(),
        target: target.location(),
        ..CopyReport::default()
    };
    let result = async {
        // The WAL first: a backup copied is restorable once the WAL it needs is there.
        if options.wal {
            copy_wal(source, target, from.wal_segment_size, &mut report).await?;
        }
        copy_backups(source, target, options, &mut report).await
    }
    .await;
    lock.release().await;
    result?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Every WAL file the source has and the target lacks, in name order (each segment's summary
/// then finds the one before it in the target), through archive-push into the target.
async fn copy_wal(
    source: &Catalog,
    target: &Catalog,
    segment_size: u64,
    report: &mut CopyReport,
) -> Result<()> {
    let have: BTreeSet<String> = target
        .wal_listing(segment_size)
        .await?
        .files()
        .map(|f| f.name.to_string())
        .collect();
    let mut missing = Vec::new();
    for file in source.wal_listing(segment_size).await?.files() {
        if have.contains(file.name.as_str()) {
            report.wal_present += 1;
        } else {
            missing.push(file.name.clone());
        }
    }
    missing.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let scratch = tempfile::Builder::new()
        .prefix("pitr-copy-")
        .tempdir()
        .map_err(|e| Error::local_io(std::env::temp_dir().display(), e))?;
    for name in missing {
        let path = scratch.path().join(name.as_str());
        let local = |e| Error::local_io(path.display(), e);
        let file = std::fs::File::create(&path).map_err(local)?;
        let (file, decoded) = source
            .fetch_wal(&name, &path.display().to_string(), file)
            .await?;
        file.sync_all().map_err(local)?;
        drop(file);
        let pushed = archive_push(target, &ArchivePushOptions::single(path.clone(), 1)).await?;
        compare_with_stored(target, &name, &path).await?;
        report.wal_copied += 1;
        report.bytes_copied += decoded.original_len;
        report.bytes_stored += pushed.encoded.map_or(0, |e| e.stored_len);
        let _ = std::fs::remove_file(&path);
        tracing::info!("copied {name}");
    }
    Ok(())
}

/// The backups to copy, oldest first: all, or the one asked for and its ancestors.
fn wanted<'a>(all: &'a [BackupManifest], backup: Option<&str>) -> Result<Vec<&'a BackupManifest>> {
    let Some(id) = backup else {
        return Ok(all.iter().collect());
    };
    let by_id: BTreeMap<&str, &BackupManifest> = all.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut ids = BTreeSet::new();
    let mut todo = vec![id];
    while let Some(id) = todo.pop() {
        let manifest = by_id.get(id).ok_or_else(|| Error::NotFound {
            name: format!("backup {id}"),
            location: "the source repository".into(),
        })?;
        if ids.insert(manifest.id.as_str()) {
            todo.extend(manifest.chain_ids().into_iter().filter(|i| *i != id));
        }
    }
    Ok(all.iter().filter(|m| ids.contains(m.id.as_str())).collect())
}

async fn copy_backups(
    source: &Catalog,
    target: &Catalog,
    options: &CopyOptions,
    report: &mut CopyReport,
) -> Result<()> {
    let list = source.backup_list().await?;
    for damaged in &list.damaged {
        tracing::warn!(
            "backup {} is not copied: its manifest in {} is damaged ({})",
            damaged.id,
            source.location(),
            damaged.reason
        );
    }
    let present = target.backup_objects().await?;
    for manifest in wanted(&list.manifests, options.backup.as_deref())? {
        let id = manifest.id.as_str();
        let there = present.get(id);
        if there.is_some_and(|objects| objects.manifest.is_some()) {
            report.backups_present += 1;
            continue;
        }
        target.claim_copied_backup(id).await?;
        let existing: BTreeSet<u32> = there
            .map(|objects| objects.data.keys().copied().collect())
            .unwrap_or_default();
        let copied: Vec<Option<(u64, u64)>> = stream::iter(manifest.objects())
            .map(|n| copy_object(source, target, id, n, existing.contains(&n)))
            .buffer_unordered(options.jobs.max(1))
            .try_collect()
            .await?;
        let mut copy = manifest.clone();
        copy.stored_bytes = 0;
        for (decoded, stored) in copied.into_iter().flatten() {
            report.objects_copied += 1;
            report.bytes_copied += decoded;
            report.bytes_stored += stored;
        }
        // What the target stores for it, counted from its listing (resumed objects too).
        if let Some(objects) = target.backup_objects().await?.get(id) {
            copy.stored_bytes = objects.data.values().map(|o| o.size).sum();
        }
        target.put_manifest(&copy).await?;
        tracing::info!("copied backup {id}");
        report.backups_copied.push(id.to_owned());
    }
    Ok(())
}

/// Data object `n` of backup `id` into the target, verified there; `None` when a sound
/// copy was there already. (decoded, stored) bytes.
async fn copy_object(
    source: &Catalog,
    target: &Catalog,
    id: &str,
    n: u32,
    existing: bool,
) -> Result<Option<(u64, u64)>> {
    if existing {
        match target.check_backup_object(id, n).await {
            Ok(_) => return Ok(None),
            Err(e) => {
                tracing::warn!(
                    "object {n} of backup {id} in {} (left by a copy cut short) is damaged: \
                     {e}; writing it again",
                    target.location()
                );
                target.remove_backup_object(id, n).await?;
            }
        }
    }
    let scratch = tempfile::tempfile().map_err(|e| Error::local_io("temporary file", e))?;
    let origin = format!("object {n} of backup {id} in {}", source.location());
    let (mut file, decoded) = source.fetch_backup_object(id, n, &origin, scratch).await?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::local_io("temporary file", e))?;
    let (_, encoded) = target.store_backup_object(id, n, &origin, file).await?;
    let read_back = target.check_backup_object(id, n).await?;
    if read_back != decoded.original_len {
        return Err(Error::Corrupt {
            what: format!("object {n} of backup {id}"),
            location: target.location(),
            reason: format!(
                "it reads back as {read_back} bytes, the source's as {}",
                decoded.original_len
            ),
        });
    }
    Ok(Some((decoded.original_len, encoded.stored_len)))
}
