//! Signals (SPEC §3, §5): which signals xlock handles, how it waits for them, what the
//! child gets back, and how xlock dies of a signal.
//!
//! The handled signals are blocked from the start and read synchronously through a
//! signalfd, so no signal is lost between checks, none is delivered to a handler at a
//! bad moment, and dispositions are never changed (the child inherits them as xlock
//! got them, SIG_IGN included). The child gets an empty signal mask back.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

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
            .map_err(|err| anyhow::anyhow!("cannot open a signalfd: {}", crate::error::io_reason(&err.into())))?;
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
/// Why the [`Interrupter`] stopped a blocking call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The waiting notice is due.
    Tick,
    /// The deadline passed.
    Deadline,
    /// This signal came, and it ends the wait.
    Signal(i32),
}

/// Lets the main thread block in a system call itself (a lock call: the holder's
/// release then wakes it directly, with no thread in between) while still ending the
/// wait for a signal, the deadline, or the waiting notice's tick.
///
/// While the call runs, the signals that end a wait are unblocked, with a handler
/// (no SA_RESTART) that records the signal, so the call fails with EINTR. A timer
/// sends [`wake_signal`] (a handler that does nothing) at the deadline or the tick.
/// A signal can land just before the call begins, when interrupting it is too early:
/// so the handler arms the timer to fire every millisecond, and a due deadline or tick
/// keeps firing every millisecond until [`Interrupter::take`] has seen it. No thread,
/// no polling. Dispositions are restored when the wait is over, before the command
/// is started.
pub struct Interrupter {
    timer: libc::timer_t,
    /// The dispositions to restore: the wake signal's, and those of the signals
    /// unblocked during the call.
    saved: Vec<(i32, libc::sigaction)>,
    unblocked: SigSet,
    deadline: Option<Instant>,
    tick: Option<Duration>,
    next_tick: std::cell::Cell<Option<Instant>>,
}

/// The signal the handler caught (0: none). One wait at a time, in the main thread.
static CAUGHT: AtomicI32 = AtomicI32::new(0);
/// The interrupter's timer, for the handler to re-arm.
static TIMER: std::sync::atomic::AtomicPtr<libc::c_void> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// The real-time signal that interrupts the main thread's blocking call; xlock's own.
pub fn wake_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_wake(_: libc::c_int) {}

extern "C" fn on_ending(signal: libc::c_int) {
    let _ = CAUGHT.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    kick(TIMER.load(Ordering::SeqCst), Duration::from_millis(1));
}

/// Arms `timer` to fire after `after`, then every millisecond. Async-signal-safe.
fn kick(timer: libc::timer_t, after: Duration) {
    let after = after.max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: timer_settime is async-signal-safe; `spec` is a valid itimerspec.
    unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
}

/// Installs `handler` for `signal` without SA_RESTART; returns the disposition before.
fn install(signal: i32, handler: extern "C" fn(libc::c_int)) -> io::Result<libc::sigaction> {
    // SAFETY: both handlers are async-signal-safe (an atomic store, timer_settime, or
    // nothing); zeroed sigactions are valid values for the out and in parameters.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as libc::sighandler_t;
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, &action, &mut old) == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(old)
    }
}

impl Signals {
    /// Prepares a blocking call in this (the main) thread that ends for a signal,
    /// at `deadline` (if any), and every `tick` (if any). xlock has no other thread.
    pub fn interrupter(&self, deadline: Option<Instant>, tick: Option<Duration>) -> io::Result<Interrupter> {
        let wake_before = install(wake_signal(), on_wake)?;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: a zeroed sigevent is valid; SIGEV_SIGNAL sends sigev_signo to the
        // process, whose only thread is this one. `timer` receives the new timer's id.
        unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_SIGNAL;
            event.sigev_signo = wake_signal();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) == -1 {
                let err = io::Error::last_os_error();
                libc::sigaction(wake_signal(), &wake_before, std::ptr::null_mut());
                return Err(err);
            }
        }
        TIMER.store(timer, Ordering::SeqCst);
        CAUGHT.store(0, Ordering::SeqCst);
        let mut interrupter = Interrupter {
            timer,
            // Restored once the timer is deleted (see Drop): no wake signal comes then.
            saved: vec![(wake_signal(), wake_before)],
            unblocked: SigSet::empty(),
            deadline,
            tick,
            next_tick: std::cell::Cell::new(tick.map(|t| Instant::now() + t)),
        };
        for signal in FORWARDED.iter().filter(|&&s| ends_wait(s as i32)) {
            // An ignored signal stays ignored (and blocked).
            if ignored(*signal as i32) {
                continue;
            }
            let old = install(*signal as i32, on_ending)?;
            interrupter.saved.push((*signal as i32, old));
            interrupter.unblocked.add(*signal);
        }
        interrupter.arm();
        Ok(interrupter)
    }
}

impl Interrupter {
    /// Arms the timer for the deadline or the next tick, whichever comes first.
    fn arm(&self) {
        match [self.deadline, self.next_tick.get()].into_iter().flatten().min() {
            Some(at) => kick(self.timer, at.saturating_duration_since(Instant::now())),
            None => {
                // SAFETY: a zeroed itimerspec disarms the timer.
                unsafe { libc::timer_settime(self.timer, 0, &std::mem::zeroed(), std::ptr::null_mut()) };
            }
        }
    }

    /// Runs `call` with the ending signals deliverable. A signal caught before it
    /// began makes it fail with EINTR at once (or, if it had begun, the timer's next
    /// millisecond does).
    pub fn run<T>(&self, call: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&self.unblocked), None)?;
        let result = if CAUGHT.load(Ordering::SeqCst) != 0 {
            Err(io::Error::from(io::ErrorKind::Interrupted))
        } else {
            call()
        };
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&self.unblocked), None)?;
        result
    }

    /// Why the wait should stop, if it should: a caught signal, the deadline, or the
    /// notice's tick (taking a tick arms the timer for the next).
    pub fn take(&self) -> Option<Wake> {
        let now = Instant::now();
        match CAUGHT.load(Ordering::SeqCst) {
            0 => {}
            signal => return Some(Wake::Signal(signal)),
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Some(Wake::Deadline);
        }
        if self.next_tick.get().is_some_and(|t| now >= t) {
            self.next_tick.set(self.tick.map(|t| now + t));
            self.arm();
            return Some(Wake::Tick);
        }
        None
    }
}

impl Drop for Interrupter {
    fn drop(&mut self) {
        // SAFETY: the timer is ours; after deleting it, nothing sends the wake signal.
        unsafe { libc::timer_delete(self.timer) };
        TIMER.store(std::ptr::null_mut(), Ordering::SeqCst);
        for (signal, old) in &self.saved {
            // SAFETY: restores the disposition sigaction gave back for this signal.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
    }
}

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
