//! The exclusive lock's last step on a LOCK that shared or slot holders use (SPEC §9):
//! holding LOCK, the gate that shared acquirers must pass, the writer *drains* the
//! members (the solo record, then the members directory): it waits out every shared
//! holder on its kernel locks, takes crashed ones' records away, and stops at a live
//! holder of another kind (exit 125). Because it holds the gate while it drains, later
//! readers queue behind it: writer preference. What it leaves to do until its command
//! has started is [`Drained`].

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::candidate::TempFile;
use super::claim;
use super::file;
use super::held::Held;
use super::members::{
    dir_id, list, live_member, member_path, mismatch, remove_dir_if_empty, sliced, step_request, sweep_orphans,
    try_take, went, DirId, Name, POLL_MAX,
};
use super::path::LockPath;
use super::theirs::{open_record, Found};
use super::wait::{wait_out, Outcome, POLL_FIRST};
use super::{Acquired, Holding, Request};
use crate::error::{cannot, read_error};
use crate::liveness::Locking;
use crate::record::{self, Mode, Record};

/// The exclusive lock's last step (SPEC §9): holding LOCK, which shared acquirers
/// must pass through, wait out every shared holder, each on its kernel locks with the
/// same deadline and signals (`wait_out`, as for LOCK's own holder), taking a crashed
/// one's record away. The uncontended path pays one failed lookup of the directory.
/// On a timeout or a signal, LOCK is released again; a LOCK used with `--slots` is an
/// error.
pub(super) fn drain(lock: &LockPath, req: &Request<'_>, held: Held) -> Result<Acquired<Held>> {
    let step = req.report.for_step();
    let step_req = step_request(req, &step);
    let mut took_over = false;
    // The members' files we waited on, closed once the command has started.
    let mut left = Vec::new();
    let solo = lock.solo();
    let waited = match open_record(&solo.path) {
        Ok(Found::Vanished | Found::Foreign(_)) => Ok(None),
        Ok(Found::Record(theirs)) if theirs.record.mode.as_deref() != Some(Mode::SHARED) => {
            // A slot holder: another kind, unless it crashed (then it is removed).
            own_record(&held)
                .and_then(|ours| live_member(&solo, &step_req, &ours))
                .and_then(|alive| match alive {
                    Some(theirs) => Err(mismatch(lock, "an exclusive lock", &theirs)),
                    None => Ok(None),
                })
        }
        Ok(Found::Record(_)) => wait_for_member(&solo, None, &step_req, &held, &mut took_over, &mut left),
        Err(err) => Err(read_error(solo.shown(), err)),
    };
    match waited {
        Ok(None) => {}
        Ok(Some(stop)) => return give_up(held, Ok(stop)),
        Err(err) => return give_up(held, Err(err)),
    }
    if took_over || TempFile::from_env() == TempFile::Named || held.locking == Locking::RecordOnly {
        claim::sweep(&solo, &step_req, held.locking);
    }
    let dir = lock.members_dir();
    let members = match list(&dir) {
        Ok(None) => {
            if !left.is_empty() {
                *held.tidy.borrow_mut() = Some(Drained { dir: None, files: left });
            }
            return Ok(Acquired::Held(held));
        }
        Ok(Some(members)) => members,
        Err(err) => return give_up(held, Err(err)),
    };
    took_over = false;
    for (name, kind) in members {
        let outcome = match kind {
            // Another kind, unless its holder crashed (then it is removed).
            Name::Slot(_) => own_record(&held)
                .and_then(|ours| live_member(&member_path(&dir, &name)?, &step_req, &ours))
                .and_then(|alive| match alive {
                    Some(theirs) => Err(mismatch(lock, "an exclusive lock", &theirs)),
                    None => Ok(None),
                }),
            Name::Shared => match member_path(&dir, &name) {
                Ok(member) => wait_for_member(&member, Some(&dir), &step_req, &held, &mut took_over, &mut left),
                Err(err) => Err(err),
            },
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(stop)) => return give_up(held, Ok(stop)),
            Err(err) => return give_up(held, Err(err)),
        }
    }
    // Orphaned side files come from crashes, which a take-over shows (as for LOCK's
    // own, `file::acquire`); a named temp file's or a no-locks claimer's crash may
    // leave no other trace.
    if took_over || TempFile::from_env() == TempFile::Named || held.locking == Locking::RecordOnly {
        sweep_orphans(&dir, &step_req);
    }
    *held.tidy.borrow_mut() = Some(Drained {
        dir: Some(dir),
        files: left,
    });
    Ok(Acquired::Held(held))
}

