//! What pitr reads that differs between PostgreSQL major versions: one entry per version.
//!
//! Supporting a new major version is one entry in [`VERSIONS`] (its numbers read from that
//! version's `pg_control.h`, `xlog_internal.h`, `xlogrecord.h` and `xact.h`) and a run of
//! tests/it/versions.rs on a real server of that version.

use std::fmt;

/// The formats and interfaces of one PostgreSQL major version.
#[derive(Debug, PartialEq, Eq)]
pub struct PgVersion {
    /// The major version (`PG_VERSION`, `server_version_num / 10000`).
    pub major: u32,
    /// `PG_CONTROL_VERSION` (pg_control.h).
    pub control_version: u32,
    /// `CATALOG_VERSION_NO` (catversion.h) of the major release, which minor releases never
    /// change: what a repository records for a cluster it sees only over replication.
    pub catalog_version: u32,
    /// Bytes from `floatFormat` to the control file's `crc`: the build constants,
    /// `data_checksum_version`, (18: `default_char_signedness`) and the 32-byte
    /// `mock_authentication_nonce`, aligned to 4.
    pub control_crc_after_float: usize,
    /// `XLOG_PAGE_MAGIC` (xlog_internal.h).
    pub page_magic: u16,
    /// `BKPIMAGE_COMPRESSED` bits of `bimg_info` (xlogrecord.h): one bit before 15, one per
    /// algorithm (pglz, lz4, zstd) from 15.
    pub compressed_image_mask: u8,
    /// Commit and abort records may carry dropped statistics (`XACT_XINFO_HAS_DROPPED_STATS`,
    /// from 15).
    pub xact_dropped_stats: bool,
    /// The SQL that starts a non-exclusive backup, given label and fast.
    pub backup_start_sql: &'static str,
    /// The SQL that ends it without waiting for archiving: lsn, labelfile, spcmapfile.
    pub backup_stop_sql: &'static str,
    /// The statistics collector writes temporary files to `stats_temp_directory` (before 15).
    pub stats_temp_directory: bool,
}

const START_BEFORE_15: &str = "SELECT pg_start_backup($1, $2, false)::text";
const STOP_BEFORE_15: &str =
    "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)";
const START_FROM_15: &str = "SELECT pg_backup_start($1, $2)::text";
const STOP_FROM_15: &str = "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)";

/// The supported versions, oldest first.
pub const VERSIONS: [PgVersion; 6] = [
    PgVersion {
        major: 13,
        control_version: 1300,
        catalog_version: 202007201,
        control_crc_after_float: 80,
        page_magic: 0xD106,
        compressed_image_mask: 0x02,
        xact_dropped_stats: false,
        backup_start_sql: START_BEFORE_15,
        backup_stop_sql: STOP_BEFORE_15,
        stats_temp_directory: true,
    },
    PgVersion {
        major: 14,
        control_version: 1300,
        catalog_version: 202107181,
        control_crc_after_float: 80,
        page_magic: 0xD10D,
        compressed_image_mask: 0x02,
        xact_dropped_stats: false,
        backup_start_sql: START_BEFORE_15,
        backup_stop_sql: STOP_BEFORE_15,
        stats_temp_directory: true,
    },
    PgVersion {
        major: 15,
        control_version: 1300,
        catalog_version: 202209061,
        control_crc_after_float: 80,
        page_magic: 0xD110,
        compressed_image_mask: 0x04 | 0x08 | 0x10,
        xact_dropped_stats: true,
        backup_start_sql: START_FROM_15,
        backup_stop_sql: STOP_FROM_15,
        stats_temp_directory: false,
    },
    PgVersion {
        major: 16,
        control_version: 1300,
        catalog_version: 202307071,
        control_crc_after_float: 80,
        page_magic: 0xD113,
        compressed_image_mask: 0x04 | 0x08 | 0x10,
        xact_dropped_stats: true,
        backup_start_sql: START_FROM_15,
        backup_stop_sql: STOP_FROM_15,
        stats_temp_directory: false,
    },
    PgVersion {
        major: 17,
        control_version: 1700,
        catalog_version: 202406281,
        control_crc_after_float: 80,
        page_magic: 0xD116,
        compressed_image_mask: 0x04 | 0x08 | 0x10,
        xact_dropped_stats: true,
        backup_start_sql: START_FROM_15,
        backup_stop_sql: STOP_FROM_15,
        stats_temp_directory: false,
    },
    PgVersion {
        major: 18,
        control_version: 1800,
        catalog_version: 202506291,
        // default_char_signedness (a bool before the nonce) moves the CRC by 4 bytes.
        control_crc_after_float: 84,
        page_magic: 0xD118,
        compressed_image_mask: 0x04 | 0x08 | 0x10,
        xact_dropped_stats: true,
        backup_start_sql: START_FROM_15,
        backup_stop_sql: STOP_FROM_15,
        stats_temp_directory: false,
    },
];

