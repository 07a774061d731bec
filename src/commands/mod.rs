//! One module per subcommand: an options struct, one entry function, a report value that
//! the CLI prints. Commands orchestrate; formats live in `pg`, names in `catalog`, what
//! recovery can reach in `recovery`.

pub mod archive_get;
pub mod archive_push;
pub mod backup;
pub mod check;
pub mod copy;
pub mod demo;
pub mod drill;
pub mod expire;
pub mod history;
pub mod init;
pub mod key;
pub mod list;
pub mod metrics;
pub mod notify;
pub mod overview;
pub mod pin;
pub mod prefetch;
pub mod receive_wal;
pub mod restore;
pub mod restore_table;
pub mod run;
pub mod scratch;
pub mod verify;

/// Runs CPU- and file-bound work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> crate::error::Result<T> {
    crate::run_blocking(work).await
}
