//! Progress on the terminal: a bar with bytes, rate and ETA on a TTY; a line every 10%
//! otherwise (logs, systemd's journal).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use crate::progress::Progress;

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_message(what.to_owned());
        self.0.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
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
}

/// The progress display that suits standard error.
pub fn terminal() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(Bar(indicatif::ProgressBar::new(0)))
    } else {
        Arc::new(Lines(Mutex::new(LineState::default())))
    }
}
