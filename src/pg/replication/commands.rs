//! The replication commands as the text of a simple query, per version (repl_gram.y and
//! repl_scanner.l of each release; protocol-replication.html).
//!
//! Quoting follows the replication scanner, not SQL's: a string literal is `'…'` with `''`
//! for a quote and no backslash escapes (there is no `E'…'`), an identifier is `"…"`. Slot
//! names are always double-quoted: unquoted, a name such as `physical` or `1st` would lex as a
//! keyword or a number.

use super::{CommandError, Syntax};
use crate::pg::Lsn;

/// PostgreSQL refuses longer labels (`MAXPGPATH` in `do_pg_backup_start`).
pub const MAX_LABEL_BYTES: usize = 1024;
/// `MAX_RATE`'s bounds in kB/s (`MAX_RATE_LOWER`, `MAX_RATE_UPPER` in basebackup.h).
pub const MIN_RATE_KB: u32 = 32;
pub const MAX_RATE_KB: u32 = 1_048_576;

/// `NAMEDATALEN - 1`.
const MAX_SLOT_NAME_BYTES: usize = 63;

/// A base backup as pitr asks for it; [`base_backup`] writes it in each version's syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseBackupRequest {
    /// Written to backup_label's `LABEL:` line.
    pub label: String,
    /// An immediate checkpoint (`FAST`, `CHECKPOINT 'fast'`) rather than a spread one.
    pub fast: bool,
    /// Server-side throttling in kB/s (`MAX_RATE`), 32 to 1048576.
    pub max_rate_kb: Option<u32>,
    /// Ask the server to size each tablespace first (`PROGRESS`): the tablespace rows then
    /// carry sizes, and on 15+ the stream carries progress messages.
    pub progress: bool,
    /// Ask for the server's backup_manifest with CRC32C checksums.
    pub manifest: bool,
    /// Put the WAL the backup needs into the base archive (`WAL`). Off by default: pitr takes
    /// WAL from its archive or from a second replication connection.
    pub wal: bool,
    /// Let the end of the backup wait until the server has archived its last WAL segment
    /// (the default; `NOWAIT` / `WAIT false` when off). Off where WAL arrives otherwise (in
    /// the archive or over a second connection), as pg_basebackup does with `-X`.
    pub wait_for_archive: bool,
    /// The server compresses each tar archive with LZ4 before sending it (`COMPRESSION
    /// 'lz4'`, PostgreSQL 15 and later, where built with lz4); the manifest stays plain.
    pub server_lz4: bool,
}

impl Default for BaseBackupRequest {
    fn default() -> Self {
        BaseBackupRequest {
            label: String::from("pitr base backup"),
            fast: false,
            max_rate_kb: None,
            progress: true,
            manifest: true,
            wal: false,
            wait_for_archive: true,
            server_lz4: false,
        }
    }
}

