//! Child supervision and signals (SPEC §5), through the real binary, on real
//! pseudo-terminals where the terminal matters: forwarding without duplicates, the
//! shell's view of a Ctrl-C, inherited dispositions and masks, job control,
//! hang-ups, and signals that arrive while xlock still waits for the lock.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::pty::Pty;
use nix::unistd::Pid;

fn kill(pid: u32, signal: Signal) {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), signal).unwrap();
}

/// Lines the signal reporter logged so far.
fn logged(log: &std::path::Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the reporter has logged `n` lines.
fn wait_for_lines(log: &std::path::Path, n: usize) {
    wait_until(Duration::from_secs(10), &format!("{n} signal(s) logged"), || {
        logged(log).len() >= n
    });
}

/// xlock LOCK python3 sigreport.py LOG
fn xlock_reporting(lock: &std::path::Path, log: &std::path::Path) -> Command {
    let [python, script] = sigreport();
    xlock([lock.to_str().unwrap(), &python, &script, log.to_str().unwrap()])
}

/// Acceptance 1: `kill -USR1 <xlock>`: the child sees exactly one SIGUSR1, sent by xlock.
#[test]
fn a_signal_from_another_process_is_forwarded_once() {
    let sandbox = Sandbox::new();
    let (lock, log) = (sandbox.lock(), sandbox.path("signals"));
    let mut xlock = Running::start(xlock_reporting(&lock, &log));
    assert_eq!(xlock.line(), "started");
    let pid = xlock.child.id();
    kill(pid, Signal::SIGUSR1);
    wait_for_lines(&log, 1);
    kill(pid, Signal::SIGTERM); // the end marker
    assert!(xlock.wait().success());
    assert_eq!(logged(&log), [format!("SIGUSR1 {pid} 0"), format!("SIGTERM {pid} 0")]);
    assert!(!lock.exists());
}

/// Acceptance 2: on a terminal, one Ctrl-C: the child sees exactly one SIGINT (the
/// terminal's), in each of 20 runs.
#[test]
fn ctrl_c_reaches_the_child_once() {
    let sandbox = Sandbox::new();
    for run in 0..20 {
        let (lock, log) = (sandbox.lock(), sandbox.path(&format!("signals.{run}")));
        let mut pty = Pty::spawn(xlock_reporting(&lock, &log));
        pty.expect("started");
        pty.send(b"\x03");
        wait_for_lines(&log, 1);
        let pid = pty.child.id();
        kill(pid, Signal::SIGTERM);
        assert!(pty.child.wait().unwrap().success());
        assert_eq!(
            logged(&log),
            ["SIGINT 0 128".to_owned(), format!("SIGTERM {pid} 0")],
            "run {run}"
        );
    }
}

/// Runs `for i in 1 2 3; do xlock LOCK -- sh -c 'TRAP echo RUNNING; sleep 1'; echo NEXT;
/// done` in bash on a terminal, types one Ctrl-C while the first command runs, and
/// returns how bash ended and what the terminal showed after the Ctrl-C.
fn ctrl_c_in_a_bash_loop(trap: &str) -> (std::process::ExitStatus, String) {
    let sandbox = Sandbox::new();
    let script = format!(
        "for i in 1 2 3; do '{}' '{}' -- sh -c '{trap} echo RUN''NING; sleep 1'; echo NE''XT; done",
        xlock_bin().display(),
        sandbox.lock().display()
    );
    let mut pty = Pty::spawn({
        let mut bash = Command::new("bash");
        bash.args(["--norc", "--noprofile", "-c", &script]);
        bash
    });
    pty.expect("RUNNING");
    pty.send(b"\x03");
    let status = pty.child.wait().unwrap();
    let rest = pty.rest();
    assert!(!sandbox.lock().exists());
    (status, rest)
}

/// Acceptance 3: in a bash loop on a terminal, one Ctrl-C ends the loop: xlock dies of
/// SIGINT, so bash does too.
#[test]
fn ctrl_c_ends_a_shell_loop() {
    let (status, rest) = ctrl_c_in_a_bash_loop("");
    assert!(!rest.contains("NEXT"), "the loop went on: {rest:?}");
    assert_eq!(status.signal(), Some(Signal::SIGINT as i32), "bash: {status:?}");
}

/// Acceptance 3: a command that traps INT and exits 0 lets the loop go on, as it
/// would without xlock.
#[test]
fn ctrl_c_handled_by_the_command_lets_the_loop_go_on() {
    let (status, rest) = ctrl_c_in_a_bash_loop("trap \"exit 0\" INT;");
    assert_eq!(rest.matches("NEXT").count(), 3, "{rest:?}");
    assert!(status.success(), "bash: {status:?}");
}

/// The SigBlk and SigIgn masks of a command run by bash `shell`, where XLOCK stands
/// for `xlock LOCK grep ...` (or, with `direct`, for just `grep ...`).
fn child_masks(shell: &str, direct: bool) -> (u64, u64) {
    let sandbox = Sandbox::new();
    // grep reads its own status: it is the command, exec'd by xlock (or by bash).
    let report = "grep -E '^Sig(Blk|Ign)' /proc/self/status";
    let inner = if direct {
        report.to_owned()
    } else {
        format!("'{}' '{}' {report}", xlock_bin().display(), sandbox.lock().display())
    };
    let out = Command::new("bash")
        .args(["-c", &shell.replace("XLOCK", &inner)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {text:?}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    (field("SigBlk:"), field("SigIgn:"))
}

/// Acceptance 4: a foreground command gets an empty blocked mask; a command started
/// under `bash -c '... &'` still has SIGINT and SIGQUIT ignored, and one started with
/// SIGPIPE ignored has it ignored. In each case the ignored set is exactly what the
/// command has without xlock.
#[test]
fn the_command_inherits_dispositions_not_xlocks_mask() {
    let bit = |signal: Signal| 1u64 << (signal as u64 - 1);
    let (blocked, ignored) = child_masks("XLOCK", false);
    assert_eq!(blocked, 0, "the command inherited a blocked mask");
    assert_eq!(
        ignored,
        child_masks("XLOCK", true).1,
        "ignored signals differ from a run without xlock"
    );
    let (blocked, ignored) = child_masks("XLOCK & wait", false);
    assert_eq!(blocked, 0);
    let background = bit(Signal::SIGINT) | bit(Signal::SIGQUIT);
    assert_eq!(
        ignored & background,
        background,
        "SigIgn {ignored:x}: background INT/QUIT not ignored"
    );
    assert_eq!(
        ignored,
        child_masks("XLOCK & wait", true).1,
        "ignored signals differ from a run without xlock"
    );
    // An ignored SIGPIPE stays ignored (std would reset it in children).
    let (_, ignored) = child_masks("trap '' PIPE; XLOCK", false);
    assert_ne!(
        ignored & bit(Signal::SIGPIPE),
        0,
        "SigIgn {ignored:x}: SIGPIPE not ignored"
    );
    assert_eq!(ignored, child_masks("trap '' PIPE; XLOCK", true).1);
}

/// After a wait for the lock (during which xlock catches the signals that end a wait,
/// and uses a real-time signal of its own), the command still gets every disposition
/// as xlock got it: here TERM and that real-time signal ignored, as without xlock.
#[test]
fn dispositions_survive_a_wait() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let report = "grep -E '^Sig(Blk|Ign)' /proc/self/status";
    let masks = |shell: String| {
        let out = Command::new("bash").args(["-c", &shell]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let traps = "trap '' TERM RTMIN+2";
    let direct = masks(format!("{traps}; {report}"));
    let mut holder = hold(&[], &lock, "read _; exit 0");
    // bash prints its PID, then becomes the xlock (exec keeps the dispositions).
    let mut under = Running::start({
        let mut bash = Command::new("bash");
        bash.args([
            "-c",
            &format!(
                "{traps}; echo $$; exec '{}' '{}' {report}",
                xlock_bin().display(),
                lock.display()
            ),
        ]);
        bash
    });
    let xlock: i32 = under.line().parse().unwrap();
    wait_until_waiting(xlock, &lock);
    holder.release();
    let under_masks = under.rest();
    assert!(under.wait().success());
    assert!(direct.contains("SigIgn"), "{direct}");
    assert_eq!(under_masks, direct);
    assert!(holder.wait().success());
}

/// Acceptance 5: Ctrl-Z on a terminal stops xlock and the command; `fg` resumes both and
/// the run completes.
#[test]
fn job_control_stops_and_resumes_both() {
    let sandbox = Sandbox::new();
    let mut pty = Pty::spawn({
        let mut bash = Command::new("bash");
        bash.args(["--norc", "--noprofile", "-i"])
            .env("PS1", "$ ")
            .env_remove("PROMPT_COMMAND");
        bash
    });
    pty.expect("$ ");
    pty.send(
        format!(
            "'{}' '{}' sh -c 'echo RUN''NING $$; sleep 1; echo FIN''ISHED'\n",
            xlock_bin().display(),
            sandbox.lock().display()
        )
        .as_bytes(),
    );
    pty.expect("RUNNING ");
    let command: i32 = pty.expect("\n").trim().parse().unwrap();
    let xlock = parent_of(command);
    // dash starts `sleep` with vfork, and a vfork parent cannot stop until its child has
    // exec'd: send Ctrl-Z once `sleep` runs.
    let children = format!("/proc/{command}/task/{command}/children");
    wait_until(Duration::from_secs(5), "the command's sleep runs", || {
        fs::read_to_string(&children)
            .unwrap_or_default()
            .split_whitespace()
            .any(|child| fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|comm| comm.trim() == "sleep"))
    });
    pty.send(b"\x1a");
    pty.expect("Stopped");
    // bash reports the job stopped when xlock, its leader, stops; the command stops too.
    wait_until(Duration::from_secs(5), "xlock and the command are stopped", || {
        (state_of(xlock), state_of(command)) == ('T', 'T')
    });
    assert!(sandbox.lock().exists(), "a stopped holder still holds the lock");
    pty.send(b"fg\n");
    pty.expect("FINISHED");
    pty.send(b"echo EXIT=$?\n");
    pty.expect("EXIT=0");
    pty.send(b"exit\n");
    pty.child.wait().unwrap();
    assert!(!sandbox.lock().exists());
}

tests_in_every_mode!(
    sigterm_while_waiting_leaves_nothing_behind,
    sigterm_at_any_moment_of_the_wait_ends_it
);

/// SIGTERM sent at random moments while an xlock starts waiting (before, during and
/// after it enters the lock call, which a signal can only interrupt once the call has
/// begun): every time, xlock dies of it promptly and leaves nothing behind.
fn sigterm_at_any_moment_of_the_wait_ends_it(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = t.hold(&[], &lock, "sleep 30");
    let mut random = Random::new();
    for _ in 0..40 {
        let mut waiter = t
            .xlock([lock.to_str().unwrap(), "true"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(random.below(3000)));
        kill(waiter.id(), Signal::SIGTERM);
        let sent = std::time::Instant::now();
        let status = waiter.wait().unwrap();
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status:?}");
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "took {:?} to end",
            sent.elapsed()
        );
    }
    assert_eq!(sandbox.entries(), ["test.lock"], "a waiter left something behind");
    holder.kill(Signal::SIGTERM);
    holder.wait();
}

/// Acceptance 6: SIGTERM to an xlock still waiting for the lock: it dies of SIGTERM and
/// leaves no temp file.
fn sigterm_while_waiting_leaves_nothing_behind(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = t.hold(&[], &lock, "sleep 10");
    let mut waiter = t
        .xlock([lock.to_str().unwrap(), "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Waiting means asleep with the holder's file open: blocked on its lock (or,
    // without kernel locks, between polls).
    wait_until_waiting(waiter.id() as i32, &lock);
    if t == Mode::Named {
        assert_eq!(
            sandbox.entries().len(),
            2,
            "the waiter's temp file should exist while it waits"
        );
    }
    kill(waiter.id(), Signal::SIGTERM);
    let status = waiter.wait().unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status:?}");
    assert_eq!(sandbox.entries(), ["test.lock"], "the waiter left something behind");
    holder.kill(Signal::SIGTERM);
    holder.wait();
}

/// Acceptance 7: a command whose SIGTERM handler exits 42: `kill -TERM <xlock>` makes
/// xlock exit 42, and the lock is gone.
#[test]
fn sigterm_reaches_the_command_and_its_exit_code_comes_back() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut xlock = Mode::Unnamed.hold_script(
        &[],
        &lock,
        "trap 'exit 42' TERM; echo started; while :; do sleep 0.05; done",
    );
    xlock.kill(Signal::SIGTERM);
    assert_eq!(xlock.wait().code(), Some(42));
    assert!(!lock.exists());
}

/// Acceptance 8: with xlock as session leader on a terminal that hangs up, the command
/// gets exactly one SIGHUP (xlock's, since the kernel sends it to the leader only).
#[test]
fn hang_up_reaches_the_command_once() {
    let sandbox = Sandbox::new();
    let (lock, log) = (sandbox.lock(), sandbox.path("signals"));
    let mut pty = Pty::spawn(xlock_reporting(&lock, &log));
    pty.expect("started");
    pty.hang_up();
    wait_for_lines(&log, 1);
    let pid = pty.child.id();
    kill(pid, Signal::SIGTERM);
    assert!(pty.child.wait().unwrap().success());
    assert_eq!(logged(&log), [format!("SIGHUP {pid} 0"), format!("SIGTERM {pid} 0")]);
    assert!(!lock.exists());
}
