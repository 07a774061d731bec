//! pitr: PostgreSQL point-in-time recovery.
//!
//! Data flows one way: `cli` → `commands` → `recovery` → `catalog` → `storage`, with `pg`
//! (PostgreSQL formats) and `codec` (compression and checksums) as pure helpers below them.

pub mod catalog;
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod datadir;
pub mod error;
pub mod pg;
pub mod progress;
pub mod recovery;
pub mod server;
pub mod storage;

pub use error::{Error, Result};
