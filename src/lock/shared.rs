//! Shared locks and slots (SPEC §9): the kind [`SharedLock`] (`--shared`, `--slots N`)
//! and its held lock, a [`Member`].
//!
//! "Gate and members" (docs/design.md, "Shared locks and slots"): LOCK itself, the
//! exclusive lock of SPEC §4, is the *gate*, held only for a moment by a shared
//! acquirer (while it writes its member record) and, for as long as they wait, by a
//! writer waiting out the readers or by a slot waiter. Each holder is a *member*: an
//! ordinary exclusive file lock of its own, the solo record `.NAME.xlock-solo` next
//! to LOCK or one in `.NAME.xlock-members/` (`members.rs`). Nobody holding anything,
//! an acquirer joins at once as the solo member, without the gate or a directory.
//! Whoever holds the gate is next in line; everyone else queues on the gate's kernel
//! locks, so once a writer waits, new readers queue behind it (writer preference),
//! and exactly one waiter at a time can take a crashed member's share or slot over.
//! Leaving never takes the gate: a releasing reader must not queue behind a writer.

use std::cell::Cell;
use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::inotify::Inotify;

use super::candidate::{Candidate, TempFile};
use super::claim::sweep;
use super::file::{self, Queue};
use super::held::Held;
use super::members::{self, mismatch, step_request, POLL_MAX};
use super::path::LockPath;
use super::sentry::Sentry;
use super::slots;
use super::theirs::{open_record, Found};
use super::wait::{wait_out, Outcome, POLL_FIRST};
use super::{Acquired, Holding, Kind, Released, Request, State};
use crate::error::read_error;
use crate::liveness::{Identity, Locking};
use crate::nesting::Inherited;
use crate::record::{Mode, Record};
use crate::supervise::{Guard, Health};

/// The variable that tells a slot holder's command its slot.
pub const SLOT_ENV: &str = "XLOCK_SLOT";

/// A shared lock (`slots` = `None`) or one of N slots on LOCK.
pub struct SharedLock {
    lock: LockPath,
    slots: Option<u32>,
}

impl SharedLock {
    /// `--shared` (`slots` = `None`) or `--slots N` on the lock at `given`.
    pub fn new(given: &Path, slots: Option<u32>) -> Result<SharedLock> {
        Ok(SharedLock {
            lock: LockPath::new(given)?,
            slots,
        })
    }

    /// What this xlock asked for, as messages say it.
    fn asked(&self) -> String {
        match self.slots {
            Some(n) => format!("--slots {n}"),
            None => "--shared".into(),
        }
    }

    /// Whether a holder's record is of the kind this xlock asked for.
    fn same_kind(&self, record: &Record) -> bool {
        match self.slots {
            None => record.mode.as_deref() == Some(Mode::SHARED),
            Some(n) => record.mode.as_deref() == Some(Mode::SLOTS) && record.slots == Some(n),
        }
    }

    /// Whether LOCK's holder, which this xlock would wait for, may share LOCK with it:
    /// an exclusive holder (or writer) may, for a shared lock; another kind never.
    fn check_gate(&self, holder: &Record) -> Result<()> {
        let compatible = self.same_kind(holder) || (self.slots.is_none() && holder.mode.is_none());
        if compatible {
            Ok(())
        } else {
            Err(mismatch(&self.lock, &self.asked(), holder))
        }
    }

