//! The command line (SPEC §1–2): the clap definition, and the step that turns raw
//! arguments into a checked [`Config`] before anything is acted on.
//!
//! clap alone would read `xlock L -v x` as the flag `-v`; the contract says that
//! everything after LOCK is the command, verbatim. So argv is first split at LOCK,
//! using clap's own table of options (which ones take a value), and only the part up
//! to LOCK is parsed as options.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

use crate::exit::Exit;
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
    after_help = "Exit status: the command's own; 75 (or -E N) if the lock was busy; \
                  125 if xlock failed; 126 if COMMAND could not be executed; 127 if it was \
                  not found. If the command dies of a signal, xlock dies of the same signal.\n\n\
                  Environment: the command gets XLOCK_PATH (the lock's absolute path) and \
                  XLOCK_HELD (the locks its xlock ancestors hold); an xlock inside it on one of \
                  those locks runs at once. XLOCK_NO_KERNEL_LOCKS=1 makes xlock decide by the \
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

    /// Run STR with /bin/sh -c
    #[arg(short = 'c', long = "command", value_name = "STR")]
    pub shell: Option<OsString>,

    /// Say on stderr what happened: waits, take-overs, release
    #[arg(short = 'v', long = "verbose", conflicts_with = "quiet")]
    pub verbose: bool,

    /// Print nothing of xlock's own but errors
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,

    /// Do not let the command inherit the lock: if xlock dies, the command is killed
    #[arg(long = "close")]
    pub close: bool,

    /// How old another host's heartbeat (the lock file's mtime) may get before its lock
    /// counts as stale; the holder refreshes it every DUR/3
    #[arg(long = "stale-after", value_name = "DUR", default_value = DEFAULT_STALE_AFTER, value_parser = parse_duration)]
    pub stale_after: Duration,

    /// Report each LOCK (free, held by whom, stale) instead of running anything; exit 0
    /// if all are free, 75 (or -E) if any is held
    #[arg(long = "status", conflicts_with_all = ["timeout", "nonblock", "shell", "close"])]
    pub status: bool,

    /// With --status: print one JSON object per lock
    #[arg(long = "json", requires = "status")]
    pub json: bool,

    /// The lock file: exists exactly while the lock is held
    #[arg(value_name = "LOCK")]
    pub lock: Option<PathBuf>,

    /// The command to run, and its arguments, verbatim
    #[arg(value_name = "COMMAND", trailing_var_arg = true, allow_hyphen_values = true)]
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
    /// At most this long; zero means try once.
    Upto(Duration),
}

/// A checked configuration: everything `run` needs, nothing left to validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub lock: PathBuf,
    pub command: CommandSpec,
    pub wait: Wait,
    pub busy_exit: u8,
    pub verbosity: Verbosity,
    pub close: bool,
    /// Another host's lock is stale once its heartbeat is this old; ours beats every third of it.
    pub stale_after: Duration,
}

/// `--status`: which locks to report, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusQuery {
    pub locks: Vec<PathBuf>,
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

/// Parses and validates argv (including argv[0]). An `Err` is a one-line message for
/// `xlock: <message>`, exit 125.
pub fn parse<I, T>(args: I) -> Result<Parsed, String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match without_options(&args) {
        Some(cli) => cli,
        None => match with_clap(args) {
            Ok(cli) => cli,
            Err(err) => return clap_outcome(err),
        },
    };
    if cli.status {
        cli.validate_status().map(Parsed::Status)
    } else {
        cli.validate().map(Parsed::Run)
    }
}

/// Reads argv with clap: everything that [`without_options`] does not take.
fn with_clap(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    // One clap Command serves both the split and the parse: building it is most of
    // what parsing costs.
    let mut command = Cli::command();
    let split = split_at_lock(&command, args);
    command
        .try_get_matches_from_mut(split)
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches))
        .map_err(|err| err.with_cmd(&command))
}

