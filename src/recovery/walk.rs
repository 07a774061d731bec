//! A walk: the segments recovery reads in order from a start point, up to the first one
//! the archive lacks.

use crate::catalog::backup::BackupManifest;
use crate::catalog::wal::ArchivedFile;
use crate::pg::timeline::TimelineSpan;

#[derive(Clone, Debug)]
pub struct Walk {
    /// The segment the walk started in.
    pub first_segno: u64,
    /// The segments found, one per segment number from `first_segno` on.
    pub files: Vec<ArchivedFile>,
    /// The segment recovery would ask for next, which the repository does not hold.
    pub missing: String,
    pub missing_segno: u64,
    /// True when WAL of the path exists beyond `missing`: a gap, not the archive's end.
    pub gap: bool,
}

impl Walk {
    /// True when the walk got as far as segment `segno` (one at or after its start).
    pub fn reaches(&self, segno: u64) -> bool {
        segno >= self.first_segno && segno < self.missing_segno
    }

    /// How many of the walked segments recovery reads to get through segment `segno`; none
    /// if the walk does not reach it.
    pub fn count_through(&self, segno: u64) -> Option<usize> {
        self.reaches(segno)
            .then(|| (segno - self.first_segno) as usize + 1)
    }
}

/// True when recovery along `path` can start from `backup`: its timeline is on the path and
/// was left only after the backup started.
pub fn path_holds_backup(path: &[TimelineSpan], backup: &BackupManifest) -> bool {
    path.iter()
        .any(|span| span.timeline == backup.timeline && span.contains(backup.start_lsn))
}
