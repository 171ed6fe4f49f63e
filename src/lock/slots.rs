//! Choosing a slot (SPEC §9, `--slots N`), holding the gate (`shared.rs`): the lowest
//! free slot K gets a member record `slot.K`; a slot whose holder crashed is taken
//! over (the gate makes this waiter the only one that can), and other crashed
//! holders' records on the way are removed; a LOCK used with another N, or with
//! exclusive/shared locks, is an error naming both.
//!
//! All N busy: this waiter keeps the gate (it is next in line; the others queue on
//! the gate's kernel locks) and waits for any member to end. There is no kernel
//! primitive for "any of N locks", so it watches the members directory with inotify:
//! a release removes a record (IN_DELETE), a dying holder's or command tree's last
//! writable descriptor closes (IN_CLOSE_WRITE, also for O_TMPFILE files, whose names
//! are `#inode` then), a take-over renames (IN_MOVED_FROM). Looking at a member only
//! opens it read-only (IN_CLOSE_NOWRITE, not watched), so the waiter does not wake
//! itself. Without kernel locks, or after a take-over attempt that found its holder
//! still alive by the evidence table (an exiting process, another host), or when no
//! inotify instance or watch can be had (the per-user limits), it polls with backoff
//! instead.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::Result;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::members::{self, look, mismatch, slot_name, step_request, try_take, Look, Name};
use super::path::LockPath;
use super::shared::Member;
use super::wait::{pause, Outcome, Paused, POLL_FIRST};
use super::{Acquired, Holding, Request};
use crate::error::{cannot, foreign};
use crate::escape;
use crate::liveness::Locking;
use crate::record::Record;

/// Polling backs off up to this pause.
const POLL_MAX: Duration = Duration::from_millis(250);

/// What a waiter for a slot watches in the members directory.
fn watched() -> AddWatchFlags {
    AddWatchFlags::IN_DELETE | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_FROM
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
    let mut watch: Option<Inotify> = None;
    let mut can_watch = true;
    let mut every = if kernel { Duration::from_millis(1) } else { POLL_FIRST };
    let dir_error = |err: std::io::Error| cannot("read", escape::path(&dir), &err);
    loop {
        let fresh = members::make_dir(lock, &dir)?;
        let before = members::dir_id(&dir);
        // No watch to be had (the per-user limit of inotify instances or watches):
        // poll, as without kernel locks.
        if watch
            .as_ref()
            .is_some_and(|watch| watch.add_watch(&dir, watched()).is_err())
        {
            watch = None;
            can_watch = false;
        }
        // Slot number → its record's name, for the slots taken now.
        let mut taken = BTreeMap::new();
        if !fresh {
            let listed = members::list(&dir)?;
            members::check_writable(lock, &dir)?;
            for (name, kind) in listed.unwrap_or_default() {
                match kind {
                    Name::Slot(k) if k < n => {
                        taken.insert(k, name);
                    }
                    // A shared holder, or a slot of a larger N.
                    _ => {
                        if let Some(theirs) = members::read(&dir, &name).map_err(dir_error)? {
                            return Err(mismatch(lock, &asked, &theirs));
                        }
                    }
                }
            }
        }
        let mut attempted = false;
        let mut busy: Option<Record> = None;
        let mut restart = false;
        // The slot we take, and stale slots cleared on the way (nothing left behind).
        let mut mine = None;
        // The lowest free slot is at most taken.len(): look no further for a free one,
        // but look at every taken one, to clear stale slots (nothing left behind).
        let lowest = 0..n.min(u32::try_from(taken.len()).unwrap_or(u32::MAX).saturating_add(1));
        let candidates: BTreeSet<u32> = lowest.chain(taken.keys().copied()).collect();
        for k in candidates {
            let theirs = if taken.contains_key(&k) {
                let path = dir.join(slot_name(k));
                match look(&path).map_err(|err| cannot("check", escape::path(&path), &err))? {
                    // Never touched, and a slot that no one could ever free: waiting for
                    // it would hang (SPEC §4.1: exit 125 saying why).
                    Look::Foreign(why) => return Err(foreign(escape::path(&path), &why)),
                    Look::Vacant => None,
                    Look::Alive(theirs) | Look::MayBeGone(theirs) if theirs.slots != Some(n) => {
                        return Err(mismatch(lock, &asked, &theirs))
                    }
                    Look::Alive(theirs) => {
                        busy.get_or_insert(theirs);
                        continue;
                    }
                    Look::MayBeGone(theirs) => Some(theirs),
                }
            } else if mine.is_some() {
                continue;
            } else {
                None
            };
            attempted |= theirs.is_some();
            let mut ours = record.clone();
            ours.slot = Some(k);
            match try_take(&members::member_path(&dir, slot_name(k))?, &step_req, &ours) {
                Ok(Some(held)) if mine.is_none() => mine = Some((k, held)),
                Ok(Some(stale)) => {
                    stale.release(false)?;
                }
                Ok(None) => {
                    attempted = true;
                    if let Some(theirs) = theirs.or_else(|| members::read(&dir, &slot_name(k).into()).ok().flatten()) {
                        busy.get_or_insert(theirs);
                    }
                }
                // The last member to leave removed the directory under us: again.
                Err(_) if mine.is_none() && members::went(&dir, &before) => {
                    restart = true;
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        if let Some((k, held)) = mine {
            req.report.done_waiting();
            if !fresh {
                members::sweep_orphans(&dir, &step_request(req, &step));
            }
            let mut member = Member::new(held, lock, Some(k));
            // Closing an inotify instance waits for the kernel's SRCU grace period
            // (fsnotify_destroy_group; 5–20 ms measured under load): not before the
            // command has started.
            member.close_after_start(watch.take());
            return Ok(Acquired::Held(member));
        }
        if restart {
            continue;
        }
        if let Some(theirs) = &busy {
            req.report.waiting(theirs, Vec::new);
        }
        let paused = if kernel && can_watch && !attempted {
            match &watch {
                None => {
                    // Watch first, then look again: no release can slip in between.
                    match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                        Ok(inotify) => watch = Some(inotify),
                        Err(_) => can_watch = false,
                    }
                    continue;
                }
                Some(watch) => pause(req, every, Some(watch.as_fd()))?,
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
            Paused::Ready => {
                if let Some(watch) = &watch {
                    while watch.read_events().is_ok_and(|events| !events.is_empty()) {}
                }
            }
            Paused::Elapsed => {}
        }
    }
}