/// `xlock LOCK COMMAND...` and `xlock LOCK -c STR`, with no option before LOCK, read
/// as clap reads them, without clap: building clap's Command and parsing costs about
/// 50 µs, a sixth of xlock's own time in an uncontended run (SPEC §7), and this is
/// the commonest form. `None` for anything else (clap's). The unit test
/// `without_options_reads_as_clap_does` holds the two to the same result.
fn without_options(args: &[OsString]) -> Option<Cli> {
    let lock = args
        .get(1)
        .filter(|lock| !lock.is_empty() && !lock.as_bytes().starts_with(b"-"))?;
    // As `split_at_lock` passes the words after LOCK to clap.
    let (shell, command) = match &args[2..] {
        [c, text] if c == "-c" => (Some(text.clone()), Vec::new()),
        [dashes, rest @ ..] if dashes == "--" => (None, rest.to_vec()),
        rest => (None, rest.to_vec()),
    };
    Some(Cli {
        timeout: None,
        nonblock: false,
        conflict_exit_code: Exit::DEFAULT_BUSY,
        shell,
        verbose: false,
        quiet: false,
        close: false,
        stale_after: parse_duration(DEFAULT_STALE_AFTER).ok()?,
        status: false,
        json: false,
        lock: Some(PathBuf::from(lock)),
        command,
    })
}

fn clap_outcome(err: clap::Error) -> Result<Parsed, String> {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(Parsed::Print(err.render().to_string())),
        _ => {
            let rendered = err.render().to_string();
            // clap's first paragraph, on one line (some messages list names below it).
            let first = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            Err(format!("{first}; see 'xlock --help'"))
        }
    }
}

impl Cli {
    fn validate_status(self) -> Result<StatusQuery, String> {
        let first = self
            .lock
            .ok_or("--status needs at least one LOCK; usage: xlock --status [--json] LOCK...")?;
        let locks: Vec<PathBuf> = std::iter::once(first)
            .chain(self.command.into_iter().map(PathBuf::from))
            .collect();
        for lock in &locks {
            check_lock_path(lock)?;
        }
        Ok(StatusQuery {
            locks,
            json: self.json,
            busy_exit: self.conflict_exit_code,
            stale_after: check_stale_after(self.stale_after)?,
        })
    }

    fn validate(self) -> Result<Config, String> {
        let lock = self
            .lock
            .ok_or("no LOCK given; usage: xlock [OPTIONS] LOCK [--] COMMAND [ARG]...")?;
        check_lock_path(&lock)?;
        let command = match (self.shell, self.command.is_empty()) {
            (Some(shell), true) => CommandSpec::Shell(shell),
            (None, false) => CommandSpec::Argv(self.command),
            (None, true) => {
                return Err(format!(
                    "no command given to run under {}; usage: xlock LOCK [--] COMMAND [ARG]... or xlock LOCK -c 'SHELL COMMAND'",
                    lock.display()
                ))
            }
            (Some(_), false) => {
                return Err("both -c STR and a COMMAND were given; use one of them (put -c STR last, or use -- before a COMMAND named -c)".into())
            }
        };
        let wait = match (self.nonblock, self.timeout) {
            (true, _) => Wait::Upto(Duration::ZERO),
            (false, Some(timeout)) => Wait::Upto(timeout),
            (false, None) => Wait::Forever,
        };
        let verbosity = if self.quiet {
            Verbosity::Quiet
        } else if self.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        };
        Ok(Config {
            lock,
            command,
            wait,
            busy_exit: self.conflict_exit_code,
            verbosity,
            close: self.close,
            stale_after: check_stale_after(self.stale_after)?,
        })
    }
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
            lock.display(),
            lock.display().to_string().trim_end_matches('/')
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

/// Splits argv so that clap sees only the options before LOCK: the words after LOCK
/// are passed behind `--`, verbatim, except a trailing `-c STR` (the flock(1) form),
/// which is passed as the option.
fn split_at_lock(command: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let Some(lock_at) = lock_index(command, &args) else {
        return args;
    };
    let (head, tail) = args.split_at(lock_at + 1);
    let mut out = head.to_vec();
    match tail {
        [] => {}
        [c, _] if c == "-c" => out.extend_from_slice(tail),
        [dashes, ..] if dashes == "--" => out.extend_from_slice(tail),
        _ => {
            out.push("--".into());
            out.extend_from_slice(tail);
        }
    }
    out
}

