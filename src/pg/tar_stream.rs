//! The tar archives BASE_BACKUP sends, parsed as they arrive: bytes in, events out, no I/O.
//!
//! PostgreSQL writes its archives with one function (`tarCreateHeader`, src/port/tar.c):
//! POSIX ustar headers in 512-byte blocks, only regular files (`0`), directories (`5`) and
//! symbolic links (`2`, the tablespaces under `pg_tblspc`), names and link targets of at
//! most 99 bytes (it refuses longer ones rather than write GNU long names or pax headers),
//! a trailing `/` on directory and symlink names, and numbers in octal or, when they do not
//! fit (a file of 8 GiB or more), in GNU base-256. From version 15 the server ends each
//! archive with two zero blocks; 13 and 14 end it with the COPY stream (pg_basebackup adds
//! the blocks). This parser takes exactly that, plus GNU tar's header variant and hard links
//! (so archives from `tar` parse too), drops the `./` it writes before `pg_wal/archive_status`,
//! and refuses the rest with a typed error: pax and GNU
//! long-name entries never reach an allocation, so no length in a header drives one.
//!
//! File contents are handed out as slices of the caller's input, never copied; only a header
//! that straddles two inputs is buffered (512 bytes).

use std::fmt;

/// Tar's block: headers, file data and the end marker all come in 512-byte units.
pub const BLOCK: usize = 512;
const BLOCK_U64: u64 = 512;

/// One entry's header, as the archive describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// Relative path, `/`-separated, without the trailing `/` PostgreSQL writes on directories
    /// and symlinks; never absolute, never with `.`, `..` or empty components.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (`mode & 07777`; tar carries no file type in the mode).
    pub mode: u32,
    /// Seconds since the Unix epoch.
    pub mtime: u64,
    pub uid: u64,
    pub gid: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file of `size` bytes: its content follows as [`TarEvent::Data`].
    File {
        size: u64,
    },
    Directory,
    /// A symbolic link (PostgreSQL: `pg_tblspc/<oid>` → the tablespace's directory).
    Symlink {
        target: String,
    },
    /// A hard link to an earlier entry (GNU tar writes them; PostgreSQL does not).
    Hardlink {
        target: String,
    },
}

/// What the stream holds, in order: for each entry `Entry`, its content as zero or more
/// `Data` slices (files only), then `EntryEnd`; after the last entry, `End`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TarEvent<'a> {
    Entry(TarEntry),
    /// A piece of the current file's content, borrowed from the input.
    Data(&'a [u8]),
    /// The current entry is complete (content and padding).
    EntryEnd,
    /// The two zero blocks that end an archive.
    End,
}

/// How the caller knows the archive is over, for [`TarStream::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveEnd {
    /// Only the two zero blocks end the archive (PostgreSQL 15 and later, tar files).
    Marker,
    /// The transport marks the end (PostgreSQL 13 and 14 end each tablespace's archive with
    /// CopyDone and send no zero blocks): an end between two entries is complete too. Only
    /// for a stream whose end the transport has confirmed, never for a dropped connection.
    MarkerOrTransport,
}

/// A tar stream that is not an archive PostgreSQL writes.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarError {
    #[error(
        "tar header at byte {offset} has checksum field {stored:?}, computed {computed:o} \
         (octal): the archive is corrupt or out of step"
    )]
    Checksum {
        offset: u64,
        stored: String,
        computed: u64,
    },
    #[error(
        "block at byte {offset} is not a ustar tar header (magic {magic:?}): the archive is \
         corrupt or not a tar stream"
    )]
    NotUstar { offset: u64, magic: String },
    #[error("tar header at byte {offset} has an invalid {field} field {raw:?}")]
    BadNumber {
        offset: u64,
        field: &'static str,
        raw: String,
    },
    #[error(
        "tar entry at byte {offset} is a {what} (type {typeflag:?}), which PostgreSQL never \
         writes: refusing the archive"
    )]
    UnsupportedType {
        offset: u64,
        typeflag: char,
        what: &'static str,
    },
    #[error("tar entry at byte {offset} has an unusable path {path:?}: {why}")]
    BadPath {
        offset: u64,
        path: String,
        why: &'static str,
    },
    #[error("tar entry {path:?} at byte {offset} is a {kind} with a size of {size} bytes")]
    SizeOnNonFile {
        offset: u64,
        path: String,
        kind: &'static str,
        size: u64,
    },
    #[error(
        "padding after tar entry {path:?} at byte {offset} is not zero: the archive is out of step"
    )]
    NonZeroPadding { offset: u64, path: String },
    #[error("a single zero block at byte {offset} is followed by a header: the archive is corrupt")]
    LoneZeroBlock { offset: u64 },
    #[error("non-zero bytes at byte {offset}, after the end of the tar archive")]
    DataAfterEnd { offset: u64 },
    #[error("the tar stream stopped at byte {offset}, {at}: the archive is incomplete")]
    Truncated { offset: u64, at: String },
}

