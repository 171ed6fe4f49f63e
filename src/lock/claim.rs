//! Without kernel locks (SPEC §4.3, last paragraphs): the claims that let exactly one
//! waiter take a stale lock over, and the sweep that removes orphaned side files (temp
//! files and claims whose creator died), in both modes.
//!
//! A claim is a hard link of the taker's own file, named after the stale record's
//! nonce: only one waiter can create it. The residual race (a claimer that stalls for
//! longer than `--stale-after` between its check and its rename) is documented in
//! docs/design.md.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use nix::libc;

use super::candidate::Candidate;
use super::path::{id_of, is_at, link_fd, LockPath, SideFile, CLAIM_SUFFIX};
use super::theirs::{open_record, Found, TheirFile};
use super::Request;
use crate::error::{create_error, read_error};
use crate::liveness::{Identity, Locking, Verdict};

/// No-locks take-over of `theirs` (SPEC §4.3): only the waiter that creates the claim
/// name for the stale record's nonce may replace it, by renaming that claim (a hard
/// link of its own file) over LOCK. A claimer that died leaves its claim; the next
/// waiter then claims one level up. `Ok(false)`: a live waiter claimed it first, or
/// the file left LOCK meanwhile.
pub(super) fn claim_stale(
    ours: &mut Candidate,
    theirs: &TheirFile,
    lock: &LockPath,
    req: &Request<'_>,
) -> Result<bool> {
    let create_error = |err: io::Error| create_error(lock.shown(), &lock.dir, err);
    let mut level = 0;
    let claim = loop {
        if level >= 1000 {
            bail!(
                "cannot take over the stale lock {}: 1000 claims on it were left by dead xlocks; remove the .*{CLAIM_SUFFIX} files in {}",
                lock.shown(),
                crate::escape::path(&lock.dir)
            );
        }
        let claim = lock.claim_name(&theirs.record.nonce, level);
        // Our file's mtime is a claimer's heartbeat for waiters on other hosts.
        ours.file.set_modified(SystemTime::now()).map_err(create_error)?;
        match link_fd(&ours.file, &claim) {
            Ok(()) => break claim,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(create_error(err)),
        }
        match open_record(&claim).map_err(|err| read_error(lock.shown(), err))? {
            Found::Vanished => continue, // its claimer gave up: try this level again
            Found::Record(claimer) => {
                if matches!(claimer.judge(lock, req, Locking::RecordOnly)?, Verdict::Alive(_)) {
                    return Ok(false);
                }
            }
            Found::Foreign(_) => {}
        }
        level += 1;
    };
    if !theirs.at(&lock.path).map_err(|err| read_error(lock.shown(), err))? {
        // Give the claim up, but keep a name: an O_TMPFILE once linked cannot be
        // linked again after its last name is gone. Our temp name is ours alone.
        if is_at(&claim, ours.file_id).unwrap_or(false) {
            if ours.temp.as_ref().is_none() {
                let temp = lock.temp_name(&ours.nonce);
                fs::rename(&claim, &temp).map_err(create_error)?;
                ours.temp.0 = Some(temp);
            } else {
                let _ = fs::remove_file(&claim);
            }
        }
        return Ok(false);
    }
    if let Err(err) = fs::rename(&claim, &lock.path) {
        // Not ours to replace (a sticky directory): leave no claim behind either.
        if is_at(&claim, ours.file_id).unwrap_or(false) {
            let _ = fs::remove_file(&claim);
        }
        return Err(lock.replace_error(err));
    }
    // The claims below ours were left by dead claimers of this record, now gone.
    for below in 0..level {
        let _ = fs::remove_file(lock.claim_name(&theirs.record.nonce, below));
    }
    Ok(true)
}

