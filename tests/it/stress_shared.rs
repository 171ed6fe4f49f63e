//! Stress of shared locks and slots (SPEC §9, issue 14): many real xlock processes,
//! shared and exclusive (or all with `--slots N`), while a killer SIGKILLs random
//! xlocks (waiting, holding the gate, holding, releasing) and some commands SIGKILL
//! themselves at a random point. Afterwards, from the commands' own timestamps: no
//! exclusive section overlapped any other section, never more than N slot holders at
//! once, slot numbers in 0..N and unique among the holders of the moment; and, once
//! one more xlock has cleaned up after the crashes, nothing is left behind.
//!
//! Size: `XLOCK_STRESS_WORKERS` (default 6) × `XLOCK_STRESS_RUNS` (default 30), as for
//! `stress.rs`; raise them for a longer opt-in run, e.g.
//! `XLOCK_STRESS_RUNS=1000 cargo test --release --test it stress_shared::`.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::*;
use nix::unistd::Pid;

tests_in_every_mode!(readers_and_writers_under_random_kills, slots_under_random_kills);

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What a run takes: `-s`, an exclusive lock, or `--slots N`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Take {
    Shared,
    Exclusive,
    Slot(u32),
}

/// One section, as its command logged it: `B` (begin) and `E` (end) or `Z` (killed
/// itself right after) lines, `WORD PID NS KIND SLOT XLOCK` (XLOCK: its xlock's PID).
#[derive(Debug, Clone)]
struct Section {
    pid: u32,
    xlock: u32,
    kind: String,
    slot: Option<u32>,
    begin: u128,
    end: u128,
}

/// One xlock run, as its worker saw it: when (ns since the epoch, as the log's), its
/// PID, how it ended, and the file its stderr went to.
#[derive(Debug, Clone)]
struct Run {
    xlock: i32,
    started: u128,
    ended: u128,
    status: std::process::ExitStatus,
    messages: std::path::PathBuf,
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The sections of `log`, and those that began but never ended.
fn sections(log: &Path) -> (Vec<Section>, Vec<Section>) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut open: Vec<Section> = Vec::new();
    let mut done = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 6, "torn log line {line:?}");
        let (pid, ns): (u32, u128) = (words[1].parse().unwrap(), words[2].parse().unwrap());
        match words[0] {
            "B" => open.push(Section {
                pid,
                xlock: words[5].parse().unwrap(),
                kind: words[3].to_owned(),
                slot: words[4].parse().ok(),
                begin: ns,
                end: 0,
            }),
            _ => {
                let at = open
                    .iter()
                    .position(|s| s.pid == pid)
                    .unwrap_or_else(|| panic!("end without begin: {line}"));
                let mut section = open.remove(at);
                section.end = ns;
                done.push(section);
            }
        }
    }
    (done, open)
}

/// What is known of a section that never ended: the log around it, its xlock's run
/// (by PID and time: PIDs are reused within a run), whether the killer hit that
/// xlock, and every xlock message naming either PID.
fn never_ended(log: &Path, section: &Section, runs: &[Run], kills: &[(i32, u128)]) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let (pid, xlock) = (section.pid.to_string(), section.xlock.to_string());
    let names = |line: &str| line.split_whitespace().any(|w| w == pid || w == xlock);
    let at = lines
        .iter()
        .position(|l| l.starts_with("B ") && l.contains(&format!(" {} ", section.begin)))
        .unwrap_or(0);
    let mut out = format!("{section:?}\nthe log around its B (line {at}):\n");
    for (i, line) in lines.iter().enumerate().skip(at.saturating_sub(8)).take(24) {
        out += &format!("  {i:6} {line}\n");
    }
    out += "log lines naming its PID or its xlock's:\n";
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| names(l)) {
        out += &format!("  {i:6} {line}\n");
    }
    for run in runs
        .iter()
        .filter(|r| r.xlock as u32 == section.xlock && r.started <= section.begin && section.begin <= r.ended)
    {
        out += &format!(
            "its xlock's run: {run:?}, ran {} ms, the section began {} ms in\n",
            (run.ended - run.started) / 1_000_000,
            (section.begin - run.started) / 1_000_000
        );
        out += &format!(
            "  its messages: {:?}\n",
            fs::read_to_string(&run.messages).unwrap_or_default()
        );
    }
    for (victim, at) in kills.iter().filter(|(v, _)| *v as u32 == section.xlock) {
        out += &format!(
            "  the killer SIGKILLed pid {victim} at {at} ({:+} ms from the B)\n",
            (*at as i128 - section.begin as i128) / 1_000_000
        );
    }
    out += "messages naming either PID:\n";
    for run in runs {
        for line in fs::read_to_string(&run.messages).unwrap_or_default().lines() {
            if line.contains(&pid) || line.contains(&xlock) {
                out += &format!("  (xlock {} {:?}) {line}\n", run.xlock, run.status);
            }
        }
    }
    out
}

