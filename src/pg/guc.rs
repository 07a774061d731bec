//! PostgreSQL configuration-file syntax (guc-file.l): how a string value is written into
//! `postgresql.conf` or `postgresql.auto.conf` so that the server reads it back unchanged,
//! and which setting a line of such a file sets.

/// The settings that steer recovery. A backup of a restored cluster (or of a standby) carries
/// its own in `postgresql.auto.conf`; left there, an old target next to a new one of another
/// kind stops the server ("multiple recovery targets specified"), an old restore_command or
/// primary_conninfo fetches WAL from elsewhere.
pub const RECOVERY_SETTINGS: &[&str] = &[
    "restore_command",
    "recovery_end_command",
    "archive_cleanup_command",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "standby_mode",
];

const REMOVED: &[u8] = b"# Removed by pitr restore: ";

/// `text` (a configuration file) with every line that sets one of [`RECOVERY_SETTINGS`]
/// commented out as `# Removed by pitr restore: <the line>`; every other byte unchanged.
pub fn remove_recovery_settings(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let is_recovery = setting_name(line).is_some_and(|name| {
            RECOVERY_SETTINGS
                .iter()
                .any(|setting| setting.as_bytes().eq_ignore_ascii_case(name))
        });
        if is_recovery {
            out.extend_from_slice(REMOVED);
        }
        out.extend_from_slice(line);
    }
    out
}

/// The name a line sets, read as guc-file.l reads it: whitespace, then an `ID` (a letter or
/// `_` or a byte above 127, then those or digits), then `=` or the value. None for blank and
/// comment lines, and for names that are not a plain `ID` (an extension's `a.b`, or what the
/// lexer reads as an unquoted string: the server refuses those lines anyway).
pub fn setting_name(line: &[u8]) -> Option<&[u8]> {
    let is_letter = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
    let start = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r'))?;
    let rest = &line[start..];
    if !is_letter(rest[0]) {
        return None;
    }
    let len = rest
        .iter()
        .position(|&b| !(is_letter(b) || b.is_ascii_digit()))
        .unwrap_or(rest.len());
    if matches!(rest.get(len), Some(b'.' | b'-' | b':' | b'/')) {
        return None;
    }
    Some(&rest[..len])
}

/// The value a line sets, read as guc-file.l reads it: a quoted string (`''` and backslash
/// escapes collapsed) or the unquoted token up to whitespace or `#`. None for lines
/// [`setting_name`] does not read, or with no value.
pub fn setting_value(line: &[u8]) -> Option<String> {
    let name = setting_name(line)?;
    let start = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r'))?
        + name.len();
    let mut rest = line[start..].trim_ascii_start();
    if let Some(after) = rest.strip_prefix(b"=") {
        rest = after.trim_ascii_start();
    }
    let Some(quoted) = rest.strip_prefix(b"'") else {
        let end = rest
            .iter()
            .position(|b| b.is_ascii_whitespace() || *b == b'#')
            .unwrap_or(rest.len());
        return (end > 0).then(|| String::from_utf8_lossy(&rest[..end]).into_owned());
    };
    let mut value = Vec::new();
    let mut bytes = quoted.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\'' if bytes.peek() == Some(&b'\'') => {
                bytes.next();
                value.push(b'\'');
            }
            b'\'' => return Some(String::from_utf8_lossy(&value).into_owned()),
            b'\\' => match bytes.next()? {
                b'n' => value.push(b'\n'),
                b't' => value.push(b'\t'),
                b'r' => value.push(b'\r'),
                b'b' => value.push(8),
                b'f' => value.push(12),
                d @ b'0'..=b'7' => {
                    let mut code = u32::from(d - b'0');
                    for _ in 0..2 {
                        match bytes.peek() {
                            Some(&o @ b'0'..=b'7') => {
                                code = code * 8 + u32::from(o - b'0');
                                bytes.next();
                            }
                            _ => break,
                        }
                    }
                    value.push(code as u8);
                }
                other => value.push(other),
            },
            b'\n' => return None,
            other => value.push(other),
        }
    }
    None
}

/// The value `text` (a configuration file) last sets for `name` (case-insensitive): later
/// lines win, as they do for the server. Include directives are not followed.
pub fn last_setting(text: &[u8], name: &str) -> Option<String> {
    text.split(|&b| b == b'\n')
        .filter(|line| setting_name(line).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes())))
        .filter_map(setting_value)
        .next_back()
}

