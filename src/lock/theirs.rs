//! Their file: what is at LOCK (or at a side name), opened and validated without
//! trusting it, and the evidence table's judgement of its holder (SPEC §4.1, §4.3
//! step 3, §6).
//!
//! Opening never follows a symbolic link, blocks on a FIFO or touches a device; a file
//! that is not a valid record is *foreign* and left untouched.

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use nix::libc;

use super::kernel::flock_holder;
use super::path::{id_of, is_at, FileId, LockPath};
use super::{Processes, Request};
use crate::error::cannot;
use crate::liveness::{self, Facts, Identity, Locking, Verdict};
use crate::record::{self, NotARecord, Record};

/// What is at LOCK.
// Short-lived, on the stack: boxing the record would cost an allocation per look.
#[allow(clippy::large_enum_variant)]
pub(super) enum Found {
    Record(TheirFile),
    Vanished,
    Foreign(String),
}

/// Who holds LOCK now, compared with a file that was there.
pub(super) enum Successor {
    /// The same file (or it cannot be told).
    Same,
    /// Another holder's file.
    Other(Box<TheirFile>),
    /// Nobody: LOCK is free at this moment.
    Nobody,
}

/// Another holder's lock file, open for reading.
pub(super) struct TheirFile {
    pub(super) file: File,
    pub(super) file_id: FileId,
    pub(super) record: Record,
    /// Its xlock has ended and its command's tree holds the command lock.
    pub(super) tree_holds: Cell<bool>,
    /// The processes of that tree, once found (for the messages).
    pub(super) command: RefCell<Option<Processes>>,
}

impl TheirFile {
    /// The processes of its command that hold the lock after its xlock has ended:
    /// found (a /proc scan) the first time a message names them, not before, so a
    /// take-over never waits for the scan.
    pub(super) fn command_processes(&self) -> Processes {
        if self.tree_holds.get() && self.command.borrow().is_none() {
            *self.command.borrow_mut() = Some(liveness::processes_writing(self.file_id));
        }
        self.command.borrow().clone().unwrap_or_default()
    }

    /// Shows (or keeps current) the waiting notice for this holder.
    pub(super) fn report_waiting(&self, req: &Request<'_>) {
        req.report.waiting(&self.record, || self.command_processes());
    }

    /// Keeps the waiting notice current while blocked on this file: it names whoever
    /// holds LOCK now, as this file may have been released while we sleep queued on it
    /// (docs/design.md, "Hand-offs").
    pub(super) fn report_current(&self, req: &Request<'_>, lock: &Path) {
        if req.report.tick().is_none() {
            return; // no notice to keep current
        }
        match self.successor(lock) {
            Successor::Other(now) => now.report_waiting(req),
            Successor::Same | Successor::Nobody => self.report_waiting(req),
        }
    }

    /// Who holds LOCK now, as far as messages are concerned (an error reading it
    /// counts as [`Successor::Same`]).
    pub(super) fn successor(&self, lock: &Path) -> Successor {
        if self.at(lock).unwrap_or(true) {
            return Successor::Same;
        }
        match open_record(lock) {
            Ok(Found::Record(now)) => Successor::Other(Box::new(now)),
            Ok(Found::Vanished) => Successor::Nobody,
            Ok(Found::Foreign(_)) | Err(_) => Successor::Same,
        }
    }

    /// Whether we are queued on this file, released, behind a stopped process (SIGSTOP,
    /// Ctrl-Z, a debugger) that holds its process lock: a waiter keeps a released
    /// file's lock until it holds the lock itself, and a stopped one would hold up
    /// the waiters behind it (flock(1)'s kernel queue skips a stopped waiter).
    pub(super) fn behind_a_stopped_waiter(&self, lock: &Path) -> bool {
        if self.at(lock).unwrap_or(true) {
            return false;
        }
        flock_holder(self.file_id).is_some_and(|pid| matches!(liveness::proc_stat(pid), Ok(Some((_, 'T' | 't')))))
    }

    pub(super) fn same_file(&self, id: &FileId) -> bool {
        self.file_id == *id
    }

    /// Whether this file is still the one at LOCK.
    pub(super) fn at(&self, lock: &Path) -> io::Result<bool> {
        is_at(lock, self.file_id)
    }

    /// The evidence table on this holder of `lock`, whose kernel locks are free (or
    /// absent: [`Locking::RecordOnly`]).
    pub(super) fn judge(&self, lock: &LockPath, req: &Request<'_>, locking: Locking) -> Result<Verdict> {
        self.verdict(req.me, locking, req.stale_after).map_err(|err| {
            cannot(
                "check the holder of",
                format_args!("{} (pid {})", lock.shown(), self.record.pid),
                &err,
            )
        })
    }

    pub(super) fn verdict(&self, me: &Identity, locking: Locking, stale_after: Duration) -> io::Result<Verdict> {
        let modified = self.file.metadata()?.modified()?;
        let facts = Facts {
            me,
            locking,
            file_id: self.file_id,
            heartbeat_age: SystemTime::now().duration_since(modified).unwrap_or_default(),
            stale_after,
        };
        liveness::judge(&self.record, &facts)
    }
}

/// Opens and reads what is at `path` without following links, blocking on FIFOs or
/// touching devices.
pub(super) fn open_record(path: &Path) -> io::Result<Found> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Found::Vanished),
        Err(err) => return Err(err),
    };
    if let Some(kind) = not_a_file(&meta) {
        return Ok(Found::Foreign(format!("it is {kind}")));
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Found::Vanished),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Found::Foreign("it is a symbolic link".into()))
        }
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    if let Some(kind) = not_a_file(&meta) {
        return Ok(Found::Foreign(format!("it is {kind}")));
    }
    if meta.len() > record::MAX_LEN as u64 {
        return Ok(Found::Foreign(NotARecord::TooBig(meta.len()).to_string()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
    (&file).take(record::MAX_LEN as u64 + 1).read_to_end(&mut bytes)?;
    match Record::parse(&bytes) {
        Ok(record) => Ok(Found::Record(TheirFile {
            file,
            file_id: id_of(&meta),
            record,
            tree_holds: Cell::new(false),
            command: RefCell::default(),
        })),
        Err(why) => Ok(Found::Foreign(why.to_string())),
    }
}

fn not_a_file(meta: &fs::Metadata) -> Option<&'static str> {
    let kind = meta.file_type();
    if kind.is_file() {
        None
    } else if kind.is_symlink() {
        Some("a symbolic link")
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}
