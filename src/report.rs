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

use crate::escape;
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
    /// For a step of a shared or slot lock's acquire (its gate, a member record): the
    /// waiting notice and take-overs as usual, but no "acquired" line of its own.
    step: bool,
}

impl Reporter {
    pub fn new(verbosity: Verbosity, lock: &Path) -> Reporter {
        Reporter {
            verbosity,
            lock: escape::path(lock),
            terminal: std::cell::OnceCell::new(),
            wait_began: Cell::new(None),
            notice_shown: Cell::new(false),
            step: false,
        }
    }

    /// A reporter for one step of a longer acquire (SPEC §9): the same lock and
    /// verbosity, but the step's "acquired" and no-locks lines are left to the whole.
    pub fn for_step(&self) -> Reporter {
        Reporter {
            verbosity: self.verbosity,
            lock: self.lock.clone(),
            terminal: self.terminal.clone(),
            wait_began: Cell::new(None),
            notice_shown: Cell::new(false),
            step: true,
        }
    }

    /// Whether a wait began (the waiting notice was asked for at least once).
    pub fn has_waited(&self) -> bool {
        self.wait_began.get().is_some()
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
    /// once the wait has lasted [`NOTICE_AFTER`], and keeps it current. `command`
    /// finds the processes of the holder's command that keep the lock after its xlock
    /// has ended (called only when the notice is shown: it may scan /proc).
    pub fn waiting(&self, holder: &Record, command: impl FnOnce() -> Vec<(i32, String)>) {
        let began = self.wait_began.get().unwrap_or_else(Instant::now);
        self.wait_began.set(Some(began));
        if !self.notice_wanted() || began.elapsed() < NOTICE_AFTER {
            return;
        }
        let holder = Holder::of(holder, &command());
        if self.terminal() {
            let shown = notice_line(&self.lock, &holder, terminal_width());
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K{shown}");
            self.notice_shown.set(true);
        } else if !self.notice_shown.replace(true) {
            let text = notice_text(&self.lock, &holder.text(Some(&holder.cmd)));
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
        if self.step {
            return;
        }
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
            escape::text(&dead.host),
            escape::text(&dead.since),
            escape::text(&dead.cmd)
        ));
    }

