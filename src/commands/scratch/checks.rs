//! User checks of a drill (`--checks FILE`): SQL queries, each with what it must return.
//! Parsing and judging are pure; running them is the drill's.
//!
//! ```toml
//! [[check]]
//! name = "orders arrived yesterday"       # optional: the SQL by default
//! database = "shop"                       # optional: postgres by default
//! sql = "SELECT count(*) > 0 FROM orders WHERE placed > now() - interval '1 day'"
//! expect = true                           # the first value of the first row is true
//!
//! [[check]]
//! database = "shop"
//! sql = "SELECT id FROM customers"
//! min_rows = 1000                         # at least this many rows
//!
//! [[check]]
//! sql = "SELECT count(*) FROM pg_database"
//! equals = "4"                            # the first value of the first row, as text
//! ```

use serde::Deserialize;

/// One check as the file states it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserCheck {
    pub name: Option<String>,
    #[serde(default = "default_database")]
    pub database: String,
    pub sql: String,
    pub expect: Option<bool>,
    pub min_rows: Option<u64>,
    pub equals: Option<String>,
}

fn default_database() -> String {
    "postgres".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksFile {
    #[serde(default)]
    check: Vec<UserCheck>,
}

/// What a check expects, exactly one of the three.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expectation {
    True(bool),
    MinRows(u64),
    Equals(String),
}

impl UserCheck {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.sql.clone())
    }

    pub fn expectation(&self) -> Expectation {
        match (&self.expect, &self.min_rows, &self.equals) {
            (Some(b), ..) => Expectation::True(*b),
            (_, Some(n), _) => Expectation::MinRows(*n),
            (.., Some(v)) => Expectation::Equals(v.clone()),
            // parse() lets no check without an expectation through.
            _ => Expectation::MinRows(0),
        }
    }

    /// Judges the rows (every value as text, NULL as None): None when the check passed,
    /// else why it did not.
    pub fn judge(&self, rows: &[Vec<Option<String>>]) -> Option<String> {
        let first = rows.first().and_then(|r| r.first()).cloned().flatten();
        match self.expectation() {
            Expectation::True(want) => {
                let got = first.as_deref().map(|v| matches!(v, "t" | "true"));
                (got != Some(want)).then(|| {
                    format!(
                        "expected {want}, got {}",
                        first
                            .as_deref()
                            .unwrap_or(if rows.is_empty() { "no row" } else { "NULL" })
                    )
                })
            }
            Expectation::MinRows(n) => ((rows.len() as u64) < n)
                .then(|| format!("expected at least {n} rows, got {}", rows.len())),
            Expectation::Equals(want) => (first.as_deref() != Some(want.as_str())).then(|| {
                format!(
                    "expected '{want}', got {}",
                    first.map_or_else(|| "NULL or no row".into(), |v| format!("'{v}'"))
                )
            }),
        }
    }
}

/// Parses a checks file; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Vec<UserCheck>, String> {
    let file: ChecksFile = toml::from_str(text).map_err(|e| {
        format!(
            "{source}: {}",
            e.to_string().lines().collect::<Vec<_>>().join(" ")
        )
    })?;
    if file.check.is_empty() {
        return Err(format!(
            "{source}: no [[check]] table: each check needs sql and one of expect, min_rows, \
             equals"
        ));
    }
    for (index, check) in file.check.iter().enumerate() {
        let stated = [
            check.expect.is_some(),
            check.min_rows.is_some(),
            check.equals.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if stated != 1 {
            return Err(format!(
                "{source}: check {} ({}) must state exactly one of expect, min_rows, equals",
                index + 1,
                check.label()
            ));
        }
    }
    Ok(file.check)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(values: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
        values
            .iter()
            .map(|r| r.iter().map(|v| v.map(str::to_owned)).collect())
            .collect()
    }

    #[test]
    fn each_expectation_is_judged_on_the_rows() {
        let checks = parse(
            r#"
[[check]]
name = "true"
database = "shop"
sql = "SELECT true"
expect = true

[[check]]
sql = "SELECT 1"
min_rows = 2

[[check]]
sql = "SELECT 4"
equals = "4"
"#,
            "checks.toml",
        )
        .unwrap();
        assert_eq!(checks[0].database, "shop");
        assert_eq!(checks[1].database, "postgres");
        assert_eq!(checks[0].judge(&rows(&[&[Some("t")]])), None);
        assert!(checks[0].judge(&rows(&[&[Some("f")]])).is_some());
        assert!(checks[0].judge(&rows(&[&[None]])).unwrap().contains("NULL"));
        assert!(checks[0].judge(&[]).unwrap().contains("no row"));
        assert_eq!(checks[1].judge(&rows(&[&[Some("1")], &[Some("2")]])), None);
        assert!(checks[1].judge(&rows(&[&[Some("1")]])).is_some());
        assert_eq!(checks[2].judge(&rows(&[&[Some("4")]])), None);
        assert!(
            checks[2]
                .judge(&rows(&[&[Some("5")]]))
                .unwrap()
                .contains("'5'")
        );
    }

    #[test]
    fn a_check_must_state_one_expectation() {
        let none = parse("[[check]]\nsql = \"SELECT 1\"\n", "f").unwrap_err();
        assert!(none.contains("exactly one"), "{none}");
        let two = parse(
            "[[check]]\nsql = \"SELECT 1\"\nexpect = true\nmin_rows = 1\n",
            "f",
        )
        .unwrap_err();
        assert!(two.contains("exactly one"), "{two}");
        assert!(parse("", "f").unwrap_err().contains("no [[check]]"));
        assert!(
            parse("[[check]]\nsql = \"x\"\nexpekt = true\n", "f")
                .unwrap_err()
                .contains("expekt")
        );
    }
}