/// Checks the invariants over every moment: an exclusive section alone, at most
/// `slots` sections at once, each with a slot in 0..N of its own.
fn check(sections: &[Section], slots: Option<u32>) {
    // Ends before begins at the same nanosecond.
    let mut events: Vec<(u128, bool, usize)> = Vec::new();
    for (i, s) in sections.iter().enumerate() {
        assert!(s.begin <= s.end, "{s:?}");
        events.push((s.begin, true, i));
        events.push((s.end, false, i));
    }
    events.sort();
    let mut active: Vec<usize> = Vec::new();
    for (_, begins, i) in events {
        if !begins {
            active.retain(|&a| a != i);
            continue;
        }
        let s = &sections[i];
        let others: Vec<&Section> = active.iter().map(|&a| &sections[a]).collect();
        assert!(
            s.kind != "X" || others.is_empty(),
            "an exclusive section overlapped: {s:?} with {others:?}"
        );
        assert!(
            others.iter().all(|o| o.kind != "X"),
            "a section began inside an exclusive one: {s:?} with {others:?}"
        );
        if let Some(n) = slots {
            let slot = s.slot.unwrap_or_else(|| panic!("no XLOCK_SLOT: {s:?}"));
            assert!(slot < n, "slot out of 0..{n}: {s:?}");
            assert!(
                others.len() < n as usize,
                "more than {n} slot holders: {s:?} with {others:?}"
            );
            assert!(
                others.iter().all(|o| o.slot != Some(slot)),
                "slot {slot} held twice: {s:?} with {others:?}"
            );
        }
        active.push(i);
    }
}

fn readers_and_writers_under_random_kills(t: Mode) {
    stress(t, None);
}

fn slots_under_random_kills(t: Mode) {
    stress(t, Some(3));
}

