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
//!
//! Once a holder's kernel locks are free, the evidence table ([`liveness::judge`])
//! has the last word. Where the file system refuses locks (or [`NO_KERNEL_LOCKS_ENV`]
//! says so), the table runs on the record alone: waiters poll with backoff, and a
//! take-over is arbitrated by a *claim*: a hard link of the taker's file, named after
//! the stale record's nonce, that only one waiter can create (see [`claim_stale`]).

use std::cell::Cell;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, AtFlags, FcntlArg, AT_FDCWD};
use nix::libc;

use crate::liveness::{self, Alive, Facts, Identity, Stale, Verdict};
use crate::record::{self, NotARecord, Record};
use crate::signals::{self, Event, Signals, Wake};
use crate::status::{io_reason, Reporter};

/// The byte that the command lock covers. The process lock is a flock(2), which on
/// local file systems never conflicts with byte-range locks.
const COMMAND_BYTE: i64 = 1;
/// Suffix of the temporary names in LOCK's directory.
const TEMP_SUFFIX: &str = ".xlock-tmp";
/// Suffix of the claim names of a no-locks take-over.
const CLAIM_SUFFIX: &str = ".xlock-claim";
/// Forces named temp files instead of O_TMPFILE (for tests of that path).
pub const NAMED_TEMP_ENV: &str = "XLOCK_NAMED_TEMP";
/// Forces the no-locks mode, as on a file system that refuses locks (`=1`).
pub const NO_KERNEL_LOCKS_ENV: &str = "XLOCK_NO_KERNEL_LOCKS";
/// Polling in no-locks mode starts at this pause, doubling up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(250);

fn env_is_1(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

/// Whether a lock call failed because the file system has no locks at all.
fn locks_unsupported(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS))
}

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

    /// The name of the `level`th claim on the stale record with nonce `stale`.
    fn claim_name(&self, stale: &str, level: u32) -> PathBuf {
        let mut name = OsString::from(".");
        name.push(&self.name);
        name.push(format!(".{stale}-{level}{CLAIM_SUFFIX}"));
        self.dir.join(name)
    }

    /// What a directory entry is, if it is one of this lock's temporary or claim names.
    fn side_file<'e>(&self, entry: &'e [u8]) -> Option<SideFile<'e>> {
        let rest = entry
            .strip_prefix(b".")?
            .strip_prefix(self.name.as_bytes())?
            .strip_prefix(b".")?;
        let (nonce, side) = if let Some(nonce) = rest.strip_suffix(TEMP_SUFFIX.as_bytes()) {
            (nonce, SideFile::Temp)
        } else {
            let claim = rest.strip_suffix(CLAIM_SUFFIX.as_bytes())?;
            let (nonce, level) = claim.split_at(claim.iter().position(|&b| b == b'-')?);
            if level.len() < 2 || !level[1..].iter().all(u8::is_ascii_digit) {
                return None;
            }
            (nonce, SideFile::Claim { stale: nonce })
        };
        (nonce.len() == 32 && nonce.iter().all(u8::is_ascii_hexdigit)).then_some(side)
    }

    fn shown(&self) -> String {
        self.given.display().to_string()
    }
}

