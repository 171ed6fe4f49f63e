//! Our lock file before it is at LOCK (SPEC §4.3 steps 1, 2, 4, 5): created private in
//! LOCK's directory with its record and both kernel locks, linked to LOCK, renamed over
//! a stale holder's file, and verified once in place, when it becomes a [`Held`] lock.
//!
//! The file is unnamed (O_TMPFILE) where the file system allows, else it has a temp
//! name, removed on every way out of `acquire` ([`TempName`]'s drop).

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use nix::libc;

use super::held::Held;
use super::kernel::set_command_lock;
use super::path::{fd_path, id_of, is_at, link_fd, FileId, LockPath};
use super::{env_is_1, Inherit, NAMED_TEMP_ENV, NO_KERNEL_LOCKS_ENV};
use crate::error::{cannot, create_error, locks_unsupported};
use crate::liveness::Locking;
use crate::record::Record;

/// Which kind of file a candidate starts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TempFile {
    /// O_TMPFILE where the file system has it (else a named one).
    Unnamed,
    /// Always a named temp file ([`NAMED_TEMP_ENV`]`=1`, for tests of that path).
    Named,
}

impl TempFile {
    pub(super) fn from_env() -> TempFile {
        if env_is_1(NAMED_TEMP_ENV) {
            TempFile::Named
        } else {
            TempFile::Unnamed
        }
    }
}

impl Locking {
    /// [`Locking::Kernel`] unless [`NO_KERNEL_LOCKS_ENV`]`=1`; the file system may
    /// still turn it into [`Locking::RecordOnly`].
    pub(super) fn from_env() -> Locking {
        if env_is_1(NO_KERNEL_LOCKS_ENV) {
            Locking::RecordOnly
        } else {
            Locking::Kernel
        }
    }
}

/// Our lock file before it is at LOCK.
pub(super) struct Candidate {
    pub(super) file: File,
    /// Carries the command lock (or, without kernel locks, just marks the command's
    /// tree as the file's writers).
    command_lock: Option<File>,
    pub(super) file_id: FileId,
    pub(super) nonce: String,
    /// A name in LOCK's directory, while the file has one.
    pub(super) temp: TempName,
    /// Whether the file system has kernel locks (and they are not switched off).
    pub(super) locking: Locking,
}

/// The temp file's name, removed when dropped (on every way out of `acquire`).
pub(super) struct TempName(pub(super) Option<PathBuf>);

impl TempName {
    pub(super) fn as_ref(&self) -> Option<&PathBuf> {
        self.0.as_ref()
    }

    fn remove(&mut self) {
        if let Some(temp) = self.0.take() {
            let _ = fs::remove_file(temp);
        }
    }

