//! The lock (SPEC §4, §9, §10): the one seam through which a kind of lock plugs into
//! xlock's flow, the exclusive file lock, and shared locks and slots built on it.
//!
//! `lib.rs` runs the same flow for every kind: [`Kind::nested`] (is an ancestor the
//! holder?), [`Kind::acquire`], then, while the command runs, the held lock's
//! [`Guard`] (heartbeat or lease renewal, loss), then [`Holding::release`]; `--status`
//! is [`Kind::inspect`]. A kind is a type, not a trait object: `lib.rs` is generic
//! over it, so the uncontended path of the file lock pays no dynamic dispatch.
//!
//! What each kind does for each method:
//!
//! | | exclusive file (SPEC §4, [`FileLock`]) | shared / slots (§9, [`SharedLock`]) | etcd (§10, [`etcd::EtcdLock`]) |
//! |---|---|---|---|
//! | `name` (XLOCK_PATH) | absolute LOCK | absolute LOCK | the `etcd://…/NAME` URL |
//! | `acquire` | record file linked at LOCK, process lock (flock) + command lock (OFD); wait on the holder's kernel locks, take a stale one over; then drain the members (the solo record `.NAME.xlock-solo`, then the members directory, if there): wait out every shared holder while holding LOCK (writer preference) | a member record (an exclusive file lock of its own): uncontended, the solo record `.NAME.xlock-solo` next to LOCK (slot 0), at once, then LOCK must be absent; else holding LOCK as the gate, the solo record if free, or one in `.NAME.xlock-members/` named by the nonce (shared) or `slot.K` (lowest free slot; all busy: keep the gate, a sentry per busy slot), then the gate released (its file closed once the command has started) | lease (TTL = `--stale-after`, renewed on a thread from the start), our record put at our key `NAME/<lease hex>`, the Lock RPC with the lease on a thread while this one keeps deadline, signals and notice; check own key and lease after (etcd 11456) |
//! | `nested` | the record at LOCK carries an inherited nonce; a shared member's does: error "cannot upgrade", a slot member's: the kind mismatch | a member's record (same kind) or LOCK's (exclusive ancestor, shared request) does; another kind: error | the key's value (a record) carries an inherited nonce |
//! | `inspect` | [`State::Holders`] with one holder (or free / stale / foreign); with members: as for shared | every member, one [`Holder`] each (mode or slot), and LOCK's holder as [`HolderState::NextInLine`] | the key's holder, waiters in create-revision order ([`HolderState::Waiting`]); a holder that is not xlock (`etcdctl lock`): [`State::HeldByOther`] |
//! | `identity` (XLOCK_PATH, XLOCK_HELD) | absolute LOCK + nonce | absolute LOCK + this holder's nonce | the `etcd://…/NAME` URL + nonce |
//! | `env` | nothing | `XLOCK_SLOT` = slot (slots only) | `XLOCK_TOKEN` = the key's create revision |
//! | `inherit` | the command lock's descriptor (none with `--close`) | this holder's command lock | none (the lease cannot be inherited) |
//! | `Guard::next_check` | last beat + `--stale-after`/3 | the same, per holder record | last acknowledged renewal's send time + TTL/3 |
//! | `Guard::check` | verify inode + nonce, bump mtime; an I/O error is not loss | the same on this holder's record | lease keepalive; `Lost` with `kill_by` ≈ 1 s before lease expiry when a third or less of the TTL remains unacknowledged, at once on TTL 0 |
//! | `release` | verify inode + nonce; close our copy of the command lock's descriptor; if the command's tree still holds it (F_OFD_GETLK), leave LOCK to them ([`Released::LeftToCommand`]), else unlink, close ([`Released::Removed`]) | the same on the member record, then `rmdir` of the members directory if empty and LOCK is absent (else its holder removes it); never takes the gate | unlock, revoke the lease |
//!
//! [`Released`] has a third outcome: the lock left to the command's tree (SPEC §4.5,
//! issue 13); a kind without a command lock (etcd) never leaves it.
//!
//! The files of the exclusive file lock, one concern each:
//! - [`path`]: LOCK resolved once; the temp and claim names next to it; file identity.
//! - [`candidate`]: our file before it is at LOCK: create, link, take over, verify (§4.3 steps 1, 2, 4, 5).
//! - [`theirs`]: opening and validating what is at LOCK, and judging its holder (§4.1, §4.3 step 3).
//! - [`kernel`]: the process lock (flock) and the command lock (OFD), and blocking on them (§4.2, §4.3 step 3–4).
//! - [`wait`]: waiting out a holder: kernel locks, then the evidence table, pauses and backoff (§4.3).
//! - [`claim`]: without kernel locks, the claims that arbitrate a take-over; the sweep of orphans (§4.3).
//! - [`held`]: the held lock: heartbeat, loss, release (§4.4, §4.5).
//! - [`inspect`]: `--status`'s look at LOCK (§2).
//! - [`file`]: the kind itself and its acquire loop (§4.3).
//!
//! Shared locks and slots (§9), on top of those (docs/design.md, "Shared locks and slots"):
//! - [`shared`]: the kind [`SharedLock`] and its held [`shared::Member`]: LOCK as the gate, admission.
//! - [`members`]: the members (the solo record and the directory): sweeps, one kind per LOCK, nesting, `--status`.
//! - [`drain`]: the exclusive lock's last step: wait out the shared holders while holding LOCK (writer preference).
//! - [`slots`]: choosing a slot; waiting for any of N.
//! - [`sentry`]: a slot waiter's sentries, child processes blocked on busy slots' kernel locks.
//!
//! The etcd lock is [`etcd`], a directory of its own (§10, issue 15).

