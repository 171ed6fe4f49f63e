//! LOCK resolved once, the names xlock makes next to it, and file identity (SPEC §4.3).
//!
//! Next to LOCK live only xlock's own side files, recognised exactly by their names:
//! temp files (`.NAME.NONCE.xlock-tmp`, before a file is linked to LOCK, or while it
//! is renamed over a stale one) and, without kernel locks, claims
//! (`.NAME.STALE-LEVEL.xlock-claim`) on a stale record. A file is told apart from
//! another by its (device, inode).
//!
//! Those names are up to [`SIDE_NAME_EXTRA`] bytes longer than LOCK's own file name,
//! so a name that leaves no room for them is refused up front (SPEC §6), not after the
//! first crash. In a sticky directory, a stale lock file of another user cannot be
//! replaced; [`LockPath::sticky_block`] says so, for the take-over and for `--status`.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{AtFlags, AT_FDCWD};
use nix::libc;

use crate::error::{create_error, name_too_long, sticky_reason, takeover_refused};

/// Suffix of the temporary names in LOCK's directory.
const TEMP_SUFFIX: &str = ".xlock-tmp";
/// Suffix of the directory of a shared or slot lock's holder records (SPEC §9).
const MEMBERS_SUFFIX: &str = ".xlock-members";
/// Suffix of the record of a shared or slot lock's holder that joined alone (SPEC §9:
/// the first shared holder, or slot 0), next to LOCK rather than in the directory.
const SOLO_SUFFIX: &str = ".xlock-solo";
/// Suffix of the claim names of a no-locks take-over.
pub(super) const CLAIM_SUFFIX: &str = ".xlock-claim";
/// The longest file name Linux file systems take (NAME_MAX).
const NAME_MAX: usize = 255;
/// How many bytes a claim's name adds to the name of the file it claims:
/// `.NAME.<32 hex digits>-999.xlock-claim` (claims stop at level 999); a temp name,
/// `.NAME.<nonce>.xlock-tmp`, adds less.
const CLAIM_EXTRA: usize = ".".len() + ".".len() + 32 + "-999".len() + CLAIM_SUFFIX.len();
/// How many bytes the longest side name adds to LOCK's file name: a claim on the solo
/// member's record, `..NAME.xlock-solo.<32 hex digits>-999.xlock-claim`.
const SIDE_NAME_EXTRA: usize = ".".len() + SOLO_SUFFIX.len() + CLAIM_EXTRA;
// The members directory, `.NAME.xlock-members`, is shorter.
const _: () = assert!(".".len() + MEMBERS_SUFFIX.len() <= SIDE_NAME_EXTRA);
/// The longest LOCK file name whose side names all fit in [`NAME_MAX`].
pub const MAX_NAME_LEN: usize = NAME_MAX - SIDE_NAME_EXTRA;

/// A file's (device, inode).
pub(super) type FileId = (u64, u64);

/// LOCK, resolved once.
#[derive(Debug, Clone)]
pub struct LockPath {
    /// As the user gave it, for messages.
    pub given: PathBuf,
    /// Absolute.
    pub path: PathBuf,
    pub(super) dir: PathBuf,
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
        if name.len() > MAX_NAME_LEN {
            return Err(name_too_long(given.display(), name.len(), SIDE_NAME_EXTRA, NAME_MAX));
        }
        Ok(LockPath {
            given: given.to_path_buf(),
            path,
            dir,
            name,
        })
    }

    pub(super) fn temp_name(&self, nonce: &str) -> PathBuf {
        let mut name = OsString::from(".");
        name.push(&self.name);
        name.push(format!(".{nonce}{TEMP_SUFFIX}"));
        self.dir.join(name)
    }

    /// The directory of a shared or slot lock's holder records, `.NAME.xlock-members`
    /// next to LOCK (SPEC §9, `members.rs`).
    pub(super) fn members_dir(&self) -> PathBuf {
        let mut name = OsString::from(".");
        name.push(&self.name);
        name.push(MEMBERS_SUFFIX);
        self.dir.join(name)
    }

    /// The record of the shared or slot holder that joined alone, `.NAME.xlock-solo`
    /// next to LOCK (SPEC §9, `members.rs`): an uncontended `--shared` or `--slots`
    /// run makes no directory. Its own side names fit NAME_MAX by [`MAX_NAME_LEN`].
    pub(super) fn solo(&self) -> LockPath {
        let mut name = OsString::from(".");
        name.push(&self.name);
        name.push(SOLO_SUFFIX);
        LockPath {
            given: self.given.with_file_name(&name),
            path: self.dir.join(&name),
            dir: self.dir.clone(),
            name,
        }
    }

    /// The name of the `level`th claim on the stale record with nonce `stale`.
    pub(super) fn claim_name(&self, stale: &str, level: u32) -> PathBuf {
        let mut name = OsString::from(".");
        name.push(&self.name);
        name.push(format!(".{stale}-{level}{CLAIM_SUFFIX}"));
        self.dir.join(name)
    }

    /// What a directory entry is, if it is one of this lock's temporary or claim names.
    pub(super) fn side_file<'e>(&self, entry: &'e [u8]) -> Option<SideFile<'e>> {
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

    /// LOCK as the user gave it, for messages (escaped: [`crate::escape::path`]).
    pub(super) fn shown(&self) -> String {
        crate::escape::path(&self.given)
    }

    /// An error of replacing the stale file at LOCK with ours (`rename()` over it).
    pub(super) fn replace_error(&self, err: io::Error) -> anyhow::Error {
        if matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
            if let Some(why) = self.sticky_block() {
                return takeover_refused(self.shown(), &why);
            }
        }
        create_error(self.shown(), &self.dir, err)
    }

    /// Why this user cannot replace or remove the file at LOCK, if that is so because
    /// LOCK's directory is sticky (as /tmp and /run/lock are) and the file is another
    /// user's: there only the file's owner, the directory's owner or root (CAP_FOWNER)
    /// may rename over it or unlink it, so `rename()` gives EPERM.
    pub(super) fn sticky_block(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = fs::metadata(&self.dir).ok()?;
        if dir.permissions().mode() & libc::S_ISVTX == 0 {
            return None;
        }
        let owner = fs::symlink_metadata(&self.path).ok()?.uid();
        let me = nix::unistd::geteuid().as_raw();
        if owner == me || dir.uid() == me || has_cap_fowner() {
            return None;
        }
        let who = match user_name(owner) {
            Some(name) => format!("user {name} (uid {owner})"),
            None => format!("uid {owner}"),
        };
        Some(sticky_reason(self.shown(), &self.dir, &who))
    }
}

