//! What the command's process tree keeps (SPEC §4.4, §4.5, issue 13): the lock stays
//! held while any process of the tree has the command lock's descriptor, however the
//! command itself ended; a lost lock stops the whole tree, not only the first process.
//! Each test runs in every mode (O_TMPFILE, named temp files, no kernel locks).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

tests_in_every_mode!(
    step_of_a_killed_shell_keeps_the_lock,
    lost_lock_stops_every_process_of_the_tree,
);

/// `xlock L sh -c 'step1; step2'`, then SIGTERM to xlock: the shell dies of it, its
/// running step does not. xlock leaves the lock to the step and dies of SIGTERM at
/// once; until the step ends, the lock is busy (the message names the step), and the
/// next acquirer takes it over the moment it ends.
fn step_of_a_killed_shell_keeps_the_lock(t: Mode) {
    let sandbox = Sandbox::new();
    let (lock, log) = (sandbox.lock(), sandbox.path("log"));
    let l = lock.to_str().unwrap();
    // The step prints its PID, reads stdin (the test's pipe) until it is closed, and
    // stamps its end.
    let script = format!(
        "sh -c 'echo $$; cat >/dev/null; {}'; echo step2",
        stamp("E", &log).replace('\'', "'\\''")
    );
    let mut holder = t.hold(&[], &lock, &script);
    let step: i32 = holder.line().parse().unwrap();
    // Kept open here: waiting for xlock would close it.
    let step_input = holder.child.stdin.take();
    holder.kill(Signal::SIGTERM);
    let status = holder.wait();
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status:?}");
    assert!(process_alive(step), "the step must outlive its shell");
    assert!(lock.exists(), "the lock was released while the shell's step still ran");

    let busy = t.xlock(["-n", l, "true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(busy.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("busy") && stderr.contains(&format!("pid {step} (sh)")),
        "the busy message must name the step: {stderr}"
    );
    let status = t.xlock(["--status", l]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(75), "{text}");
    assert!(text.contains(&format!("pid {step} (sh)")), "{text}");

    // A waiter queues; it may start only once the step has ended. After a second its
    // waiting notice names the step.
    let mut waiter = t
        .xlock(["-v", l, "sh", "-c", &stamp("B", &log)])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut notices = BufReader::new(waiter.stderr.take().unwrap());
    let mut notice = String::new();
    while !notice.contains("waiting for") {
        notice.clear();
        assert!(notices.read_line(&mut notice).unwrap() > 0, "the waiter ended early");
    }
    assert!(notice.contains(&format!("pid {step} (sh)")), "{notice}");
    drop(step_input); // the step's `cat` reads EOF
    let status = waiter.wait().unwrap();
    let mut stderr = String::new();
    notices.read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("took over stale"), "{stderr}");
    let words: Vec<String> = read_stamps(&log).into_iter().map(|s| s.word).collect();
    assert_eq!(words, ["E", "B"], "the waiter started before the step ended");
    assert_eq!(sandbox.entries(), ["log"]);
}

/// SPEC §4.4: a lost lock (LOCK removed mid-run) sends SIGTERM to every process of the
/// command's tree: the command, its background child, and an orphan whose parent had
/// already exited (a double fork). xlock exits 125 once the command has ended.
fn lost_lock_stops_every_process_of_the_tree(t: Mode) {
    let sandbox = Sandbox::new();
    let (lock, log) = (sandbox.lock(), sandbox.path("log"));
    let g = log.display();
    // Each process records the SIGTERM it gets. `sleep 0.01` keeps the traps prompt
    // (a shell runs a trap once its foreground command ends).
    let member = |name: &str| {
        format!("trap 'echo {name} >> \"{g}\"; exit 0' TERM; echo $$ > \"{g}.{name}\"; while :; do sleep 0.01; done")
    };
    let script = format!(
        "sh -c '{bg}' & (sh -c '{orphan}' &) ; \
         trap 'echo command >> \"{g}\"; exit 0' TERM; echo started; while :; do sleep 0.01; done",
        bg = member("background").replace('\'', "'\\''"),
        orphan = member("orphan").replace('\'', "'\\''"),
    );
    let errors = sandbox.path("errors");
    let mut command = t.hold_args(&["--stale-after", "300ms"], &lock, &script);
    command.stderr(fs::File::create(&errors).unwrap());
    let mut holder = t.hold_command(command);
    let mut members = KillOnDrop(Vec::new());
    for name in ["background", "orphan"] {
        let ready = sandbox.path(&format!("log.{name}"));
        wait_until(Duration::from_secs(10), "every process of the tree runs", || {
            fs::read_to_string(&ready).is_ok_and(|pid| pid.ends_with('\n'))
        });
        let pid: i32 = fs::read_to_string(&ready).unwrap().trim().parse().unwrap();
        members.0.extend(start_time(pid).map(|start| (pid, start)));
    }
    fs::remove_file(&lock).unwrap();
    let status = holder.wait();
    assert_eq!(status.code(), Some(125), "{}", fs::read_to_string(&errors).unwrap());
    assert!(fs::read_to_string(&errors).unwrap().contains("lost the lock"));
    // The command ended before xlock did; the others get the signal at the same time,
    // but may record it a moment later.
    assert!(fs::read_to_string(&log).unwrap().contains("command"));
    wait_until(Duration::from_secs(10), "every process of the tree got SIGTERM", || {
        let got = fs::read_to_string(&log).unwrap_or_default();
        got.contains("background") && got.contains("orphan")
    });
    assert!(!lock.exists());
}

/// Processes to SIGKILL when the test ends, whatever the outcome (a failing test must
/// not leave its tree running).
struct KillOnDrop(Vec<(i32, u64)>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &(pid, start) in &self.0 {
            signal_exact(pid, start, Signal::SIGKILL);
        }
    }
}
