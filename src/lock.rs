//! The lock protocol (SPEC §4.2–4.5): acquire, verify and release the lock file.
//!
//! The lock is the file at LOCK; it exists exactly while someone holds the lock. A
//! would-be holder prepares a private file carrying its record and both kernel locks,
//! then `link()`s it to LOCK. A waiter blocks on the holder's kernel locks, so it wakes
//! the moment the holder releases or dies (no polling). A dead holder's file is
//! replaced with `rename()` by the one waiter that holds its locks.
//!
//! Kernel locks on a lock file:
//! - the *process lock*: flock(2) on a close-on-exec descriptor, held by xlock alone;
//! - the *command lock*: an open-file-description lock (F_OFD_SETLK) on byte
//!   [`COMMAND_BYTE`], on a descriptor the command inherits, so the command's process
//!   tree keeps it while it runs, even after xlock is gone.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, AtFlags, FcntlArg, AT_FDCWD};
use nix::libc;

use crate::liveness::{self, Holder, Identity};
use crate::record::{self, NotARecord, Record};
use crate::signals::{self, Event, Signals};
use crate::status::{io_reason, Reporter};

/// The byte that the command lock covers. The process lock is a flock(2), which on
/// local file systems never conflicts with byte-range locks.
const COMMAND_BYTE: i64 = 1;
/// Suffix of the temporary names in LOCK's directory.
const TEMP_SUFFIX: &str = ".xlock-tmp";
/// Forces named temp files instead of O_TMPFILE (for tests of that path).
pub const NAMED_TEMP_ENV: &str = "XLOCK_NAMED_TEMP";

/// LOCK, resolved once.
#[derive(Debug, Clone)]
pub struct LockPath {
    /// As the user gave it, for messages.
    pub given: PathBuf,
    /// Absolute.
    pub path: PathBuf,
    dir: PathBuf,
    name: OsString,
}

impl LockPath {
    pub fn new(given: &Path) -> Result<LockPath> {
        let path = if given.is_absolute() {
            given.to_path_buf()
        } else {
            std::env::current_dir()
                .context("cannot read the current directory")?
                .join(given)
        };
        let name = path.file_name().expect("checked by cli").to_os_string();
        let dir = path.parent().expect("checked by cli").to_path_buf();
        Ok(LockPath {
            given: given.to_path_buf(),
            path,
            dir,
            name,
        })
    }

    fn temp_name(&self, nonce: &str) -> PathBuf {
        let mut name = OsString::from(".");
        name.push(&self.name);
        name.push(format!(".{nonce}{TEMP_SUFFIX}"));
        self.dir.join(name)
    }

    /// Whether a directory entry is one of this lock's temporary names.
    fn is_temp_name(&self, entry: &[u8]) -> bool {
        let name = self.name.as_bytes();
        let Some(rest) = entry
            .strip_prefix(b".")
            .and_then(|r| r.strip_prefix(name))
            .and_then(|r| r.strip_prefix(b"."))
        else {
            return false;
        };
        let Some(nonce) = rest.strip_suffix(TEMP_SUFFIX.as_bytes()) else {
            return false;
        };
        nonce.len() == 32 && nonce.iter().all(u8::is_ascii_hexdigit)
    }

    fn shown(&self) -> String {
        self.given.display().to_string()
    }
}

/// When waiting ends.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    pub fn after(wait: crate::cli::Wait) -> Deadline {
        match wait {
            crate::cli::Wait::Forever => Deadline(None),
            crate::cli::Wait::Upto(d) => Deadline(Some(Instant::now() + d)),
        }
    }

    fn remaining(self) -> Option<Duration> {
        self.0.map(|end| end.saturating_duration_since(Instant::now()))
    }

    fn passed(self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }
}

/// What `acquire` came to.
pub enum Acquired {
    Held(Held),
    /// The deadline passed; the holder's record, if one was read.
    Busy(Option<Record>),
    /// A signal ended the wait; nothing was left behind.
    Interrupted(i32),
}

/// How to acquire.
pub struct Request<'a> {
    pub lock: &'a LockPath,
    pub deadline: Deadline,
    /// Give the command a command lock (not with `--close`).
    pub command_lock: bool,
    pub me: &'a Identity,
    pub signals: &'a Signals,
    pub report: &'a Reporter,
}

