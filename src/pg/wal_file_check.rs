//! Is an archived WAL file the file its name says? A whole, valid object stored or served
//! under another file's name (segment 5's bytes as segment 6, an operator restoring objects
//! from a copy, a sync tool renaming) passes every checksum; only its content can tell.
//!
//! - A segment's pages each carry their own address (`xlp_pageaddr`) and timeline
//!   (`xlp_tli`), and its first page the cluster's system identifier, segment and page
//!   sizes (`XLogLongPageHeaderData`). The address must be exactly where the name puts the
//!   page and the system identifier the repository's. The timeline may be lower than the
//!   name's: the first segment of a new timeline begins with the parent's WAL up to the
//!   switch point, copied with its page headers (`XLogInitNewTimeline`), so its first pages
//!   carry the parent's timeline. Like PostgreSQL's own reader (`XLogReaderValidatePageHeader`),
//!   pitr only requires that pages never go back to an earlier timeline, and never pass the
//!   name's. Pages of zeros are allowed after the first (never written, preallocated).
//! - A `.partial` segment is checked on its first page only: past the switch point its
//!   tail may hold whatever the recycled file held.
//! - A history file (`00000003.history`) names its ancestors, each below its own timeline.
//! - A backup history file names in its text the start its file name encodes.
//!
//! Bytes come in pieces ([`WalFileCheck::feed`]) as the decoder streams them: nothing is
//! held but a page header (and the text of the small history files).

use std::fmt;

use super::backup_label::parse_backup_label;
use super::timeline::parse_history;
use super::wal_name::xlog_file_name;
use super::wal_page::{SIZE_OF_XLOG_LONG_PHD, XLP_LONG_HEADER, major_version_of_page_magic};
use super::{Lsn, PgFormatError, WalFileKind, WalFileName, WalLongPageHeader};

/// Bytes of a page header the check reads past the first page: magic, info, timeline and
/// address.
const SHORT_HEADER_READ: usize = 16;
/// History and backup history files are a few lines; beyond this the text is not checked
/// (its parse, elsewhere, then says what is wrong).
const TEXT_LIMIT: usize = 1 << 20;

/// The cluster an archive holds: what a segment's first page must name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalGeometry {
    pub system_identifier: u64,
    pub segment_size: u64,
    pub block_size: u32,
}

/// Where a segment's content says it belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldSegment {
    pub segment: String,
    pub timeline: u32,
    pub system_identifier: u64,
}

impl fmt::Display for HeldSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "segment {}, timeline {}, system {}",
            self.segment, self.timeline, self.system_identifier
        )
    }
}

/// Content that is not the file its name says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Misnamed {
    #[error(
        "holds no WAL: its first page is zeros (a segment never written; PostgreSQL archives \
         only segments it has filled)"
    )]
    Zeros,
    #[error("is not a WAL segment: {0}")]
    NotWal(PgFormatError),
    #[error("holds {held} ({differs})")]
    Segment { held: HeldSegment, differs: String },
    #[error("has at offset {offset} a page that {differs}")]
    Page { offset: u64, differs: String },
    #[error(
        "holds the history of a later timeline: it names timeline {ancestor} as an ancestor of \
         timeline {timeline}"
    )]
    History { timeline: u32, ancestor: u32 },
    #[error("holds the backup history of a backup that started at {start} on timeline {timeline}")]
    BackupHistory { start: Lsn, timeline: u32 },
}

/// Checks a WAL file's content against its name as the bytes pass.
#[derive(Debug)]
pub struct WalFileCheck {
    name: WalFileName,
    kind: Check,
    problem: Option<Misnamed>,
}

#[derive(Debug)]
enum Check {
    Pages(PageCheck),
    Text {
        text: Vec<u8>,
        segment_size: u64,
    },
    /// A name that is out of range for this cluster: nothing is claimed, nothing checked.
    Nothing,
}

#[derive(Debug)]
struct PageCheck {
    geometry: WalGeometry,
    start: Lsn,
    /// Every page, or the first only (`.partial`).
    every_page: bool,
    /// Bytes seen so far.
    offset: u64,
    /// The current page's header, as far as it has come.
    header: Vec<u8>,
    magic: u16,
    /// The timeline of the last page seen: pages never go back.
    timeline: u32,
    /// The name's timeline: no page is on a later one.
    name_timeline: u32,
}

