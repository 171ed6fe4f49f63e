//! Bad input about files (SPEC §6; issue 13, items 7, 8 and 12): a stale lock in a
//! sticky directory that belongs to another user, LOCK names too long to be taken over
//! after a crash, and a directory that exists but refuses new files. Each is exit 125
//! with one line saying what is true and what to do, and leaves every file as it was.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;

tests_in_every_mode!(
    stale_lock_of_another_user_in_a_sticky_directory,
    lock_names_too_long_to_take_over_are_refused_up_front,
    the_longest_allowed_name_is_taken_over_after_a_crash,
    a_directory_that_refuses_new_files_is_not_called_missing,
);

/// Item 7: in a sticky directory (/tmp, /run/lock), a stale lock file of another user
/// cannot be replaced (rename() gives EPERM). A run says whose file it is, why, and
/// what to do; so does `--status`, instead of "the next acquirer takes it over".
fn stale_lock_of_another_user_in_a_sticky_directory(t: Mode) {
    if !is_root() {
        eprintln!("skipped: it needs root to act as a second user (CI runs as root)");
        return;
    }
    let sandbox = Sandbox::new();
    fs::set_permissions(sandbox.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = sandbox.path("shared");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    let lock = dir.join("job.lock");
    let l = lock.to_str().unwrap();
    let dead = t.make_stale(&lock); // root's file
                                    // What is in the directory (its own mtime changes: a temp name comes and goes).
    let before = snapshot(&dir);

    let out = as_nobody(t, &["-n", l, "echo", "ran"]).output().unwrap();
    let stderr = assert_fails(
        &out,
        &[
            l,
            "user root (uid 0)",
            "sticky",
            "remove",
            "install -d -m 2775 -g GROUP",
        ],
    );
    assert!(!stderr.contains("no permission to create files"), "{stderr}");
    assert_eq!(snapshot(&dir), before, "the failed take-over changed or left something");

    let out = as_nobody(t, &["--status", l]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(125), "a run would fail: {stdout}");
    assert!(
        stdout.starts_with(&format!(
            "{l}: stale (holder pid {dead} died), but this user cannot take it over: "
        )),
        "{stdout}"
    );
    for needle in ["user root (uid 0)", "sticky", "install -d -m 2775 -g GROUP"] {
        assert!(stdout.contains(needle), "{needle:?} missing from: {stdout}");
    }
    assert!(!stdout.contains("the next acquirer takes it over"), "{stdout}");
    let out = as_nobody(t, &["--status", "--json", l]).output().unwrap();
    let object: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(object["state"], "stale");
    assert!(
        object["takeover_blocked"].as_str().unwrap().contains("sticky"),
        "{object}"
    );

    // Root (CAP_FOWNER) may replace it: its status and its run are as before.
    let out = t.xlock(["--status", l]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": the next acquirer takes it over\n"));
    let out = t.xlock(["-n", l, "echo", "ran"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        0,
        "left behind in {}",
        dir.display()
    );
    assert_eq!(sandbox.snapshot().len(), 1, "only the empty directory is left");
}

/// Item 8: a take-over after a crash makes side names of up to 62 more bytes next to
/// LOCK (`..NAME.xlock-solo.<nonce>-999.xlock-claim`, a claim on a shared holder's
/// record), which must fit in 255 bytes. A longer name
/// worked until the first crash, then failed for good: it is refused up front, and
/// `--status` says the same.
fn lock_names_too_long_to_take_over_are_refused_up_front(t: Mode) {
    let sandbox = Sandbox::new();
    for len in [194, 206, 230, 255] {
        let lock = sandbox.path(&"n".repeat(len));
        let l = lock.to_str().unwrap();
        let len = len.to_string();
        let out = t.xlock([l, "echo", "ran"]).output().unwrap();
        assert_fails(&out, &[l, &format!("{len} bytes"), "at most 193", "255", "shorter"]);
        let out = t.xlock(["--status", l]).output().unwrap();
        assert_eq!(out.status.code(), Some(125));
        assert!(String::from_utf8_lossy(&out.stderr).contains("at most 193"));
        assert_eq!(
            sandbox.entries(),
            Vec::<String>::new(),
            "a {len}-byte name left something"
        );
    }
}

/// Item 8, the other side of the limit: a 193-byte name is taken over after a crash,
/// exclusive and shared (whose record, next to LOCK, has the longest side names).
fn the_longest_allowed_name_is_taken_over_after_a_crash(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.path(&"n".repeat(193));
    for kind in [&[][..], &["-s"][..]] {
        let mut holder = t.hold(&[&["--close"][..], kind].concat(), &lock, "exec sleep 30");
        holder.kill(Signal::SIGKILL);
        holder.wait();
        let out = t
            .xlock([&["-v", "-n"][..], kind, &[lock.to_str().unwrap(), "echo", "ran"]].concat())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{kind:?}: {stderr}");
        assert!(stderr.contains("took over stale"), "{kind:?}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
        assert_eq!(sandbox.entries(), Vec::<String>::new(), "{kind:?}");
    }
}

/// Item 12: /proc exists, but creating a file there gives ENOENT; that is not "the
/// directory does not exist".
fn a_directory_that_refuses_new_files_is_not_called_missing(t: Mode) {
    let lock = Path::new("/proc/x.lock");
    let out = t.xlock([lock.to_str().unwrap(), "echo", "ran"]).output().unwrap();
    let stderr = assert_fails(&out, &["/proc/x.lock", "/proc exists", "does not allow creating files"]);
    assert!(!stderr.contains("does not exist"), "{stderr}");
}
