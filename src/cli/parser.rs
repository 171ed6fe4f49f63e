//! THE command-line parser (SPEC §1): options before LOCK, the command verbatim
//! after it, `-c STR` last as the shell form, `--status` with LOCKs. Its table of
//! options ([`OPTIONS`]) is held to clap's definition ([`Cli`]) by a unit test, so
//! `--help`, the man page and the completions describe what is parsed.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;

use super::{
    check_lock, check_stale_after, is_descriptor, parse_duration, shown_word, wait_for, Cli, CommandSpec, Config,
    LockMode, Parsed, StatusQuery, Verbosity, Wait, DEFAULT_STALE_AFTER_DURATION,
};
use crate::exit::Exit;

/// An option of xlock's, as the parser knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opt {
    Timeout,
    Nonblock,
    ExitCode,
    Command,
    Verbose,
    Quiet,
    Close,
    Exclusive,
    Shared,
    Slots,
    StaleAfter,
    Status,
    Json,
    Help,
    Version,
}

/// One row of the parser's option table. The unit test `option_table_matches_clap`
/// holds every row to the argument of the same id in [`Cli`], and the reverse.
pub(super) struct OptSpec {
    pub(super) opt: Opt,
    /// clap's id of the argument: the [`Cli`] field (read by the test that holds
    /// this table to clap's).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) id: &'static str,
    pub(super) short: Option<char>,
    pub(super) short_aliases: &'static [char],
    pub(super) long: &'static str,
    pub(super) long_aliases: &'static [&'static str],
    /// The name of the value it takes (`DUR`), `None` for a flag.
    pub(super) value: Option<&'static str>,
}

impl OptSpec {
    /// As `--help` shows it: `-w, --timeout <DUR>`.
    fn name(&self) -> String {
        let short = self.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let value = self.value.map(|v| format!(" <{v}>")).unwrap_or_default();
        format!("'{short}--{}{value}'", self.long)
    }
}

/// Every option, in `--help` order.
#[rustfmt::skip]
pub(super) const OPTIONS: &[OptSpec] = &[
    OptSpec { opt: Opt::Timeout, id: "timeout", short: Some('w'), short_aliases: &[], long: "timeout", long_aliases: &[], value: Some("DUR") },
    OptSpec { opt: Opt::Nonblock, id: "nonblock", short: Some('n'), short_aliases: &[], long: "nonblock", long_aliases: &[], value: None },
    OptSpec { opt: Opt::ExitCode, id: "conflict_exit_code", short: Some('E'), short_aliases: &[], long: "conflict-exit-code", long_aliases: &[], value: Some("N") },
    OptSpec { opt: Opt::Command, id: "shell", short: Some('c'), short_aliases: &[], long: "command", long_aliases: &[], value: Some("STR") },
    OptSpec { opt: Opt::Verbose, id: "verbose", short: Some('v'), short_aliases: &[], long: "verbose", long_aliases: &[], value: None },
    OptSpec { opt: Opt::Quiet, id: "quiet", short: Some('q'), short_aliases: &[], long: "quiet", long_aliases: &[], value: None },
    OptSpec { opt: Opt::Close, id: "close", short: Some('o'), short_aliases: &[], long: "close", long_aliases: &[], value: None },
    OptSpec { opt: Opt::Exclusive, id: "exclusive", short: Some('x'), short_aliases: &['e'], long: "exclusive", long_aliases: &[], value: None },
    OptSpec { opt: Opt::Shared, id: "shared", short: Some('s'), short_aliases: &[], long: "shared", long_aliases: &[], value: None },
    OptSpec { opt: Opt::Slots, id: "slots", short: None, short_aliases: &[], long: "slots", long_aliases: &[], value: Some("N") },
    OptSpec { opt: Opt::StaleAfter, id: "stale_after", short: None, short_aliases: &[], long: "stale-after", long_aliases: &[], value: Some("DUR") },
    OptSpec { opt: Opt::Status, id: "status", short: None, short_aliases: &[], long: "status", long_aliases: &[], value: None },
    OptSpec { opt: Opt::Json, id: "json", short: None, short_aliases: &[], long: "json", long_aliases: &[], value: None },
    OptSpec { opt: Opt::Help, id: "help", short: Some('h'), short_aliases: &[], long: "help", long_aliases: &[], value: None },
    OptSpec { opt: Opt::Version, id: "version", short: Some('V'), short_aliases: &[], long: "version", long_aliases: &[], value: None },
];