impl WalFileCheck {
    pub fn new(name: &WalFileName, geometry: WalGeometry) -> Self {
        let kind = match name.kind() {
            WalFileKind::Segment | WalFileKind::Partial => {
                match (
                    name.start_lsn(geometry.segment_size),
                    usize::try_from(geometry.block_size),
                ) {
                    (Some(start), Ok(block)) if block >= SIZE_OF_XLOG_LONG_PHD => {
                        Check::Pages(PageCheck {
                            geometry,
                            start,
                            every_page: name.kind() == WalFileKind::Segment,
                            offset: 0,
                            header: Vec::with_capacity(SIZE_OF_XLOG_LONG_PHD),
                            magic: 0,
                            timeline: 0,
                            name_timeline: name.timeline(),
                        })
                    }
                    _ => Check::Nothing,
                }
            }
            WalFileKind::History | WalFileKind::BackupHistory => Check::Text {
                text: Vec::new(),
                segment_size: geometry.segment_size,
            },
        };
        WalFileCheck {
            name: name.clone(),
            kind,
            problem: None,
        }
    }

    /// The file the content must be.
    pub fn name(&self) -> &WalFileName {
        &self.name
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.problem.is_some() {
            return;
        }
        match &mut self.kind {
            Check::Pages(pages) => {
                self.problem = pages.feed(&self.name, bytes).err();
            }
            Check::Text { text, .. } => {
                if text.len() < TEXT_LIMIT {
                    text.extend_from_slice(&bytes[..bytes.len().min(TEXT_LIMIT - text.len())]);
                }
            }
            Check::Nothing => {}
        }
    }

    /// The verdict once every byte was fed.
    pub fn finish(self) -> Result<(), Misnamed> {
        if let Some(problem) = self.problem {
            return Err(problem);
        }
        match self.kind {
            Check::Pages(pages) if pages.offset < SIZE_OF_XLOG_LONG_PHD as u64 => {
                // Shorter than the long header: not a segment (the parse says why).
                pages.check_first_page(&self.name, &pages.header)
            }
            Check::Pages(_) | Check::Nothing => Ok(()),
            Check::Text { text, segment_size } if text.len() < TEXT_LIMIT => {
                check_text(&self.name, &String::from_utf8_lossy(&text), segment_size)
            }
            Check::Text { .. } => Ok(()),
        }
    }
}

/// [`WalFileCheck`] on a whole file in memory.
pub fn check_wal_file(
    name: &WalFileName,
    geometry: WalGeometry,
    content: &[u8],
) -> Result<(), Misnamed> {
    let mut check = WalFileCheck::new(name, geometry);
    check.feed(content);
    check.finish()
}

impl PageCheck {
    fn feed(&mut self, name: &WalFileName, mut bytes: &[u8]) -> Result<(), Misnamed> {
        let block = u64::from(self.geometry.block_size);
        while !bytes.is_empty() {
            let in_page = self.offset % block;
            let first = self.offset < block;
            if !first && !self.every_page {
                self.offset = self.offset.saturating_add(bytes.len() as u64);
                return Ok(());
            }
            let need = if first {
                SIZE_OF_XLOG_LONG_PHD
            } else {
                SHORT_HEADER_READ
            } as u64;
            let take = if in_page < need {
                let n = (need - in_page).min(bytes.len() as u64) as usize;
                self.header.extend_from_slice(&bytes[..n]);
                if self.header.len() as u64 == need {
                    let header = std::mem::take(&mut self.header);
                    if first {
                        self.check_first_page(name, &header)?;
                        self.magic = u16::from_le_bytes([header[0], header[1]]);
                        self.timeline = u32::from_le_bytes(header[4..8].try_into().unwrap());
                    } else {
                        self.check_page(self.offset - in_page, &header)?;
                    }
                    self.header = header;
                    self.header.clear();
                }
                n as u64
            } else {
                (block - in_page).min(bytes.len() as u64)
            };
            self.offset = self.offset.saturating_add(take);
            bytes = &bytes[take as usize..];
        }
        Ok(())
    }