#[derive(Clone, Debug)]
enum State {
    /// Expecting a header (the first `filled` bytes are in `header`); `zero_blocks` is 1
    /// after the first of the two end blocks.
    Header {
        zero_blocks: u8,
    },
    Data {
        remaining: u64,
        padding: u16,
    },
    Padding {
        remaining: u16,
    },
    /// Content and padding done; `EntryEnd` not yet handed out.
    EntryDone,
    /// After the end marker: only zero bytes may follow (tar pads to its record size).
    Ended,
    Failed(TarError),
}

/// An incremental parser for one tar archive. Feed it the archive's bytes in pieces of any
/// size; see the module documentation for what it accepts.
#[derive(Clone, Debug)]
pub struct TarStream {
    state: State,
    header: [u8; BLOCK],
    filled: usize,
    /// Bytes of the stream consumed so far.
    position: u64,
    /// The current (or last) entry: for messages about where the stream stopped.
    current: Option<CurrentEntry>,
}

#[derive(Clone, Debug)]
struct CurrentEntry {
    path: String,
    size: u64,
}

impl Default for TarStream {
    fn default() -> Self {
        Self::new()
    }
}

impl TarStream {
    pub fn new() -> Self {
        TarStream {
            state: State::Header { zero_blocks: 0 },
            header: [0; BLOCK],
            filled: 0,
            position: 0,
            current: None,
        }
    }