/// Acquires the lock (SPEC §4.3).
pub fn acquire(req: &Request<'_>, mut record: Record) -> Result<Acquired> {
    let started = Instant::now();
    let named = std::env::var_os(NAMED_TEMP_ENV).is_some_and(|v| v == "1");
    record.since = now();
    let mut ours = Candidate::create(req.lock, &record, req.command_lock, named)?;
    let mut waited = false;
    loop {
        if waited {
            record.since = now();
            ours.rewrite(&record)?;
        }
        if ours.link(req.lock)? {
            break;
        }
        let theirs = match open_record(&req.lock.path).map_err(|err| read_error(req.lock, err))? {
            Found::Record(holder) => holder,
            Found::Vanished => continue,
            Found::Foreign(why) => return Err(foreign(req.lock, &why)),
        };
        if theirs.same_file(&ours.file_id) {
            break; // an ambiguous link() reply (NFS): it was ours all along
        }
        // Step 3: the holder's process lock.
        match wait_for(KernelLock::Process, &theirs, req)? {
            Waited::Got(w) => waited |= w,
            Waited::TimedOut => return Ok(Acquired::Busy(Some(theirs.record))),
            Waited::Interrupted(signal) => return Ok(Acquired::Interrupted(signal)),
        }
        // Step 4: still at LOCK means its xlock died; wait for its command's tree.
        if !theirs.at(&req.lock.path).map_err(|err| read_error(req.lock, err))? {
            continue;
        }
        match wait_for(KernelLock::Command, &theirs, req)? {
            Waited::Got(w) => waited |= w,
            Waited::TimedOut => return Ok(Acquired::Busy(Some(theirs.record))),
            Waited::Interrupted(signal) => return Ok(Acquired::Interrupted(signal)),
        }
        match wait_for_holder_process(&theirs, req)? {
            Waited::Got(w) => waited |= w,
            Waited::TimedOut => return Ok(Acquired::Busy(Some(theirs.record))),
            Waited::Interrupted(signal) => return Ok(Acquired::Interrupted(signal)),
        }
        if !theirs.at(&req.lock.path).map_err(|err| read_error(req.lock, err))? {
            continue; // released after all (locks not effective here)
        }
        ours.take_over(req.lock)?;
        req.report.took_over(&theirs.record);
        drop(theirs);
        sweep(req.lock);
        break;
    }
    // Step 5: verify.
    let held = ours.into_held(req.lock)?;
    if named {
        sweep(req.lock);
    }
    req.report.acquired(waited.then(|| started.elapsed()));
    Ok(Acquired::Held(held))
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A lock held by this process.
#[derive(Debug)]
pub struct Held {
    lock: LockPath,
    /// Carries the process lock; close-on-exec.
    file: File,
    /// Carries the command lock; close-on-exec in xlock, inherited by the command.
    command_lock: Option<File>,
    file_id: (u64, u64),
    nonce: String,
}

impl Held {
    /// The descriptor the command must inherit, if any.
    pub fn command_fd(&self) -> Option<RawFd> {
        self.command_lock.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether LOCK is still this holder's file with its nonce.
    pub fn is_ours(&self) -> io::Result<bool> {
        Ok(match open_record(&self.lock.path)? {
            Found::Record(found) => found.same_file(&self.file_id) && found.record.nonce == self.nonce,
            Found::Vanished | Found::Foreign(_) => false,
        })
    }

    /// Whether LOCK is our inode (no descriptor needed: for when `is_ours` fails).
    fn at_lock(&self) -> io::Result<bool> {
        is_at(&self.lock.path, self.file_id)
    }

    /// Releases the lock (SPEC §4.5): verify it is ours, unlink it, then close. A lock
    /// that is no longer ours is left alone, and that is an error.
    pub fn release(self) -> Result<()> {
        let shown = self.lock.shown();
        let ours = self.is_ours().map_err(|err| {
            anyhow!(
                "cannot verify the lock file {shown} before releasing it: {}",
                io_reason(&err)
            )
        })?;
        if !ours {
            bail!(
                "the lock file {shown} was removed or replaced while the lock was held, so another \
                 process may have run at the same time; left it as it is. Check what removes files there (a /tmp cleaner?)"
            );
        }
        fs::remove_file(&self.lock.path).with_context(|| format!("cannot remove the lock file {shown}"))?;
        drop(self.command_lock);
        drop(self.file);
        Ok(())
    }
}

/// What `--status` reports of a lock (SPEC §2).
#[derive(Debug)]
pub enum State {
    Free,
    /// Held: by a live xlock, or, if `orphans` is not empty, by the command tree of
    /// an xlock that died (these processes still have the file open).
    Held {
        record: Record,
        orphans: Vec<(i32, String)>,
    },
    /// The holder is gone; the next acquirer takes the lock over.
    Stale {
        record: Record,
    },
    /// Not a lock record; why.
    Foreign(String),
}

/// Inspects LOCK without changing it: it may hold the dead holder's flock for a moment
/// (there is no other way to ask), and only asks about the command lock.
pub fn inspect(lock: &LockPath, me: &Identity) -> Result<State> {
    if !lock.dir.is_dir() {
        bail!(
            "cannot inspect {}: the directory {} does not exist",
            lock.shown(),
            lock.dir.display()
        );
    }
    let theirs = match open_record(&lock.path).map_err(|err| read_error(lock, err))? {
        Found::Vanished => return Ok(State::Free),
        Found::Foreign(why) => return Ok(State::Foreign(why)),
        Found::Record(theirs) => theirs,
    };
    let lock_error = |err: io::Error| anyhow!("cannot inspect {}: {}", lock.shown(), io_reason(&err));
    if !KernelLock::Process.take(&theirs.file, false).map_err(lock_error)? {
        return Ok(State::Held {
            record: theirs.record,
            orphans: Vec::new(),
        });
    }
    if !theirs.at(&lock.path).map_err(lock_error)? {
        return Ok(State::Free); // released a moment ago
    }
    if command_lock_held(&theirs.file).map_err(lock_error)? {
        let orphans = processes_with_open(theirs.file_id);
        return Ok(State::Held {
            record: theirs.record,
            orphans,
        });
    }
    if liveness::holder_process(&theirs.record, me).map_err(lock_error)? == Holder::Running {
        return Ok(State::Held {
            record: theirs.record,
            orphans: Vec::new(),
        });
    }
    Ok(State::Stale { record: theirs.record })
}

/// Whether someone holds the command lock on this file (asked, not taken).
fn command_lock_held(file: &File) -> io::Result<bool> {
    let mut query = libc::flock {
        l_type: libc::F_RDLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: COMMAND_BYTE,
        l_len: 1,
        l_pid: 0,
    };
    fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut query))?;
    Ok(query.l_type != libc::F_UNLCK as i16)
}

