//! Progress of long commands (backup, restore): a trait with a silent default; the binary
//! supplies a terminal bar or log lines.

pub trait Progress: Send + Sync {
    /// Work of `total` bytes begins.
    fn start(&self, _what: &str, _total: u64) {}
    /// `bytes` more are done.
    fn advance(&self, _bytes: u64) {}
    /// Where a wait stands while no bytes move (a backup waiting for its WAL); called every
    /// few seconds.
    fn note(&self, _line: &str) {}
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