    /// The uncontended path: nobody holds anything (no members directory, and the solo
    /// member's name is free or its holder is gone), so join as the solo member next
    /// to LOCK without the gate, then look at LOCK. A writer links LOCK before it
    /// looks at the members, so if LOCK is still absent once our record is in place,
    /// the writer's look will find it and wait for us. If LOCK is there (a writer, or
    /// an acquirer next in line), leave again and queue at the gate. A slot taken this
    /// way is slot 0, which lives only at the solo name.
    ///
    /// `made`: our member file, made while we waited (`prepare`), used up here.
    fn join_at_once(&self, req: &Request<'_>, record: &Record, made: &mut Option<Candidate>) -> Result<Option<Member>> {
        // Members in the directory: the gate (kind checks, sweeps).
        match std::fs::symlink_metadata(self.lock.members_dir()) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            _ => return Ok(None),
        }
        let step = req.report.for_step();
        let slot = self.slots.map(|_| 0);
        let mut ours = record.clone();
        ours.slot = slot;
        let step_req = Request {
            inherit: req.inherit,
            ..step_request(req, &step)
        };
        let held = match members::take_at_once(&self.lock.solo(), &step_req, ours, made.take())? {
            Acquired::Held(held) => held,
            // A holder of another kind: say so (SPEC §9). Of ours: the gate. While LOCK is
            // there, the gate holder may be taking a crashed holder's record over, with
            // its own record at that name for a moment: the gate decides then.
            Acquired::Busy(Some(holder), _) => {
                if !self.lock.path.exists() {
                    self.check_member(&holder)?;
                }
                return Ok(None);
            }
            Acquired::Busy(None, _) | Acquired::Interrupted(_) => return Ok(None),
        };
        let member = Member::solo(held, &self.lock, slot);
        let lock_is_free = matches!(
            std::fs::symlink_metadata(&self.lock.path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound
        );
        if lock_is_free {
            return Ok(Some(member));
        }
        member.release(false)?;
        Ok(None)
    }

    /// Whether a member's record (the solo member's, whose name does not say its kind)
    /// is of our kind: exit 125 naming both if not.
    fn check_member(&self, theirs: &Record) -> Result<()> {
        if self.same_kind(theirs) {
            Ok(())
        } else {
            Err(mismatch(&self.lock, &self.asked(), theirs))
        }
    }

    /// Our member file, made before we wait for an exclusive holder, as the exclusive
    /// waiter makes its own (`members::prepare`), linked at the solo member's name once
    /// we join. `None` for slots: they never wait for an exclusive holder.
    fn prepare(&self, req: &Request<'_>, record: &Record) -> Option<Candidate> {
        if self.slots.is_some() {
            return None;
        }
        members::prepare(&self.lock, req, record)
    }

    /// Takes the gate, LOCK. Without kernel locks a waiter watches the gate holder's
    /// process, but a gate holder lives on after it passed (it runs its command as a
    /// member): wait in slices, looking at LOCK in between, or every waiter would
    /// queue behind the whole command of the one before it.
    fn take_gate(&self, req: &Request<'_>, record: &Record) -> Result<Acquired<Held>> {
        if Locking::from_env() == Locking::Kernel {
            return file::acquire(&self.lock, req, record.clone());
        }
        let mut every = POLL_FIRST;
        loop {
            match file::acquire(&self.lock, &members::sliced(req, every), record.clone())? {
                Acquired::Busy(..) if !req.deadline.passed() => every = (every * 2).min(POLL_MAX),
                done => return Ok(done),
            }
        }
    }

    /// Holding the gate: a share or a slot.
    fn admit(&self, req: &Request<'_>, record: &Record) -> Result<Acquired<Member>> {
        match self.slots {
            Some(n) => slots::admit(&self.lock, n, req, record),
            None => self.admit_shared(req, record),
        }
    }