/// A single-quoted string literal. The lexer collapses `''` to `'` and reads backslash
/// escapes (`GUC_scanstr`), so both are escaped; a raw newline would end the line, so control
/// characters are written as octal escapes.
pub fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                quoted.push_str(&format!("\\{:03o}", c as u32));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_escape_what_the_lexer_reads_specially() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote(r"a\b"), r"'a\\b'");
        assert_eq!(quote("line\nbreak"), r"'line\012break'");
    }

    fn removed(text: &str) -> String {
        String::from_utf8(remove_recovery_settings(text.as_bytes())).unwrap()
    }

    #[test]
    fn recovery_settings_are_commented_out_and_nothing_else_changes() {
        let text = "# Do not edit this file manually!\n\
                    # It will be overwritten by the ALTER SYSTEM command.\n\
                    work_mem = '64MB'\n\
                    restore_command = 'cp /a/%f \"%p\" # not a comment'\n\
                    Recovery_Target_Time='2026-11-21 14:29:00+00'\n\
                    \t recovery_target_action  promote # trailing comment\n\
                    recovery_target_name = 'a=b#c''d'\r\n\
                    # recovery_target_xid = '5'\n\
                    recovery_target_timelines = 'x'\n\
                    my_ext.recovery_target = 'on'\n\
                    primary_conninfo = 'host=x'\n\
                    \n\
                    shared_preload_libraries = 'pg_stat_statements'";
        assert_eq!(
            removed(text),
            "# Do not edit this file manually!\n\
             # It will be overwritten by the ALTER SYSTEM command.\n\
             work_mem = '64MB'\n\
             # Removed by pitr restore: restore_command = 'cp /a/%f \"%p\" # not a comment'\n\
             # Removed by pitr restore: Recovery_Target_Time='2026-11-21 14:29:00+00'\n\
             # Removed by pitr restore: \t recovery_target_action  promote # trailing comment\n\
             # Removed by pitr restore: recovery_target_name = 'a=b#c''d'\r\n\
             # recovery_target_xid = '5'\n\
             recovery_target_timelines = 'x'\n\
             my_ext.recovery_target = 'on'\n\
             # Removed by pitr restore: primary_conninfo = 'host=x'\n\
             \n\
             shared_preload_libraries = 'pg_stat_statements'"
        );
        // Every setting in the list, however written; other bytes, even invalid UTF-8, stay.
        for setting in RECOVERY_SETTINGS {
            let line = format!("{}='x'\n", setting.to_uppercase());
            assert_eq!(removed(&line), format!("# Removed by pitr restore: {line}"));
        }
        let latin1 = b"application_name = 'caf\xe9'\n";
        assert_eq!(remove_recovery_settings(latin1), latin1);
        assert_eq!(remove_recovery_settings(b""), b"");
    }

    #[test]
    fn setting_names_are_read_as_the_lexer_reads_them() {
        assert_eq!(setting_name(b"  a_b1 = 2"), Some(&b"a_b1"[..]));
        assert_eq!(setting_name(b"a_b1=2"), Some(&b"a_b1"[..]));
        assert_eq!(setting_name(b"a_b1 '2'"), Some(&b"a_b1"[..]));
        assert_eq!(setting_name(b"x.y = 1"), None);
        assert_eq!(setting_name(b"#a = 1"), None);
        assert_eq!(setting_name(b"   \r\n"), None);
        assert_eq!(setting_name(b"1a = 1"), None);
    }

    #[test]
    fn setting_values_are_read_as_the_lexer_reads_them() {
        assert_eq!(setting_value(b"port = 5433"), Some("5433".into()));
        assert_eq!(setting_value(b"port=5433 # primary"), Some("5433".into()));
        assert_eq!(setting_value(b"  port 5433\r"), Some("5433".into()));
        assert_eq!(
            setting_value(b"unix_socket_directories = '/run/a, /tmp' # x"),
            Some("/run/a, /tmp".into())
        );
        assert_eq!(
            setting_value(b"a = 'it''s \\\\ \\101'"),
            Some("it's \\ A".into())
        );
        assert_eq!(setting_value(b"a = 'open"), None);
        assert_eq!(setting_value(b"a ="), None);
        let text = b"port = 5432\n#port = 6000\nPORT = '5440'\nport_x = 1\n";
        assert_eq!(last_setting(text, "port"), Some("5440".into()));
        assert_eq!(last_setting(text, "archive_mode"), None);
        for value in ["plain", "it's", r"a\b", "tab\there"] {
            let line = format!("x = {}", quote(value));
            assert_eq!(setting_value(line.as_bytes()).as_deref(), Some(value));
        }
    }
}
