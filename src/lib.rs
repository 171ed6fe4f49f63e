//! xlock: run a command under a named, crash-safe file lock.
//!
//! The flow is [`run`]: parse and validate the command line (`cli`), then, for every
//! kind of lock alike (`lock::Kind`): see whether an ancestor holds it (`nesting`),
//! acquire it, run the command with the lock's guard and pass signals through
//! (`supervise`), release, and end with the command's status (`exit`). The behaviour
//! contract is SPEC.md; each module names the sections it implements, and
//! docs/design.md opens with the module map.
//!
//! Modules are private; the few items that tests use are `#[doc(hidden)]` re-exports.

// Public only for the tests, which use `cli::Cli` (the generated man page and
// completions), `record::Record` (they plant and read records) and
// `liveness::proc_stat` (they read /proc/PID/stat); everything else in them is
// `pub(crate)`.
#[doc(hidden)]
pub mod cli;
mod error;
mod escape;
mod exit;
#[doc(hidden)]
pub mod liveness;
mod lock;
mod nesting;
#[doc(hidden)]
pub mod record;
mod report;
mod signals;
mod spawn;
mod status;
mod supervise;
mod tree;

use std::ffi::{OsStr, OsString};
use std::io::Write;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::cli::{CommandSpec, Config, Parsed};
use crate::exit::Exit;
use crate::liveness::Identity;
use crate::lock::etcd::EtcdLock;
use crate::lock::{Acquired, Deadline, FileLock, Holding, Inherit, Kind, Released, Request, SharedLock};
use crate::record::Record;
use crate::report::Reporter;
use crate::signals::Signals;
use crate::supervise::Job;

/// Runs xlock with these arguments (argv[0] first) and says how to exit.
pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> Exit {
    match cli::parse(args) {
        Ok(Parsed::Run(config)) => execute(&config).unwrap_or_else(|err| {
            report::error(&err);
            Exit::Failure
        }),
        Ok(Parsed::Status(query)) => status(&query).unwrap_or_else(|err| {
            report::error(&err);
            Exit::Failure
        }),
        Ok(Parsed::Print(text)) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => Exit::Success,
                Err(err) => {
                    report::line(format_args!("{}", error::stdout_error(&err)));
                    Exit::Failure
                }
            }
        }
        Err(message) => {
            report::line(format_args!("{message}"));
            Exit::Failure
        }
    }
}

/// Runs the command under the lock `config` names. The kind of lock is chosen here
/// (the exclusive file lock, a shared lock or slots: SPEC §9, or etcd for an etcd URL:
/// §10); the rest of the flow is the same for every kind.
fn execute(config: &Config) -> Result<Exit> {
    let signals = Signals::block()?;
    let deadline = Deadline::after(match config.wait {
        cli::Wait::Forever => None,
        cli::Wait::Upto(d) => Some(d),
    });
    let me = Identity::current()?;
    if let Some(url) = &config.etcd {
        // The parser refuses --shared and --slots with an etcd URL.
        return execute_with(&EtcdLock::new(url)?, config, deadline, &me, &signals);
    }
    match config.mode {
        cli::LockMode::Exclusive => execute_with(&FileLock::new(&config.lock)?, config, deadline, &me, &signals),
        cli::LockMode::Shared => execute_with(&SharedLock::new(&config.lock, None)?, config, deadline, &me, &signals),
        cli::LockMode::Slots(n) => execute_with(
            &SharedLock::new(&config.lock, Some(n))?,
            config,
            deadline,
            &me,
            &signals,
        ),
    }
}

