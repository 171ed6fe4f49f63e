//! Signals (SPEC §3, §5): which signals xlock handles, how it waits for them, what the
//! child gets back, and how xlock dies of a signal.
//!
//! The handled signals are blocked from the start and read synchronously through a
//! signalfd, so no signal is lost between checks, none is delivered to a handler at a
//! bad moment, and dispositions are never changed (the child inherits them as xlock
//! got them, SIG_IGN included). The child gets an empty signal mask back.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{pthread_sigmask, sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{siginfo, SfdFlags, SignalFd};

/// Signals passed on to the command (SPEC §5).
pub const FORWARDED: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGWINCH,
];

/// si_code of a signal the kernel itself sent (the terminal's, a hang-up, a timer).
const SI_KERNEL: i32 = 0x80;

/// The handled signals, blocked for the whole life of xlock and read from a signalfd.
pub struct Signals {
    fd: SignalFd,
    /// SIGCHLD was ignored when xlock started (it must not be, or children could not
    /// be waited for); the child gets it back ignored.
    chld_ignored: bool,
    /// SIGPIPE was ignored when xlock started; std resets it to default in children,
    /// so the child gets it back ignored.
    pipe_ignored: bool,
}

/// What ended a wait.
#[derive(Debug)]
pub enum Event {
    Signal(siginfo),
    /// The other descriptor became readable.
    Ready,
    Timeout,
    /// Woken with nothing to report (EINTR after a stop and continue): wait again.
    Again,
}