/// The supported range, for messages: "13 to 18".
pub struct SupportedRange;

impl fmt::Display for SupportedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = VERSIONS.first().map_or(0, |v| v.major);
        let last = VERSIONS.last().map_or(0, |v| v.major);
        write!(f, "{first} to {last}")
    }
}

impl PgVersion {
    /// The entry of major version `major`; none when pitr does not support it.
    pub fn of_major(major: u32) -> Option<&'static PgVersion> {
        VERSIONS.iter().find(|v| v.major == major)
    }

    /// The entry of the version whose WAL pages carry `magic`.
    pub fn of_page_magic(magic: u16) -> Option<&'static PgVersion> {
        VERSIONS.iter().find(|v| v.page_magic == magic)
    }

    /// The entries whose control files carry `control_version` (several versions share one).
    pub fn of_control_version(control_version: u32) -> impl Iterator<Item = &'static PgVersion> {
        VERSIONS
            .iter()
            .filter(move |v| v.control_version == control_version)
    }

    /// The major version of `server_version_num` (e.g. 150004 → 15).
    pub fn of_server_version_num(num: i32) -> Option<&'static PgVersion> {
        u32::try_from(num / 10000).ok().and_then(Self::of_major)
    }

    /// The supported major versions, oldest first.
    pub fn supported() -> impl Iterator<Item = u32> {
        VERSIONS.iter().map(|v| v.major)
    }
}

/// One line for a version pitr does not support.
pub fn unsupported_message(major: u32) -> String {
    format!(
        "PostgreSQL {major} is not supported: pitr supports PostgreSQL {SupportedRange} \
         (see README, Supported PostgreSQL versions)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_distinct() {
        let majors: Vec<u32> = PgVersion::supported().collect();
        assert_eq!(majors, (13..=18).collect::<Vec<_>>());
        for (i, a) in VERSIONS.iter().enumerate() {
            for b in &VERSIONS[i + 1..] {
                assert_ne!(a.page_magic, b.page_magic, "{} and {}", a.major, b.major);
                assert!(a.control_version <= b.control_version);
            }
        }
        assert_eq!(SupportedRange.to_string(), "13 to 18");
    }

    #[test]
    fn lookups() {
        assert_eq!(PgVersion::of_page_magic(0xD118).unwrap().major, 18);
        assert_eq!(PgVersion::of_page_magic(0xD106).unwrap().major, 13);
        assert!(PgVersion::of_page_magic(0xD101).is_none());
        assert_eq!(PgVersion::of_server_version_num(180001).unwrap().major, 18);
        assert_eq!(PgVersion::of_server_version_num(130023).unwrap().major, 13);
        assert!(PgVersion::of_server_version_num(120000).is_none());
        assert!(PgVersion::of_server_version_num(190000).is_none());
        assert_eq!(PgVersion::of_control_version(1300).count(), 4);
        assert!(PgVersion::of_major(12).is_none());
        assert!(PgVersion::of_major(19).is_none());
        let message = unsupported_message(12);
        assert!(message.contains("PostgreSQL 12") && message.contains("13 to 18"));
        assert!(!message.contains('\n'));
    }
}