/// Options that cannot be given together, as `conflicts_with` says in [`Cli`] (the
/// unit test holds the two to the same pairs).
pub(super) const CONFLICTS: &[(Opt, Opt)] = &[
    (Opt::Nonblock, Opt::Timeout),
    (Opt::Verbose, Opt::Quiet),
    (Opt::Status, Opt::Timeout),
    (Opt::Status, Opt::Nonblock),
    (Opt::Status, Opt::Command),
    (Opt::Status, Opt::Close),
    (Opt::Status, Opt::Shared),
    (Opt::Status, Opt::Slots),
    (Opt::Shared, Opt::Slots),
    (Opt::Exclusive, Opt::Shared),
    (Opt::Exclusive, Opt::Slots),
];

pub(super) fn spec(opt: Opt) -> &'static OptSpec {
    OPTIONS
        .iter()
        .find(|spec| spec.opt == opt)
        .expect("every Opt has a row")
}

fn find_long(name: &[u8]) -> Option<&'static OptSpec> {
    OPTIONS
        .iter()
        .find(|spec| spec.long.as_bytes() == name || spec.long_aliases.iter().any(|a| a.as_bytes() == name))
}

fn find_short(c: u8) -> Option<&'static OptSpec> {
    let c = char::from(c);
    OPTIONS
        .iter()
        .find(|spec| spec.short == Some(c) || spec.short_aliases.contains(&c))
}

/// Appended to every usage error.
const SEE_HELP: &str = "; see 'xlock --help'";

/// Parses and validates argv (including argv[0]). An `Err` is a one-line message for
/// `xlock: <message>`, exit 125.
///
/// Options come before LOCK (the first word that is not an option or an option's
/// value; `--` ends the options and makes the next word LOCK). After LOCK: an
/// optional `--`, then the command verbatim, except `-c STR` as the last two words
/// (the shell form, as in flock(1)). With `--status`, every other word is a LOCK and
/// options may come between them, up to a `--`.
pub fn parse<I, T>(args: I) -> Result<Parsed, String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut raw = Raw::default();
    let mut i = 1;
    let mut options_ended = false;
    // The options before LOCK.
    while let Some(word) = args.get(i) {
        if word == "--" {
            options_ended = true;
            i += 1;
            break;
        }
        if !is_option(word) {
            break;
        }
        i = raw.option(&args, i, raw.has(Opt::Status))?;
        if let Some(text) = raw.print.take() {
            return Ok(Parsed::Print(text));
        }
    }
    if raw.has(Opt::Status) {
        while let Some(word) = args.get(i) {
            if !options_ended && word == "--" {
                options_ended = true;
                i += 1;
            } else if !options_ended && is_option(word) {
                i = raw.option(&args, i, true)?;
                if let Some(text) = raw.print.take() {
                    return Ok(Parsed::Print(text));
                }
            } else {
                raw.locks.push(PathBuf::from(word));
                i += 1;
            }
        }
        raw.check_conflicts()?;
        return raw.status().map(Parsed::Status);
    }
    if let Some(lock) = args.get(i) {
        raw.lock = Some(PathBuf::from(lock));
        match &args[i + 1..] {
            [c, text] if c == "-c" => {
                if raw.shell.is_some() {
                    return Err(format!(
                        "-c STR was given both before LOCK and after it; give it once{SEE_HELP}"
                    ));
                }
                raw.shell = Some(text.clone());
            }
            [dashes, rest @ ..] if dashes == "--" => raw.command = rest.to_vec(),
            rest => raw.command = rest.to_vec(),
        }
    }
    raw.check_conflicts()?;
    raw.run().map(Parsed::Run)
}

/// A word that the parser reads as options (where options are read): `-x...` or
/// `--x...`, not `-` alone (a LOCK named `-`), not `--` (the end of options).
fn is_option(word: &OsStr) -> bool {
    word.len() > 1 && word.as_bytes()[0] == b'-' && word != "--"
}