impl Signals {
    /// Blocks the handled signals in this thread (threads started later inherit the
    /// mask) and opens the signalfd that reads them. Call before any other thread.
    pub fn block() -> Result<Signals> {
        let mut set = SigSet::empty();
        for signal in FORWARDED {
            set.add(signal);
        }
        set.add(Signal::SIGCHLD);
        // SIGPIPE is blocked too, not read: a write to a closed stderr fails with
        // EPIPE instead of killing xlock while it holds the lock.
        let mut blocked = set;
        blocked.add(Signal::SIGPIPE);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None).context("cannot block signals")?;
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: installs the default disposition, which runs no code of ours.
        let old = unsafe { sigaction(Signal::SIGCHLD, &default) }.context("cannot reset SIGCHLD")?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|err| anyhow::anyhow!("cannot open a signalfd: {}", crate::status::io_reason(&err.into())))?;
        Ok(Signals {
            fd,
            chld_ignored: matches!(old.handler(), SigHandler::SigIgn),
            pipe_ignored: ignored(libc::SIGPIPE),
        })
    }

    /// Waits until a handled signal arrives, `other` becomes readable, or `timeout`
    /// (if any) has passed.
    pub fn wait(&self, other: Option<BorrowedFd<'_>>, timeout: Option<Duration>) -> io::Result<Event> {
        if let Some(info) = self.next()? {
            return Ok(Event::Signal(info));
        }
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Round up, so a wait never ends before its time and then spins.
            Some(t) => PollTimeout::try_from(t.as_micros().div_ceil(1000)).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = vec![PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        if let Some(other) = other {
            fds.push(PollFd::new(other, PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(Event::Timeout),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
        if let Some(info) = self.next()? {
            return Ok(Event::Signal(info));
        }
        let other_ready = fds.get(1).and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
        // Nothing yet (EINTR after a stop, or a signal taken by someone else): the
        // caller recomputes its timeout and waits again.
        Ok(if other_ready { Event::Ready } else { Event::Again })
    }

    /// The next pending handled signal, without waiting.
    pub fn next(&self) -> io::Result<Option<siginfo>> {
        match self.fd.read_signal() {
            Ok(info) => Ok(info),
            Err(Errno::EAGAIN) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// What the child must restore between fork and exec.
    pub fn child_reset(&self) -> ChildReset {
        ChildReset {
            chld_ignored: self.chld_ignored,
            pipe_ignored: self.pipe_ignored,
        }
    }
}

/// Whether `signal`'s disposition is SIG_IGN (asked, not changed).
fn ignored(signal: i32) -> bool {
    // SAFETY: a zeroed sigaction is a valid out-parameter; with a null new action,
    // sigaction only reads the current disposition into it.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Restores, in the child between fork and exec, what xlock (or std) changed: an
/// empty signal mask, and SIGCHLD and SIGPIPE ignored if they were.
#[derive(Debug, Clone, Copy)]
pub struct ChildReset {
    chld_ignored: bool,
    pipe_ignored: bool,
}

impl ChildReset {
    /// Async-signal-safe: only sigaction and sigprocmask.
    pub fn apply(self) -> io::Result<()> {
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        for (signal, was_ignored) in [
            (Signal::SIGCHLD, self.chld_ignored),
            (Signal::SIGPIPE, self.pipe_ignored),
        ] {
            if was_ignored {
                // SAFETY: SIG_IGN runs no code; sigaction is async-signal-safe.
                unsafe { sigaction(signal, &ignore) }?;
            }
        }
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        Ok(())
    }
}

/// The signal number of a signalfd read, 0 for none.
pub fn number(info: &siginfo) -> i32 {
    info.ssi_signo as i32
}

/// Whether a signal ends a wait for the lock: those whose default action would have
/// ended xlock (SIGWINCH and SIGCHLD are ignored by default).
pub fn ends_wait(signal: i32) -> bool {
    FORWARDED.iter().any(|&s| s as i32 == signal) && signal != Signal::SIGWINCH as i32
}

/// Whether a signal that xlock received should be passed to the child. One the
/// terminal sent to the whole foreground process group (si_code SI_KERNEL) reached
/// the child already, except a hang-up's SIGHUP, which the kernel sends only to the
/// session leader. Signals the terminal never sends to a group are always passed on.
pub fn should_forward(info: &siginfo, session_leader: bool) -> bool {
    let signal = number(info);
    if !FORWARDED.iter().any(|&s| s as i32 == signal) {
        return false;
    }
    let from_kernel = info.ssi_code == SI_KERNEL;
    let group_signal = [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGWINCH]
        .iter()
        .any(|&s| s as i32 == signal)
        || (signal == Signal::SIGHUP as i32 && !session_leader);
    !(from_kernel && group_signal)
}

/// Dies of `signal` as the command did: core dumps off, default disposition,
/// unblocked, raised. Where that does not kill (an odd environment), exits 128+N.
pub fn die_of(signal: i32) -> ! {
    let _ = nix::sys::prctl::set_dumpable(false);
    // SAFETY: resetting a disposition to the default runs no code of ours; the set is
    // initialised by sigemptyset before use; raise only sends a signal to this thread.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(signal: Signal, code: i32) -> siginfo {
        // SAFETY: signalfd_siginfo is plain integers; all zeroes is a valid value.
        let mut info: siginfo = unsafe { std::mem::zeroed() };
        info.ssi_signo = signal as u32;
        info.ssi_code = code;
        info
    }

    #[test]
    fn terminal_signals_are_not_sent_twice() {
        const SI_USER: i32 = 0;
        assert!(should_forward(&info(Signal::SIGINT, SI_USER), false));
        assert!(!should_forward(&info(Signal::SIGINT, SI_KERNEL), false));
        assert!(!should_forward(&info(Signal::SIGQUIT, SI_KERNEL), false));
        assert!(!should_forward(&info(Signal::SIGWINCH, SI_KERNEL), true));
        assert!(should_forward(&info(Signal::SIGHUP, SI_KERNEL), true));
        assert!(!should_forward(&info(Signal::SIGHUP, SI_KERNEL), false));
        assert!(should_forward(&info(Signal::SIGTERM, SI_USER), false));
        assert!(should_forward(&info(Signal::SIGALRM, SI_KERNEL), false));
        assert!(!should_forward(&info(Signal::SIGCHLD, SI_USER), false));
        assert!(!should_forward(&info(Signal::SIGTSTP, SI_USER), false));
    }

    #[test]
    fn which_signals_end_a_wait() {
        for signal in [
            Signal::SIGHUP,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGTERM,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGALRM,
        ] {
            assert!(ends_wait(signal as i32), "{signal}");
        }
        assert!(!ends_wait(Signal::SIGWINCH as i32));
        assert!(!ends_wait(Signal::SIGCHLD as i32));
        assert!(!ends_wait(0));
    }
}
