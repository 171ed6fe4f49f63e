//! The members of a shared or slot lock (SPEC §9): one record per holder, each of them
//! an ordinary exclusive file lock (record, process lock, command lock, heartbeat,
//! release: [`file::acquire`] and [`Held`] on another path), so a crashed holder frees
//! its share or slot at once and `--status` sees every holder.
//!
//! Where: the holder that joined alone (the first shared holder, or slot 0) at
//! `.NAME.xlock-solo` next to LOCK, so that an uncontended run makes no directory
//! (`mkdir` and `rmdir` cost an ext4 file system with the `discard` option 0.2 ms and
//! more); any other in the members directory `.NAME.xlock-members/`, a shared
//! holder's record named by its nonce (32 hex digits), a slot holder's `slot.K`;
//! names starting with `.` are the members' own temp files and claims. The directory
//! exists exactly while it has members: the last member to leave removes it (`rmdir`,
//! which fails harmlessly while another member or a temp file is there), unless LOCK
//! is held (the gate), whose holder removes it once it lets LOCK go; an acquirer that
//! finds it removed under it makes it again.
//!
//! This module is what the kinds need of the members: their names and paths, a cheap
//! look at one, the take-over of crashed ones and the sweep of their side files, the
//! checks that a LOCK is used as one kind only, nesting, and `--status`'s look at
//! every holder. The exclusive lock's *drain* (wait out every shared holder while
//! holding LOCK, the gate, which gives writer preference) is `drain.rs`.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::candidate::{Candidate, TempFile};
use super::claim;
use super::file;
use super::held::Held;
use super::inspect;
use super::kernel::{command_lock_held, KernelLock};
use super::path::LockPath;
use super::theirs::{open_record, Found, TheirFile};
use super::{Acquired, Deadline, Holder, HolderState, Holding, Inherit, Request, State};
use crate::error::{cannot, read_error};
use crate::escape;
use crate::liveness::{Identity, Locking};
use crate::nesting::Inherited;
use crate::record::{Mode, Record};

/// A member's name: a shared holder's nonce, or a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Name {
    Shared,
    Slot(u32),
}

impl Name {
    /// What a directory entry is; `None` for the members' own temp files and claims
    /// (names starting with `.`) and for anything xlock did not make.
    pub(super) fn of(entry: &[u8]) -> Option<Name> {
        if entry.len() == 32 && entry.iter().all(u8::is_ascii_hexdigit) {
            return Some(Name::Shared);
        }
        let k = entry.strip_prefix(b"slot.")?;
        if k.is_empty() || !k.iter().all(u8::is_ascii_digit) || (k.len() > 1 && k[0] == b'0') {
            return None;
        }
        std::str::from_utf8(k).ok()?.parse().ok().map(Name::Slot)
    }
}

/// The file name of slot `k`'s record.
pub(super) fn slot_name(k: u32) -> String {
    format!("slot.{k}")
}

/// The members now in `dir`, by name; `None` if there is no such directory. Anything
/// but a directory at that name (a symbolic link above all: to another LOCK's members,
/// to /etc) is not xlock's: never followed, an error that names it (SPEC §4.1, §6).
pub(super) fn list(dir: &Path) -> Result<Option<Vec<(OsString, Name)>>> {
    let unreadable = |err: io::Error| cannot("read", escape::path(dir), &err);
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(meta) => return Err(not_members_dir(dir, &meta)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(unreadable(err)),
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(unreadable(err)),
    };
    let mut members = Vec::new();
    for entry in entries {
        let name = entry.map_err(unreadable)?.file_name();
        if let Some(kind) = Name::of(name.as_bytes()) {
            members.push((name, kind));
        }
    }
    Ok(Some(members))
}

