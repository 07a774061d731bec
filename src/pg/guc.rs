//! PostgreSQL configuration-file syntax (guc-file.l): how a string value is written into
//! `postgresql.conf` or `postgresql.auto.conf` so that the server reads it back unchanged.

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
}
