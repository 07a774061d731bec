//! The result rows of the replication commands, typed (walsender.c, basebackup_copy.c).
//! Columns arrive as text; a row may carry more columns than pitr reads (later versions add
//! some), never fewer.

use std::collections::HashSet;

use super::ProtocolError;
use crate::pg::{Lsn, WalFileKind, WalFileName};

/// One row of a result set, each column as text or NULL.
pub type Row = Vec<Option<String>>;

/// `IDENTIFY_SYSTEM`'s row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_id: u64,
    /// The server's current timeline (on a standby, the one it replays).
    pub timeline: u32,
    /// The current WAL flush location (on a standby, the last replayed).
    pub xlogpos: Lsn,
    /// The database of a logical connection; None on a physical one.
    pub dbname: Option<String>,
}

/// `TIMELINE_HISTORY`'s row: the history file's name and its bytes as stored on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    pub filename: WalFileName,
    pub content: Vec<u8>,
}

/// `CREATE_REPLICATION_SLOT`'s row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// For a physical slot PostgreSQL reports 0/0 here; `READ_REPLICATION_SLOT` gives the
    /// reserved start.
    pub consistent_point: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotType {
    Physical,
    Logical,
}

/// `READ_REPLICATION_SLOT`'s row for a slot that exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationSlot {
    pub slot_type: SlotType,
    /// None while the slot holds no WAL.
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<u32>,
}

/// `BASE_BACKUP`'s first and last result sets: where the backup's WAL starts, and where it
/// must be replayed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupPosition {
    pub lsn: Lsn,
    pub timeline: u32,
}

/// One row of `BASE_BACKUP`'s tablespace list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupTablespace {
    /// None for the main data directory.
    pub oid: Option<u32>,
    /// The tablespace's directory on the server; None for the main data directory.
    pub location: Option<String>,
    /// The server's estimate in kB, sent when the backup asked for `PROGRESS`.
    pub size_kb: Option<i64>,
}

impl BackupTablespace {
    /// The archive name PostgreSQL gives this tablespace (pg_basebackup's too).
    pub fn archive_name(&self) -> String {
        match self.oid {
            Some(oid) => format!("{oid}.tar"),
            None => String::from("base.tar"),
        }
    }
}

/// The result set that ends a `START_REPLICATION` whose timeline the server left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSwitch {
    pub next_timeline: u32,
    pub start: Lsn,
}

fn one_row<'r>(
    rows: &'r [Row],
    command: &'static str,
) -> Result<&'r [Option<String>], ProtocolError> {
    match rows {
        [row] => Ok(row.as_slice()),
        _ => Err(ProtocolError::RowCount {
            command,
            rows: rows.len(),
        }),
    }
}

/// Column `index` of `row`, text or NULL; an error if the row is too short.
fn column<'r>(
    row: &'r [Option<String>],
    index: usize,
    command: &'static str,
) -> Result<Option<&'r str>, ProtocolError> {
    match row.get(index) {
        Some(value) => Ok(value.as_deref()),
        None => Err(ProtocolError::ColumnCount {
            command,
            columns: row.len(),
            expected: index.saturating_add(1),
        }),
    }
}

fn required<'r>(
    row: &'r [Option<String>],
    index: usize,
    command: &'static str,
    name: &'static str,
) -> Result<&'r str, ProtocolError> {
    column(row, index, command)?.ok_or(ProtocolError::NullColumn {
        command,
        column: name,
    })
}

fn bad(
    command: &'static str,
    column: &'static str,
    value: &str,
    what: &'static str,
) -> ProtocolError {
    ProtocolError::BadColumn {
        command,
        column,
        // A hostile server could send a long value: the message keeps its start.
        value: value.chars().take(64).collect(),
        what,
    }
}

fn lsn(value: &str, command: &'static str, name: &'static str) -> Result<Lsn, ProtocolError> {
    value
        .parse()
        .map_err(|_| bad(command, name, value, "not an LSN (X/X)"))
}

/// A timeline as sent: `int4` by IDENTIFY_SYSTEM (a timeline above 2^31 prints negative),
/// `int8` elsewhere. Timeline 0 does not exist.
fn timeline(value: &str, command: &'static str, name: &'static str) -> Result<u32, ProtocolError> {
    let parsed = value
        .parse::<u32>()
        .ok()
        .or_else(|| value.parse::<i32>().ok().map(|t| t as u32));
    match parsed {
        Some(t) if t > 0 => Ok(t),
        _ => Err(bad(
            command,
            name,
            value,
            "not a timeline (1 to 4294967295)",
        )),
    }
}

