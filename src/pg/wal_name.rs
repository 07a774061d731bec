//! Names of the files PostgreSQL hands to `archive_command` (xlog_internal.h).

use std::fmt;

use super::{Lsn, PgFormatError};

/// Length of a segment name: timeline, log id and segment id as 8 hex digits each.
pub const XLOG_FNAME_LEN: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileKind {
    /// `000000010000000000000001` (`IsXLogFileName`).
    Segment,
    /// `000000010000000000000001.partial`, written at promotion (`IsPartialXLogFileName`).
    Partial,
    /// `00000002.history` (`IsTLHistoryFileName`).
    History,
    /// `000000010000000000000002.00000028.backup` (`IsBackupHistoryFileName`).
    BackupHistory,
}

/// A validated WAL archive file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalFileName {
    name: String,
    kind: WalFileKind,
    timeline: u32,
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl WalFileName {
    pub fn parse(name: &str) -> Result<Self, PgFormatError> {
        let kind =
            Self::classify(name).ok_or_else(|| PgFormatError::NotAWalFileName(name.to_owned()))?;
        // Timelines start at 1 (timeline.c); 0 is never written.
        let timeline = u32::from_str_radix(&name[..8], 16)
            .ok()
            .filter(|&t| t > 0)
            .ok_or_else(|| PgFormatError::NotAWalFileName(name.to_owned()))?;
        Ok(WalFileName {
            name: name.to_owned(),
            kind,
            timeline,
        })
    }

    /// Segment `segno` of `timeline` (`XLogFileName`), built rather than formatted and parsed
    /// back: none where no such name exists (timeline 0, or a segment number past the last
    /// log id, as arithmetic on numbers read from a repository can reach).
    pub fn segment(timeline: u32, segno: u64, wal_segment_size: u64) -> Option<Self> {
        let log = segno / segments_per_xlog_id(wal_segment_size);
        (timeline > 0 && log <= u64::from(u32::MAX)).then(|| WalFileName {
            name: xlog_file_name(timeline, segno, wal_segment_size),
            kind: WalFileKind::Segment,
            timeline,
        })
    }

    fn classify(name: &str) -> Option<WalFileKind> {
        let hex_prefix = |len: usize| name.len() >= len && is_upper_hex(&name[..len]);
        if name.len() == XLOG_FNAME_LEN && hex_prefix(XLOG_FNAME_LEN) {
            return Some(WalFileKind::Segment);
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return (seg.len() == XLOG_FNAME_LEN && is_upper_hex(seg))
                .then_some(WalFileKind::Partial);
        }
        if let Some(tli) = name.strip_suffix(".history") {
            return (tli.len() == 8 && is_upper_hex(tli)).then_some(WalFileKind::History);
        }
        if let Some(stem) = name.strip_suffix(".backup") {
            let (seg, offset) = stem.split_once('.')?;
            return (seg.len() == XLOG_FNAME_LEN
                && is_upper_hex(seg)
                && offset.len() == 8
                && is_upper_hex(offset))
            .then_some(WalFileKind::BackupHistory);
        }
        None
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> WalFileKind {
        self.kind
    }

    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// The 24-digit segment name this file belongs to (none for history files).
    pub fn segment_name(&self) -> Option<&str> {
        match self.kind {
            WalFileKind::History => None,
            _ => Some(&self.name[..XLOG_FNAME_LEN]),
        }
    }

    /// Whether the file's content is WAL pages (a full segment) rather than text.
    pub fn holds_wal_pages(&self) -> bool {
        matches!(self.kind, WalFileKind::Segment | WalFileKind::Partial)
    }

    /// Segment number of a segment or partial segment (`XLogFromFileName`); none when the
    /// name's segment part is out of range for this segment size.
    pub fn segment_number(&self, wal_segment_size: u64) -> Option<u64> {
        let seg = self.segment_name()?;
        let log = u64::from_str_radix(&seg[8..16], 16).ok()?;
        let id = u64::from_str_radix(&seg[16..24], 16).ok()?;
        let per_id = segments_per_xlog_id(wal_segment_size);
        (id < per_id).then(|| log * per_id + id)
    }

    /// The LSN where this segment starts.
    pub fn start_lsn(&self, wal_segment_size: u64) -> Option<Lsn> {
        Lsn::of_segment(self.segment_number(wal_segment_size)?, wal_segment_size)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// `XLogSegmentsPerXLogId`: segments in one 4 GB "log id" (at least 1, so that an invalid
/// segment size cannot divide by zero).
pub fn segments_per_xlog_id(wal_segment_size: u64) -> u64 {
    (0x1_0000_0000 / wal_segment_size.max(1)).max(1)
}

/// `XLogFileName`: the name of segment `segno` on `timeline`.
pub fn xlog_file_name(timeline: u32, segno: u64, wal_segment_size: u64) -> String {
    let per_id = segments_per_xlog_id(wal_segment_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// `XLByteToPrevSeg`: the segment holding the byte before `end`, which is how
/// `pg_walfile_name` names a backup's stop point (at a segment boundary, the one before).
pub fn segment_before(end: Lsn, wal_segment_size: u64) -> u64 {
    end.0.saturating_sub(1) / wal_segment_size.max(1)
}

/// `BackupHistoryFileName`: the history file `pg_backup_stop` writes for a backup that
/// started at `start` and stopped on `timeline`, named by the start's segment and offset.
pub fn backup_history_file_name(timeline: u32, start: Lsn, wal_segment_size: u64) -> String {
    format!(
        "{}.{:08X}.backup",
        xlog_file_name(
            timeline,
            start.segment_number(wal_segment_size),
            wal_segment_size
        ),
        start.0 % wal_segment_size.max(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_archived_kind() {
        let cases = [
            ("000000010000000000000001", WalFileKind::Segment, 1),
            ("0000000A00000001000000FF.partial", WalFileKind::Partial, 10),
            ("00000002.history", WalFileKind::History, 2),
            (
                "000000010000000000000002.00000028.backup",
                WalFileKind::BackupHistory,
                1,
            ),
        ];
        for (name, kind, tli) in cases {
            let parsed = WalFileName::parse(name).unwrap();
            assert_eq!(parsed.kind(), kind, "{name}");
            assert_eq!(parsed.timeline(), tli, "{name}");
        }
    }

    #[test]
    fn rejects_non_wal_names() {
        for bad in [
            "",
            "00000001000000000000001",
            "0000000100000000000000011",
            "00000001000000000000000a",
            "../00000001000000000000001",
            "0000002.history",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000001.tmp",
            "RECOVERYXLOG",
            "000000000000000000000001",
            "00000000.history",
        ] {
            assert!(WalFileName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backup_history_files_are_named_by_the_start() {
        let name = backup_history_file_name(1, Lsn(0x4_0000_0028), 16 << 20);
        assert_eq!(name, "000000010000000400000000.00000028.backup");
        let name = backup_history_file_name(3, Lsn(0x2_0300_0060), 1 << 30);
        assert_eq!(name, "000000030000000200000000.03000060.backup");
        assert_eq!(
            WalFileName::parse(&name).unwrap().kind(),
            WalFileKind::BackupHistory
        );
    }

    #[test]
    fn a_stop_at_a_segment_boundary_is_in_the_segment_before() {
        const SEG: u64 = 16 << 20;
        assert_eq!(segment_before(Lsn(0x300_0000), SEG), 2);
        assert_eq!(segment_before(Lsn(0x300_0001), SEG), 3);
        assert_eq!(segment_before(Lsn(0x3FF_FFFF), SEG), 3);
        assert_eq!(segment_before(Lsn(0), SEG), 0);
    }

    #[test]
    fn segment_numbers_depend_on_segment_size() {
        let name = WalFileName::parse("000000010000000100000002").unwrap();
        assert_eq!(name.segment_number(16 << 20), Some(0x102));
        assert_eq!(name.segment_number(1 << 30), Some(6));
        assert_eq!(xlog_file_name(1, 0x102, 16 << 20), name.as_str());
        assert_eq!(xlog_file_name(1, 6, 1 << 30), name.as_str());
        // A segment id past the log's last segment names no segment.
        let beyond = WalFileName::parse("000000010000000000000100").unwrap();
        assert_eq!(beyond.segment_number(16 << 20), None);
        let last = WalFileName::parse("00000001FFFFFFFF000000FF").unwrap();
        assert_eq!(last.start_lsn(16 << 20), Some(Lsn(0xFFFF_FFFF_FF00_0000)));
    }

    #[test]
    fn built_segment_names_are_the_parsed_ones_or_none() {
        for (segno, size) in [(0x102, 16 << 20), (6, 1 << 30), (u64::MAX >> 24, 16 << 20)] {
            let built = WalFileName::segment(7, segno, size).unwrap();
            assert_eq!(built, WalFileName::parse(built.as_str()).unwrap());
            assert_eq!(built.segment_number(size), Some(segno));
        }
        // Past the last log id, or timeline 0: no name, where parsing one back would fail.
        assert_eq!(
            WalFileName::segment(1, (u64::MAX >> 24) + 1, 16 << 20),
            None
        );
        assert_eq!(WalFileName::segment(1, u64::MAX, 1 << 20), None);
        assert_eq!(WalFileName::segment(0, 1, 16 << 20), None);
    }
}
