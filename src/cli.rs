//! The command line (SPEC §1–2): the clap definition, and the one parser that turns
//! raw arguments into a checked [`Config`] or [`StatusQuery`] before anything is
//! acted on.
//!
//! The parser is hand-written ([`parse`]): the contract reads options only before
//! LOCK and everything after it verbatim, which is not how clap reads a line, and
//! building clap's `Command` costs about 50 µs of a 2 ms run (SPEC §7). The clap
//! derive [`Cli`] stays the definition that renders `--help`, `--version`, the man
//! page and the completions; it is built only when help or version is asked for. A
//! unit test holds the parser's option table (`parser::OPTIONS`) to `Cli::command()`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::exit::Exit;
use crate::lock::etcd::{url, Url};
use crate::report::Verbosity;

/// Run a command while holding a named, crash-safe file lock.
///
/// xlock acquires LOCK (waiting as long as asked), runs COMMAND, passes signals
/// through to it, and releases LOCK on every way out. The lock file exists exactly
/// while the lock is held and names its holder; a holder that crashed is detected and
/// its lock taken over at once.
#[derive(Debug, PartialEq, Eq, Parser)]
#[command(
    name = "xlock",
    version,
    override_usage = "xlock [OPTIONS] LOCK [--] COMMAND [ARG]...\n       xlock [OPTIONS] LOCK -c 'SHELL COMMAND'\n       xlock --status [--json] LOCK...",
    after_help = "Options come before LOCK. Everything after LOCK (and an optional --) is the \
                  command, verbatim, even words that start with '-'. The one exception, as in \
                  flock(1): -c STR as the last two words runs STR with /bin/sh -c.\n\n\
                  Examples:\n  \
                  # cron: skip this run if the last one still holds the lock\n  \
                  */5 * * * * xlock -n /var/lock/backup.lock /usr/local/bin/backup\n  \
                  # a CI step: wait at most 10 minutes for the staging database\n  \
                  xlock --timeout 10m /srv/ci/staging-db.lock -- ./deploy.sh\n  \
                  # who holds it, as JSON\n  \
                  xlock --status --json /var/lock/backup.lock\n  \
                  # across machines: a lock on an etcd cluster\n  \
                  xlock -w 10m etcd://10.0.0.5:2379,10.0.0.6:2379/deploy -- ./deploy.sh\n\n\
                  Exit status: the command's own; 75 (or -E N) if the lock was busy; \
                  125 if xlock failed; 126 if COMMAND could not be executed; 127 if it was \
                  not found. If the command dies of a signal, xlock dies of the same signal.\n\n\
                  Environment: the command gets XLOCK_PATH (the lock's absolute path) and \
                  XLOCK_HELD (the locks its xlock ancestors hold); an xlock inside it on one of \
                  those locks runs at once. Under an etcd lock the command also gets XLOCK_TOKEN, a \
                  fencing token that increases from one holder to the next; TLS and \
                  authentication follow ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY and ETCDCTL_USER. \
                  XLOCK_NO_KERNEL_LOCKS=1 makes xlock decide by the \
                  holder's record and poll, as on a file system without locks."
)]
pub struct Cli {
    /// Wait at most DUR for the lock: 250ms, 5s, 1m30s, or a number of seconds (0.5).
    /// 0 tries once. Default: wait forever
    #[arg(short = 'w', long = "timeout", value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Fail at once if the lock is busy (same as --timeout 0)
    #[arg(short = 'n', long = "nonblock", conflicts_with = "timeout")]
    pub nonblock: bool,

    /// Exit status when the lock could not be had
    #[arg(short = 'E', long = "conflict-exit-code", value_name = "N", default_value_t = Exit::DEFAULT_BUSY)]
    pub conflict_exit_code: u8,

    /// Run STR with /bin/sh -c (always /bin/sh, not $SHELL as flock(1) does; for another
    /// shell: xlock LOCK bash -c STR)
    #[arg(short = 'c', long = "command", value_name = "STR")]
    pub shell: Option<OsString>,

