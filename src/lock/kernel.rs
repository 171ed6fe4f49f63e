//! The two kernel locks on a lock file, and blocking on another holder's (SPEC §4.2,
//! §4.3 steps 3–4).
//!
//! - the *process lock*: flock(2) on a close-on-exec descriptor, held by xlock alone;
//! - the *command lock*: an open-file-description lock (F_OFD_SETLK) on byte
//!   [`COMMAND_BYTE`], on a descriptor the command inherits, so the command's process
//!   tree keeps it while any of it has the descriptor, even after xlock is gone
//!   (SPEC §4.5).
//!
//! A waiter blocks in the lock call itself, so the holder's release or death wakes it
//! directly (no polling); a signal, the deadline or the waiting notice's tick
//! interrupts the call.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use anyhow::Result;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;
use nix::sys::stat::{major, minor};

use super::path::{FileId, LockPath};
use super::theirs::TheirFile;
use super::Request;
use crate::error::{cannot, lock_error};
use crate::signals::Wake;

/// The byte that the command lock covers. The process lock is a flock(2), which on
/// local file systems never conflicts with byte-range locks; on NFS, which emulates
/// flock with byte-range locks, the separate byte keeps them apart.
const COMMAND_BYTE: i64 = 1;

/// A lock of `kind` (F_RDLCK or F_WRLCK) on the command byte, for fcntl(2).
pub(super) fn command_byte(kind: i16) -> libc::flock {
    libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as i16,
        l_start: COMMAND_BYTE,
        l_len: 1,
        l_pid: 0,
    }
}

/// Takes (or with `wait`, waits for) a lock of `kind` (F_RDLCK or F_WRLCK) on the
/// command byte. `Ok(false)`: held by someone else.
pub(super) fn set_command_lock(fd: BorrowedFd<'_>, kind: i16, wait: bool) -> io::Result<bool> {
    let lock = command_byte(kind);
    let arg = if wait {
        FcntlArg::F_OFD_SETLKW(&lock)
    } else {
        FcntlArg::F_OFD_SETLK(&lock)
    };
    match fcntl(fd, arg) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Whether someone holds the command lock on this file (asked, not taken).
pub(super) fn command_lock_held(file: &File) -> io::Result<bool> {
    let mut query = command_byte(libc::F_RDLCK as i16);
    fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut query))?;
    Ok(query.l_type != libc::F_UNLCK as i16)
}

#[derive(Debug, Clone, Copy)]
pub(super) enum KernelLock {
    Process,
    Command,
}

impl KernelLock {
    /// Takes the lock on another holder's file. `Ok(false)`: it is held.
    pub(super) fn take(self, file: &File, wait: bool) -> io::Result<bool> {
        match self {
            KernelLock::Process if wait => file.lock().map(|()| true),
            KernelLock::Process => match file.try_lock() {
                Ok(()) => Ok(true),
                Err(fs::TryLockError::WouldBlock) => Ok(false),
                Err(fs::TryLockError::Error(err)) => Err(err),
            },
            // A read lock suffices to wait for the command's write lock; exclusion
            // among waiters comes from the process lock, which we hold by now.
            KernelLock::Command => set_command_lock(file.as_fd(), libc::F_RDLCK as i16, wait),
        }
    }
}

/// How a wait ended. `Got(true)`: had to wait.
pub(super) enum Waited {
    Got(bool),
    TimedOut,
    Interrupted(i32),
    /// Queued on a released file behind a stopped waiter that holds its process lock:
    /// wait on the file at LOCK instead.
    Stuck,
}

/// How often a waiter blocked on a file's process lock checks whether it is queued
/// on a released file behind a stopped waiter (docs/design.md, "Hand-offs").
const QUEUE_CHECK: Duration = Duration::from_secs(1);

/// The process that holds the flock on the file `id`, as /proc/locks shows it (a
/// PID of our namespace); `None` if nobody does, or it cannot be told.
pub(super) fn flock_holder(id: FileId) -> Option<i32> {
    let (dev, ino) = id;
    let file = format!("{:02x}:{:02x}:{ino}", major(dev), minor(dev));
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks
        .lines()
        .find_map(|line| {
            // "3: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"; a blocked request has
            // "->" before FLOCK.
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&file.as_str()))
                .then(|| fields[4].parse().ok())
                .flatten()
        })
        .filter(|&pid| pid > 0)
}

/// Takes `kind` on `theirs`, waiting until the deadline if it is held; a signal that
/// ends waits ends this one.
pub(super) fn wait_for(kind: KernelLock, theirs: &TheirFile, lock: &LockPath, req: &Request<'_>) -> Result<Waited> {
    if kind
        .take(&theirs.file, false)
        .map_err(|err| lock_error(lock.shown(), &err))?
    {
        return Ok(Waited::Got(false));
    }
    if let KernelLock::Command = kind {
        theirs.tree_holds.set(true); // its xlock has ended; the messages name the tree
    }
    if req.deadline.passed() {
        return Ok(Waited::TimedOut);
    }
    theirs.report_waiting(req);
    let outcome = block_on(kind, theirs, lock, req);
    req.report.done_waiting();
    outcome
}

/// The blocking part of [`wait_for`], keeping the waiting notice current. The lock
/// call blocks this thread itself, so the holder's release wakes it directly; a
/// signal, the deadline or the notice's tick interrupts it.
fn block_on(kind: KernelLock, theirs: &TheirFile, lock: &LockPath, req: &Request<'_>) -> Result<Waited> {
    // Waiting for a process lock, check now and then that we are not queued behind
    // a stopped waiter.
    let tick = match kind {
        KernelLock::Process => [req.report.tick(), Some(QUEUE_CHECK)].into_iter().flatten().min(),
        KernelLock::Command => req.report.tick(),
    };
    let interrupter = req
        .signals
        .interrupter(req.deadline.end(), tick)
        .map_err(|err| cannot("wait for", lock.shown(), &err))?;
    loop {
        match interrupter.take() {
            Some(Wake::Tick) if matches!(kind, KernelLock::Process) && theirs.behind_a_stopped_waiter(&lock.path) => {
                return Ok(Waited::Stuck)
            }
            Some(Wake::Tick) => theirs.report_current(req, &lock.path),
            Some(Wake::Deadline) => return Ok(Waited::TimedOut),
            Some(Wake::Signal(signal)) => return Ok(Waited::Interrupted(signal)),
            None => {}
        }
        match interrupter.run(|| kind.take(&theirs.file, true)) {
            // A signal caught as the lock came still ends the wait: it was not queued
            // for the signalfd, so this is the one chance to honour it.
            Ok(_) => {
                return Ok(match interrupter.take() {
                    Some(Wake::Signal(signal)) => Waited::Interrupted(signal),
                    _ => Waited::Got(true),
                })
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(lock_error(lock.shown(), &err)),
        }
    }
}
