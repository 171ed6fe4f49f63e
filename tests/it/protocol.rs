//! The lock protocol on a local disk (SPEC §4.1–4.5), through the real binary: mutual
//! exclusion, waiting and timeouts, stale take-over, what a command's process tree
//! keeps, temp-file hygiene and release verification. Each test runs twice: with
//! O_TMPFILE and with named temp files.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

tests_in_every_mode!(
    exclusive_with_prompt_hand_off,
    record_is_written_while_held,
    nonblock_conflict_and_exit_code,
    timeout_expires,
    timeout_ends_when_holder_finishes,
    killed_holder_with_close_is_taken_over_at_once,
    sixteen_waiters_on_a_stale_lock_never_overlap,
    command_keeps_the_lock_after_xlock_is_killed,
    background_process_of_killed_holder_keeps_the_lock,
    background_process_after_normal_exit_keeps_the_lock,
    orphaned_temp_files_are_swept_live_ones_kept,
    a_replaced_lock_is_never_removed,
);

/// Acceptance 1: two overlapping runs never overlap their commands; the second starts
/// right after the first ends; LOCK exists only while held.
fn exclusive_with_prompt_hand_off(t: Mode) {
    let sandbox = Sandbox::new();
    let (lock, log) = (sandbox.lock(), sandbox.path("log"));
    assert!(!lock.exists());
    let mut first = t.hold(
        &[],
        &lock,
        &format!("{}; sleep 0.3; {}", stamp("B", &log), stamp("E", &log)),
    );
    assert!(lock.exists(), "LOCK must exist while held");
    let second = t
        .xlock([
            lock.to_str().unwrap(),
            "sh",
            "-c",
            &format!("{}; {}", stamp("B", &log), stamp("E", &log)),
        ])
        .status()
        .unwrap();
    assert!(second.success());
    assert!(first.wait().success());
    assert_eq!(assert_sections_never_overlap(&log), 2);
    let stamps = read_stamps(&log);
    let gap = Duration::from_nanos((stamps[2].ns - stamps[1].ns) as u64);
    assert!(
        gap < Duration::from_millis(500),
        "second command started {gap:?} after the first ended"
    );
    assert_eq!(sandbox.entries(), ["log"], "LOCK or a temp file was left behind");
}

