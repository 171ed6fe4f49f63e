//! Signals (SPEC §3, §5): which signals xlock handles, how it waits for them, what the
//! child gets back, and how xlock dies of a signal.
//!
//! The handled signals are blocked from the start and read synchronously through a
//! signalfd, so no signal is lost between checks, none is delivered to a handler at a
//! bad moment, and dispositions are never changed (the child inherits them as xlock
//! got them, SIG_IGN included). The child gets an empty signal mask back.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{pthread_sigmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
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
    /// The forwarded signals that were SIG_IGN when xlock started: left alone.
    ignored_at_start: SigSet,
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
        // A signal ignored when xlock started stays ignored (SPEC §5): not blocked, so
        // the kernel discards it on arrival; it never ends a wait, is never passed
        // on (the command inherits SIG_IGN), and never kills xlock.
        let mut set = SigSet::empty();
        let mut ignored_at_start = SigSet::empty();
        for signal in FORWARDED {
            if ignored(signal as i32) {
                ignored_at_start.add(signal);
            } else {
                set.add(signal);
            }
        }
        set.add(Signal::SIGCHLD);
        // SIGPIPE is blocked too, not read: a write to a closed stderr fails with
        // EPIPE instead of killing xlock while it holds the lock.
        let mut blocked = set;
        blocked.add(Signal::SIGPIPE);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None).context("cannot block signals")?;
        let old = sigaction(libc::SIGCHLD, Some(Disposition::Default)).context("cannot reset SIGCHLD")?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|err| anyhow::anyhow!("cannot open a signalfd: {}", crate::error::io_reason(&err.into())))?;
        Ok(Signals {
            fd,
            chld_ignored: old.sa_sigaction == libc::SIG_IGN,
            pipe_ignored: ignored(libc::SIGPIPE),
            ignored_at_start,
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
    sigaction(signal, None).is_ok_and(|old| old.sa_sigaction == libc::SIG_IGN)
}

/// A disposition that this module installs.
enum Disposition {
    Default,
    Ignore,
    /// One of this module's handlers ([`on_wake`], [`on_ending`]), without SA_RESTART.
    Handler(extern "C" fn(libc::c_int)),
    /// One that [`sigaction`] returned before.
    Restore(libc::sigaction),
}

/// sigaction(2): installs `new` (if any) for `signal`; returns the disposition before.
/// Async-signal-safe (the child calls it between clone and exec).
fn sigaction(signal: i32, new: Option<Disposition>) -> io::Result<libc::sigaction> {
    let plain = |handler| libc::sigaction::from(SigAction::new(handler, SaFlags::empty(), SigSet::empty()));
    let new = new.map(|new| match new {
        Disposition::Default => plain(SigHandler::SigDfl),
        Disposition::Ignore => plain(SigHandler::SigIgn),
        Disposition::Handler(handler) => plain(SigHandler::Handler(handler)),
        Disposition::Restore(old) => old,
    });
    let new = new.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
    let mut old = MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: `new` is null (only read the disposition) or a valid sigaction: SIG_DFL,
    // SIG_IGN, one of this module's handlers, which are async-signal-safe (an atomic
    // store, timer_settime, or nothing), or a disposition the kernel gave back
    // before. `old` is written by a successful call, and read only then.
    unsafe {
        if libc::sigaction(signal, new, old.as_mut_ptr()) == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(old.assume_init())
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
        for (signal, was_ignored) in [(libc::SIGCHLD, self.chld_ignored), (libc::SIGPIPE, self.pipe_ignored)] {
            if was_ignored {
                sigaction(signal, Some(Disposition::Ignore))?;
            }
        }
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        Ok(())
    }
}

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
    /// Dropped first: once it is deleted, no wake signal comes.
    timer: WakeTimer,
    /// The dispositions to restore (on drop): the wake signal's, and those of the
    /// signals unblocked during the call.
    saved: Saved,
    unblocked: SigSet,
    deadline: Option<Instant>,
    tick: Option<Duration>,
    next_tick: std::cell::Cell<Option<Instant>>,
}

/// Dispositions to put back when dropped.
struct Saved(Vec<(i32, libc::sigaction)>);

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
    let timer = TIMER.load(Ordering::SeqCst);
    if !timer.is_null() {
        WakeTimer::kick(timer, Some(Duration::from_millis(1)));
    }
}

/// A POSIX timer (timer_create(2)) that sends [`wake_signal`] to the process; deleted
/// on drop. Not nix's `Timer`: the signal handler must re-arm it through its raw id,
/// which that type does not give out (and its `set` wants `&mut`).
struct WakeTimer(libc::timer_t);