/// The flow over the lock seam (`lock::Kind`, `lock::Holding`): nesting, acquire, run
/// under the held lock's guard, release.
fn execute_with<K: Kind>(
    kind: &K,
    config: &Config,
    deadline: Deadline,
    me: &Identity,
    signals: &Signals,
) -> Result<Exit> {
    let report = Reporter::new(config.verbosity, &config.lock);
    let argv: Vec<&OsStr> = match &config.command {
        CommandSpec::Argv(words) => words.iter().map(OsString::as_os_str).collect(),
        CommandSpec::Shell(text) => vec![OsStr::new("/bin/sh"), OsStr::new("-c"), text.as_os_str()],
    };
    // SIGKILL when nothing the command starts keeps the lock (--close, etcd: SPEC §10).
    let death = if config.close || config.etcd.is_some() {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    // `xlock L -n cmd`: a flock habit that ends up as a command named `-n`.
    let not_found_hint = cli::misplaced_option_hint(argv[0]);
    let inherited = nesting::Inherited::from_env();
    if !inherited.is_empty() {
        if let Some(holder) = kind.nested(&inherited)? {
            // An ancestor holds this very acquisition: run at once, leave the lock to it.
            report.nested(&holder);
            let env = inherited.child_env(kind.name(), &holder.nonce);
            let job = Job {
                argv,
                env: &env,
                death,
                inherit: None,
                not_found_hint,
            };
            return supervise::run(&job, None, signals);
        }
    }
    let record = Record {
        xlock: Record::version(),
        pid: me.pid,
        start: me.start,
        pidns: me.pidns.clone(),
        boot: me.boot.clone(),
        host: me.host.clone(),
        nonce: nonce()?,
        since: String::new(),
        cmd: match &config.command {
            CommandSpec::Argv(words) => record::describe_argv(words),
            CommandSpec::Shell(text) => record::describe_shell(text),
        },
        // Set by the kind (SPEC §9); none for the exclusive lock.
        mode: None,
        slots: None,
        slot: None,
    };
    let request = Request {
        deadline,
        inherit: if config.close {
            Inherit::Nothing
        } else {
            Inherit::CommandLock
        },
        me,
        signals,
        report: &report,
        stale_after: config.stale_after,
    };
    let held = match kind.acquire(&request, record)? {
        Acquired::Held(held) => held,
        Acquired::Busy(holder, command) => {
            let waited = (config.wait != cli::Wait::Upto(std::time::Duration::ZERO)).then(|| deadline.elapsed());
            report.busy(holder.as_ref(), &command, waited);
            return Ok(Exit::Busy(config.busy_exit));
        }
        Acquired::Interrupted(signal) => return Ok(Exit::Signaled(signal)),
    };
    // A signal that came while acquiring ends xlock before the command starts.
    let outcome = match pending_fatal_signal(signals) {
        Ok(Some(signal)) => Ok(Exit::Signaled(signal)),
        Ok(None) => {
            let (name, nonce) = held.identity();
            let [path_var, held_var] = inherited.child_env(name, nonce);
            let mut env = vec![path_var, held_var];
            env.extend(held.env());
            let job = Job {
                argv,
                env: &env,
                death,
                inherit: held.inherit(),
                not_found_hint,
            };
            supervise::run(&job, Some(&held), signals)
        }
        Err(err) => Err(err),
    };
    let released = held.release(report.is_verbose());
    match &released {
        Ok(Released::Removed) => report.released(),
        // "lock lost" was said when it was found: there was nothing left to release.
        Ok(Released::WasLost) => {}
        Ok(Released::LeftToCommand(processes)) => report.left_to_command(processes),
        Err(_) => {}
    }
    match (outcome, released) {
        (Ok(exit), Ok(_)) => Ok(exit),
        (Ok(_), Err(err)) => Err(err),
        (Err(err), released) => {
            if let Err(release_err) = released {
                report::error(&release_err);
            }
            Err(err)
        }
    }
}

/// `--status`: reports each lock; 0 if all are free (or stale), 75 (or `-E`) if any is
/// held, 125 if any could not be inspected or is not a lock file.
fn status(query: &cli::StatusQuery) -> Result<Exit> {
    let me = Identity::current()?;
    let mut worst = status::Verdict::Free;
    for (lock, etcd) in query.locks.iter().zip(&query.etcd) {
        let state = match etcd {
            Some(url) => EtcdLock::new(url).and_then(|kind| kind.inspect(&me, query.stale_after)),
            None => FileLock::new(lock).and_then(|kind| kind.inspect(&me, query.stale_after)),
        };
        let verdict =
            status::print_state(lock, &state, query.json).map_err(|err| anyhow::anyhow!(error::stdout_error(&err)))?;
        worst = worst.max(verdict);
    }
    Ok(match worst {
        status::Verdict::Free => Exit::Success,
        status::Verdict::Held => Exit::Busy(query.busy_exit),
        status::Verdict::Error => Exit::Failure,
    })
}

fn pending_fatal_signal(signals: &Signals) -> Result<Option<i32>> {
    while let Some(info) = signals.next().context("cannot read signals")? {
        let signal = signals::number(&info);
        if signals::ends_wait(signal) {
            return Ok(Some(signal));
        }
    }
    Ok(None)
}

/// 128 random bits as 32 hex digits.
fn nonce() -> Result<String> {
    let mut bytes = [0u8; 16];
    let n = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .map_err(std::io::Error::from)
        .context("cannot read random bytes for the lock nonce")?;
    if n != bytes.len() {
        anyhow::bail!(
            "cannot read random bytes for the lock nonce: got {n} of {}",
            bytes.len()
        );
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
