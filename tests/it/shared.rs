//! Shared locks and slots (SPEC §9, issue 14), with real processes, in every mode:
//! shared holders overlap, an exclusive holder excludes them both ways, a waiting
//! writer is not overtaken by later readers (timestamps), slots never exceed N and
//! XLOCK_SLOT is unique, a LOCK is of one kind, -n / --timeout / signals / exit codes
//! per holder, crashes free a share or slot at once and exactly one waiter takes a
//! stale one over, nesting, `--status`, and nothing left behind.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

tests_in_every_mode!(
    shared_holders_overlap_and_status_lists_each,
    an_exclusive_holder_excludes_shared_ones_both_ways,
    a_waiting_writer_goes_before_later_readers,
    readers_and_a_writer_queued_behind_an_exclusive_holder_never_overlap,
    slots_are_never_more_than_n_and_unique,
    a_lock_is_of_one_kind,
    every_mix_of_kinds_names_both_also_nested_and_at_the_gate,
    nonblock_timeout_signals_and_exit_codes_per_holder,
    a_crashed_holder_frees_its_share_or_slot_and_one_waiter_takes_it_over,
    a_slot_kept_by_the_command_tree_is_free_when_the_tree_ends,
    nesting_shared_runs_and_exclusive_under_shared_is_refused,
);

const LIMIT: Duration = Duration::from_secs(20);

