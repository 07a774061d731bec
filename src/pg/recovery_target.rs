//! Recovery targets as users write them, and as PostgreSQL reads them.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

use super::Lsn;
use super::guc::quote;

/// Where recovery stops (`recovery_target_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// Replay all available WAL.
    #[default]
    End,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time(DateTime<Utc>),
    Lsn(Lsn),
    Xid(u32),
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::End => f.write_str("all the WAL in the repository"),
            Target::Immediate => f.write_str("the end of the backup (the first consistent point)"),
            Target::Time(t) => write!(f, "{} (UTC)", t.format("%Y-%m-%d %H:%M:%S%.6f")),
            Target::Lsn(lsn) => write!(f, "LSN {lsn}"),
            Target::Xid(xid) => write!(f, "the commit of transaction {xid}"),
            Target::Name(name) => write!(f, "restore point '{name}'"),
        }
    }
}

/// `recovery_target_timeline`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetTimeline {
    /// The newest timeline in the archive (PostgreSQL's default since 12).
    #[default]
    Latest,
    /// The backup's own timeline.
    Current,
    Number(u32),
}

impl std::str::FromStr for TargetTimeline {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = match text {
            "latest" => return Ok(TargetTimeline::Latest),
            "current" => return Ok(TargetTimeline::Current),
            hex if hex.starts_with("0x") => u32::from_str_radix(&hex[2..], 16).ok(),
            decimal => decimal.parse().ok(),
        };
        number
            .filter(|&t| t > 0)
            .map(TargetTimeline::Number)
            .ok_or_else(|| format!("'{text}' is not latest, current or a timeline number"))
    }
}

impl fmt::Display for TargetTimeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetTimeline::Latest => f.write_str("latest"),
            TargetTimeline::Current => f.write_str("current"),
            TargetTimeline::Number(n) => write!(f, "{n}"),
        }
    }
}

/// `recovery_target_action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetAction {
    Pause,
    Promote,
    Shutdown,
}

impl std::str::FromStr for TargetAction {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "pause" => Ok(TargetAction::Pause),
            "promote" => Ok(TargetAction::Promote),
            "shutdown" => Ok(TargetAction::Shutdown),
            _ => Err(format!("'{text}' is not pause, promote or shutdown")),
        }
    }
}

impl fmt::Display for TargetAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        })
    }
}

/// What a restore asks of recovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryRequest {
    pub target: Target,
    /// None: PostgreSQL's default (pause).
    pub action: Option<TargetAction>,
    /// None: PostgreSQL's default (latest).
    pub timeline: Option<TargetTimeline>,
}

/// The lines a restore appends to `postgresql.auto.conf`: `restore_command` and the target.
pub fn recovery_settings(restore_command: &str, request: &RecoveryRequest) -> Vec<String> {
    let mut lines = vec![format!("restore_command = {}", quote(restore_command))];
    match &request.target {
        Target::End => {}
        Target::Immediate => lines.push("recovery_target = 'immediate'".into()),
        Target::Time(time) => lines.push(format!(
            "recovery_target_time = {}",
            quote(&postgres_time(time))
        )),
        Target::Lsn(lsn) => lines.push(format!("recovery_target_lsn = '{lsn}'")),
        Target::Xid(xid) => lines.push(format!("recovery_target_xid = '{xid}'")),
        Target::Name(name) => lines.push(format!("recovery_target_name = {}", quote(name))),
    }
    if request.target != Target::End
        && let Some(action) = request.action
    {
        lines.push(format!("recovery_target_action = '{action}'"));
    }
    if let Some(timeline) = request.timeline {
        lines.push(format!("recovery_target_timeline = '{timeline}'"));
    }
    lines
}

