//! Timeline history files (`00000002.history`, timeline.c): one line per ancestor,
//! `parentTLI <tab> switchpoint <tab> reason`.

use super::{Lsn, PgFormatError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The timeline that was left.
    pub timeline: u32,
    /// Where it was left: the first LSN of the next timeline.
    pub switchpoint: Lsn,
}

/// Parses a history file; comments (`#`) and blank lines are skipped as PostgreSQL does.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "line {}: expected 'timeline switchpoint reason'",
                number + 1
            ));
        };
        let timeline: u32 = tli
            .parse()
            .map_err(|_| format!("line {}: '{tli}' is not a timeline", number + 1))?;
        let switchpoint: Lsn = lsn
            .parse()
            .map_err(|e: PgFormatError| format!("line {}: {e}", number + 1))?;
        if let Some(previous) = entries.last() {
            if timeline <= previous.timeline {
                return Err(format!("line {}: timelines must increase", number + 1));
            }
            if switchpoint < previous.switchpoint {
                return Err(format!(
                    "line {}: switch points must not go back",
                    number + 1
                ));
            }
        }
        entries.push(HistoryEntry {
            timeline,
            switchpoint,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgresql_history_files() {
        let text = "1\t0/3000158\tno recovery target specified\n\n\
                    2\t0/5000000\tat restore point \"before\"\n";
        assert_eq!(
            parse_history(text).unwrap(),
            vec![
                HistoryEntry {
                    timeline: 1,
                    switchpoint: Lsn(0x300_0158)
                },
                HistoryEntry {
                    timeline: 2,
                    switchpoint: Lsn(0x500_0000)
                },
            ]
        );
    }

    #[test]
    fn refuses_what_postgresql_would_not_write() {
        for bad in [
            "x\t0/1\tr",
            "1\tnope\tr",
            "1",
            "2\t0/5\tr\n1\t0/6\tr",
            "1\t0/5\tr\n2\t0/4\tr",
        ] {
            assert!(parse_history(bad).is_err(), "{bad:?}");
        }
    }
}
