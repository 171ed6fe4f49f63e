//! Choosing a slot (SPEC §9, `--slots N`), holding the gate (`shared.rs`): the lowest
//! free slot K gets a member record, slot 0 the solo record next to LOCK
//! (`.NAME.xlock-solo`, where an uncontended run puts it without the gate), the others
//! `slot.K` in the members directory; a slot whose holder crashed is taken over (the
//! gate makes this waiter the only one that can), and other crashed holders' records
//! on the way are removed; a LOCK used with another N, or with exclusive/shared
//! locks, is an error naming both.
//!
//! All N busy: this waiter keeps the gate (it is next in line; the others queue on
//! the gate's kernel locks) and waits for any slot to end. There is no kernel
//! primitive for "any of N locks": every busy slot gets a [`Sentry`] (`sentry.rs`), a
//! child process blocked on that slot's kernel locks, whose exit wakes the waiter
//! through SIGCHLD on the signalfd that every wait polls. After such a wake the slots
//! are looked at again without listing the directory (only the gate holder adds to
//! it), and a slot whose sentry is still blocked on the same file is still busy.
//! Without kernel locks, after a take-over attempt that found its holder still alive
//! by the evidence table (an exiting process, another host), or when no sentry can be
//! had, it polls with backoff instead.
//!
//! A watch for IN_DELETE on the members directory ([`Releases`]) wakes the waiter
//! sooner at the usual end of a slot there, a release, which unlinks the record before
//! it closes it: only an accelerator. Inotify used to be the waiter's only wake, and
//! missed ends of slots: the kernel raises the last close's event before it drops the
//! locks (`__fput`: fsnotify_close, then locks_remove_file), and a crash unlinks
//! nothing (docs/design.md).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::candidate::{Candidate, TempFile};
use super::members::{self, look, mismatch, slot_name, step_request, try_take, Look, Name};
use super::path::LockPath;
use super::sentry::Sentry;
use super::shared::Member;
use super::theirs::{open_record, Found};
use super::wait::{pause, pause_for_signal, Outcome, Paused, POLL_FIRST};
use super::{Acquired, Holding, Request};
use crate::error::{cannot, foreign};
use crate::escape;
use crate::liveness::Locking;
use crate::record::{Mode, Record};

/// Polling backs off up to this pause.
const POLL_MAX: Duration = Duration::from_millis(250);

/// Where slot `k`'s record is: slot 0 at the solo member's name next to LOCK (an
/// uncontended run makes no directory), the others `slot.K` in the members directory.
fn slot_path(lock: &LockPath, dir: &Path, k: u32) -> Result<LockPath> {
    if k == 0 {
        Ok(lock.solo())
    } else {
        members::member_path(dir, slot_name(k))
    }
}

