//! Progress of a long tool run, on standard error (standard output keeps the result lines
//! scripts read). On a terminal one line is redrawn in place; on a pipe or a file (CI logs,
//! journald) a plain line is written at each tenth of the work and at least every
//! [`QUIET_LIMIT`] while it moves, so a log shows the run going without flooding.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest time without a line on a non-terminal while work is being done.
pub const QUIET_LIMIT: Duration = Duration::from_secs(30);

/// Shortest time between two redraws on a terminal.
const REDRAW: Duration = Duration::from_millis(200);

/// One task's progress: `what` (the tool and its output) and the bytes to do.
pub struct Progress {
    what: String,
    total: u64,
    terminal: bool,
    state: Mutex<State>,
}

struct State {
    done: u64,
    /// The next tenth (1..=9) that prints a line on a non-terminal.
    next_tenth: u64,
    last_output: Instant,
    drawn: bool,
}

impl Progress {
    /// Progress of `what` over `total` bytes, drawn as a terminal line when stderr is one.
    pub fn new(what: impl Into<String>, total: u64) -> Self {
        Self::with_terminal(what, total, std::io::stderr().is_terminal())
    }

    fn with_terminal(what: impl Into<String>, total: u64, terminal: bool) -> Self {
        Progress {
            what: what.into(),
            total: total.max(1),
            terminal,
            state: Mutex::new(State {
                done: 0,
                next_tenth: 1,
                last_output: Instant::now(),
                drawn: false,
            }),
        }
    }

    /// Records that `done` bytes are done, writing a line when one is due.
    pub fn set(&self, done: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done = done.min(self.total);
        if let Some(line) = self.due(&mut s, Instant::now()) {
            let mut err = std::io::stderr().lock();
            let _ = if self.terminal {
                write!(err, "\r\x1b[K{line}")
            } else {
                writeln!(err, "{line}")
            };
        }
    }

    /// The line to write now, if one is due, updating the bookkeeping.
    fn due(&self, s: &mut State, now: Instant) -> Option<String> {
        let tenths = s.done * 10 / self.total;
        let since = now.duration_since(s.last_output);
        let due = if self.terminal {
            since >= REDRAW || !s.drawn
        } else {
            (tenths >= s.next_tenth && s.done < self.total) || since >= QUIET_LIMIT
        };
        if !due {
            return None;
        }
        s.next_tenth = tenths + 1;
        s.last_output = now;
        s.drawn = true;
        Some(self.line(s.done))
    }

    fn line(&self, done: u64) -> String {
        format!(
            "{}: {}% ({} of {})",
            self.what,
            done * 100 / self.total,
            mib(done),
            mib(self.total)
        )
    }

    /// Ends the display: on a terminal the line is left showing 100% and a newline follows.
    pub fn finish(&self) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.terminal && s.drawn {
            let _ = writeln!(std::io::stderr(), "\r\x1b[K{}", self.line(self.total));
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines a non-terminal gets for `steps` equal steps done at `at` seconds each.
    fn lines(p: &Progress, done: &[(u64, u64)]) -> Vec<String> {
        let start = p.state.lock().unwrap().last_output;
        let mut out = Vec::new();
        for &(bytes, secs) in done {
            let mut s = p.state.lock().unwrap();
            s.done = bytes;
            if let Some(l) = p.due(&mut s, start + Duration::from_secs(secs)) {
                out.push(l);
            }
        }
        out
    }

    #[test]
    fn a_pipe_gets_a_line_per_tenth_and_none_at_the_end() {
        let p = Progress::with_terminal("export x.raw", 100 << 20, false);
        let steps: Vec<(u64, u64)> = (1..=100).map(|i| (i << 20, 0)).collect();
        let got = lines(&p, &steps);
        assert_eq!(got.len(), 9, "{got:#?}");
        assert_eq!(got[0], "export x.raw: 10% (10.0 MiB of 100.0 MiB)");
        assert_eq!(got[8], "export x.raw: 90% (90.0 MiB of 100.0 MiB)");
    }

    #[test]
    fn a_slow_run_gets_a_line_at_least_every_quiet_limit() {
        let p = Progress::with_terminal("commit", 1000, false);
        let got = lines(&p, &[(1, 10), (2, 31), (3, 40), (4, 62)]);
        assert_eq!(got, ["commit: 0% (0.0 MiB of 0.0 MiB)"; 2]);
    }

    #[test]
    fn a_jump_past_several_tenths_prints_once() {
        let p = Progress::with_terminal("zfile", 100, false);
        assert_eq!(lines(&p, &[(55, 0), (58, 0), (61, 0)]).len(), 2);
    }
}
