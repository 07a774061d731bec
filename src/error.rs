//! pitr's errors and exit codes: a contract with PostgreSQL and with monitoring.
//!
//! [`EXIT_CODES`] is the one table. `--help` prints it, and a test checks that README.md and
//! docs/operations.md carry it word for word.

use crate::catalog::CatalogError;
use crate::recovery::PlanError;
use crate::storage::StorageError;

pub const EXIT_OK: u8 = 0;
pub const EXIT_NOT_FOUND: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_WRONG_REPOSITORY: u8 = 3;
pub const EXIT_CONFLICT: u8 = 4;
pub const EXIT_CORRUPT: u8 = 5;
pub const EXIT_STORAGE: u8 = 6;
pub const EXIT_INVALID_INPUT: u8 = 7;
pub const EXIT_INCOMPLETE: u8 = 8;
pub const EXIT_SERVER: u8 = 9;
pub const EXIT_LOCAL_IO: u8 = 10;
pub const EXIT_LOCKED: u8 = 11;
pub const EXIT_KEY: u8 = 12;
pub const EXIT_DRILL_FAILED: u8 = 13;

/// One row of the exit-code table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCode {
    pub code: u8,
    pub meaning: &'static str,
}

pub const EXIT_CODES: &[ExitCode] = &[
    ExitCode {
        code: EXIT_OK,
        meaning: "success (verify: the repository is intact)",
    },
    ExitCode {
        code: EXIT_NOT_FOUND,
        meaning: "archive-get: the file is not in the repository (PostgreSQL then tries elsewhere)",
    },
    ExitCode {
        code: EXIT_USAGE,
        meaning: "usage or configuration error: a flag, the config file, an unknown backup id, \
                  AWS credentials missing or refused, an S3 endpoint that does not resolve",
    },
    ExitCode {
        code: EXIT_WRONG_REPOSITORY,
        meaning: "wrong repository: none at --repo (a mistyped location), or another \
                  cluster's",
    },
    ExitCode {
        code: EXIT_CONFLICT,
        meaning: "conflict: the file is archived already with different content; nothing was \
                  overwritten",
    },
    ExitCode {
        code: EXIT_CORRUPT,
        meaning: "corrupt: a stored object, manifest, summary or repository.json fails its \
                  checksum or does not decode",
    },
    ExitCode {
        code: EXIT_STORAGE,
        meaning: "storage error: the repository could not be read or written",
    },
    ExitCode {
        code: EXIT_INVALID_INPUT,
        meaning: "invalid input: a file or directory given is not what it should be (not a WAL \
                  file or a data directory; a restore target not empty or with a postmaster \
                  running)",
    },
    ExitCode {
        code: EXIT_INCOMPLETE,
        meaning: "incomplete: the repository lacks what is needed (missing WAL or objects, a \
                  restore target out of reach, a backup's WAL that never arrived)",
    },
    ExitCode {
        code: EXIT_SERVER,
        meaning: "PostgreSQL could not be reached, or refused what was asked",
    },
    ExitCode {
        code: EXIT_LOCAL_IO,
        meaning: "local I/O error: a local file or directory could not be read or written (disk \
                  full, permissions)",
    },
    ExitCode {
        code: EXIT_LOCKED,
        meaning: "locked: another backup or expire holds the repository lock; the message names \
                  it (command, host, pid, since)",
    },
    ExitCode {
        code: EXIT_KEY,
        meaning: "cannot decrypt: the repository is encrypted and the key given is wrong or \
                  missing (or a key was given for a repository that is not encrypted)",
    },
    ExitCode {
        code: EXIT_DRILL_FAILED,
        meaning: "drill: the restore worked but a check failed (the target not reached, \
                  pg_amcheck found corruption, a --checks query did not return what it \
                  states); the report names it",
    },
];

/// archive-get, as PostgreSQL's `restore_command`, exits 1 only when the file is not in the
/// repository: PostgreSQL reads every code from 1 to 125 as "no such file" and, replaying
/// all WAL, would end recovery there and open the database on a shortened history. Every
/// other failure exits above 125, which makes PostgreSQL abort recovery instead.
pub const ARCHIVE_GET_FAILURE_BASE: u8 = 128;
/// archive-get met a bug (a panic): recovery must stop all the same.
pub const EXIT_ARCHIVE_GET_BUG: u8 = 255;

/// The exit code archive-get gives for pitr's `code`.
pub fn archive_get_exit_code(code: u8) -> u8 {
    match code {
        EXIT_OK | EXIT_NOT_FOUND => code,
        code => ARCHIVE_GET_FAILURE_BASE.saturating_add(code),
    }
}

