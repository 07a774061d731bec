//! The trailer: an LZ4 skippable frame that closes every object.
//!
//! ```text
//! offset size  field
//!      0    4  LZ4 skippable-frame magic 0x184D2A50 (little-endian)
//!      4    4  frame payload length = 32
//!      8    4  "PITR"
//!     12    2  format version = 1
//!     14    2  flags: bit 0 set when the frames are encrypted
//!     16    8  original length (0 when encrypted: the sealed end frame carries it)
//!     24    4  CRC-32 of the original bytes (0 when encrypted, likewise)
//!     28    4  CRC-32 of the compressed bytes before the trailer
//!     32    8  reserved, zero
//! ```
//! Integers are little-endian, as in the LZ4 frame format.

pub const TRAILER_LEN: usize = 40;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
const PAYLOAD_LEN: u32 = 32;
const PITR_MAGIC: &[u8; 4] = b"PITR";
const FORMAT_VERSION: u16 = 1;
const FLAG_ENCRYPTED: u16 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub original_len: u64,
    pub original_crc32: u32,
    pub stored_crc32: u32,
    /// The frames are sealed (see `crypto`): only the stored CRC can be checked without the
    /// key.
    pub encrypted: bool,
}

impl Trailer {
    pub fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[0..4].copy_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&PAYLOAD_LEN.to_le_bytes());
        out[8..12].copy_from_slice(PITR_MAGIC);
        out[12..14].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        if self.encrypted {
            out[14..16].copy_from_slice(&FLAG_ENCRYPTED.to_le_bytes());
        }
        out[16..24].copy_from_slice(&self.original_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.original_crc32.to_le_bytes());
        out[28..32].copy_from_slice(&self.stored_crc32.to_le_bytes());
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.len() != TRAILER_LEN {
            return Err("trailer has the wrong length");
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        if u32_at(0) != SKIPPABLE_MAGIC || u32_at(4) != PAYLOAD_LEN || &bytes[8..12] != PITR_MAGIC {
            return Err(
                "no pitr trailer at the end of the object (truncated or not a pitr object)",
            );
        }
        let version = u16::from_le_bytes([bytes[12], bytes[13]]);
        if version != FORMAT_VERSION {
            return Err("object format version is not 1 (written by a newer pitr?)");
        }
        let flags = u16::from_le_bytes([bytes[14], bytes[15]]);
        if flags & !FLAG_ENCRYPTED != 0 || bytes[32..40] != [0; 8] {
            return Err("unknown flags or non-zero reserved bytes in the trailer");
        }
        Ok(Trailer {
            original_len: u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
            original_crc32: u32_at(24),
            stored_crc32: u32_at(28),
            encrypted: flags & FLAG_ENCRYPTED != 0,
        })
    }
}