    /// Holding the gate: the solo member's name if it is free (or its holder gone),
    /// else our member record in the members directory, named by our nonce (no one
    /// else's name, so it never waits). Stale members of crashed holders there are
    /// removed first.
    fn admit_shared(&self, req: &Request<'_>, record: &Record) -> Result<Acquired<Member>> {
        let dir = self.lock.members_dir();
        let step = req.report.for_step();
        let step_req = Request {
            inherit: req.inherit,
            ..step_request(req, &step)
        };
        match members::take_at_once(&self.lock.solo(), &step_req, record.clone(), None)? {
            Acquired::Held(held) => {
                // Crashed members' records in the directory: nothing left behind (the
                // directory, if that empties it, goes once the gate is released).
                if std::fs::symlink_metadata(&dir).is_ok() {
                    let swept = members::sweep_shared(&self.lock, &dir, &step_request(req, &step), record);
                    if let Err(err) = swept {
                        let _ = held.release(false);
                        return Err(err);
                    }
                }
                return Ok(Acquired::Held(Member::solo(held, &self.lock, None)));
            }
            Acquired::Busy(Some(holder), _) => self.check_member(&holder)?,
            Acquired::Busy(None, _) => {}
            Acquired::Interrupted(signal) => return Ok(Acquired::Interrupted(signal)),
        }
        for _ in 0..100 {
            if !members::make_dir(&self.lock, &dir)? {
                members::sweep_shared(&self.lock, &dir, &step_request(req, &step), record)?;
            }
            let before = members::dir_id(&dir);
            let path = members::member_path(&dir, &record.nonce)?;
            match file::acquire(&path, &step_req, record.clone()) {
                Ok(acquired) => return Ok(Member::of(acquired, &self.lock, None)),
                // The last member to leave removed the directory under us: make it again.
                Err(_) if members::went(&dir, &before) => {}
                Err(err) => return Err(err),
            }
        }
        bail!(
            "the directory {} keeps disappearing; is something cleaning {}?",
            crate::escape::path(&dir),
            crate::escape::path(&self.lock.dir)
        )
    }
}

impl Kind for SharedLock {
    type Held = Member;

    fn name(&self) -> &Path {
        &self.lock.path
    }

    fn acquire(&self, req: &Request<'_>, mut record: Record) -> Result<Acquired<Member>> {
        let started = Instant::now();
        record.mode = Some(
            if self.slots.is_some() {
                Mode::SLOTS
            } else {
                Mode::SHARED
            }
            .into(),
        );
        record.slots = self.slots;
        let step = req.report.for_step();
        let locking = Locking::from_env();
        // Released files of LOCK whose process lock we won, as `file::acquire` keeps
        // them: the waiters behind us sleep on until we hold or stop.
        let mut queue = Queue::default();
        let mut waited = false;
        let mut made = None;
        loop {
            if let Some(member) = self.join_at_once(req, &record, &mut made)? {
                // The gate's acquire sweeps orphans next to LOCK where a crash can leave
                // them untraced (named temp files, no kernel locks); joining without it
                // must do the same, or an orphan of a killed gate taker stays forever.
                if TempFile::from_env() == TempFile::Named || locking == Locking::RecordOnly {
                    sweep(&self.lock, req, locking);
                }
                let waited = waited || step.has_waited();
                req.report.acquired(waited.then(|| started.elapsed()));
                // The released files' last close evicts them (0.1 ms and more): once the
                // command has started; the waiters behind us on them wake then, to
                // queue on LOCK, which they would have found free or taken anyway.
                let mut member = member;
                member.queue = Cell::new(Some(queue));
                return Ok(Acquired::Held(member));
            }
            let theirs = match open_record(&self.lock.path).map_err(|err| read_error(self.lock.shown(), err))? {
                Found::Record(theirs) => theirs,
                Found::Vanished | Found::Foreign(_) => break,
            };
            // A LOCK of another kind: say so at once rather than after waiting for it;
            // unless its holder crashed: the gate's acquire takes it over.
            if let Err(err) = self.check_gate(&theirs.record) {
                if members::holder_gone(&theirs, &self.lock, &step_request(req, &step)) {
                    break;
                }
                return Err(err);
            }
            // An exclusive holder (or a writer waiting out the readers) ends with no
            // one left: wait for it on its kernel locks, as at the gate, then join
            // without the gate, as on an idle LOCK (`join_at_once`): a hand-off from
            // an exclusive holder then costs the exclusive lock's, plus the members
            // directory. A gate passer (a moment) or a slot waiter: queue at the gate.
            if theirs.record.mode.is_some() || locking != Locking::Kernel {
                break;
            }
            let step_req = step_request(req, &step);
            if made.is_none() {
                made = self.prepare(req, &record);
            }
            let outcome = wait_out(&theirs, &self.lock, &step_req, locking, &mut waited);
            step.done_waiting();
            match outcome? {
                Outcome::Left => queue.keep(theirs),
                Outcome::Requeue => {}
                // Crashed: the gate's acquire takes it over (we let go of its locks).
                Outcome::Stale(_) => break,
                Outcome::TimedOut => return Ok(Outcome::TimedOut.into_acquired(&theirs, &self.lock)),
                Outcome::Interrupted(signal) => return Ok(Acquired::Interrupted(signal)),
            }
        }
        let gate = match self.take_gate(&step_request(req, &step), &record)? {
            Acquired::Held(gate) => gate,
            Acquired::Busy(holder, command) => {
                // A holder of another kind came to the gate after the look above.
                if let Some(holder) = &holder {
                    self.check_gate(holder)?;
                }
                return Ok(Acquired::Busy(holder, command));
            }
            Acquired::Interrupted(signal) => return Ok(Acquired::Interrupted(signal)),
        };
        let admitted = self.admit(req, &record);
        // The gate's file is closed once our command has started: its last close
        // evicts it (0.1 ms and more), on the way to the command at every slot hand-off.
        let released = gate.release_keeping(false);
        // A member that left while we held the gate left the members directory to us
        // (`Member::release`): removed if it is empty and we are not in it. After the
        // gate is released: a member that leaves later looks at LOCK after its record
        // is gone, so either it finds LOCK gone and removes the directory itself, or
        // our `rmdir` comes after its record went.
        if !matches!(&admitted, Ok(Acquired::Held(member)) if member.in_dir) {
            members::remove_dir_if_empty(&self.lock.members_dir());
        }
        drop(queue);
        match (admitted, released) {
            (Ok(Acquired::Held(member)), Ok((_, file))) => {
                member.gate.set(file);
                let waited = waited || step.has_waited() || req.report.has_waited();
                req.report.acquired(waited.then(|| started.elapsed()));
                Ok(Acquired::Held(member))
            }
            (Ok(Acquired::Held(member)), Err(err)) => {
                let _ = member.release(false);
                Err(err)
            }
            (Ok(other), released) => released.map(|_| other),
            (Err(err), _) => Err(err),
        }
    }