/// The error of a file at the members directory's name that is not a directory.
fn not_members_dir(dir: &Path, meta: &fs::Metadata) -> anyhow::Error {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    let what = if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a directory"
    };
    anyhow!(
        "{}: it is {what}, not the directory of holders that xlock makes for --shared and --slots; \
         xlock leaves it untouched (and never follows it). Remove it if it is a leftover, or use another LOCK path",
        escape::path(dir)
    )
}

/// Makes the members directory; `Ok(true)` if it was not there. Its mode is the
/// umask's (0755 with 022, 0775 with 002), as `mkdir` makes one: users of different
/// accounts who share a LOCK join one another's directory with umask 002 in a
/// group-owned setgid directory (the remedy [`check_writable`] gives). It used to be
/// made 0755 whatever the umask, which no remedy could get past (found by attacking).
pub(super) fn make_dir(lock: &LockPath, dir: &Path) -> Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o777).create(dir) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(crate::error::create_error(lock.shown(), &lock.dir, err)),
    }
}

/// Refuses, naming whose it is and what to do, to join holders whose directory this
/// user may not add a record to (another user's, mode 0755): the error of creating
/// the record said "use a LOCK path in a directory you can write", and LOCK's own
/// directory may well be writable (SPEC §6: never a misleading reason).
pub(super) fn check_writable(lock: &LockPath, dir: &Path) -> Result<()> {
    use nix::unistd::{access, AccessFlags};
    use std::os::unix::fs::MetadataExt;
    if !matches!(
        access(dir, AccessFlags::W_OK | AccessFlags::X_OK),
        Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM)
    ) {
        return Ok(());
    }
    let who = match fs::symlink_metadata(dir).map(|meta| meta.uid()) {
        Ok(uid) => match super::path::user_name(uid) {
            Some(name) => format!("user {name} (uid {uid})"),
            None => format!("uid {uid}"),
        },
        Err(_) => "another user".to_owned(),
    };
    Err(anyhow!(
        "cannot join the holders of {}: their directory {} belongs to {who}, and this user may not add to it; \
         users of different accounts who share a LOCK need it group-writable: run every xlock on it with umask 002, \
         in a group-owned setgid directory (e.g. 'install -d -m 2775 -g GROUP /var/lock/myapp'), or use a LOCK of your own",
        lock.shown(),
        escape::path(dir)
    ))
}

/// Which members directory is there now: its inode and birth time, to tell it from
/// one made again after the last member to leave removed it (an inode number may be
/// reused at once). `None` parts: not there, or no birth time on this file system.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct DirId(Option<(u64, Option<std::time::SystemTime>)>);

pub(super) fn dir_id(dir: &Path) -> DirId {
    use std::os::unix::fs::MetadataExt;
    DirId(
        fs::symlink_metadata(dir)
            .ok()
            // A directory being removed has no links left before its name goes (ext4
            // refuses to create in it with EPERM then): it is gone already.
            .filter(|meta| meta.is_dir() && meta.nlink() > 0)
            .map(|meta| (meta.ino(), meta.created().ok())),
    )
}

/// Whether creating a record in `dir` may have failed because the directory went away
/// (removed by the last member to leave, perhaps made again since) after it was
/// `before`: then the caller tries again. Any other failure is the caller's to report.
pub(super) fn went(dir: &Path, before: &DirId) -> bool {
    let now = dir_id(dir);
    now.0.is_none() || now != *before
}

/// Removes the members directory if it is empty (another member, or a temp file of
/// one that is joining, keeps it). Never waits: a releasing reader must not queue.
///
/// The directory is held open across the `rmdir`: the last reference to a removed
/// directory evicts its inode, which on ext4 frees its block (with the `discard` mount
/// option, a synchronous discard: 150 µs measured), and `rmdir` would do that while
/// it holds LOCK's directory locked, stalling every lookup, link and unlink there (the
/// next holder's among them). Closed here, after `rmdir`, the eviction locks nothing.
pub(super) fn remove_dir_if_empty(dir: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let open = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dir);
    let _ = fs::remove_dir(dir);
    drop(open);
}

