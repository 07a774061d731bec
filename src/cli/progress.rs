//! Progress on the terminal: a bar with bytes, rate and ETA on a TTY, then a spinner with
//! the notes of a wait; a line every 10% and one per note otherwise (logs, systemd's
//! journal).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use crate::progress::Progress;

struct Bar {
    bar: indicatif::ProgressBar,
    /// A spinner with the latest note, once the bar is done and a wait goes on.
    waiting: Mutex<Option<indicatif::ProgressBar>>,
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.bar.set_length(total);
        self.bar.set_message(what.to_owned());
        self.bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn note(&self, line: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let spinner = waiting.get_or_insert_with(|| {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.enable_steady_tick(std::time::Duration::from_millis(200));
            spinner
        });
        spinner.set_message(format!("{}: {line}", self.bar.message()));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
        if let Some(spinner) = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            spinner.finish_and_clear();
        }
    }
}

#[derive(Default)]
struct LineState {
    what: String,
    total: u64,
    done: u64,
    tenths_printed: u64,
}

struct Lines(Mutex<LineState>);

impl Progress for Lines {
    fn start(&self, what: &str, total: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = LineState {
            what: what.to_owned(),
            total,
            ..LineState::default()
        };
    }

    fn advance(&self, bytes: u64) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.done += bytes;
        let tenths = (state.done * 10).checked_div(state.total).unwrap_or(10);
        if tenths > state.tenths_printed {
            state.tenths_printed = tenths;
            eprintln!(
                "{}: {}% ({} of {} bytes)",
                state.what,
                tenths * 10,
                state.done,
                state.total
            );
        }
    }

    fn note(&self, line: &str) {
        eprintln!("{}: {line}", self.what());
    }
}

impl Lines {
    fn what(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .what
            .clone()
    }
}

/// The progress display that suits standard error; none with `-q`.
pub fn terminal(quiet: bool) -> Arc<dyn Progress> {
    if quiet {
        Arc::new(crate::progress::Silent)
    } else if std::io::stderr().is_terminal() {
        Arc::new(Bar {
            bar: indicatif::ProgressBar::new(0),
            waiting: Mutex::new(None),
        })
    } else {
        Arc::new(Lines(Mutex::new(LineState::default())))
    }
}
