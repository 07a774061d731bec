//! libpq's connection strings, pure: `keyword = value` pairs and `postgresql://` URLs in,
//! keyword/value parameters out (libpq's `conninfo_parse` and `conninfo_uri_parse`). Errors
//! and [`redact`] never carry a password.

use std::collections::BTreeMap;

/// Parameters by keyword; a later one wins, as in libpq.
pub type Params = BTreeMap<String, String>;

/// Keywords pitr reads.
pub const KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "service",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "application_name",
    "fallback_application_name",
    "options",
    "tcp_user_timeout",
    "load_balance_hosts",
    // Handed to tokio-postgres, which implements them as libpq does.
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "target_session_attrs",
    "channel_binding",
    // Accepted and without effect: pitr's client always speaks UTF8, sends SNI for host
    // names, never compresses.
    "client_encoding",
    "sslsni",
    "sslcompression",
];

/// libpq keywords pitr does not implement: refused by name rather than ignored, since most
/// of them tighten security (a CRL, a minimum TLS version, GSSAPI).
const UNSUPPORTED: &[&str] = &[
    "sslcrl",
    "sslcrldir",
    "sslpassword",
    "sslcertmode",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "sslnegotiation",
    "gssencmode",
    "gsslib",
    "gssdelegation",
    "krbsrvname",
    "requirepeer",
    "require_auth",
    "replication",
    "requiressl",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConninfoError {
    #[error("missing \"=\" after \"{0}\"")]
    MissingEquals(String),
    /// A word that is no `keyword=`: not quoted, since it may be part of a value.
    #[error("a word without \"=\" (values with spaces go in single quotes)")]
    StrayWord,
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    #[error("invalid connection option \"{0}\"")]
    UnknownKeyword(String),
    #[error("pitr does not support the connection option \"{0}\"")]
    Unsupported(String),
    #[error("invalid URI: {0}")]
    Uri(String),
}

/// A keyword of the connection string: known, refused or invalid.
pub fn check_keyword(keyword: &str) -> Result<(), ConninfoError> {
    if KEYWORDS.contains(&keyword) {
        Ok(())
    } else if UNSUPPORTED.contains(&keyword) {
        Err(ConninfoError::Unsupported(keyword.to_owned()))
    } else {
        Err(ConninfoError::UnknownKeyword(keyword.to_owned()))
    }
}

/// Parses `conninfo` in either of libpq's forms.
pub fn parse(conninfo: &str) -> Result<Params, ConninfoError> {
    match uri_rest(conninfo) {
        Some(rest) => parse_uri(rest),
        None => parse_keywords(conninfo),
    }
}

/// What follows `postgresql://` or `postgres://`, for a URL.
fn uri_rest(conninfo: &str) -> Option<&str> {
    conninfo
        .strip_prefix("postgresql://")
        .or_else(|| conninfo.strip_prefix("postgres://"))
}

/// `keyword = value …`, values bare or in single quotes, `\` escaping the next character.
fn parse_keywords(conninfo: &str) -> Result<Params, ConninfoError> {
    let mut params = Params::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut keyword = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            keyword.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // Name the keyword only when it is one: anything else may be part of a value.
            return Err(if KEYWORDS.contains(&&*keyword) {
                ConninfoError::MissingEquals(keyword)
            } else {
                ConninfoError::StrayWord
            });
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConninfoError::UnterminatedQuote),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConninfoError::UnterminatedQuote),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        check_keyword(&keyword)?;
        params.insert(keyword, value);
    }
}

