//! libpq's password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`) and connection service
//! file (`pg_service.conf`), pure: contents in, the matching password or service out.

use super::conninfo::{self, ConninfoError, Params};

/// What libpq matches a password file line against.
#[derive(Debug, Clone, Copy)]
pub struct PassKey<'a> {
    pub host: &'a str,
    pub port: &'a str,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The password of the first line of a password file whose `host:port:database:user` match
/// (`*` matches anything, `\:` and `\\` escape); libpq's `passwordFromFile`.
pub fn pgpass_lookup(contents: &str, key: PassKey<'_>) -> Option<String> {
    for line in contents.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = |field: &Field, value: &str| field.wildcard || field.text == value;
        if matches(&fields[0], key.host)
            && matches(&fields[1], key.port)
            && matches(&fields[2], key.dbname)
            && matches(&fields[3], key.user)
        {
            // libpq stops the password at the next unescaped colon.
            return Some(fields[4].text.clone());
        }
    }
    None
}

struct Field {
    text: String,
    /// A bare `*`, not an escaped one.
    wildcard: bool,
}

fn split_fields(line: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut text = String::new();
    let mut escaped_any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    text.push(next);
                    escaped_any = true;
                }
            }
            ':' => {
                fields.push(Field {
                    wildcard: text == "*" && !escaped_any,
                    text: std::mem::take(&mut text),
                });
                escaped_any = false;
            }
            c => text.push(c),
        }
    }
    fields.push(Field {
        wildcard: text == "*" && !escaped_any,
        text,
    });
    fields
}

/// Why libpq would not read a password file with this mode (`st_mode`), if it would not.
pub fn pgpass_mode_problem(mode: u32, is_file: bool) -> Option<&'static str> {
    if !is_file {
        Some("is not a plain file")
    } else if mode & 0o077 != 0 {
        Some("has group or world access; permissions should be u=rw (0600) or less")
    } else {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("line {line}: syntax error in service file")]
    Syntax { line: usize },
    #[error("line {line}: nested \"service\" specifications are not allowed")]
    Nested { line: usize },
    #[error("line {line}: {source}")]
    Keyword {
        line: usize,
        #[source]
        source: ConninfoError,
    },
}

/// The parameters of `[service]` in a service file's `contents`, if it defines it
/// (libpq's `parseServiceFile`: `#` comments, `[name]` sections, `keyword=value` lines).
pub fn service_lookup(contents: &str, service: &str) -> Result<Option<Params>, ServiceError> {
    let mut found: Option<Params> = None;
    for (index, line) in contents.lines().enumerate() {
        let line_number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            if found.is_some() {
                // The section ended.
                break;
            }
            if name.strip_suffix(']') == Some(service) {
                found = Some(Params::new());
            }
            continue;
        }
        let Some(params) = found.as_mut() else {
            continue;
        };
        let (keyword, value) = line
            .split_once('=')
            .ok_or(ServiceError::Syntax { line: line_number })?;
        let keyword = keyword.trim();
        if keyword == "service" {
            return Err(ServiceError::Nested { line: line_number });
        }
        conninfo::check_keyword(keyword).map_err(|source| ServiceError::Keyword {
            line: line_number,
            source,
        })?;
        // libpq keeps the value as written after "=", spaces included.
        params
            .entry(keyword.to_owned())
            .or_insert_with(|| value.to_owned());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: PassKey = PassKey {
        host: "db.example",
        port: "5432",
        dbname: "app",
        user: "alice",
    };

    #[test]
    fn the_first_matching_line_wins() {
        let file = "# comment\n\
                    other:5432:app:alice:nope\n\
                    db.example:5432:app:alice:first\n\
                    *:*:*:*:second\n";
        assert_eq!(pgpass_lookup(file, KEY).as_deref(), Some("first"));
        let wildcard = "*:5432:*:alice:any\n";
        assert_eq!(pgpass_lookup(wildcard, KEY).as_deref(), Some("any"));
        assert_eq!(pgpass_lookup("*:5433:*:*:x\n", KEY), None);
        assert_eq!(pgpass_lookup("too:few:fields\n", KEY), None);
        assert_eq!(pgpass_lookup("", KEY), None);
    }

    #[test]
    fn escapes_and_colons_in_passwords() {
        assert_eq!(
            pgpass_lookup("db.example:5432:app:alice:a\\:b\\\\c\r\n", KEY).as_deref(),
            Some("a:b\\c")
        );
        // libpq ends the password at an unescaped colon.
        assert_eq!(
            pgpass_lookup("db.example:5432:app:alice:a:b\n", KEY).as_deref(),
            Some("a")
        );
        // An escaped star is a literal star.
        assert_eq!(pgpass_lookup("\\*:5432:app:alice:x\n", KEY), None);
        let socket = PassKey {
            host: "/tmp/my:sock",
            ..KEY
        };
        assert_eq!(
            pgpass_lookup("/tmp/my\\:sock:5432:app:alice:s\n", socket).as_deref(),
            Some("s")
        );
    }

    #[test]
    fn group_or_world_access_makes_libpq_ignore_the_file() {
        assert_eq!(pgpass_mode_problem(0o100600, true), None);
        assert_eq!(pgpass_mode_problem(0o100400, true), None);
        assert!(pgpass_mode_problem(0o100640, true).is_some());
        assert!(pgpass_mode_problem(0o100604, true).is_some());
        assert_eq!(
            pgpass_mode_problem(0o040700, false),
            Some("is not a plain file")
        );
    }

    #[test]
    fn service_sections() {
        let file = "# services\n\
                    [other]\nhost=elsewhere\n\n\
                    [main]\nhost=db.example\n port=5433\nsslmode=verify-full\n\
                    [later]\nhost=x\n";
        let params = service_lookup(file, "main").unwrap().unwrap();
        assert_eq!(params.get("host").map(String::as_str), Some("db.example"));
        assert_eq!(params.get("port").map(String::as_str), Some("5433"));
        assert_eq!(params.len(), 3);
        assert_eq!(service_lookup(file, "missing").unwrap(), None);
        assert_eq!(
            service_lookup("[a]\nservice=b\n", "a"),
            Err(ServiceError::Nested { line: 2 })
        );
        assert_eq!(
            service_lookup("[a]\nhost\n", "a"),
            Err(ServiceError::Syntax { line: 2 })
        );
        assert!(matches!(
            service_lookup("[a]\nbogus=1\n", "a"),
            Err(ServiceError::Keyword { line: 2, .. })
        ));
        // Errors in other sections do not matter.
        assert!(service_lookup("[a]\nbogus\n[b]\nhost=x\n", "b").is_ok());
    }
}