    /// Bytes of the archive consumed so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Every event the whole of `input` yields. After an error the stream is finished: every
    /// later call returns the same error.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<Vec<TarEvent<'a>>, TarError> {
        let mut rest = input;
        let mut events = Vec::new();
        while let Some(event) = self.next_event(&mut rest)? {
            events.push(event);
        }
        Ok(events)
    }

    /// The next event from `input`, advancing it past what was consumed; `None` once all of
    /// `input` is consumed and more is needed (or the archive has ended).
    pub fn next_event<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<TarEvent<'a>>, TarError> {
        let result = self.step(input);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
        }
        result
    }

    /// Checks that the archive is complete once its bytes have all been fed: an error says
    /// where the stream stopped otherwise.
    pub fn finish(&self, end: ArchiveEnd) -> Result<(), TarError> {
        let at = match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Ended => return Ok(()),
            State::Header { zero_blocks: 0 } if self.filled == 0 => match end {
                ArchiveEnd::MarkerOrTransport => return Ok(()),
                ArchiveEnd::Marker => match &self.current {
                    Some(c) => {
                        format!("after entry {:?}, before the end-of-archive blocks", c.path)
                    }
                    None => "before the first entry".to_owned(),
                },
            },
            State::Header { zero_blocks: 0 } => {
                format!("inside a header ({} of {BLOCK} bytes)", self.filled)
            }
            State::Header { .. } => "between the two end-of-archive blocks".to_owned(),
            State::Data { remaining, .. } => {
                let (path, size) = self.current_names();
                format!(
                    "inside the content of {path:?} ({} of {size} bytes)",
                    size.saturating_sub(*remaining)
                )
            }
            State::Padding { .. } => {
                format!("in the padding after {:?}", self.current_names().0)
            }
            // Content and padding complete: only the event was pending.
            State::EntryDone => match end {
                ArchiveEnd::MarkerOrTransport => return Ok(()),
                ArchiveEnd::Marker => format!(
                    "after entry {:?}, before the end-of-archive blocks",
                    self.current_names().0
                ),
            },
        };
        Err(TarError::Truncated {
            offset: self.position,
            at,
        })
    }

    fn current_names(&self) -> (&str, u64) {
        match &self.current {
            Some(c) => (&c.path, c.size),
            None => ("", 0),
        }
    }

    fn consume<'a>(&mut self, input: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (taken, rest) = input.split_at(n.min(input.len()));
        *input = rest;
        self.position = self.position.saturating_add(taken.len() as u64);
        taken
    }

    fn step<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<TarEvent<'a>>, TarError> {
        loop {
            match self.state.clone() {
                State::Failed(e) => return Err(e),
                State::EntryDone => {
                    self.state = State::Header { zero_blocks: 0 };
                    return Ok(Some(TarEvent::EntryEnd));
                }
                State::Ended => {
                    let offset = self.position;
                    let rest = self.consume(input, input.len());
                    if let Some(i) = rest.iter().position(|&b| b != 0) {
                        return Err(TarError::DataAfterEnd {
                            offset: offset.saturating_add(i as u64),
                        });
                    }
                    return Ok(None);
                }
                State::Data { remaining, padding } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(remaining).unwrap_or(usize::MAX);
                    let data = self.consume(input, n);
                    let left = remaining.saturating_sub(data.len() as u64);
                    self.state = if left == 0 {
                        State::Padding { remaining: padding }
                    } else {
                        State::Data {
                            remaining: left,
                            padding,
                        }
                    };
                    return Ok(Some(TarEvent::Data(data)));
                }
                State::Padding { remaining: 0 } => self.state = State::EntryDone,
                State::Padding { remaining } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let offset = self.position;
                    let pad = self.consume(input, usize::from(remaining));
                    if pad.iter().any(|&b| b != 0) {
                        return Err(TarError::NonZeroPadding {
                            offset,
                            path: self.current_names().0.to_owned(),
                        });
                    }
                    self.state = State::Padding {
                        remaining: remaining.saturating_sub(pad.len() as u16),
                    };
                }
                State::Header { zero_blocks } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let offset = self.position.saturating_sub(self.filled as u64);
                    let need = BLOCK - self.filled;
                    let piece = self.consume(input, need);
                    let block: [u8; BLOCK] = if self.filled == 0 && piece.len() == BLOCK {
                        let mut block = [0; BLOCK];
                        block.copy_from_slice(piece);
                        block
                    } else {
                        self.header[self.filled..self.filled + piece.len()].copy_from_slice(piece);
                        self.filled += piece.len();
                        if self.filled < BLOCK {
                            return Ok(None);
                        }
                        self.header
                    };
                    self.filled = 0;
                    if block.iter().all(|&b| b == 0) {
                        if zero_blocks == 0 {
                            self.state = State::Header { zero_blocks: 1 };
                            continue;
                        }
                        self.state = State::Ended;
                        return Ok(Some(TarEvent::End));
                    }
                    if zero_blocks != 0 {
                        return Err(TarError::LoneZeroBlock {
                            offset: offset.saturating_sub(BLOCK_U64),
                        });
                    }
                    let entry = parse_header(&block, offset)?;
                    let size = match entry.kind {
                        EntryKind::File { size } => size,
                        _ => 0,
                    };
                    self.current = Some(CurrentEntry {
                        path: entry.path.clone(),
                        size,
                    });
                    // `size % 512` < 512, so both conversions are exact.
                    let padding = ((BLOCK_U64 - size % BLOCK_U64) % BLOCK_U64) as u16;
                    self.state = if size > 0 {
                        State::Data {
                            remaining: size,
                            padding,
                        }
                    } else {
                        State::EntryDone
                    };
                    return Ok(Some(TarEvent::Entry(entry)));
                }
            }
        }
    }
}

/// Field offsets of the ustar header.
const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const SIZE: std::ops::Range<usize> = 124..136;
const MTIME: std::ops::Range<usize> = 136..148;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..265;
const PREFIX: std::ops::Range<usize> = 345..500;

/// POSIX ustar (PostgreSQL): magic `ustar\0`, version `00`.
const MAGIC_POSIX: &[u8; 8] = b"ustar\x0000";
/// GNU tar's default format: magic `ustar `, version ` \0`; its prefix area holds other data.
const MAGIC_GNU: &[u8; 8] = b"ustar  \x00";

/// The header's checksum: the unsigned sum of its bytes, the checksum field counted as spaces.
pub fn header_checksum(block: &[u8; BLOCK]) -> u64 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if CHKSUM.contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum()
}