/// Whether a member leaving the members directory `dir` leaves it to LOCK's holder to
/// remove (`Member::release`): LOCK is there, and its file belongs to the directory's
/// owner, who can remove it even from a sticky directory.
pub(super) fn left_to_gate(lock: &Path, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(lock), fs::symlink_metadata(dir)) {
        (Ok(gate), Ok(dir)) => gate.uid() == dir.uid(),
        _ => false,
    }
}

/// The kind a record says its holder took, as the messages name it.
pub(super) fn kind_of(record: &Record) -> String {
    match (record.mode.as_deref(), record.slots) {
        (Some(Mode::SLOTS), Some(n)) => format!("--slots {n}"),
        (Some(Mode::SHARED), _) => "--shared".into(),
        (Some(other), _) => format!("an unknown kind ({})", escape::text(other)),
        (None, _) => "an exclusive lock".into(),
    }
}

/// The error of taking `ours` (`--shared`, `--slots N`, an exclusive lock) on a LOCK
/// that `theirs` holds as another kind (SPEC §9: a LOCK is of one kind).
pub(super) fn mismatch(lock: &LockPath, ours: &str, theirs: &Record) -> anyhow::Error {
    anyhow!(
        "{} is held with {} by pid {} (host {}): '{}'; this xlock asked for {ours}. \
         Every user of a LOCK must take it the same way (exclusive/--shared, or --slots with the same N); \
         use {} here, or another LOCK",
        lock.shown(),
        kind_of(theirs),
        theirs.pid,
        escape::text(&theirs.host),
        escape::text(&theirs.cmd),
        kind_of(theirs),
    )
}

/// The record of member `name` in `dir`, if it is there and is one.
pub(super) fn read(dir: &Path, name: &OsString) -> io::Result<Option<Record>> {
    Ok(match open_record(&dir.join(name))? {
        Found::Record(theirs) => Some(theirs.record),
        Found::Vanished | Found::Foreign(_) => None,
    })
}

/// A member's own lock path.
pub(super) fn member_path(dir: &Path, name: impl AsRef<Path>) -> Result<LockPath> {
    LockPath::new(&dir.join(name))
}

/// The request for a step of an acquire: the same deadline and signals, no command
/// lock, and a reporter that leaves the "acquired" line to the whole.
pub(super) fn step_request<'a>(req: &Request<'a>, report: &'a crate::report::Reporter) -> Request<'a> {
    Request {
        deadline: req.deadline,
        inherit: Inherit::Nothing,
        me: req.me,
        signals: req.signals,
        report,
        stale_after: req.stale_after,
    }
}

/// What a cheap look at a member's record finds.
pub(super) enum Look {
    /// No record at that name.
    Vacant,
    /// Its holder is alive: its process lock is held, or its xlock has ended and its
    /// command's tree holds the command lock.
    Alive(Record),
    /// Its kernel locks are free (or, without kernel locks, there are none to ask):
    /// the evidence table decides, in a take-over attempt.
    MayBeGone(Record),
    /// Its xlock has ended and no command's tree holds the command lock, but another
    /// process holds its process lock for a moment (`--status`, a waiter's look or
    /// sentry, a writer taking it over): gone, most likely, once that lets go. Not a
    /// live holder of another kind (found by attacking: exit 125 named a dead pid).
    Probed(Record),
    /// Not an xlock record (why): never touched.
    Foreign(String),
}

/// A cheap look at member `path` through a read-only descriptor.
pub(super) fn look(path: &Path, me: &Identity) -> io::Result<Look> {
    let theirs = match open_record(path)? {
        Found::Record(theirs) => theirs,
        Found::Vanished => return Ok(Look::Vacant),
        Found::Foreign(why) => return Ok(Look::Foreign(why)),
    };
    Ok(match locks_of(&theirs, me)? {
        Locks::Held => Look::Alive(theirs.record),
        Locks::Free => Look::MayBeGone(theirs.record),
        Locks::Probed => Look::Probed(theirs.record),
    })
}