    fn check_first_page(&self, name: &WalFileName, header: &[u8]) -> Result<(), Misnamed> {
        if header.is_empty() {
            return Err(Misnamed::NotWal(PgFormatError::ShortPage {
                len: 0,
                need: SIZE_OF_XLOG_LONG_PHD,
            }));
        }
        if header.iter().all(|&b| b == 0) {
            return Err(Misnamed::Zeros);
        }
        let parsed = WalLongPageHeader::parse(header).map_err(Misnamed::NotWal)?;
        let held = || HeldSegment {
            segment: xlog_file_name(
                parsed.timeline,
                parsed
                    .page_address
                    .segment_number(u64::from(parsed.wal_segment_size)),
                u64::from(parsed.wal_segment_size),
            ),
            timeline: parsed.timeline,
            system_identifier: parsed.system_identifier,
        };
        let differs = |differs: String| {
            Err(Misnamed::Segment {
                held: held(),
                differs,
            })
        };
        let g = &self.geometry;
        if parsed.system_identifier != g.system_identifier {
            return differs(format!(
                "the repository's system identifier is {}",
                g.system_identifier
            ));
        }
        if u64::from(parsed.wal_segment_size) != g.segment_size {
            return differs(format!(
                "its segment size is {}, the repository's {}",
                parsed.wal_segment_size, g.segment_size
            ));
        }
        if parsed.wal_block_size != g.block_size {
            return differs(format!(
                "its WAL page size is {}, the repository's {}",
                parsed.wal_block_size, g.block_size
            ));
        }
        if parsed.page_address != self.start {
            return differs(format!(
                "it starts at {}, not at {}",
                parsed.page_address, self.start
            ));
        }
        if parsed.timeline > name.timeline() {
            return differs(format!(
                "its pages are on timeline {}, after {name}'s timeline {}",
                parsed.timeline,
                name.timeline()
            ));
        }
        Ok(())
    }

    /// A page after the first: zeros, or the next page of the same WAL.
    fn check_page(&mut self, offset: u64, header: &[u8]) -> Result<(), Misnamed> {
        if header.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let magic = u16::from_le_bytes([header[0], header[1]]);
        let info = u16::from_le_bytes([header[2], header[3]]);
        let timeline = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let address = Lsn(u64::from_le_bytes(header[8..16].try_into().unwrap()));
        let expected = Lsn(self.start.0.saturating_add(offset));
        let page = |differs: String| Err(Misnamed::Page { offset, differs });
        if magic != self.magic || major_version_of_page_magic(magic).is_none() {
            return page(format!(
                "is not a WAL page of this segment (magic 0x{magic:04X}, info 0x{info:04X})"
            ));
        }
        if address != expected {
            return page(format!(
                "holds WAL from {address} on timeline {timeline}, not from {expected}"
            ));
        }
        if info & XLP_LONG_HEADER != 0 {
            return page("has a segment's first page header".into());
        }
        if timeline < self.timeline {
            return page(format!(
                "goes back to timeline {timeline} from timeline {}",
                self.timeline
            ));
        }
        if timeline > self.name_timeline {
            return page(format!(
                "is on timeline {timeline}, after the name's timeline {}",
                self.name_timeline
            ));
        }
        self.timeline = timeline;
        Ok(())
    }
}

/// History and backup history files: the text names what the file name says.
fn check_text(name: &WalFileName, text: &str, segment_size: u64) -> Result<(), Misnamed> {
    match name.kind() {
        WalFileKind::History => {
            // A file that does not parse is not judged here: its parse says what is wrong.
            // Parsed as no timeline's own, so that an ancestor at or past the name's timeline
            // is reported here as a misnamed file.
            let Ok(entries) = parse_history(u32::MAX, text) else {
                return Ok(());
            };
            match entries.iter().find(|e| e.timeline >= name.timeline()) {
                Some(later) => Err(Misnamed::History {
                    timeline: name.timeline(),
                    ancestor: later.timeline,
                }),
                None => Ok(()),
            }
        }
        WalFileKind::BackupHistory => {
            let Ok(label) = parse_backup_label(text) else {
                return Ok(());
            };
            // `BackupHistoryFileName`: the stop timeline, then the start's segment and offset.
            let stem = name.as_str();
            let named_offset = stem
                .get(25..33)
                .and_then(|o| u64::from_str_radix(o, 16).ok());
            let same_start = label.start_wal_file.get(8..24) == stem.get(8..24)
                && named_offset == Some(label.start_lsn.0 % segment_size.max(1));
            let stop_timeline = label.stop_timeline.unwrap_or(name.timeline());
            if !same_start || stop_timeline != name.timeline() {
                return Err(Misnamed::BackupHistory {
                    start: label.start_lsn,
                    timeline: stop_timeline,
                });
            }
            Ok(())
        }
        WalFileKind::Segment | WalFileKind::Partial => Ok(()),
    }
}