/// The command line as read, before validation.
#[derive(Default)]
struct Raw {
    /// One bit per [`Opt`] given.
    given: u32,
    timeout: Option<Duration>,
    busy_exit: Option<u8>,
    shell: Option<OsString>,
    stale_after: Option<Duration>,
    slots: Option<u32>,
    lock: Option<PathBuf>,
    command: Vec<OsString>,
    /// With `--status`.
    locks: Vec<PathBuf>,
    /// `--help` or `--version` was met: print this.
    print: Option<String>,
}

impl Raw {
    fn has(&self, opt: Opt) -> bool {
        self.given & (1 << opt as u32) != 0
    }

    /// Reads the option word `args[i]` (with its value, which may be the next word,
    /// taken verbatim even if it starts with '-'); returns the index of the next word.
    fn option(&mut self, args: &[OsString], i: usize, status: bool) -> Result<usize, String> {
        let word = args[i].as_bytes();
        let mut next = i + 1;
        if let Some(long) = word.strip_prefix(b"--") {
            let (name, attached) = match long.iter().position(|&b| b == b'=') {
                Some(at) => (&long[..at], Some(OsStr::from_bytes(&long[at + 1..]))),
                None => (long, None),
            };
            let shown = format!("--{}", String::from_utf8_lossy(name));
            let spec = find_long(name).ok_or_else(|| unknown(&shown, &args[i], status))?;
            let value = match (spec.value, attached) {
                (Some(_), Some(value)) => Some(value),
                (Some(_), None) => {
                    next += 1;
                    Some(args.get(i + 1).ok_or_else(|| missing(spec))?.as_os_str())
                }
                (None, Some(value)) => {
                    return Err(format!(
                        "{} takes no value, but '{}' was given{SEE_HELP}",
                        spec.name(),
                        shown_word(value)
                    ))
                }
                (None, None) => None,
            };
            self.set(spec, value, true)?;
            return Ok(next);
        }
        let letters = &word[1..];
        let mut k = 0;
        while k < letters.len() {
            let Some(spec) = find_short(letters[k]) else {
                let letter = String::from_utf8_lossy(&letters[k..]).chars().next().unwrap_or('?');
                return Err(unknown(&format!("-{letter}"), &args[i], status));
            };
            k += 1;
            if spec.value.is_none() {
                self.set(spec, None, false)?;
                if self.print.is_some() {
                    break; // -h or -V: the rest of the cluster is not read (-hV, -hZ)
                }
                continue;
            }
            // The rest of the word is the value (`-w5`, and `-w=5` as clap reads it),
            // or else the next word.
            let rest = &letters[k..];
            let value = if rest.is_empty() {
                next += 1;
                args.get(i + 1).ok_or_else(|| missing(spec))?.as_os_str()
            } else {
                OsStr::from_bytes(rest.strip_prefix(b"=").unwrap_or(rest))
            };
            self.set(spec, Some(value), false)?;
            break;
        }
        Ok(next)
    }

    /// Records option `spec` with its value; `long`: spelt `--long` (for `--help`).
    fn set(&mut self, spec: &OptSpec, value: Option<&OsStr>, long: bool) -> Result<(), String> {
        let bit = 1 << spec.opt as u32;
        // -x is a no-op, so `-x -e` does no harm.
        if self.given & bit != 0 && !matches!(spec.opt, Opt::Exclusive | Opt::Shared) {
            return Err(format!("{} was given twice; give it once{SEE_HELP}", spec.name()));
        }
        self.given |= bit;
        let value = value.unwrap_or_default();
        let invalid = |reason: String| {
            format!(
                "invalid value '{}' for {}: {reason}{SEE_HELP}",
                shown_word(value),
                spec.name()
            )
        };
        let text = || value.to_str().ok_or_else(|| invalid("not valid UTF-8".into()));
        match spec.opt {
            Opt::Timeout => self.timeout = Some(parse_duration(text()?).map_err(invalid)?),
            Opt::StaleAfter => self.stale_after = Some(parse_duration(text()?).map_err(invalid)?),
            Opt::ExitCode => {
                let text = text()?;
                let code = text
                    .parse::<u8>()
                    .map_err(|_| invalid(format!("'{text}' is not an exit status; use a number from 0 to 255")))?;
                self.busy_exit = Some(code);
            }
            Opt::Slots => {
                let text = text()?;
                let n = text.parse::<u32>().map_err(|_| {
                    invalid(format!(
                        "'{text}' is not a number of slots; use a whole number from 1 to {}",
                        u32::MAX
                    ))
                })?;
                if n == 0 {
                    return Err(invalid(
                        "a lock needs at least one slot; use a whole number from 1 (--slots 1 is an exclusive lock with XLOCK_SLOT=0)".into(),
                    ));
                }
                self.slots = Some(n);
            }
            Opt::Command => self.shell = Some(value.to_owned()),
            Opt::Help => {
                let mut command = Cli::command();
                // As clap does: -h the short help, --help the long one.
                let help = if long {
                    command.render_long_help()
                } else {
                    command.render_help()
                };
                self.print = Some(help.to_string());
            }
            Opt::Version => self.print = Some(Cli::command().render_version()),
            Opt::Nonblock
            | Opt::Verbose
            | Opt::Quiet
            | Opt::Close
            | Opt::Exclusive
            | Opt::Shared
            | Opt::Status
            | Opt::Json => {}
        }
        Ok(())
    }