    /// Say on stderr what happened: waits, take-overs, release
    #[arg(short = 'v', long = "verbose", conflicts_with = "quiet")]
    pub verbose: bool,

    /// Print nothing of xlock's own but errors
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,

    /// Do not let the command inherit the lock: it is held exactly while xlock runs, and
    /// nothing the command starts holds it. If xlock is killed, the command gets SIGKILL
    /// (not what it started), and the next holder may start while it is still exiting
    #[arg(short = 'o', long = "close")]
    pub close: bool,

    /// Take an exclusive lock: the default, accepted as flock(1) spells it
    #[arg(short = 'x', long = "exclusive", visible_short_alias = 'e', conflicts_with_all = ["shared", "slots"])]
    pub exclusive: bool,

    /// Take a shared lock: any number of shared holders at once, none while an exclusive
    /// holder holds it; once an exclusive acquirer waits, new shared ones queue behind it
    #[arg(short = 's', long = "shared", conflicts_with = "slots")]
    pub shared: bool,

    /// Take one of N slots: at most N holders at once; the command gets XLOCK_SLOT
    /// (0 to N-1), unique among the current holders. Every user of LOCK must give the
    /// same N
    #[arg(long = "slots", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub slots: Option<u32>,

    /// How old another host's heartbeat (the lock file's mtime) may get before its lock
    /// counts as stale; the holder refreshes it every DUR/3. For an etcd LOCK: the
    /// lease's TTL (at least 2s), renewed every DUR/3
    #[arg(long = "stale-after", value_name = "DUR", default_value = DEFAULT_STALE_AFTER, value_parser = parse_duration)]
    pub stale_after: Duration,

    /// Report each LOCK (free, held by whom, stale) instead of running anything; exit 0
    /// if all are free, 75 (or -E) if any is held
    #[arg(long = "status", conflicts_with_all = ["timeout", "nonblock", "shell", "close", "shared", "slots"])]
    pub status: bool,

    /// With --status: print one JSON object per lock
    #[arg(long = "json", requires = "status")]
    pub json: bool,

    /// The lock file: exists exactly while the lock is held. Or a lock on etcd:
    /// etcd://HOST:PORT[,HOST:PORT...]/NAME, etcd:///NAME (endpoints from
    /// ETCDCTL_ENDPOINTS), etcds:// for TLS
    #[arg(value_name = "LOCK")]
    pub lock: PathBuf,

    /// The command to run, and its arguments, verbatim
    #[arg(
        value_name = "COMMAND",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

/// `--stale-after` when not given.
const DEFAULT_STALE_AFTER: &str = "30s";

/// What to run once the lock is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSpec {
    /// A program and its arguments, run directly.
    Argv(Vec<OsString>),
    /// A string for `/bin/sh -c`.
    Shell(OsString),
}

/// How long to wait for a busy lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Forever,
    /// At most this long; zero means try once. Always small enough that
    /// `Instant::now() + d` cannot overflow (see [`wait_for`]).
    Upto(Duration),
}

/// The kind of lock asked for (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// The default (`-x`).
    Exclusive,
    /// `-s, --shared`.
    Shared,
    /// `--slots N`, N ≥ 1.
    Slots(u32),
}

/// A checked configuration: everything `run` needs, nothing left to validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// LOCK as given: a path, or an etcd URL (then also in `etcd`).
    pub lock: PathBuf,
    /// LOCK is an etcd URL (SPEC §10): parsed and checked.
    pub etcd: Option<Url>,
    pub command: CommandSpec,
    pub wait: Wait,
    pub busy_exit: u8,
    pub verbosity: Verbosity,
    pub close: bool,
    /// Another host's lock is stale once its heartbeat is this old; ours beats every third of it.
    pub stale_after: Duration,
    pub mode: LockMode,
}

/// `--status`: which locks to report, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusQuery {
    pub locks: Vec<PathBuf>,
    /// One per LOCK: its etcd URL, parsed and checked, if it is one.
    pub etcd: Vec<Option<Url>>,
    pub json: bool,
    pub busy_exit: u8,
    pub stale_after: Duration,
}

