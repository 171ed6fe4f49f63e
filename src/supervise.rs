//! Child supervision (SPEC §5, §4.4): spawn the command from the main thread in
//! xlock's own process group, pass signals through to it, keep the lock's heartbeat
//! while it runs (and stop it with SIGTERM if the lock is lost), always reap it, and
//! turn how it ended into xlock's exit.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::time::Instant;

use anyhow::{Context, Result};
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{getpid, getppid, getsid, Pid};

use crate::cli::{CommandSpec, Config};
use crate::exit::Exit;
use crate::lock::Held;
use crate::signals::{self, Event, Signals};
use crate::status;

/// Runs the command while `held` is held (`None`: an ancestor holds it), with `env`
/// added to its environment, and says how it ended.
pub fn run(config: &Config, held: Option<&Held>, env: &[(&str, OsString)], signals: &Signals) -> Result<Exit> {
    let (mut command, shown) = match &config.command {
        CommandSpec::Argv(words) => {
            let mut command = Command::new(&words[0]);
            command.args(&words[1..]);
            (command, words[0].to_string_lossy().into_owned())
        }
        CommandSpec::Shell(text) => {
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(text);
            (command, "/bin/sh".to_owned())
        }
    };
    command.envs(env.iter().map(|(name, value)| (name, value)));
    prepare_child(&mut command, config.close, held.and_then(Held::command_fd), signals);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return Ok(spawn_failure(&shown, &err)),
    };
    let pid = Pid::from_raw(child.id() as i32);
    let session_leader = getsid(None).is_ok_and(|sid| sid == getpid());
    let every = config.stale_after / 3;
    let mut next_beat = Instant::now() + every;
    let mut lost = false;
    loop {
        let until_beat = held.map(|_| next_beat.saturating_duration_since(Instant::now()));
        match signals.wait(None, until_beat).context("cannot wait for signals")? {
            Event::Signal(info) if signals::number(&info) == libc::SIGCHLD => {
                if let Some(status) = child.try_wait().context("cannot wait for the command")? {
                    return Ok(if lost { Exit::Failure } else { exit_of(status) });
                }
            }
            Event::Timeout => {
                next_beat = Instant::now() + every;
                // An error reading LOCK is not evidence of loss: try again next beat.
                if let (Some(held), false) = (held, lost) {
                    if let Ok(false) = held.heartbeat() {
                        lost = true;
                        status::line(format_args!("{}", held.lost_message()));
                        let _ = kill(pid, Signal::SIGTERM);
                    }
                }
            }
            Event::Signal(info) if signals::should_forward(&info, session_leader) => {
                // The child is not reaped yet, so its PID is still its own.
                if let Ok(signal) = Signal::try_from(signals::number(&info)) {
                    let _ = kill(pid, signal);
                }
            }
            _ => {}
        }
    }
}

/// Sets up what happens in the child between fork and exec.
fn prepare_child(command: &mut Command, close: bool, inherit: Option<i32>, signals: &Signals) {
    let parent = getpid();
    let death = if close { Signal::SIGKILL } else { Signal::SIGTERM };
    let reset = signals.child_reset();
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (prctl, fcntl, sigaction, sigprocmask, getppid);
    // it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(death)?;
            if let Some(fd) = inherit {
                // The command lock's descriptor is close-on-exec in xlock; the command keeps it.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            reset.apply()?;
            // xlock may have died before the death signal was armed.
            if getppid() != parent {
                return Err(io::Error::other("xlock ended before the command started"));
            }
            Ok(())
        });
    }
}

/// 127 if the command was not found, 126 if it could not be executed, 125 if xlock
/// could not start it (out of processes or descriptors).
fn spawn_failure(shown: &str, err: &io::Error) -> Exit {
    let (exit, what) = match err.raw_os_error() {
        Some(libc::ENOENT) => (Exit::NotFound, "command not found; check the name and PATH".to_owned()),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM) => (Exit::Failure, status::io_reason(err)),
        Some(libc::EACCES) => (
            Exit::CannotExecute,
            "permission denied; is it executable (chmod +x)?".to_owned(),
        ),
        _ => (Exit::CannotExecute, err.to_string()),
    };
    status::line(format_args!("cannot run '{shown}': {what}"));
    exit
}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Child(code as u8),
        (None, Some(signal)) => Exit::Signaled(signal),
        (None, None) => Exit::Failure,
    }
}
