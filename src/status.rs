//! What the user sees (SPEC §2): xlock's own lines on stderr, and `--status`.
//!
//! On the success path xlock prints nothing (cron mails whatever is printed). While it
//! waits, a terminal shows one line naming the holder, kept current and cleared on
//! acquire; `-q` silences it, `-v` prints it on any stderr. A busy lock is one line
//! naming the holder, unless `-q`; `-v` adds one grep-able line per event.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

use crate::cli::Verbosity;
use crate::liveness::Stale;
use crate::lock::State;
use crate::record::Record;

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
            why.from_holder(dead),
            dead.host,
            dead.since,
            dead.cmd
        ));
    }

    /// `-v`, once: the file system refuses locks (or they were switched off).
    pub fn no_kernel_locks(&self, dir: &Path) {
        self.verbose(format_args!(
            "{} has no file locks (or {}=1): deciding by the holder's record and polling",
            dir.display(),
            crate::lock::NO_KERNEL_LOCKS_ENV
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
fn age(holder: &Record) -> Option<Duration> {
    let since = humantime::parse_rfc3339(&holder.since).ok()?;
    SystemTime::now().duration_since(since).ok()
}

/// `3m12s`
fn compact(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
        .to_string()
        .replace(' ', "")
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn terminal_width() -> usize {
    let mut size = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct it is given.
    let ok = unsafe { nix::libc::ioctl(2, nix::libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 1 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

/// How a `--status` line bears on the exit status (the worst one wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Free,
    Held,
    Error,
}

/// Prints what `--status` found for one lock: a line, or one JSON object, on stdout
/// (an error also on stderr). Says how it bears on the exit status.
pub fn print_state(lock: &Path, state: &anyhow::Result<State>, json: bool) -> Verdict {
    let shown = lock.display();
    let (verdict, text, object) = match state {
        Ok(State::Free) => (Verdict::Free, format!("{shown}: free"), json!({"state": "free"})),
        Ok(State::Held { record, orphans }) => {
            let mut object = record_object(record, "held");
            let since = match age(record) {
                Some(age) => format!("since {} (for {})", record.since, compact(age)),
                None => format!("since {}", record.since),
            };
            object.insert("holder_alive".into(), orphans.is_empty().into());
            let text = if orphans.is_empty() {
                format!(
                    "{shown}: held by pid {} (host {}) {since}: {}",
                    record.pid, record.host, record.cmd
                )
            } else {
                let pids: Vec<i32> = orphans.iter().map(|(pid, _)| *pid).collect();
                object.insert("command_pids".into(), pids.into());
                let running: Vec<String> = orphans
                    .iter()
                    .map(|(pid, name)| format!("pid {pid} ({name})"))
                    .collect();
                format!(
                    "{shown}: held by the command of pid {} (host {}) {since}: {}; that xlock died, but its command still runs: {}",
                    record.pid,
                    record.host,
                    record.cmd,
                    running.join(", ")
                )
            };
            (Verdict::Held, text, Value::Object(object))
        }
        Ok(State::Stale { record, why }) => {
            let mut object = record_object(record, "stale");
            object.insert("stale_because".into(), why.to_string().into());
            (
                Verdict::Free,
                format!(
                    "{shown}: stale (holder pid {} {why}): the next acquirer takes it over",
                    record.pid
                ),
                Value::Object(object),
            )
        }
        Ok(State::Foreign(why)) => (
            Verdict::Error,
            format!("{shown}: foreign file: {why}; not an xlock lock file"),
            json!({"state": "foreign", "reason": why}),
        ),
        Err(err) => {
            error(err);
            (
                Verdict::Error,
                String::new(),
                json!({"state": "error", "error": format!("{err:#}")}),
            )
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        let mut object = object;
        if let Some(map) = object.as_object_mut() {
            map.insert("lock".into(), shown.to_string().into());
        }
        let _ = writeln!(out, "{object}");
    } else if !text.is_empty() {
        let _ = writeln!(out, "{text}");
    }
    verdict
}

fn record_object(record: &Record, state: &str) -> Map<String, Value> {
    let mut object = match serde_json::to_value(record) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    object.insert("state".into(), state.into());
    if let Some(age) = age(record) {
        object.insert("held_for_seconds".into(), age.as_secs().into());
    }
    object
}

/// Prints `xlock: <message>` on stderr. A closed stderr is not worth dying for.
pub fn line(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "xlock: {args}");
}

/// An I/O error as words a user can act on: the system's reason, and what to do for
/// the errors that have a general remedy.
pub fn io_reason(err: &std::io::Error) -> String {
    use nix::libc;
    let Some(errno) = err.raw_os_error() else {
        return err.to_string();
    };
    let reason = nix::errno::Errno::from_raw(errno).desc();
    let remedy = match errno {
        libc::EMFILE | libc::ENFILE => "; raise the open-file limit (ulimit -n)",
        libc::ENOSPC | libc::EDQUOT => "; free some space",
        libc::EROFS => "; use a writable file system",
        libc::ENOMEM | libc::EAGAIN => "; too many processes or not enough memory",
        _ => "",
    };
    format!("{reason}{remedy}")
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

    #[test]
    fn verdicts_order_by_severity() {
        assert!(Verdict::Free < Verdict::Held && Verdict::Held < Verdict::Error);
    }
}