/// Holding the gate of `lock`: takes the lowest free slot of `n`, waiting (as `req`
/// says) for one to become free.
pub(super) fn admit(lock: &LockPath, n: u32, req: &Request<'_>, record: &Record) -> Result<Acquired<Member>> {
    let dir = lock.members_dir();
    let asked = format!("--slots {n}");
    let step = req.report.for_step();
    let step_req = Request {
        inherit: req.inherit,
        ..step_request(req, &step)
    };
    let kernel = Locking::from_env() == Locking::Kernel;
    let mut every = if kernel { Duration::from_millis(1) } else { POLL_FIRST };
    // Busy slot → the sentry on its file.
    let mut sentries: BTreeMap<u32, Sentry> = BTreeMap::new();
    // Sentries killed but not yet reaped (dropped: reaped).
    let mut dying: Vec<Sentry> = Vec::new();
    // False once a sentry could not be had: poll then.
    let mut can_guard = true;
    // Busy slot → its holder's record, as last seen (for the waiting notice and "busy").
    let mut seen: BTreeMap<u32, Record> = BTreeMap::new();
    // Our member file, made before we sleep, used up by the take after a wake.
    let mut made: Option<Candidate> = None;
    let mut checked_writable = false;
    // The slots taken when we last looked, and whether the directory was there: after
    // a sentry's wake (every slot was busy and guarded), looked at again without
    // listing the directory: only we, at the gate, add to it.
    let mut last: Option<(BTreeSet<u32>, bool)> = None;
    let mut watch = Releases::default();
    loop {
        // The slots whose records are there, and whether the directory is.
        let (taken, in_dir) = match last.take() {
            Some(last) => last,
            None => {
                let listed = taken_slots(lock, &dir, n, &step_req, record, &asked, !checked_writable)?;
                checked_writable |= listed.1;
                listed
            }
        };
        let mut attempted = false;
        let mut busy: Option<Record> = None;
        // The slots found held, each to be guarded by a sentry while we sleep.
        let mut held = Vec::new();
        let mut restart = false;
        // The slot we take, and stale slots cleared on the way (nothing left behind).
        let mut mine = None;
        // The lowest free slot is at most taken.len(): look no further for a free one,
        // but look at every taken one, to clear stale slots (nothing left behind).
        let lowest = 0..n.min(u32::try_from(taken.len()).unwrap_or(u32::MAX).saturating_add(1));
        let candidates: BTreeSet<u32> = lowest.chain(taken.iter().copied()).collect();
        // Any error once we have our slot: let go of it, nothing left behind.
        let scanned = (|| -> Result<()> {
            for k in candidates {
                let path = slot_path(lock, &dir, k)?;
                // Busy when we last looked, and its sentry is still blocked on the same
                // file's locks: still busy (only we, at the gate, take slots; a solo
                // joiner that takes slot 0 meanwhile steps back, and its release ends
                // the sentry's wait).
                if taken.contains(&k) && still_guarded(&mut sentries, k, &path.path, &mut can_guard) {
                    if let Some(theirs) = seen.get(&k) {
                        busy.get_or_insert_with(|| theirs.clone());
                    }
                    held.push(k);
                    continue;
                }
                let theirs = if taken.contains(&k) {
                    match look(&path.path, req.me).map_err(|err| cannot("check", escape::path(&path.path), &err))? {
                        // Never touched, and a slot that no one could ever free: waiting for
                        // it would hang (SPEC §4.1: exit 125 saying why).
                        Look::Foreign(why) if mine.is_none() => return Err(foreign(escape::path(&path.path), &why)),
                        // Not ours to clear, and we have our slot.
                        Look::Foreign(_) => continue,
                        Look::Vacant => None,
                        // Another kind (or N): an error while its holder lives; a crashed
                        // one's slot is taken over as any stale slot is.
                        Look::Alive(theirs)
                            if theirs.mode.as_deref() != Some(Mode::SLOTS) || theirs.slots != Some(n) =>
                        {
                            return Err(mismatch(lock, &asked, &theirs))
                        }
                        // Busy for now: its sentry wakes us when it is free (a dead
                        // holder's lock that another holds for a moment, of any kind).
                        Look::Alive(theirs) | Look::Probed(theirs) => {
                            busy.get_or_insert_with(|| theirs.clone());
                            seen.insert(k, theirs);
                            held.push(k);
                            continue;
                        }
                        Look::MayBeGone(theirs) => Some(theirs),
                    }
                } else if mine.is_some() {
                    continue;
                } else {
                    None
                };
                // Not held now. A sentry on a file still there may hold its locks for a
                // moment: it ends first, so that it cannot stand in the way of the
                // take-over. One on a file that went (a release) holds nothing in the
                // way: killed, and reaped later, off the way to the command.
                if let Some(sentry) = sentries.remove(&k) {
                    if theirs.is_some() {
                        drop(sentry);
                    } else {
                        sentry.kill();
                        dying.push(sentry);
                    }
                }
                attempted |= theirs.is_some();
                let mut ours = record.clone();
                ours.slot = Some(k);
                if k > 0 && !in_dir {
                    members::make_dir(lock, &dir)?;
                }
                let dir_now = members::dir_id(&dir);
                let taken_now = match made.take() {
                    Some(ours_made) if mine.is_none() => {
                        members::take_prepared(&path, &step_req, ours.clone(), ours_made)
                    }
                    _ => try_take(&path, &step_req, &ours),
                };
                match taken_now {
                    Ok(Some(held)) if mine.is_none() => mine = Some((k, held)),
                    Ok(Some(stale)) => {
                        stale.release(false)?;
                    }
                    Ok(None) => {
                        attempted = true;
                        // Alive after all (the evidence table): another kind is an error.
                        if let Some(theirs) = &theirs {
                            if theirs.mode.as_deref() != Some(Mode::SLOTS) || theirs.slots != Some(n) {
                                return Err(mismatch(lock, &asked, theirs));
                            }
                        }
                        if let Some(theirs) = theirs.or_else(|| match open_record(&path.path) {
                            Ok(Found::Record(theirs)) => Some(theirs.record),
                            _ => None,
                        }) {
                            busy.get_or_insert(theirs);
                        }
                    }
                    // The last member to leave removed the directory under us: look again
                    // (or, with our slot had, there is nothing left there to clear).
                    Err(_) if k > 0 && members::went(&dir, &dir_now) => {
                        restart = mine.is_none();
                        break;
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(())
        })();
        if let Err(err) = scanned {
            if let Some((_, held)) = mine {
                let _ = held.release(false);
            }
            return Err(err);
        }
        if let Some((k, held)) = mine {
            req.report.done_waiting();
            // Orphaned side files come from crashes, which a take-over attempt shows;
            // a named temp file's or a no-locks claimer's crash may leave no other trace.
            if in_dir && (attempted || !kernel || TempFile::from_env() == TempFile::Named) {
                members::sweep_orphans(&dir, &step_request(req, &step));
            }
            // Stale slots of the directory cleared on the way may leave it empty: it
            // is removed once the gate is released (`SharedLock::acquire`).
            let mut member = if k == 0 {
                Member::solo(held, lock, Some(k))
            } else {
                Member::new(held, lock, Some(k))
            };
            // The other sentries guard slots that are not ours: killed now, reaped
            // once the command has started.
            dying.extend(std::mem::take(&mut sentries).into_values().inspect(Sentry::kill));
            member.reap_after_start(dying, watch.instance.take());
            return Ok(Acquired::Held(member));
        }
        if restart {
            continue;
        }
        dying.clear(); // reaped: we wait anyway
        if let Some(theirs) = &busy {
            req.report.waiting(theirs, Vec::new);
        }
        let paused = if kernel && can_guard && !attempted {
            // Every busy slot guarded (its lock's going wakes us), then sleep.
            match guard(&mut sentries, lock, &dir, &held) {
                Guarded::All => {
                    // Our member file, made now rather than after the wake.
                    if made.is_none() {
                        made = members::prepare(lock, req, record);
                    }
                    last = Some((taken, in_dir));
                    match watch.ready(&dir) {
                        Some(fd) => pause(req, every, Some(fd))?,
                        None => pause_for_signal(req)?,
                    }
                }
                Guarded::Changed => continue,
                Guarded::Failed => {
                    can_guard = false;
                    continue;
                }
            }
        } else {
            let paused = pause(req, every, None)?;
            every = (every * 2).min(POLL_MAX);
            paused
        };
        match paused {
            Paused::Stop(Outcome::Interrupted(signal)) => {
                req.report.done_waiting();
                return Ok(Acquired::Interrupted(signal));
            }
            Paused::Stop(_) => {
                req.report.done_waiting();
                return Ok(Acquired::Busy(busy, Vec::new()));
            }
            Paused::Ready | Paused::Elapsed => watch.drain(),
        }
    }
}

/// A faster wake than a sentry's for the usual end of a slot in the members directory,
/// a release: its holder unlinks the record before it closes it (and its locks go),
/// and an inotify watch for IN_DELETE on the directory wakes the waiter at the unlink.
/// Only an accelerator: the sentries still see every end of every slot (a crash
/// raises no IN_DELETE; slot 0 is not in the directory), so a watch that cannot be
/// had (the per-user limits), or a directory made again under it, costs only speed.
/// Closed after the command has started, on a thread (`Member`): closing an inotify
/// instance waits for an SRCU grace period (5–20 ms).
#[derive(Default)]
struct Releases {
    instance: Option<Inotify>,
    /// The directory watched (its identity), and whether no watch can be had.
    watched: Option<members::DirId>,
    failed: bool,
}

impl Releases {
    /// The descriptor to wait on besides the signals, with a watch on `dir` now if
    /// there is one to be had.
    fn ready(&mut self, dir: &Path) -> Option<BorrowedFd<'_>> {
        if self.failed {
            return None;
        }
        let now = members::dir_id(dir);
        if self.watched.as_ref() != Some(&now) {
            if self.instance.is_none() {
                self.instance = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
            }
            let added = self
                .instance
                .as_ref()
                .is_some_and(|inotify| inotify.add_watch(dir, AddWatchFlags::IN_DELETE).is_ok());
            if !added {
                self.failed = true;
                return None;
            }
            self.watched = Some(now);
        }
        self.instance.as_ref().map(AsFd::as_fd)
    }

    /// Reads the events that woke us (or none).
    fn drain(&self) {
        if let Some(inotify) = &self.instance {
            while inotify.read_events().is_ok_and(|events| !events.is_empty()) {}
        }
    }
}

/// The slots of `n` whose records are there now (slot 0 at the solo name, the others
/// in the members directory `dir`), and whether `dir` is there (then, with `check`, it
/// is checked to be one we may add to). A live holder of another kind or N is an
/// error naming both; a crashed one's record is taken over with `record` and removed.
fn taken_slots(
    lock: &LockPath,
    dir: &Path,
    n: u32,
    req: &Request<'_>,
    record: &Record,
    asked: &str,
    check: bool,
) -> Result<(BTreeSet<u32>, bool)> {
    let mut taken = BTreeSet::new();
    let listed = members::list(dir)?;
    let in_dir = listed.is_some();
    if in_dir && check {
        members::check_writable(lock, dir)?;
    }
    for (name, kind) in listed.unwrap_or_default() {
        match kind {
            Name::Slot(k) if k < n && k > 0 => {
                taken.insert(k);
            }
            // A shared holder, a slot of a larger N, or a slot 0 in the directory (where
            // no xlock puts one): not ours, unless its holder crashed (then it is removed).
            _ => {
                if let Some(theirs) = members::live_member(&members::member_path(dir, &name)?, req, record)? {
                    return Err(mismatch(lock, asked, &theirs));
                }
            }
        }
    }
    if std::fs::symlink_metadata(lock.solo().path).is_ok() {
        taken.insert(0);
    }
    Ok((taken, in_dir))
}

/// Whether busy slot `k` is still guarded by a live sentry on the file now at `path`
/// (then it is still held: the sentry has not had its locks). A sentry that ended is
/// reaped here; one whose lock call failed makes the waiter poll (`can_guard`).
fn still_guarded(sentries: &mut BTreeMap<u32, Sentry>, k: u32, path: &Path, can_guard: &mut bool) -> bool {
    let Some(sentry) = sentries.get_mut(&k) else {
        return false;
    };
    match sentry.ended() {
        None => {
            let now = std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
            now == Some(sentry.id)
        }
        Some(had_them) => {
            *can_guard &= had_them;
            sentries.remove(&k);
            false
        }
    }
}

/// What [`guard`] found.
enum Guarded {
    /// Every busy slot has a live sentry on the file now at its name.
    All,
    /// A busy slot's file went before its sentry could open it: look again.
    Changed,
    /// No sentry to be had (no process, or a sentry's lock call failed): poll.
    Failed,
}

/// Makes sure that each slot in `held` has a live sentry on the file now at its
/// name, before the waiter sleeps; ends the others.
fn guard(sentries: &mut BTreeMap<u32, Sentry>, lock: &LockPath, dir: &Path, held: &[u32]) -> Guarded {
    sentries.retain(|k, _| held.contains(k));
    let mut fine = true;
    // An ended sentry goes (its SIGCHLD wakes the next sleep at once, and the look
    // after it decides); one still held gets a new sentry below.
    sentries.retain(|_, sentry| match sentry.ended() {
        None => true,
        Some(had_them) => {
            fine &= had_them;
            false
        }
    });
    if !fine {
        return Guarded::Failed;
    }
    for &k in held {
        let Ok(path) = slot_path(lock, dir, k) else {
            return Guarded::Failed;
        };
        let now = std::fs::symlink_metadata(&path.path).ok().map(|m| (m.dev(), m.ino()));
        if sentries.get(&k).is_some_and(|sentry| Some(sentry.id) == now) {
            continue;
        }
        sentries.remove(&k);
        match Sentry::start(&path.path) {
            Ok(Some(sentry)) => {
                sentries.insert(k, sentry);
            }
            Ok(None) => return Guarded::Changed,
            Err(_) => return Guarded::Failed,
        }
    }
    Guarded::All
}