pub(crate) fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// `xlock EXTRA... LOCK -c SCRIPT` in mode `t`, run to the end.
pub(crate) fn run(t: Mode, extra: &[&str], lock: &Path, script: &str) -> Output {
    t.hold_args(extra, lock, script).stdin(Stdio::null()).output().unwrap()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) fn status_text(lock: &Path) -> (Option<i32>, String) {
    let out = xlock(["--status".to_owned(), arg(lock)]).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status_json(lock: &Path) -> Vec<Value> {
    let out = xlock(["--status".to_owned(), "--json".to_owned(), arg(lock)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Once `pid` holds LOCK (the gate) and waits: a writer waiting out the readers, a
/// shared acquirer waiting for a writer, a slot waiter.
pub(crate) fn wait_until_next_in_line(pid: i32, lock: &Path) {
    wait_until(LIMIT, "LOCK exists", || lock.exists());
    wait_until_waiting(pid, lock);
}

/// Nothing at all is left in the sandbox but `keep`.
pub(crate) fn assert_nothing_left(sandbox: &Sandbox, keep: &[&str]) {
    let left: Vec<String> = sandbox
        .entries()
        .into_iter()
        .filter(|name| !keep.contains(&name.as_str()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

pub(crate) fn release_all(holders: &mut [Running]) {
    for holder in holders.iter_mut() {
        holder.release();
    }
    for holder in holders.iter_mut() {
        assert!(holder.wait().success());
    }
}

fn shared_holders_overlap_and_status_lists_each(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    // Each starts while the others hold: they overlap.
    let mut holders: Vec<Running> = (0..3).map(|_| t.hold(&["-s"], &lock, "read _; exit 0")).collect();
    let (code, text) = status_text(&lock);
    assert_eq!(code, Some(75), "{text}");
    for holder in &holders {
        let line = format!("held (shared) by pid {} ", holder.pid());
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }
    assert_eq!(text.lines().count(), 3, "{text}");
    let objects = status_json(&lock);
    assert_eq!(objects.len(), 3, "{objects:?}");
    for object in &objects {
        assert_eq!(object["state"], "held");
        assert_eq!(object["mode"], "shared");
        assert_eq!(object["lock"], arg(&lock));
        assert!(holders.iter().any(|h| object["pid"] == h.pid().as_raw()), "{object}");
    }
    release_all(&mut holders);
    assert_eq!(status_text(&lock), (Some(0), format!("{}: free\n", lock.display())));
    assert_nothing_left(&sandbox, &[]);
}

fn an_exclusive_holder_excludes_shared_ones_both_ways(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut reader = t.hold(&["-s"], &lock, "read _; exit 0");
    let out = run(t, &["-n"], &lock, "echo ran");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains(&format!("held by pid {}", reader.pid())),
        "{}",
        stderr(&out)
    );
    // A writer waits for the reader, holding LOCK; status names it next in line.
    let mut writer = Running::start(t.hold_args(&[], &lock, "echo started; read _; exit 0"));
    wait_until_next_in_line(writer.child.id() as i32, &lock);
    let (code, text) = status_text(&lock);
    assert_eq!(code, Some(75));
    assert!(
        text.contains(&format!("held (shared) by pid {}", reader.pid()))
            && text.contains(&format!("next in line (exclusive): pid {}", writer.pid())),
        "{text}"
    );
    let states: Vec<Value> = status_json(&lock).iter().map(|o| o["state"].clone()).collect();
    assert_eq!(states, ["held", "waiting"]);
    reader.release();
    assert!(reader.wait().success());
    assert_eq!(writer.line(), "started");
    // And the other way: a shared request while the writer holds.
    let out = run(t, &["-s", "-n"], &lock, "echo ran");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("held by pid {}", writer.pid())),
        "{}",
        stderr(&out)
    );
    writer.release();
    assert!(writer.wait().success());
    assert_nothing_left(&sandbox, &[]);
}

/// SPEC §9: once a writer waits, readers that come later start only after it ended,
/// told by the commands' own timestamps.
fn a_waiting_writer_goes_before_later_readers(t: Mode) {
    let sandbox = Sandbox::new();
    let (lock, log) = (sandbox.lock(), sandbox.path("log"));
    let mut first = t.hold(&["-s"], &lock, &format!("read _; {}", stamp("R1E", &log)));
    let mut writer = Running::start(t.hold_args(
        &[],
        &lock,
        &format!("{}; echo started; read _; {}", stamp("WB", &log), stamp("WE", &log)),
    ));
    wait_until_next_in_line(writer.child.id() as i32, &lock);
    let late: Vec<Child> = (0..2)
        .map(|_| {
            t.hold_args(&["-s"], &lock, &stamp("R2B", &log))
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for reader in &late {
        wait_until_waiting(reader.id() as i32, &lock);
    }
    first.release();
    assert!(first.wait().success());
    assert_eq!(writer.line(), "started");
    writer.release();
    assert!(writer.wait().success());
    for reader in late {
        assert!(reader.wait_with_output().unwrap().status.success());
    }
    let stamps = read_stamps(&log);
    let at = |word: &str| stamps.iter().find(|s| s.word == word).unwrap().ns;
    let words: Vec<&str> = stamps.iter().map(|s| s.word.as_str()).collect();
    assert_eq!(words, ["R1E", "WB", "WE", "R2B", "R2B"], "{stamps:?}");
    assert!(at("R1E") <= at("WB") && at("WE") <= at("R2B"), "{stamps:?}");
    assert_nothing_left(&sandbox, &["log"]);
}

/// Readers that waited for an exclusive holder join without the gate once it has
/// left, racing a writer that waited for it too (whichever the kernel wakes first):
/// the writer's command never overlaps a reader's, told by the commands' own
/// timestamps, and nothing is left behind.
fn readers_and_a_writer_queued_behind_an_exclusive_holder_never_overlap(t: Mode) {
    let sandbox = Sandbox::new();
    let (lock, log) = (sandbox.lock(), sandbox.path("log"));
    let work = |word: &str| {
        format!(
            "{}; sleep 0.05; {}",
            stamp(&format!("{word}B"), &log),
            stamp(&format!("{word}E"), &log)
        )
    };
    for round in 0..3 {
        let mut holder = t.hold(&[], &lock, "read _; exit 0");
        let mut waiters: Vec<Child> = Vec::new();
        for i in 0..4 {
            // The writer comes second, third... in turn: woken in any order.
            let writer = i == round + 1;
            let (extra, script): (&[&str], String) = if writer { (&[], work("W")) } else { (&["-s"], work("R")) };
            let child = t.hold_args(extra, &lock, &script).stdin(Stdio::null()).spawn().unwrap();
            wait_until_waiting(child.id() as i32, &lock);
            waiters.push(child);
        }
        holder.release();
        assert!(holder.wait().success());
        for waiter in waiters {
            let out = waiter.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        }
        assert_nothing_left(&sandbox, &["log"]);
    }
    let stamps = read_stamps(&log);
    assert_eq!(stamps.len(), 3 * 4 * 2, "{stamps:?}");
    let window = |pid: u32| {
        let at = |word: char| {
            stamps
                .iter()
                .find(|s| s.pid == pid && s.word.ends_with(word))
                .unwrap()
                .ns
        };
        (at('B'), at('E'))
    };
    for writer in stamps.iter().filter(|s| s.word == "WB") {
        let (wb, we) = window(writer.pid);
        for reader in stamps.iter().filter(|s| s.word == "RB") {
            let (rb, re) = window(reader.pid);
            assert!(
                re <= wb || we <= rb,
                "writer {} overlaps reader {}: {stamps:?}",
                writer.pid,
                reader.pid
            );
        }
    }
}

fn slot_of(holder: &mut Running) -> u32 {
    holder.line().parse().unwrap()
}

fn slots_are_never_more_than_n_and_unique(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let slots = ["--slots", "2"];
    let script = "echo $XLOCK_SLOT; read _; exit 0";
    let mut a = t.hold(&slots, &lock, script);
    let mut b = t.hold(&slots, &lock, script);
    let (slot_a, slot_b) = (slot_of(&mut a), slot_of(&mut b));
    let mut taken = [slot_a, slot_b];
    taken.sort_unstable();
    assert_eq!(taken, [0, 1]);
    let out = run(t, &["--slots", "2", "-n"], &lock, "echo ran");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let (code, text) = status_text(&lock);
    assert_eq!(code, Some(75));
    assert!(
        text.contains(&format!("held (slot {slot_a} of 2) by pid {}", a.pid()))
            && text.contains(&format!("held (slot {slot_b} of 2) by pid {}", b.pid())),
        "{text}"
    );
    // A third waits (holding LOCK, next in line) and gets the slot that frees.
    let mut c = Running::start(t.hold_args(&slots, &lock, &format!("echo started; {script}")));
    wait_until_next_in_line(c.child.id() as i32, &lock);
    let objects = status_json(&lock);
    let waiting: Vec<&Value> = objects.iter().filter(|o| o["state"] == "waiting").collect();
    assert_eq!(waiting.len(), 1, "{objects:?}");
    assert_eq!(waiting[0]["pid"], c.pid().as_raw());
    assert_eq!(waiting[0]["slots"], 2);
    let (freed, kept) = if slot_a == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    freed.release();
    assert!(freed.wait().success());
    assert_eq!(c.line(), "started");
    assert_eq!(slot_of(&mut c), 0, "the freed slot is reused");
    kept.release();
    c.release();
    assert!(kept.wait().success() && c.wait().success());
    assert_nothing_left(&sandbox, &[]);
}

fn a_lock_is_of_one_kind(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut slot = t.hold(&["--slots", "2"], &lock, "read _; exit 0");
    let out = run(t, &["--slots", "3"], &lock, "echo ran");
    assert_fails(&out, &["held with --slots 2", "asked for --slots 3", "use --slots 2"]);
    assert!(out.stdout.is_empty());
    let out = run(t, &["-s"], &lock, "echo ran");
    assert_fails(&out, &["held with --slots 2", "asked for --shared"]);
    let out = run(t, &[], &lock, "echo ran");
    assert_fails(&out, &["held with --slots 2", "asked for an exclusive lock"]);
    slot.release();
    assert!(slot.wait().success());
    let mut shared = t.hold(&["-s"], &lock, "read _; exit 0");
    let out = run(t, &["--slots", "2"], &lock, "echo ran");
    assert_fails(&out, &["held with --shared", "asked for --slots 2"]);
    shared.release();
    assert!(shared.wait().success());
    let mut exclusive = t.hold(&[], &lock, "read _; exit 0");
    let out = run(t, &["--slots", "2"], &lock, "echo ran");
    assert_fails(&out, &["held with an exclusive lock", "asked for --slots 2"]);
    exclusive.release();
    assert!(exclusive.wait().success());
    assert_nothing_left(&sandbox, &[]);
}

/// SPEC §9: mixing slots with exclusive/shared on one LOCK, or another N, is exit 125
/// naming both kinds, whichever way the two meet. Beyond `a_lock_is_of_one_kind`:
/// inside a holder's command (nesting), where an exclusive xlock inside a slot holder
/// was told "cannot upgrade a shared lock" (there is none: it holds a slot), and
/// behind a slot waiter holding the gate, where an exclusive `-n`/`-w` was told
/// "busy" (exit 75).
fn every_mix_of_kinds_names_both_also_nested_and_at_the_gate(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let me = xlock_bin().display().to_string();
    let l = arg(&lock);
    let inner = |kind: &str| format!("'{me}' {kind} '{l}' echo ran; echo \"[{kind}]=$?\"");
    // (outer kind, inner kind, what the inner one is told), one inner xlock at a time.
    let cases: &[(&[&str], &str, &[&str])] = &[
        (
            &["--slots", "2"],
            "",
            &["held with --slots 2", "asked for an exclusive lock", "use --slots 2"],
        ),
        (
            &["--slots", "2"],
            "-s",
            &["held with --slots 2", "asked for --shared", "use --slots 2"],
        ),
        (
            &["--slots", "2"],
            "--slots 3",
            &["held with --slots 2", "asked for --slots 3", "use --slots 2"],
        ),
        (
            &["-s"],
            "--slots 2",
            &["held with --shared", "asked for --slots 2", "use --shared"],
        ),
        (
            &[],
            "--slots 2",
            &[
                "held with an exclusive lock",
                "asked for --slots 2",
                "use an exclusive lock",
            ],
        ),
        // Not a mix: the one refusal that is about upgrading.
        (&["-s"], "", &["cannot upgrade a shared lock", "with --shared"]),
    ];
    for (outer, kind, told) in cases {
        let out = run(t, outer, &lock, &inner(kind));
        let said = stderr(&out);
        assert!(out.status.success(), "{outer:?} then [{kind}]: {said}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("[{kind}]=125\n"),
            "{outer:?} then [{kind}]: {said}"
        );
        for needle in *told {
            assert!(
                said.contains(needle),
                "{outer:?} then [{kind}]: {needle:?} not in {said:?}"
            );
        }
        assert_eq!(said.lines().count(), 1, "{outer:?} then [{kind}]: {said}");
        if outer.first() == Some(&"--slots") {
            assert!(!said.contains("shared lock"), "{outer:?} then [{kind}]: {said}");
        }
    }
    // Behind a slot waiter, which holds the gate (LOCK) while all N slots are busy.
    let mut slot = t.hold(&["--slots", "1"], &lock, "read _; exit 0");
    let mut waiter = Running::start(t.hold_args(&["--slots", "1"], &lock, "echo started"));
    wait_until_next_in_line(waiter.child.id() as i32, &lock);
    let (nonblock, timeout) = (&["-n"][..], &["-w", "0.2"][..]);
    for (kind, wait) in [
        (&[][..], nonblock),
        (&[][..], timeout),
        (&["-s"][..], nonblock),
        (&["--slots", "2"][..], nonblock),
    ] {
        let args: Vec<&str> = kind.iter().chain(wait).copied().collect();
        let out = run(t, &args, &lock, "echo ran");
        let asked = match kind {
            [] => "asked for an exclusive lock",
            ["-s"] => "asked for --shared",
            _ => "asked for --slots 2",
        };
        assert_fails(&out, &["held with --slots 1", asked, "use --slots 1"]);
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    slot.release();
    assert!(slot.wait().success());
    assert_eq!(waiter.line(), "started");
    assert!(waiter.wait().success());
    assert_nothing_left(&sandbox, &[]);
}

fn nonblock_timeout_signals_and_exit_codes_per_holder(t: Mode) {
    use nix::sys::signal::Signal;
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    // Exit codes pass through, per holder.
    let mut other = t.hold(&["-s"], &lock, "read _; exit 0");
    assert_eq!(run(t, &["-s"], &lock, "exit 7").status.code(), Some(7));
    let out = run(t, &["--slots", "1", "-E", "9", "-n"], &lock, "true");
    assert_eq!(
        out.status.code(),
        Some(125),
        "mixing is an error, not busy: {}",
        stderr(&out)
    );
    other.release();
    assert!(other.wait().success());
    // A busy slot: -n, -E, --timeout.
    let mut holder = t.hold(&["--slots", "1"], &lock, "read _; exit 0");
    let out = run(t, &["--slots", "1", "-n", "-E", "9"], &lock, "echo ran");
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("busy (held by pid {}", holder.pid())),
        "{}",
        stderr(&out)
    );
    let out = run(t, &["--slots", "1", "-w", "0.3"], &lock, "echo ran");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out after"), "{}", stderr(&out));
    // A signal ends a slot waiter's wait: it dies of it and leaves LOCK (the gate).
    let mut waiter = t
        .hold_args(&["--slots", "1"], &lock, "echo ran")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_next_in_line(waiter.id() as i32, &lock);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(waiter.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(waiter.wait().unwrap().signal(), Some(Signal::SIGTERM as i32));
    assert!(!lock.exists(), "the waiter left LOCK behind");
    holder.release();
    assert!(holder.wait().success());
    // A shared holder's command killed by a signal: its xlock dies of the same.
    let out = run(t, &["-s"], &lock, "kill -USR1 $$");
    assert_eq!(out.status.signal(), Some(Signal::SIGUSR1 as i32));
    assert_nothing_left(&sandbox, &[]);
}

fn a_crashed_holder_frees_its_share_or_slot_and_one_waiter_takes_it_over(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    for (kind, waiters_take) in [(&["-s"][..], &[][..]), (&["--slots", "1"][..], &["--slots", "1"][..])] {
        // --close: the command dies with its xlock (nothing of its tree keeps it).
        let mut args = kind.to_vec();
        args.push("--close");
        let mut holder = t.hold(&args, &lock, "exec sleep 30");
        holder.kill(nix::sys::signal::Signal::SIGKILL);
        holder.wait();
        assert!(status_text(&lock).1.contains("stale"), "{}", status_text(&lock).1);
        // Exclusive waiters drain a stale share; slot waiters take the stale slot.
        let waiters: Vec<Child> = (0..4)
            .map(|_| {
                let mut args = vec!["-v"];
                args.extend_from_slice(waiters_take);
                t.hold_args(&args, &lock, "true")
                    .stdin(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        assert_eq!(count_takeovers(waiters), 1, "{kind:?}");
        assert_nothing_left(&sandbox, &[]);
    }
}

/// SPEC §4.5 per holder: a slot holder's xlock is killed while its command runs on;
/// the slot stays held until the command ends, then a waiter gets it at once.
fn a_slot_kept_by_the_command_tree_is_free_when_the_tree_ends(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let slots = ["--slots", "1"];
    // The command ignores the SIGTERM it gets when its xlock dies.
    let mut holder = t.hold_script(&slots, &lock, "trap '' TERM; echo started; read _");
    holder.kill(nix::sys::signal::Signal::SIGKILL);
    let mut waiter = Running::start(t.hold_args(&slots, &lock, "echo started $XLOCK_SLOT"));
    wait_until_next_in_line(waiter.child.id() as i32, &lock);
    let out = run(t, &["--slots", "1", "-n"], &lock, "echo ran");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    holder.release(); // the command's `read` returns: the tree ends
    holder.wait();
    assert_eq!(waiter.line(), "started 0");
    assert!(waiter.wait().success());
    assert_nothing_left(&sandbox, &[]);
}

fn nesting_shared_runs_and_exclusive_under_shared_is_refused(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let me = xlock_bin().display().to_string();
    let l = arg(&lock);
    let script = format!("'{me}' -s '{l}' echo inner-shared; '{me}' '{l}' echo inner-exclusive; echo exclusive=$?");
    let out = run(t, &["-s"], &lock, &script);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inner-shared\nexclusive=125\n");
    assert!(
        stderr(&out).contains("cannot upgrade a shared lock"),
        "{}",
        stderr(&out)
    );
    // Holding exclusive implies shared.
    let out = run(t, &[], &lock, &format!("'{me}' -s '{l}' echo inner-shared"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "inner-shared\n",
        "{}",
        stderr(&out)
    );
    // Slots in slots: the same slot, at once; another N is an error.
    let script =
        format!("'{me}' --slots 2 '{l}' sh -c 'echo inner $XLOCK_SLOT'; '{me}' --slots 3 '{l}' true; echo other-n=$?");
    let out = run(t, &["--slots", "2"], &lock, &script);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "inner 0\nother-n=125\n",
        "{}",
        stderr(&out)
    );
    assert_nothing_left(&sandbox, &[]);
}

/// SPEC §6 per holder: a LOCK that is not a lock record, or whose directory is missing,
/// is exit 125 naming it, for shared locks and slots as for the exclusive lock, and
/// nothing is changed; a file xlock did not make in the members directory is left.
#[test]
fn bad_input_is_refused_and_left_as_it_was() {
    let sandbox = Sandbox::new();
    let data = sandbox.path("data.lock");
    fs::write(&data, "user data\n").unwrap();
    let missing = sandbox.path("missing/dir.lock");
    for kind in [&["-s"][..], &["--slots", "2"][..]] {
        let out = run(Mode::Unnamed, kind, &data, "echo ran");
        assert_fails(&out, &["data.lock", "not an xlock lock file"]);
        let out = run(Mode::Unnamed, kind, &missing, "echo ran");
        assert_fails(&out, &["missing", "does not exist"]);
    }
    assert_eq!(fs::read_to_string(&data).unwrap(), "user data\n");
    let lock = sandbox.lock();
    let members = sandbox.path(".test.lock.xlock-members");
    fs::create_dir(&members).unwrap();
    fs::write(members.join("notes"), "mine\n").unwrap();
    for kind in [&["-s"][..], &[][..]] {
        let out = run(Mode::Unnamed, kind, &lock, "echo ran");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n", "{}", stderr(&out));
    }
    assert_eq!(fs::read_to_string(members.join("notes")).unwrap(), "mine\n");
    assert_eq!(sandbox.entries(), [".test.lock.xlock-members", "data.lock"]);
}

/// Without kernel locks, a writer waits out a reader through its process (a pidfd).
/// A reader's record may leave while its process lives on: an uncontended joiner that
/// found LOCK taken steps back to queue at the gate, which the writer holds. The
/// writer must see the record gone and go on: it used to wait for that process to
/// exit, and the two waited for each other forever (seen in a stress without `-v`).
/// Played here by a record planted for a live process, then removed as a joiner does.
#[test]
fn a_writer_draining_without_kernel_locks_sees_a_record_leave_while_its_process_lives() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let members = sandbox.path(".test.lock.xlock-members");
    fs::create_dir(&members).unwrap();
    // Lives long enough for any machine (it is killed at the end); before the fix the
    // writer got in only once it had exited, and its command's `kill -0` failed.
    let mut reader = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let pid = reader.id() as i32;
    let mut record = record_of(pid);
    record.mode = Some("shared".to_owned());
    let member = members.join(&record.nonce);
    record.plant(&member);
    let writer = Mode::NoLocks
        .xlock([&arg(&lock), "-c", "echo in"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_waiting(writer.id() as i32, &member);
    fs::remove_file(&member).unwrap();
    let out = writer.wait_with_output().unwrap();
    let reader_ended = reader.try_wait().unwrap();
    reader.kill().unwrap();
    reader.wait().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n", "{}", stderr(&out));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        reader_ended, None,
        "the writer got in only once the reader's process had ended"
    );
    assert_nothing_left(&sandbox, &[]);
}

/// Without kernel locks, a shared acquirer waits for the gate (LOCK) through its
/// holder's process; but a gate holder lives on once it has passed (it runs its
/// command as a member), so every waiter used to queue behind the whole command of
/// the one before it: shared holders did not overlap. The waiter must see LOCK gone
/// and go on. Played by a record planted at LOCK for a live process, then removed as a
/// gate holder removes it when it has passed.
#[test]
fn a_shared_acquirer_without_kernel_locks_passes_a_gate_whose_holder_lives_on() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    // Killed at the end; before the fix the reader got in only once it had exited.
    let mut holder = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    record_of(holder.id() as i32).plant(&lock);
    for kind in [&["-s"][..], &["--slots", "2"][..]] {
        if !lock.exists() {
            let mut record = record_of(holder.id() as i32);
            record.mode = Some("slots".to_owned());
            record.slots = Some(2);
            record.plant(&lock);
        }
        let reader = Mode::NoLocks
            .hold_args(kind, &lock, "echo in")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until_waiting(reader.id() as i32, &lock);
        fs::remove_file(&lock).unwrap();
        let out = reader.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "in\n",
            "{kind:?}: {}",
            stderr(&out)
        );
        assert!(out.status.success(), "{kind:?}: {}", stderr(&out));
        assert_eq!(
            holder.try_wait().unwrap(),
            None,
            "{kind:?} got in only once the gate's holder had ended"
        );
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_nothing_left(&sandbox, &[]);
}

/// SPEC §9: a slot waiter blocks on kernel locks (its sentries), not on inotify (which
/// it used to watch the members directory with, polling where it had none): with no
/// inotify instance to be had (the per-user limit, here 0 in a user namespace of the
/// waiter's own, so no other test or process is affected) it gets its slot once the
/// holder leaves.
#[test]
fn a_slot_waiter_without_inotify_gets_its_slot() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = Mode::Unnamed.hold(&["--slots", "1"], &lock, "read _; exit 0");
    // The shell checks that inotify is indeed out of reach, then becomes the waiter
    // (exec: the same PID).
    let script = format!(
        "echo 0 > /proc/sys/user/max_inotify_instances || exit 90; \
         '{py}' -c 'import ctypes, sys; sys.exit(0 if ctypes.CDLL(None).inotify_init1(0) < 0 else 91)' || exit 91; \
         exec \"$0\" -w 20 --slots 1 '{l}' sh -c 'echo slot=$XLOCK_SLOT'",
        py = python(),
        l = arg(&lock)
    );
    let waiter = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c", &script])
        .arg(xlock_bin())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    wait_until_next_in_line(waiter.id() as i32, &lock);
    holder.release();
    assert!(holder.wait().success());
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()),
        (Some(0), "slot=0\n"),
        "90: no user namespace of its own; 91: inotify was still there; stderr: {}",
        stderr(&out)
    );
    assert_nothing_left(&sandbox, &[]);
}

/// SPEC §9 ("crash of any holder frees its slot at once"): a slot waiter sleeps until a
/// busy slot's locks go, then looks at the slots again. When it watched the members
/// directory with inotify, it could miss that: a dying holder's last descriptor raises
/// IN_CLOSE_WRITE *before* the kernel drops the locks it carries (`__fput`:
/// fsnotify_close, then locks_remove_file), so a waiter that looked at once found the
/// lock still held, and nothing woke it when the lock went. That moment is a few
/// microseconds; here it is widened with a process that holds the dead holder's flock
/// through a read-only descriptor (as `--status` does for a moment), whose close
/// raises only IN_CLOSE_NOWRITE. The waiter must get the slot as soon as that lock
/// goes, not at its -w.
#[test]
fn a_slot_waiter_wakes_when_a_lock_outlives_the_last_close_event() {
    use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg};
    use nix::libc;
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let slot = sandbox.path(".test.lock.xlock-solo");
    // The command ignores the SIGTERM it gets when its xlock dies, and keeps the slot's
    // command lock until its stdin is closed.
    let mut holder = Mode::Unnamed.hold_script(&["--slots", "1"], &lock, "trap '' TERM; echo started; read _");
    let waiter = Mode::Unnamed
        .hold_args(&["-w", "10", "--slots", "1"], &lock, "echo slot=$XLOCK_SLOT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_next_in_line(waiter.id() as i32, &lock);
    // The prober queues for the holder's process lock, read-only.
    let probe = fs::File::open(&slot).unwrap();
    let query = fs::File::open(&slot).unwrap();
    let prober = std::thread::spawn(move || Flock::lock(probe, FlockArg::LockExclusive).map_err(|(_, err)| err));
    // The holder's xlock dies (IN_CLOSE_WRITE; its flock goes, to the prober); then its
    // command's tree ends (IN_CLOSE_WRITE; the command lock goes).
    holder.kill(nix::sys::signal::Signal::SIGKILL);
    holder.wait();
    holder.release();
    let probe = prober.join().unwrap().expect("flock");
    let command_lock_held = || {
        let mut ask = libc::flock {
            l_type: libc::F_RDLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 1,
            l_len: 1,
            l_pid: 0,
        };
        fcntl(&query, FcntlArg::F_OFD_GETLK(&mut ask)).unwrap();
        ask.l_type != libc::F_UNLCK as i16
    };
    wait_until(LIMIT, "the holder's command tree has ended", || !command_lock_held());
    // Widening, not waiting for an outcome: the waiter has long looked again after the
    // tree's last close (microseconds) and found the flock held (the prober's).
    std::thread::sleep(Duration::from_millis(300));
    let released = std::time::Instant::now();
    drop(probe);
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()),
        (Some(0), "slot=0\n"),
        "stderr: {}",
        stderr(&out)
    );
    let took = released.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the waiter got the slot {took:?} after its lock went"
    );
    drop(query);
    assert_nothing_left(&sandbox, &[]);
}
