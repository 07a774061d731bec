//! Times as pitr stores and prints them: RFC 3339 in UTC. Stored times keep microseconds,
//! PostgreSQL's resolution, so a commit time read back compares exactly.

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 in UTC, with as many fractional digits as the time has.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// RFC 3339 in UTC with microseconds, the stored form.
pub fn rfc3339_micros(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses RFC 3339 with any offset into UTC.
pub fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `#[serde(with = "micros")]` for a `DateTime<Utc>` stored as RFC 3339 with microseconds.
pub mod micros {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339_micros(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        super::parse_rfc3339(&text)
            .ok_or_else(|| D::Error::custom(format!("'{text}' is not an RFC 3339 time")))
    }
}

/// `#[serde(with = "optional_micros")]` for an `Option<DateTime<Utc>>`.
pub mod optional_micros {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::micros::serialize(time, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::micros")] DateTime<Utc>);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(t)| t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_keep_microseconds_and_read_any_offset() {
        let time = parse_rfc3339("2026-11-21T14:29:00.000123+01:00").unwrap();
        assert_eq!(rfc3339_micros(time), "2026-11-21T13:29:00.000123Z");
        assert_eq!(rfc3339(time), "2026-11-21T13:29:00.000123Z");
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
