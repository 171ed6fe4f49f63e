//! The exclusive file lock (SPEC §4): the kind of lock xlock has today, and its
//! acquire loop (§4.3).
//!
//! A would-be holder prepares a private file carrying its record and both kernel
//! locks ([`Candidate`]), then `link()`s it to LOCK. A waiter blocks on the holder's
//! kernel locks ([`wait_out`]), so it wakes the moment the holder releases or dies (no
//! polling); the waiter that wins a released file's lock keeps it until it holds the
//! lock ([`Queue`]), so at a hand-off only the next waiter wakes. A dead holder's file is replaced with `rename()` by the one waiter that
//! holds its locks; without kernel locks, by the one waiter whose claim succeeds
//! ([`claim_stale`]). Finally the lock is verified in place ([`Held`]).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::candidate::{Candidate, TempFile};
use super::claim::{claim_stale, sweep};
use super::held::Held;
use super::path::LockPath;
use super::theirs::{open_record, Found, TheirFile};
use super::wait::{pause, wait_out, Outcome, Paused, POLL_FIRST};
use super::{drain, members, Acquired, Kind, Request, State, NO_KERNEL_LOCKS_ENV};
use crate::error::{foreign, read_error};
use crate::liveness::{Identity, Locking};
use crate::nesting::Inherited;
use crate::record::{Mode, Record};

/// The exclusive lock on the file at LOCK.
pub struct FileLock {
    lock: LockPath,
}

impl FileLock {
    /// The lock at `given` (made absolute against the current directory).
    pub fn new(given: &Path) -> Result<FileLock> {
        Ok(FileLock {
            lock: LockPath::new(given)?,
        })
    }
}

impl Kind for FileLock {
    type Held = Held;

    fn name(&self) -> &Path {
        &self.lock.path
    }

    fn acquire(&self, req: &Request<'_>, record: Record) -> Result<Acquired<Held>> {
        match acquire(&self.lock, req, record)? {
            // Holding LOCK, wait out the shared holders, if any (SPEC §9).
            Acquired::Held(held) => drain::drain(&self.lock, req, held),
            // Busy (-n, a timeout) behind a slot waiter at the gate: the LOCK is used
            // with --slots, which is the kind mismatch (exit 125 naming both), not busy.
            Acquired::Busy(Some(holder), _) if holder.mode.as_deref() == Some(Mode::SLOTS) => {
                Err(members::mismatch(&self.lock, "an exclusive lock", &holder))
            }
            other => Ok(other),
        }
    }

    fn nested(&self, inherited: &Inherited) -> Result<Option<Record>> {
        members::refuse_upgrade(&self.lock, inherited)?;
        Ok(
            match open_record(&self.lock.path).map_err(|err| read_error(self.lock.shown(), err))? {
                Found::Record(theirs) => Some(theirs.record).filter(|r| inherited.holds(&r.nonce)),
                Found::Vanished | Found::Foreign(_) => None,
            },
        )
    }

    fn inspect(&self, me: &Identity, stale_after: Duration) -> Result<State> {
        members::inspect(&self.lock, me, stale_after)
    }
}

/// Acquires the lock (SPEC §4.3). Also the gate and the member records of shared
/// locks and slots (`shared.rs`, `members.rs`).
pub(super) fn acquire(lock: &LockPath, req: &Request<'_>, mut record: Record) -> Result<Acquired<Held>> {
    let started = Instant::now();
    record.since = now();
    let ours = Candidate::create(lock, &record, req.inherit, TempFile::from_env())?;
    acquire_with(lock, req, record, ours, started)
}