/// `'text'` as the replication scanner reads it: a quote doubled, nothing else escaped. None
/// for text holding NUL, which a query string cannot carry.
pub fn quote_literal(text: &str) -> Option<String> {
    if text.contains('\0') {
        return None;
    }
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for c in text.chars() {
        if c == '\'' {
            quoted.push('\'');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    Some(quoted)
}

/// `"name"`, a quote doubled. None for text holding NUL.
pub fn quote_identifier(name: &str) -> Option<String> {
    if name.contains('\0') {
        return None;
    }
    Some(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// A slot name PostgreSQL accepts (`ReplicationSlotValidateName`): 1 to 63 lower-case
/// letters, digits and underscores.
pub fn validate_slot_name(name: &str) -> Result<(), CommandError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SLOT_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(CommandError::InvalidSlotName(name.to_owned()))
    }
}

fn slot_identifier(name: &str) -> Result<String, CommandError> {
    validate_slot_name(name)?;
    // Valid names hold no quote or NUL.
    Ok(format!("\"{name}\""))
}

fn valid_timeline(timeline: u32) -> Result<u32, CommandError> {
    if timeline == 0 {
        Err(CommandError::InvalidTimeline(timeline))
    } else {
        Ok(timeline)
    }
}

pub fn identify_system() -> String {
    String::from("IDENTIFY_SYSTEM")
}

/// `SHOW name` (allowed on a replication connection since 10), e.g. `wal_segment_size`.
pub fn show_setting(name: &str) -> Result<String, CommandError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SLOT_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if valid {
        Ok(format!("SHOW {name}"))
    } else {
        Err(CommandError::InvalidSettingName(name.to_owned()))
    }
}

/// `TIMELINE_HISTORY tli`: the history file of a timeline above 1.
pub fn timeline_history(timeline: u32) -> Result<String, CommandError> {
    Ok(format!("TIMELINE_HISTORY {}", valid_timeline(timeline)?))
}

/// A physical slot; `reserve_wal` makes it hold WAL from the moment it exists rather than
/// from the first `START_REPLICATION`. A temporary slot goes with the connection.
pub fn create_physical_slot(
    syntax: Syntax,
    name: &str,
    temporary: bool,
    reserve_wal: bool,
) -> Result<String, CommandError> {
    let mut command = format!("CREATE_REPLICATION_SLOT {}", slot_identifier(name)?);
    if temporary {
        command.push_str(" TEMPORARY");
    }
    command.push_str(" PHYSICAL");
    if reserve_wal {
        command.push_str(match syntax {
            Syntax::Positional => " RESERVE_WAL",
            Syntax::OptionList => " (RESERVE_WAL)",
        });
    }
    Ok(command)
}

/// `DROP_REPLICATION_SLOT name WAIT`: waits for a walsender still using the slot rather than
/// failing.
pub fn drop_slot(name: &str) -> Result<String, CommandError> {
    Ok(format!(
        "DROP_REPLICATION_SLOT {} WAIT",
        slot_identifier(name)?
    ))
}

/// `READ_REPLICATION_SLOT name`, which PostgreSQL 15 introduced.
pub fn read_replication_slot(syntax: Syntax, name: &str) -> Result<String, CommandError> {
    match syntax {
        Syntax::Positional => Err(CommandError::NeedsOptionList {
            command: "READ_REPLICATION_SLOT",
            syntax,
        }),
        Syntax::OptionList => Ok(format!("READ_REPLICATION_SLOT {}", slot_identifier(name)?)),
    }
}

/// `START_REPLICATION [SLOT name] PHYSICAL start TIMELINE tli`: the same in 13 to 18.
pub fn start_replication(
    slot: Option<&str>,
    start: Lsn,
    timeline: u32,
) -> Result<String, CommandError> {
    let timeline = valid_timeline(timeline)?;
    let slot = match slot {
        Some(name) => format!("SLOT {} ", slot_identifier(name)?),
        None => String::new(),
    };
    Ok(format!(
        "START_REPLICATION {slot}PHYSICAL {start} TIMELINE {timeline}"
    ))
}

/// `BASE_BACKUP` in the server's syntax. TABLESPACE_MAP is always asked for: pitr keeps the
/// map with the backup to recreate the tablespace links at restore.
pub fn base_backup(syntax: Syntax, request: &BaseBackupRequest) -> Result<String, CommandError> {
    if request.label.len() > MAX_LABEL_BYTES {
        return Err(CommandError::InvalidLabel("it is too long"));
    }
    if request.label.contains(['\n', '\r']) {
        return Err(CommandError::InvalidLabel("it spans lines"));
    }
    let label = quote_literal(&request.label)
        .ok_or(CommandError::InvalidLabel("it holds a NUL character"))?;
    let out_of_range = |rate: &u32| !(MIN_RATE_KB..=MAX_RATE_KB).contains(rate);
    if let Some(rate) = request.max_rate_kb.filter(out_of_range) {
        return Err(CommandError::MaxRateOutOfRange(rate));
    }
    let positional = syntax == Syntax::Positional;
    if request.server_lz4 && positional {
        return Err(CommandError::NeedsOptionList {
            command: "BASE_BACKUP (COMPRESSION)",
            syntax,
        });
    }
    // The options are the same on every version (but COMPRESSION, 15's); only how some are
    // spelled, and how the list is written, differ.
    let mut options: Vec<String> = Vec::with_capacity(9);
    options.push(format!("LABEL {label}"));
    if request.progress {
        options.push("PROGRESS".into());
    }
    if positional {
        if request.fast {
            options.push("FAST".into());
        }
    } else {
        let checkpoint = if request.fast { "fast" } else { "spread" };
        options.push(format!("CHECKPOINT '{checkpoint}'"));
    }
    if request.wal {
        options.push("WAL".into());
    }
    if !request.wait_for_archive {
        options.push(if positional { "NOWAIT" } else { "WAIT false" }.into());
    }
    if let Some(rate) = request.max_rate_kb {
        options.push(format!("MAX_RATE {rate}"));
    }
    options.push("TABLESPACE_MAP".into());
    if request.server_lz4 {
        options.push("COMPRESSION 'lz4'".into());
    }
    if request.manifest {
        options.push("MANIFEST 'yes'".into());
        options.push("MANIFEST_CHECKSUMS 'CRC32C'".into());
    }
    Ok(if positional {
        format!("BASE_BACKUP {}", options.join(" "))
    } else {
        format!("BASE_BACKUP ({})", options.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> BaseBackupRequest {
        BaseBackupRequest {
            label: String::from("pitr 20261207T053000Z"),
            fast: true,
            max_rate_kb: Some(1024),
            progress: true,
            manifest: true,
            wal: false,
            wait_for_archive: false,
            server_lz4: false,
        }
    }

    #[test]
    fn base_backup_positional_for_13_and_14() {
        for major in [13, 14] {
            let syntax = Syntax::for_major(major).unwrap();
            assert_eq!(
                base_backup(syntax, &request()).unwrap(),
                "BASE_BACKUP LABEL 'pitr 20261207T053000Z' PROGRESS FAST NOWAIT MAX_RATE 1024 \
                 TABLESPACE_MAP MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"
            );
        }
    }

    #[test]
    fn base_backup_option_list_from_15() {
        for major in [15, 16, 17, 18, 19] {
            let syntax = Syntax::for_major(major).unwrap();
            assert_eq!(
                base_backup(syntax, &request()).unwrap(),
                "BASE_BACKUP (LABEL 'pitr 20261207T053000Z', PROGRESS, CHECKPOINT 'fast', \
                 WAIT false, MAX_RATE 1024, TABLESPACE_MAP, MANIFEST 'yes', \
                 MANIFEST_CHECKSUMS 'CRC32C')"
            );
        }
    }

    #[test]
    fn server_compression_from_15_only() {
        let compressed = BaseBackupRequest {
            server_lz4: true,
            ..request()
        };
        assert_eq!(
            base_backup(Syntax::OptionList, &compressed).unwrap(),
            "BASE_BACKUP (LABEL 'pitr 20261207T053000Z', PROGRESS, CHECKPOINT 'fast', \
             WAIT false, MAX_RATE 1024, TABLESPACE_MAP, COMPRESSION 'lz4', MANIFEST 'yes', \
             MANIFEST_CHECKSUMS 'CRC32C')"
        );
        assert!(matches!(
            base_backup(Syntax::Positional, &compressed),
            Err(CommandError::NeedsOptionList { .. })
        ));
    }

    #[test]
    fn base_backup_defaults_and_wal() {
        let plain = BaseBackupRequest {
            label: "x".into(),
            progress: false,
            manifest: false,
            wal: true,
            ..BaseBackupRequest::default()
        };
        assert_eq!(
            base_backup(Syntax::Positional, &plain).unwrap(),
            "BASE_BACKUP LABEL 'x' WAL TABLESPACE_MAP"
        );
        assert_eq!(
            base_backup(Syntax::OptionList, &plain).unwrap(),
            "BASE_BACKUP (LABEL 'x', CHECKPOINT 'spread', WAL, TABLESPACE_MAP)"
        );
    }

    #[test]
    fn label_quotes_are_doubled_and_bad_labels_refused() {
        let quoted = BaseBackupRequest {
            label: "it's \\ \"here\"".into(),
            ..request()
        };
        let command = base_backup(Syntax::OptionList, &quoted).unwrap();
        assert!(
            command.starts_with("BASE_BACKUP (LABEL 'it''s \\ \"here\"', "),
            "{command}"
        );
        for (label, what) in [
            ("a\0b", "it holds a NUL character"),
            ("a\nb", "it spans lines"),
            ("a\rb", "it spans lines"),
        ] {
            let bad = BaseBackupRequest {
                label: label.into(),
                ..request()
            };
            assert_eq!(
                base_backup(Syntax::Positional, &bad),
                Err(CommandError::InvalidLabel(what))
            );
        }
        let long = BaseBackupRequest {
            label: "x".repeat(MAX_LABEL_BYTES + 1),
            ..request()
        };
        assert!(base_backup(Syntax::OptionList, &long).is_err());
        let longest = BaseBackupRequest {
            label: "x".repeat(MAX_LABEL_BYTES),
            ..request()
        };
        assert!(base_backup(Syntax::OptionList, &longest).is_ok());
    }

    #[test]
    fn max_rate_bounds() {
        for (rate, ok) in [
            (31, false),
            (32, true),
            (1_048_576, true),
            (1_048_577, false),
        ] {
            let req = BaseBackupRequest {
                max_rate_kb: Some(rate),
                ..request()
            };
            assert_eq!(base_backup(Syntax::OptionList, &req).is_ok(), ok, "{rate}");
            assert_eq!(base_backup(Syntax::Positional, &req).is_ok(), ok, "{rate}");
        }
    }

    #[test]
    fn slot_commands_per_version() {
        assert_eq!(
            create_physical_slot(Syntax::Positional, "pitr_1", true, true).unwrap(),
            "CREATE_REPLICATION_SLOT \"pitr_1\" TEMPORARY PHYSICAL RESERVE_WAL"
        );
        assert_eq!(
            create_physical_slot(Syntax::OptionList, "pitr_1", true, true).unwrap(),
            "CREATE_REPLICATION_SLOT \"pitr_1\" TEMPORARY PHYSICAL (RESERVE_WAL)"
        );
        assert_eq!(
            create_physical_slot(Syntax::OptionList, "physical", false, false).unwrap(),
            "CREATE_REPLICATION_SLOT \"physical\" PHYSICAL"
        );
        assert_eq!(
            drop_slot("1st").unwrap(),
            "DROP_REPLICATION_SLOT \"1st\" WAIT"
        );
        assert_eq!(
            read_replication_slot(Syntax::OptionList, "s").unwrap(),
            "READ_REPLICATION_SLOT \"s\""
        );
        assert_eq!(
            read_replication_slot(Syntax::Positional, "s"),
            Err(CommandError::NeedsOptionList {
                command: "READ_REPLICATION_SLOT",
                syntax: Syntax::Positional
            })
        );
    }

    #[test]
    fn slot_names_are_validated() {
        validate_slot_name(&"a".repeat(63)).unwrap();
        let too_long = "a".repeat(64);
        for bad in [
            "",
            "Upper",
            "with-dash",
            "sp ace",
            "q\"uote",
            "é",
            too_long.as_str(),
        ] {
            assert_eq!(
                validate_slot_name(bad),
                Err(CommandError::InvalidSlotName(bad.to_owned())),
                "{bad}"
            );
            assert!(drop_slot(bad).is_err());
            assert!(create_physical_slot(Syntax::OptionList, bad, true, true).is_err());
            assert!(start_replication(Some(bad), Lsn(0), 1).is_err());
        }
    }

    #[test]
    fn start_replication_and_timeline_history() {
        assert_eq!(
            start_replication(Some("pitr"), Lsn(0x1_0300_0000), 2).unwrap(),
            "START_REPLICATION SLOT \"pitr\" PHYSICAL 1/3000000 TIMELINE 2"
        );
        assert_eq!(
            start_replication(None, Lsn(0), 1).unwrap(),
            "START_REPLICATION PHYSICAL 0/0 TIMELINE 1"
        );
        assert_eq!(
            start_replication(None, Lsn(0), 0),
            Err(CommandError::InvalidTimeline(0))
        );
        assert_eq!(timeline_history(3).unwrap(), "TIMELINE_HISTORY 3");
        assert!(timeline_history(0).is_err());
        assert_eq!(identify_system(), "IDENTIFY_SYSTEM");
        assert_eq!(
            show_setting("wal_segment_size").unwrap(),
            "SHOW wal_segment_size"
        );
        assert!(show_setting("x; DROP").is_err());
    }

    #[test]
    fn versions_before_13_are_refused() {
        assert_eq!(
            Syntax::for_major(12),
            Err(CommandError::UnsupportedVersion(12))
        );
        assert_eq!(Syntax::for_major(13), Ok(Syntax::Positional));
        assert_eq!(Syntax::for_major(15), Ok(Syntax::OptionList));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("a'b").unwrap(), "'a''b'");
        assert_eq!(quote_literal("").unwrap(), "''");
        assert_eq!(quote_literal("a\0"), None);
        assert_eq!(quote_identifier("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_identifier("\0"), None);
    }
}