/// What a holder's kernel locks say (asked, not waited for).
enum Locks {
    /// Held by it, or by its command's tree.
    Held,
    /// Free, or there are none to ask (without kernel locks).
    Free,
    /// Its process lock held by another than its xlock, which has ended ([`Look::Probed`]).
    Probed,
}

fn locks_of(theirs: &TheirFile, me: &Identity) -> io::Result<Locks> {
    if Locking::from_env() == Locking::RecordOnly {
        return Ok(Locks::Free);
    }
    let process_free = match KernelLock::Process.take(&theirs.file, false) {
        Ok(free) => free,
        Err(err) if crate::error::locks_unsupported(&err) => return Ok(Locks::Free),
        Err(err) => return Err(err),
    };
    Ok(if command_lock_held(&theirs.file)? {
        Locks::Held
    } else if process_free {
        Locks::Free
    } else if crate::liveness::holder_gone(&theirs.record, me) {
        Locks::Probed
    } else {
        Locks::Held
    })
}

/// Whether the holder of `theirs` (at `lock`) is gone: its kernel locks are free, or
/// only held for a moment by another ([`Look::Probed`]: the gate's acquire waits for
/// that, then takes it over), and the evidence table says so (without kernel locks,
/// the evidence table alone).
pub(super) fn holder_gone(theirs: &TheirFile, lock: &LockPath, req: &Request<'_>) -> bool {
    matches!(locks_of(theirs, req.me), Ok(Locks::Free | Locks::Probed))
        && matches!(
            theirs.judge(lock, req, Locking::from_env()),
            Ok(crate::liveness::Verdict::Stale(_))
        )
}

/// Takes member `path` at once (no wait): vacant, or its holder gone (taken over),
/// with our `record` in it, in `made` if we made our file ahead ([`prepare`]; its
/// record's time is then now); else what holds it.
pub(super) fn take_at_once(
    path: &LockPath,
    req: &Request<'_>,
    mut record: Record,
    made: Option<Candidate>,
) -> Result<Acquired<Held>> {
    let now = Request {
        deadline: Deadline::after(Some(Duration::ZERO)),
        inherit: req.inherit,
        ..step_request(req, req.report)
    };
    match made {
        Some(mut made) => {
            record.since = file::now();
            made.rewrite(path, &record)?;
            file::acquire_with(path, &now, record, made, std::time::Instant::now())
        }
        None => file::acquire(path, &now, record),
    }
}

/// Takes member `path` over if its holder is gone, at once (no wait): `Ok(Some(held))`
/// then, with our record in it; `Ok(None)` if its holder is alive.
pub(super) fn try_take(path: &LockPath, req: &Request<'_>, record: &Record) -> Result<Option<Held>> {
    Ok(held(take_at_once(path, req, record.clone(), None)?))
}

/// The member held, if it was had.
fn held(acquired: Acquired<Held>) -> Option<Held> {
    match acquired {
        Acquired::Held(held) => Some(held),
        Acquired::Busy(..) | Acquired::Interrupted(_) => None,
    }
}

/// Our member file made ahead, while we wait, as the exclusive waiter makes its own:
/// an unnamed file (O_TMPFILE) in LOCK's directory, linked at a member's name once we
/// join ([`take_prepared`]). `None` (made when we join) where it would get a name, or
/// without kernel locks.
pub(super) fn prepare(lock: &LockPath, req: &Request<'_>, record: &Record) -> Option<Candidate> {
    if TempFile::from_env() == TempFile::Named {
        return None;
    }
    Candidate::create(lock, record, req.inherit, TempFile::Unnamed)
        .ok()
        .filter(|made| made.temp.as_ref().is_none() && made.locking == Locking::Kernel)
}

