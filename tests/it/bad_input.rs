//! Bad input (SPEC §6): every case exits 125 with one line naming the path (or value)
//! and the reason, and leaves every file exactly as it was, byte for byte.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::*;

/// Runs `xlock LOCK sh -c 'echo ran'` with a time limit (a FIFO must not hang it).
fn run_on(t: Mode, lock: &Path) -> Output {
    let child = t
        .xlock([lock.to_str().unwrap(), "sh", "-c", "echo ran"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (done, ended) = mpsc::channel::<()>();
    // Kills xlock if it has not ended within 10 s.
    let watchdog = std::thread::spawn(move || {
        let hung = ended.recv_timeout(Duration::from_secs(10)).is_err();
        if hung {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        hung
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    assert!(!watchdog.join().unwrap(), "xlock hung on {}", lock.display());
    out
}

tests_in_every_mode!(
    foreign_regular_files_are_left_alone,
    symlinks_are_not_followed,
    directories_fifos_and_devices_are_refused,
    missing_directory,
    too_many_open_files,
);

/// A user's data, a script, an empty file, JSON that is not a record, an oversized
/// file: refused, untouched.
fn foreign_regular_files_are_left_alone(t: Mode) {
    let cases: [(&str, &[u8], u32); 6] = [
        ("data.db", b"important user data\n", 0o644),
        ("deploy.sh", b"#!/bin/sh\nrm -rf /srv/app\n", 0o755),
        ("empty.lock", b"", 0o644),
        ("other.json", br#"{"pid":12,"host":"x"}"#, 0o600),
        ("big.lock", &[b'{'; 5000], 0o644),
        ("future.lock", br#"{"xlock":2,"pid":1}"#, 0o644),
    ];
    for (name, contents, mode) in cases {
        let sandbox = Sandbox::new();
        let lock = sandbox.path(name);
        fs::write(&lock, contents).unwrap();
        fs::set_permissions(&lock, fs::Permissions::from_mode(mode)).unwrap();
        let before = sandbox.snapshot();
        let out = run_on(t, &lock);
        assert_fails(
            &out,
            &[lock.to_str().unwrap(), "not an xlock lock file", "another LOCK path"],
        );
        assert_eq!(sandbox.snapshot(), before, "{name} was changed");
    }
}

/// A symlink at LOCK (to a file, or dangling) is refused; neither link nor target changes.
fn symlinks_are_not_followed(t: Mode) {
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("target"), "precious\n").unwrap();
    symlink(sandbox.path("target"), sandbox.path("link.lock")).unwrap();
    symlink(sandbox.path("nowhere"), sandbox.path("dangling.lock")).unwrap();
    let before = sandbox.snapshot();
    for name in ["link.lock", "dangling.lock"] {
        let lock = sandbox.path(name);
        assert_fails(&run_on(t, &lock), &[lock.to_str().unwrap(), "symbolic link"]);
    }
    assert_eq!(sandbox.snapshot(), before);
}

fn directories_fifos_and_devices_are_refused(t: Mode) {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.path("dir.lock")).unwrap();
    fs::write(sandbox.path("dir.lock/inside"), "x").unwrap();
    nix::unistd::mkfifo(
        &sandbox.path("fifo.lock"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let device = if is_root() {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(
            &sandbox.path("dev.lock"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        sandbox.path("dev.lock")
    } else {
        Path::new("/dev/null").to_path_buf() // only root may make device nodes
    };
    let before = sandbox.snapshot();
    for (lock, kind) in [
        (sandbox.path("dir.lock"), "a directory"),
        (sandbox.path("fifo.lock"), "a FIFO"),
        (device.clone(), "a device"),
    ] {
        let out = run_on(t, &lock);
        if is_root() || lock != device {
            assert_fails(&out, &[lock.to_str().unwrap(), kind]);
        } else {
            assert_fails(&out, &["/dev"]);
        }
    }
    assert_eq!(sandbox.snapshot(), before);
}

fn missing_directory(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.path("no/such/dir/job.lock");
    let out = run_on(t, &lock);
    assert_fails(&out, &[lock.to_str().unwrap(), "does not exist", "create it"]);
    assert_eq!(sandbox.entries(), Vec::<String>::new());
}

/// Out of file descriptors at each step of the way: a clear error or success, never a
/// lock or temp file left behind.
fn too_many_open_files(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut failed = 0;
    // Below 4 the dynamic loader itself fails, before xlock runs.
    for limit in 4..=12 {
        let out = t
            .apply(
                std::process::Command::new("/bin/sh")
                    .args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$1\" true")])
                    .arg(xlock_bin())
                    .arg(&lock),
            )
            .output()
            .unwrap();
        if !out.status.success() {
            failed += 1;
            assert_fails(&out, &["ulimit -n"]);
        }
        assert_eq!(
            sandbox.entries(),
            Vec::<String>::new(),
            "left behind with ulimit -n {limit}"
        );
    }
    assert!(failed > 0, "no limit was low enough to fail: the test proves nothing");
}

#[test]
fn bad_options_and_missing_command() {
    for (args, needles) in [
        (&["-w", "soon", "L", "true"][..], &["'soon'", "250ms"][..]),
        (&["-w", "-5", "L", "true"][..], &["-5"][..]),
        (&["-E", "256", "L", "true"][..], &["256", "--conflict-exit-code"][..]),
        (&["-E", "x", "L", "true"][..], &["'x'"][..]),
        (&["L"][..], &["no command", "L"][..]),
        (&[][..], &["LOCK"][..]),
        (&["--bogus", "L", "true"][..], &["--bogus"][..]),
        (&["-c", "x", "L", "true"][..], &["both -c"][..]),
    ] {
        let sandbox = Sandbox::new();
        let out = xlock(args).current_dir(sandbox.dir.path()).output().unwrap();
        assert_fails(&out, needles);
        assert_eq!(sandbox.entries(), Vec::<String>::new());
    }
}

/// Mounts a tmpfs with `options` on a new directory (in a namespace of its own), runs
/// `setup` there (`{d}` stands for the directory), then `env ENV xlock {d}/job.lock
/// echo ran`. Asserts that xlock failed with one line naming the lock and containing
/// `reason`; returns what `ls -A` shows in the directory afterwards.
fn fails_on_tmpfs(options: &str, setup: &str, env: &str, reason: &str) -> String {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("mnt");
    fs::create_dir(&dir).unwrap();
    let d = dir.display().to_string();
    let setup = setup.replace("{d}", &d);
    let out = in_mount_namespace(&format!(
        "mount -t tmpfs -o {options} none '{d}' && {setup} && \
         env {env} \"$0\" '{d}/job.lock' echo ran; echo \"exit=$?\"; ls -A '{d}'"
    ))
    .unwrap_or_else(|why| panic!("{why}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (status, listing) = stdout.split_once('\n').expect("exit line");
    assert_eq!(status, "exit=125", "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{d}/job.lock")) && stderr.contains(reason),
        "{reason:?} missing: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    listing.to_owned()
}

#[test]
fn read_only_file_system() {
    assert_eq!(fails_on_tmpfs("ro,size=64k", "true", "", "read-only file system"), "");
}

#[test]
fn full_disk_while_writing_the_record() {
    for named in ["0", "1"] {
        let fill = "(cat /dev/zero > '{d}/filler' 2>/dev/null; true)";
        let left = fails_on_tmpfs("size=8k", fill, &format!("XLOCK_NAMED_TEMP={named}"), "free some space");
        assert_eq!(
            left, "filler\n",
            "named={named}: the lock or a temp file was left behind"
        );
    }
}

/// Runs xlock as user nobody (root drops privileges; others run as themselves).
fn as_unprivileged(args: &[&str]) -> std::process::Command {
    let mut command = if is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(AS_NOBODY).arg(xlock_bin());
        c
    } else {
        std::process::Command::new(xlock_bin())
    };
    command.args(args);
    command
}

/// A sandbox that user nobody can enter.
fn open_sandbox() -> Sandbox {
    let sandbox = Sandbox::new();
    fs::set_permissions(sandbox.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    sandbox
}

#[test]
fn directory_not_writable() {
    let sandbox = open_sandbox();
    let dir = sandbox.path("locked");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    let lock = dir.join("job.lock");
    let before = sandbox.snapshot();
    let out = as_unprivileged(&[lock.to_str().unwrap(), "echo", "ran"])
        .output()
        .unwrap();
    assert_fails(&out, &[lock.to_str().unwrap(), "permission", dir.to_str().unwrap()]);
    assert_eq!(sandbox.snapshot(), before);
}

/// In a shared sticky directory (like /tmp or /var/lock), another user's live lock is
/// busy for us (we wait on it without writing it); an unreadable one is an error
/// naming it.
#[test]
fn other_users_locks() {
    if !is_root() {
        eprintln!("other_users_locks: skipped, it needs root to act as a second user (CI runs as root)");
        return;
    }
    let sandbox = open_sandbox();
    fs::set_permissions(sandbox.dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let lock = sandbox.lock();
    let mut holder = hold(&[], &lock, "sleep 10");
    let out = as_unprivileged(&["-n", lock.to_str().unwrap(), "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o600)).unwrap();
    let before = sandbox.snapshot();
    let out = as_unprivileged(&["-n", lock.to_str().unwrap(), "true"])
        .output()
        .unwrap();
    assert_fails(&out, &[lock.to_str().unwrap(), "ermission"]);
    assert_eq!(sandbox.snapshot(), before);
    holder.kill(Signal::SIGTERM);
    holder.wait();
}