    fn nested(&self, inherited: &Inherited) -> Result<Option<Record>> {
        // An ancestor holds LOCK exclusively: that implies shared (not a slot).
        if let Found::Record(theirs) = open_record(&self.lock.path).map_err(|err| read_error(self.lock.shown(), err))? {
            if inherited.holds(&theirs.record.nonce) {
                return match self.slots {
                    None => Ok(Some(theirs.record)),
                    Some(_) => Err(mismatch(&self.lock, &self.asked(), &theirs.record)),
                };
            }
        }
        match members::held_by_ancestor(&self.lock, inherited)? {
            Some(ancestor) if self.same_kind(&ancestor) => Ok(Some(ancestor)),
            Some(ancestor) => Err(mismatch(&self.lock, &self.asked(), &ancestor)),
            None => Ok(None),
        }
    }

    fn inspect(&self, me: &Identity, stale_after: Duration) -> Result<State> {
        members::inspect(&self.lock, me, stale_after)
    }
}

/// A share or a slot held by this process: its member record, an exclusive file lock
/// of its own (heartbeat, loss, command lock, release as SPEC §4.4–4.5 say).
pub struct Member {
    held: Held,
    /// LOCK's absolute path, for `XLOCK_PATH` and `XLOCK_HELD`.
    lock: PathBuf,
    /// The members directory, removed by the last member in it to leave.
    dir: PathBuf,
    /// Whether our record is in it (not the solo member's, next to LOCK).
    pub(super) in_dir: bool,
    slot: Option<u32>,
    /// Released files of LOCK that a shared waiter won (`SharedLock::acquire`),
    /// closed once the command has started.
    queue: Cell<Option<Queue>>,
    /// The slot waiter's sentries, killed when it took its slot and reaped once the
    /// command has started (before release asks whether the command's tree is gone).
    sentries: Cell<Vec<Sentry>>,
    /// The gate's released file, closed once the command has started.
    gate: Cell<Option<std::fs::File>>,
    /// The slot waiter's inotify instance, closed once the command has started.
    closing: Cell<Option<Inotify>>,
}

