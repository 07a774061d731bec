//! SIGINT, SIGTERM and SIGHUP (Ctrl-C, systemd stopping a unit, a closed terminal) during a
//! long command. Caught rather than left to kill the process where it stands: the command
//! stops at a point of its choosing, removes or marks what it wrote, and says in one line
//! what was left and how to resume, then exits 128 + the signal's number as a shell would.
//!
//! Stopping is cooperative: work that runs on blocking threads (file copies, staged puts)
//! cannot be cancelled, only waited for, so a command checks [`Interrupt::check`] before it
//! starts each piece, and races ([`Interrupt::race`]) only futures whose dropping leaves
//! nothing running (a query, a sleep).

use std::future::Future;

use tokio::sync::watch;

/// A signal that stops a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    Hangup,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Hangup => "SIGHUP",
        }
    }

    /// What a shell reports for a command this signal killed: 130, 143, 129.
    pub fn exit_code(self) -> u8 {
        128 + match self {
            Signal::Interrupt => 2,
            Signal::Terminate => 15,
            Signal::Hangup => 1,
        }
    }
}

/// Whether a stopping signal arrived, from the moment [`Interrupt::listen`] was called.
pub struct Interrupt {
    received: watch::Receiver<Option<Signal>>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Interrupt {
    /// Catches the signals from now on (the handlers are installed before this returns).
    /// Must run inside the runtime.
    pub fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let (sender, received) = watch::channel(None);
        let handlers = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        );
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = handlers else {
            tracing::debug!("signal handlers could not be installed: signals end pitr as usual");
            return Interrupt::never();
        };
        let listener = tokio::spawn(async move {
            let signal = tokio::select! {
                _ = int.recv() => Signal::Interrupt,
                _ = term.recv() => Signal::Terminate,
                _ = hup.recv() => Signal::Hangup,
            };
            let _ = sender.send(Some(signal));
            // Kept alive: a receiver that sees the sender gone would take it for "never".
            std::future::pending::<()>().await;
        });
        Interrupt {
            received,
            listener: Some(listener),
        }
    }

    /// Never interrupted: for runs whose caller handles signals itself.
    pub fn never() -> Self {
        let (_, received) = watch::channel(None);
        Interrupt {
            received,
            listener: None,
        }
    }

    /// The signal received, if one was.
    pub fn received(&self) -> Option<Signal> {
        *self.received.borrow()
    }

    /// `Err` once a signal arrived: the point to stop at.
    pub fn check(&self) -> Result<(), Signal> {
        self.received().map_or(Ok(()), Err)
    }

    /// Waits for the first signal (forever when none can come).
    pub async fn wait(&self) -> Signal {
        let mut received = self.received.clone();
        match received.wait_for(Option::is_some).await {
            Ok(signal) => signal.expect("waited for Some"),
            Err(_) => std::future::pending().await,
        }
    }

    /// Runs `work` unless a signal comes first; only for work that leaves nothing running
    /// when dropped.
    pub async fn race<T>(&self, work: impl Future<Output = T>) -> Result<T, Signal> {
        self.check()?;
        tokio::select! {
            result = work => Ok(result),
            signal = self.wait() => Err(signal),
        }
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_a_shells() {
        assert_eq!(Signal::Interrupt.exit_code(), 130);
        assert_eq!(Signal::Terminate.exit_code(), 143);
        assert_eq!(Signal::Hangup.exit_code(), 129);
    }

    #[tokio::test]
    async fn never_is_never_interrupted() {
        let interrupt = Interrupt::never();
        assert_eq!(interrupt.check(), Ok(()));
        assert_eq!(interrupt.race(async { 7 }).await, Ok(7));
    }
}