/// Writes the page headers of segment `segno` on `timeline` over `wal`: content that passes
/// for the segment (tests that store constructed WAL).
#[cfg(test)]
pub(crate) fn head_pages(wal: &mut [u8], segno: u64, timeline: u32, geometry: WalGeometry) {
    let block = geometry.block_size as usize;
    for page in 0..wal.len() / block {
        let address = segno * geometry.segment_size + (page * block) as u64;
        set_page_header(wal, page, timeline, address, geometry);
    }
}

#[cfg(test)]
fn set_page_header(wal: &mut [u8], page: usize, timeline: u32, address: u64, g: WalGeometry) {
    let at = page * g.block_size as usize;
    let info: u16 = if page == 0 { XLP_LONG_HEADER } else { 0 };
    wal[at..at + 2].copy_from_slice(&0xD110u16.to_le_bytes());
    wal[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
    wal[at + 4..at + 8].copy_from_slice(&timeline.to_le_bytes());
    wal[at + 8..at + 16].copy_from_slice(&address.to_le_bytes());
    if page == 0 {
        wal[at + 24..at + 32].copy_from_slice(&g.system_identifier.to_le_bytes());
        wal[at + 32..at + 36].copy_from_slice(&(g.segment_size as u32).to_le_bytes());
        wal[at + 36..at + 40].copy_from_slice(&g.block_size.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 8192;
    const SEGMENT: u64 = 1 << 20;
    const GEOMETRY: WalGeometry = WalGeometry {
        system_identifier: 7,
        segment_size: SEGMENT,
        block_size: BLOCK as u32,
    };

    fn name(text: &str) -> WalFileName {
        WalFileName::parse(text).unwrap()
    }

    fn set_header(wal: &mut [u8], page: usize, timeline: u32, address: u64) {
        set_page_header(wal, page, timeline, address, GEOMETRY);
    }

    /// Segment `segno` as PostgreSQL writes it on `timeline`: every page headed, some data.
    fn segment(segno: u64, timeline: u32) -> Vec<u8> {
        let mut wal: Vec<u8> = (0..SEGMENT).map(|i| (i / 300) as u8).collect();
        head_pages(&mut wal, segno, timeline, GEOMETRY);
        wal
    }

    /// The verdict when the bytes come in pieces of `piece`.
    fn check_in_pieces(file: &str, content: &[u8], piece: usize) -> Result<(), Misnamed> {
        let mut check = WalFileCheck::new(&name(file), GEOMETRY);
        for chunk in content.chunks(piece) {
            check.feed(chunk);
        }
        check.finish()
    }

    fn check_every_way(file: &str, content: &[u8]) -> Result<(), Misnamed> {
        let whole = check_wal_file(&name(file), GEOMETRY, content);
        for piece in [1, 7, 39, 41, 8191, 65536] {
            assert_eq!(
                check_in_pieces(file, content, piece),
                whole,
                "{file} by {piece}"
            );
        }
        whole
    }

    #[test]
    fn a_segment_is_the_segment_its_name_says() {
        let wal = segment(3, 1);
        assert_eq!(check_every_way("000000010000000000000003", &wal), Ok(()));
        // Segment 3's bytes as segment 4: its first page says where it belongs.
        let err = check_every_way("000000010000000000000004", &wal).unwrap_err();
        assert_eq!(
            err.to_string(),
            "holds segment 000000010000000000000003, timeline 1, system 7 (it starts at \
             0/300000, not at 0/400000)"
        );
        // Another cluster's segment.
        let other = WalGeometry {
            system_identifier: 8,
            ..GEOMETRY
        };
        let err = check_wal_file(&name("000000010000000000000003"), other, &wal).unwrap_err();
        assert!(err.to_string().contains("system identifier is 8"), "{err}");
        // A later timeline's segment under an earlier timeline's name.
        let err = check_every_way("000000010000000000000003", &segment(3, 2)).unwrap_err();
        assert!(
            err.to_string()
                .contains("after 000000010000000000000003's timeline 1"),
            "{err}"
        );
    }

    #[test]
    fn a_new_timeline_begins_with_its_parents_pages() {
        // Timeline 2 branched off in segment 3: its first pages carry timeline 1.
        let mut wal = segment(3, 2);
        for page in 0..10 {
            set_header(&mut wal, page, 1, 3 * SEGMENT + (page * BLOCK) as u64);
        }
        assert_eq!(check_every_way("000000020000000000000003", &wal), Ok(()));
        // But pages never go back to the parent once on the child.
        set_header(&mut wal, 50, 1, 3 * SEGMENT + (50 * BLOCK) as u64);
        let err = check_every_way("000000020000000000000003", &wal).unwrap_err();
        assert_eq!(
            err,
            Misnamed::Page {
                offset: 50 * BLOCK as u64,
                differs: "goes back to timeline 1 from timeline 2".into()
            }
        );
    }

    #[test]
    fn every_page_of_a_whole_segment_is_checked_but_zeros_pass() {
        let mut wal = segment(3, 1);
        // Pages never written (preallocated) are zeros.
        wal[100 * BLOCK..].fill(0);
        assert_eq!(check_every_way("000000010000000000000003", &wal), Ok(()));
        // A page from another segment in the middle.
        let mut spliced = segment(3, 1);
        spliced[20 * BLOCK..21 * BLOCK].copy_from_slice(&segment(5, 1)[20 * BLOCK..21 * BLOCK]);
        let err = check_every_way("000000010000000000000003", &spliced).unwrap_err();
        assert_eq!(
            err.to_string(),
            "has at offset 163840 a page that holds WAL from 0/528000 on timeline 1, not from \
             0/328000"
        );
        // Not WAL at all past the first page.
        let mut garbage = segment(3, 1);
        garbage[2 * BLOCK..3 * BLOCK].fill(0xAB);
        assert!(matches!(
            check_every_way("000000010000000000000003", &garbage),
            Err(Misnamed::Page { offset: 16384, .. })
        ));
        // A .partial segment's tail is whatever the recycled file held: first page only.
        assert_eq!(
            check_every_way("000000010000000000000003.partial", &spliced),
            Ok(())
        );
        assert!(check_every_way("000000010000000000000004.partial", &spliced).is_err());
    }

    #[test]
    fn zeros_and_non_wal_are_refused() {
        let zeros = vec![0u8; SEGMENT as usize];
        assert_eq!(
            check_every_way("000000010000000000000003", &zeros),
            Err(Misnamed::Zeros)
        );
        assert!(matches!(
            check_every_way("000000010000000000000003", b"hello"),
            Err(Misnamed::NotWal(_))
        ));
        assert!(matches!(
            check_every_way("000000010000000000000003", b""),
            Err(Misnamed::NotWal(PgFormatError::ShortPage { len: 0, .. }))
        ));
        let mut not_first = segment(3, 1);
        not_first[2..4].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(
            check_every_way("000000010000000000000003", &not_first),
            Err(Misnamed::NotWal(PgFormatError::NotLongHeader(0)))
        ));
    }

    #[test]
    fn history_files_name_only_earlier_timelines() {
        let two = "1\t0/3000158\tno recovery target specified\n";
        let three = "1\t0/3000158\tx\n\n2\t0/5000000\ty\n";
        assert_eq!(check_every_way("00000002.history", two.as_bytes()), Ok(()));
        assert_eq!(
            check_every_way("00000003.history", three.as_bytes()),
            Ok(())
        );
        // Timeline 3's history copied over timeline 2's.
        assert_eq!(
            check_every_way("00000002.history", three.as_bytes()),
            Err(Misnamed::History {
                timeline: 2,
                ancestor: 2
            })
        );
        // What does not parse is for the parse to report.
        assert_eq!(check_every_way("00000002.history", b"nonsense"), Ok(()));
    }

    #[test]
    fn backup_history_files_name_their_start() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n\
                    CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\nSTOP TIMELINE: 1\n";
        let ok = "000000010000000000000002.00000028.backup";
        assert_eq!(check_every_way(ok, text.as_bytes()), Ok(()));
        for wrong in [
            "000000010000000000000003.00000028.backup",
            "000000010000000000000002.00000060.backup",
            "000000020000000000000002.00000028.backup",
        ] {
            assert!(
                matches!(
                    check_every_way(wrong, text.as_bytes()),
                    Err(Misnamed::BackupHistory { .. })
                ),
                "{wrong}"
            );
        }
    }
}
