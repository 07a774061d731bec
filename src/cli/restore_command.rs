//! The `restore_command` a restore writes: this binary and the repository settings it ran
//! with, so that recovery fetches WAL from the same repository.
//!
//! The command passes through two readers before it runs: PostgreSQL replaces `%f`, `%p`,
//! `%r` and `%%` in it, then `/bin/sh -c` splits it into words. (The configuration-file
//! quoting around the whole command is `pg::guc::quote`'s.)

use std::path::Path;

use crate::config::{SettingValue, Settings};

/// One word for `/bin/sh`, exactly as given: plain words as they are, anything else in
/// single quotes, where only `'` itself needs care.
pub(crate) fn sh_quote(word: &str) -> String {
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

/// `<exe> [--config F] [--repo R] [--s3-endpoint E] [--s3-path-style] … archive-get %f %p`.
pub fn restore_command(exe: &str, settings: &Settings, config: Option<&Path>) -> String {
    let config = config.map(|c| c.display().to_string());
    let mut args: Vec<String> = Vec::new();
    if let Some(config) = config {
        args.extend(["--config".to_owned(), config]);
    }
    // The settings declared `#[restore_command]` (config.rs); paths made absolute, since
    // restore_command runs in the data directory.
    for (setting, value) in settings.carried() {
        let flag = setting.flag();
        match value {
            // A bare boolean flag means true; a value only after `=`.
            SettingValue::Bool(true) => args.push(flag),
            SettingValue::Bool(false) => args.push(format!("{flag}=false")),
            SettingValue::Text(text) => args.extend([flag, text]),
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    format!("{} archive-get %f %p", shell_command(exe, &args))
}

/// The same settings as `PITR_…` variables, for a process pitr starts itself.
pub fn settings_env(settings: &Settings) -> Vec<(String, String)> {
    settings
        .carried()
        .into_iter()
        .map(|(setting, value)| (setting.env(), value.env_value()))
        .collect()
}

/// The AWS SDK's variables that the restored server's restore_command reads from its
/// environment (credentials, profile, region, endpoint, web identity).
const AWS_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
];

/// What the server restored from an S3 repository needs in its environment for its
/// restore_command, which carries the repository settings but never a secret. `is_set`
/// says which AWS variables this restore ran with (their names are printed, never their
/// values); `start` is the start command (sudo resets the environment).
pub fn s3_environment_note(
    settings: &Settings,
    is_set: impl Fn(&str) -> bool,
    start: &[String],
) -> String {
    let set: Vec<&str> = AWS_VARIABLES
        .iter()
        .copied()
        .filter(|name| is_set(name))
        .collect();
    let ran_with = if set.is_empty() {
        "this restore found its credentials in no AWS_ variable (a profile file or an instance \
         role?): give the server the same (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
         AWS_PROFILE with the server user's ~/.aws files, and AWS_REGION)"
            .to_owned()
    } else {
        format!(
            "start it with the variables this restore ran with: {}",
            set.join(", ")
        )
    };
    let endpoint = match &settings.s3_endpoint {
        Some(endpoint) => format!("; the endpoint {endpoint} is in restore_command"),
        None => String::new(),
    };
    let sudo = if start.first().is_some_and(|w| w == "sudo") {
        format!(
            "; sudo drops them unless told: sudo --preserve-env={} -u …",
            if set.is_empty() {
                "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,AWS_REGION".to_owned()
            } else {
                set.join(",")
            }
        )
    } else {
        String::new()
    };
    format!(
        "note: the restored server's restore_command reads the S3 repository with the AWS \
         credentials of the server's environment (pg_ctl passes its own on; restore_command \
         holds no secret): {ran_with}{endpoint}{sudo}"
    )
}

/// After a restore that wrote a data directory: what the restored server's environment needs
/// that restore_command cannot carry (AWS variables for an S3 repository, the passphrase of
/// an encrypted one given by PITR_PASSPHRASE).
pub fn print_notes(
    access: &crate::commands::run::Access,
    encrypted: bool,
    report: &crate::commands::restore::RestoreReport,
) {
    if report.dry_run {
        return;
    }
    let settings = &access.settings;
    if access.config.local_root().is_none() {
        let is_set = |name: &str| std::env::var_os(name).is_some();
        println!(
            "{}",
            s3_environment_note(settings, is_set, &report.server.commands.start)
        );
    }
    let key_in_command = settings.passphrase_file.is_some()
        || settings.key_file.is_some()
        || settings.kms_key_id.is_some();
    if encrypted && !key_in_command {
        println!(
            "note: the repository is encrypted and its passphrase came from {}, which \
             restore_command does not carry (it never holds a secret): start PostgreSQL with \
             {0} in its environment, or restore with passphrase_file",
            crate::config::PASSPHRASE_ENV
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s3_note_names_the_variables_never_their_values() {
        let settings = Settings {
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            ..Settings::default()
        };
        let set = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"];
        let start: Vec<String> = ["pg_ctl", "-D", "/d", "start"].map(String::from).to_vec();
        assert_eq!(
            s3_environment_note(&settings, |n| set.contains(&n), &start),
            "note: the restored server's restore_command reads the S3 repository with the AWS \
             credentials of the server's environment (pg_ctl passes its own on; \
             restore_command holds no secret): start it with the variables this restore ran \
             with: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION; the endpoint \
             http://127.0.0.1:9000 is in restore_command"
        );
        let sudo: Vec<String> = ["sudo", "-u", "postgres", "pg_ctl"]
            .map(String::from)
            .to_vec();
        let note = s3_environment_note(&Settings::default(), |_| false, &sudo);
        assert!(
            note.ends_with(
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with the server \
                 user's ~/.aws files, and AWS_REGION); sudo drops them unless told: sudo \
                 --preserve-env=AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,AWS_REGION -u …"
            ),
            "{note}"
        );
    }

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
            archive_get_queue_max: Some("64MiB".into()),
            ..Settings::default()
        };
        assert_eq!(
            restore_command(
                "/usr/bin/pitr",
                &settings,
                Some(Path::new("/etc/pitr.toml"))
            ),
            "/usr/bin/pitr --config /etc/pitr.toml --repo 's3://bucket/my repo' --s3-endpoint \
             http://127.0.0.1:9000 --s3-path-style --archive-get-queue-max 64MiB archive-get %f %p"
        );
        let env = settings_env(&settings);
        assert!(
            env.contains(&("PITR_S3_PATH_STYLE".into(), "true".into())),
            "{env:?}"
        );
        assert!(
            env.contains(&("PITR_REPO".into(), "s3://bucket/my repo".into())),
            "{env:?}"
        );
        // A false set anywhere must beat a true in the config file restore_command names.
        let settings = Settings {
            repo: Some("/srv/repo".into()),
            s3_path_style: Some(false),
            spool_path: Some("/var/spool/pitr".into()),
            ..Settings::default()
        };
        assert_eq!(
            restore_command("pitr", &settings, None),
            "pitr --repo /srv/repo --s3-path-style=false --spool-path /var/spool/pitr \
             archive-get %f %p"
        );
    }
}