    /// `-v`, once: the file system refuses locks (or `switch`=1 switched them off).
    pub fn no_kernel_locks(&self, dir: &Path, switch: &str) {
        if self.step {
            return;
        }
        self.verbose(format_args!(
            "{} has no file locks (or {switch}=1): deciding by the holder's record and polling",
            escape::path(dir),
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

    /// Whether `-v` lines are printed (so that the processes they name are worth
    /// finding).
    pub fn is_verbose(&self) -> bool {
        self.verbosity == Verbosity::Verbose
    }

    /// `-v`: the command has ended, but processes it started still have the command
    /// lock's descriptor: the lock is left to them (SPEC §4.5).
    pub fn left_to_command(&self, processes: &[(i32, String)]) {
        let whom = if processes.is_empty() {
            "processes of the command that still have it".to_owned()
        } else {
            format!(
                "processes of the command that still have it: {}",
                processes_text(processes)
            )
        };
        self.verbose(format_args!(
            "left {} to {whom}; it is free once they have ended (use --close for a command that starts daemons)",
            self.lock
        ));
    }

    /// The lock could not be had in time (not with `-q`). `command`: the processes of
    /// the holder's command that keep the lock after its xlock has ended.
    pub fn busy(&self, holder: Option<&Record>, command: &[(i32, String)], waited: Option<Duration>) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        let by = holder
            .map(|h| format!(" (held by {})", holder_text(h, command)))
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

/// `pid 4242 'make deploy' on build-3 for 3m12s`: the holder, as the busy line, the
/// waiting notice and `-v` name it. See [`Holder`]. Once that xlock has ended and
/// processes of its command (`command`) keep the lock: `...; its xlock has ended, its
/// command's processes still hold it: pid 4300 (sleep)`.
pub fn holder_text(holder: &Record, command: &[(i32, String)]) -> String {
    let holder = Holder::of(holder, command);
    holder.text(Some(&holder.cmd))
}

/// At most this many processes are named in one line; the rest are counted.
const PROCESSES_SHOWN: usize = 4;

/// `pid 4300 (sleep), pid 4301 (sh)`, and `and 3 more` past [`PROCESSES_SHOWN`]
/// (names escaped: a process names itself).
fn processes_text(processes: &[(i32, String)]) -> String {
    let mut text: Vec<String> = processes
        .iter()
        .take(PROCESSES_SHOWN)
        .map(|(pid, name)| format!("pid {pid} ({})", escape::text(name)))
        .collect();
    if processes.len() > PROCESSES_SHOWN {
        text.push(format!("and {} more", processes.len() - PROCESSES_SHOWN));
    }
    text.join(", ")
}

/// A holder as xlock shows it: its record's text escaped ([`escape`]), its command
/// between delimiters that the command does not contain, so that a command with
/// quotes of its own reads plainly: `'make deploy'`, `"sh -c 'echo hi'"`, or, with
/// both kinds of quotes, `` `sh -c 'echo "hi"'` ``.
struct Holder {
    pid: i32,
    cmd: String,
    delimiter: char,
    host: String,
    /// ` for 3m12s`, or nothing if `since` is not a time.
    age: String,
    /// `; its xlock has ended, its command's processes still hold it: pid 4300
    /// (sleep)`, or nothing while its xlock runs.
    tree: String,
}

impl Holder {
    fn of(record: &Record, command: &[(i32, String)]) -> Holder {
        let cmd = escape::text(&record.cmd).into_owned();
        let delimiter = ['\'', '"', '`']
            .into_iter()
            .find(|quote| !cmd.contains(*quote))
            .unwrap_or('`');
        Holder {
            pid: record.pid,
            delimiter,
            cmd,
            host: escape::text(&record.host).into_owned(),
            age: age(record)
                .map(|age| format!(" for {}", compact(age)))
                .unwrap_or_default(),
            tree: if command.is_empty() {
                String::new()
            } else {
                format!(
                    "; its xlock has ended, its command's processes still hold it: {}",
                    processes_text(command)
                )
            },
        }
    }

    /// `pid 4242 'CMD' on build-3 for 3m12s`, with `cmd` for the command (`None`: none),
    /// and the processes of its command that keep the lock, if any.
    fn text(&self, cmd: Option<&str>) -> String {
        let cmd = cmd
            .map(|cmd| format!(" {0}{cmd}{0}", self.delimiter))
            .unwrap_or_default();
        format!("pid {}{cmd} on {}{}{}", self.pid, self.host, self.age, self.tree)
    }
}

/// `waiting for db.lock (held by HOLDER)…`
fn notice_text(lock: &str, holder: &str) -> String {
    format!("waiting for {lock} (held by {holder})…")
}

/// The waiting notice as a terminal `columns` wide shows it: one line of at most
/// `columns - 1` characters (a character in the last column makes some terminals
/// wrap). What does not fit gives way in this order: the command (cut, with an
/// ellipsis, then left out), then the start of the lock path, then the lock and the
/// word "waiting" (`xlock: held by pid 4242 on build-3 for 3m12s…`): the holder's pid,
/// host and age stay. Only a terminal too narrow for even those loses the line's end.
/// Characters are counted as columns (wide characters in a command may take two).
fn notice_line(lock: &str, holder: &Holder, columns: usize) -> String {
    let max = columns.saturating_sub(1);
    let len = |text: &str| text.chars().count();
    let line = |lock: &str, cmd: Option<&str>| format!("xlock: {}", notice_text(lock, &holder.text(cmd)));
    let whole = line(lock, Some(&holder.cmd));
    if len(&whole) <= max {
        return whole;
    }
    let without_cmd = line(lock, None);
    // The command takes ` 'CMD'` in the line: 3 more than its own length. Cut, it
    // keeps at least one character and the ellipsis.
    let room = max.saturating_sub(len(&without_cmd) + 3);
    if room >= 2 {
        let cut: String = holder.cmd.chars().take(room - 1).chain(['…']).collect();
        return line(lock, Some(&cut));
    }
    let over = len(&without_cmd).saturating_sub(max);
    if over == 0 {
        return without_cmd;
    }
    // Keep the end of the path (the lock's name), after an ellipsis.
    let lock_len = len(lock);
    if lock_len > over + 1 {
        let tail: String = lock.chars().skip(over + 1).collect();
        return line(&format!("…{tail}"), None);
    }
    format!("xlock: held by {}…", holder.text(None))
        .chars()
        .take(max)
        .collect()
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

/// Prints `xlock: <message>` on stderr, as one line of plain text: control characters
/// that reach it (from a path or a record that a caller did not escape) are escaped
/// here too. A closed stderr is not worth dying for.
pub fn line(args: std::fmt::Arguments<'_>) {
    let text = args.to_string();
    let _ = writeln!(std::io::stderr().lock(), "xlock: {}", escape::text(&text));
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
            mode: None,
            slots: None,
            slot: None,
        };
        let text = holder_text(&record, &[]);
        assert!(text.starts_with("pid 4242 'make deploy' on build-3 for 3m1"), "{text}");
    }

    fn record(cmd: &str, host: &str, age: u64) -> Record {
        let since = SystemTime::now() - Duration::from_secs(age);
        Record {
            xlock: 1,
            pid: 4242,
            start: 1,
            pidns: String::new(),
            boot: String::new(),
            host: host.into(),
            nonce: "0".repeat(32),
            since: humantime::format_rfc3339_millis(since).to_string(),
            cmd: cmd.into(),
            mode: None,
            slots: None,
            slot: None,
        }
    }

    #[test]
    fn a_holder_whose_command_keeps_the_lock_names_its_processes() {
        let holder = record("make deploy", "build-3", 192);
        let text = holder_text(&holder, &[(4300, "sleep".into()), (4301, "sh\x1b]0;x".into())]);
        assert!(
            text.ends_with("; its xlock has ended, its command's processes still hold it: pid 4300 (sleep), pid 4301 (sh\\x1b]0;x)"),
            "{text}"
        );
        let many: Vec<(i32, String)> = (1..=6).map(|pid| (pid, "sh".to_owned())).collect();
        assert_eq!(
            processes_text(&many),
            "pid 1 (sh), pid 2 (sh), pid 3 (sh), pid 4 (sh), and 2 more"
        );
    }

    #[test]
    fn commands_with_quotes_get_other_delimiters() {
        let text = |cmd: &str| holder_text(&record(cmd, "h", 5), &[]);
        assert_eq!(text("make deploy"), "pid 4242 'make deploy' on h for 5s");
        assert_eq!(text("sh -c 'echo hi'"), r#"pid 4242 "sh -c 'echo hi'" on h for 5s"#);
        assert_eq!(
            text(r#"sh -c 'echo "hi"'"#),
            r#"pid 4242 `sh -c 'echo "hi"'` on h for 5s"#
        );
        assert_eq!(text("a\nb\x1b"), "pid 4242 'a\\nb\\x1b' on h for 5s");
        assert_eq!(
            text("a\n'b\x1b"),
            "pid 4242 \"a\\n'b\\x1b\" on h for 5s",
            "escaped first"
        );
    }

    #[test]
    fn the_notice_fits_the_terminal_command_first() {
        let holder = Holder::of(&record("sh -c 'make deploy && make smoke-test'", "build-3", 192), &[]);
        let lock = "/var/lock/deploy.lock";
        let at = |columns: usize| {
            let line = notice_line(lock, &holder, columns);
            assert!(line.chars().count() < columns.max(1), "{columns} columns: {line:?}");
            line
        };
        let whole = r#"xlock: waiting for /var/lock/deploy.lock (held by pid 4242 "sh -c 'make deploy && make smoke-test'" on build-3 for 3m12s)…"#;
        assert_eq!(at(200), whole);
        assert_eq!(at(whole.chars().count() + 1), whole);
        assert_eq!(
            at(whole.chars().count()),
            r#"xlock: waiting for /var/lock/deploy.lock (held by pid 4242 "sh -c 'make deploy && make smoke-tes…" on build-3 for 3m12s)…"#
        );
        assert_eq!(
            at(97),
            r#"xlock: waiting for /var/lock/deploy.lock (held by pid 4242 "sh -c 'make…" on build-3 for 3m12s)…"#
        );
        // One character of the command is the least worth showing.
        assert_eq!(
            at(87),
            r#"xlock: waiting for /var/lock/deploy.lock (held by pid 4242 "s…" on build-3 for 3m12s)…"#
        );
        let without_command = "xlock: waiting for /var/lock/deploy.lock (held by pid 4242 on build-3 for 3m12s)…";
        assert_eq!(at(86), without_command);
        assert_eq!(at(82), without_command);
        // Then the start of the path gives way.
        assert_eq!(
            at(81),
            "xlock: waiting for …ar/lock/deploy.lock (held by pid 4242 on build-3 for 3m12s)…"
        );
        assert_eq!(
            at(70),
            "xlock: waiting for …loy.lock (held by pid 4242 on build-3 for 3m12s)…"
        );
        assert_eq!(at(63), "xlock: waiting for …k (held by pid 4242 on build-3 for 3m12s)…");
        // Then the lock and the word "waiting".
        assert_eq!(at(62), "xlock: held by pid 4242 on build-3 for 3m12s…");
        assert_eq!(at(46), "xlock: held by pid 4242 on build-3 for 3m12s…");
        // Too narrow for pid, host and age: the end goes.
        assert_eq!(at(40), "xlock: held by pid 4242 on build-3 for ");
        assert_eq!(at(2), "x");
        assert_eq!(at(1), "");
        assert_eq!(at(0), "");
    }
}