/// [`acquire`] with our file made beforehand (`record` is in it): an unnamed one may
/// have been made in another directory of the same file system (a shared waiter's
/// member record, made in LOCK's directory before it waits, `shared.rs`).
pub(super) fn acquire_with(
    lock: &LockPath,
    req: &Request<'_>,
    mut record: Record,
    mut ours: Candidate,
    started: Instant,
) -> Result<Acquired<Held>> {
    let temp = TempFile::from_env();
    if ours.locking == Locking::RecordOnly {
        req.report.no_kernel_locks(&lock.dir, NO_KERNEL_LOCKS_ENV);
    }
    let mut waited = false;
    let mut took_over = false;
    // Released files whose process lock we won (kernel locks): the waiters queued
    // behind us on them sleep on until this is dropped, once we hold the lock or stop
    // waiting (see "Hand-offs" in docs/design.md).
    let mut queue = Queue::default();
    loop {
        if waited {
            record.since = now();
            ours.rewrite(lock, &record)?;
        }
        if ours.link(lock)? {
            break;
        }
        let theirs = match open_record(&lock.path).map_err(|err| read_error(lock.shown(), err))? {
            Found::Record(holder) => holder,
            Found::Vanished => continue,
            Found::Foreign(why) => return Err(foreign(lock.shown(), &why)),
        };
        if theirs.same_file(&ours.file_id) {
            break; // an ambiguous link() reply (NFS): it was ours all along
        }
        let outcome = wait_out(&theirs, lock, req, ours.locking, &mut waited);
        req.report.done_waiting();
        let why = match outcome? {
            Outcome::Left => {
                if ours.locking == Locking::Kernel {
                    queue.keep(theirs);
                }
                continue;
            }
            Outcome::Requeue => continue,
            Outcome::Stale(why) => why,
            Outcome::TimedOut => return Ok(Outcome::TimedOut.into_acquired(&theirs, lock)),
            Outcome::Interrupted(signal) => return Ok(Acquired::Interrupted(signal)),
        };
        match ours.locking {
            // We hold the dead file's locks: no other waiter can be doing the same.
            Locking::Kernel => ours.take_over(lock)?,
            Locking::RecordOnly => {
                if !claim_stale(&mut ours, &theirs, lock, req)? {
                    // Another waiter claimed it first; see what it made of it after a pause.
                    if let Paused::Stop(stop) = pause(req, POLL_FIRST, None)? {
                        return Ok(stop.into_acquired(&theirs, lock));
                    }
                    waited = true;
                    continue;
                }
            }
        }
        req.report.took_over(&theirs.record, &why);
        took_over = true;
        break;
    }
    // Held: the next waiter on each released file wakes, finds our file at LOCK and
    // queues on it.
    drop(queue);
    // Step 5: verify.
    let locking = ours.locking;
    let held = ours.into_held(lock, req.stale_after)?;
    // Orphans come from crashes, which a take-over shows; a named temp file's or a
    // no-locks claimer's crash may leave no other trace.
    if took_over || temp == TempFile::Named || locking == Locking::RecordOnly {
        sweep(lock, req, locking);
    }
    req.report.acquired(waited.then(|| started.elapsed()));
    Ok(Acquired::Held(held))
}

/// Released lock files (no longer at LOCK) whose process lock this waiter holds.
///
/// At a release, the kernel gives the old file's flock to one waiter. If that waiter
/// let go of it at once, the next one would wake, find the file released too, let go,
/// and so on: every waiter would wake at every hand-off, one after the other, and
/// race for `link()`. Keeping it until we hold the lock (or stop waiting: dropped with
/// the acquire, on every way out) keeps the others asleep in the kernel; we then
/// queue on the new holder's file with it in hand. A waiter only ever blocks on the
/// file at LOCK, newer than every file it holds, so no two waiters can wait for each
/// other; one that dies lets go as it exits, and the next one behind it wakes; one
/// that is stopped is found so by those behind it within a second
/// ([`TheirFile::behind_a_stopped_waiter`]), and they go round it.
#[derive(Default)]
pub(super) struct Queue(Vec<TheirFile>);

impl Queue {
    /// A bound on the descriptors kept: beyond it, the oldest file is let go (its
    /// next waiter wakes and queues on the file at LOCK).
    pub(super) const MAX: usize = 16;

    pub(super) fn keep(&mut self, released: TheirFile) {
        if self.0.len() == Self::MAX {
            self.0.remove(0);
        }
        self.0.push(released);
    }
}

pub(super) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
