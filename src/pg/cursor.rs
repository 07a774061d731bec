//! A little-endian cursor over a WAL record's bytes that reports running off the end as an
//! error, never a panic: the WAL decoder's transaction records and the block references and
//! storage events of `wal_blocks` read through it.

use thiserror::Error;

use super::wal_blocks::RelFile;

/// The bytes ended before what was to be read.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("record truncated at byte {at}")]
pub(crate) struct Truncated {
    pub at: usize,
}

/// The decoder's reasons are text.
impl From<Truncated> for String {
    fn from(truncated: Truncated) -> String {
        truncated.to_string()
    }
}

pub(crate) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at byte `pos` of `data`.
    pub fn new(data: &'a [u8], pos: usize) -> Self {
        Cursor { data, pos }
    }

    /// Where the next read starts.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let at = self.pos;
        let end = at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(Truncated { at })?;
        self.pos = end;
        Ok(&self.data[at..end])
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let at = self.pos;
        let (bytes, _) = self
            .data
            .get(at..)
            .and_then(|rest| rest.split_first_chunk::<N>())
            .ok_or(Truncated { at })?;
        self.pos = at + N;
        Ok(*bytes)
    }

    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, Truncated> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// Skips a count-prefixed array (`int n; T items[n]`).
    pub fn skip_array(&mut self, item_size: usize) -> Result<(), Truncated> {
        let at = self.pos;
        let n = self.u32()? as usize;
        self.take(n.checked_mul(item_size).ok_or(Truncated { at })?)?;
        Ok(())
    }

    /// A `RelFileNode` (13–15) or `RelFileLocator` (16+): tablespace, database, relfilenode.
    pub fn rel_file(&mut self) -> Result<RelFile, Truncated> {
        Ok(RelFile {
            tablespace: self.u32()?,
            database: self.u32()?,
            relfilenode: self.u32()?,
        })
    }
}