/// The outcome of reading the command line.
#[derive(Debug)]
pub enum Parsed {
    Run(Config),
    Status(StatusQuery),
    /// `--help` or `--version`: print this on stdout and exit 0.
    Print(String),
}

mod parser;

pub use parser::{misplaced_option_hint, parse};

/// `--stale-after` when not given.
const DEFAULT_STALE_AFTER_DURATION: Duration = Duration::from_secs(30);

/// `--timeout d`: wait at most `d`, or forever when the moment `d` from now cannot be
/// represented (`Instant` overflows about 292 billion years out): no wait could end
/// then. A year of slack keeps `Instant::now() + d` safe when the wait begins, a
/// little later than this check.
fn wait_for(timeout: Duration) -> Wait {
    const SLACK: Duration = Duration::from_secs(365 * 24 * 3600);
    match Instant::now()
        .checked_add(timeout)
        .and_then(|end| end.checked_add(SLACK))
    {
        Some(_) => Wait::Upto(timeout),
        None => Wait::Forever,
    }
}

/// LOCK all digits: flock(1)'s descriptor form (`flock 9`).
fn is_descriptor(lock: &std::path::Path) -> bool {
    let bytes = lock.as_os_str().as_bytes();
    !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit)
}

/// A word of the command line for a message: lossy UTF-8, control characters escaped.
fn shown_word(word: &OsStr) -> String {
    word.to_string_lossy()
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// `--stale-after` must leave room for heartbeats: at least 3 ms (one every millisecond).
fn check_stale_after(stale_after: Duration) -> Result<Duration, String> {
    if stale_after < Duration::from_millis(3) {
        return Err(format!(
            "--stale-after {} is too short: the holder's heartbeat comes every third of it; use a duration of at least 3ms (default 30s)",
            humantime::format_duration(stale_after)
        ));
    }
    Ok(stale_after)
}

/// Checks LOCK: an etcd URL (`etcd://`, `etcds://`) is parsed into a [`Url`]; any
/// other LOCK is a path, checked by [`check_lock_path`].
fn check_lock(lock: &std::path::Path) -> Result<Option<Url>, String> {
    let bytes = lock.as_os_str().as_bytes();
    if !url::is_etcd(bytes) {
        return check_lock_path(lock).map(|()| None);
    }
    let text = lock
        .to_str()
        .ok_or_else(|| format!("etcd LOCK '{}' is not valid UTF-8", shown_word(lock.as_os_str())))?;
    Url::parse(text).map(Some)
}

/// Rejects LOCK paths that cannot name a lock file, before any file is touched.
fn check_lock_path(lock: &std::path::Path) -> Result<(), String> {
    let bytes = lock.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err("LOCK is an empty path; give the path of a lock file, e.g. /tmp/job.lock".into());
    }
    let names_a_file = !bytes.ends_with(b"/")
        && lock
            .file_name()
            .is_some_and(|name| name != OsStr::new(".") && name != OsStr::new(".."))
        && !bytes.ends_with(b"/.");
    if !names_a_file {
        return Err(format!(
            "LOCK '{}' names a directory, not a file; give a file path such as '{}/xlock.lock'",
            crate::escape::path(lock),
            crate::escape::path(lock).trim_end_matches('/')
        ));
    }
    Ok(())
}

/// Parses a duration: humantime (`250ms`, `1m30s`) or a plain number of seconds
/// (`5`, `0.5`), as flock(1) takes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let hint = "use a number of seconds (5, 0.5) or a duration such as 250ms, 5s, 1m30s";
    if text.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        let seconds: f64 = text.parse().map_err(|_| format!("'{text}' is not a number; {hint}"))?;
        return Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range; {hint}"));
    }
    humantime::parse_duration(text).map_err(|err| format!("'{text}' is not a duration ({err}); {hint}"))
}

#[cfg(test)]
mod tests;