    fn check_conflicts(&self) -> Result<(), String> {
        for &(a, b) in CONFLICTS {
            if self.has(a) && self.has(b) {
                return Err(format!(
                    "{} cannot be used with {}; give one of them{SEE_HELP}",
                    spec(a).name(),
                    spec(b).name()
                ));
            }
        }
        if self.has(Opt::Json) && !self.has(Opt::Status) {
            return Err(format!(
                "--json goes with --status (xlock --status --json LOCK...){SEE_HELP}"
            ));
        }
        Ok(())
    }

    fn stale_after(&self) -> Result<Duration, String> {
        match self.stale_after {
            Some(stale_after) => check_stale_after(stale_after),
            None => Ok(DEFAULT_STALE_AFTER_DURATION),
        }
    }

    fn status(self) -> Result<StatusQuery, String> {
        if self.locks.is_empty() {
            return Err("--status needs at least one LOCK; usage: xlock --status [--json] LOCK...".into());
        }
        let etcd = self
            .locks
            .iter()
            .map(|lock| check_lock(lock))
            .collect::<Result<_, _>>()?;
        Ok(StatusQuery {
            etcd,
            json: self.has(Opt::Json),
            busy_exit: self.busy_exit.unwrap_or(Exit::DEFAULT_BUSY),
            stale_after: self.stale_after()?,
            locks: self.locks,
        })
    }

    fn run(self) -> Result<Config, String> {
        let stale_after = self.stale_after()?;
        let wait = if self.has(Opt::Nonblock) {
            Wait::Upto(Duration::ZERO)
        } else {
            self.timeout.map_or(Wait::Forever, wait_for)
        };
        let verbosity = if self.has(Opt::Quiet) {
            Verbosity::Quiet
        } else if self.has(Opt::Verbose) {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        };
        let busy_exit = self.busy_exit.unwrap_or(Exit::DEFAULT_BUSY);
        let close = self.has(Opt::Close);
        let mode = match self.slots {
            Some(n) => LockMode::Slots(n),
            None if self.has(Opt::Shared) => LockMode::Shared,
            None => LockMode::Exclusive,
        };
        let lock = self
            .lock
            .ok_or("no LOCK given; usage: xlock [OPTIONS] LOCK [--] COMMAND [ARG]...")?;
        let etcd = check_lock(&lock)?;
        if etcd.is_some() {
            crate::lock::etcd::url::check_ttl(stale_after)?;
            if mode != LockMode::Exclusive {
                return Err(format!(
                    "{} is an etcd lock, which is exclusive only: drop {}, or use a lock file for shared locks and slots",
                    shown_word(lock.as_os_str()),
                    if mode == LockMode::Shared { "--shared" } else { "--slots" },
                ));
            }
        }
        let command = match (self.shell, self.command.is_empty()) {
            (Some(shell), true) => CommandSpec::Shell(shell),
            (None, false) => CommandSpec::Argv(self.command),
            (None, true) if is_descriptor(&lock) => {
                return Err(format!(
                    "xlock takes the path of a lock file, not a file descriptor ('{}' as in flock {0}); \
                     run the commands under the lock instead: xlock /var/lock/NAME.lock -c 'COMMANDS' \
                     (or xlock /var/lock/NAME.lock ./script)",
                    crate::escape::path(&lock)
                ))
            }
            (None, true) => {
                return Err(format!(
                    "no command given to run under {}; usage: xlock LOCK [--] COMMAND [ARG]... or xlock LOCK -c 'SHELL COMMAND'",
                    shown_word(lock.as_os_str())
                ))
            }
            (Some(_), false) => {
                return Err("both -c STR and a COMMAND were given; use one of them (put -c STR last, or use -- before a COMMAND named -c)".into())
            }
        };
        Ok(Config {
            lock,
            etcd,
            command,
            wait,
            busy_exit,
            verbosity,
            close,
            stale_after,
            mode,
        })
    }
}

