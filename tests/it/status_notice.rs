//! How the holder is named in the busy line, the waiting notice and `-v` (SPEC §2): a
//! command with quotes of its own is not wrapped in more of the same, and on a narrow
//! terminal the notice shortens the command first, so that the holder's pid, host and
//! age stay visible.

use std::process::{Command, Stdio};

use crate::common::*;
use crate::pty::Pty;

fn host() -> String {
    nix::unistd::gethostname().unwrap().into_string().unwrap()
}

/// `xlock LOCK sh -c SCRIPT` (the argv form: the record quotes the words), running
/// once it printed `started`.
fn hold_argv(lock: &std::path::Path, script: &str) -> Running {
    let mut running = Running::start(xlock([
        lock.to_str().unwrap(),
        "sh",
        "-c",
        &format!("echo started; {script}"),
    ]));
    assert_eq!(running.line(), "started");
    running
}

#[test]
fn a_quoted_command_is_not_wrapped_in_more_quotes() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = hold_argv(&lock, "read _");
    let pid = holder.child.id();
    let out = xlock(["-n", lock.to_str().unwrap(), "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "xlock: {} is busy (held by pid {pid} \"sh -c 'echo started; read _'\" on {} for ",
        lock.display(),
        host()
    );
    assert!(stderr.starts_with(&expected) && stderr.ends_with("s)\n"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // -v's waiting line names it the same way.
    let out = xlock(["-v", "-w", "1.2", lock.to_str().unwrap(), "true"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "xlock: waiting for {} (held by pid {pid} \"sh -c 'echo started; read _'\" on ",
            lock.display()
        )),
        "{stderr}"
    );
    holder.kill(Signal::SIGTERM);
    holder.wait();
}

/// On a terminal too narrow for the whole notice, the command gives way first.
#[test]
fn a_narrow_terminal_keeps_pid_host_and_age() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = hold_argv(&lock, "read _; : and then a long tail that does not fit on the line");
    let pid = holder.child.id();
    // Room for everything but most of the command.
    let whole = format!(
        "xlock: waiting for test.lock (held by pid {pid} \"sh -c 'echo started; read _; : and then a long tail that does not fit on the line'\" on {} for 1s)…",
        host()
    );
    let columns = whole.chars().count() - 50;
    let mut waiter = Command::new(xlock_bin());
    waiter.current_dir(sandbox.dir.path()).args(["test.lock", "true"]);
    let mut pty = Pty::spawn(waiter);
    set_columns(&pty, columns);
    // The first notice comes a second after the start, long after the resize; check the
    // second, to be sure.
    pty.expect(")…");
    let shown = pty.expect(")…");
    let notice = shown.rsplit("\r\x1b[K").next().unwrap();
    assert!(
        notice.chars().count() < columns,
        "{notice:?} is wider than {columns} columns"
    );
    assert!(
        notice.starts_with(&format!(
            "xlock: waiting for test.lock (held by pid {pid} \"sh -c 'echo started;"
        )),
        "{notice:?}"
    );
    // The age is there, whole: `… on HOST for Ns)…`.
    let (before, age) = notice
        .strip_suffix("s)…")
        .and_then(|rest| rest.rsplit_once(" for "))
        .unwrap_or_else(|| panic!("no age at the end of {notice:?}"));
    assert!(age.parse::<u64>().is_ok_and(|age| age >= 2), "{notice:?}");
    assert!(before.ends_with(&format!("…\" on {}", host())), "{notice:?}");
    holder.kill(Signal::SIGTERM);
    holder.wait();
    pty.rest();
    assert!(pty.child.wait().unwrap().success());
}

fn set_columns(pty: &Pty, columns: usize) {
    let size = nix::libc::winsize {
        ws_row: 10,
        ws_col: columns as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let master = std::os::fd::AsRawFd::as_raw_fd(pty.master.as_ref().unwrap());
    // SAFETY: TIOCSWINSZ reads one winsize from the struct it is given.
    assert_eq!(unsafe { nix::libc::ioctl(master, nix::libc::TIOCSWINSZ, &size) }, 0);
}
