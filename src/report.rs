//! xlock's own lines on stderr (SPEC §2 "What the user sees", §3): the waiting
//! notice, the busy and timeout lines, `-v`'s events, and errors.
//!
//! On the success path xlock prints nothing (cron mails whatever is printed). While it
//! waits, a terminal shows one line naming the holder, kept current and cleared on
//! acquire; `-q` silences it, `-v` prints it on any stderr. A busy lock is one line
//! naming the holder, unless `-q`; `-v` adds one grep-able line per event. Errors are
//! printed once, as `xlock: <message>`. (`--status` output is `status.rs`.)

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::liveness::Stale;
use crate::record::Record;

/// How much xlock says of its own on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// The waiting notice appears after this long,
const NOTICE_AFTER: Duration = Duration::from_secs(1);
/// and is refreshed this often.
const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// Writes xlock's lines for one lock.
#[derive(Debug)]
pub struct Reporter {
    verbosity: Verbosity,
    lock: String,
    /// stderr is a terminal: the notice is one line, rewritten in place. Asked the
    /// first time it matters (an uncontended run never asks).
    terminal: std::cell::OnceCell<bool>,
    wait_began: Cell<Option<Instant>>,
    notice_shown: Cell<bool>,
}

impl Reporter {
    pub fn new(verbosity: Verbosity, lock: &Path) -> Reporter {
        Reporter {
            verbosity,
            lock: lock.display().to_string(),
            terminal: std::cell::OnceCell::new(),
            wait_began: Cell::new(None),
            notice_shown: Cell::new(false),
        }
    }

    fn terminal(&self) -> bool {
        *self.terminal.get_or_init(|| std::io::stderr().is_terminal())
    }

    fn notice_wanted(&self) -> bool {
        match self.verbosity {
            Verbosity::Quiet => false,
            Verbosity::Normal => self.terminal(),
            Verbosity::Verbose => true,
        }
    }

    /// While waiting: how soon [`Reporter::waiting`] wants to be called again.
    pub fn tick(&self) -> Option<Duration> {
        self.notice_wanted().then_some(NOTICE_EVERY)
    }

    /// Called when a wait begins and then at every tick: shows the waiting notice
    /// once the wait has lasted [`NOTICE_AFTER`], and keeps it current.
    pub fn waiting(&self, holder: &Record) {
        let began = self.wait_began.get().unwrap_or_else(Instant::now);
        self.wait_began.set(Some(began));
        if !self.notice_wanted() || began.elapsed() < NOTICE_AFTER {
            return;
        }
        let text = format!("waiting for {} (held by {})…", self.lock, holder_text(holder));
        if self.terminal() {
            let shown: String = format!("xlock: {text}").chars().take(terminal_width() - 1).collect();
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K{shown}");
            self.notice_shown.set(true);
        } else if !self.notice_shown.replace(true) {
            line(format_args!("{text}"));
        }
    }

    /// A wait ended: clears the notice from the terminal.
    pub fn done_waiting(&self) {
        if self.terminal() && self.notice_shown.replace(false) {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }

    /// `-v`: acquired, and after how long a wait if there was one.
    pub fn acquired(&self, waited: Option<Duration>) {
        match waited {
            Some(waited) => self.verbose(format_args!("acquired {} after waiting {}", self.lock, seconds(waited))),
            None => self.verbose(format_args!("acquired {}", self.lock)),
        }
    }

    /// `-v`: a dead holder's lock was taken over.
    pub fn took_over(&self, dead: &Record, why: &Stale) {
        self.verbose(format_args!(
            "took over stale {} {} (host {}, since {}): {}",
            self.lock,
            why.taken_from(dead),
            dead.host,
            dead.since,
            dead.cmd
        ));
    }

    /// `-v`, once: the file system refuses locks (or `switch`=1 switched them off).
    pub fn no_kernel_locks(&self, dir: &Path, switch: &str) {
        self.verbose(format_args!(
            "{} has no file locks (or {switch}=1): deciding by the holder's record and polling",
            dir.display(),
        ));
    }

    /// `-v`: an ancestor holds the lock, so the command runs at once.
    pub fn nested(&self, holder: &Record) {
        self.verbose(format_args!(
            "{} is held by an ancestor (pid {}); running the command without acquiring it again",
            self.lock, holder.pid
        ));
    }

    /// `-v`: released.
    pub fn released(&self) {
        self.verbose(format_args!("released {}", self.lock));
    }

    /// The lock could not be had in time (not with `-q`).
    pub fn busy(&self, holder: Option<&Record>, waited: Option<Duration>) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        let by = holder
            .map(|h| format!(" (held by {})", holder_text(h)))
            .unwrap_or_default();
        match waited {
            None => line(format_args!("{} is busy{by}", self.lock)),
            Some(waited) => line(format_args!(
                "timed out after {} waiting for {}{by}",
                seconds(waited),
                self.lock
            )),
        }
    }

    fn verbose(&self, args: std::fmt::Arguments<'_>) {
        if self.verbosity == Verbosity::Verbose {
            line(args);
        }
    }
}

/// `pid 4242 'make deploy' on build-3 for 3m12s`
pub fn holder_text(holder: &Record) -> String {
    let age = age(holder)
        .map(|age| format!(" for {}", compact(age)))
        .unwrap_or_default();
    format!("pid {} '{}' on {}{age}", holder.pid, holder.cmd, holder.host)
}

/// How long the record's holder has held the lock.
pub(crate) fn age(holder: &Record) -> Option<Duration> {
    let since = humantime::parse_rfc3339(&holder.since).ok()?;
    SystemTime::now().duration_since(since).ok()
}

/// `3m12s`
pub(crate) fn compact(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
        .to_string()
        .replace(' ', "")
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// The terminal's width in columns (80 if stderr cannot say).
fn terminal_width() -> usize {
    match rustix::termios::tcgetwinsize(std::io::stderr()) {
        Ok(size) if size.ws_col > 1 => usize::from(size.ws_col),
        _ => 80,
    }
}

/// Prints `xlock: <message>` on stderr. A closed stderr is not worth dying for.
pub fn line(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "xlock: {args}");
}

/// Prints an error once, on one line.
pub fn error(err: &anyhow::Error) {
    let text = format!("{err:#}").replace('\n', " ");
    line(format_args!("{text}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_text_names_pid_command_host_and_age() {
        let since = SystemTime::now() - Duration::from_secs(192);
        let record = Record {
            xlock: 1,
            pid: 4242,
            start: 1,
            pidns: String::new(),
            boot: String::new(),
            host: "build-3".into(),
            nonce: "0".repeat(32),
            since: humantime::format_rfc3339_millis(since).to_string(),
            cmd: "make deploy".into(),
        };
        let text = holder_text(&record);
        assert!(text.starts_with("pid 4242 'make deploy' on build-3 for 3m1"), "{text}");
    }
}