mod candidate;
mod claim;
mod drain;
pub mod etcd;
mod file;
mod held;
mod inspect;
mod kernel;
mod members;
mod path;
mod sentry;
mod shared;
mod slots;
mod theirs;
mod wait;

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

pub use self::file::FileLock;
pub use self::shared::SharedLock;
use crate::liveness::{Identity, Stale};
use crate::nesting::Inherited;
use crate::record::Record;
use crate::report::Reporter;
use crate::signals::Signals;
use crate::supervise::Guard;

/// Forces named temp files instead of O_TMPFILE (for tests of that path).
pub const NAMED_TEMP_ENV: &str = "XLOCK_NAMED_TEMP";
/// Forces the no-locks mode, as on a file system that refuses locks (`=1`).
pub const NO_KERNEL_LOCKS_ENV: &str = "XLOCK_NO_KERNEL_LOCKS";

fn env_is_1(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

/// A kind of lock: how one LOCK is acquired, found held by an ancestor, and inspected.
pub trait Kind {
    /// The lock once this process holds it.
    type Held: Holding;

    /// The lock's absolute path (etcd: its URL), for `XLOCK_PATH`.
    fn name(&self) -> &Path;

    /// Acquires the lock for `record`'s holder (this xlock), waiting as `req` says.
    fn acquire(&self, req: &Request<'_>, record: Record) -> Result<Acquired<Self::Held>>;

    /// The record of an ancestor's acquisition (a nonce in `inherited`) that holds the
    /// lock now, if any: then the command runs at once (SPEC §4.6).
    fn nested(&self, inherited: &Inherited) -> Result<Option<Record>>;

    /// What `--status` says of the lock, changing nothing.
    fn inspect(&self, me: &Identity, stale_after: Duration) -> Result<State>;
}

/// A lock this process holds, while its command runs. Its [`Guard`] is the hold-time
/// check (heartbeat, lease renewal) that supervision runs.
pub trait Holding: Guard {
    /// For `XLOCK_PATH` and `XLOCK_HELD`: the lock's absolute path (or name) and this
    /// acquisition's nonce.
    fn identity(&self) -> (&Path, &str);

    /// A variable the command gets besides `XLOCK_PATH`/`XLOCK_HELD`
    /// (`XLOCK_SLOT`, `XLOCK_TOKEN`); none for the exclusive file lock.
    fn env(&self) -> Option<(&'static str, OsString)>;

    /// The descriptor the command inherits, if any (the command lock).
    fn inherit(&self) -> Option<BorrowedFd<'_>>;

    /// Releases the lock (SPEC §4.5) once the command has ended: removed, or left to
    /// the processes of the command's tree that still hold it (named if `name_them`).
    /// A lock that is no longer ours is never removed.
    fn release(self, name_them: bool) -> Result<Released>;
}

/// Processes, as messages name them: (PID, name).
pub type Processes = Vec<(i32, String)>;

/// How a release ended (the `Err` side: it could not be, and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Verified ours and removed.
    Removed,
    /// It had been found lost while the command ran (and said so then): nothing of
    /// ours was left to remove.
    WasLost,
    /// Processes of the command's tree still hold the lock (a step still running
    /// after its shell was killed, a background job): it is theirs now, and stays
    /// until the last of them has ended (SPEC §4.5). Named if asked for and found.
    LeftToCommand(Processes),
}

/// What the command inherits of the lock (`--close`: nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inherit {
    /// The command lock: the lock stays held while the command's tree has it.
    CommandLock,
    /// Nothing: the lock is held exactly while xlock runs.
    Nothing,
}

/// When waiting ends, and when it began (the time a "timed out after" message counts).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    began: Instant,
    end: Option<Instant>,
}

