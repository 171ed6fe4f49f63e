//! Stress of the command's process tree (issue 13, SPEC §4.5): the lock stays held while
//! any process of the tree has the command lock's descriptor. Many xlocks contend for
//! one lock; each runs a shell that forks two steps. A killer hits random xlocks (SIGKILL,
//! or SIGTERM, which xlock passes to the shell), their shells and their steps (SIGKILL),
//! so a step often outlives its shell and its xlock.
//!
//! The witness: a flock on a separate file, taken once by each section's shell, and so
//! held while any process of its tree still has that descriptor, exactly as the command
//! lock is. A section whose shell cannot take it at once overlaps an earlier section's
//! tree: it says so in the log. Afterwards: no overlap, and no lock or temp file left.
//! Runs in every mode (O_TMPFILE, named temp files, no kernel locks).
//!
//! Size: `XLOCK_STRESS_WORKERS` (default 6) × `XLOCK_STRESS_RUNS` (default 40) per mode;
//! the long opt-in run: `XLOCK_STRESS_WORKERS=16 XLOCK_STRESS_RUNS=2000 cargo test
//! --release --test it stress_tree:: -- --nocapture` (it prints the counts per mode).

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

tests_in_every_mode!(exclusion_holds_while_trees_are_killed_at_random);

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the killer hits, and how often it did.
const TARGETS: [&str; 4] = ["xlock (KILL)", "xlock (TERM)", "shell (KILL)", "step (KILL)"];

/// Exit code of a section that found the witness taken.
const OVERLAP: i32 = 99;

fn exclusion_holds_while_trees_are_killed_at_random(t: Mode) {
    let workers = setting("XLOCK_STRESS_WORKERS", 6);
    let runs = setting("XLOCK_STRESS_RUNS", 40);
    let sandbox = Sandbox::new();
    let (lock, log, messages, witness) = (
        sandbox.lock(),
        sandbox.path("log"),
        sandbox.path("messages"),
        sandbox.path("witness"),
    );
    // fd 9, like the command lock's descriptor, goes to every process of the tree; the
    // flock taken through it lives while any of them has it. flock(1) is a step the
    // killer may hit too: then it is run again (on the same open file description, a
    // second flock is no conflict). Busy (1) is an overlap if another process still
    // has the witness open. If none has, its holder has closed all its descriptors and
    // is only finishing its exit: when two processes of a tree exit at once, the
    // kernel may drop the command lock in one's exit before the witness's flock in the
    // other's (each drops what it closed last), so the witness can be a moment late.
    // That is counted as LATE, and tried again. Each step is a shell running a program
    // for 20 ms: long enough that a step left running by an early release is seen.
    let step = "sleep 0.02";
    let section = format!(
        "exec 9>>'{w}'; \
         while :; do \
           flock -n 9; taken=$?; [ $taken -gt 128 ] && continue; [ $taken = 1 ] || break; \
           others=$(exec 9>&-; find /proc/[0-9]*/fd -maxdepth 1 -lname '{w}' 2>/dev/null | grep -v \"^/proc/$$/\"); \
           [ -z \"$others\" ] || {{ echo \"OVERLAP $$ (witness held by $others)\" >> '{l}'; exit {OVERLAP}; }}; \
           echo \"LATE $$\" >> '{l}'; \
         done; \
         [ $taken = 0 ] || {{ echo \"OVERLAP $$ (flock: $taken)\" >> '{l}'; exit {OVERLAP}; }}; \
         echo \"S $$\" >> '{l}'; sh -c '{step}'; sh -c '{step}'; echo \"E $$\" >> '{l}'",
        w = witness.display(),
        l = log.display()
    );
    let live: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let kills: Arc<[AtomicUsize; 4]> = Arc::default();

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
                // Under the mutex no xlock is reaped: their PIDs are still their own, so
                // a process whose parent is one of them is in its tree.
                let target = random.below(4) as usize;
                let hit = if target < 2 {
                    let xlock = *live.iter().nth(random.below(live.len() as u64) as usize).unwrap();
                    let signal = if target == 0 { Signal::SIGKILL } else { Signal::SIGTERM };
                    nix::sys::signal::kill(Pid::from_raw(xlock), signal).is_ok()
                } else {
                    // A shell of a holder, or a step of one: the victims to choose from.
                    let table = process_table();
                    let children = |parents: &[(i32, u64)]| -> Vec<(i32, u64)> {
                        table
                            .iter()
                            .filter(|(_, ppid, _)| parents.iter().any(|(p, _)| p == ppid))
                            .map(|&(pid, _, start)| (pid, start))
                            .collect()
                    };
                    let xlocks: Vec<(i32, u64)> = live.iter().map(|&pid| (pid, 0)).collect();
                    let shells = children(&xlocks);
                    let victims = if target == 2 { shells } else { children(&shells) };
                    match victims.get(random.below(victims.len().max(1) as u64) as usize) {
                        Some(&(pid, start)) => signal_exact(pid, start, Signal::SIGKILL),
                        None => false,
                    }
                };
                if hit {
                    kills[target].fetch_add(1, Ordering::Relaxed);
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
                            .stdout(Stdio::null())
                            .stderr(stderr),
                    );
                    // Killed (or its shell was, and it died of the same signal), an
                    // overlap (the log shows it), or it ran its section.
                    let killed = [Signal::SIGKILL, Signal::SIGTERM]
                        .iter()
                        .any(|&s| status.signal() == Some(s as i32));
                    if killed || status.code() == Some(OVERLAP) {
                        continue;
                    }
                    // "left ": a lock left to the command's tree (-v).
                    assert_ran(status, &messages, &[VERBOSE_LINES, &["left "]].concat());
                    succeeded += 1;
                }
                succeeded
            })
        })
        .collect();
    let succeeded: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    done.store(true, Ordering::Relaxed);
    killer.join().unwrap();

    // Steps may still run; one more xlock waits for them, takes over a lock whose last
    // holder was killed, and sweeps.
    let settle = t.xlock([lock.to_str().unwrap(), "true"]).output().unwrap();
    assert!(settle.status.success(), "{}", String::from_utf8_lossy(&settle.stderr));

    let text = fs::read_to_string(&log).unwrap_or_default();
    let count = |word: &str| text.lines().filter(|l| l.starts_with(word)).count();
    let (sections, overlaps, late) = (count("S "), count("OVERLAP "), count("LATE "));
    let messages = fs::read_to_string(&messages).unwrap_or_default();
    let takeovers = messages.matches("took over stale").count();
    let kills: Vec<usize> = kills.iter().map(|k| k.load(Ordering::Relaxed)).collect();
    let shown: Vec<String> = TARGETS
        .iter()
        .zip(&kills)
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    eprintln!(
        "{t:?}: {} runs, {succeeded} succeeded, {sections} sections, kills: {}; {takeovers} take-overs, {overlaps} overlaps, {late} late witness releases",
        workers * runs,
        shown.join(", ")
    );
    if overlaps > 0 {
        let kept = sandbox.dir.keep();
        panic!("sections of different holders overlapped: see {}", kept.display());
    }
    assert!(
        kills.iter().sum::<usize>() > 0 && takeovers > 0,
        "the run injected no crash that mattered: {kills:?} kills, {takeovers} take-overs"
    );
    assert!(
        sections >= succeeded,
        "{succeeded} xlocks succeeded but only {sections} sections began"
    );
    assert_eq!(
        sandbox.entries(),
        ["log", "messages", "witness"],
        "lock or temp file left behind"
    );
}