/// The processes (PID, name) that have the file `id` open: OFD locks carry no PID, so
/// /proc/*/fd is the way to tell who keeps a dead holder's command lock.
fn processes_with_open(id: (u64, u64)) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else { return found };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| fs::metadata(fd.path()).is_ok_and(|m| id_of(&m) == id))
        {
            let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((pid, name.trim().to_owned()));
        }
    }
    found.sort();
    found
}

/// Our lock file before it is at LOCK.
struct Candidate {
    file: File,
    command_lock: Option<File>,
    file_id: (u64, u64),
    nonce: String,
    /// A name in LOCK's directory, while the file has one.
    temp: TempName,
}

/// The temp file's name, removed when dropped (on every way out of `acquire`).
struct TempName(Option<PathBuf>);

impl TempName {
    fn as_ref(&self) -> Option<&PathBuf> {
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
    fn create(lock: &LockPath, record: &Record, command_lock: bool, named: bool) -> Result<Candidate> {
        let mut ours = Self::create_locked(lock, &record.nonce, named)?;
        if command_lock {
            // A second open file description: its lock is independent of the flock.
            let second = OpenOptions::new()
                .read(true)
                .write(true)
                .open(fd_path(&ours.file))
                .map_err(|err| create_error(lock, err))?;
            let taken =
                set_command_lock(second.as_fd(), libc::F_WRLCK as i16, false).map_err(|err| create_error(lock, err))?;
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
            .map_err(|err| create_error(lock, err))?;
        Ok(ours)
    }

    /// The file, with its process lock taken. A named temp file can be swept by another
    /// xlock in the moment between its creation and our flock; once we hold the flock
    /// it is safe, so check the name is still ours, and start again if it is not.
    fn create_locked(lock: &LockPath, nonce: &str, named: bool) -> Result<Candidate> {
        for _ in 0..100 {
            let (file, temp) = Self::open(lock, nonce, named).map_err(|err| create_error(lock, err))?;
            let file_id = id_of(&file.metadata()?);
            let ours = Candidate {
                file,
                command_lock: None,
                file_id,
                nonce: nonce.to_owned(),
                temp: TempName(temp),
            };
            ours.file.lock().map_err(|err| create_error(lock, err))?;
            if ours.temp_name_is_ours() {
                return Ok(ours);
            }
            // Swept: the name is gone (or another's), so dropping must not remove it.
            let mut swept = ours;
            swept.temp.forget();
        }
        bail!(
            "temporary files in {} keep disappearing; is something cleaning that directory?",
            lock.dir.display()
        )
    }

    /// Whether our temp name (if any) still names our file.
    fn temp_name_is_ours(&self) -> bool {
        self.temp
            .as_ref()
            .is_none_or(|temp| is_at(temp, self.file_id).unwrap_or(false))
    }

    /// An unnamed O_TMPFILE where the file system has them, else a named temp file.
    fn open(lock: &LockPath, nonce: &str, named: bool) -> io::Result<(File, Option<PathBuf>)> {
        if !named {
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
        let temp = lock.temp_name(nonce);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        Ok((file, Some(temp)))
    }

    /// Writes a newer record. The file is private until linked, so this is safe.
    fn rewrite(&mut self, record: &Record) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let line = record.to_line();
        self.file.set_len(0)?;
        self.file
            .write_all_at(&line, 0)
            .context("cannot rewrite the lock record")?;
        Ok(())
    }

    /// Step 2: link the file to LOCK. `Ok(false)`: LOCK exists.
    fn link(&mut self, lock: &LockPath) -> Result<bool> {
        let linked = match self.temp.as_ref() {
            Some(temp) => {
                // Only something other than xlock can take the name while we hold the flock.
                if !self.temp_name_is_ours() {
                    bail!(
                        "the temporary file {} was removed under xlock; is something cleaning {}?",
                        temp.display(),
                        lock.dir.display()
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
            Err(err) => Err(create_error(lock, err)),
        }
    }

    /// Step 4: replace a stale lock file with ours. We hold the old file's locks, so no
    /// other waiter can be doing the same.
    fn take_over(&mut self, lock: &LockPath) -> Result<()> {
        let temp = match self.temp.as_ref() {
            Some(temp) => temp.clone(),
            None => {
                let temp = lock.temp_name(&self.nonce);
                link_fd(&self.file, &temp).map_err(|err| create_error(lock, err))?;
                self.temp.0 = Some(temp.clone());
                temp
            }
        };
        fs::rename(&temp, &lock.path).map_err(|err| create_error(lock, err))?;
        self.temp.forget();
        Ok(())
    }

    /// Step 5: LOCK is our inode with our nonce.
    fn into_held(mut self, lock: &LockPath) -> Result<Held> {
        self.temp.remove();
        let held = Held {
            lock: lock.clone(),
            file: self.file,
            command_lock: self.command_lock,
            file_id: self.file_id,
            nonce: self.nonce,
        };
        let ours = match held.is_ours() {
            Ok(ours) => ours,
            Err(err) => {
                // It was linked, so do not leave it behind: remove it if it is our inode.
                if held.at_lock().unwrap_or(false) {
                    let _ = fs::remove_file(&lock.path);
                }
                bail!("cannot verify the lock file {}: {}", lock.shown(), io_reason(&err));
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

/// What is at LOCK.
enum Found {
    Record(TheirFile),
    Vanished,
    Foreign(String),
}

/// Another holder's lock file, open for reading.
struct TheirFile {
    file: File,
    file_id: (u64, u64),
    record: Record,
}

impl TheirFile {
    fn same_file(&self, id: &(u64, u64)) -> bool {
        self.file_id == *id
    }

    /// Whether this file is still the one at LOCK.
    fn at(&self, lock: &Path) -> io::Result<bool> {
        is_at(lock, self.file_id)
    }
}

/// Opens and reads what is at LOCK without following links, blocking on FIFOs or
/// touching devices.
fn open_record(path: &Path) -> io::Result<Found> {
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

fn foreign(lock: &LockPath, why: &str) -> anyhow::Error {
    anyhow!(
        "{}: {why}, not an xlock lock file; xlock leaves it untouched. Use another LOCK path, \
         or remove it if it is a leftover of another tool",
        lock.shown()
    )
}

/// An error of creating our lock file, with what to do about it.
fn create_error(lock: &LockPath, err: io::Error) -> anyhow::Error {
    let dir = lock.dir.display();
    let reason = match err.raw_os_error() {
        Some(libc::ENOENT) => format!("the directory {dir} does not exist; create it first"),
        Some(libc::ENOTDIR) => format!("{dir} is not a directory; check the LOCK path"),
        Some(libc::EACCES | libc::EPERM) => {
            format!("no permission to create files in {dir}; use a LOCK path in a directory you can write")
        }
        Some(libc::EROFS) => format!("{dir} is on a read-only file system; put LOCK on a writable one"),
        Some(libc::ENOSPC | libc::EDQUOT) => format!("no room for the lock record in {dir}; free some space"),
        _ => io_reason(&err),
    };
    anyhow!("cannot create the lock file {}: {reason}", lock.shown())
}

/// An error of reading another holder's lock file, with what to do about it.
fn read_error(lock: &LockPath, err: io::Error) -> anyhow::Error {
    let reason = match err.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => "permission denied; every user of a lock must be able to read its \
             file: keep lock files readable (umask 022) or use a directory per user"
            .to_owned(),
        _ => io_reason(&err),
    };
    anyhow!("cannot read the lock file {}: {reason}", lock.shown())
}

/// Whether `path` (not followed if a link) names the file `id`; a missing path does not.
fn is_at(path: &Path, id: (u64, u64)) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(id_of(&meta) == id),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Links the (possibly unnamed) file behind `file` at `dest`.
fn link_fd(file: &File, dest: &Path) -> io::Result<()> {
    nix::unistd::linkat(AT_FDCWD, &fd_path(file), AT_FDCWD, dest, AtFlags::AT_SYMLINK_FOLLOW).map_err(io::Error::from)
}

fn id_of(meta: &fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// A path that opens the file behind `file` anew (a new open file description).
fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Takes (or with `wait`, waits for) a lock of `kind` (F_RDLCK or F_WRLCK) on the
/// command byte. `Ok(false)`: held by someone else.
fn set_command_lock(fd: BorrowedFd<'_>, kind: i16, wait: bool) -> io::Result<bool> {
    let lock = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as i16,
        l_start: COMMAND_BYTE,
        l_len: 1,
        l_pid: 0,
    };
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

#[derive(Debug, Clone, Copy)]
enum KernelLock {
    Process,
    Command,
}

impl KernelLock {
    /// Takes the lock on another holder's file. `Ok(false)`: it is held.
    fn take(self, file: &File, wait: bool) -> io::Result<bool> {
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
enum Waited {
    Got(bool),
    TimedOut,
    Interrupted(i32),
}

/// Takes `kind` on `file`, waiting until the deadline if it is held. The blocking
/// call runs on a helper thread, so the main thread can watch signals and the
/// deadline; a helper left behind by a timeout or signal ends with the process.
fn wait_for(kind: KernelLock, theirs: &TheirFile, req: &Request<'_>) -> Result<Waited> {
    if kind.take(&theirs.file, false).map_err(|err| lock_error(req, err))? {
        return Ok(Waited::Got(false));
    }
    if req.deadline.passed() {
        return Ok(Waited::TimedOut);
    }
    req.report.waiting(&theirs.record);
    let outcome = block_on(kind, theirs, req);
    req.report.done_waiting();
    outcome
}

/// The blocking part of [`wait_for`], keeping the waiting notice current.
fn block_on(kind: KernelLock, theirs: &TheirFile, req: &Request<'_>) -> Result<Waited> {
    let waiting_error = |err: io::Error| anyhow!("cannot wait for {}: {}", req.lock.shown(), io_reason(&err));
    let blocking = theirs.file.try_clone().map_err(waiting_error)?;
    let (done_rx, done_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|err| waiting_error(err.into()))?;
    // The result goes through a channel before the pipe wakes us, so we go on without
    // joining: a join would wait for the thread's teardown, on the hand-off's path.
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("xlock-wait".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = result_tx.send(kind.take(&blocking, true));
            let _ = nix::unistd::write(&done_tx, b".");
        })
        .map_err(waiting_error)?;
    loop {
        match req.signals.wait(Some(done_rx.as_fd()), next_wake(req, None))? {
            Event::Ready => {
                let taken = result_rx
                    .recv()
                    .map_err(|_| anyhow!("the lock-waiting thread failed"))?;
                taken.map_err(|err| lock_error(req, err))?;
                return Ok(Waited::Got(true));
            }
            Event::Signal(info) if signals::ends_wait(signals::number(&info)) => {
                return Ok(Waited::Interrupted(signals::number(&info)));
            }
            Event::Timeout if req.deadline.passed() => return Ok(Waited::TimedOut),
            Event::Timeout => req.report.waiting(&theirs.record),
            Event::Signal(_) | Event::Again => {}
        }
    }
}

fn lock_error(req: &Request<'_>, err: io::Error) -> anyhow::Error {
    anyhow!("cannot lock {}: {}", req.lock.shown(), io_reason(&err))
}

/// How long a wait may sleep: until the deadline, the notice's next tick or `limit`,
/// whichever comes first (`None`: no limit at all).
fn next_wake(req: &Request<'_>, limit: Option<Duration>) -> Option<Duration> {
    [req.deadline.remaining(), req.report.tick(), limit]
        .into_iter()
        .flatten()
        .min()
}

/// Cross-checks a holder whose kernel locks are free (SPEC §4.3): while its recorded
/// process still runs, it is alive, and we poll (1 ms doubling to 250 ms). On a local
/// disk this is only the moment between a killed xlock dropping its flock and the
/// kernel finishing its exit.
fn wait_for_holder_process(theirs: &TheirFile, req: &Request<'_>) -> Result<Waited> {
    let outcome = poll_holder_process(theirs, req);
    req.report.done_waiting();
    outcome
}

fn poll_holder_process(theirs: &TheirFile, req: &Request<'_>) -> Result<Waited> {
    let mut pause = Duration::from_millis(1);
    let mut waited = false;
    loop {
        let running = liveness::holder_process(&theirs.record, req.me).map_err(|err| {
            anyhow!(
                "cannot check the holder of {} (pid {}): {}",
                req.lock.shown(),
                theirs.record.pid,
                io_reason(&err)
            )
        })?;
        if running != Holder::Running || !theirs.at(&req.lock.path).map_err(|err| read_error(req.lock, err))? {
            return Ok(Waited::Got(waited));
        }
        if req.deadline.passed() {
            return Ok(Waited::TimedOut);
        }
        req.report.waiting(&theirs.record);
        if let Event::Signal(info) = req.signals.wait(None, next_wake(req, Some(pause)))? {
            if signals::ends_wait(signals::number(&info)) {
                return Ok(Waited::Interrupted(signals::number(&info)));
            }
        }
        waited = true;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Removes this lock's orphaned temp files: those whose creator died before linking
/// them. A temp file whose flock is held has a live creator and is left alone.
fn sweep(lock: &LockPath) {
    let Ok(entries) = fs::read_dir(&lock.dir) else { return };
    for entry in entries.flatten() {
        if !lock.is_temp_name(entry.file_name().as_bytes()) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
        else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if !meta.is_file() || file.try_lock().is_err() {
            continue;
        }
        if is_at(&path, id_of(&meta)).unwrap_or(false) {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_exactly() {
        let lock = LockPath::new(Path::new("/tmp/db.lock")).unwrap();
        let nonce = "0123456789abcdef0123456789abcdef";
        let temp = lock.temp_name(nonce);
        assert_eq!(
            temp,
            Path::new("/tmp/.db.lock.0123456789abcdef0123456789abcdef.xlock-tmp")
        );
        assert!(lock.is_temp_name(temp.file_name().unwrap().as_bytes()));
        assert!(!lock.is_temp_name(b".db.lock.0123.xlock-tmp"));
        assert!(!lock.is_temp_name(b".other.lock.0123456789abcdef0123456789abcdef.xlock-tmp"));
        assert!(!lock.is_temp_name(b"db.lock"));
        assert!(!lock.is_temp_name(b".db.lock.0123456789abcdef0123456789abcdef.xlock-tmp.bak"));
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let lock = LockPath::new(Path::new("x.lock")).unwrap();
        assert!(lock.path.is_absolute());
        assert_eq!(lock.path, std::env::current_dir().unwrap().join("x.lock"));
        assert_eq!(lock.shown(), "x.lock");
    }
}