/// SPEC §4.1: the file at LOCK is the one-line JSON record of its holder.
fn record_is_written_while_held(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = t.hold(&[], &lock, "read _; exit 0");
    let text = fs::read_to_string(&lock).unwrap();
    assert!(text.starts_with(r#"{"xlock":1,"pid":"#), "{text}");
    assert_eq!(text.lines().count(), 1);
    let record = read_record(&lock);
    assert_eq!(record.pid, holder.child.id() as i32);
    assert_eq!(
        record.boot,
        fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim()
    );
    assert_eq!(
        record.pidns,
        fs::read_link("/proc/self/ns/pid").unwrap().to_str().unwrap()
    );
    let nonce = &record.nonce;
    assert!(
        nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
        "{nonce}"
    );
    assert!(record.cmd.starts_with("echo started; read _"), "{record:?}");
    assert!(humantime::parse_rfc3339(&record.since).is_ok(), "{record:?}");
    assert_eq!(Some(record.start), start_time(holder.child.id() as i32));
    holder.release(); // the command's `read` ends
    assert!(holder.wait().success());
    assert!(!lock.exists());
}

/// Acceptance 2: `-n` against a held lock exits 75 at once; `-E 9` makes it 9; the
/// message names the holder; `-q` silences it.
fn nonblock_conflict_and_exit_code(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    // `exec`: SIGTERM ends the whole command (a forked sleep would keep the lock).
    let mut holder = t.hold(&[], &lock, "exec sleep 5");
    let started = Instant::now();
    let out = t.xlock(["-n", lock.to_str().unwrap(), "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "-n waited {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("pid {}", holder.child.id())) && stderr.contains("busy"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let out = t
        .xlock(["-n", "-E", "9", lock.to_str().unwrap(), "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(9));
    let out = t.xlock(["-nq", lock.to_str().unwrap(), "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lock.exists(), "a failed attempt must not disturb the holder");
    holder.kill(Signal::SIGTERM);
    holder.wait();
    assert_eq!(sandbox.entries(), Vec::<String>::new());
}

/// Acceptance 2: `-w 300ms` exits 75 after about 300 ms (and a bare number of
/// seconds works the same).
fn timeout_expires(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    // `exec`: SIGTERM ends the whole command (a forked sleep would keep the lock).
    let mut holder = t.hold(&[], &lock, "exec sleep 5");
    for timeout in ["300ms", "0.3"] {
        let started = Instant::now();
        let out = t
            .xlock(["-w", timeout, lock.to_str().unwrap(), "true"])
            .output()
            .unwrap();
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "-w {timeout} took {took:?}"
        );
        // The time it reports is at least the timeout asked for (it counts from the
        // deadline's start, not from when the waiting began).
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reported: f64 = stderr
            .split("timed out after ")
            .nth(1)
            .and_then(|rest| rest.split('s').next())
            .and_then(|secs| secs.parse().ok())
            .unwrap_or_else(|| panic!("no 'timed out after N.NNNs' in: {stderr}"));
        assert!(reported >= 0.3, "-w {timeout} reported {reported}s: {stderr}");
    }
    holder.kill(Signal::SIGTERM);
    holder.wait();
    assert_eq!(
        sandbox.entries(),
        Vec::<String>::new(),
        "a timed-out waiter left something behind"
    );
}

/// Acceptance 2: `-w 5s` succeeds as soon as the holder ends.
fn timeout_ends_when_holder_finishes(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = t.hold(&[], &lock, "sleep 0.5");
    let started = Instant::now();
    let status = t.xlock(["-w", "5s", lock.to_str().unwrap(), "true"]).status().unwrap();
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?} for a 0.5 s holder",
        started.elapsed()
    );
    assert!(holder.wait().success());
    assert!(!lock.exists());
}

/// Acceptance 4: a SIGKILLed holder leaves LOCK behind; with `--close` its command is
/// killed too, and the next xlock takes the lock over at once.
fn killed_holder_with_close_is_taken_over_at_once(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = t.hold(&["--close"], &lock, "echo $$; exec sleep 30");
    let command: i32 = holder.line().parse().unwrap();
    holder.kill(Signal::SIGKILL);
    holder.wait();
    assert!(lock.exists(), "a killed holder's lock file stays until taken over");
    wait_until(Duration::from_secs(5), "the --close command is killed", || {
        !process_alive(command)
    });
    let out = t.xlock(["-n", "-v", lock.to_str().unwrap(), "true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "took over stale {} from dead pid {}",
            lock.display(),
            holder.child.id()
        )),
        "{stderr}"
    );
    assert_eq!(sandbox.entries(), Vec::<String>::new());
}

/// Acceptance 4: sixteen waiters started together on a stale lock: exactly one takes
/// it over, and their commands never overlap.
fn sixteen_waiters_on_a_stale_lock_never_overlap(t: Mode) {
    let sandbox = Sandbox::new();
    let (lock, log) = (sandbox.lock(), sandbox.path("log"));
    t.make_stale(&lock);
    let section = format!("{}; sleep 0.01; {}", stamp("B", &log), stamp("E", &log));
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            t.xlock(["-v", lock.to_str().unwrap(), "sh", "-c", &section])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let takeovers = count_takeovers(waiters);
    assert_eq!(takeovers, 1, "exactly one waiter takes the stale lock over");
    assert_eq!(assert_sections_never_overlap(&log), 16);
    assert_eq!(sandbox.entries(), ["log"]);
}

/// Acceptance 4: without `--close`, a command that traps TERM and needs 1 s to exit
/// keeps the lock for that second; then the waiter takes over at once.
fn command_keeps_the_lock_after_xlock_is_killed(t: Mode) {
    let sandbox = Sandbox::new();
    let (lock, log) = (sandbox.lock(), sandbox.path("log"));
    // The trap is in place before `started` is printed, so SIGTERM cannot come first.
    let script = format!(
        "trap 'sleep 1; {}; exit 0' TERM; echo started; while :; do sleep 0.05; done",
        stamp("E", &log)
    );
    let mut holder = t.hold_script(&[], &lock, &script);
    holder.kill(Signal::SIGKILL);
    holder.wait();
    let killed = now_ns();
    let status = t
        .xlock([lock.to_str().unwrap(), "sh", "-c", &stamp("B", &log)])
        .status()
        .unwrap();
    assert!(status.success());
    let stamps = read_stamps(&log);
    assert_eq!(
        stamps.iter().map(|s| s.word.as_str()).collect::<Vec<_>>(),
        ["E", "B"],
        "{stamps:?}"
    );
    assert!(
        stamps[0].ns - killed >= 900_000_000,
        "the command's TERM handler was cut short"
    );
    let gap = Duration::from_nanos((stamps[1].ns - stamps[0].ns) as u64);
    assert!(
        gap < Duration::from_millis(500),
        "the waiter started {gap:?} after the command ended"
    );
    assert_eq!(sandbox.entries(), ["log"]);
}

/// Acceptance 4: `sh -c 'sleep 3 & ...'` under a killed xlock keeps the lock until
/// that background sleep ends.
fn background_process_of_killed_holder_keeps_the_lock(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let started = Instant::now();
    // `started` comes after the background job exists, so the kill cannot come first.
    let mut holder = t.hold_script(&[], &lock, "sleep 3 & echo started; read _");
    holder.kill(Signal::SIGKILL);
    holder.wait();
    let status = t.xlock([lock.to_str().unwrap(), "true"]).status().unwrap();
    assert!(status.success());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "acquired after {took:?}, before the background sleep ended"
    );
    assert!(
        took < Duration::from_millis(4500),
        "acquired after {took:?}, long after the background sleep ended"
    );
}

/// SPEC §4.5: after a normal run of `sh -c 'sleep 30 & exit 3'`, xlock exits at once
/// with the command's status and leaves the lock to the background process, as
/// flock(1) does (`-v` names it); the next xlock gets the lock once it has ended.
fn background_process_after_normal_exit_keeps_the_lock(t: Mode) {
    let sandbox = Sandbox::new();
    let (lock, pidfile) = (sandbox.lock(), sandbox.path("bg.pid"));
    let l = lock.to_str().unwrap();
    // The shell exits only once its background child has exec'd sleep: until then the
    // child is a copy of the shell, and xlock's message would rightly name it "sh".
    let script = format!(
        "sleep 30 >/dev/null 2>&1 & echo $! > '{}'; \
         until read -r name < /proc/$!/comm && [ \"$name\" = sleep ]; do :; done; exit 3",
        pidfile.display()
    );
    let out = t.xlock(["-v", l, "sh", "-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let background: i32 = fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let start = start_time(background).expect("the background sleep runs");
    assert!(
        lock.exists(),
        "the lock was released while a process of the command had it"
    );
    assert!(
        stderr.contains(&format!(
            "left {l} to processes of the command that still have it: pid {background} (sleep)"
        )),
        "{stderr}"
    );
    let out = t.xlock(["-n", l, "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(signal_exact(background, start, Signal::SIGKILL));
    wait_until(Duration::from_secs(5), "the background sleep ends", || {
        !process_alive(background)
    });
    let out = t.xlock(["-n", "-v", l, "true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("took over stale"), "{stderr}");
    assert_eq!(sandbox.entries(), ["bg.pid"]);
}

/// SPEC §4.3: orphaned temp files (creator died) are removed by later acquirers; a temp
/// file whose creator is alive (its flock held, its record's process running) is never
/// touched.
fn orphaned_temp_files_are_swept_live_ones_kept(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let orphan = sandbox.path(".test.lock.0123456789abcdef0123456789abcdef.xlock-tmp");
    let live = sandbox.path(".test.lock.fedcba9876543210fedcba9876543210.xlock-tmp");
    let lookalike = sandbox.path(".test.lock.not-a-nonce.xlock-tmp");
    record_of(dead_pid()).plant(&orphan);
    record_of(std::process::id() as i32).plant(&live);
    fs::write(&lookalike, "x").unwrap();
    let live_file = fs::File::open(&live).unwrap();
    live_file.lock().unwrap(); // its "creator" is alive
                               // A stale lock to take over: sweeping follows evidence of a crash.
    t.make_stale(&lock);
    let out = t.xlock(["-n", lock.to_str().unwrap(), "true"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!orphan.exists(), "orphaned temp file not swept");
    assert!(live.exists(), "a live creator's temp file was removed");
    assert!(lookalike.exists(), "a file that is not xlock's temp file was removed");
    assert!(!lock.exists());
}

/// SPEC §4.5: a lock that is no longer ours is never removed; losing it is an error.
fn a_replaced_lock_is_never_removed(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let l = lock.display();
    let out = t
        .xlock([
            lock.to_str().unwrap(),
            "sh",
            "-c",
            &format!("rm '{l}'; echo precious > '{l}'"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("removed or replaced") && stderr.contains(&l.to_string()),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(&lock).unwrap(), "precious\n");
}