/// A file next to LOCK that xlock made.
enum SideFile<'e> {
    /// A temp file, before it is linked to LOCK.
    Temp,
    /// A claim on the stale record with this nonce.
    Claim { stale: &'e [u8] },
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

    fn end(self) -> Option<Instant> {
        self.0
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
    /// Another host's lock is stale once its heartbeat is this old.
    pub stale_after: Duration,
}

/// How waiting on one holder's file ended.
enum Outcome {
    /// The file left LOCK: released (or taken over by another).
    Left,
    /// Its holder is gone: take it over.
    Stale(Stale),
    TimedOut,
    Interrupted(i32),
}

/// Acquires the lock (SPEC §4.3).
pub fn acquire(req: &Request<'_>, mut record: Record) -> Result<Acquired> {
    let started = Instant::now();
    let named = env_is_1(NAMED_TEMP_ENV);
    record.since = now();
    let mut ours = Candidate::create(req.lock, &record, req.command_lock, named)?;
    if !ours.kernel_locks {
        req.report.no_kernel_locks(&req.lock.dir);
    }
    let mut waited = false;
    let mut took_over = false;
    loop {
        if waited {
            record.since = now();
            ours.rewrite(req.lock, &record)?;
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
        let outcome = wait_out(&theirs, req, ours.kernel_locks, &mut waited);
        req.report.done_waiting();
        let why = match outcome? {
            Outcome::Left => continue,
            Outcome::Stale(why) => why,
            Outcome::TimedOut => return Ok(Acquired::Busy(Some(theirs.record))),
            Outcome::Interrupted(signal) => return Ok(Acquired::Interrupted(signal)),
        };
        if ours.kernel_locks {
            // We hold the dead file's locks: no other waiter can be doing the same.
            ours.take_over(req.lock)?;
        } else if !claim_stale(&mut ours, &theirs, req)? {
            // Another waiter claimed it first; see what it made of it after a pause.
            if let Paused::Stop(stop) = pause(req, POLL_FIRST, None)? {
                return Ok(stop.into_acquired(theirs.record));
            }
            waited = true;
            continue;
        }
        req.report.took_over(&theirs.record, &why);
        took_over = true;
        break;
    }
    // Step 5: verify.
    let kernel_locks = ours.kernel_locks;
    let held = ours.into_held(req.lock)?;
    // Orphans come from crashes, which a take-over shows; a named temp file's or a
    // no-locks claimer's crash may leave no other trace.
    if took_over || named || !kernel_locks {
        sweep(req, kernel_locks);
    }
    req.report.acquired(waited.then(|| started.elapsed()));
    Ok(Acquired::Held(held))
}

/// Steps 3–4 on one holder's file: wait for its kernel locks (if the file system has
/// them), then for the evidence table to call it stale, or for the file to leave LOCK.
fn wait_out(theirs: &TheirFile, req: &Request<'_>, kernel_locks: bool, waited: &mut bool) -> Result<Outcome> {
    if kernel_locks {
        for kind in [KernelLock::Process, KernelLock::Command] {
            match wait_for(kind, theirs, req)? {
                Waited::Got(w) => *waited |= w,
                Waited::TimedOut => return Ok(Outcome::TimedOut),
                Waited::Interrupted(signal) => return Ok(Outcome::Interrupted(signal)),
            }
            // Free and still at LOCK: its xlock died, so wait for its command's tree.
            if !theirs.at(&req.lock.path).map_err(|err| read_error(req.lock, err))? {
                return Ok(Outcome::Left);
            }
        }
    }
    // Kernel mode: only the moment between a killed xlock dropping its flock and the
    // kernel finishing its exit, or another host's heartbeat. A running holder on
    // this host is waited for exactly, through a pidfd; the rest is polled (1 ms
    // first with kernel locks, else POLL_FIRST), with backoff.
    let mut every = if kernel_locks {
        Duration::from_millis(1)
    } else {
        POLL_FIRST
    };
    let mut holder_exit: Option<OwnedFd> = None;
    let mut watch_holder = true;
    loop {
        if !theirs.at(&req.lock.path).map_err(|err| read_error(req.lock, err))? {
            return Ok(Outcome::Left);
        }
        match theirs.judge(req, kernel_locks)? {
            Verdict::Stale(why) => return Ok(Outcome::Stale(why)),
            Verdict::Alive(Alive::Running) if watch_holder && holder_exit.is_none() => {
                // Judged again once the pidfd is open, so it cannot be a recycled PID's.
                holder_exit = liveness::exit_fd(theirs.record.pid);
                watch_holder = holder_exit.is_some();
                continue;
            }
            Verdict::Alive(_) => {}
        }
        req.report.waiting(&theirs.record);
        match pause(req, every, holder_exit.as_ref().map(AsFd::as_fd))? {
            Paused::Stop(stop) => return Ok(stop),
            // It has exited: judge again, then poll if it still counts as alive (its
            // command's tree, without kernel locks).
            Paused::Ready => {
                holder_exit = None;
                watch_holder = false;
            }
            Paused::Elapsed => every = (every * 2).min(POLL_MAX),
        }
        *waited = true;
    }
}

/// How a [`pause`] ended.
enum Paused {
    /// The deadline passed, or a signal ended the wait.
    Stop(Outcome),
    /// The descriptor it watched became readable.
    Ready,
    Elapsed,
}

impl Outcome {
    fn into_acquired(self, holder: Record) -> Acquired {
        match self {
            Outcome::Interrupted(signal) => Acquired::Interrupted(signal),
            _ => Acquired::Busy(Some(holder)),
        }
    }
}

/// Sleeps `every` (less if the deadline or the notice's tick comes first; with
/// `watch`, until it is readable, if that comes first).
fn pause(req: &Request<'_>, every: Duration, watch: Option<BorrowedFd<'_>>) -> Result<Paused> {
    if req.deadline.passed() {
        return Ok(Paused::Stop(Outcome::TimedOut));
    }
    let limit = if watch.is_some() { None } else { Some(every) };
    Ok(match req.signals.wait(watch, next_wake(req, limit))? {
        Event::Signal(info) if signals::ends_wait(signals::number(&info)) => {
            Paused::Stop(Outcome::Interrupted(signals::number(&info)))
        }
        Event::Ready => Paused::Ready,
        _ => Paused::Elapsed,
    })
}

/// No-locks take-over of `theirs` (SPEC §4.3): only the waiter that creates the claim
/// name for the stale record's nonce may replace it, by renaming that claim (a hard
/// link of its own file) over LOCK. A claimer that died leaves its claim; the next
/// waiter then claims one level up. `Ok(false)`: a live waiter claimed it first, or
/// the file left LOCK meanwhile.
fn claim_stale(ours: &mut Candidate, theirs: &TheirFile, req: &Request<'_>) -> Result<bool> {
    let lock = req.lock;
    let mut level = 0;
    let claim = loop {
        if level >= 1000 {
            bail!(
                "cannot take over the stale lock {}: 1000 claims on it were left by dead xlocks; remove the .*{CLAIM_SUFFIX} files in {}",
                lock.shown(),
                lock.dir.display()
            );
        }
        let claim = lock.claim_name(&theirs.record.nonce, level);
        // Our file's mtime is a claimer's heartbeat for waiters on other hosts.
        ours.file
            .set_modified(SystemTime::now())
            .map_err(|err| create_error(lock, err))?;
        match link_fd(&ours.file, &claim) {
            Ok(()) => break claim,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(create_error(lock, err)),
        }
        match open_record(&claim).map_err(|err| read_error(lock, err))? {
            Found::Vanished => continue, // its claimer gave up: try this level again
            Found::Record(claimer) => {
                if matches!(claimer.judge(req, false)?, Verdict::Alive(_)) {
                    return Ok(false);
                }
            }
            Found::Foreign(_) => {}
        }
        level += 1;
    };
    if !theirs.at(&lock.path).map_err(|err| read_error(lock, err))? {
        // Give the claim up, but keep a name: an O_TMPFILE once linked cannot be
        // linked again after its last name is gone. Our temp name is ours alone.
        if is_at(&claim, ours.file_id).unwrap_or(false) {
            if ours.temp.as_ref().is_none() {
                let temp = lock.temp_name(&ours.nonce);
                fs::rename(&claim, &temp).map_err(|err| create_error(lock, err))?;
                ours.temp.0 = Some(temp);
            } else {
                let _ = fs::remove_file(&claim);
            }
        }
        return Ok(false);
    }
    fs::rename(&claim, &lock.path).map_err(|err| create_error(lock, err))?;
    // The claims below ours were left by dead claimers of this record, now gone.
    for below in 0..level {
        let _ = fs::remove_file(lock.claim_name(&theirs.record.nonce, below));
    }
    Ok(true)
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
    /// Found removed or replaced by a heartbeat (and already said so).
    lost: Cell<bool>,
}

impl Held {
    /// The absolute lock path and this acquisition's nonce (for `XLOCK_HELD`).
    pub fn identity(&self) -> (&Path, &str) {
        (&self.lock.path, &self.nonce)
    }

    /// The heartbeat (SPEC §4.4): verifies that LOCK is still ours and bumps its mtime,
    /// which other hosts read. `Ok(false)`: the lock is lost; from then on, release
    /// leaves LOCK alone.
    pub fn heartbeat(&self) -> io::Result<bool> {
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

    /// What to say when a heartbeat finds the lock lost.
    pub fn lost_message(&self) -> String {
        format!(
            "lost the lock {}: its file was removed or replaced while the command ran, so another process \
             may run at the same time; sending SIGTERM to the command. Check what removes files there (a /tmp cleaner?)",
            self.lock.shown()
        )
    }

    /// The descriptor the command must inherit, if any.
    pub fn command_fd(&self) -> Option<BorrowedFd<'_>> {
        self.command_lock.as_ref().map(AsFd::as_fd)
    }

    /// Whether LOCK is still this holder's file with its nonce: LOCK is our inode, and
    /// the record in that inode, read through our own descriptor (no open of the path:
    /// this runs on the hand-off's path, at release), carries our nonce.
    pub fn is_ours(&self) -> io::Result<bool> {
        use std::os::unix::fs::FileExt;
        if !self.at_lock()? {
            return Ok(false);
        }
        let mut bytes = [0u8; record::MAX_LEN + 1];
        let len = self.file.read_at(&mut bytes, 0)?;
        Ok(record::carries_nonce(&bytes[..len], &self.nonce))
    }

    /// Whether LOCK is our inode.
    fn at_lock(&self) -> io::Result<bool> {
        is_at(&self.lock.path, self.file_id)
    }

    /// Releases the lock (SPEC §4.5): verify it is ours, unlink it, then close. A lock
    /// that is no longer ours is left alone, and that is an error.
    pub fn release(self) -> Result<()> {
        if self.lost.get() {
            return Ok(()); // said when it was found lost; nothing of ours to remove
        }
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
        why: Stale,
    },
    /// Not a lock record; why.
    Foreign(String),
}

/// Inspects LOCK without changing it: it may hold the dead holder's flock for a moment
/// (there is no other way to ask), and only asks about the command lock.
pub fn inspect(lock: &LockPath, me: &Identity, stale_after: Duration) -> Result<State> {
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
    let held = |orphans| State::Held {
        record: theirs.record.clone(),
        orphans,
    };
    let mut kernel_locks = !env_is_1(NO_KERNEL_LOCKS_ENV);
    if kernel_locks {
        match KernelLock::Process.take(&theirs.file, false) {
            Ok(false) => return Ok(held(Vec::new())),
            Ok(true) => {}
            Err(err) if locks_unsupported(&err) => kernel_locks = false,
            Err(err) => return Err(lock_error(err)),
        }
    }
    if !theirs.at(&lock.path).map_err(lock_error)? {
        return Ok(State::Free); // released a moment ago
    }
    if kernel_locks && command_lock_held(&theirs.file).map_err(lock_error)? {
        return Ok(held(liveness::processes_writing(theirs.file_id)));
    }
    Ok(
        match theirs.verdict(me, kernel_locks, stale_after).map_err(lock_error)? {
            Verdict::Alive(liveness::Alive::Command(orphans)) => held(orphans),
            Verdict::Alive(_) => held(Vec::new()),
            Verdict::Stale(why) => State::Stale {
                record: theirs.record.clone(),
                why,
            },
        },
    )
}

/// The record now at LOCK, if there is one (for nesting: whose acquisition it is).
pub fn current_record(lock: &LockPath) -> Result<Option<Record>> {
    Ok(match open_record(&lock.path).map_err(|err| read_error(lock, err))? {
        Found::Record(theirs) => Some(theirs.record),
        Found::Vanished | Found::Foreign(_) => None,
    })
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

/// Our lock file before it is at LOCK.
struct Candidate {
    file: File,
    /// Carries the command lock (or, without kernel locks, just marks the command's
    /// tree as the file's writers).
    command_lock: Option<File>,
    file_id: (u64, u64),
    nonce: String,
    /// A name in LOCK's directory, while the file has one.
    temp: TempName,
    /// Whether the file system has kernel locks (and they are not switched off).
    kernel_locks: bool,
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
        let mut ours = Self::create_locked(lock, &record.nonce, named, !env_is_1(NO_KERNEL_LOCKS_ENV))?;
        if command_lock {
            // A second open file description: its lock is independent of the flock.
            let second = OpenOptions::new()
                .read(true)
                .write(true)
                .open(fd_path(&ours.file))
                .map_err(|err| create_error(lock, err))?;
            let taken = !ours.kernel_locks
                || match set_command_lock(second.as_fd(), libc::F_WRLCK as i16, false) {
                    Err(err) if locks_unsupported(&err) => {
                        ours.kernel_locks = false;
                        let _ = ours.file.unlock();
                        true
                    }
                    taken => taken.map_err(|err| create_error(lock, err))?,
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
            .map_err(|err| create_error(lock, err))?;
        Ok(ours)
    }

    /// The file, with its process lock taken. A named temp file can be swept by another
    /// xlock in the moment between its creation and our flock; once we hold the flock
    /// it is safe, so check the name is still ours, and start again if it is not.
    fn create_locked(lock: &LockPath, nonce: &str, named: bool, kernel_locks: bool) -> Result<Candidate> {
        for _ in 0..100 {
            let (file, temp) = Self::open(lock, nonce, named).map_err(|err| create_error(lock, err))?;
            let file_id = id_of(&file.metadata()?);
            let mut ours = Candidate {
                file,
                command_lock: None,
                file_id,
                nonce: nonce.to_owned(),
                temp: TempName(temp),
                kernel_locks,
            };
            if kernel_locks {
                match ours.file.lock() {
                    Ok(()) => {}
                    Err(err) if locks_unsupported(&err) => ours.kernel_locks = false,
                    Err(err) => return Err(create_error(lock, err)),
                }
            }
            // Without kernel locks, sweepers judge a temp file by its record instead.
            if !ours.kernel_locks || ours.temp_name_is_ours() {
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
    fn rewrite(&mut self, lock: &LockPath, record: &Record) -> Result<()> {
        use std::os::unix::fs::FileExt;
        // Overwrite, then cut: a reader (a sweeper, once the file has a temp name) sees
        // a whole record, the old one or the new one, never an empty file.
        let line = record.to_line();
        self.file
            .write_all_at(&line, 0)
            .and_then(|()| self.file.set_len(line.len() as u64))
            .map_err(|err| create_error(lock, err))?;
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
            lost: Cell::new(false),
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

    /// The evidence table on this holder, whose kernel locks are free (or absent).
    fn judge(&self, req: &Request<'_>, kernel_locks: bool) -> Result<Verdict> {
        self.verdict(req.me, kernel_locks, req.stale_after).map_err(|err| {
            anyhow!(
                "cannot check the holder of {} (pid {}): {}",
                req.lock.shown(),
                self.record.pid,
                io_reason(&err)
            )
        })
    }

    fn verdict(&self, me: &Identity, kernel_locks: bool, stale_after: Duration) -> io::Result<Verdict> {
        let modified = self.file.metadata()?.modified()?;
        let facts = Facts {
            me,
            kernel_locks,
            file_id: self.file_id,
            heartbeat_age: SystemTime::now().duration_since(modified).unwrap_or_default(),
            stale_after,
        };
        liveness::judge(&self.record, &facts)
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

/// Takes `kind` on `file`, waiting until the deadline if it is held; a signal that
/// ends waits ends this one.
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

/// The blocking part of [`wait_for`], keeping the waiting notice current. The lock
/// call blocks this thread itself, so the holder's release wakes it directly; a
/// signal, the deadline or the notice's tick interrupts it.
fn block_on(kind: KernelLock, theirs: &TheirFile, req: &Request<'_>) -> Result<Waited> {
    let interrupter = req
        .signals
        .interrupter(req.deadline.end(), req.report.tick())
        .map_err(|err| anyhow!("cannot wait for {}: {}", req.lock.shown(), io_reason(&err)))?;
    loop {
        match interrupter.take() {
            Some(Wake::Tick) => req.report.waiting(&theirs.record),
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
            Err(err) => return Err(lock_error(req, err)),
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

/// Removes this lock's orphaned temp and claim files: those whose creator died. With
/// kernel locks, a creator is alive while its file's flock is held; without, the
/// evidence table judges the record the file carries (a file still without a record
/// is left alone until it is older than `--stale-after`).
///
/// A claim matters while its stale record is at LOCK: one removed then could be made
/// again by a second claimer. So claims are removed only once their record is gone
/// from LOCK (for good: a record is at LOCK once), or by the taker of that record.
fn sweep(req: &Request<'_>, kernel_locks: bool) {
    let lock = req.lock;
    let Ok(entries) = fs::read_dir(&lock.dir) else { return };
    let at_lock = current_record(lock).ok().flatten().map(|record| record.nonce);
    for entry in entries.flatten() {
        let name = entry.file_name();
        match lock.side_file(name.as_bytes()) {
            None => continue,
            Some(SideFile::Claim { stale }) if at_lock.as_ref().is_some_and(|n| n.as_bytes() == stale) => continue,
            Some(_) => {}
        }
        let path = entry.path();
        let orphan = if kernel_locks {
            let Ok(file) = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&path)
            else {
                continue;
            };
            match file.metadata() {
                Ok(meta) if meta.is_file() && file.try_lock().is_ok() => Some(id_of(&meta)),
                _ => None,
            }
        } else {
            match open_record(&path) {
                Ok(Found::Record(temp)) => match temp.verdict(req.me, false, req.stale_after) {
                    Ok(Verdict::Stale(_)) => Some(temp.file_id),
                    _ => None,
                },
                Ok(Found::Foreign(_)) => fs::symlink_metadata(&path)
                    .ok()
                    .filter(|meta| {
                        meta.is_file()
                            && meta
                                .modified()
                                .ok()
                                .and_then(|m| m.elapsed().ok())
                                .is_some_and(|age| age >= req.stale_after)
                    })
                    .map(|meta| id_of(&meta)),
                _ => None,
            }
        };
        if let Some(id) = orphan {
            if is_at(&path, id).unwrap_or(false) {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_and_claim_names_are_recognised_exactly() {
        let lock = LockPath::new(Path::new("/tmp/db.lock")).unwrap();
        let nonce = "0123456789abcdef0123456789abcdef";
        let temp = lock.temp_name(nonce);
        assert_eq!(
            temp,
            Path::new("/tmp/.db.lock.0123456789abcdef0123456789abcdef.xlock-tmp")
        );
        let is_side_file = |name: &[u8]| lock.side_file(name).is_some();
        assert!(matches!(
            lock.side_file(temp.file_name().unwrap().as_bytes()),
            Some(SideFile::Temp)
        ));
        assert!(!is_side_file(b".db.lock.0123.xlock-tmp"));
        assert!(!is_side_file(b".other.lock.0123456789abcdef0123456789abcdef.xlock-tmp"));
        assert!(!is_side_file(b"db.lock"));
        assert!(!is_side_file(
            b".db.lock.0123456789abcdef0123456789abcdef.xlock-tmp.bak"
        ));
        let claim = lock.claim_name(nonce, 12);
        assert_eq!(
            claim,
            Path::new("/tmp/.db.lock.0123456789abcdef0123456789abcdef-12.xlock-claim")
        );
        match lock.side_file(claim.file_name().unwrap().as_bytes()) {
            Some(SideFile::Claim { stale }) => assert_eq!(stale, nonce.as_bytes()),
            _ => panic!("a claim name is not recognised"),
        }
        assert!(!is_side_file(b".db.lock.0123456789abcdef0123456789abcdef-.xlock-claim"));
        assert!(!is_side_file(
            b".db.lock.0123456789abcdef0123456789abcdef-1x.xlock-claim"
        ));
        assert!(!is_side_file(b".db.lock.0123456789abcdef0123456789abcdef.xlock-claim"));
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let lock = LockPath::new(Path::new("x.lock")).unwrap();
        assert!(lock.path.is_absolute());
        assert_eq!(lock.path, std::env::current_dir().unwrap().join("x.lock"));
        assert_eq!(lock.shown(), "x.lock");
    }
}
