//! Errors and their wording (SPEC §3, §6): every error xlock prints names the path or
//! value at fault and says what to do. The reasons for I/O errors and the messages of
//! the lock protocol's failures are built here, in one place, so the same failure reads
//! the same way wherever it happens.
//!
//! A leaf module: it knows nothing of locks or records, only paths (as shown to the
//! user, through `escape`) and errors. Errors are `anyhow::Error`s, printed once at the top as
//! `xlock: <message>` (see `report::error`).

use std::fmt::Display;
use std::io;
use std::path::Path;

use anyhow::anyhow;
use nix::libc;

/// An I/O error as words a user can act on: the system's reason, and what to do for
/// the errors that have a general remedy.
pub fn io_reason(err: &io::Error) -> String {
    let Some(errno) = err.raw_os_error() else {
        return err.to_string();
    };
    let reason = nix::errno::Errno::from_raw(errno).desc();
    let remedy = match errno {
        libc::EMFILE | libc::ENFILE => "; raise the open-file limit (ulimit -n)",
        libc::ENOSPC | libc::EDQUOT => "; free some space",
        libc::EROFS => "; use a writable file system",
        libc::ENOMEM | libc::EAGAIN => "; too many processes or not enough memory",
        _ => "",
    };
    format!("{reason}{remedy}")
}

/// What xlock prints on stdout (`--help`, `--version`, `--status`) could not be
/// written (a full disk, a closed pipe with SIGPIPE ignored).
pub fn stdout_error(err: &io::Error) -> String {
    format!("cannot write to standard output: {}", io_reason(err))
}

/// Whether a lock call failed because the file system has no locks at all (some NFS,
/// SMB and FUSE mounts).
pub fn locks_unsupported(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS))
}

/// An error of creating our lock file `lock` in `dir`, with what to do about it.
pub fn create_error(lock: impl Display, dir: &Path, err: io::Error) -> anyhow::Error {
    let shown = crate::escape::path(dir);
    let reason = match err.raw_os_error() {
        // ENOENT also comes from file systems that refuse new files (/proc): say
        // "does not exist" only when it does not.
        Some(libc::ENOENT) if !dir.is_dir() => format!("the directory {shown} does not exist; create it first"),
        Some(libc::ENOENT) => format!(
            "the directory {shown} exists but does not allow creating files there (a virtual file system such as \
             /proc or /sys?); put LOCK in a directory on a disk or a tmpfs, e.g. /run/lock or /tmp"
        ),
        Some(libc::ENOTDIR) => format!("{shown} is not a directory; check the LOCK path"),
        Some(libc::EACCES | libc::EPERM) => {
            format!("no permission to create files in {shown}; use a LOCK path in a directory you can write")
        }
        Some(libc::EROFS) => format!("{shown} is on a read-only file system; put LOCK on a writable one"),
        Some(libc::ENOSPC | libc::EDQUOT) => format!("no room for the lock record in {shown}; free some space"),
        _ => io_reason(&err),
    };
    anyhow!("cannot create the lock file {lock}: {reason}")
}

/// Why a stale lock file cannot be replaced by this user: it belongs to `who` (a user
/// name and uid, or a uid), and its directory `dir` is sticky, where only the file's
/// owner or root may rename over or remove it (SPEC §6).
pub fn sticky_reason(lock: impl Display, dir: &Path, who: &str) -> String {
    format!(
        "its file belongs to {who}, and {} is a sticky directory (like /tmp or /run/lock), where only \
         the file's owner or root may replace or remove it; ask its owner or root to remove {lock}. For a lock \
         that several users share, use a group-owned setgid directory without the sticky bit, e.g. \
         'install -d -m 2775 -g GROUP /var/lock/myapp'",
        dir.display()
    )
}

/// A stale lock that this user may not replace, and why (see [`sticky_reason`]).
pub fn takeover_refused(lock: impl Display, why: &str) -> anyhow::Error {
    anyhow!("cannot take over the stale lock {lock}: {why}")
}

/// A LOCK whose file name (`len` bytes) leaves no room for the side names a take-over
/// makes next to it (`extra` bytes more) within the file system's `name_max`.
pub fn name_too_long(lock: impl Display, len: usize, extra: usize, name_max: usize) -> anyhow::Error {
    anyhow!(
        "cannot use {lock} as LOCK: its file name is {len} bytes long, and xlock allows at most {}, because \
         to take the lock over after a crash it makes files next to it whose names are up to {extra} bytes longer \
         (..NAME.xlock-solo.<nonce>-<n>.xlock-claim), which must fit the file system's limit of {name_max} bytes; use a shorter file name",
        name_max - extra
    )
}

/// An error of reading another holder's lock file, with what to do about it.
pub fn read_error(lock: impl Display, err: io::Error) -> anyhow::Error {
    let reason = match err.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => "permission denied; every user of a lock must be able to read its \
             file: keep lock files readable (umask 022) or use a directory per user"
            .to_owned(),
        _ => io_reason(&err),
    };
    anyhow!("cannot read the lock file {lock}: {reason}")
}

/// What is at LOCK is not a lock file (SPEC §4.1): left untouched, and why.
pub fn foreign(lock: impl Display, why: &str) -> anyhow::Error {
    anyhow!(
        "{lock}: {why}, not an xlock lock file; xlock leaves it untouched. Use another LOCK path, \
         or remove it if it is a leftover of another tool"
    )
}

/// A kernel lock call on `lock` failed.
pub fn lock_error(lock: impl Display, err: &io::Error) -> anyhow::Error {
    anyhow!("cannot lock {lock}: {}", io_reason(err))
}

/// `doing` (e.g. "inspect", "wait for") `lock` failed.
pub fn cannot(doing: &str, lock: impl Display, err: &io::Error) -> anyhow::Error {
    anyhow!("cannot {doing} {lock}: {}", io_reason(err))
}

/// An error reading the evidence xlock needs from /proc, with what to do about it.
pub fn proc_error(path: &str, err: &io::Error) -> anyhow::Error {
    let reason = match err.raw_os_error() {
        Some(libc::ENOENT) => "not found; xlock needs /proc: mount it (mount -t proc proc /proc)".to_owned(),
        _ => io_reason(err),
    };
    anyhow!("cannot read {path}: {reason}")
}

/// The lock is no longer ours at release: never removed (SPEC §4.5).
pub fn lost_at_release(lock: impl Display) -> anyhow::Error {
    anyhow!(
        "the lock file {lock} was removed or replaced while the lock was held, so another \
         process may have run at the same time; left it as it is. Check what removes files there (a /tmp cleaner?)"
    )
}

/// What a heartbeat that found the lock lost says (SPEC §4.4).
pub fn lost_while_running(lock: impl Display) -> String {
    format!(
        "lost the lock {lock}: its file was removed or replaced while the command ran, so another process \
         may run at the same time; sending SIGTERM to the command and every process it started. Check what removes files there (a /tmp cleaner?)"
    )
}
