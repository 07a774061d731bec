//! The restore pre-flight: before a byte is written, proves that the repository holds every
//! segment and history file recovery needs from the backup's start to the point where the
//! target is reached, or says exactly what is missing and how far the archive does reach.

use crate::catalog::Catalog;
use crate::catalog::backup::BackupManifest;
use crate::catalog::wal_archive::ArchivedFile;
use crate::error::{Error, Result};
use crate::pg::Lsn;
use crate::pg::timeline::TimelineSpan;

use super::restore::Target;
use super::wal_reach::{ArchiveView, Walk, backup_lsns, path_holds_backup, rfc3339, utc};

#[derive(Debug)]
pub struct RestorePlan {
    pub backup: BackupManifest,
    pub timeline: u32,
    /// The segments recovery reads, in order.
    pub segments: Vec<ArchivedFile>,
    pub histories: Vec<ArchivedFile>,
    /// Where recovery stops, in words.
    pub stops: String,
    /// Stored bytes of the WAL and history files.
    pub wal_bytes: u64,
}

/// Plans a restore of `backup` to `target` on the timeline `target_timeline` names.
pub async fn plan_restore(
    catalog: &Catalog,
    view: &mut ArchiveView,
    backup: &BackupManifest,
    target: &Target,
    target_timeline: Option<&str>,
    jobs: usize,
) -> Result<RestorePlan> {
    let timeline = resolve_timeline(view, backup, target_timeline)?;
    let path = view.path(timeline)?;
    let (start, stop) = backup_lsns(backup)?;
    if !path_holds_backup(&path, backup, start) {
        return Err(Error::Unreachable(format!(
            "timeline {timeline} does not descend from timeline {} after backup {} started at \
             {start}{}: choose another --target-timeline or backup",
            backup.timeline,
            backup.id,
            branch_point(&path, backup.timeline)
        )));
    }
    let walk = view.walk(&path, start);
    let stop_segno = stop.segment_number(view.segment_size);
    if !walk.reaches(stop_segno) {
        return Err(Error::Unreachable(format!(
            "WAL segment {} is missing from the repository; backup {} needs its WAL up to {} to \
             become consistent",
            walk.missing, backup.id, backup.stop_wal_segment
        )));
    }
    let index_of = |segno: u64| {
        walk.files
            .iter()
            .position(|f| view.segment_number(f) == segno)
            .expect("reached")
    };
    let stop_index = index_of(stop_segno);

    // How many of the walked segments recovery reads, and where it stops.
    let (needed, stops) = match target {
        Target::Immediate => (
            stop_index + 1,
            format!("when backup {} is consistent", backup.id),
        ),
        Target::Lsn(lsn) => {
            if *lsn < stop {
                return Err(Error::Unreachable(format!(
                    "target LSN {lsn} lies before the end of backup {} ({stop}): choose an \
                     earlier backup with --backup",
                    backup.id
                )));
            }
            let segno = lsn.segment_number(view.segment_size);
            if !walk.reaches(segno) {
                view.summarise(catalog, &walk.files, jobs, false).await?;
                return Err(beyond_reach(view, &walk, &format!("target LSN {lsn}")));
            }
            (index_of(segno) + 1, format!("at LSN {lsn}"))
        }
        Target::Time(time) => {
            view.summarise(catalog, &walk.files, jobs, false).await?;
            let after = walk.files.iter().position(|f| {
                view.summary(f)
                    .and_then(|s| s.last_commit_time.as_deref().and_then(utc))
                    .is_some_and(|last| last > *time)
            });
            match after {
                Some(index) => (
                    index.max(stop_index) + 1,
                    format!(
                        "before the first commit after {} (in {})",
                        rfc3339(*time),
                        walk.files[index].name
                    ),
                ),
                None => {
                    return Err(beyond_reach(
                        view,
                        &walk,
                        &format!("target time {}", rfc3339(*time)),
                    ));
                }
            }
        }
        Target::Name(name) => {
            view.summarise(catalog, &walk.files, jobs, false).await?;
            let found = walk.files.iter().position(|f| {
                view.summary(f).is_some_and(|s| {
                    s.restore_points.iter().any(|p| {
                        &p.name == name && p.lsn.parse::<Lsn>().is_ok_and(|lsn| lsn >= stop)
                    })
                })
            });
            match found {
                Some(index) => (
                    index.max(stop_index) + 1,
                    format!("at restore point '{name}' (in {})", walk.files[index].name),
                ),
                None if walk.gap => {
                    return Err(beyond_reach(
                        view,
                        &walk,
                        &format!("restore point '{name}'"),
                    ));
                }
                None => {
                    return Err(Error::Unreachable(format!(
                        "restore point '{name}' is not in the archived WAL after backup {} \
                         (restore points there: {}); create it with pg_create_restore_point() \
                         or check the name",
                        backup.id,
                        restore_point_names(view, &walk)
                    )));
                }
            }
        }
        Target::Xid(_) | Target::End => {
            view.summarise(catalog, &walk.files, jobs, false).await?;
            if walk.gap {
                return Err(beyond_reach(view, &walk, "the rest of the archived WAL"));
            }
            let stops = match target {
                Target::Xid(xid) => format!("after transaction {xid}, if it is in the WAL"),
                _ => match view.last_commit(&walk.files) {
                    Some(last) => format!(
                        "at the end of the archived WAL (last commit {})",
                        rfc3339(last)
                    ),
                    None => "at the end of the archived WAL".into(),
                },
            };
            (walk.files.len(), stops)
        }
    };

    let histories: Vec<ArchivedFile> = path
        .iter()
        .filter_map(|span| view.listing.histories.get(&span.timeline).cloned())
        .collect();
    let segments = walk.files[..needed].to_vec();
    let wal_bytes = segments.iter().chain(&histories).map(|f| f.size).sum();
    Ok(RestorePlan {
        backup: backup.clone(),
        timeline,
        segments,
        histories,
        stops,
        wal_bytes,
    })
}

