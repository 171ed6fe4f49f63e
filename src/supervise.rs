//! Child supervision (SPEC §5, §4.4): start the command ([`spawn`](crate::spawn)) from
//! the main thread in xlock's own process group, pass signals through to it, run the
//! lock's checks while it runs (and stop its whole tree if the lock is lost: see
//! [`tree`](crate::tree)), always reap it (and the orphans of its tree, which xlock
//! adopts while it holds a lock), and turn how it ended into xlock's exit.
//!
//! It knows nothing of the command line or of the lock: it gets a [`Job`] (what to
//! run) and, while a lock is held, a [`Guard`] (the lock's side of supervision).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, getsid, Pid};

use crate::exit::Exit;
use crate::signals::{self, Event, Signals};
use crate::spawn::Exec;
use crate::{error, report, tree};

/// What to run and how (SPEC §5): not the command line, only what spawning needs.
pub struct Job<'a> {
    /// argv[0] first; for `-c STR`: ["/bin/sh", "-c", STR].
    pub argv: Vec<&'a OsStr>,
    /// Variables added to xlock's environment (XLOCK_PATH, XLOCK_HELD, ...).
    pub env: &'a [(&'a str, OsString)],
    /// Sent to the command if xlock dies: SIGKILL with --close, else SIGTERM.
    pub death: Signal,
    /// The descriptor the command inherits (the command lock), if any.
    pub inherit: Option<BorrowedFd<'a>>,
    /// Added to a "command not found" message (an xlock option after LOCK).
    pub not_found_hint: Option<String>,
}

/// The lock's side of supervision, checked while the command runs (SPEC §4.4, §10).
pub trait Guard {
    /// When `check` wants to run next (`None`: never).
    fn next_check(&self) -> Option<Instant>;
    /// Heartbeat / lease renewal. `Health::Lost`: supervise prints `message`, sends
    /// SIGTERM to the command's whole tree, SIGKILL to what is left of it at `kill_by`
    /// if given and the command still runs, and the exit is 125 once the command has
    /// ended.
    fn check(&self) -> Health;
}

/// What a [`Guard`]'s check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Held,
    Lost { message: String, kill_by: Option<Instant> },
}

/// Runs `job` while `guard` (if any: `None` when an ancestor holds the lock) says the
/// lock is held, and says how the command ended.
pub fn run(job: &Job<'_>, guard: Option<&dyn Guard>, signals: &Signals) -> Result<Exit> {
    let exec = Exec::new(&job.argv, job.env, job.death, job.inherit, signals.child_reset())?;
    if guard.is_some() {
        // Orphans of the command's tree come to xlock, so that a lost lock can stop
        // them all, and release can tell whether any of the tree survives.
        tree::adopt_orphans().context("cannot become the child subreaper of the command's tree")?;
    }
    let pid = match exec.spawn() {
        Ok(pid) => pid,
        Err(err) => return Ok(spawn_failure(job.argv[0], &err, job.not_found_hint.as_deref())),
    };
    let session_leader = getsid(None).is_ok_and(|sid| sid == getpid());
    let mut timers = Timers::new(guard);
    loop {
        let timeout = timers.next().map(|at| at.saturating_duration_since(Instant::now()));
        match signals.wait(None, timeout).context("cannot wait for signals")? {
            Event::Signal(info) if signals::number(&info) == libc::SIGCHLD => {
                // The command, or orphans of its tree that xlock adopted: reap them all
                // until the command is among them.
                loop {
                    let ended = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(child, code)) if child == pid => Exit::Child(code as u8),
                        Ok(WaitStatus::Signaled(child, signal, _)) if child == pid => Exit::Signaled(signal as i32),
                        Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                        Ok(_) => continue, // an adopted orphan
                        Err(err) => return Err(err).context("cannot wait for the command"),
                    };
                    return Ok(if timers.lost { Exit::Failure } else { ended });
                }
            }
            Event::Signal(info) => {
                if signals::should_forward(&info, session_leader) {
                    // The child is not reaped yet, so its PID is still its own.
                    if let Ok(signal) = Signal::try_from(signals::number(&info)) {
                        let _ = kill(pid, signal);
                    }
                }
            }
            Event::Timeout | Event::Again | Event::Ready => {}
        }
        timers.run_due(Instant::now(), pid);
    }
}

/// The loop's two timers: the guard's next check while the lock is held, and, once
/// it is lost, the SIGKILL deadline.
struct Timers<'g> {
    guard: Option<&'g dyn Guard>,
    /// A check found the lock lost (and it was said): no more checks.
    lost: bool,
    kill_at: Option<Instant>,
}

