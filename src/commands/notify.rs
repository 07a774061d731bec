//! Failure (and, if asked, success) notifications to a chat webhook.
//!
//! One JSON message that Slack, Mattermost (which read `text`) and Discord (which reads
//! `content`) incoming webhooks all accept, with the facts as fields of their own for other
//! receivers. The webhook is told after the command has finished and never changes its
//! outcome: a webhook that fails or hangs costs at most [`TIMEOUT`] and a warning.
//!
//! The HTTP client is `ureq`: blocking and small (a handful of crates over the rustls this
//! binary already carries), with rustls and bundled web PKI roots, so an https webhook works
//! on a host without a system certificate store; one POST per run needs no async client.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::error::{EXIT_OK, Error};

/// The commands that run unattended and report to the webhook.
pub const NOTIFYING_COMMANDS: &[&str] = &[
    "backup",
    "verify",
    "expire",
    "check",
    "drill",
    // When it ends: a lost slot (a gap to fill with a new backup), a refused segment.
    "receive-wal",
];
/// The whole request, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Discord refuses a `content` longer than this.
const DISCORD_CONTENT_LIMIT: usize = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Failure,
}

/// The message as posted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    /// For Slack and Mattermost.
    pub text: String,
    /// For Discord.
    pub content: String,
    pub command: String,
    pub status: Status,
    pub exit_code: u8,
    pub host: String,
    pub repository: String,
    /// The one-line error of a failure.
    pub error: Option<String>,
    pub started: DateTime<Utc>,
    pub duration_seconds: f64,
}

/// How a command ended, as the notification tells it.
#[derive(Clone, Debug)]
pub struct CommandRun<'a> {
    pub command: &'a str,
    pub repository: &'a str,
    pub host: &'a str,
    pub started: DateTime<Utc>,
    pub duration: Duration,
    pub exit_code: u8,
    pub error: Option<String>,
}

impl Notification {
    pub fn new(run: &CommandRun<'_>) -> Self {
        let status = match run.exit_code {
            EXIT_OK => Status::Success,
            _ => Status::Failure,
        };
        let seconds = run.duration.as_secs_f64();
        let mut text = match status {
            Status::Success => format!(
                "pitr {} succeeded on {} ({}, {seconds:.0} s)",
                run.command, run.host, run.repository
            ),
            Status::Failure => format!(
                "pitr {} FAILED on {} ({}, exit code {}, after {seconds:.0} s)",
                run.command, run.host, run.repository, run.exit_code
            ),
        };
        if let Some(error) = &run.error {
            text.push_str(": ");
            text.push_str(error);
        }
        Notification {
            content: truncate(&text, DISCORD_CONTENT_LIMIT),
            text,
            command: run.command.to_owned(),
            status,
            exit_code: run.exit_code,
            host: run.host.to_owned(),
            repository: run.repository.to_owned(),
            error: run.error.clone(),
            started: run.started,
            duration_seconds: (seconds * 1000.0).round() / 1000.0,
        }
    }

    /// Whether settings ask for this message at all.
    pub fn wanted(command: &str, status: Status, on_success: bool) -> bool {
        NOTIFYING_COMMANDS.contains(&command) && (status == Status::Failure || on_success)
    }
}

fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit - 1).collect();
    cut.push('…');
    cut
}

/// The hook `run` calls once a command has finished: tells the webhook of `settings` about
/// the run if it is one to tell. Never fails; a webhook error is a warning.
pub async fn after_command(
    settings: Option<&Settings>,
    command: &str,
    started: DateTime<Utc>,
    duration: Duration,
    outcome: &Result<u8, Error>,
) {
    let Some(settings) = settings else { return };
    let Some(url) = settings.notify_url.clone().filter(|url| !url.is_empty()) else {
        return;
    };
    let (exit_code, error) = match outcome {
        Ok(code) => (*code, None),
        Err(e) => (e.exit_code(), Some(e.to_string())),
    };
    let status = match exit_code {
        EXIT_OK => Status::Success,
        _ => Status::Failure,
    };
    if !Notification::wanted(command, status, settings.notify_on_success.unwrap_or(false)) {
        return;
    }
    let host = crate::host_name().unwrap_or_else(|| "unknown".into());
    let message = Notification::new(&CommandRun {
        command,
        repository: settings.repo.as_deref().unwrap_or("(no repository)"),
        host: &host,
        started,
        duration,
        exit_code,
        error,
    });
    let sent = crate::run_blocking(move || post(&url, &message)).await;
    match sent {
        Ok(()) => tracing::info!("notified the webhook ({status:?})"),
        Err(e) => tracing::warn!(
            "could not notify the webhook (notify_url): {e}; the {command} itself is not \
             affected"
        ),
    }
}

/// POSTs `message` as JSON; any status but 2xx is an error.
fn post(url: &str, message: &Notification) -> Result<(), String> {
    let body = serde_json::to_vec(message).expect("a notification serialises");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(true)
        .build()
        .into();
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(&body[..])
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(exit_code: u8, error: Option<&str>) -> CommandRun<'static> {
        CommandRun {
            command: "backup",
            repository: "s3://bucket/db1",
            host: "db1",
            started: "2026-11-22T03:00:00Z".parse().unwrap(),
            duration: Duration::from_millis(61_234),
            exit_code,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn slack_mattermost_and_discord_each_find_their_field() {
        let message = Notification::new(&run(9, Some("cannot connect to PostgreSQL")));
        let json: serde_json::Value = serde_json::to_value(&message).unwrap();
        let expected = "pitr backup FAILED on db1 (s3://bucket/db1, exit code 9, after 61 s): \
                        cannot connect to PostgreSQL";
        assert_eq!(json["text"], expected);
        assert_eq!(json["content"], expected);
        assert_eq!(json["status"], "failure");
        assert_eq!(json["command"], "backup");
        assert_eq!(json["exit_code"], 9);
        assert_eq!(json["host"], "db1");
        assert_eq!(json["repository"], "s3://bucket/db1");
        assert_eq!(json["error"], "cannot connect to PostgreSQL");
        assert_eq!(json["started"], "2026-11-22T03:00:00Z");
        assert_eq!(json["duration_seconds"], 61.234);

        let success = serde_json::to_value(Notification::new(&run(0, None))).unwrap();
        assert_eq!(success["status"], "success");
        assert_eq!(success["error"], serde_json::Value::Null);
        assert_eq!(
            success["text"],
            "pitr backup succeeded on db1 (s3://bucket/db1, 61 s)"
        );
    }

    #[test]
    fn discord_gets_at_most_its_limit() {
        let long = "x".repeat(5000);
        let message = Notification::new(&run(6, Some(&long)));
        assert_eq!(message.content.chars().count(), DISCORD_CONTENT_LIMIT);
        assert!(message.text.len() > 5000);
    }

    #[test]
    fn failures_always_successes_only_when_asked() {
        use Status::*;
        assert!(Notification::wanted("backup", Failure, false));
        assert!(!Notification::wanted("backup", Success, false));
        assert!(Notification::wanted("verify", Success, true));
        assert!(Notification::wanted("expire", Failure, false));
        assert!(Notification::wanted("check", Failure, false));
        // archive-push runs for every segment: PostgreSQL's own log and `check` report it.
        assert!(!Notification::wanted("archive-push", Failure, true));
        assert!(!Notification::wanted("restore", Failure, true));
    }
}