fn parse_header(block: &[u8; BLOCK], offset: u64) -> Result<TarEntry, TarError> {
    let number = |range: std::ops::Range<usize>, field: &'static str| {
        let raw = &block[range];
        parse_number(raw).ok_or_else(|| TarError::BadNumber {
            offset,
            field,
            raw: String::from_utf8_lossy(raw).into_owned(),
        })
    };
    // Checksum first: a block out of step fails here rather than on some field.
    let computed = header_checksum(block);
    if parse_number(&block[CHKSUM]) != Some(computed) {
        return Err(TarError::Checksum {
            offset,
            stored: String::from_utf8_lossy(until_nul(&block[CHKSUM]))
                .trim()
                .to_owned(),
            computed,
        });
    }
    let magic = &block[MAGIC];
    let posix = magic == MAGIC_POSIX;
    if !posix && magic != MAGIC_GNU {
        return Err(TarError::NotUstar {
            offset,
            magic: String::from_utf8_lossy(magic).into_owned(),
        });
    }
    let typeflag = block[TYPEFLAG];
    let unsupported = |what| TarError::UnsupportedType {
        offset,
        typeflag: char::from(typeflag),
        what,
    };
    enum Kind {
        File,
        Directory,
        Symlink,
        Hardlink,
    }
    let kind = match typeflag {
        b'0' | 0 => Kind::File,
        b'1' => Kind::Hardlink,
        b'2' => Kind::Symlink,
        b'5' => Kind::Directory,
        b'3' => return Err(unsupported("character device")),
        b'4' => return Err(unsupported("block device")),
        b'6' => return Err(unsupported("FIFO")),
        b'7' => return Err(unsupported("contiguous file")),
        b'x' | b'g' => return Err(unsupported("pax extended header")),
        b'L' => return Err(unsupported("GNU long name")),
        b'K' => return Err(unsupported("GNU long link name")),
        b'S' => return Err(unsupported("GNU sparse file")),
        _ => return Err(unsupported("entry of an unknown type")),
    };

    let name = until_nul(&block[NAME]);
    let prefix = if posix {
        until_nul(&block[PREFIX])
    } else {
        &[]
    };
    let mut raw_path = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        raw_path.extend_from_slice(prefix);
        raw_path.push(b'/');
    }
    raw_path.extend_from_slice(name);
    let trailing_slash = raw_path.last() == Some(&b'/');
    if trailing_slash && matches!(kind, Kind::Directory | Kind::Symlink) {
        raw_path.pop();
    }
    let path = checked_path(raw_path, offset)?;
    let link_target = || {
        String::from_utf8(until_nul(&block[LINKNAME]).to_vec()).map_err(|e| TarError::BadPath {
            offset,
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            why: "the link target is not UTF-8",
        })
    };

    let mode = number(MODE, "mode")?;
    let mode = u32::try_from(mode & 0o7777).unwrap_or(0);
    let uid = number(UID, "uid")?;
    let gid = number(GID, "gid")?;
    let size = number(SIZE, "size")?;
    let mtime = number(MTIME, "mtime")?;
    let kind = match kind {
        Kind::File => EntryKind::File { size },
        other => {
            let (kind, name) = match other {
                Kind::Directory => (EntryKind::Directory, "directory"),
                Kind::Symlink => (
                    EntryKind::Symlink {
                        target: link_target()?,
                    },
                    "symbolic link",
                ),
                // A hard link names an entry of the archive: the same rules as paths.
                _ => (
                    EntryKind::Hardlink {
                        target: checked_path(until_nul(&block[LINKNAME]).to_vec(), offset)?,
                    },
                    "hard link",
                ),
            };
            if size != 0 {
                return Err(TarError::SizeOnNonFile {
                    offset,
                    path,
                    kind: name,
                    size,
                });
            }
            kind
        }
    };
    Ok(TarEntry {
        path,
        kind,
        mode,
        mtime,
        uid,
        gid,
    })
}

/// A field's bytes up to its first NUL (fields that fill their width have none).
fn until_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