/// `[user[:password]@][host][:port][,…][/dbname][?keyword=value&…]`, percent-decoded.
fn parse_uri(rest: &str) -> Result<Params, ConninfoError> {
    let mut params = Params::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (before_query, None),
    };
    let hosts = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                params.insert("user".into(), decode(user)?);
            }
            if let Some(password) = password {
                params.insert("password".into(), decode(password)?);
            }
            hosts
        }
        None => authority,
    };
    if !hosts.is_empty() {
        let mut host_list = Vec::new();
        let mut port_list = Vec::new();
        for spec in hosts.split(',') {
            let (host, port) = if let Some(bracketed) = spec.strip_prefix('[') {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| ConninfoError::Uri("missing \"]\" in an IPv6 host".into()))?;
                let port = match after {
                    "" => None,
                    after => Some(after.strip_prefix(':').ok_or_else(|| {
                        ConninfoError::Uri("unexpected character after an IPv6 host".into())
                    })?),
                };
                (host.to_owned(), port)
            } else {
                match spec.split_once(':') {
                    Some((host, port)) => (decode(host)?, Some(port)),
                    None => (decode(spec)?, None),
                }
            };
            if let Some(port) = port
                && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(ConninfoError::Uri("invalid port number".into()));
            }
            host_list.push(host);
            port_list.push(port.unwrap_or("").to_owned());
        }
        if host_list.iter().any(|h| !h.is_empty()) {
            params.insert("host".into(), host_list.join(","));
        }
        if port_list.iter().any(|p| !p.is_empty()) {
            params.insert("port".into(), port_list.join(","));
        }
    }
    if let Some(path) = path
        && !path.is_empty()
    {
        params.insert("dbname".into(), decode(path)?);
    }
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (keyword, value) = pair
            .split_once('=')
            .ok_or_else(|| ConninfoError::Uri("a query parameter lacks \"=\"".into()))?;
        let (keyword, value) = (decode(keyword)?, decode(value)?);
        // libpq's JDBC-compatible spelling.
        if keyword == "ssl" && value == "true" {
            params.insert("sslmode".into(), "require".into());
            continue;
        }
        check_keyword(&keyword)?;
        params.insert(keyword, value);
    }
    Ok(params)
}

fn decode(text: &str) -> Result<String, ConninfoError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .filter(|b| *b != 0)
                .ok_or_else(|| ConninfoError::Uri("invalid percent-encoded token".into()))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConninfoError::Uri("not UTF-8 once decoded".into()))
}

/// `conninfo` with every password replaced by `***`, for messages: the value of
/// `password=` (quoted or bare), the password of a URL's user, a URL's `password` parameter.
/// Lenient, since it also shows strings that do not parse.
pub fn redact(conninfo: &str) -> String {
    match uri_rest(conninfo) {
        Some(rest) => {
            let scheme = &conninfo[..conninfo.len() - rest.len()];
            // A password may hold a '/' the user did not percent-encode (base64 passwords
            // do): the user information runs to the last '@' before the query.
            let query_start = rest.find('?').unwrap_or(rest.len());
            let authority_end = match rest[..query_start].rfind('@') {
                Some(at) => at + rest[at..].find(['/', '?']).unwrap_or(rest.len() - at),
                None => rest.find(['/', '?']).unwrap_or(rest.len()),
            };
            let (authority, tail) = rest.split_at(authority_end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, hosts)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***@{hosts}"),
                    None => authority.to_owned(),
                },
                None => authority.to_owned(),
            };
            let tail = match tail.split_once('?') {
                Some((path, query)) => {
                    let query: Vec<String> = query
                        .split('&')
                        .map(|pair| match pair.split_once('=') {
                            Some((k, _)) if k.eq_ignore_ascii_case("password") => {
                                format!("{k}=***")
                            }
                            _ => pair.to_owned(),
                        })
                        .collect();
                    format!("{path}?{}", query.join("&"))
                }
                None => tail.to_owned(),
            };
            format!("{scheme}{authority}{tail}")
        }
        None => redact_keywords(conninfo),
    }
}