/// What PostgreSQL does with each archive-get outcome (Markdown, for the docs).
pub fn archive_get_codes_markdown() -> String {
    let mut text = String::from(
        "| archive-get exits | when | PostgreSQL then |\n|---|---|---|\n\
         | 0 | the file was restored and verified | replays it |\n\
         | 1 | the file is not in the repository | takes it as the end of the archive: \
         looks in pg_wal, then ends recovery (or, as a standby, waits and asks again) |\n",
    );
    for row in EXIT_CODES.iter().filter(|row| row.code > EXIT_NOT_FOUND) {
        text.push_str(&format!(
            "| {} | {} (code {} of the table above) | aborts recovery: the server stops and \
             does not open; fix the cause and start it again |\n",
            archive_get_exit_code(row.code),
            row.meaning,
            row.code
        ));
    }
    text.push_str(&format!(
        "| {EXIT_ARCHIVE_GET_BUG} | a bug in pitr (a panic) | aborts recovery, as above |\n"
    ));
    text
}

/// `pitr check` exits as a Nagios/Icinga plugin, with its own codes.
pub const EXIT_CHECK_OK: u8 = 0;
pub const EXIT_CHECK_WARNING: u8 = 1;
pub const EXIT_CHECK_CRITICAL: u8 = 2;
pub const EXIT_CHECK_UNKNOWN: u8 = 3;

/// `pitr check`'s exit codes (Markdown, for the docs).
pub fn check_codes_markdown() -> String {
    format!(
        "| check exits | state | when |\n|---|---|---|\n\
         | {EXIT_CHECK_OK} | OK | every check passed |\n\
         | {EXIT_CHECK_WARNING} | WARNING | a check passed its WARNING threshold, none its \
         CRITICAL one |\n\
         | {EXIT_CHECK_CRITICAL} | CRITICAL | a check passed its CRITICAL threshold (no backup, \
         archiving stopped, the --switch-wal segment never arrived) |\n\
         | {EXIT_CHECK_UNKNOWN} | UNKNOWN | a check could not run (the repository or the server \
         could not be read) and none is WARNING or CRITICAL, or a threshold or the command line \
         is invalid |\n"
    )
}

/// The table for `--help`.
pub fn exit_codes_help() -> String {
    let mut text = String::from("Exit codes:\n");
    for row in EXIT_CODES {
        text.push_str(&format!("  {:>2}  {}\n", row.code, row.meaning));
    }
    text.push_str(&format!(
        "archive-get exits {ARCHIVE_GET_FAILURE_BASE} + the code for every failure but 1, so \
         that PostgreSQL aborts recovery rather than end it early ({EXIT_ARCHIVE_GET_BUG} for a \
         bug).\n"
    ));
    text.push_str("check exits as a Nagios plugin: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.\n");
    text.push_str(
        "backup, restore, drill and restore-table stopped by SIGINT, SIGTERM or SIGHUP exit \
         128 + the signal's number (130, 143, 129), after one line saying what was left and \
         how to resume.\n",
    );
    text
}

/// The table as the docs carry it (Markdown).
pub fn exit_codes_markdown() -> String {
    let mut text = String::from("| code | meaning |\n|---|---|\n");
    for row in EXIT_CODES {
        text.push_str(&format!("| {} | {} |\n", row.code, row.meaning));
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{name} is not in the repository {location}")]
    NotFound { name: String, location: String },
    #[error("{0}")]
    WrongRepository(String),
    #[error(
        "{name} is already archived in {location} with different content; the stored copy \
         was kept. Check that only one cluster archives to this repository"
    )]
    Conflict { name: String, location: String },
    #[error("{what} in {location} is corrupt: {reason}")]
    Corrupt {
        what: String,
        location: String,
        reason: String,
    },
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{path}: {reason}")]
    InvalidInput { path: String, reason: String },
    /// The repository lacks what the operation needs.
    #[error("{0}")]
    Incomplete(String),
    #[error("{0}")]
    Server(String),
    #[error("{path}: {source}")]
    LocalIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the repository lock.
    #[error("{0}")]
    Locked(String),
    /// An encrypted repository's key is wrong or missing.
    #[error("{0}")]
    Key(String),
    /// A drill restored and started, but one of its checks failed.
    #[error("{0}")]
    DrillFailed(String),
    /// A signal stopped the command; the message says what it left and how to resume.
    #[error("{message}")]
    Interrupted {
        signal: crate::interrupt::Signal,
        message: String,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_USAGE,
            Error::NotFound { .. } => EXIT_NOT_FOUND,
            Error::WrongRepository(_) => EXIT_WRONG_REPOSITORY,
            Error::Conflict { .. } => EXIT_CONFLICT,
            Error::Corrupt { .. } => EXIT_CORRUPT,
            // Settings to change, not a store that failed.
            Error::Storage(StorageError::Config(_)) => EXIT_USAGE,
            Error::Storage(_) => EXIT_STORAGE,
            Error::InvalidInput { .. } => EXIT_INVALID_INPUT,
            Error::Incomplete(_) => EXIT_INCOMPLETE,
            Error::Server(_) => EXIT_SERVER,
            Error::LocalIo { .. } => EXIT_LOCAL_IO,
            Error::Locked(_) => EXIT_LOCKED,
            Error::Key(_) => EXIT_KEY,
            Error::DrillFailed(_) => EXIT_DRILL_FAILED,
            // Outside the table: what a shell reports for a command the signal killed.
            Error::Interrupted { signal, .. } => signal.exit_code(),
        }
    }

    pub fn invalid_input(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::InvalidInput {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn local_io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::LocalIo {
            path: path.to_string(),
            source,
        }
    }
}

