//! Log sequence numbers (`XLogRecPtr`) in PostgreSQL's `X/X` notation.

use std::fmt;
use std::str::FromStr;

use super::PgFormatError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Segment number holding this LSN (`XLByteToSeg`).
    pub fn segment_number(self, wal_segment_size: u64) -> u64 {
        self.0 / wal_segment_size
    }

    /// The first LSN of segment `segno` (`XLogSegNoOffsetToRecPtr`); none past the end of
    /// the 64-bit WAL space.
    pub fn of_segment(segno: u64, wal_segment_size: u64) -> Option<Lsn> {
        segno.checked_mul(wal_segment_size).map(Lsn)
    }

    /// `n` bytes further, staying at the last LSN where the LSN space ends (a repository
    /// may hold the segment that ends there, `…FFFFFFFF000000FF`): decoding stops at that
    /// end rather than wrap.
    pub fn plus(self, n: usize) -> Lsn {
        Lsn(self.0.saturating_add(n as u64))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

/// Stored as PostgreSQL writes it (`"16/B374D848"`): manifests and summaries stay readable.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Lsn {
    type Err = PgFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || PgFormatError::InvalidLsn(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(invalid)?;
        let parse = |part: &str| {
            if part.is_empty() || part.len() > 8 {
                return Err(invalid());
            }
            u32::from_str_radix(part, 16).map_err(|_| invalid())
        };
        Ok(Lsn((u64::from(parse(hi)?) << 32) | u64::from(parse(lo)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0x0100_0028).to_string(), "0/1000028");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "0", "/1", "1/", "G/0", "123456789/0", "0/1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_number_of_default_segment_size() {
        assert_eq!(Lsn(0x1_0300_0000).segment_number(16 << 20), 0x103);
    }
}
