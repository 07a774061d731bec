//! The long page header that opens every WAL segment (`XLogLongPageHeaderData`).
//!
//! Multi-byte fields are in the server's byte order; pitr supports little-endian servers,
//! and a big-endian segment shows up as an unknown magic rather than as wrong values.

use super::{Lsn, PgFormatError, is_valid_wal_segment_size};

/// `XLP_LONG_HEADER` in `xlp_info`.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `SizeOfXLogLongPHD`: the long header with its alignment padding.
pub const SIZE_OF_XLOG_LONG_PHD: usize = 40;

/// The PostgreSQL major version that writes WAL pages with this magic.
pub fn major_version_of_page_magic(magic: u16) -> Option<u32> {
    super::PgVersion::of_page_magic(magic).map(|v| v.major)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalLongPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_address: Lsn,
    pub system_identifier: u64,
    pub wal_segment_size: u32,
    pub wal_block_size: u32,
    /// Major version implied by `magic`.
    pub pg_major_version: u32,
}

impl WalLongPageHeader {
    /// Parses the header at the start of a segment.
    pub fn parse(page: &[u8]) -> Result<Self, PgFormatError> {
        if page.len() < SIZE_OF_XLOG_LONG_PHD {
            return Err(PgFormatError::ShortPage {
                len: page.len(),
                need: SIZE_OF_XLOG_LONG_PHD,
            });
        }
        let u16_at = |o: usize| u16::from_le_bytes([page[o], page[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(page[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(page[o..o + 8].try_into().unwrap());

        let magic = u16_at(0);
        let pg_major_version =
            major_version_of_page_magic(magic).ok_or(PgFormatError::UnknownPageMagic(magic))?;
        let info = u16_at(2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(PgFormatError::NotLongHeader(info));
        }
        let wal_segment_size = u32_at(32);
        if !is_valid_wal_segment_size(u64::from(wal_segment_size)) {
            return Err(PgFormatError::InvalidSegmentSize(u64::from(
                wal_segment_size,
            )));
        }
        Ok(WalLongPageHeader {
            magic,
            info,
            timeline: u32_at(4),
            page_address: Lsn(u64_at(8)),
            system_identifier: u64_at(24),
            wal_segment_size,
            wal_block_size: u32_at(36),
            pg_major_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn long_header(magic: u16, sysid: u64, seg_size: u32, addr: u64) -> Vec<u8> {
        let mut page = vec![0u8; 8192];
        page[0..2].copy_from_slice(&magic.to_le_bytes());
        page[2..4].copy_from_slice(&(XLP_LONG_HEADER | 0x0004).to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        page[8..16].copy_from_slice(&addr.to_le_bytes());
        page[24..32].copy_from_slice(&sysid.to_le_bytes());
        page[32..36].copy_from_slice(&seg_size.to_le_bytes());
        page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        page
    }

    #[test]
    fn parses_a_pg15_header() {
        let page = long_header(0xD110, 7_301_234_567_890_123_456, 16 << 20, 0x300_0000);
        let header = WalLongPageHeader::parse(&page).unwrap();
        assert_eq!(header.pg_major_version, 15);
        assert_eq!(header.system_identifier, 7_301_234_567_890_123_456);
        assert_eq!(header.wal_segment_size, 16 << 20);
        assert_eq!(header.page_address, Lsn(0x300_0000));
        assert_eq!(header.timeline, 1);
    }

    #[test]
    fn refuses_unknown_magic_short_pages_and_short_headers() {
        let mut page = long_header(0xD0FF, 1, 16 << 20, 0);
        assert_eq!(
            WalLongPageHeader::parse(&page),
            Err(PgFormatError::UnknownPageMagic(0xD0FF))
        );
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            WalLongPageHeader::parse(&page),
            Err(PgFormatError::NotLongHeader(0))
        );
        assert!(matches!(
            WalLongPageHeader::parse(&page[..39]),
            Err(PgFormatError::ShortPage { len: 39, .. })
        ));
    }

    #[test]
    fn refuses_impossible_segment_sizes() {
        let page = long_header(0xD110, 1, 3 << 20, 0);
        assert_eq!(
            WalLongPageHeader::parse(&page),
            Err(PgFormatError::InvalidSegmentSize(3 << 20))
        );
    }
}