impl From<CatalogError> for Error {
    fn from(err: CatalogError) -> Self {
        match err {
            CatalogError::Storage(e) => Error::Storage(e),
            CatalogError::CorruptManifest { id, reason } => Error::Corrupt {
                what: format!("the manifest of backup {id}"),
                location: "the repository".into(),
                reason,
            },
            CatalogError::Corrupt {
                what,
                location,
                reason,
            } => Error::Corrupt {
                what,
                location,
                reason,
            },
            e @ CatalogError::NotFound { .. } => Error::Incomplete(e.to_string()),
            CatalogError::AlreadyStored { what, location } => Error::Conflict {
                name: what,
                location,
            },
            CatalogError::Local { path, source } => Error::LocalIo { path, source },
            CatalogError::CorruptIdentity { location, reason } => Error::Corrupt {
                what: "the repository identity (repository.json)".into(),
                location,
                reason,
            },
            e @ CatalogError::NotInitialised { .. } => Error::WrongRepository(e.to_string()),
            CatalogError::Locked(locked) => Error::Locked(locked.to_string()),
            CatalogError::Compression(message) => Error::Config(message),
            CatalogError::Key(message) => Error::Key(message),
        }
    }
}

impl From<PlanError> for Error {
    fn from(err: PlanError) -> Self {
        match err {
            // A choice the command line must make, not something missing: usage (2).
            e @ (PlanError::UnknownBackup(_) | PlanError::AmbiguousTimeline(_)) => {
                Error::Config(e.to_string())
            }
            e @ (PlanError::NoBackup | PlanError::Unreachable(_)) => {
                Error::Incomplete(e.to_string())
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_code_once_in_order() {
        let codes: Vec<u8> = EXIT_CODES.iter().map(|row| row.code).collect();
        assert_eq!(codes, (0..=EXIT_DRILL_FAILED).collect::<Vec<_>>());
    }

    #[test]
    fn every_error_maps_to_a_code_of_the_table() {
        let errors = [
            Error::NotFound {
                name: String::new(),
                location: String::new(),
            },
            Error::Config(String::new()),
            Error::WrongRepository(String::new()),
            Error::Conflict {
                name: String::new(),
                location: String::new(),
            },
            Error::Corrupt {
                what: String::new(),
                location: String::new(),
                reason: String::new(),
            },
            Error::Storage(StorageError::InvalidKey(String::new())),
            Error::invalid_input("", ""),
            Error::Incomplete(String::new()),
            Error::Server(String::new()),
            Error::local_io("", std::io::Error::other("x")),
            Error::Locked(String::new()),
            Error::Key(String::new()),
            Error::DrillFailed(String::new()),
        ];
        let codes: Vec<u8> = errors.iter().map(Error::exit_code).collect();
        assert_eq!(codes, (1..=EXIT_DRILL_FAILED).collect::<Vec<_>>());
    }

    /// The contract as users read it: README.md and docs/operations.md carry the tables.
    #[test]
    fn the_docs_carry_the_tables_word_for_word() {
        for table in [
            exit_codes_markdown(),
            archive_get_codes_markdown(),
            check_codes_markdown(),
        ] {
            for (name, text) in [
                ("README.md", include_str!("../README.md")),
                ("docs/operations.md", include_str!("../docs/operations.md")),
            ] {
                assert!(
                    text.contains(&table),
                    "{name} must carry this table exactly as error.rs has it:\n{table}"
                );
            }
        }
    }

    #[test]
    fn archive_get_says_not_found_only_when_it_knows() {
        assert_eq!(archive_get_exit_code(EXIT_OK), 0);
        assert_eq!(archive_get_exit_code(EXIT_NOT_FOUND), 1);
        // Everything else makes PostgreSQL abort recovery: above 125.
        for row in EXIT_CODES.iter().filter(|row| row.code > EXIT_NOT_FOUND) {
            assert!(archive_get_exit_code(row.code) > 125, "{}", row.code);
        }
    }

    #[test]
    fn planner_and_catalog_errors_keep_their_meaning() {
        assert_eq!(
            Error::from(PlanError::NoBackup).exit_code(),
            EXIT_INCOMPLETE
        );
        assert_eq!(
            Error::from(PlanError::Unreachable(String::new())).exit_code(),
            EXIT_INCOMPLETE
        );
        assert_eq!(
            Error::from(PlanError::UnknownBackup("x".into())).exit_code(),
            EXIT_USAGE
        );
        assert_eq!(
            Error::from(PlanError::AmbiguousTimeline("x".into())).exit_code(),
            EXIT_USAGE
        );
        let local = CatalogError::Local {
            path: "/x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(Error::from(local).exit_code(), EXIT_LOCAL_IO);
        let corrupt = CatalogError::CorruptManifest {
            id: "b".into(),
            reason: "bad".into(),
        };
        assert_eq!(Error::from(corrupt).exit_code(), EXIT_CORRUPT);
    }
}