/// What a writer's drain leaves to do once its command has started (`Held::tidy`),
/// off the way from the last reader's end to the writer's command:
/// - close the members' files it waited on: the last close of a file that its holder
///   unlinked evicts the inode (0.1–0.7 ms measured on ext4);
/// - remove the members directory if it is empty: the last reader removes it as it
///   leaves, and our `rmdir` would race its own (the loser waits for the winner).
///
/// Only the holder of LOCK (the gate) does this, so nobody joins in between but
/// through the gate-less path, which steps back while LOCK is there.
#[derive(Debug)]
pub(crate) struct Drained {
    /// `None`: only the solo member was there.
    dir: Option<PathBuf>,
    files: Vec<fs::File>,
}

impl Drained {
    pub(super) fn finish(self) {
        drop(self.files);
        if let Some(dir) = &self.dir {
            remove_dir_if_empty(dir);
        }
    }
}

/// Waits until shared member `member` (in the members directory `dir`, or the solo
/// member next to LOCK) has left, or has crashed and its record is removed;
/// `Ok(Some(..))` if the deadline or a signal ended the wait.
fn wait_for_member(
    member: &LockPath,
    dir: Option<&Path>,
    req: &Request<'_>,
    held: &Held,
    took_over: &mut bool,
    left: &mut Vec<fs::File>,
) -> Result<Option<Acquired<Held>>> {
    let went_away = |before: &Option<DirId>| dir.zip(before.as_ref()).is_some_and(|(dir, before)| went(dir, before));
    let mut every = POLL_FIRST;
    loop {
        let theirs = match open_record(&member.path).map_err(|err| read_error(member.shown(), err))? {
            Found::Record(theirs) => theirs,
            Found::Vanished | Found::Foreign(_) => return Ok(None),
        };
        let mut waited = false;
        // Without kernel locks, `wait_out` watches the member's process, but a member's
        // record may leave while its process lives on (a joiner that found LOCK taken
        // steps back to queue at the gate, which we hold: each would wait for the
        // other forever): wait in slices, looking at the record in between.
        let slice = match held.locking {
            Locking::Kernel => None,
            Locking::RecordOnly => Some(sliced(req, every)),
        };
        let outcome = wait_out(
            &theirs,
            member,
            slice.as_ref().unwrap_or(req),
            held.locking,
            &mut waited,
        );
        let outcome = match outcome? {
            Outcome::TimedOut if slice.is_some() && !req.deadline.passed() => {
                every = (every * 2).min(POLL_MAX);
                continue;
            }
            outcome => outcome,
        };
        req.report.done_waiting();
        match outcome {
            Outcome::Left => {
                // Bounded as a waiter's queue of released files: with many readers,
                // the first few hold most of the gain.
                if left.len() < file::Queue::MAX {
                    left.push(theirs.file);
                }
                return Ok(None);
            }
            // Behind a stopped waiter on a released file: look at the member again.
            Outcome::Requeue => continue,
            Outcome::Stale(_) => {
                // Its kernel locks are dropped with our descriptor; then its record is
                // taken over and removed by the member's own protocol.
                // Ours, as a shared member's: for the moment it is at the member's name,
                // a shared acquirer that looks at it (the solo member's, whose name does
                // not say its kind) must not take this LOCK for an exclusive one.
                let mut record = own_record(held)?;
                record.mode = Some(Mode::SHARED.into());
                drop(theirs);
                let before = dir.map(dir_id);
                match try_take(member, req, &record) {
                    Ok(Some(stale)) => {
                        *took_over = true;
                        stale.release(false)?;
                        return Ok(None);
                    }
                    Ok(None) => {}
                    Err(_) if went_away(&before) => return Ok(None),
                    Err(err) => return Err(err),
                }
            }
            stop @ (Outcome::TimedOut | Outcome::Interrupted(_)) => {
                return Ok(Some(stop.into_acquired(&theirs, member)))
            }
        }
    }
}

/// Releases LOCK (the gate) and returns `outcome`; an error of the release is said
/// after the outcome's own. A member that left while we held LOCK left the members
/// directory to us (`Member::release`): removed if it is empty.
pub(super) fn give_up<T>(held: Held, outcome: Result<T>) -> Result<T> {
    let dir = held.lock.members_dir();
    let released = held.release(false);
    remove_dir_if_empty(&dir);
    match (outcome, released) {
        (Ok(outcome), Ok(_)) => Ok(outcome),
        (Ok(_), Err(err)) => Err(err),
        (Err(err), _) => Err(err),
    }
}

/// The record in our own held file (read through our descriptor).
fn own_record(held: &Held) -> Result<Record> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; record::MAX_LEN + 1];
    let len = held
        .file
        .read_at(&mut bytes, 0)
        .map_err(|err| cannot("read back", held.lock.shown(), &err))?;
    Record::parse(&bytes[..len]).map_err(|why| anyhow!("cannot read back {}: {why}", held.lock.shown()))
}