/// Takes member `path` at once with the file `made` ahead ([`prepare`]), holding
/// `record` (its time is now); `Ok(None)` if its holder is alive. A file that cannot be
/// linked there (another file system mounted at the members directory: EXDEV) is let
/// go, and a file of its own made, as [`try_take`] does.
pub(super) fn take_prepared(
    path: &LockPath,
    req: &Request<'_>,
    record: Record,
    made: Candidate,
) -> Result<Option<Held>> {
    match take_at_once(path, req, record.clone(), Some(made)) {
        Ok(acquired) => Ok(held(acquired)),
        Err(_) => try_take(path, req, &record),
    }
}

/// The record of member `path`'s holder if it is alive; `None` if nothing holds that
/// name now: no record, not a record (never touched), or a crashed holder's, which is
/// taken over with `record` and removed (exactly one gate holder does this at a time;
/// the member's own take-over protocol holds beneath). A LOCK is of one kind only
/// while someone holds it: a crashed holder of another kind blocks no one (SPEC §9).
pub(super) fn live_member(path: &LockPath, req: &Request<'_>, record: &Record) -> Result<Option<Record>> {
    loop {
        match look(&path.path, req.me).map_err(|err| cannot("check", path.shown(), &err))? {
            Look::Vacant | Look::Foreign(_) => return Ok(None),
            Look::Alive(theirs) => return Ok(Some(theirs)),
            // Wait for whoever has its process lock for a moment (the same deadline and
            // signals), then take it over.
            Look::Probed(theirs) => {
                let wait = Request {
                    inherit: req.inherit,
                    ..step_request(req, req.report)
                };
                match file::acquire(path, &wait, record.clone())? {
                    Acquired::Held(stale) => {
                        stale.release(false)?;
                        return Ok(None);
                    }
                    // Still held at the deadline (or a signal came): as it looks.
                    Acquired::Busy(..) | Acquired::Interrupted(_) => return Ok(Some(theirs)),
                }
            }
            Look::MayBeGone(theirs) => match try_take(path, req, record)? {
                Some(stale) => {
                    stale.release(false)?;
                    return Ok(None);
                }
                // Alive after all (the evidence table), or another took it: look again.
                None => {
                    if let Found::Record(now) = open_record(&path.path).map_err(|err| read_error(path.shown(), err))? {
                        if now.record.nonce == theirs.nonce {
                            return Ok(Some(theirs));
                        }
                    }
                }
            },
        }
    }
}

/// Removes the records of shared members whose holders are gone (a crash), holding
/// the gate, so that nothing is left behind; a live member is not waited for.
pub(super) fn sweep_shared(lock: &LockPath, dir: &Path, req: &Request<'_>, record: &Record) -> Result<()> {
    let step = req.report.for_step();
    let step_req = step_request(req, &step);
    let listed = list(dir)?;
    check_writable(lock, dir)?;
    for (name, kind) in listed.unwrap_or_default() {
        if kind != Name::Shared {
            if let Some(theirs) = live_member(&member_path(dir, &name)?, &step_req, record)? {
                return Err(mismatch(lock, "--shared", &theirs));
            }
            continue;
        }
        let path = dir.join(&name);
        if !matches!(
            look(&path, req.me).map_err(|err| cannot("check", escape::path(&path), &err))?,
            Look::MayBeGone(_)
        ) {
            continue;
        }
        let before = dir_id(dir);
        match try_take(&member_path(dir, &name)?, &step_req, record) {
            Ok(Some(held)) => {
                held.release(false)?;
            }
            Ok(None) => {}
            // The last member left and removed the directory: nothing left to sweep.
            Err(_) if went(dir, &before) => return Ok(()),
            Err(err) => return Err(err),
        }
    }
    sweep_orphans(dir, &step_req);
    Ok(())
}