/// What is due at a moment.
#[derive(Debug, Default, PartialEq, Eq)]
struct Due {
    /// The lock was found lost: say this, and send SIGTERM.
    lost: Option<String>,
    /// Send SIGKILL.
    kill: bool,
}

impl<'g> Timers<'g> {
    fn new(guard: Option<&'g dyn Guard>) -> Timers<'g> {
        Timers {
            guard,
            lost: false,
            kill_at: None,
        }
    }

    /// When something is due next.
    fn next(&self) -> Option<Instant> {
        let check = self.guard.filter(|_| !self.lost).and_then(|g| g.next_check());
        check.into_iter().chain(self.kill_at).min()
    }

    /// Runs the guard's check if it is due at `now`, and says what to do.
    fn due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if let Some(guard) = self.guard.filter(|_| !self.lost) {
            if guard.next_check().is_some_and(|at| at <= now) {
                if let Health::Lost { message, kill_by } = guard.check() {
                    self.lost = true;
                    self.kill_at = kill_by;
                    due.lost = Some(message);
                }
            }
        }
        if self.kill_at.is_some_and(|at| at <= now) {
            self.kill_at = None;
            due.kill = true;
        }
        due
    }

    /// [`Timers::due`], done to the command `pid` (not reaped yet, so still its own).
    fn run_due(&mut self, now: Instant, pid: Pid) {
        let due = self.due(now);
        // The whole tree, the command included; if /proc showed nothing, the command
        // at least.
        if let Some(message) = due.lost {
            report::line(format_args!("{message}"));
            if tree::signal(Signal::SIGTERM) == 0 {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
        if due.kill && tree::signal(Signal::SIGKILL) == 0 {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// 127 if the command was not found, 126 if it could not be executed, 125 if xlock
/// could not start it (out of processes or descriptors).
fn spawn_failure(program: &OsStr, err: &io::Error, not_found_hint: Option<&str>) -> Exit {
    let (exit, what) = match err.raw_os_error() {
        Some(libc::ENOENT) => (
            Exit::NotFound,
            match (missing_interpreter(program), not_found_hint) {
                (Some(interpreter), _) => interpreter,
                (None, Some(hint)) => format!("command not found; {hint}"),
                (None, None) => "command not found; check the name and PATH".to_owned(),
            },
        ),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM) => (Exit::Failure, error::io_reason(err)),
        // execvpe says EACCES of a directory too.
        Some(libc::EACCES) if find_program(program).is_some_and(|path| path.is_dir()) => (
            Exit::CannotExecute,
            "it is a directory; name a program or script to run".to_owned(),
        ),
        Some(libc::EACCES) => (
            Exit::CannotExecute,
            "permission denied; is it executable (chmod +x)?".to_owned(),
        ),
        _ => (Exit::CannotExecute, err.to_string()),
    };
    let shown = crate::escape::bytes(program.as_bytes());
    report::line(format_args!("cannot run '{shown}': {what}"));
    exit
}

/// Exec says ENOENT also of a program that exists, when the interpreter its `#!` line
/// names does not: says which, if that is the case.
fn missing_interpreter(program: &OsStr) -> Option<String> {
    use std::io::Read;
    use std::path::Path;
    let file = find_program(program)?;
    let mut head = Vec::with_capacity(256);
    // The kernel reads at most 256 bytes of a `#!` line (BINPRM_BUF_SIZE).
    std::fs::File::open(file).ok()?.take(256).read_to_end(&mut head).ok()?;
    let line = head.strip_prefix(b"#!")?.split(|&b| b == b'\n').next()?;
    // As the kernel reads it: blanks, the interpreter, then at most one argument.
    let interpreter = line.split(|&b| b == b' ' || b == b'\t').find(|word| !word.is_empty())?;
    let path = Path::new(OsStr::from_bytes(interpreter));
    if path.exists() {
        return None; // something else is missing (its own interpreter, a loader)
    }
    let remedy = if interpreter.ends_with(b"\r") {
        "the script has Windows line endings (CRLF); convert it, e.g. with dos2unix"
    } else {
        "install it or fix the script's #! line"
    };
    Some(format!(
        "its interpreter {} was not found; {remedy}",
        crate::escape::path(path)
    ))
}

/// The file that execvpe(3) runs for `program`: the program itself if it has a slash,
/// else the first regular file of that name in PATH (glibc's default PATH if unset).
fn find_program(program: &OsStr) -> Option<std::path::PathBuf> {
    let name = program.as_bytes();
    if name.contains(&b'/') {
        return Some(program.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() {
                OsStr::new(".")
            } else {
                OsStr::from_bytes(dir)
            };
            std::path::Path::new(dir).join(program)
        })
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::time::Duration;

    use super::*;

    /// A guard that is checked every `every` from `start` and answers from a script.
    struct Scripted {
        next: Cell<Option<Instant>>,
        every: Duration,
        answers: RefCell<Vec<Health>>,
        checks: Cell<u32>,
    }

    impl Scripted {
        fn new(start: Instant, every: Duration, mut answers: Vec<Health>) -> Scripted {
            answers.reverse();
            Scripted {
                next: Cell::new(Some(start + every)),
                every,
                answers: RefCell::new(answers),
                checks: Cell::new(0),
            }
        }
    }

    impl Guard for Scripted {
        fn next_check(&self) -> Option<Instant> {
            self.next.get()
        }
        fn check(&self) -> Health {
            self.checks.set(self.checks.get() + 1);
            self.next.set(self.next.get().map(|at| at + self.every));
            self.answers.borrow_mut().pop().unwrap_or(Health::Held)
        }
    }

    fn lost(kill_by: Option<Instant>) -> Health {
        Health::Lost {
            message: "lost".to_owned(),
            kill_by,
        }
    }

    #[test]
    fn no_guard_no_timer() {
        let mut timers = Timers::new(None);
        assert_eq!(timers.next(), None);
        assert_eq!(timers.due(Instant::now()), Due::default());
    }

    #[test]
    fn checks_only_when_due() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let guard = Scripted::new(t0, s, vec![]);
        let mut timers = Timers::new(Some(&guard));
        assert_eq!(timers.next(), Some(t0 + s));
        assert_eq!(timers.due(t0 + s / 2), Due::default());
        assert_eq!(guard.checks.get(), 0, "checked before it was due");
        assert_eq!(timers.due(t0 + s), Due::default());
        assert_eq!(guard.checks.get(), 1);
        assert_eq!(timers.next(), Some(t0 + 2 * s));
    }

    #[test]
    fn loss_without_kill_by_terminates_once_and_stops_checking() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let guard = Scripted::new(t0, s, vec![Health::Held, lost(None)]);
        let mut timers = Timers::new(Some(&guard));
        assert_eq!(timers.due(t0 + s), Due::default());
        let due = timers.due(t0 + 2 * s);
        assert_eq!(due.lost.as_deref(), Some("lost"));
        assert!(!due.kill);
        assert!(timers.lost);
        assert_eq!(timers.next(), None, "a lost lock is not checked again");
        assert_eq!(timers.due(t0 + 10 * s), Due::default());
        assert_eq!(guard.checks.get(), 2);
    }

    #[test]
    fn loss_with_kill_by_kills_at_that_moment_once() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let kill_by = t0 + 5 * s;
        let guard = Scripted::new(t0, s, vec![lost(Some(kill_by))]);
        let mut timers = Timers::new(Some(&guard));
        let due = timers.due(t0 + s);
        assert!(due.lost.is_some() && !due.kill);
        // The loop now wakes for the SIGKILL deadline, not for further checks.
        assert_eq!(timers.next(), Some(kill_by));
        assert_eq!(timers.due(kill_by - s / 2), Due::default());
        assert_eq!(timers.due(kill_by), Due { lost: None, kill: true });
        assert_eq!(timers.next(), None);
        assert_eq!(timers.due(kill_by + s), Due::default(), "SIGKILL is sent once");
        assert_eq!(guard.checks.get(), 1);
    }

    #[test]
    fn kill_by_already_past_kills_with_the_termination() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let guard = Scripted::new(t0, s, vec![lost(Some(t0))]);
        let mut timers = Timers::new(Some(&guard));
        let due = timers.due(t0 + s);
        assert!(due.lost.is_some() && due.kill);
    }

    #[test]
    fn a_guard_that_never_checks_sets_no_timer() {
        let guard = Scripted::new(Instant::now(), Duration::from_secs(1), vec![]);
        guard.next.set(None);
        let mut timers = Timers::new(Some(&guard));
        assert_eq!(timers.next(), None);
        assert_eq!(timers.due(Instant::now() + Duration::from_secs(3600)), Due::default());
        assert_eq!(guard.checks.get(), 0);
    }
}
