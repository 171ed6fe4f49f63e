//! Hand-offs with many waiters (issue 14, docs/design.md "Hand-offs"): at a release,
//! the next waiter wakes and the others sleep on, queued in the kernel on the
//! released file behind the waiter that holds its flock; that waiter keeps it until
//! it holds the lock. Killing the queued waiter lets the one behind it through, and a
//! killed holder is still taken over by exactly one waiter. Kernel locks only (the
//! no-locks mode polls); O_TMPFILE and named temp files.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::*;

#[test]
fn a_hand_off_wakes_the_next_waiter_and_the_rest_sleep_on_unnamed_tmpfile() {
    a_hand_off_wakes_the_next_waiter_and_the_rest_sleep_on(Mode::Unnamed);
}

#[test]
fn a_hand_off_wakes_the_next_waiter_and_the_rest_sleep_on_named_temp() {
    a_hand_off_wakes_the_next_waiter_and_the_rest_sleep_on(Mode::Named);
}

#[test]
fn a_stopped_queued_waiter_holds_up_nobody_unnamed_tmpfile() {
    a_stopped_queued_waiter_holds_up_nobody(Mode::Unnamed);
}

#[test]
fn a_stopped_queued_waiter_holds_up_nobody_named_temp() {
    a_stopped_queued_waiter_holds_up_nobody(Mode::Named);
}

#[test]
fn a_killed_queued_waiter_and_a_killed_holder_stall_nobody_unnamed_tmpfile() {
    a_killed_queued_waiter_and_a_killed_holder_stall_nobody(Mode::Unnamed);
}

#[test]
fn a_killed_queued_waiter_and_a_killed_holder_stall_nobody_named_temp() {
    a_killed_queued_waiter_and_a_killed_holder_stall_nobody(Mode::Named);
}

/// Waiters started one after another on the lock at `lock` (held), each queued on
/// the holder's file before the next starts. Their command prints `started` and holds
/// until released; `extra` goes before LOCK.
fn queue_waiters(t: Mode, lock: &Path, n: usize, extra: &[&str]) -> Vec<Running> {
    (0..n)
        .map(|_| {
            // -w: a waiter that stalled would end (exit 75) instead of hanging the test.
            let mut args = vec!["-w", "30"];
            args.extend_from_slice(extra);
            let mut command = t.hold_args(&args, lock, "echo started; read _; exit 0");
            command.stderr(Stdio::piped());
            let waiter = Running::start(command);
            wait_until_waiting(waiter.child.id() as i32, lock);
            waiter
        })
        .collect()
}

/// The index in `waiters` of the one whose record is at `lock`, once it is not
/// `previous` (the lock has changed hands to one of them).
fn next_holder(waiters: &[Running], lock: &Path, previous: Option<usize>) -> usize {
    let holder = || {
        let record = Record::parse(&fs::read(lock).ok()?).ok()?;
        let i = waiters.iter().position(|w| w.child.id() as i32 == record.pid)?;
        (Some(i) != previous).then_some(i)
    };
    let mut found = None;
    wait_until(Duration::from_secs(10), "a waiter holds the lock", || {
        found = holder();
        found.is_some()
    });
    found.unwrap()
}

fn pids_of(waiters: &[Running]) -> Vec<i32> {
    waiters.iter().map(|w| w.child.id() as i32).collect()
}

/// The index in `pids` (but not in `except`) of a process that waits on the file with
/// inode `ino`, once one does.
fn queued_on(pids: &[i32], ino: u64, except: &[usize]) -> usize {
    let mut found = None;
    wait_until(Duration::from_secs(10), "a waiter queues on the holder's file", || {
        found = (0..pids.len()).find(|i| !except.contains(i) && waits_on(pids[*i], ino));
        found.is_some()
    });
    found.unwrap()
}

/// At a release, one waiter takes the lock; the next one wakes, finds the released
/// file, and queues on the new holder's file with the released file's flock in hand;
/// every other waiter sleeps on, still queued on the released file. (Before, each
/// let go of the released file at once, so all of them woke at every hand-off.) Then
/// the lock goes round every waiter, one at a time, and nothing is left behind.
fn a_hand_off_wakes_the_next_waiter_and_the_rest_sleep_on(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = t.hold(&[], &lock, "read _; exit 0");
    let (released, released_ino) = file_key(&lock);
    let mut waiters = queue_waiters(t, &lock, 6, &[]);
    holder.release();
    assert!(holder.wait().success());

    let first = next_holder(&waiters, &lock, None);
    assert_eq!(waiters[first].line(), "started");
    let (_, holders_ino) = file_key(&lock);
    let others: Vec<i32> = (0..waiters.len())
        .filter(|&i| i != first)
        .map(|i| waiters[i].child.id() as i32)
        .collect();
    let mut next = None;
    wait_until(
        Duration::from_secs(10),
        "the next waiter queues on the new holder's file",
        || {
            next = others.iter().copied().find(|&pid| waits_on(pid, holders_ino));
            next.is_some()
        },
    );
    let next = next.unwrap();
    assert_eq!(
        flock_holders(&released),
        [next],
        "the next waiter must keep the released file's flock while it waits"
    );
    for &pid in others.iter().filter(|&&pid| pid != next) {
        assert!(
            has_open(pid, released_ino) && !has_open(pid, holders_ino),
            "waiter {pid} woke at a hand-off that was not its turn"
        );
    }

    // The lock goes round: each holder in turn releases, the next one starts.
    let mut holding = first;
    for _ in 1..waiters.len() {
        waiters[holding].release();
        assert!(waiters[holding].wait().success());
        holding = next_holder(&waiters, &lock, Some(holding));
        assert_eq!(waiters[holding].line(), "started");
    }
    waiters[holding].release();
    for waiter in &mut waiters {
        assert!(waiter.wait().success());
    }
    assert_eq!(
        sandbox.entries(),
        Vec::<String>::new(),
        "LOCK or a temp file was left behind"
    );
}

