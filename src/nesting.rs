//! Nesting (SPEC §4.6): a command run under xlock may itself call `xlock` on the same
//! lock (a script that locks, called from a script that already holds the lock). The
//! inner xlock must run its command at once instead of waiting for its own ancestor.
//!
//! The command gets `XLOCK_PATH` (the absolute lock path) and `XLOCK_HELD`: one line
//! per lock its xlock ancestors hold, `NONCE PATH`, where PATH is written with `\\`
//! for a backslash and `\n` for a newline, so any path (any bytes) fits on its line
//! and every held lock is listed (SPEC §6). An inner xlock gets a free pass
//! only if the record now at LOCK carries one of those nonces: a nonce is unique to
//! one acquisition, so an entry left over from an earlier acquisition (a daemon that
//! outlived its lock) or made up by hand gives none.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// The absolute path of the lock the command runs under.
pub const PATH_ENV: &str = "XLOCK_PATH";
/// The locks held by the command's xlock ancestors, one `NONCE PATH` per line.
pub const HELD_ENV: &str = "XLOCK_HELD";

const NONCE_LEN: usize = 32;

/// The `XLOCK_HELD` entries this process inherited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inherited(Vec<Vec<u8>>);

impl Inherited {
    /// Reads `XLOCK_HELD` from the environment.
    pub fn from_env() -> Inherited {
        Inherited::parse(std::env::var_os(HELD_ENV).unwrap_or_default().as_bytes())
    }

    /// Keeps the well-formed lines (32 hex digits, a space, a path); drops the rest.
    fn parse(value: &[u8]) -> Inherited {
        let lines = value.split(|&b| b == b'\n').filter(|line| {
            line.len() > NONCE_LEN + 1 && line[..NONCE_LEN].iter().all(u8::is_ascii_hexdigit) && line[NONCE_LEN] == b' '
        });
        Inherited(lines.map(<[u8]>::to_vec).collect())
    }

    /// Whether no ancestor holds any lock (then no lock needs a look for nesting).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an ancestor holds the acquisition with this nonce.
    pub fn holds(&self, nonce: &str) -> bool {
        self.0.iter().any(|line| &line[..NONCE_LEN] == nonce.as_bytes())
    }

    /// The environment for the command of a lock at `path`, held with `nonce` (by
    /// this xlock, or by an ancestor when nested).
    pub fn child_env(&self, path: &Path, nonce: &str) -> [(&'static str, OsString); 2] {
        let mut held: Vec<Vec<u8>> = self.0.clone();
        if !held.iter().any(|line| &line[..NONCE_LEN] == nonce.as_bytes()) {
            let mut line = format!("{nonce} ").into_bytes();
            line.extend(escape(path.as_os_str().as_bytes()));
            held.push(line);
        }
        [
            (PATH_ENV, path.as_os_str().to_owned()),
            (HELD_ENV, OsString::from_vec(held.join(&b'\n'))),
        ]
    }
}

/// A path as written in `XLOCK_HELD`: `\\` for a backslash, `\n` for a newline, every
/// other byte as it is (non-UTF-8 too: the environment takes any byte but NUL).
fn escape(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &byte in path {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(byte),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn only_well_formed_entries_count() {
        let held = Inherited::parse(format!("{A} /tmp/a.lock\ngarbage\n{B}\nshort /x\n").as_bytes());
        assert!(held.holds(A));
        assert!(!held.holds(B), "an entry without a path is malformed");
        assert!(!Inherited::parse(b"").holds(A));
    }

    #[test]
    fn child_env_adds_our_entry_once() {
        let inherited = Inherited::parse(format!("{A} /tmp/a.lock").as_bytes());
        let [(path_name, path), (held_name, held)] = inherited.child_env(Path::new("/tmp/b.lock"), B);
        assert_eq!((path_name, held_name), (PATH_ENV, HELD_ENV));
        assert_eq!(path, "/tmp/b.lock");
        assert_eq!(held, OsString::from(format!("{A} /tmp/a.lock\n{B} /tmp/b.lock")));
        let reparsed = Inherited::parse(held.as_bytes());
        assert!(reparsed.holds(A) && reparsed.holds(B));
        // Nested on the ancestor's own lock: nothing new to add.
        let [_, (_, again)] = reparsed.child_env(Path::new("/tmp/b.lock"), B);
        assert_eq!(again, held);
    }

    #[test]
    fn every_path_is_listed_on_one_line() {
        let path = OsStr::from_bytes(b"/tmp/a\nb\\n\xff.lock");
        let [(_, raw), (_, held)] = Inherited::default().child_env(Path::new(path), A);
        assert_eq!(raw, path, "XLOCK_PATH is the path itself");
        let mut expected = format!("{A} ").into_bytes();
        expected.extend_from_slice(b"/tmp/a\\nb\\\\n\xff.lock");
        assert_eq!(held.as_bytes(), expected);
        assert!(Inherited::parse(held.as_bytes()).holds(A));
    }
}