/// Whether this process has CAP_FOWNER (root has), which overrides the sticky bit.
fn has_cap_fowner() -> bool {
    const CAP_FOWNER: u32 = 3;
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return nix::unistd::geteuid().is_root();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_FOWNER) != 0)
}

/// The name of user `uid`, from /etc/passwd (xlock is linked statically, without NSS:
/// users known only to LDAP and the like are shown by uid).
pub(super) fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse() == Ok(uid)).then(|| name.to_owned())
    })
}

/// A file next to LOCK that xlock made.
pub(super) enum SideFile<'e> {
    /// A temp file, before it is linked to LOCK.
    Temp,
    /// A claim on the stale record with this nonce.
    Claim { stale: &'e [u8] },
}

/// Whether `path` (not followed if a link) names the file `id`; a missing path does not.
pub(super) fn is_at(path: &Path, id: FileId) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(id_of(&meta) == id),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Links the (possibly unnamed) file behind `file` at `dest`.
pub(super) fn link_fd(file: &File, dest: &Path) -> io::Result<()> {
    nix::unistd::linkat(AT_FDCWD, &fd_path(file), AT_FDCWD, dest, AtFlags::AT_SYMLINK_FOLLOW).map_err(io::Error::from)
}

pub(super) fn id_of(meta: &fs::Metadata) -> FileId {
    (meta.dev(), meta.ino())
}

/// A path that opens the file behind `file` anew (a new open file description).
pub(super) fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
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
        // The members directory is no temp file or claim: a sweep never touches it.
        let members = lock.members_dir();
        assert_eq!(members, Path::new("/tmp/.db.lock.xlock-members"));
        assert!(!is_side_file(members.file_name().unwrap().as_bytes()));
        // Nor is the solo member's record, nor its own side files.
        let solo = lock.solo();
        assert_eq!(solo.path, Path::new("/tmp/.db.lock.xlock-solo"));
        assert!(!is_side_file(solo.name.as_bytes()));
        let solo_claim = solo.claim_name("0123456789abcdef0123456789abcdef", 999);
        assert!(!is_side_file(solo_claim.file_name().unwrap().as_bytes()));
        assert!(solo.side_file(solo_claim.file_name().unwrap().as_bytes()).is_some());
    }

    #[test]
    fn the_longest_lock_name_leaves_room_for_every_side_name() {
        let name = "n".repeat(MAX_NAME_LEN);
        let lock = LockPath::new(&Path::new("/tmp").join(&name)).unwrap();
        let nonce = "0123456789abcdef0123456789abcdef";
        for side in [
            lock.claim_name(nonce, 999),
            lock.temp_name(nonce),
            lock.members_dir(),
            lock.solo().path,
            lock.solo().claim_name(nonce, 999),
            lock.solo().temp_name(nonce),
        ] {
            assert!(side.file_name().unwrap().len() <= NAME_MAX, "{}", side.display());
        }
        assert_eq!(lock.solo().claim_name(nonce, 999).file_name().unwrap().len(), NAME_MAX);
        assert!(LockPath::new(&Path::new("/tmp").join(name + "n")).is_err());
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let lock = LockPath::new(Path::new("x.lock")).unwrap();
        assert!(lock.path.is_absolute());
        assert_eq!(lock.path, std::env::current_dir().unwrap().join("x.lock"));
        assert_eq!(lock.shown(), "x.lock");
    }
}
