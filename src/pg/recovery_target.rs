//! Recovery targets as users write them, and as PostgreSQL reads them.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

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
