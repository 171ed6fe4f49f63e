//! Waiting out a holder (SPEC §4.3 steps 3–4): block on its kernel locks, then let the
//! evidence table call it stale, or see its file leave LOCK. Pauses end at the
//! deadline, at a signal that ends waits, at the waiting notice's tick, or when the
//! holder's process exits (a pidfd); polling, where it cannot be avoided, backs off
//! from about 10 ms to 250 ms.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use anyhow::Result;

use super::kernel::{wait_for, KernelLock, Waited};
use super::path::LockPath;
use super::theirs::{Successor, TheirFile};
use super::{Acquired, Request};
use crate::error::read_error;
use crate::liveness::{self, Alive, Locking, Stale, Verdict};
use crate::signals::{self, Event};

/// Polling in no-locks mode starts at this pause, doubling up to [`POLL_MAX`].
pub(super) const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(250);

/// How waiting on one holder's file ended.
pub(super) enum Outcome {
    /// The file left LOCK: released (or taken over by another). With kernel locks, we
    /// hold its process lock.
    Left,
    /// Queued on a released file behind a stopped waiter: wait on the file at LOCK
    /// instead (we do not hold this one's lock).
    Requeue,
    /// Its holder is gone: take it over.
    Stale(Stale),
    TimedOut,
    Interrupted(i32),
}

impl Outcome {
    /// What the wait on `theirs` came to; a busy lock names its holder now (a waiter
    /// queued on a released file may have slept through several hand-offs).
    pub(super) fn into_acquired<H>(self, theirs: &TheirFile, lock: &LockPath) -> Acquired<H> {
        match self {
            Outcome::Interrupted(signal) => Acquired::Interrupted(signal),
            _ => match theirs.successor(&lock.path) {
                Successor::Same => Acquired::Busy(Some(theirs.record.clone()), theirs.command_processes()),
                Successor::Other(now) => Acquired::Busy(Some(now.record.clone()), now.command_processes()),
                Successor::Nobody => Acquired::Busy(None, Vec::new()),
            },
        }
    }
}

/// Steps 3–4 on one holder's file: wait for its kernel locks (with
/// [`Locking::Kernel`]), then for the evidence table to call it stale, or for the file
/// to leave LOCK.
pub(super) fn wait_out(
    theirs: &TheirFile,
    lock: &LockPath,
    req: &Request<'_>,
    locking: Locking,
    waited: &mut bool,
) -> Result<Outcome> {
    let still_at_lock = || theirs.at(&lock.path).map_err(|err| read_error(lock.shown(), err));
    if locking == Locking::Kernel {
        for kind in [KernelLock::Process, KernelLock::Command] {
            match wait_for(kind, theirs, lock, req)? {
                Waited::Got(w) => *waited |= w,
                Waited::TimedOut => return Ok(Outcome::TimedOut),
                Waited::Interrupted(signal) => return Ok(Outcome::Interrupted(signal)),
                Waited::Stuck => {
                    *waited = true;
                    return Ok(Outcome::Requeue);
                }
            }
            // Free and still at LOCK: its xlock died, so wait for its command's tree.
            if !still_at_lock()? {
                return Ok(Outcome::Left);
            }
        }
    }
    // Kernel mode: only the moment between a killed xlock dropping its flock and the
    // kernel finishing its exit, or another host's heartbeat. A running holder on
    // this host is waited for exactly, through a pidfd; the rest is polled (1 ms
    // first with kernel locks, else POLL_FIRST), with backoff.
    let mut every = match locking {
        Locking::Kernel => Duration::from_millis(1),
        Locking::RecordOnly => POLL_FIRST,
    };
    let mut holder_exit: Option<OwnedFd> = None;
    let mut watch_holder = true;
    loop {
        if !still_at_lock()? {
            return Ok(Outcome::Left);
        }
        match theirs.judge(lock, req, locking)? {
            Verdict::Stale(why) => return Ok(Outcome::Stale(why)),
            Verdict::Alive(Alive::Command(processes)) => *theirs.command.borrow_mut() = Some(processes),
            Verdict::Alive(Alive::Running) if watch_holder && holder_exit.is_none() => {
                // Judged again once the pidfd is open, so it cannot be a recycled PID's.
                holder_exit = liveness::exit_fd(theirs.record.pid);
                watch_holder = holder_exit.is_some();
                continue;
            }
            Verdict::Alive(_) => {}
        }
        theirs.report_waiting(req);
        let watch = holder_exit.as_ref().map(AsFd::as_fd);
        // Without kernel locks a holder may leave LOCK and live on (a gate released
        // while its own command runs): look at LOCK again as it is polled, not only
        // when the holder exits. With them, a running holder here is one that is
        // exiting (its locks are free): its exit is the event.
        let paused = match locking {
            Locking::Kernel => pause(req, every, watch),
            Locking::RecordOnly => pause_at_most(req, every, watch),
        };
        match paused? {
            Paused::Stop(stop) => return Ok(stop),
            // It has exited: judge again, then poll if it still counts as alive (its
            // command's tree, without kernel locks).
            Paused::Ready => {
                holder_exit = None;
                watch_holder = false;
            }
            Paused::Elapsed => every = (every * 2).min(POLL_MAX),
        }
        *waited = true;
    }
}

/// How a [`pause`] ended.
pub(super) enum Paused {
    /// The deadline passed, or a signal ended the wait.
    Stop(Outcome),
    /// The descriptor it watched became readable.
    Ready,
    Elapsed,
}

/// Sleeps `every` (less if the deadline or the notice's tick comes first; with
/// `watch`, until it is readable, if that comes first).
pub(super) fn pause(req: &Request<'_>, every: Duration, watch: Option<BorrowedFd<'_>>) -> Result<Paused> {
    sleep(req, if watch.is_some() { None } else { Some(every) }, watch)
}

/// Sleeps until a signal comes (a slot waiter's sentry ending: SIGCHLD), the deadline
/// passes or the notice's tick is due, however long that takes.
pub(super) fn pause_for_signal(req: &Request<'_>) -> Result<Paused> {
    sleep(req, None, None)
}

/// Sleeps until `watch` is readable, but at most `every` (and less if the deadline or
/// the notice's tick comes first): for a watch that may never fire although what is
/// waited for has happened.
fn pause_at_most(req: &Request<'_>, every: Duration, watch: Option<BorrowedFd<'_>>) -> Result<Paused> {
    sleep(req, Some(every), watch)
}

fn sleep(req: &Request<'_>, limit: Option<Duration>, watch: Option<BorrowedFd<'_>>) -> Result<Paused> {
    if req.deadline.passed() {
        return Ok(Paused::Stop(Outcome::TimedOut));
    }
    Ok(match req.signals.wait(watch, next_wake(req, limit))? {
        Event::Signal(info) if signals::ends_wait(signals::number(&info)) => {
            Paused::Stop(Outcome::Interrupted(signals::number(&info)))
        }
        Event::Ready => Paused::Ready,
        _ => Paused::Elapsed,
    })
}

/// How long a wait may sleep: until the deadline, the notice's next tick or `limit`,
/// whichever comes first (`None`: no limit at all).
fn next_wake(req: &Request<'_>, limit: Option<Duration>) -> Option<Duration> {
    [req.deadline.remaining(), req.report.tick(), limit]
        .into_iter()
        .flatten()
        .min()
}