impl Deadline {
    /// `None`: wait forever; `Some(ZERO)`: try once.
    pub fn after(wait: Option<Duration>) -> Deadline {
        let began = Instant::now();
        Deadline {
            began,
            end: wait.and_then(|d| began.checked_add(d)),
        }
    }

    /// How long since the wait began.
    pub fn elapsed(self) -> Duration {
        self.began.elapsed()
    }

    fn end(self) -> Option<Instant> {
        self.end
    }

    fn remaining(self) -> Option<Duration> {
        self.end.map(|end| end.saturating_duration_since(Instant::now()))
    }

    fn passed(self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }
}

/// What [`Kind::acquire`] came to.
// Returned once per acquire: boxing the record would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Acquired<H> {
    Held(H),
    /// The deadline passed: the holder's record, if one was read, and the processes
    /// of its command that hold the lock once its xlock has ended (empty while its
    /// xlock runs).
    Busy(Option<Record>, Processes),
    /// A signal ended the wait; nothing was left behind.
    Interrupted(i32),
}

/// How to acquire, whatever the kind.
pub struct Request<'a> {
    pub deadline: Deadline,
    pub inherit: Inherit,
    pub me: &'a Identity,
    pub signals: &'a Signals,
    pub report: &'a Reporter,
    /// Another host's lock is stale once its heartbeat is this old (etcd: the lease TTL).
    pub stale_after: Duration,
}

/// What `--status` reports of a lock (SPEC §2, §9).
#[derive(Debug)]
pub enum State {
    Free,
    /// Its holders: one for the exclusive file lock; every holder for shared locks and
    /// slots.
    Holders(Vec<Holder>),
    /// Not a lock record; why.
    Foreign(String),
    /// Held by a client that is not xlock (etcd: `etcdctl lock`, another program using
    /// etcd's lock API), described; then the xlock waiters in line.
    HeldByOther(String, Vec<Holder>),
}

/// One holder of a lock, as `--status` sees it.
#[derive(Debug)]
pub struct Holder {
    pub record: Record,
    pub state: HolderState,
}

#[derive(Debug)]
pub enum HolderState {
    /// Held: by a live xlock, or, if `orphans` is not empty, by the command tree of an
    /// xlock that has ended (these processes, PID and name, still have the file open).
    Held { orphans: Vec<(i32, String)> },
    /// Next in line, holding LOCK (the gate) while members hold the lock: a writer
    /// waiting out the shared holders, a slot waiter, or a shared acquirer being
    /// admitted (SPEC §9).
    NextInLine,
    /// The holder is gone; the next acquirer takes the lock over, unless `blocked`
    /// says why this user cannot (another user's file in a sticky directory).
    Stale { why: Stale, blocked: Option<String> },
    /// Waiting for the lock, `position`-th in line after the holder (etcd: queued by
    /// create revision).
    Waiting { position: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_too_far_away_mean_forever() {
        assert_eq!(Deadline::after(None).end(), None);
        assert_eq!(Deadline::after(Some(Duration::MAX)).end(), None);
        assert_eq!(
            Deadline::after(Some(Duration::from_secs(10_000_000_000_000_000_000))).end(),
            None
        );
        assert!(Deadline::after(Some(Duration::ZERO)).passed());
        let soon = Deadline::after(Some(Duration::from_secs(60)));
        assert!(!soon.passed() && soon.remaining().unwrap() <= Duration::from_secs(60));
    }
}
