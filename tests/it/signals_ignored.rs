//! SPEC §5: a signal that was ignored when xlock started stays ignored, while xlock
//! waits for the lock as well as while it holds it (`nohup xlock LOCK cmd &`).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn xlock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xlock"))
}

/// Holds `lock` until its stdin is closed; returns once the command runs.
fn hold(lock: &Path) -> Child {
    let mut holder = xlock()
        .arg(lock)
        .args(["sh", "-c", "echo held; exec cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the holder");
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().expect("holder's stdout"))
        .read_line(&mut line)
        .expect("read the holder's output");
    assert_eq!(line, "held\n", "the holder did not start its command");
    holder
}

/// Reads `stderr` until a line containing `needle`; fails if it ends first.
fn expect_line(stderr: &mut BufReader<ChildStderr>, needle: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("read xlock's stderr");
        assert!(n > 0, "xlock's stderr ended before '{needle}'; it said:\n{seen}");
        seen.push_str(&line);
        if line.contains(needle) {
            return seen;
        }
    }
}

#[test]
fn a_signal_ignored_at_start_does_not_end_the_wait() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let lock = dir.path().join("lock");
    let ran = dir.path().join("ran");
    let mut holder = hold(&lock);

    // SIGHUP ignored by the caller, as nohup does; then exec'd into xlock (same PID).
    let mut waiter = Command::new("sh")
        .arg("-c")
        .arg("trap '' HUP; exec \"$0\" -v \"$1\" sh -c ': > \"$1\"' sh \"$2\"")
        .arg(env!("CARGO_BIN_EXE_xlock"))
        .arg(&lock)
        .arg(&ran)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the waiting xlock");
    let mut stderr = BufReader::new(waiter.stderr.take().expect("waiter's stderr"));
    // The waiting notice says it is waiting (and has been for a while).
    let said = expect_line(&mut stderr, "waiting for");
    let pid = Pid::from_raw(waiter.id() as i32);
    kill(pid, Signal::SIGHUP).expect("send SIGHUP to the waiting xlock");

    drop(holder.stdin.take()); // the holder's `cat` ends: it releases the lock
    assert!(holder.wait().expect("wait for the holder").success());

    let status = waiter.wait().expect("wait for the waiting xlock");
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert_eq!(
        status.code(),
        Some(0),
        "xlock ended with {status} after an ignored SIGHUP; it said:\n{said}{rest}"
    );
    assert!(ran.exists(), "xlock did not run its command");
}
