//! The held lock (SPEC §4.4, §4.5): what the command inherits, the heartbeat that
//! re-verifies the lock and keeps its mtime fresh for other hosts, loss, and release.
//!
//! The heartbeat is the file lock's [`Guard`]: supervision calls it every
//! `--stale-after`/3 while the command runs. A lock found lost (its file removed or
//! replaced) is said so, and from then on release leaves LOCK alone.
//!
//! Release (SPEC §4.5): once the command has ended, xlock closes its own copy of the
//! command lock's descriptor (the open file description and its OFD lock live on in
//! the copies the command's tree inherited) and asks, with F_OFD_GETLK through its
//! other descriptor, whether the lock is still held. Free: nobody has that open file
//! description any more, and nobody can get it again (it is only ever inherited), so
//! the answer cannot go stale: unlink. Held: leave the lock to the tree.

use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use super::drain::Drained;
use super::kernel::command_lock_held;
use super::path::{is_at, FileId, LockPath};
use super::{Holding, Processes, Released};
use crate::error::{cannot, lost_at_release, lost_while_running};
use crate::liveness::{self, Locking};
use crate::record;
use crate::supervise::{Guard, Health};
use crate::tree;

/// A file lock held by this process.
#[derive(Debug)]
pub struct Held {
    pub(super) lock: LockPath,
    /// Carries the process lock; close-on-exec.
    pub(super) file: File,
    /// Carries the command lock; close-on-exec in xlock, inherited by the command.
    pub(super) command_lock: Option<File>,
    pub(super) file_id: FileId,
    pub(super) nonce: String,
    /// Found removed or replaced by a heartbeat (and already said so).
    pub(super) lost: Cell<bool>,
    /// `--stale-after`/3: how often the heartbeat runs.
    pub(super) beat_every: Duration,
    /// When the last heartbeat ran (or the lock was acquired).
    pub(super) last_beat: Cell<Instant>,
    /// Kernel locks, or (without) the record and /proc: how release finds out whether
    /// the command's tree still holds the lock.
    pub(super) locking: Locking,
    /// What a writer's drain (SPEC §9) leaves to do once the command has started.
    pub(super) tidy: RefCell<Option<Drained>>,
}

impl Held {
    /// The heartbeat (SPEC §4.4): verifies that LOCK is still ours and bumps its mtime,
    /// which other hosts read. `Ok(false)`: the lock is lost; from then on, release
    /// leaves LOCK alone.
    fn heartbeat(&self) -> io::Result<bool> {
        if self.lost.get() {
            return Ok(false);
        }
        if !self.is_ours()? {
            self.lost.set(true);
            return Ok(false);
        }
        self.file.set_modified(SystemTime::now())?;
        Ok(true)
    }

    /// Whether LOCK is still this holder's file with its nonce: LOCK is our inode, and
    /// the record in that inode, read through our own descriptor (no open of the path:
    /// this runs on the hand-off's path, at release), carries our nonce.
    pub(super) fn is_ours(&self) -> io::Result<bool> {
        use std::os::unix::fs::FileExt;
        if !self.at_lock()? {
            return Ok(false);
        }
        let mut bytes = [0u8; record::MAX_LEN + 1];
        let len = self.file.read_at(&mut bytes, 0)?;
        Ok(record::carries_nonce(&bytes[..len], &self.nonce))
    }

    /// Whether LOCK is our inode.
    pub(super) fn at_lock(&self) -> io::Result<bool> {
        is_at(&self.lock.path, self.file_id)
    }

    /// Whether processes of the command's tree still have the command lock's
    /// descriptor (ours is closed by now), and which (if `name_them`). With kernel
    /// locks: one F_OFD_GETLK through our other open file description. Without: the
    /// processes of the tree (xlock's descendants, `tree`) that have the file open for
    /// writing, as only the tree does; no /proc scan at all if none of it survives.
    fn command_keeps_it(&self, name_them: bool) -> io::Result<Option<Processes>> {
        let writers = || liveness::processes_writing_among(self.file_id, tree::members());
        match self.locking {
            Locking::Kernel => {
                Ok(command_lock_held(&self.file)?.then(|| if name_them { writers() } else { Vec::new() }))
            }
            Locking::RecordOnly if !tree::survivors() => Ok(None),
            Locking::RecordOnly => Ok(Some(writers()).filter(|writers| !writers.is_empty())),
        }
    }

    /// Finishes what the drain left (`Drained`), once the command has started or
    /// at the latest at release.
    pub(super) fn tidy(&self) {
        if let Some(drained) = self.tidy.borrow_mut().take() {
            drained.finish();
        }
    }
}

impl Guard for Held {
    fn next_check(&self) -> Option<Instant> {
        // Asked first right after the spawn: the command has started.
        self.tidy();
        if self.lost.get() {
            return None;
        }
        self.last_beat.get().checked_add(self.beat_every)
    }

    fn check(&self) -> Health {
        self.last_beat.set(Instant::now());
        // An error reading LOCK is not evidence of loss: try again next beat.
        match self.heartbeat() {
            Ok(false) => Health::Lost {
                message: lost_while_running(self.lock.shown()),
                kill_by: None,
            },
            Ok(true) | Err(_) => Health::Held,
        }
    }
}

impl Holding for Held {
    fn identity(&self) -> (&Path, &str) {
        (&self.lock.path, &self.nonce)
    }

    fn env(&self) -> Option<(&'static str, OsString)> {
        None
    }

