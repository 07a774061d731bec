//! pitr: PostgreSQL point-in-time recovery.
//!
//! Data flows one way: `cli` → `commands` → `recovery` → `catalog` → `storage`, with `pg`
//! (PostgreSQL formats) and `codec` (compression and checksums) as pure helpers below them.
//! Calls into the operating system that need `unsafe` live in `sys`, the one module allowed it.

#![deny(unsafe_code)]

mod aws;
pub mod catalog;
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod datadir;
pub mod error;
pub mod interrupt;
pub mod kms;
pub mod ownership;
pub mod pg;
pub mod private_fs;
pub mod progress;
pub mod recovery;
pub mod replay_plan;
pub mod server;
pub mod spool;
pub mod staging;
pub mod storage;
#[allow(unsafe_code)]
mod sys;

pub use error::{Error, Result};

/// This machine's host name, as runs record it (lock holders, backup claims, run history,
/// notifications); `None` when the system will not say.
pub fn host_name() -> Option<String> {
    sys::host_name()
}

/// Runs file- and CPU-bound work off the async runtime. A panic there is a bug: it panics
/// here too rather than turning into an error some caller might retry.
pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("blocking task panicked")
}
