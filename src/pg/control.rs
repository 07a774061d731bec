//! `global/pg_control` (`ControlFileData`, pg_control.h).
//!
//! The fields pitr needs sit at two anchors: the identity at offset 0 (with
//! `pg_control_version`, which names the layout), and the build constants that follow
//! `floatFormat` (a double holding `FLOATFORMAT_VALUE`). The checkpoint copy before the marker
//! changes size between versions, so the marker is found rather than its offset hard-coded;
//! where the CRC sits after it comes from the version's entry in [`super::version`], and the
//! CRC-32C check proves the layout was read right.

use super::version::PgVersion;
use super::{PgFormatError, is_valid_wal_segment_size};

/// `FLOATFORMAT_VALUE`: lets PostgreSQL detect incompatible float formats.
const FLOATFORMAT_VALUE: f64 = 1_234_567.0;
/// `PG_CONTROL_FILE_SIZE`: the file is zero-padded to this size.
pub const PG_CONTROL_FILE_SIZE: usize = 8192;

// Offsets after `floatFormat`: blcksz, relseg_size, xlog_blcksz, xlog_seg_size, nameDataLen,
// indexMaxKeys, toast_max_chunk_size, loblksize (uint32 each), float8ByVal (bool, padded),
// data_checksum_version (uint32); then what differs by version, up to the crc.
const XLOG_BLCKSZ_AFTER_FLOAT: usize = 16;
const XLOG_SEG_SIZE_AFTER_FLOAT: usize = 20;
const DATA_CHECKSUM_VERSION_AFTER_FLOAT: usize = 44;
/// The struct is far smaller than a page: the marker is searched in the first 512 bytes.
const MARKER_SEARCH: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlFile {
    pub system_identifier: u64,
    pub pg_control_version: u32,
    pub catalog_version_no: u32,
    pub wal_block_size: u32,
    pub wal_segment_size: u32,
    pub data_checksum_version: u32,
}

impl ControlFile {
    pub fn parse(bytes: &[u8]) -> Result<Self, PgFormatError> {
        if bytes.len() < MARKER_SEARCH {
            return Err(PgFormatError::ShortControlFile(bytes.len(), MARKER_SEARCH));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let marker = FLOATFORMAT_VALUE.to_le_bytes();
        let float_at = (0..MARKER_SEARCH)
            .step_by(8)
            .find(|&o| bytes[o..o + 8] == marker)
            .ok_or(PgFormatError::NoFloatFormat)?;
        let control_version = u32_at(8);
        let layout = PgVersion::of_control_version(control_version)
            .next()
            .ok_or(PgFormatError::UnsupportedControlVersion(control_version))?;
        let crc_at = float_at + layout.control_crc_after_float;
        if crc_at + 4 > bytes.len() {
            return Err(PgFormatError::ShortControlFile(bytes.len(), crc_at + 4));
        }
        let stored = u32_at(crc_at);
        let computed = crc32c::crc32c(&bytes[..crc_at]);
        if stored != computed {
            return Err(PgFormatError::ControlFileChecksum { stored, computed });
        }
        let wal_segment_size = u32_at(float_at + XLOG_SEG_SIZE_AFTER_FLOAT);
        if !is_valid_wal_segment_size(u64::from(wal_segment_size)) {
            return Err(PgFormatError::InvalidSegmentSize(u64::from(
                wal_segment_size,
            )));
        }
        Ok(ControlFile {
            system_identifier: u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
            pg_control_version: control_version,
            catalog_version_no: u32_at(12),
            wal_block_size: u32_at(float_at + XLOG_BLCKSZ_AFTER_FLOAT),
            wal_segment_size,
            data_checksum_version: u32_at(float_at + DATA_CHECKSUM_VERSION_AFTER_FLOAT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control file laid out as PostgreSQL 15 writes it, with a valid CRC.
    fn pg15_like(sysid: u64, seg_size: u32) -> Vec<u8> {
        laid_out(1300, 80, sysid, seg_size)
    }

    fn laid_out(
        control_version: u32,
        crc_after_float: usize,
        sysid: u64,
        seg_size: u32,
    ) -> Vec<u8> {
        let mut bytes = vec![0u8; PG_CONTROL_FILE_SIZE];
        bytes[0..8].copy_from_slice(&sysid.to_le_bytes());
        bytes[8..12].copy_from_slice(&control_version.to_le_bytes());
        bytes[12..16].copy_from_slice(&202_209_061u32.to_le_bytes());
        let float_at = 224;
        bytes[float_at..float_at + 8].copy_from_slice(&FLOATFORMAT_VALUE.to_le_bytes());
        bytes[float_at + 16..float_at + 20].copy_from_slice(&8192u32.to_le_bytes());
        bytes[float_at + 20..float_at + 24].copy_from_slice(&seg_size.to_le_bytes());
        let crc_at = float_at + crc_after_float;
        let crc = crc32c::crc32c(&bytes[..crc_at]);
        bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn reads_identity_and_wal_geometry() {
        let control = ControlFile::parse(&pg15_like(42, 16 << 20)).unwrap();
        assert_eq!(control.system_identifier, 42);
        assert_eq!(control.pg_control_version, 1300);
        assert_eq!(control.wal_segment_size, 16 << 20);
        assert_eq!(control.wal_block_size, 8192);
    }

    #[test]
    fn reads_the_layout_its_version_names() {
        let control = ControlFile::parse(&laid_out(1800, 84, 7, 16 << 20)).unwrap();
        assert_eq!(control.pg_control_version, 1800);
        assert_eq!(control.system_identifier, 7);
        // The CRC where 17 keeps it is no longer right for 18's layout, and the reverse.
        let mut wrong = laid_out(1800, 80, 7, 16 << 20);
        assert!(matches!(
            ControlFile::parse(&wrong),
            Err(PgFormatError::ControlFileChecksum { .. })
        ));
        wrong[8..12].copy_from_slice(&1201u32.to_le_bytes());
        assert_eq!(
            ControlFile::parse(&wrong),
            Err(PgFormatError::UnsupportedControlVersion(1201))
        );
    }

    #[test]
    fn detects_corruption() {
        let mut bytes = pg15_like(42, 16 << 20);
        bytes[3] ^= 1;
        assert!(matches!(
            ControlFile::parse(&bytes),
            Err(PgFormatError::ControlFileChecksum { .. })
        ));
    }

    #[test]
    fn refuses_files_without_the_marker() {
        assert_eq!(
            ControlFile::parse(&[0u8; PG_CONTROL_FILE_SIZE]),
            Err(PgFormatError::NoFloatFormat)
        );
        assert!(matches!(
            ControlFile::parse(&[0u8; 100]),
            Err(PgFormatError::ShortControlFile(100, _))
        ));
    }
}
