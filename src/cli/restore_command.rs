//! The `restore_command` a restore writes: this binary and the repository settings it ran
//! with, so that recovery fetches WAL from the same repository.
//!
//! The command passes through two readers before it runs: PostgreSQL replaces `%f`, `%p`,
//! `%r` and `%%` in it, then `/bin/sh -c` splits it into words. (The configuration-file
//! quoting around the whole command is `pg::guc::quote`'s.)

use std::path::Path;

use crate::config::Settings;

/// One word for `/bin/sh`, exactly as given: plain words as they are, anything else in
/// single quotes, where only `'` itself needs care.
fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=@+,".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `program` and `args` as a shell command that survives PostgreSQL's `%` replacement.
pub fn shell_command(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(|word| sh_quote(word).replace('%', "%%"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `<exe> [--config F] [--repo R] [--s3-endpoint E] [--s3-path-style] archive-get %f %p`.
pub fn restore_command(exe: &str, settings: &Settings, config: Option<&Path>) -> String {
    let config = config.map(|c| c.display().to_string());
    let timeout = settings.storage_timeout.map(|s| s.to_string());
    let retry_time = settings.storage_retry_time.map(|s| s.to_string());
    let mut args: Vec<&str> = Vec::new();
    if let Some(config) = &config {
        args.extend(["--config", config]);
    }
    if let Some(repo) = &settings.repo {
        args.extend(["--repo", repo]);
    }
    if let Some(endpoint) = &settings.s3_endpoint {
        args.extend(["--s3-endpoint", endpoint]);
    }
    if settings.s3_path_style == Some(true) {
        args.push("--s3-path-style");
    }
    if let Some(timeout) = &timeout {
        args.extend(["--storage-timeout", timeout]);
    }
    if let Some(retry_time) = &retry_time {
        args.extend(["--storage-retry-time", retry_time]);
    }
    format!("{} archive-get %f %p", shell_command(exe, &args))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What PostgreSQL does to restore_command before the shell sees it
    /// (`replace_percent_placeholders`).
    fn postgres_substitutes(command: &str, f: &str, p: &str) -> String {
        let mut out = String::new();
        let mut chars = command.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('f') => out.push_str(f),
                Some('p') => out.push_str(p),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        out
    }

    #[test]
    fn words_reach_the_program_unchanged_through_postgres_and_sh() {
        let tricky = [
            "/srv/pitr dir/it's \"quoted\"",
            "$HOME and `id` and $(id)",
            "100% %f %p %%",
            "back\\slash; echo pwned",
            "tab\tand\nnewline",
            "",
            "plain/path-1.0",
        ];
        let mut args = vec!["[%s]"];
        args.extend(tricky);
        let command = format!("{} %f %p", shell_command("printf", &args));
        let run = postgres_substitutes(&command, "000000010000000000000001", "pg_wal/RECOVERYXLOG");
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &run])
            .output()
            .unwrap();
        assert!(out.status.success(), "{run}");
        let mut expected: String = tricky.iter().map(|w| format!("[{w}]")).collect();
        expected.push_str("[000000010000000000000001][pg_wal/RECOVERYXLOG]");
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{command}");
    }

    #[test]
    fn the_restore_command_names_the_same_repository() {
        let settings = Settings {
            repo: Some("s3://bucket/my repo".into()),
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_path_style: Some(true),
            ..Settings::default()
        };
        assert_eq!(
            restore_command(
                "/usr/bin/pitr",
                &settings,
                Some(Path::new("/etc/pitr.toml"))
            ),
            "/usr/bin/pitr --config /etc/pitr.toml --repo 's3://bucket/my repo' --s3-endpoint \
             http://127.0.0.1:9000 --s3-path-style archive-get %f %p"
        );
    }
}