impl Member {
    /// `held`, a record in `lock`'s members directory, as a [`Member`].
    pub(super) fn new(held: Held, lock: &LockPath, slot: Option<u32>) -> Member {
        Member {
            held,
            lock: lock.path.clone(),
            dir: lock.members_dir(),
            in_dir: true,
            slot,
            queue: Cell::new(None),
            sentries: Cell::new(Vec::new()),
            gate: Cell::new(None),
            closing: Cell::new(None),
        }
    }

    /// `held`, the solo member's record next to `lock`, as a [`Member`].
    pub(super) fn solo(held: Held, lock: &LockPath, slot: Option<u32>) -> Member {
        Member {
            in_dir: false,
            ..Member::new(held, lock, slot)
        }
    }

    /// The member `acquired` as a [`Member`].
    pub(super) fn of(acquired: Acquired<Held>, lock: &LockPath, slot: Option<u32>) -> Acquired<Member> {
        match acquired {
            Acquired::Held(held) => Acquired::Held(Member::new(held, lock, slot)),
            Acquired::Busy(holder, command) => Acquired::Busy(holder, command),
            Acquired::Interrupted(signal) => Acquired::Interrupted(signal),
        }
    }

    /// Keeps `sentries` (killed already) until the command has started, and reaps them
    /// then: waiting for their deaths took 0.5 ms of a slot hand-off. `watch`, the slot
    /// waiter's inotify instance, is closed then too, on a thread of its own: the close
    /// waits for the kernel's SRCU grace period (5–20 ms), and must delay neither the
    /// command nor, when the command is shorter than that, the release that hands the
    /// slot on (it made a slot hand-off 10 ms in the benchmark).
    pub(super) fn reap_after_start(&mut self, sentries: Vec<Sentry>, watch: Option<Inotify>) {
        self.sentries = Cell::new(sentries);
        self.closing = Cell::new(watch);
    }

    /// Closes the released files of LOCK we kept (the gate's among them) and the slot
    /// waiter's inotify instance, and reaps our sentries: once the command has
    /// started, or at release if it never did.
    fn let_go(&self) {
        if let Some(watch) = self.closing.take() {
            // If the thread cannot be had, close it here: slow, not wrong.
            let _ = std::thread::Builder::new().spawn(move || drop(watch));
        }
        drop(self.queue.take());
        drop(self.sentries.take());
        drop(self.gate.take());
    }
}

impl Guard for Member {
    fn next_check(&self) -> Option<Instant> {
        self.let_go();
        self.held.next_check()
    }

    fn check(&self) -> Health {
        self.held.check()
    }
}

impl Holding for Member {
    fn identity(&self) -> (&Path, &str) {
        (&self.lock, &self.held.nonce)
    }

    fn env(&self) -> Option<(&'static str, OsString)> {
        self.slot.map(|k| (SLOT_ENV, OsString::from(k.to_string())))
    }

    fn inherit(&self) -> Option<BorrowedFd<'_>> {
        self.held.inherit()
    }

    /// Releases the member record as the exclusive lock is released (or leaves it to
    /// the command's tree), then removes the members directory if it was the last.
    /// Never takes the gate.
    ///
    /// While someone holds LOCK (the gate: a slot waiter, a writer draining, a reader
    /// being admitted) the directory is left to that holder, who removes it once it
    /// releases LOCK if it is empty and not theirs to join (`SharedLock::acquire`,
    /// `drain::give_up`, `Drained`): a slot hand-off would otherwise remove the
    /// directory and make it again at once (on ext4 with `discard`, 0.2 ms). Only to a
    /// holder of LOCK of the directory's own user: in a sticky directory (/tmp) no
    /// other could remove it (found by attacking it: an empty directory of root's was
    /// left, and locked every other user out of `--shared`).
    fn release(self, name_them: bool) -> Result<Released> {
        self.let_go();
        let released = self.held.release(name_them);
        if self.in_dir && !members::left_to_gate(&self.lock, &self.dir) {
            members::remove_dir_if_empty(&self.dir);
        }
        released
    }
}