/// `--target-timeline`: latest (PostgreSQL's default), current, or a number.
fn resolve_timeline(
    view: &ArchiveView,
    backup: &BackupManifest,
    target_timeline: Option<&str>,
) -> Result<u32> {
    match target_timeline.unwrap_or("latest") {
        "latest" => Ok(view.latest_timeline(backup.timeline)),
        "current" => Ok(backup.timeline),
        number => {
            let parsed = match number.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => number.parse().ok(),
            };
            parsed.filter(|&t| t > 0).ok_or_else(|| {
                Error::Config(format!(
                    "--target-timeline '{number}' is not latest, current or a timeline number"
                ))
            })
        }
    }
}

fn branch_point(path: &[TimelineSpan], timeline: u32) -> String {
    path.iter()
        .find(|span| span.timeline == timeline)
        .and_then(|span| span.end)
        .map_or_else(String::new, |end| {
            format!(" (it leaves timeline {timeline} at {end})")
        })
}

/// Why the target lies beyond what the archive reaches, with how far it does reach.
fn beyond_reach(view: &ArchiveView, walk: &Walk, what: &str) -> Error {
    let latest = latest_reachable(view, walk);
    if walk.gap {
        Error::Unreachable(format!(
            "WAL segment {} is missing from the repository, so {what} cannot be reached; the \
             latest reachable time is {latest}",
            walk.missing
        ))
    } else {
        Error::Unreachable(format!(
            "{what} lies after the end of the archived WAL (next segment {} is not archived \
             yet); the latest reachable time is {latest}. Restore without a target to replay \
             all archived WAL, or archive newer WAL first (SELECT pg_switch_wal() on the primary)",
            walk.missing
        ))
    }
}

fn latest_reachable(view: &ArchiveView, walk: &Walk) -> String {
    view.last_commit(&walk.files).map_or_else(
        || "unknown (no commit in the reachable WAL)".into(),
        rfc3339,
    )
}

fn restore_point_names(view: &ArchiveView, walk: &Walk) -> String {
    let names: Vec<String> = walk
        .files
        .iter()
        .filter_map(|f| view.summary(f))
        .flat_map(|s| s.restore_points.iter().map(|p| format!("'{}'", p.name)))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The newest backup from which `target` is reachable, for targets that need the WAL index
/// to choose (a restore point's position is known only from the WAL).
pub async fn choose_backup_for_name(
    catalog: &Catalog,
    view: &mut ArchiveView,
    backups: &[BackupManifest],
    target: &Target,
    target_timeline: Option<&str>,
    jobs: usize,
) -> Result<RestorePlan> {
    let mut newest_error = None;
    for backup in backups.iter().rev() {
        match plan_restore(catalog, view, backup, target, target_timeline, jobs).await {
            Ok(plan) => return Ok(plan),
            Err(e) => {
                newest_error.get_or_insert(e);
            }
        }
    }
    Err(newest_error.unwrap_or_else(|| {
        Error::WrongRepository("the repository holds no backup: run `pitr backup` first".into())
    }))
}