    /// The name is no longer ours (renamed into place, or swept): never remove it.
    fn forget(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempName {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Candidate {
    /// Step 1: a private file in LOCK's directory, with its record and both locks.
    pub(super) fn create(lock: &LockPath, record: &Record, inherit: Inherit, temp: TempFile) -> Result<Candidate> {
        let mut ours = Self::create_locked(lock, &record.nonce, temp, Locking::from_env())?;
        if inherit == Inherit::CommandLock {
            // A second open file description: its lock is independent of the flock.
            let second = OpenOptions::new()
                .read(true)
                .write(true)
                .open(fd_path(&ours.file))
                .map_err(|err| create_error(lock.shown(), &lock.dir, err))?;
            let taken = ours.locking == Locking::RecordOnly
                || match set_command_lock(second.as_fd(), libc::F_WRLCK as i16, false) {
                    Err(err) if locks_unsupported(&err) => {
                        ours.locking = Locking::RecordOnly;
                        let _ = ours.file.unlock();
                        true
                    }
                    taken => taken.map_err(|err| create_error(lock.shown(), &lock.dir, err))?,
                };
            if !taken {
                bail!(
                    "cannot take the command lock on {}: the file system's locks conflict with each other \
                     (NFS emulates flock with byte-range locks); use --close, or a LOCK path on a local disk",
                    lock.shown()
                );
            }
            ours.command_lock = Some(second);
        }
        ours.file
            .write_all(&record.to_line())
            .map_err(|err| create_error(lock.shown(), &lock.dir, err))?;
        Ok(ours)
    }

    /// The file, with its process lock taken. A named temp file can be swept by another
    /// xlock in the moment between its creation and our flock; once we hold the flock
    /// it is safe, so check the name is still ours, and start again if it is not.
    fn create_locked(lock: &LockPath, nonce: &str, temp: TempFile, locking: Locking) -> Result<Candidate> {
        for _ in 0..100 {
            let (file, name) =
                Self::open(lock, nonce, temp).map_err(|err| create_error(lock.shown(), &lock.dir, err))?;
            let file_id = id_of(&file.metadata()?);
            let mut ours = Candidate {
                file,
                command_lock: None,
                file_id,
                nonce: nonce.to_owned(),
                temp: TempName(name),
                locking,
            };
            if locking == Locking::Kernel {
                match ours.file.lock() {
                    Ok(()) => {}
                    Err(err) if locks_unsupported(&err) => ours.locking = Locking::RecordOnly,
                    Err(err) => return Err(create_error(lock.shown(), &lock.dir, err)),
                }
            }
            // Without kernel locks, sweepers judge a temp file by its record instead.
            if ours.locking == Locking::RecordOnly || ours.temp_name_is_ours() {
                return Ok(ours);
            }
            // Swept: the name is gone (or another's), so dropping must not remove it.
            let mut swept = ours;
            swept.temp.forget();
        }
        bail!(
            "temporary files in {} keep disappearing; is something cleaning that directory?",
            crate::escape::path(&lock.dir)
        )
    }

    /// Whether our temp name (if any) still names our file.
    fn temp_name_is_ours(&self) -> bool {
        self.temp
            .as_ref()
            .is_none_or(|temp| is_at(temp, self.file_id).unwrap_or(false))
    }

    /// An unnamed O_TMPFILE where the file system has them, else a named temp file.
    fn open(lock: &LockPath, nonce: &str, temp: TempFile) -> io::Result<(File, Option<PathBuf>)> {
        if temp == TempFile::Unnamed {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o644)
                .custom_flags(libc::O_TMPFILE)
                .open(&lock.dir)
            {
                Ok(file) => return Ok((file, None)),
                Err(err) if matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {}
                Err(err) => return Err(err),
            }
        }
        let name = lock.temp_name(nonce);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&name)?;
        Ok((file, Some(name)))
    }

    /// Writes a newer record. The file is private until linked, so this is safe.
    pub(super) fn rewrite(&mut self, lock: &LockPath, record: &Record) -> Result<()> {
        use std::os::unix::fs::FileExt;
        // Overwrite, then cut: a reader (a sweeper, once the file has a temp name) sees
        // a whole record, the old one or the new one, never an empty file.
        let line = record.to_line();
        self.file
            .write_all_at(&line, 0)
            .and_then(|()| self.file.set_len(line.len() as u64))
            .map_err(|err| create_error(lock.shown(), &lock.dir, err))?;
        Ok(())
    }

    /// Step 2: link the file to LOCK. `Ok(false)`: LOCK exists.
    pub(super) fn link(&mut self, lock: &LockPath) -> Result<bool> {
        let linked = match self.temp.as_ref() {
            Some(temp) => {
                // Only something other than xlock can take the name while we hold the flock.
                if !self.temp_name_is_ours() {
                    bail!(
                        "the temporary file {} was removed under xlock; is something cleaning {}?",
                        crate::escape::path(temp),
                        crate::escape::path(&lock.dir)
                    );
                }
                fs::hard_link(temp, &lock.path)
            }
            None => link_fd(&self.file, &lock.path),
        };
        match linked {
            Ok(()) => {
                self.temp.remove();
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(create_error(lock.shown(), &lock.dir, err)),
        }
    }

    /// Step 4: replace a stale lock file with ours. We hold the old file's locks, so no
    /// other waiter can be doing the same.
    pub(super) fn take_over(&mut self, lock: &LockPath) -> Result<()> {
        let temp = match self.temp.as_ref() {
            Some(temp) => temp.clone(),
            None => {
                let temp = lock.temp_name(&self.nonce);
                link_fd(&self.file, &temp).map_err(|err| create_error(lock.shown(), &lock.dir, err))?;
                self.temp.0 = Some(temp.clone());
                temp
            }
        };
        fs::rename(&temp, &lock.path).map_err(|err| lock.replace_error(err))?;
        self.temp.forget();
        Ok(())
    }

    /// Step 5: LOCK is our inode with our nonce. The held lock beats every
    /// `stale_after / 3` from now.
    pub(super) fn into_held(mut self, lock: &LockPath, stale_after: Duration) -> Result<Held> {
        self.temp.remove();
        let held = Held {
            lock: lock.clone(),
            file: self.file,
            command_lock: self.command_lock,
            file_id: self.file_id,
            nonce: self.nonce,
            lost: Cell::new(false),
            beat_every: stale_after / 3,
            last_beat: Cell::new(std::time::Instant::now()),
            locking: self.locking,
            tidy: std::cell::RefCell::new(None),
        };
        let ours = match held.is_ours() {
            Ok(ours) => ours,
            Err(err) => {
                // It was linked, so do not leave it behind: remove it if it is our inode.
                if held.at_lock().unwrap_or(false) {
                    let _ = fs::remove_file(&lock.path);
                }
                return Err(cannot("verify the lock file", lock.shown(), &err));
            }
        };
        if !ours {
            bail!(
                "the lock file {} was replaced right after xlock created it; another program is writing there. Use a LOCK path that only xlock uses",
                lock.shown()
            );
        }
        Ok(held)
    }
}