/// `IDENTIFY_SYSTEM`: systemid, timeline, xlogpos, dbname.
pub fn parse_identify_system(rows: &[Row]) -> Result<IdentifySystem, ProtocolError> {
    const C: &str = "IDENTIFY_SYSTEM";
    let row = one_row(rows, C)?;
    let system_id = required(row, 0, C, "systemid")?;
    let system_id = system_id
        .parse::<u64>()
        .map_err(|_| bad(C, "systemid", system_id, "not a system identifier"))?;
    let tli = timeline(required(row, 1, C, "timeline")?, C, "timeline")?;
    let xlogpos = lsn(required(row, 2, C, "xlogpos")?, C, "xlogpos")?;
    let dbname = column(row, 3, C)?.map(str::to_owned);
    Ok(IdentifySystem {
        system_id,
        timeline: tli,
        xlogpos,
        dbname,
    })
}

/// `TIMELINE_HISTORY`: filename, content. The name must be a history file's.
pub fn parse_timeline_history(rows: &[Row]) -> Result<TimelineHistory, ProtocolError> {
    const C: &str = "TIMELINE_HISTORY";
    let row = one_row(rows, C)?;
    let name = required(row, 0, C, "filename")?;
    let filename = WalFileName::parse(name)
        .ok()
        .filter(|f| f.kind() == WalFileKind::History)
        .ok_or_else(|| bad(C, "filename", name, "not a timeline history file name"))?;
    let content = required(row, 1, C, "content")?.as_bytes().to_vec();
    Ok(TimelineHistory { filename, content })
}

/// `CREATE_REPLICATION_SLOT`: slot_name, consistent_point, snapshot_name, output_plugin.
pub fn parse_created_slot(rows: &[Row]) -> Result<CreatedSlot, ProtocolError> {
    const C: &str = "CREATE_REPLICATION_SLOT";
    let row = one_row(rows, C)?;
    let slot_name = required(row, 0, C, "slot_name")?.to_owned();
    let consistent_point = lsn(
        required(row, 1, C, "consistent_point")?,
        C,
        "consistent_point",
    )?;
    Ok(CreatedSlot {
        slot_name,
        consistent_point,
    })
}

/// `READ_REPLICATION_SLOT`: slot_type, restart_lsn, restart_tli; all NULL (None here) when
/// no slot has the name.
pub fn parse_read_replication_slot(rows: &[Row]) -> Result<Option<ReplicationSlot>, ProtocolError> {
    const C: &str = "READ_REPLICATION_SLOT";
    let row = one_row(rows, C)?;
    let slot_type = match column(row, 0, C)? {
        None => return Ok(None),
        Some("physical") => SlotType::Physical,
        Some("logical") => SlotType::Logical,
        Some(other) => return Err(bad(C, "slot_type", other, "neither physical nor logical")),
    };
    let restart_lsn = column(row, 1, C)?
        .map(|v| lsn(v, C, "restart_lsn"))
        .transpose()?;
    let restart_tli = column(row, 2, C)?
        .map(|v| timeline(v, C, "restart_tli"))
        .transpose()?;
    Ok(Some(ReplicationSlot {
        slot_type,
        restart_lsn,
        restart_tli,
    }))
}

/// `BASE_BACKUP`'s start or end position: recptr, tli.
pub fn parse_backup_position(rows: &[Row]) -> Result<BackupPosition, ProtocolError> {
    const C: &str = "BASE_BACKUP";
    let row = one_row(rows, C)?;
    Ok(BackupPosition {
        lsn: lsn(required(row, 0, C, "recptr")?, C, "recptr")?,
        timeline: timeline(required(row, 1, C, "tli")?, C, "tli")?,
    })
}

