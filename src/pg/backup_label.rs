//! `backup_label` and backup history files (`…/000000010000000000000002.00000028.backup`):
//! `KEY: value` lines written by `pg_backup_stop` (xlog.c, `build_backup_content`).
//!
//! ```text
//! START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
//! CHECKPOINT LOCATION: 0/2000060
//! BACKUP METHOD: streamed
//! BACKUP FROM: primary
//! START TIME: 2026-11-22 01:02:03 UTC
//! LABEL: pitr backup 20261122T010203Z
//! START TIMELINE: 1
//! STOP WAL LOCATION: 0/2000138 (file 000000010000000000000002)   (history files only)
//! STOP TIME: 2026-11-22 01:02:04 UTC
//! STOP TIMELINE: 1
//! ```

use super::Lsn;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupLabel {
    pub start_lsn: Lsn,
    /// The segment named in `START WAL LOCATION`.
    pub start_wal_file: String,
    pub checkpoint_lsn: Option<Lsn>,
    pub start_timeline: Option<u32>,
    pub label: Option<String>,
    /// Only in backup history files.
    pub stop_lsn: Option<Lsn>,
    pub stop_timeline: Option<u32>,
    /// `BACKUP FROM: standby` (or `primary`): whether the backup was taken on a standby.
    pub backup_from: Option<String>,
}

/// Parses the text; unknown keys (other versions add some) are skipped.
pub fn parse_backup_label(text: &str) -> Result<BackupLabel, String> {
    let mut label = BackupLabel::default();
    let mut start = None;
    for (number, line) in text.lines().enumerate() {
        let Some((key, value)) = line.split_once(": ") else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("line {}: expected 'KEY: value'", number + 1));
        };
        let at = |e: String| format!("line {}: {key}: {e}", number + 1);
        match key {
            "START WAL LOCATION" => start = Some(location(value).map_err(at)?),
            "STOP WAL LOCATION" => label.stop_lsn = Some(location(value).map_err(at)?.0),
            "CHECKPOINT LOCATION" => {
                label.checkpoint_lsn = Some(value.trim().parse().map_err(|e| at(format!("{e}")))?)
            }
            "START TIMELINE" => label.start_timeline = Some(timeline(value).map_err(at)?),
            "STOP TIMELINE" => label.stop_timeline = Some(timeline(value).map_err(at)?),
            "LABEL" => label.label = Some(value.to_owned()),
            "BACKUP FROM" => label.backup_from = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let (start_lsn, start_wal_file) =
        start.ok_or_else(|| "no START WAL LOCATION line: not a backup label".to_owned())?;
    label.start_lsn = start_lsn;
    label.start_wal_file = start_wal_file;
    Ok(label)
}

/// `0/2000028 (file 000000010000000000000002)`.
fn location(value: &str) -> Result<(Lsn, String), String> {
    let (lsn, file) = value
        .split_once(" (file ")
        .and_then(|(lsn, rest)| Some((lsn, rest.strip_suffix(')')?)))
        .ok_or_else(|| format!("'{value}' is not 'X/X (file NAME)'"))?;
    Ok((
        lsn.trim().parse().map_err(|e| format!("{e}"))?,
        file.to_owned(),
    ))
}

fn timeline(value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse()
        .ok()
        .filter(|&t: &u32| t > 0)
        .ok_or_else(|| format!("'{value}' is not a timeline"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        STOP WAL LOCATION: 0/2000138 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\n\
        BACKUP METHOD: streamed\n\
        BACKUP FROM: primary\n\
        START TIME: 2026-11-22 01:02:03 UTC\n\
        LABEL: pitr backup 20261122T010203Z: with a colon\n\
        START TIMELINE: 1\n\
        STOP TIME: 2026-11-22 01:02:04 UTC\n\
        STOP TIMELINE: 1\n";

    #[test]
    fn parses_a_backup_history_file() {
        let label = parse_backup_label(HISTORY).unwrap();
        assert_eq!(label.start_lsn, Lsn(0x200_0028));
        assert_eq!(label.start_wal_file, "000000010000000000000002");
        assert_eq!(label.stop_lsn, Some(Lsn(0x200_0138)));
        assert_eq!(label.checkpoint_lsn, Some(Lsn(0x200_0060)));
        assert_eq!(
            label.label.as_deref(),
            Some("pitr backup 20261122T010203Z: with a colon")
        );
        assert_eq!(
            (label.start_timeline, label.stop_timeline),
            (Some(1), Some(1))
        );
    }

    #[test]
    fn refuses_what_is_not_a_label() {
        for bad in [
            "",
            "LABEL: x\n",
            "START WAL LOCATION: 0/2000028\n",
            "START WAL LOCATION: zz (file 000000010000000000000002)\n",
            "START WAL LOCATION: 0/1 (file x)\nSTART TIMELINE: 0\n",
            "garbage line\n",
        ] {
            assert!(parse_backup_label(bad).is_err(), "{bad:?}");
        }
    }
}
