//! pitr's errors and exit codes: a contract with PostgreSQL and with monitoring.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | archive-get: the file is not in the repository (PostgreSQL then tries elsewhere) |
//! | 2 | usage or configuration error |
//! | 3 | wrong repository: not initialised, or it belongs to another cluster |
//! | 4 | conflict: the file is archived already with different content; nothing was overwritten |
//! | 5 | a stored object is corrupt (checksum mismatch, truncated, undecodable) |
//! | 6 | storage error: the repository could not be read or written |
//! | 7 | invalid input: the file given is not what it should be |
//! | 8 | the repository is incomplete: verify found missing WAL or contradicting history files, or a restore's target cannot be reached from it |
//! | 9 | PostgreSQL could not be reached, or refused what was asked |
//!
//! Keep this table, README.md and docs/operations.md in step.

use crate::catalog::CatalogError;
use crate::storage::StorageError;

pub const EXIT_OK: i32 = 0;
pub const EXIT_NOT_FOUND: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_WRONG_REPOSITORY: i32 = 3;
pub const EXIT_CONFLICT: i32 = 4;
pub const EXIT_CORRUPT: i32 = 5;
pub const EXIT_STORAGE: i32 = 6;
pub const EXIT_INVALID_INPUT: i32 = 7;
pub const EXIT_INCOMPLETE: i32 = 8;
pub const EXIT_SERVER: i32 = 9;

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
    #[error("{0}")]
    Server(String),
    /// The archive cannot take a restore where it was asked to go.
    #[error("{0}")]
    Unreachable(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => EXIT_USAGE,
            Error::NotFound { .. } => EXIT_NOT_FOUND,
            Error::WrongRepository(_) => EXIT_WRONG_REPOSITORY,
            Error::Conflict { .. } => EXIT_CONFLICT,
            Error::Corrupt { .. } => EXIT_CORRUPT,
            Error::Storage(_) => EXIT_STORAGE,
            Error::InvalidInput { .. } => EXIT_INVALID_INPUT,
            Error::Server(_) => EXIT_SERVER,
            Error::Unreachable(_) => EXIT_INCOMPLETE,
        }
    }

    pub fn invalid_input(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::InvalidInput {
            path: path.to_string(),
            reason: reason.to_string(),
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
            e @ (CatalogError::NotInitialised { .. } | CatalogError::CorruptIdentity { .. }) => {
                Error::WrongRepository(e.to_string())
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