/// A path to write files under: relative, UTF-8, no `..` or empty components. `.` components
/// are dropped: PostgreSQL names `./pg_wal/archive_status` (and from 17 `./pg_wal/summaries`)
/// so, beside `pg_wal/…` for everything else.
fn checked_path(raw: Vec<u8>, offset: u64) -> Result<String, TarError> {
    let bad = |path: &[u8], why| TarError::BadPath {
        offset,
        path: String::from_utf8_lossy(path).into_owned(),
        why,
    };
    if raw.first() == Some(&b'/') {
        return Err(bad(&raw, "it is absolute"));
    }
    let mut components = Vec::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"." => {}
            b"" | b".." => return Err(bad(&raw, "it has an empty or '..' component")),
            _ => components.push(component),
        }
    }
    if components.is_empty() {
        return Err(bad(&raw, "it names no file"));
    }
    String::from_utf8(components.join(&b'/')).map_err(|_| bad(&raw, "it is not UTF-8"))
}

/// A numeric field: octal digits (leading spaces allowed) ended by a space or NUL, or GNU
/// base-256 (first byte 0x80, big-endian; the sign bit 0x40 set means negative, refused).
/// An empty field is 0. `None` when malformed or too large for a u64.
pub fn parse_number(field: &[u8]) -> Option<u64> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return None;
        }
        let mut value = u64::from(first & 0x3F);
        for &b in &field[1..] {
            if value > u64::MAX >> 8 {
                return None;
            }
            value = (value << 8) | u64::from(b);
        }
        return Some(value);
    }
    let digits_start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let mut value: u64 = 0;
    let mut rest = &field[digits_start..];
    while let Some((&b, tail)) = rest.split_first() {
        if !(b'0'..=b'7').contains(&b) {
            break;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        rest = tail;
    }
    if rest.iter().all(|&b| b == b' ' || b == 0) {
        Some(value)
    } else {
        None
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryKind::File { size } => write!(f, "file of {size} bytes"),
            EntryKind::Directory => f.write_str("directory"),
            EntryKind::Symlink { target } => write!(f, "symbolic link to {target:?}"),
            EntryKind::Hardlink { target } => write!(f, "hard link to {target:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A number field as PostgreSQL writes it: octal and a space, base-256 when too large.
    fn put_number(field: &mut [u8], value: u64) {
        let width = field.len();
        let octal_digits = width - 1;
        if octal_digits * 3 >= 64 || value < 1u64 << (octal_digits * 3) {
            let text = format!("{value:0octal_digits$o} ");
            field.copy_from_slice(text.as_bytes());
        } else {
            field.fill(0);
            field[0] = 0x80;
            let bytes = value.to_be_bytes();
            field[width - 8..].copy_from_slice(&bytes);
        }
    }

    /// A header block like PostgreSQL's `tarCreateHeader` makes.
    fn header(name: &str, typeflag: u8, size: u64, link: &str) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        put_number(&mut h[MODE], 0o600);
        put_number(&mut h[UID], 26);
        put_number(&mut h[GID], 26);
        put_number(&mut h[SIZE], size);
        put_number(&mut h[MTIME], 1_700_000_000);
        h[TYPEFLAG] = typeflag;
        h[LINKNAME][..link.len()].copy_from_slice(link.as_bytes());
        h[MAGIC].copy_from_slice(MAGIC_POSIX);
        h[265..273].copy_from_slice(b"postgres");
        h[297..305].copy_from_slice(b"postgres");
        seal(&mut h);
        h
    }

    fn seal(h: &mut [u8; BLOCK]) {
        let sum = header_checksum(h);
        put_number(&mut h[CHKSUM], sum);
    }

    fn file(archive: &mut Vec<u8>, name: &str, content: &[u8]) {
        archive.extend_from_slice(&header(name, b'0', content.len() as u64, ""));
        archive.extend_from_slice(content);
        let pad = (BLOCK - content.len() % BLOCK) % BLOCK;
        archive.extend(std::iter::repeat_n(0, pad));
    }

    /// An archive of every kind PostgreSQL writes, with contents of awkward sizes.
    fn sample() -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&header("base/", b'5', 0, ""));
        file(&mut a, "backup_label", b"START WAL LOCATION: 0/2000028\n");
        file(&mut a, "base/1/1259", &vec![7u8; 8192]);
        file(&mut a, "base/1/empty", b"");
        file(
            &mut a,
            "base/1/odd",
            &(0..1025u32).map(|i| i as u8).collect::<Vec<_>>(),
        );
        a.extend_from_slice(&header("pg_tblspc/16400/", b'2', 0, "/srv/ts"));
        file(&mut a, "global/pg_control", &[1u8; 512]);
        a.extend_from_slice(&[0u8; 2 * BLOCK]);
        a
    }

    /// Entries with their contents concatenated, and whether the end was seen.
    type Parsed = (Vec<(TarEntry, Vec<u8>)>, bool);

    fn parse_in(archive: &[u8], chunk: usize) -> Result<Parsed, TarError> {
        let mut stream = TarStream::new();
        let mut entries: Vec<(TarEntry, Vec<u8>)> = Vec::new();
        let mut ended = false;
        let mut open = false;
        for piece in archive.chunks(chunk.max(1)) {
            for event in stream.feed(piece)? {
                match event {
                    TarEvent::Entry(e) => {
                        assert!(!open && !ended);
                        open = true;
                        entries.push((e, Vec::new()));
                    }
                    TarEvent::Data(d) => {
                        assert!(open && !d.is_empty());
                        entries.last_mut().unwrap().1.extend_from_slice(d);
                    }
                    TarEvent::EntryEnd => {
                        assert!(open);
                        open = false;
                    }
                    TarEvent::End => {
                        assert!(!open && !ended);
                        ended = true;
                    }
                }
            }
        }
        stream.finish(ArchiveEnd::Marker)?;
        Ok((entries, ended))
    }

    #[test]
    fn parses_what_postgresql_writes_in_any_pieces() {
        let archive = sample();
        let (whole, ended) = parse_in(&archive, archive.len()).unwrap();
        assert!(ended);
        let summary: Vec<(String, EntryKind, usize)> = whole
            .iter()
            .map(|(e, d)| (e.path.clone(), e.kind.clone(), d.len()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("base".into(), EntryKind::Directory, 0),
                ("backup_label".into(), EntryKind::File { size: 30 }, 30),
                ("base/1/1259".into(), EntryKind::File { size: 8192 }, 8192),
                ("base/1/empty".into(), EntryKind::File { size: 0 }, 0),
                ("base/1/odd".into(), EntryKind::File { size: 1025 }, 1025),
                (
                    "pg_tblspc/16400".into(),
                    EntryKind::Symlink {
                        target: "/srv/ts".into()
                    },
                    0
                ),
                (
                    "global/pg_control".into(),
                    EntryKind::File { size: 512 },
                    512
                ),
            ]
        );
        assert_eq!(whole[4].1[1024], 0);
        assert_eq!(
            (whole[1].0.mode, whole[1].0.uid, whole[1].0.mtime),
            (0o600, 26, 1_700_000_000)
        );
        for chunk in [1, 7, 511, 512, 513, 4096] {
            assert_eq!(
                parse_in(&archive, chunk).unwrap(),
                (whole.clone(), true),
                "{chunk}"
            );
        }
    }

    #[test]
    fn data_is_borrowed_from_the_input() {
        let archive = sample();
        let events = TarStream::new().feed(&archive).unwrap();
        let range = archive.as_ptr_range();
        for event in events {
            if let TarEvent::Data(d) = event {
                assert!(range.contains(&d.as_ptr()));
            }
        }
    }

    #[test]
    fn a_file_over_8_gib_has_a_base_256_size() {
        let size: u64 = (9 << 30) + 3;
        let h = header("base/5/big", b'0', size, "");
        assert_eq!(
            h[SIZE.start], 0x80,
            "PostgreSQL's writer switches to base-256"
        );
        let mut stream = TarStream::new();
        let events = stream.feed(&h).unwrap();
        assert!(matches!(&events[..], [TarEvent::Entry(e)] if e.kind == EntryKind::File { size }));
        let zeros = vec![0u8; 1 << 20];
        let mut seen: u64 = 0;
        while seen < size {
            let n = (size - seen).min(zeros.len() as u64) as usize;
            for event in stream.feed(&zeros[..n]).unwrap() {
                match event {
                    TarEvent::Data(d) => seen += d.len() as u64,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(seen, size);
        assert!(
            stream.finish(ArchiveEnd::MarkerOrTransport).is_err(),
            "padding missing"
        );
        let events = stream.feed(&[0u8; BLOCK - 3 + 2 * BLOCK]).unwrap();
        assert_eq!(events, vec![TarEvent::EntryEnd, TarEvent::End]);
        stream.finish(ArchiveEnd::Marker).unwrap();
    }

    #[test]
    fn numbers_octal_and_base_256() {
        assert_eq!(parse_number(b"0000644 "), Some(0o644));
        assert_eq!(parse_number(b"000644\0 "), Some(0o644));
        assert_eq!(parse_number(b"   644\0\0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"0000648 "), None);
        assert_eq!(parse_number(b"00 00644"), None);
        assert_eq!(parse_number(b"77777777777777777777777 "), None, "overflow");
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1]),
            Some((2 << 32) + 1)
        );
        assert_eq!(parse_number(&[0xFF; 8]), None, "negative");
        assert_eq!(
            parse_number(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "over 64 bits"
        );
        assert_eq!(
            parse_number(&[
                0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF
            ]),
            Some(u64::MAX)
        );
        assert_eq!(parse_number(b""), None);
    }

    #[test]
    fn a_corrupt_header_is_refused_and_the_error_stays() {
        let mut archive = sample();
        archive[3] ^= 1;
        let mut stream = TarStream::new();
        let err = stream.feed(&archive).unwrap_err();
        assert!(matches!(err, TarError::Checksum { offset: 0, .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
        assert_eq!(stream.feed(b"more").unwrap_err(), err);
        assert_eq!(
            stream.finish(ArchiveEnd::MarkerOrTransport).unwrap_err(),
            err
        );
    }

    #[test]
    fn entries_postgresql_never_writes_are_refused() {
        for (flag, what) in [
            (b'x', "pax extended header"),
            (b'g', "pax extended header"),
            (b'L', "GNU long name"),
            (b'K', "GNU long link name"),
            (b'3', "character device"),
            (b'S', "GNU sparse file"),
            (b'Z', "entry of an unknown type"),
        ] {
            let err = TarStream::new()
                .feed(&header("././@LongLink", flag, 1 << 40, ""))
                .unwrap_err();
            assert!(
                matches!(&err, TarError::UnsupportedType { what: w, .. } if *w == what),
                "{err}"
            );
        }
        let mut not_ustar = header("a", b'0', 0, "");
        not_ustar[MAGIC].fill(0);
        seal(&mut not_ustar);
        assert!(matches!(
            TarStream::new().feed(&not_ustar),
            Err(TarError::NotUstar { .. })
        ));
        let err = TarStream::new()
            .feed(&header("d/", b'5', 3, ""))
            .unwrap_err();
        assert!(
            matches!(err, TarError::SizeOnNonFile { size: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for name in [
            "../etc/passwd",
            "/etc/passwd",
            "a//b",
            "file/",
            "",
            ".",
            "a/..",
        ] {
            let err = TarStream::new()
                .feed(&header(name, b'0', 0, ""))
                .unwrap_err();
            assert!(matches!(err, TarError::BadPath { .. }), "{name:?}: {err}");
        }
        let err = TarStream::new()
            .feed(&header("a\u{fffd}", b'0', 0, ""))
            .map(|_| ());
        assert!(err.is_ok(), "valid UTF-8 passes");
        let mut latin1 = header("x", b'0', 0, "");
        latin1[0] = 0xE9;
        seal(&mut latin1);
        assert!(matches!(
            TarStream::new().feed(&latin1),
            Err(TarError::BadPath { .. })
        ));
    }

    #[test]
    fn dot_components_are_dropped() {
        // PostgreSQL writes ./pg_wal/archive_status beside pg_wal/....
        for (name, path) in [
            ("./pg_wal/archive_status/", "pg_wal/archive_status"),
            ("a/./b/", "a/b"),
        ] {
            let block = header(name, b'5', 0, "");
            let events = TarStream::new().feed(&block).unwrap();
            assert!(
                matches!(&events[0], TarEvent::Entry(e) if e.path == path),
                "{events:?}"
            );
        }
    }

    #[test]
    fn ustar_prefix_joins_the_name() {
        let mut h = header("1259", b'0', 0, "");
        h[PREFIX][..6].copy_from_slice(b"base/1");
        seal(&mut h);
        let events = TarStream::new().feed(&h).unwrap();
        assert!(matches!(&events[0], TarEvent::Entry(e) if e.path == "base/1/1259"));
    }

    #[test]
    fn a_stream_cut_anywhere_is_incomplete() {
        let archive = sample();
        let boundaries: Vec<usize> = {
            // Offsets where an entry ends (where PostgreSQL 13/14 may end an archive).
            let mut stream = TarStream::new();
            let mut at = Vec::new();
            for i in 0..archive.len() {
                let events = stream.feed(&archive[i..=i]).unwrap();
                if events.contains(&TarEvent::EntryEnd) && i + 1 < archive.len() - 2 * BLOCK {
                    at.push(i + 1);
                }
            }
            at
        };
        assert_eq!(boundaries.len(), 6);
        for cut in 0..archive.len() {
            let mut stream = TarStream::new();
            stream.feed(&archive[..cut]).unwrap();
            let err = stream.finish(ArchiveEnd::Marker).unwrap_err();
            assert!(matches!(err, TarError::Truncated { offset, .. } if offset == cut as u64));
            let transport = stream.finish(ArchiveEnd::MarkerOrTransport);
            assert_eq!(
                transport.is_ok(),
                cut == 0 || boundaries.contains(&cut) || cut == archive.len() - 2 * BLOCK,
                "cut at {cut}: {transport:?}"
            );
        }
        let message = |cut: usize| {
            let mut stream = TarStream::new();
            stream.feed(&archive[..cut]).unwrap();
            stream.finish(ArchiveEnd::Marker).unwrap_err().to_string()
        };
        assert_eq!(
            message(1040),
            "the tar stream stopped at byte 1040, inside the content of \"backup_label\" \
             (16 of 30 bytes): the archive is incomplete"
        );
        assert_eq!(
            message(1000),
            "the tar stream stopped at byte 1000, inside a header (488 of 512 bytes): the \
             archive is incomplete"
        );
    }

    #[test]
    fn zeros_after_the_end_are_ignored_anything_else_refused() {
        let mut archive = sample();
        archive.extend_from_slice(&[0u8; 8 * BLOCK]);
        assert!(parse_in(&archive, 700).unwrap().1);
        archive.push(1);
        assert!(matches!(
            parse_in(&archive, 700),
            Err(TarError::DataAfterEnd { .. })
        ));
    }

    #[test]
    fn a_lone_zero_block_is_refused() {
        let mut archive = vec![0u8; BLOCK];
        file(&mut archive, "a", b"x");
        let err = TarStream::new().feed(&archive).unwrap_err();
        assert_eq!(err, TarError::LoneZeroBlock { offset: 0 });
    }

    #[test]
    fn padding_must_be_zero() {
        let mut archive = Vec::new();
        file(&mut archive, "a", b"x");
        archive[BLOCK + 100] = 1;
        let err = TarStream::new().feed(&archive).unwrap_err();
        assert!(matches!(err, TarError::NonZeroPadding { .. }), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..700,
        ) {
            let mut stream = TarStream::new();
            for piece in bytes.chunks(chunk) {
                if stream.feed(piece).is_err() {
                    break;
                }
            }
            let _ = stream.finish(ArchiveEnd::Marker);
        }

        #[test]
        fn valid_archives_cut_or_corrupted_never_panic(
            cut in 0usize..16000,
            flips in proptest::collection::vec((0usize..16000, any::<u8>()), 0..4),
            chunk in 1usize..1500,
        ) {
            let mut archive = sample();
            let intact = flips.iter().all(|&(_, xor)| xor == 0);
            for (at, xor) in flips {
                if let Some(b) = archive.get_mut(at) {
                    *b ^= xor;
                }
            }
            let cut = cut.min(archive.len());
            let whole = cut == archive.len();
            let result = parse_in(&archive[..cut], chunk);
            if intact {
                // Cut before the end marker, the archive is never complete.
                prop_assert_eq!(result.is_ok(), whole);
            }
        }

        #[test]
        fn any_split_gives_the_same_events(splits in proptest::collection::vec(1usize..2000, 1..20)) {
            let archive = sample();
            let expected = parse_in(&archive, archive.len()).unwrap();
            let mut stream = TarStream::new();
            let mut got: Vec<(TarEntry, Vec<u8>)> = Vec::new();
            let mut rest = &archive[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = splits[i % splits.len()].min(rest.len());
                i += 1;
                let (piece, tail) = rest.split_at(n);
                rest = tail;
                for event in stream.feed(piece).unwrap() {
                    match event {
                        TarEvent::Entry(e) => got.push((e, Vec::new())),
                        TarEvent::Data(d) => got.last_mut().unwrap().1.extend_from_slice(d),
                        _ => {}
                    }
                }
            }
            stream.finish(ArchiveEnd::Marker).unwrap();
            prop_assert_eq!(got, expected.0);
        }
    }
}