/// Removes the orphaned temp and claim files in the members directory (`.MEMBER.…`,
/// left by members that crashed while joining or taking over), as `claim::sweep`
/// does next to LOCK: a file whose creator is alive is never touched.
pub(super) fn sweep_orphans(dir: &Path, req: &Request<'_>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut names = std::collections::BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(member) = name.as_bytes().strip_prefix(b".").and_then(member_of_side_file) {
            names.insert(OsString::from(std::ffi::OsStr::from_bytes(member)));
        }
    }
    for name in names {
        if let Ok(member) = member_path(dir, &name) {
            claim::sweep(&member, req, Locking::from_env());
        }
    }
}

/// The member name that a side file's name (without its leading `.`) starts with.
fn member_of_side_file(rest: &[u8]) -> Option<&[u8]> {
    let end = if rest.len() > 32 && rest[..32].iter().all(u8::is_ascii_hexdigit) {
        32
    } else {
        let k = rest.strip_prefix(b"slot.")?;
        "slot.".len() + k.iter().position(|&b| b == b'.')?
    };
    (rest.get(end) == Some(&b'.') && Name::of(&rest[..end]).is_some()).then(|| &rest[..end])
}

/// Polling without kernel locks backs off up to this pause.
pub(super) const POLL_MAX: Duration = Duration::from_millis(250);

/// `req` with its deadline cut to at most `every` from now: a slice of a wait.
pub(super) fn sliced<'a>(req: &Request<'a>, every: Duration) -> Request<'a> {
    let now = std::time::Instant::now();
    let until = now.checked_add(every);
    let end = match (req.deadline.end(), until) {
        (Some(end), Some(until)) => Some(end.min(until)),
        (end, until) => end.or(until),
    };
    Request {
        deadline: Deadline {
            began: req.deadline.began,
            end,
        },
        inherit: req.inherit,
        ..step_request(req, req.report)
    }
}

/// Nesting (SPEC §4.6, §9): the record of the member of LOCK that an ancestor holds,
/// if any.
pub(super) fn held_by_ancestor(lock: &LockPath, inherited: &Inherited) -> Result<Option<Record>> {
    let solo = lock.solo();
    if let Found::Record(theirs) = open_record(&solo.path).map_err(|err| read_error(solo.shown(), err))? {
        if inherited.holds(&theirs.record.nonce) {
            return Ok(Some(theirs.record));
        }
    }
    let dir = lock.members_dir();
    let Some(members) = list(&dir)? else {
        return Ok(None);
    };
    for (name, _) in members {
        if let Some(record) = read(&dir, &name).map_err(|err| cannot("read", escape::path(&dir), &err))? {
            if inherited.holds(&record.nonce) {
                return Ok(Some(record));
            }
        }
    }
    Ok(None)
}

/// An exclusive xlock inside the command of a shared (or slot) holder of the same
/// LOCK would wait for its own ancestor forever: exit 125 instead (SPEC §9). Inside a
/// slot holder it is the kind mismatch, naming both kinds: there is no shared lock to
/// upgrade (the message used to say "cannot upgrade a shared lock" of `--slots N`).
pub(super) fn refuse_upgrade(lock: &LockPath, inherited: &Inherited) -> Result<()> {
    match held_by_ancestor(lock, inherited)? {
        None => Ok(()),
        Some(ancestor) if ancestor.mode.as_deref() != Some(Mode::SHARED) => {
            Err(mismatch(lock, "an exclusive lock", &ancestor))
        }
        Some(ancestor) => Err(anyhow!(
            "cannot upgrade a shared lock to an exclusive one: an ancestor (pid {}) holds {} with {}, \
             and an exclusive xlock would wait for it forever; take the exclusive lock in place of the shared one, \
             or run this command with {} too",
            ancestor.pid,
            lock.shown(),
            kind_of(&ancestor),
            kind_of(&ancestor)
        )),
    }
}