/// `BASE_BACKUP`'s tablespace list: spcoid, spclocation, size; the main data directory has
/// neither oid nor location. Exactly one main data directory, each oid once.
pub fn parse_backup_tablespaces(rows: &[Row]) -> Result<Vec<BackupTablespace>, ProtocolError> {
    const C: &str = "BASE_BACKUP";
    let mut tablespaces = Vec::with_capacity(rows.len().min(1024));
    let mut oids = HashSet::new();
    let mut base = false;
    for row in rows {
        let oid = column(row, 0, C)?
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|&oid| oid != 0)
                    .ok_or_else(|| bad(C, "spcoid", v, "not an OID"))
            })
            .transpose()?;
        let location = column(row, 1, C)?.map(str::to_owned);
        let size_kb = column(row, 2, C)?
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|&size| size >= 0)
                    .ok_or_else(|| bad(C, "size", v, "not a size in kB"))
            })
            .transpose()?;
        match (oid, &location) {
            (None, None) => {
                if std::mem::replace(&mut base, true) {
                    return Err(ProtocolError::BadTablespaceList(
                        "the main data directory twice",
                    ));
                }
            }
            (Some(oid), Some(location)) => {
                if location.is_empty() {
                    return Err(ProtocolError::BadTablespaceList(
                        "a tablespace without a location",
                    ));
                }
                if !oids.insert(oid) {
                    return Err(ProtocolError::BadTablespaceList("a tablespace twice"));
                }
            }
            _ => {
                return Err(ProtocolError::BadTablespaceList(
                    "a tablespace with an OID or a location but not both",
                ));
            }
        }
        tablespaces.push(BackupTablespace {
            oid,
            location,
            size_kb,
        });
    }
    if !base {
        return Err(ProtocolError::BadTablespaceList("no main data directory"));
    }
    Ok(tablespaces)
}

/// The result set after `START_REPLICATION`'s CopyDone when the server's timeline ended:
/// next_tli, next_tli_startpos.
pub fn parse_timeline_switch(rows: &[Row]) -> Result<TimelineSwitch, ProtocolError> {
    const C: &str = "START_REPLICATION";
    let row = one_row(rows, C)?;
    Ok(TimelineSwitch {
        next_timeline: timeline(required(row, 0, C, "next_tli")?, C, "next_tli")?,
        start: lsn(
            required(row, 1, C, "next_tli_startpos")?,
            C,
            "next_tli_startpos",
        )?,
    })
}

