//! `--status`'s look at a file lock (SPEC §2, §6): free, held (by a live xlock, or by
//! the command tree of one that died), stale, or foreign, changing nothing.
//!
//! It may hold a dead holder's flock for a moment (there is no other way to ask), and
//! only asks about the command lock (F_OFD_GETLK). A busy flock whose recorded xlock
//! has ended is a waiter's: the command lock and the record decide then.

use std::io;
use std::time::Duration;

use anyhow::{bail, Result};

use super::kernel::{command_lock_held, KernelLock};
use super::path::LockPath;
use super::theirs::{open_record, Found};
use super::{Holder, HolderState, State};
use crate::error::{cannot, locks_unsupported, read_error};
use crate::liveness::{self, Identity, Locking, Verdict};

/// Inspects LOCK without changing it.
pub(super) fn inspect(lock: &LockPath, me: &Identity, stale_after: Duration) -> Result<State> {
    if !lock.dir.is_dir() {
        bail!(
            "cannot inspect {}: the directory {} does not exist",
            lock.shown(),
            crate::escape::path(&lock.dir)
        );
    }
    let theirs = match open_record(&lock.path).map_err(|err| read_error(lock.shown(), err))? {
        Found::Vanished => return Ok(State::Free),
        Found::Foreign(why) => return Ok(State::Foreign(why)),
        Found::Record(theirs) => theirs,
    };
    let lock_error = |err: io::Error| cannot("inspect", lock.shown(), &err);
    let held = |orphans| {
        State::Holders(vec![Holder {
            record: theirs.record.clone(),
            state: HolderState::Held { orphans },
        }])
    };
    let mut locking = Locking::from_env();
    if locking == Locking::Kernel {
        match KernelLock::Process.take(&theirs.file, false) {
            // Busy: the holder's flock, unless its xlock has ended; then it is a
            // waiter's (the exclusive waiter's, a slot waiter's sentry), which got it
            // and now waits for the command lock that the command's tree keeps.
            Ok(false) if !liveness::holder_gone(&theirs.record, me) => return Ok(held(Vec::new())),
            Ok(_) => {}
            Err(err) if locks_unsupported(&err) => locking = Locking::RecordOnly,
            Err(err) => return Err(lock_error(err)),
        }
    }
    if !theirs.at(&lock.path).map_err(lock_error)? {
        return Ok(State::Free); // released a moment ago
    }
    if locking == Locking::Kernel && command_lock_held(&theirs.file).map_err(lock_error)? {
        return Ok(held(liveness::processes_writing(theirs.file_id)));
    }
    Ok(match theirs.verdict(me, locking, stale_after).map_err(lock_error)? {
        Verdict::Alive(liveness::Alive::Command(orphans)) => held(orphans),
        Verdict::Alive(_) => held(Vec::new()),
        Verdict::Stale(why) => State::Holders(vec![Holder {
            record: theirs.record.clone(),
            state: HolderState::Stale {
                why,
                blocked: lock.sticky_block(),
            },
        }]),
    })
}
