//! Stress (issue acceptance 6): many real xlock processes contend for one lock while a
//! killer SIGKILLs random ones at random points (waiting, acquiring, holding,
//! releasing). Afterwards: no two critical sections overlapped, and no lock or temp
//! file is left. Runs in every mode: both temp-file modes, and no-locks mode (where
//! record evidence, the command tree's open files and take-over claims must hold
//! the line without kernel locks).
//!
//! Size: `XLOCK_STRESS_WORKERS` (default 8) × `XLOCK_STRESS_RUNS` (default 100); raise
//! them for a longer opt-in run, e.g. `XLOCK_STRESS_RUNS=2000 cargo test --test it stress::`.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::*;
use nix::unistd::Pid;

tests_in_every_mode!(exclusion_holds_while_xlocks_are_killed_at_random);

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn exclusion_holds_while_xlocks_are_killed_at_random(t: Mode) {
    let workers = setting("XLOCK_STRESS_WORKERS", 8);
    let runs = setting("XLOCK_STRESS_RUNS", 100);
    let sandbox = Sandbox::new();
    let (lock, log, messages) = (sandbox.lock(), sandbox.path("log"), sandbox.path("messages"));
    // The command ignores the SIGTERM it gets when its xlock is killed, so every section
    // that began also ends, and the next holder must wait for it (the command lock).
    // The section spins a few milliseconds (no fork), long enough that a waiter that
    // got in too early would be seen inside it.
    let section = format!(
        "trap '' TERM; echo \"B $$ 0\" >> '{l}'; i=0; while [ $i -lt 300 ]; do i=$((i+1)); done; echo \"E $$ 0\" >> '{l}'",
        l = log.display()
    );
    let live: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));

    let killer = {
        let (live, done, kills) = (live.clone(), done.clone(), kills.clone());
        thread::spawn(move || {
            let mut random = Random::new();
            while !done.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_micros(2000 + random.below(20_000)));
                let live = live.lock().unwrap();
                if live.is_empty() {
                    continue;
                }
                let victim = *live.iter().nth(random.below(live.len() as u64) as usize).unwrap();
                // Under the mutex, the victim is not reaped yet: its PID is still its own.
                if nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (live, lock, section, messages) = (live.clone(), lock.clone(), section.clone(), messages.clone());
            thread::spawn(move || {
                let mut succeeded = 0;
                for _ in 0..runs {
                    let stderr = OpenOptions::new().create(true).append(true).open(&messages).unwrap();
                    let status = run_as_victim(
                        &live,
                        t.xlock(["-v", lock.to_str().unwrap(), "sh", "-c", &section])
                            .stdin(Stdio::null())
                            .stderr(stderr),
                    );
                    // Every xlock that was not killed ran its section and exited 0.
                    if status.signal() != Some(Signal::SIGKILL as i32) {
                        // xlock's own error is among the -v lines of all runs.
                        assert_ran(status, &messages, VERBOSE_LINES);
                        succeeded += 1;
                    }
                }
                succeeded
            })
        })
        .collect();
    let succeeded: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    done.store(true, Ordering::Relaxed);
    killer.join().unwrap();

    // Killed commands may still be finishing; one more xlock waits for them, takes over
    // a lock whose last holder was killed, and sweeps.
    let settle = t.xlock([lock.to_str().unwrap(), "true"]).output().unwrap();
    assert!(settle.status.success(), "{}", String::from_utf8_lossy(&settle.stderr));

    let sections = assert_sections_never_overlap(&log);
    let messages = fs::read_to_string(&messages).unwrap_or_default();
    let takeovers = messages.matches("took over stale").count();
    let kills = kills.load(Ordering::Relaxed);
    eprintln!(
        "{t:?}: {} runs, {succeeded} succeeded, {kills} xlocks killed, {sections} sections, {takeovers} stale locks taken over",
        workers * runs
    );
    assert!(
        kills > 0 && takeovers > 0,
        "the run injected no crash that mattered: {kills} kills, {takeovers} take-overs"
    );
    assert!(
        sections >= succeeded,
        "{succeeded} xlocks succeeded but only {sections} sections were logged"
    );
    assert_eq!(sandbox.entries(), ["log", "messages"], "lock or temp file left behind");
}