/// `SHOW wal_segment_size` as the server prints it (`16MB`, `1GB`, `512kB`, or a bare byte
/// count) in bytes; only sizes PostgreSQL accepts.
pub fn parse_wal_segment_size(rows: &[Row]) -> Result<u64, ProtocolError> {
    const C: &str = "SHOW wal_segment_size";
    let row = one_row(rows, C)?;
    let text = required(row, 0, C, "wal_segment_size")?;
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return Err(bad(C, "wal_segment_size", text, "not a size")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|&size| crate::pg::is_valid_wal_segment_size(size))
        .ok_or_else(|| {
            bad(
                C,
                "wal_segment_size",
                text,
                "not a WAL segment size (1MB to 1GB, a power of two)",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(columns: &[Option<&str>]) -> Row {
        columns.iter().map(|c| c.map(str::to_owned)).collect()
    }

    #[test]
    fn identify_system() {
        let rows = vec![row(&[
            Some("7301234567890123457"),
            Some("1"),
            Some("0/1A2B3C8"),
            None,
        ])];
        assert_eq!(
            parse_identify_system(&rows).unwrap(),
            IdentifySystem {
                system_id: 7301234567890123457,
                timeline: 1,
                xlogpos: Lsn(0x1A2B3C8),
                dbname: None,
            }
        );
        // PostgreSQL 18 pads the low half (%X/%08X).
        let rows = vec![row(&[
            Some("1"),
            Some("-2"),
            Some("0/01A2B3C8"),
            Some("db"),
        ])];
        let id = parse_identify_system(&rows).unwrap();
        assert_eq!(
            (id.timeline, id.xlogpos, id.dbname.as_deref()),
            (u32::MAX - 1, Lsn(0x1A2B3C8), Some("db"))
        );
    }

    #[test]
    fn identify_system_errors() {
        assert_eq!(
            parse_identify_system(&[]),
            Err(ProtocolError::RowCount {
                command: "IDENTIFY_SYSTEM",
                rows: 0
            })
        );
        let short = vec![row(&[Some("1"), Some("1"), Some("0/0")])];
        assert_eq!(
            parse_identify_system(&short),
            Err(ProtocolError::ColumnCount {
                command: "IDENTIFY_SYSTEM",
                columns: 3,
                expected: 4
            })
        );
        for bad_row in [
            row(&[None, Some("1"), Some("0/0"), None]),
            row(&[Some("x"), Some("1"), Some("0/0"), None]),
            row(&[Some("1"), Some("0"), Some("0/0"), None]),
            row(&[Some("1"), Some("1"), Some("0-0"), None]),
        ] {
            assert!(parse_identify_system(&[bad_row]).is_err());
        }
    }

    #[test]
    fn timeline_history() {
        let rows = vec![row(&[
            Some("00000002.history"),
            Some("1\t0/3000158\tno recovery target specified\n"),
        ])];
        let history = parse_timeline_history(&rows).unwrap();
        assert_eq!(history.filename.timeline(), 2);
        assert!(history.content.starts_with(b"1\t0/3000158"));
        let bad_name = vec![row(&[Some("000000010000000000000001"), Some("")])];
        assert!(parse_timeline_history(&bad_name).is_err());
    }

    #[test]
    fn slots() {
        let rows = vec![row(&[Some("pitr_1"), Some("0/0"), None, None])];
        assert_eq!(
            parse_created_slot(&rows).unwrap(),
            CreatedSlot {
                slot_name: "pitr_1".into(),
                consistent_point: Lsn(0)
            }
        );
        let rows = vec![row(&[Some("physical"), Some("0/3000000"), Some("1")])];
        assert_eq!(
            parse_read_replication_slot(&rows).unwrap(),
            Some(ReplicationSlot {
                slot_type: SlotType::Physical,
                restart_lsn: Some(Lsn(0x3000000)),
                restart_tli: Some(1)
            })
        );
        let missing = vec![row(&[None, None, None])];
        assert_eq!(parse_read_replication_slot(&missing).unwrap(), None);
        let odd = vec![row(&[Some("weird"), None, None])];
        assert!(parse_read_replication_slot(&odd).is_err());
    }

    #[test]
    fn backup_positions_and_tablespaces() {
        let start = vec![row(&[Some("0/2000028"), Some("1")])];
        assert_eq!(
            parse_backup_position(&start).unwrap(),
            BackupPosition {
                lsn: Lsn(0x2000028),
                timeline: 1
            }
        );
        let list = vec![
            row(&[Some("16400"), Some("/srv/ts"), Some("7")]),
            row(&[None, None, Some("23456")]),
        ];
        let tablespaces = parse_backup_tablespaces(&list).unwrap();
        assert_eq!(
            tablespaces,
            vec![
                BackupTablespace {
                    oid: Some(16400),
                    location: Some("/srv/ts".into()),
                    size_kb: Some(7)
                },
                BackupTablespace {
                    oid: None,
                    location: None,
                    size_kb: Some(23456)
                },
            ]
        );
        assert_eq!(tablespaces[0].archive_name(), "16400.tar");
        assert_eq!(tablespaces[1].archive_name(), "base.tar");
        let without_progress = vec![row(&[None, None, None])];
        assert_eq!(
            parse_backup_tablespaces(&without_progress).unwrap()[0].size_kb,
            None
        );
    }

    #[test]
    fn bad_tablespace_lists() {
        for list in [
            vec![],
            vec![row(&[Some("16400"), Some("/srv/ts"), None])],
            vec![row(&[None, None, None]), row(&[None, None, None])],
            vec![
                row(&[None, None, None]),
                row(&[Some("1"), Some("/a"), None]),
                row(&[Some("1"), Some("/b"), None]),
            ],
            vec![row(&[None, None, None]), row(&[Some("1"), None, None])],
            vec![row(&[None, Some("/a"), None])],
            vec![row(&[None, None, Some("-1")])],
            vec![
                row(&[Some("0"), Some("/a"), None]),
                row(&[None, None, None]),
            ],
            vec![row(&[None, None])],
        ] {
            assert!(parse_backup_tablespaces(&list).is_err(), "{list:?}");
        }
    }

    #[test]
    fn timeline_switch() {
        let rows = vec![row(&[Some("3"), Some("0/5000000")])];
        assert_eq!(
            parse_timeline_switch(&rows).unwrap(),
            TimelineSwitch {
                next_timeline: 3,
                start: Lsn(0x5000000)
            }
        );
    }

    #[test]
    fn wal_segment_size() {
        for (text, size) in [
            ("16MB", 16u64 << 20),
            ("1GB", 1 << 30),
            ("1024kB", 1 << 20),
            ("16777216", 16 << 20),
        ] {
            assert_eq!(
                parse_wal_segment_size(&[row(&[Some(text)])]).unwrap(),
                size,
                "{text}"
            );
        }
        for text in ["", "MB", "15MB", "2GB", "16 XB", "99999999999999999999GB"] {
            assert!(
                parse_wal_segment_size(&[row(&[Some(text)])]).is_err(),
                "{text}"
            );
        }
    }
}