    fn inherit(&self) -> Option<BorrowedFd<'_>> {
        self.command_lock.as_ref().map(AsFd::as_fd)
    }

    /// Releases the lock (SPEC §4.5): verify it is ours; then, if no process of the
    /// command's tree still has the command lock's descriptor, unlink it and close; if
    /// one has, leave the lock to them. A lock that is no longer ours is left alone,
    /// and that is an error.
    fn release(self, name_them: bool) -> Result<Released> {
        self.release_keeping(name_them).map(|(released, _)| released)
    }
}

impl Held {
    /// [`Holding::release`], but the removed file is handed back rather than closed
    /// (`None` if it was not removed): its last close evicts the inode (0.1 ms and
    /// more on ext4), and wakes the waiters queued on its kernel locks, who then find
    /// LOCK gone. A gate passer closes it once its command has started.
    pub(super) fn release_keeping(mut self, name_them: bool) -> Result<(Released, Option<File>)> {
        // Before LOCK goes (the command may not have started at all).
        self.tidy();
        if self.lost.get() {
            return Ok((Released::WasLost, None)); // said when it was found lost
        }
        let ours = self.is_ours().map_err(|err| {
            cannot(
                "verify the lock file",
                format_args!("{} before releasing it", self.lock.shown()),
                &err,
            )
        })?;
        if !ours {
            return Err(lost_at_release(self.lock.shown()));
        }
        if let Some(ours) = self.command_lock.take() {
            // Our copy goes; the command's copies keep the lock while any is open.
            drop(ours);
            let kept = self.command_keeps_it(name_them).map_err(|err| {
                cannot(
                    "tell whether processes of the command still hold",
                    format_args!("{} (so it is left to them)", self.lock.shown()),
                    &err,
                )
            })?;
            if let Some(processes) = kept {
                return Ok((Released::LeftToCommand(processes), None));
            }
        }
        fs::remove_file(&self.lock.path)
            .with_context(|| format!("cannot remove the lock file {}", self.lock.shown()))?;
        Ok((Released::Removed, Some(self.file)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::Identity;
    use crate::lock::candidate::{Candidate, TempFile};
    use crate::lock::Inherit;
    use crate::record::Record;

    /// A lock on `dir/name.lock`, held by this process.
    fn hold(dir: &Path, stale_after: Duration) -> Held {
        let lock = LockPath::new(&dir.join("name.lock")).unwrap();
        let me = Identity::current().unwrap();
        let record = Record {
            xlock: Record::version(),
            pid: me.pid,
            start: me.start,
            pidns: me.pidns,
            boot: me.boot,
            host: me.host,
            nonce: "0123456789abcdef0123456789abcdef".into(),
            since: String::new(),
            cmd: "test".into(),
            mode: None,
            slots: None,
            slot: None,
        };
        let mut ours = Candidate::create(&lock, &record, Inherit::CommandLock, TempFile::Unnamed).unwrap();
        assert!(ours.link(&lock).unwrap(), "LOCK was free");
        ours.into_held(&lock, stale_after).unwrap()
    }

    #[test]
    fn the_guard_beats_every_third_of_stale_after_and_bumps_the_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let held = hold(dir.path(), Duration::from_secs(30));
        let first = held.next_check().expect("a held lock wants checks");
        assert_eq!(first - held.last_beat.get(), Duration::from_secs(10));
        let old = SystemTime::now() - Duration::from_secs(3600);
        held.file.set_modified(old).unwrap();
        assert!(matches!(held.check(), Health::Held));
        let mtime = fs::metadata(dir.path().join("name.lock")).unwrap().modified().unwrap();
        assert!(
            mtime > old + Duration::from_secs(3000),
            "the heartbeat did not bump the mtime"
        );
        assert!(held.next_check().unwrap() > first, "the next check did not move on");
        assert!(held.inherit().is_some(), "the command lock is not inherited");
        assert_eq!(held.release(false).unwrap(), Released::Removed);
        assert!(!dir.path().join("name.lock").exists(), "release left LOCK behind");
    }

    #[test]
    fn a_lock_whose_command_lock_is_still_held_is_left_to_its_holders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("name.lock");
        let held = hold(dir.path(), Duration::from_secs(30));
        // What the command's tree would have: a copy of the command lock's descriptor.
        let tree = held.command_lock.as_ref().unwrap().try_clone().unwrap();
        assert_eq!(held.release(false).unwrap(), Released::LeftToCommand(Vec::new()));
        assert!(path.exists(), "the lock was removed while the tree held it");
        let file = fs::File::open(&path).unwrap();
        assert!(command_lock_held(&file).unwrap(), "the tree lost the command lock");
        drop(tree);
        assert!(!command_lock_held(&file).unwrap(), "the lock outlived the tree");
    }

    #[test]
    fn a_replaced_lock_is_lost_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("name.lock");
        let held = hold(dir.path(), Duration::from_secs(30));
        fs::remove_file(&path).unwrap();
        fs::write(&path, "someone else's\n").unwrap();
        match held.check() {
            Health::Lost { message, kill_by } => {
                assert!(message.contains("name.lock"), "{message}");
                assert_eq!(kill_by, None);
            }
            Health::Held => panic!("a replaced lock counts as held"),
        }
        assert_eq!(held.next_check(), None, "a lost lock is checked again");
        assert_eq!(held.release(false).unwrap(), Released::WasLost);
        assert_eq!(fs::read_to_string(&path).unwrap(), "someone else's\n");
    }
}