/// The index in argv of LOCK: the first word that is neither an option nor an
/// option's value. `None` if there is no such word (clap then reports what is
/// missing), or if `--` comes first (clap handles that form itself).
fn lock_index(cmd: &clap::Command, args: &[OsString]) -> Option<usize> {
    let takes_value = |arg: &clap::Arg| {
        !matches!(
            arg.get_action(),
            ArgAction::SetTrue | ArgAction::Help | ArgAction::Version
        )
    };
    let long_takes_value = |name: &str| {
        cmd.get_arguments()
            .any(|arg| arg.get_long() == Some(name) && takes_value(arg))
    };
    let short_takes_value = |c: char| {
        cmd.get_arguments()
            .any(|arg| arg.get_short() == Some(c) && takes_value(arg))
    };

    let mut i = 1;
    while i < args.len() {
        let word = args[i].to_string_lossy();
        if word == "--" {
            return None;
        } else if let Some(long) = word.strip_prefix("--") {
            if !long.contains('=') && long_takes_value(long) {
                i += 1;
            }
        } else if word.len() > 1 && word.starts_with('-') {
            let shorts: Vec<char> = word[1..].chars().collect();
            if let Some(pos) = shorts.iter().position(|&c| short_takes_value(c)) {
                if pos == shorts.len() - 1 {
                    i += 1; // the value is the next word
                }
            }
        } else {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Config {
        let mut argv = vec!["xlock"];
        argv.extend_from_slice(args);
        match parse(argv) {
            Ok(Parsed::Run(config)) => config,
            other => panic!("{args:?}: expected a config, got {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        let mut argv = vec!["xlock"];
        argv.extend_from_slice(args);
        match parse(argv) {
            Err(message) => message,
            other => panic!("{args:?}: expected an error, got {other:?}"),
        }
    }

    fn argv(words: &[&str]) -> CommandSpec {
        CommandSpec::Argv(words.iter().map(OsString::from).collect())
    }

    #[test]
    fn without_options_reads_as_clap_does() {
        use std::os::unix::ffi::OsStringExt;
        let not_utf8 = OsString::from_vec(vec![b'L', 0xff]);
        let cases: Vec<Vec<OsString>> = [
            &["L", "true"][..],
            &["L", "sh", "-c", "exit 3"],
            &["L", "-v", "x"],
            &["L", "--help"],
            &["L", "-c", "echo hi"],
            &["L", "-c"],
            &["L", "-c", "a", "b"],
            &["L", "--", "-c", "x"],
            &["L", "--", "--", "x"],
            &["L", "--"],
            &["L"],
            &["dir/", "true"],
        ]
        .iter()
        .map(|words| words.iter().map(OsString::from).collect())
        .chain([vec![not_utf8.clone(), not_utf8.clone()]])
        .collect();
        for words in cases {
            let args: Vec<OsString> = std::iter::once(OsString::from("xlock")).chain(words).collect();
            let ours = without_options(&args).unwrap_or_else(|| panic!("{args:?}: not read without options"));
            let clap = with_clap(args.clone()).unwrap_or_else(|err| panic!("{args:?}: clap: {err}"));
            assert_eq!(ours, clap, "{args:?}");
        }
        // Anything with an option, or no LOCK, is clap's.
        for words in [&["-n", "L", "x"][..], &["--status", "L"], &["-"], &[""], &[]] {
            let args: Vec<OsString> = std::iter::once("xlock")
                .chain(words.iter().copied())
                .map(OsString::from)
                .collect();
            assert_eq!(without_options(&args), None, "{args:?}");
        }
    }

    #[test]
    fn everything_after_lock_is_the_command() {
        assert_eq!(run(&["L", "true"]).command, argv(&["true"]));
        assert_eq!(run(&["L", "-v", "x"]).command, argv(&["-v", "x"]));
        assert_eq!(run(&["L", "-v", "x"]).verbosity, Verbosity::Normal);
        assert_eq!(run(&["L", "ls", "-c", "x"]).command, argv(&["ls", "-c", "x"]));
        assert_eq!(run(&["L", "--", "-c", "x"]).command, argv(&["-c", "x"]));
        assert_eq!(run(&["L", "--", "--", "x"]).command, argv(&["--", "x"]));
        assert_eq!(
            run(&["-v", "L", "--", "ls", "--", "x"]).command,
            argv(&["ls", "--", "x"])
        );
        assert_eq!(run(&["L", "-c", "x", "y"]).command, argv(&["-c", "x", "y"]));
    }

    #[test]
    fn shell_form_before_or_as_the_last_two_words() {
        assert_eq!(
            run(&["L", "-c", "echo hi"]).command,
            CommandSpec::Shell("echo hi".into())
        );
        assert_eq!(
            run(&["-c", "echo hi", "L"]).command,
            CommandSpec::Shell("echo hi".into())
        );
        assert_eq!(
            run(&["--command=echo hi", "L"]).command,
            CommandSpec::Shell("echo hi".into())
        );
        assert!(error(&["-c", "x", "L", "true"]).contains("both -c"));
    }

    #[test]
    fn options_with_values_are_skipped_when_finding_lock() {
        let config = run(&["-w", "5", "-E", "9", "L", "true"]);
        assert_eq!(config.lock, PathBuf::from("L"));
        assert_eq!(config.wait, Wait::Upto(Duration::from_secs(5)));
        assert_eq!(config.busy_exit, 9);
        assert_eq!(run(&["-w5", "L", "true"]).wait, Wait::Upto(Duration::from_secs(5)));
        assert_eq!(
            run(&["--timeout=250ms", "L", "true"]).wait,
            Wait::Upto(Duration::from_millis(250))
        );
        assert_eq!(run(&["-qw", "1", "L", "true"]).verbosity, Verbosity::Quiet);
        assert_eq!(run(&["-n", "L", "true"]).wait, Wait::Upto(Duration::ZERO));
        assert_eq!(run(&["L", "true"]).wait, Wait::Forever);
        assert_eq!(run(&["L", "true"]).busy_exit, 75);
        assert!(run(&["--close", "L", "true"]).close);
        assert_eq!(run(&["L", "true"]).stale_after, Duration::from_secs(30));
        assert_eq!(
            run(&["--stale-after", "2m", "L", "true"]).stale_after,
            Duration::from_secs(120)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "-1", "5x", "abc", "1..2", "1e999999"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("250ms"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_input_is_a_one_line_error_naming_the_value() {
        for (args, needle) in [
            (&["-w", "soon", "L", "true"][..], "soon"),
            (&["-E", "300", "L", "true"][..], "300"),
            (&["-E", "-1", "L", "true"][..], "-1"),
            (&["L"][..], "no command"),
            (&[][..], "LOCK"),
            (&["", "true"][..], "LOCK"),
            (&["dir/", "true"][..], "directory"),
            (&["..", "true"][..], "directory"),
            (&["-n", "-w", "1", "L", "true"][..], "--timeout"),
            (&["-q", "-v", "L", "true"][..], "--quiet"),
            (&["--frobnicate", "L", "true"][..], "--frobnicate"),
            (&["--stale-after", "0", "L", "true"][..], "--stale-after 0s"),
            (&["--stale-after", "later", "L", "true"][..], "later"),
        ] {
            let err = error(args);
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{args:?}: {err}");
        }
    }

    #[test]
    fn status_takes_every_word_as_a_lock() {
        let mut argv = vec!["xlock", "--status", "--json", "-E", "9", "a.lock", "-b.lock", "c.lock"];
        match parse(argv.clone()) {
            Ok(Parsed::Status(query)) => {
                assert_eq!(
                    query.locks,
                    [PathBuf::from("a.lock"), "-b.lock".into(), "c.lock".into()]
                );
                assert!(query.json);
                assert_eq!(query.busy_exit, 9);
            }
            other => panic!("{other:?}"),
        }
        argv.truncate(2);
        assert!(matches!(parse(argv), Err(m) if m.contains("LOCK")));
        assert!(error(&["--json", "L", "true"]).contains("--status"));
        assert!(error(&["--status", "-n", "L"]).contains("--nonblock"));
    }

    #[test]
    fn help_and_version_are_printed() {
        assert!(matches!(parse(["xlock", "--help"]), Ok(Parsed::Print(text)) if text.contains("LOCK")));
        assert!(matches!(parse(["xlock", "-V"]), Ok(Parsed::Print(text)) if text.contains(env!("CARGO_PKG_VERSION"))));
        // After LOCK, --help is the command's.
        assert_eq!(run(&["L", "--help"]).command, argv(&["--help"]));
    }
}