fn stress(t: Mode, slots: Option<u32>) {
    let workers = setting("XLOCK_STRESS_WORKERS", 6);
    let runs_each = setting("XLOCK_STRESS_RUNS", 30);
    let sandbox = Sandbox::new();
    let (lock, log, messages) = (sandbox.path("test.lock"), sandbox.path("log"), sandbox.path("messages"));
    fs::create_dir(&messages).unwrap();
    let live: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let killed: Arc<Mutex<Vec<(i32, u128)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));

    // Without kernel locks, waits poll (up to 250 ms apart): kill less often, or
    // hardly any xlock gets its turn before it is killed.
    let pace = if t == Mode::NoLocks { 5 } else { 1 };
    let killer = {
        let (live, done, kills, killed) = (live.clone(), done.clone(), kills.clone(), killed.clone());
        thread::spawn(move || {
            let mut random = Random::new();
            while !done.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_micros(pace * (3000 + random.below(25_000))));
                let live = live.lock().unwrap();
                if live.is_empty() {
                    continue;
                }
                let victim = *live.iter().nth(random.below(live.len() as u64) as usize).unwrap();
                // Under the mutex, the victim is not reaped yet: its PID is still its own.
                if nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).is_ok() {
                    kills.fetch_add(1, Ordering::Relaxed);
                    killed.lock().unwrap().push((victim, now_ns()));
                }
            }
        })
    };

    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let (live, lock, log, messages, runs) =
                (live.clone(), lock.clone(), log.clone(), messages.clone(), runs.clone());
            thread::spawn(move || {
                let mut random = Random(worker as u64 * 7919 + 17);
                let mut ran = 0;
                for run in 0..runs_each {
                    let take = match slots {
                        Some(n) => Take::Slot(n),
                        None if random.below(3) == 0 => Take::Exclusive,
                        None => Take::Shared,
                    };
                    let kind = match take {
                        Take::Exclusive => "X",
                        Take::Shared => "S",
                        Take::Slot(_) => "K",
                    };
                    let stamp = |word: &str| {
                        format!(
                            "echo \"{word} $$ $(date +%s%N) {kind} ${{XLOCK_SLOT:--}} $PPID\" >> '{}'",
                            log.display()
                        )
                    };
                    // One command in eight kills itself with SIGKILL inside its section.
                    let end = if random.below(8) == 0 {
                        format!("{}; kill -KILL $$", stamp("Z"))
                    } else {
                        stamp("E")
                    };
                    // The command ignores the SIGTERM it gets when its xlock is killed,
                    // so its section ends, and its share or slot is held until then.
                    let section = format!(
                        "trap '' TERM; {}; i=0; while [ $i -lt {} ]; do i=$((i+1)); done; {end}",
                        stamp("B"),
                        100 + random.below(300)
                    );
                    // Half of them with -v: its once-a-second notice re-checks what a
                    // waiter waits for, which once hid a deadlock of waits without it.
                    let mut args: Vec<String> = Vec::new();
                    if random.below(2) == 0 {
                        args.push("-v".into());
                    }
                    match take {
                        Take::Shared => args.push("-s".into()),
                        Take::Exclusive => {}
                        Take::Slot(n) => args.extend(["--slots".into(), n.to_string()]),
                    }
                    args.extend([lock.display().to_string(), "-c".into(), section]);
                    let messages = messages.join(format!("{worker}.{run}"));
                    let stderr = OpenOptions::new().create(true).append(true).open(&messages).unwrap();
                    let started = now_ns();
                    let (xlock, status) =
                        run_as_victim_with_pid(&live, t.xlock(&args).stdin(Stdio::null()).stderr(stderr));
                    runs.lock().unwrap().push(Run {
                        xlock,
                        started,
                        ended: now_ns(),
                        status,
                        messages: messages.clone(),
                    });
                    // Not killed (by the killer, or with its command): it ran and exited 0.
                    if status.signal() != Some(Signal::SIGKILL as i32) {
                        assert_ran(status, &messages, VERBOSE_LINES);
                        ran += 1;
                    }
                }
                ran
            })
        })
        .collect();
    let ran: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    done.store(true, Ordering::Relaxed);
    killer.join().unwrap();

    // Commands of killed xlocks may still be running: a killed xlock's command goes on
    // (it ignores the SIGTERM), and under load it may not even have logged its B yet
    // (tens of ms after its xlock's death were seen), so the log cannot say which to
    // wait for. Wait until no process names our log in its command line: the
    // commands' shells, their `$(date)` subshells, and a killed xlock's child not yet
    // exec'd, whose -c argument names it too (a reused PID does not). Then one more
    // xlock cleans up after the crashes (stale records, the gate).
    let ours = log.display().to_string();
    wait_until(Duration::from_secs(20), "every command has ended", || {
        processes_naming(&ours).is_empty()
    });
    // That is not yet "every holder has gone": a process that is exiting drops its
    // command line (its memory) before its descriptors, and the kernel drops their
    // locks later still. Such a command no longer names the log but still holds its
    // share's or slot's command lock; the settling `--slots` xlock below then finds
    // that slot busy, rightly takes another, and the record is left behind once the
    // command is gone (seen about once in 150 runs of `named_temp::slots`; `--shared`
    // settles with an exclusive xlock, which waits). So also wait until no process has
    // a file of the sandbox open and no lock on one is held: what the settler looks at.
    wait_until(
        Duration::from_secs(20),
        "no file in the sandbox is open or locked",
        || held_in(sandbox.dir.path()).is_empty(),
    );
    let waited_until = now_ns();
    let (sections, open) = sections(&log);
    if !open.is_empty() {
        let (runs, killed) = (runs.lock().unwrap(), killed.lock().unwrap());
        let about: Vec<String> = open
            .iter()
            .map(|s| {
                let cmdline = fs::read(format!("/proc/{}/cmdline", s.pid)).unwrap_or_default();
                format!(
                    "{}the test had waited for the commands until {:+} ms from its B; now its PID is {}\n",
                    never_ended(&log, s, &runs, &killed),
                    (waited_until as i128 - s.begin as i128) / 1_000_000,
                    match process_alive(s.pid as i32) {
                        true if String::from_utf8_lossy(&cmdline).contains(&ours) => "still our command",
                        true => "another process",
                        false => "gone",
                    }
                )
            })
            .collect();
        panic!("sections that never ended:\n{}", about.join("\n"));
    }
    let mut settle = vec![lock.display().to_string(), "true".into()];
    if let Some(n) = slots {
        settle.splice(0..0, ["--slots".to_owned(), n.to_string()]);
    }
    let out = t.xlock(&settle).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    check(&sections, slots);
    let takeovers: usize = runs
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            fs::read_to_string(&r.messages)
                .unwrap_or_default()
                .matches("took over stale")
                .count()
        })
        .sum();
    let kills = kills.load(Ordering::Relaxed);
    let exclusive = sections.iter().filter(|s| s.kind == "X").count();
    eprintln!(
        "{t:?} {slots:?}: {} runs, {ran} ran to the end, {kills} xlocks killed, {} sections ({exclusive} exclusive), {takeovers} stale records taken over",
        workers * runs_each,
        sections.len()
    );
    assert!(kills > 0, "the run injected no crash");
    assert!(
        sections.len() >= ran,
        "{ran} xlocks ran to the end but only {} sections were logged",
        sections.len()
    );
    assert_eq!(
        sandbox.entries(),
        ["log", "messages"],
        "lock, members or temp file left behind: {:?}\nthe settling run said: {}",
        sandbox
            .snapshot()
            .keys()
            .filter(|path| !path.starts_with(&messages))
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The wait before settling (`held_in`) sees a slot holder's lock and open record, and
/// nothing once it has gone: it can fail, and it ends.
#[test]
fn the_wait_for_every_holder_sees_a_slot_holder_until_it_has_gone() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = Mode::Unnamed.hold(&["--slots", "2"], &lock, "read _; exit 0");
    let held = held_in(sandbox.dir.path());
    assert!(
        held.iter().any(|h| h.starts_with("/proc/locks: "))
            && held.iter().any(|h| h.ends_with(".test.lock.xlock-solo open")),
        "{held:?}"
    );
    holder.release();
    assert!(holder.wait().success());
    assert_eq!(held_in(sandbox.dir.path()), Vec::<String>::new());
}
