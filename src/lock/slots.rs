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
//!
//! Inotify alone can miss the end of a slot: a dying holder's last close raises
//! IN_CLOSE_WRITE *before* the kernel drops the lock it carries (`__fput` calls
//! fsnotify_close, then locks_remove_file), so a waiter that looks at once finds the
//! slot busy, and the lock's going raises no event; nor does the close of a read-only
//! descriptor that held a dead holder's flock for a moment (`--status`, or a waiter's
//! own look). So every slot found busy also gets a [`Sentry`]: a child process that
//! blocks on that slot's kernel locks, as the exclusive waiter does on its holder's,
//! and exits once it has had them. Its exit comes after its own locks are dropped
//! (exit_files before exit_notify), and wakes the waiter through SIGCHLD, which the
//! waiter's signalfd reads anyway. No polling, and no thread: a sentry is ended with
//! SIGKILL, race-free, and reaped before a take-over of its slot, or once the command
//! has started (`Member`) when the waiter has its slot.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use nix::libc;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::kernel::command_byte;
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
    // Busy slot → the sentry on its file; `can_guard` false once one could not be had.
    let mut sentries: BTreeMap<u32, Sentry> = BTreeMap::new();
    // Sentries killed but not yet reaped (dropped: reaped).
    let mut dying: Vec<Sentry> = Vec::new();
    let mut can_guard = true;
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
        // The slots found held, each to be guarded by a sentry while we sleep.
        let mut held = Vec::new();
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
                if taken.contains_key(&k) {
                    drop(sentry);
                } else {
                    sentry.kill();
                    dying.push(sentry);
                }
            }
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
            // The other sentries guard slots that are not ours: killed now, reaped
            // once the command has started.
            dying.extend(std::mem::take(&mut sentries).into_values().inspect(Sentry::kill));
            member.close_after_start(watch.take(), dying);
            return Ok(Acquired::Held(member));
        }
        if restart {
            continue;
        }
        dying.clear(); // reaped: we wait anyway
        if let Some(theirs) = &busy {
            req.report.waiting(theirs, Vec::new);
        }
        let paused = if kernel && can_watch && can_guard && !attempted {
            match &watch {
                None => {
                    // Watch first, then look again: no release can slip in between.
                    match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                        Ok(inotify) => watch = Some(inotify),
                        Err(_) => can_watch = false,
                    }
                    continue;
                }
                // Every busy slot guarded (its lock's going wakes us), then sleep.
                Some(watch) if guard(&mut sentries, &dir, &held) => pause(req, every, Some(watch.as_fd()))?,
                Some(_) => {
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
            Paused::Ready => {
                if let Some(watch) = &watch {
                    while watch.read_events().is_ok_and(|events| !events.is_empty()) {}
                }
            }
            Paused::Elapsed => {}
        }
    }
}

/// A child process that blocks on one busy slot's kernel locks (the process lock, then
/// the command lock, as the exclusive waiter takes them) through a read-only
/// descriptor of its own, and exits once it has had both: the slot's holder and its
/// command's tree are gone, or released it. Its exit wakes the waiter (SIGCHLD, read
/// from the signalfd that every wait polls), and comes after its descriptor is closed
/// and its locks are dropped (do_exit: exit_files and the deferred fput before
/// exit_notify), so the waiter's next look cannot find the sentry in the way. Dropped:
/// killed and reaped.
pub(super) struct Sentry {
    pid: Pid,
    /// The slot's file that it waits on (device, inode).
    id: (u64, u64),
    reaped: bool,
}

impl Sentry {
    /// A sentry on the file at `path`; `Ok(None)` if there is none any more (its
    /// removal is an IN_DELETE, which wakes the waiter).
    fn start(path: &Path) -> io::Result<Option<Sentry>> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let meta = file.metadata()?;
        let fd = file.as_raw_fd();
        let parent = nix::unistd::getpid().as_raw();
        let command_byte = command_byte(libc::F_RDLCK as i16);
        // SAFETY: fork(2). The child runs only `watch` (async-signal-safe system calls
        // on values made before the fork, then _exit), so that it is sound even if
        // another thread of ours held a lock of the allocator or of std at the fork.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            // SAFETY: in the child, just forked: `fd` is its copy of `file`.
            0 => unsafe { watch(fd, parent, &command_byte) },
            // Our copy is closed (`file` dropped): the child's is the only one, so its
            // locks go with it.
            pid => Ok(Some(Sentry {
                pid: Pid::from_raw(pid),
                id: (meta.dev(), meta.ino()),
                reaped: false,
            })),
        }
    }

    /// `Some(..)` once it has ended (reaped then): `true` if it had the locks (or was
    /// killed), `false` if a lock call failed (the waiter polls then).
    fn ended(&mut self) -> Option<bool> {
        let ended = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return None,
            Ok(WaitStatus::Exited(_, code)) => code == 0,
            Ok(WaitStatus::Signaled(..)) | Err(_) => true,
            Ok(_) => return None,
        };
        self.reaped = true;
        Some(ended)
    }

    /// Sends it SIGKILL, without waiting for it to die (dropping it waits).
    pub(super) fn kill(&self) {
        if !self.reaped {
            // Our own unreaped child: its PID cannot have been reused.
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}

impl Drop for Sentry {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            while let Err(nix::errno::Errno::EINTR) = waitpid(self.pid, None) {}
        }
    }
}

/// The sentry's whole life, in the child of a fork: no allocation, no std, only
/// async-signal-safe system calls. It dies with the waiter (PR_SET_PDEATHSIG), keeps
/// nothing of the waiter's but `fd` (the gate's locks must not outlive the waiter in
/// it), and exits 0 once it has had both locks, 1 if a lock call failed.
///
/// # Safety
///
/// Only in the child of a fork, with `fd` open there.
unsafe fn watch(fd: libc::c_int, parent: libc::pid_t, command_byte: &libc::flock) -> ! {
    // SAFETY: plain system calls on our own descriptors, and _exit (never returns);
    // `command_byte` is a valid struct flock for F_OFD_SETLKW.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1); // the waiter is gone already
        }
        if fd > 0 {
            libc::syscall(libc::SYS_close_range, 0, fd - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0);
        let interrupted = || *libc::__errno_location() == libc::EINTR;
        while libc::flock(fd, libc::LOCK_EX) != 0 {
            if !interrupted() {
                libc::_exit(1);
            }
        }
        while libc::fcntl(fd, libc::F_OFD_SETLKW, command_byte) != 0 {
            if !interrupted() {
                libc::_exit(1);
            }
        }
        libc::_exit(0)
    }
}

/// Makes sure that each slot in `held` has a live sentry on the file now at its
/// name, before the waiter sleeps; ends the others. `false` if one cannot be had (no
/// process to be had, or a sentry's lock call failed): the waiter polls then.
fn guard(sentries: &mut BTreeMap<u32, Sentry>, dir: &Path, held: &[u32]) -> bool {
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
        return false;
    }
    for &k in held {
        let path = dir.join(slot_name(k));
        let now = std::fs::symlink_metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        if sentries.get(&k).is_some_and(|sentry| Some(sentry.id) == now) {
            continue;
        }
        sentries.remove(&k);
        match Sentry::start(&path) {
            Ok(Some(sentry)) => {
                sentries.insert(k, sentry);
            }
            Ok(None) => {}
            Err(_) => return false,
        }
    }
    true
}
