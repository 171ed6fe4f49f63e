//! xlock: run a command under a named, crash-safe file lock.
//!
//! The flow is [`run`]: parse and validate the command line ([`cli`]), acquire the
//! lock ([`lock`]), run the command and pass signals through ([`supervise`]),
//! release, and end with the command's status ([`exit`]). The behaviour contract is
//! SPEC.md; each module names the sections it implements.

pub mod cli;
pub mod exit;
pub mod liveness;
pub mod lock;
pub mod nesting;
pub mod record;
pub mod signals;
mod spawn;
pub mod status;
pub mod supervise;

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::cli::{CommandSpec, Config, Parsed};
use crate::exit::Exit;
use crate::liveness::Identity;
use crate::lock::{Acquired, Deadline, Held, LockPath, Request};
use crate::record::Record;
use crate::signals::Signals;
use crate::status::Reporter;
use crate::supervise::{Guard, Health, Job};

/// Runs xlock with these arguments (argv[0] first) and says how to exit.
pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> Exit {
    match cli::parse(args) {
        Ok(Parsed::Run(config)) => execute(&config).unwrap_or_else(|err| {
            status::error(&err);
            Exit::Failure
        }),
        Ok(Parsed::Status(query)) => status(&query).unwrap_or_else(|err| {
            status::error(&err);
            Exit::Failure
        }),
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            Exit::Success
        }
        Err(message) => {
            status::line(format_args!("{message}"));
            Exit::Failure
        }
    }
}

fn execute(config: &Config) -> Result<Exit> {
    let signals = Signals::block()?;
    let deadline = Deadline::after(config.wait);
    let me = Identity::current()?;
    let lock = LockPath::new(&config.lock)?;
    let report = Reporter::new(config.verbosity, &config.lock);
    let inherited = nesting::Inherited::from_env();
    if inherited != nesting::Inherited::default() {
        if let Some(holder) = lock::current_record(&lock)?.filter(|r| inherited.holds(&r.nonce)) {
            // An ancestor holds this very acquisition: run at once, leave the lock to it.
            report.nested(&holder);
            let env = inherited.child_env(&lock.path, &holder.nonce);
            return supervise::run(&job(config, &env, None), None, &signals);
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
        cmd: record::describe(&config.command),
    };
    let request = Request {
        lock: &lock,
        deadline,
        command_lock: !config.close,
        me: &me,
        signals: &signals,
        report: &report,
        stale_after: config.stale_after,
    };
    let started = std::time::Instant::now();
    let held = match lock::acquire(&request, record)? {
        Acquired::Held(held) => held,
        Acquired::Busy(holder) => {
            let waited = (config.wait != cli::Wait::Upto(std::time::Duration::ZERO)).then(|| started.elapsed());
            report.busy(holder.as_ref(), waited);
            return Ok(Exit::Busy(config.busy_exit));
        }
        Acquired::Interrupted(signal) => return Ok(Exit::Signaled(signal)),
    };
    // A signal that came while acquiring ends xlock before the command starts.
    let outcome = match pending_fatal_signal(&signals) {
        Ok(Some(signal)) => Ok(Exit::Signaled(signal)),
        Ok(None) => {
            let (path, nonce) = held.identity();
            let env = inherited.child_env(path, nonce);
            let heartbeat = Heartbeat::new(&held, config.stale_after / 3);
            supervise::run(&job(config, &env, held.command_fd()), Some(&heartbeat), &signals)
        }
        Err(err) => Err(err),
    };
    let released = held.release();
    if released.is_ok() {
        report.released();
    }
    match (outcome, released) {
        (Ok(exit), Ok(())) => Ok(exit),
        (Ok(_), Err(err)) => Err(err),
        (Err(err), released) => {
            if let Err(release_err) = released {
                status::error(&release_err);
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
    for lock in &query.locks {
        let state = LockPath::new(lock).and_then(|path| lock::inspect(&path, &me, query.stale_after));
        worst = worst.max(status::print_state(lock, &state, query.json));
    }
    Ok(match worst {
        status::Verdict::Free => Exit::Success,
        status::Verdict::Held => Exit::Busy(query.busy_exit),
        status::Verdict::Error => Exit::Failure,
    })
}

/// What supervise needs of the command line.
fn job<'a>(config: &'a Config, env: &'a [(&'a str, OsString)], inherit: Option<BorrowedFd<'a>>) -> Job<'a> {
    Job {
        argv: match &config.command {
            CommandSpec::Argv(words) => words.iter().map(OsString::as_os_str).collect(),
            CommandSpec::Shell(text) => vec![OsStr::new("/bin/sh"), OsStr::new("-c"), text.as_os_str()],
        },
        env,
        death: if config.close { Signal::SIGKILL } else { Signal::SIGTERM },
        inherit,
    }
}

/// The exclusive file lock's side of supervision: a heartbeat every `every`.
struct Heartbeat<'a> {
    held: &'a Held,
    every: Duration,
    last: Cell<Instant>,
}

impl<'a> Heartbeat<'a> {
    fn new(held: &'a Held, every: Duration) -> Heartbeat<'a> {
        Heartbeat {
            held,
            every,
            last: Cell::new(Instant::now()),
        }
    }
}

impl Guard for Heartbeat<'_> {
    fn next_check(&self) -> Option<Instant> {
        Some(self.last.get() + self.every)
    }

    fn check(&self) -> Health {
        self.last.set(Instant::now());
        match self.held.heartbeat() {
            Ok(false) => Health::Lost {
                message: self.held.lost_message(),
                kill_by: None,
            },
            // An error reading LOCK is not evidence of loss: try again next beat.
            Ok(true) | Err(_) => Health::Held,
        }
    }
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
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let n = unsafe { nix::libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(std::io::Error::last_os_error()).context("cannot read random bytes for the lock nonce");
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