fn redact_keywords(conninfo: &str) -> String {
    let mut out = String::new();
    let mut chars = conninfo.chars().peekable();
    // The word being read, and the last one before spaces (`password = x`).
    let mut word = String::new();
    let mut previous = String::new();
    while let Some(c) = chars.next() {
        if c != '=' {
            if c.is_whitespace() {
                if !word.is_empty() {
                    previous = std::mem::take(&mut word);
                }
            } else {
                if word.is_empty() {
                    previous.clear();
                }
                word.push(c);
            }
            out.push(c);
            continue;
        }
        out.push('=');
        let is_password = if word.is_empty() {
            previous == "password"
        } else {
            word == "password"
        };
        word.clear();
        previous.clear();
        while let Some(space) = chars.next_if(|c| c.is_whitespace()) {
            out.push(space);
        }
        if !is_password {
            continue;
        }
        out.push_str("***");
        if chars.next_if_eq(&'\'').is_some() {
            // Up to the closing quote, or the end.
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => break,
                    _ => {}
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    chars.next();
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keyword_value_pairs_as_libpq_reads_them() {
        assert_eq!(
            parse("host=/tmp/x  port = 5433 user=alice dbname='my db' password='it\\'s'").unwrap(),
            params(&[
                ("host", "/tmp/x"),
                ("port", "5433"),
                ("user", "alice"),
                ("dbname", "my db"),
                ("password", "it's"),
            ])
        );
        assert_eq!(
            parse("sslmode=verify-full sslrootcert=/etc/ca.crt host=db password=a\\ b").unwrap(),
            params(&[
                ("sslmode", "verify-full"),
                ("sslrootcert", "/etc/ca.crt"),
                ("host", "db"),
                ("password", "a b"),
            ])
        );
        assert_eq!(parse("  ").unwrap(), Params::new());
        assert_eq!(parse("dbname=''").unwrap(), params(&[("dbname", "")]));
    }

    #[test]
    fn keyword_errors_never_quote_a_value() {
        assert_eq!(
            parse("host=x nonsense").unwrap_err(),
            ConninfoError::StrayWord
        );
        assert_eq!(
            parse("host").unwrap_err(),
            ConninfoError::MissingEquals("host".into())
        );
        assert_eq!(
            parse("password='abc").unwrap_err(),
            ConninfoError::UnterminatedQuote
        );
        assert_eq!(
            parse("hots=x").unwrap_err(),
            ConninfoError::UnknownKeyword("hots".into())
        );
        assert_eq!(
            parse("sslcrl=/x").unwrap_err(),
            ConninfoError::Unsupported("sslcrl".into())
        );
    }

    #[test]
    fn urls_as_libpq_reads_them() {
        assert_eq!(
            parse(
                "postgresql://alice:p%40ss@db.example:5433/app?sslmode=verify-ca&sslrootcert=/ca"
            )
            .unwrap(),
            params(&[
                ("user", "alice"),
                ("password", "p@ss"),
                ("host", "db.example"),
                ("port", "5433"),
                ("dbname", "app"),
                ("sslmode", "verify-ca"),
                ("sslrootcert", "/ca"),
            ])
        );
        assert_eq!(
            parse("postgres://%2Ftmp%2Fsock/postgres").unwrap(),
            params(&[("host", "/tmp/sock"), ("dbname", "postgres")])
        );
        assert_eq!(
            parse("postgresql://a:1,[::1]:2,c/db?ssl=true").unwrap(),
            params(&[
                ("host", "a,::1,c"),
                ("port", "1,2,"),
                ("dbname", "db"),
                ("sslmode", "require"),
            ])
        );
        assert_eq!(
            parse("postgresql:///db?host=/tmp").unwrap(),
            params(&[("dbname", "db"), ("host", "/tmp")])
        );
        assert_eq!(parse("postgresql://").unwrap(), Params::new());
        assert!(matches!(
            parse("postgresql://u:secret@h:nope/db"),
            Err(ConninfoError::Uri(m)) if !m.contains("secret")
        ));
        assert!(parse("postgresql://h/db?bogus=1").is_err());
        assert!(parse("postgresql://h/db%zz").is_err());
    }

    #[test]
    fn redaction_hides_every_password() {
        assert_eq!(
            redact("host=x password=s3cret user=u"),
            "host=x password=*** user=u"
        );
        assert_eq!(
            redact("password = 'a b\\' c' host=x"),
            "password = *** host=x"
        );
        assert_eq!(redact("password='unterminated"), "password=***");
        assert_eq!(
            redact("postgresql://u:s3cret@h:1/db?password=other&sslmode=require"),
            "postgresql://u:***@h:1/db?password=***&sslmode=require"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://u:p@ss@h"), "postgres://u:***@h");
        assert_eq!(
            redact("postgres://u:pa/ss@h:x/db?sslmode=require"),
            "postgres://u:***@h:x/db?sslmode=require"
        );
        assert_eq!(
            redact("postgres://h/db?user=a@b"),
            "postgres://h/db?user=a@b"
        );
    }
}