/// `--status` of a LOCK (SPEC §2, §9): every member, and LOCK's own holder, which is
/// an exclusive holder, or, while members hold it, the one next in line (a writer
/// waiting out the readers, a slot waiter, a shared acquirer being admitted).
pub(super) fn inspect(lock: &LockPath, me: &Identity, stale_after: Duration) -> Result<State> {
    let at_lock = inspect::inspect(lock, me, stale_after)?;
    let mut holders = Vec::new();
    let solo = lock.solo();
    match inspect::inspect(&solo, me, stale_after)? {
        State::Holders(found) => holders.extend(found),
        // Slot 0, and the first shared holder's place, that no one can ever free: what
        // shared and slot acquirers stop at (exit 125), said while LOCK is free. An
        // exclusive holder it does not block: said as it is.
        State::Foreign(why) if matches!(at_lock, State::Free) => {
            return Ok(State::Foreign(format!("{}: {why}", escape::path(&solo.path))))
        }
        State::Foreign(_) => {}
        State::Free | State::HeldByOther(..) => {}
    }
    let dir = lock.members_dir();
    let mut members = list(&dir)?.unwrap_or_default();
    members.sort_by_key(|(name, kind)| (*kind != Name::Shared, slot_of(*kind), name.clone()));
    for (name, kind) in members {
        let member = member_path(&dir, &name)?;
        match inspect::inspect(&member, me, stale_after) {
            Ok(State::Holders(found)) => holders.extend(found),
            // A slot no one can ever free: what acquirers stop at (exit 125), say it.
            Ok(State::Foreign(why)) if matches!(kind, Name::Slot(_)) => {
                return Ok(State::Foreign(format!("{}: {why}", escape::path(&member.path))))
            }
            // Gone a moment ago, or not xlock's.
            Ok(State::Free | State::Foreign(_) | State::HeldByOther(..)) => {}
            Err(_) if !dir.is_dir() => {}
            Err(err) => return Err(err),
        }
    }
    if holders.is_empty() {
        return Ok(at_lock);
    }
    match at_lock {
        State::Holders(gate) => holders.extend(gate.into_iter().map(|holder| match holder.state {
            HolderState::Held { .. } => Holder {
                record: holder.record,
                state: HolderState::NextInLine,
            },
            state => Holder {
                record: holder.record,
                state,
            },
        })),
        // A file lock's inspect never says HeldByOther (that is etcd's).
        State::Free | State::Foreign(_) | State::HeldByOther(..) => {}
    }
    Ok(State::Holders(holders))
}

fn slot_of(kind: Name) -> u32 {
    match kind {
        Name::Shared => 0,
        Name::Slot(k) => k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_recognised_exactly() {
        assert_eq!(Name::of(b"0123456789abcdef0123456789abcdef"), Some(Name::Shared));
        assert_eq!(Name::of(b"slot.0"), Some(Name::Slot(0)));
        assert_eq!(Name::of(b"slot.17"), Some(Name::Slot(17)));
        for other in [
            &b"slot."[..],
            b"slot.01",
            b"slot.-1",
            b"slot.99999999999",
            b".slot.0.0123456789abcdef0123456789abcdef.xlock-tmp",
            b"0123456789abcdef0123456789abcde",
            b"notes.txt",
        ] {
            assert_eq!(Name::of(other), None, "{}", String::from_utf8_lossy(other));
        }
        assert_eq!(slot_name(3), "slot.3");
    }

    #[test]
    fn side_files_name_their_member() {
        let of = |name: &str| member_of_side_file(name.as_bytes()).map(|m| String::from_utf8_lossy(m).into_owned());
        let nonce = "0123456789abcdef0123456789abcdef";
        assert_eq!(of(&format!("{nonce}.{nonce}.xlock-tmp")).as_deref(), Some(nonce));
        assert_eq!(
            of(&format!("slot.12.{nonce}-3.xlock-claim")).as_deref(),
            Some("slot.12")
        );
        assert_eq!(of(&format!("slot.{nonce}.xlock-tmp")), None);
        assert_eq!(of("slot.1"), None);
        assert_eq!(of(nonce), None);
    }
}