/// Parses a target time: RFC 3339, or PostgreSQL's `YYYY-MM-DD HH:MM:SS[.ffffff]` followed by
/// a zone (`+02`, `+0200`, `+02:00`, `Z`, `UTC`). A time without a zone is refused: the
/// restored server would read it in its own time zone, which is a trap.
pub fn parse_target_time(text: &str) -> Result<DateTime<Utc>, String> {
    let trimmed = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(time.with_timezone(&Utc));
    }
    let normalized = trimmed
        .strip_suffix(" UTC")
        .or_else(|| trimmed.strip_suffix("UTC"))
        .or_else(|| trimmed.strip_suffix('Z'))
        .map(|t| format!("{}+00", t.trim_end()))
        .unwrap_or_else(|| trimmed.to_owned())
        .replacen('T', " ", 1);
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f %#z"] {
        if let Ok(time) = DateTime::<FixedOffset>::parse_from_str(&normalized, format) {
            return Ok(time.with_timezone(&Utc));
        }
    }
    if NaiveDateTime::parse_from_str(&normalized, "%Y-%m-%d %H:%M:%S%.f").is_ok() {
        return Err(format!(
            "target time '{text}' has no time zone: write it with one, e.g. '{text}+00' or \
             '{}Z' (PostgreSQL would read it in the restored server's time zone)",
            trimmed.replacen(' ', "T", 1)
        ));
    }
    Err(format!(
        "target time '{text}' is not a time: use RFC 3339 ('2026-11-21T14:29:00+01:00') or \
         PostgreSQL's form ('2026-11-21 14:29:00+01')"
    ))
}

/// The time as PostgreSQL reads `recovery_target_time`, in UTC.
pub fn postgres_time(time: &DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_one_target_and_quote_values() {
        let request = RecoveryRequest {
            target: Target::Name("it's".into()),
            action: Some(TargetAction::Promote),
            timeline: Some(TargetTimeline::Number(3)),
        };
        assert_eq!(
            recovery_settings("/bin/pitr archive-get %f %p", &request),
            vec![
                "restore_command = '/bin/pitr archive-get %f %p'",
                "recovery_target_name = 'it''s'",
                "recovery_target_action = 'promote'",
                "recovery_target_timeline = '3'",
            ]
        );
        // Replaying everything has no target, so no action either.
        let end = RecoveryRequest {
            action: Some(TargetAction::Pause),
            ..RecoveryRequest::default()
        };
        assert_eq!(recovery_settings("x", &end).len(), 1);
    }

    #[test]
    fn timelines_parse_as_postgresql_reads_them() {
        assert_eq!("latest".parse(), Ok(TargetTimeline::Latest));
        assert_eq!("current".parse(), Ok(TargetTimeline::Current));
        assert_eq!("0x1A".parse(), Ok(TargetTimeline::Number(26)));
        assert_eq!("7".parse(), Ok(TargetTimeline::Number(7)));
        for bad in ["0", "-1", "newest", "0x"] {
            assert!(bad.parse::<TargetTimeline>().is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_rfc3339_and_postgresql_forms() {
        let expected = "2026-11-21 13:29:00.000000+00";
        for text in [
            "2026-11-21T14:29:00+01:00",
            "2026-11-21T13:29:00Z",
            "2026-11-21 14:29:00+01",
            "2026-11-21 14:29:00+0100",
            "2026-11-21 14:29:00+01:00",
            "2026-11-21 13:29:00 UTC",
            "2026-11-21 13:29:00Z",
            "2026-11-21 13:29:00 +00",
        ] {
            let time = parse_target_time(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(postgres_time(&time), expected, "{text}");
        }
        let precise = parse_target_time("2026-11-21 13:29:00.123456+00").unwrap();
        assert_eq!(postgres_time(&precise), "2026-11-21 13:29:00.123456+00");
    }

    #[test]
    fn refuses_times_without_a_zone_and_explains() {
        let err = parse_target_time("2026-11-21 14:29:00").unwrap_err();
        assert!(err.contains("no time zone"), "{err}");
        assert!(err.contains("2026-11-21 14:29:00+00"), "{err}");
        assert!(
            parse_target_time("yesterday")
                .unwrap_err()
                .contains("not a time")
        );
    }
}