fn missing(spec: &OptSpec) -> String {
    format!(
        "{} needs a value ({}) but none was given{SEE_HELP}",
        spec.name(),
        spec.value.unwrap_or("a value")
    )
}

/// An option xlock does not have (`option`, within the command-line word `word`).
fn unknown(option: &str, word: &OsStr, status: bool) -> String {
    if let Some(hint) = flock_hint(option) {
        return format!("{hint}{SEE_HELP}");
    }
    let word = shown_word(word);
    let within = if word == option {
        String::new()
    } else {
        format!(" (in '{word}')")
    };
    let lock_hint = if status {
        format!("; to report on a lock whose name starts with '-', put it after --: xlock --status -- {word}")
    } else {
        String::new()
    };
    format!("unknown option '{option}'{within}{lock_hint}{SEE_HELP}")
}

/// flock(1) options that xlock does not take, and what to do instead.
fn flock_hint(option: &str) -> Option<&'static str> {
    match option {
        "-F" | "--no-fork" => Some(
            "xlock has no -F/--no-fork: it always runs COMMAND as its child, so that it can release \
             the lock and pass on the command's status when it ends; drop -F \
             (to leave no shell waiting, exec xlock LOCK COMMAND)",
        ),
        "--wait" => Some(
            "flock's --wait is spelt -w or --timeout in xlock: xlock -w DUR LOCK COMMAND \
             (DUR: seconds, or 250ms, 5s, 1m30s)",
        ),
        "-u" | "--unlock" => Some(
            "xlock has no -u/--unlock: the lock is released when the command ends; \
             run the commands that need it under xlock: xlock LOCK COMMAND",
        ),
        _ => None,
    }
}

/// When a command that could not be found is one of xlock's options (`xlock L -n cmd`,
/// a flock(1) habit): a hint saying that options come before LOCK. `None` for any
/// other word.
pub fn misplaced_option_hint(word: &OsStr) -> Option<String> {
    let bytes = word.as_bytes();
    if !is_option(word) {
        return None;
    }
    let shown = shown_word(word);
    let (spec, value_follows) = if let Some(long) = bytes.strip_prefix(b"--") {
        let name = long.split(|&b| b == b'=').next().unwrap_or_default();
        if let Some(hint) = flock_hint(&format!("--{}", String::from_utf8_lossy(name))) {
            return Some(hint.to_string());
        }
        let spec = find_long(name)?;
        (spec, !long.contains(&b'='))
    } else {
        if let Some(hint) = flock_hint(&format!("-{}", char::from(bytes[1]))) {
            return Some(hint.to_string());
        }
        // Every letter an option, up to one that takes the rest as its value.
        let mut found = None;
        for (k, &letter) in bytes[1..].iter().enumerate() {
            let spec = find_short(letter)?;
            found = Some((spec, k + 2 == bytes.len()));
            if spec.value.is_some() {
                break;
            }
        }
        found?
    };
    let usage = match (spec.opt, spec.value) {
        (Opt::Help | Opt::Version, _) => format!("xlock {shown}"),
        (Opt::Command, _) => "xlock -c STR LOCK, or xlock LOCK -c STR as the last two words".into(),
        (Opt::Status | Opt::Json, _) => format!("xlock {shown} LOCK..."),
        (_, Some(value)) if value_follows => format!("xlock {shown} {value} LOCK COMMAND"),
        _ => format!("xlock {shown} LOCK COMMAND"),
    };
    Some(format!(
        "'{shown}' is an xlock option: options come before LOCK ({usage})"
    ))
}