/// The waiter that holds a released file's flock (queued on the holder's file) is
/// SIGKILLed: the one queued behind it wakes at once and queues on the holder's file.
/// Then the holder is SIGKILLed (its command dies with it, `--close`): exactly one
/// waiter takes the stale lock over, the last one gets it after, nothing is left.
fn a_killed_queued_waiter_and_a_killed_holder_stall_nobody(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = t.hold(&[], &lock, "read _; exit 0");
    let (released, _) = file_key(&lock);
    let mut waiters = queue_waiters(t, &lock, 4, &["-v", "--close"]);
    holder.release();
    assert!(holder.wait().success());

    let first = next_holder(&waiters, &lock, None);
    assert_eq!(waiters[first].line(), "started");
    let (_, holders_ino) = file_key(&lock);
    let pids = pids_of(&waiters);
    let queued_on = |ino: u64, except: &[usize]| queued_on(&pids, ino, except);
    let head = queued_on(holders_ino, &[first]);
    assert_eq!(flock_holders(&released), [pids[head]]);

    // SIGKILL the queued waiter: the next one behind it must come to the holder's file.
    waiters[head].kill(Signal::SIGKILL);
    assert!(!waiters[head].wait().success());
    let second = queued_on(holders_ino, &[first, head]);
    assert_eq!(flock_holders(&released), [pids[second]]);

    // SIGKILL the holder: exactly one of the two left takes over; then the other.
    waiters[first].kill(Signal::SIGKILL);
    assert!(!waiters[first].wait().success());
    let left: Vec<usize> = (0..pids.len()).filter(|i| ![first, head].contains(i)).collect();
    let taker = next_holder(&waiters, &lock, Some(first));
    assert!(left.contains(&taker));
    assert_eq!(waiters[taker].line(), "started");
    waiters[taker].release();
    let last = *left.iter().find(|&&i| i != taker).unwrap();
    assert_eq!(next_holder(&waiters, &lock, Some(taker)), last);
    assert_eq!(waiters[last].line(), "started");
    waiters[last].release();
    let mut takeovers = 0;
    for i in left {
        let status = waiters[i].wait();
        let stderr = std::io::read_to_string(waiters[i].child.stderr.take().unwrap()).unwrap();
        assert!(status.success(), "{status:?}: {stderr}");
        takeovers += stderr.matches("took over stale").count();
    }
    assert_eq!(takeovers, 1, "exactly one waiter takes the killed holder's lock over");
    assert_eq!(
        sandbox.entries(),
        Vec::<String>::new(),
        "LOCK or a temp file was left behind"
    );
}

/// The waiter that holds a released file's flock (queued on the holder's file) is
/// stopped, as Ctrl-Z or a debugger would: the one queued behind it does not wait for
/// it (the check every second finds it stopped) and takes the lock when the holder
/// releases it; the stopped one gets it once continued.
fn a_stopped_queued_waiter_holds_up_nobody(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = t.hold(&[], &lock, "read _; exit 0");
    let (released, _) = file_key(&lock);
    let mut waiters = queue_waiters(t, &lock, 3, &[]);
    holder.release();
    assert!(holder.wait().success());

    let first = next_holder(&waiters, &lock, None);
    assert_eq!(waiters[first].line(), "started");
    let (_, holders_ino) = file_key(&lock);
    let pids = pids_of(&waiters);
    let head = queued_on(&pids, holders_ino, &[first]);
    assert_eq!(flock_holders(&released), [pids[head]]);
    let last = (0..pids.len()).find(|i| ![first, head].contains(i)).unwrap();

    waiters[head].kill(Signal::SIGSTOP);
    waiters[first].release();
    assert!(waiters[first].wait().success());
    assert_eq!(
        next_holder(&waiters, &lock, Some(first)),
        last,
        "the waiter behind a stopped one must get the free lock"
    );
    assert_eq!(waiters[last].line(), "started");
    waiters[last].release();
    assert!(waiters[last].wait().success());
    waiters[head].kill(Signal::SIGCONT);
    assert_eq!(next_holder(&waiters, &lock, Some(last)), head);
    assert_eq!(waiters[head].line(), "started");
    waiters[head].release();
    assert!(waiters[head].wait().success());
    assert_eq!(
        sandbox.entries(),
        Vec::<String>::new(),
        "LOCK or a temp file was left behind"
    );
}