/// Removes this lock's orphaned temp and claim files: those whose creator died. With
/// kernel locks, a creator is alive while its file's flock is held; without, the
/// evidence table judges the record the file carries (a file still without a record
/// is left alone until it is older than `--stale-after`).
///
/// A claim matters while its stale record is at LOCK: one removed then could be made
/// again by a second claimer. So claims are removed only once their record is gone
/// from LOCK (for good: a record is at LOCK once), or by the taker of that record.
pub(super) fn sweep(lock: &LockPath, req: &Request<'_>, locking: Locking) {
    let Ok(entries) = fs::read_dir(&lock.dir) else { return };
    let at_lock = match open_record(&lock.path) {
        Ok(Found::Record(theirs)) => Some(theirs.record.nonce),
        _ => None,
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        match lock.side_file(name.as_bytes()) {
            None => continue,
            Some(SideFile::Claim { stale }) if at_lock.as_ref().is_some_and(|n| n.as_bytes() == stale) => continue,
            Some(_) => {}
        }
        sweep_one(&entry.path(), locking, req.me, req.stale_after, &mut || {});
    }
}

/// Removes the side file at `path` if its creator is dead. `judged` runs between the
/// judgement and the removal: a test's hook, to play a creator in that moment.
///
/// With kernel locks, the sweeper keeps the file's flock until the name is checked
/// and removed: a creator caught between `open(O_EXCL)` and `flock()` gets its flock
/// only after that, so its re-check of its name sees the truth (issue 13, item 6; the
/// first version dropped the flock first, and the sweep could remove a name that its
/// creator had just found to be its own).
fn sweep_one(path: &Path, locking: Locking, me: &Identity, stale_after: Duration, judged: &mut dyn FnMut()) {
    let mut flocked: Option<File> = None;
    let orphan = match locking {
        Locking::Kernel => {
            let Ok(file) = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(path)
            else {
                return;
            };
            match file.metadata() {
                Ok(meta) if meta.is_file() && file.try_lock().is_ok() => {
                    flocked = Some(file);
                    Some(id_of(&meta))
                }
                _ => None,
            }
        }
        Locking::RecordOnly => match open_record(path) {
            Ok(Found::Record(temp)) => match temp.verdict(me, Locking::RecordOnly, stale_after) {
                Ok(Verdict::Stale(_)) => Some(temp.file_id),
                _ => None,
            },
            Ok(Found::Foreign(_)) => fs::symlink_metadata(path)
                .ok()
                .filter(|meta| {
                    meta.is_file()
                        && meta
                            .modified()
                            .ok()
                            .and_then(|m| m.elapsed().ok())
                            .is_some_and(|age| age >= stale_after)
                })
                .map(|meta| id_of(&meta)),
            _ => None,
        },
    };
    judged();
    if let Some(id) = orphan {
        if is_at(path, id).unwrap_or(false) {
            let _ = fs::remove_file(path);
        }
    }
    drop(flocked); // only now may a creator get its flock and re-check its name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, item 6: a creator that takes its flock after the sweeper judged its
    /// file an orphan, and then finds its name, must be able to trust that name.
    #[test]
    fn a_sweep_never_removes_a_temp_file_whose_creator_holds_its_flock() {
        let dir = tempfile::tempdir().unwrap();
        let lock = LockPath::new(&dir.path().join("t.lock")).unwrap();
        let me = Identity::current().unwrap();
        // The creator, between open(O_EXCL) and flock(): its file is not locked yet.
        let temp = lock.temp_name("0123456789abcdef0123456789abcdef");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .unwrap();
        let id = id_of(&file.metadata().unwrap());
        let mut creator_trusts_its_name = false;
        sweep_one(&temp, Locking::Kernel, &me, Duration::from_secs(30), &mut || {
            // Between the sweeper's judgement and its removal, the creator takes its
            // flock and re-checks its name, as `Candidate::create_locked` does.
            if file.try_lock().is_ok() {
                creator_trusts_its_name = is_at(&temp, id).unwrap();
            }
        });
        if creator_trusts_its_name {
            assert!(
                is_at(&temp, id).unwrap(),
                "the sweep removed {} after its creator had taken its flock and found its name",
                temp.display()
            );
        } else {
            // The creator gets its flock only after the sweep, finds its name gone, and
            // starts again: the orphan (as judged) was swept.
            file.lock().unwrap();
            assert!(!temp.exists(), "an unlocked temp file was not swept");
        }
    }
}