impl WakeTimer {
    fn new() -> io::Result<WakeTimer> {
        let mut timer = MaybeUninit::<libc::timer_t>::uninit();
        // SAFETY: a zeroed sigevent is a valid one (no thread attributes, no value);
        // SIGEV_SIGNAL sends sigev_signo to the process, whose only thread is this one.
        // `timer` is written by a successful call, and read only then.
        unsafe {
            let mut event = MaybeUninit::<libc::sigevent>::zeroed().assume_init();
            event.sigev_notify = libc::SIGEV_SIGNAL;
            event.sigev_signo = wake_signal();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, timer.as_mut_ptr()) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(WakeTimer(timer.assume_init()))
        }
    }

    /// Arms `timer` to fire after `after`, then every millisecond; `None` disarms it.
    /// Async-signal-safe (the handler calls it).
    fn kick(timer: libc::timer_t, after: Option<Duration>) {
        let spec = match after {
            Some(after) => {
                let after = after.max(Duration::from_nanos(1));
                libc::itimerspec {
                    it_interval: libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 1_000_000,
                    },
                    it_value: libc::timespec {
                        tv_sec: after.as_secs() as libc::time_t,
                        tv_nsec: after.subsec_nanos() as libc::c_long,
                    },
                }
            }
            None => libc::itimerspec {
                it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
                it_value: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            },
        };
        // SAFETY: `timer` is a live timer's id (the interrupter's, deleted only after
        // TIMER is cleared); `spec` is a valid itimerspec; timer_settime is
        // async-signal-safe.
        unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for WakeTimer {
    fn drop(&mut self) {
        TIMER.store(std::ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: the timer is ours and deleted once; the handler no longer sees it.
        unsafe { libc::timer_delete(self.0) };
    }
}

impl Signals {
    /// Prepares a blocking call in this (the main) thread that ends for a signal,
    /// at `deadline` (if any), and every `tick` (if any). xlock has no other thread.
    pub fn interrupter(&self, deadline: Option<Instant>, tick: Option<Duration>) -> io::Result<Interrupter> {
        let wake_before = sigaction(wake_signal(), Some(Disposition::Handler(on_wake)))?;
        // Restored once the timer is deleted (field order): no wake signal comes then.
        let saved = Saved(vec![(wake_signal(), wake_before)]);
        let timer = WakeTimer::new()?;
        TIMER.store(timer.0, Ordering::SeqCst);
        CAUGHT.store(0, Ordering::SeqCst);
        let mut interrupter = Interrupter {
            timer,
            saved,
            unblocked: SigSet::empty(),
            deadline,
            tick,
            next_tick: std::cell::Cell::new(tick.map(|t| Instant::now() + t)),
        };
        for signal in FORWARDED.iter().filter(|&&s| ends_wait(s as i32)) {
            // An ignored signal stays ignored.
            if self.ignored_at_start.contains(*signal) {
                continue;
            }
            let old = sigaction(*signal as i32, Some(Disposition::Handler(on_ending)))?;
            interrupter.saved.0.push((*signal as i32, old));
            interrupter.unblocked.add(*signal);
        }
        interrupter.arm();
        Ok(interrupter)
    }
}

impl Interrupter {
    /// Arms the timer for the deadline or the next tick, whichever comes first.
    fn arm(&self) {
        let at = [self.deadline, self.next_tick.get()].into_iter().flatten().min();
        WakeTimer::kick(self.timer.0, at.map(|at| at.saturating_duration_since(Instant::now())));
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

impl Drop for Saved {
    fn drop(&mut self) {
        for (signal, old) in self.0.drain(..) {
            let _ = sigaction(signal, Some(Disposition::Restore(old)));
        }
    }
}

/// The signal number of a signalfd read.
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
    forwards(number(info), info.ssi_code, session_leader)
}

/// [`should_forward`] of a signal number and its si_code.
fn forwards(signal: i32, code: i32, session_leader: bool) -> bool {
    if !FORWARDED.iter().any(|&s| s as i32 == signal) {
        return false;
    }
    let from_kernel = code == SI_KERNEL;
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
    let _ = sigaction(signal, Some(Disposition::Default));
    // Raw rather than nix's SigSet and raise: those take only the standard signals, and
    // a command can die of a real-time one.
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set before sigaddset and pthread_sigmask read
    // it; raise only sends the signal to this thread.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(signal: Signal, code: i32, session_leader: bool) -> bool {
        forwards(signal as i32, code, session_leader)
    }

    #[test]
    fn terminal_signals_are_not_sent_twice() {
        const SI_USER: i32 = 0;
        assert!(forwarded(Signal::SIGINT, SI_USER, false));
        assert!(!forwarded(Signal::SIGINT, SI_KERNEL, false));
        assert!(!forwarded(Signal::SIGQUIT, SI_KERNEL, false));
        assert!(!forwarded(Signal::SIGWINCH, SI_KERNEL, true));
        assert!(forwarded(Signal::SIGHUP, SI_KERNEL, true));
        assert!(!forwarded(Signal::SIGHUP, SI_KERNEL, false));
        assert!(forwarded(Signal::SIGTERM, SI_USER, false));
        assert!(forwarded(Signal::SIGALRM, SI_KERNEL, false));
        assert!(!forwarded(Signal::SIGCHLD, SI_USER, false));
        assert!(!forwarded(Signal::SIGTSTP, SI_USER, false));
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
