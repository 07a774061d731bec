//! `pitr list`: the backups in the repository, the WAL held per timeline, and the recovery
//! window of each timeline: from the earliest backup's end to the last commit reachable
//! without a gap in the WAL.

use serde::Serialize;

use crate::catalog::Catalog;
use crate::catalog::backup::{BackupManifest, DamagedBackup};
use crate::error::Result;
use crate::pg::timestamp::{rfc3339, rfc3339_micros};
use crate::pg::wal_name::xlog_file_name;
use crate::recovery::ArchiveView;
use crate::recovery::timelines::{TimelineOrigin, timeline_tree, timelines_without_backup};
use crate::recovery::window::{load_window, recovery_window};

/// The JSON shape scripts read: keep it stable.
#[derive(Debug, Serialize)]
pub struct ListReport {
    pub backups: Vec<BackupEntry>,
    /// Backups whose manifest is damaged: they cannot be restored (see `pitr verify`).
    pub damaged_backups: Vec<DamagedBackup>,
    pub wal: Vec<WalRange>,
    /// Segments `pitr receive-wal` is filling: their newest tail, where the segment is not
    /// archived whole yet.
    pub tails: Vec<WalTail>,
    pub recovery_window: Vec<RecoveryWindow>,
    /// Timelines with a history file but no backup taken on them or after them, other than
    /// the newest backup's: a restored copy that archived here leaves one.
    pub timelines_without_backup: Vec<u32>,
    /// Every timeline with its origin (parent and switch point), each after its parent.
    pub timelines: Vec<TimelineOrigin>,
}

#[derive(Debug, Serialize)]
pub struct BackupEntry {
    pub id: String,
    pub start_time: String,
    pub stop_time: String,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub size_bytes: u64,
    pub stored_bytes: u64,
    /// Retention never removes a pinned backup (`pitr pin`).
    pub pinned: bool,
    pub annotations: std::collections::BTreeMap<String, String>,
    /// How the files were read: `local` or `replication` (from another host).
    pub method: &'static str,
    /// `full`, `incr` or `diff`.
    #[serde(rename = "type")]
    pub backup_type: &'static str,
    /// The backup an incremental or differential one builds on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The configuration recorded from outside the data directory (Debian's /etc), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<crate::catalog::backup::Configuration>,
}

#[derive(Debug, Serialize)]
pub struct WalRange {
    pub timeline: u32,
    pub first_segment: String,
    pub last_segment: String,
    /// Stored bytes of the timeline's segments and partial segments.
    pub stored_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct WalTail {
    pub timeline: u32,
    pub segment: String,
    /// The segment's bytes it holds.
    pub bytes: u64,
    /// The LSN where it ends.
    pub end_lsn: String,
    /// When it was stored (RFC 3339 UTC), where the repository says.
    pub uploaded: Option<String>,
}

/// Times a restore can target on one timeline, RFC 3339 UTC.
#[derive(Debug, Serialize)]
pub struct RecoveryWindow {
    pub timeline: u32,
    /// When the earliest backup usable on this timeline finished.
    pub from: String,
    /// The last commit reachable from a backup without a gap; none if no commit is.
    pub until: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ListOptions {
    /// Objects read at once when summaries are read or segments indexed.
    pub jobs: usize,
}

pub async fn list(catalog: &Catalog, options: &ListOptions) -> Result<ListReport> {
    let identity = catalog.identity().await?;
    let list = catalog.backup_list().await?;
    let manifests = list.manifests;
    let (mut pins, damaged_pins) = catalog
        .backup_pins(&catalog.backup_objects().await?)
        .await?;
    let mut view = ArchiveView::load(catalog, &identity).await?;
    let mut wal = Vec::new();
    for timeline in view.listing.timelines() {
        if let Some((first, last)) = view.listing.segment_bounds(timeline) {
            let stored_bytes = view.listing.stored_bytes_on(timeline);
            let name = |segno| xlog_file_name(timeline, segno, view.segment_size);
            wal.push(WalRange {
                timeline,
                first_segment: name(first),
                last_segment: name(last),
                stored_bytes,
            });
        }
    }
    // The newest tail of each segment not archived whole, then counted in the recovery
    // window as restore counts it (a tail beside a whole segment only awaits removal).
    let size = view.segment_size;
    let tails: Vec<WalTail> = view
        .include_tails(catalog)
        .await?
        .into_iter()
        .filter_map(|tail| {
            let segno = tail.segment.segment_number(size)?;
            Some(WalTail {
                timeline: tail.segment.timeline(),
                segment: tail.segment.to_string(),
                bytes: tail.end,
                end_lsn: crate::pg::Lsn(segno * size + tail.end).to_string(),
                uploaded: tail
                    .uploaded
                    .map(|t| rfc3339(chrono::DateTime::<chrono::Utc>::from(t))),
            })
        })
        .collect();
    let recovery_window = recovery_windows(catalog, &mut view, &manifests, options.jobs).await?;
    let timelines_without_backup = timelines_without_backup(&view, &manifests);
    let timelines = timeline_tree(&view, &manifests);
    let backups = manifests
        .into_iter()
        .map(|m| {
            let pin = pins.remove(&m.id);
            BackupEntry {
                pinned: pin.as_ref().is_some_and(|p| p.pinned)
                    || damaged_pins.iter().any(|d| d.id == m.id),
                annotations: pin.map(|p| p.annotations).unwrap_or_default(),
                id: m.id,
                start_time: rfc3339_micros(m.start_time),
                stop_time: rfc3339_micros(m.stop_time),
                start_lsn: m.start_lsn.to_string(),
                stop_lsn: m.stop_lsn.to_string(),
                timeline: m.timeline,
                size_bytes: m.size_bytes,
                stored_bytes: m.stored_bytes,
                method: m.method.name(),
                backup_type: m.backup_type.name(),
                parent: m.parent,
                configuration: m.configuration,
            }
        })
        .collect();
    Ok(ListReport {
        backups,
        damaged_backups: list.damaged,
        wal,
        tails,
        recovery_window,
        timelines_without_backup,
        timelines,
    })
}

/// Per timeline: from the earliest usable backup's stop time to the latest commit that
/// recovery from some backup reaches before a missing segment (restore's refusals name the
/// same end).
async fn recovery_windows(
    catalog: &Catalog,
    view: &mut ArchiveView,
    backups: &[BackupManifest],
    jobs: usize,
) -> Result<Vec<RecoveryWindow>> {
    let mut windows = Vec::new();
    for timeline in view.listing.timelines() {
        let Some(path) = view.path(timeline) else {
            continue; // no history file: verify reports it
        };
        load_window(catalog, view, &path, backups, jobs).await?;
        if let Some(window) = recovery_window(view, &path, backups) {
            windows.push(RecoveryWindow {
                timeline,
                from: rfc3339(window.from),
                until: window.until.map(rfc3339),
            });
        }
    }
    Ok(windows)
}
