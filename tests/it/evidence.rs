//! Stale detection beyond the kernel (SPEC §4.3 evidence table, §4.4 heartbeat and
//! loss, §4.6 nesting; issue 4). Records are planted at LOCK as another xlock would
//! have left them, and xlock's decision is checked: taken over at once, or waited for.
//! Every test runs with kernel locks and in forced no-locks mode.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;

tests_in_every_mode!(
    dead_pid_is_taken_over_at_once,
    recycled_pid_is_taken_over_at_once,
    live_process_is_waited_for_without_kernel_locks,
    previous_boot_of_this_host_is_stale,
    other_host_is_alive_while_its_heartbeat_is_fresh,
    other_host_heartbeat_ages_into_stale_while_waiting,
    other_pid_namespace_is_not_judged_by_pid,
    heartbeat_keeps_the_mtime_fresh,
    deleted_lock_stops_the_command,
    replaced_lock_stops_the_command_and_is_left_alone,
    overwritten_lock_is_not_ours_any_more,
    nested_xlock_on_the_same_lock_runs_at_once,
    forged_or_stale_xlock_held_gives_no_free_pass,
);

/// `xlock -n -v LOCK true` in mode `t`, with extra options first.
fn try_once(t: Mode, extra: &[&str], lock: &std::path::Path) -> (Option<i32>, String) {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["-n", "-v", lock.to_str().unwrap(), "true"]);
    let out = t.xlock(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_taken_over(t: Mode, extra: &[&str], lock: &std::path::Path, why: &str) {
    let (code, stderr) = try_once(t, extra, lock);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("took over stale") && stderr.contains(why),
        "expected a take-over ({why}): {stderr}"
    );
    assert!(!lock.exists());
}

fn assert_busy(t: Mode, extra: &[&str], lock: &std::path::Path) {
    let (code, stderr) = try_once(t, extra, lock);
    assert_eq!(code, Some(75), "{stderr}");
    assert!(lock.exists(), "a busy lock was disturbed");
}

/// A `sleep` that runs until dropped.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(std::process::Command::new("sleep").arg("60").spawn().unwrap())
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Acceptance 1: our boot, our PID namespace, a dead PID: stale at once.
fn dead_pid_is_taken_over_at_once(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let record = record_of(dead_pid());
    record.plant(&lock);
    assert_taken_over(t, &[], &lock, &format!("from dead pid {}", record.pid));
}

/// Acceptance 1: a live process with another start time is a recycled PID: stale.
fn recycled_pid_is_taken_over_at_once(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let sleeper = Sleeper::start();
    let mut record = record_of(sleeper.pid());
    record.start += 1;
    record.plant(&lock);
    assert_taken_over(t, &[], &lock, &format!("from dead pid {}", sleeper.pid()));
}

/// Acceptance 1: a live process with its true start time holds the lock although no
/// kernel lock is held; once it ends, the waiter takes over within a poll.
fn live_process_is_waited_for_without_kernel_locks(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut sleeper = Sleeper::start();
    record_of(sleeper.pid()).plant(&lock);
    assert_busy(t, &[], &lock);
    let waiter = t
        .xlock(["-w", "10", "-v", lock.to_str().unwrap(), "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_waiting(waiter.id() as i32, &lock);
    sleeper.0.kill().unwrap();
    sleeper.0.wait().unwrap();
    let ended = Instant::now();
    let out = waiter.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("took over stale"), "{stderr}");
    // Polling backs off to 250 ms at most.
    assert!(
        ended.elapsed() < Duration::from_secs(1),
        "took over {:?} after the holder ended",
        ended.elapsed()
    );
}

/// Acceptance 2: another boot id, our host name, written before this machine booted.
/// Its PID (ours here, alive) means nothing: stale at once.
fn previous_boot_of_this_host_is_stale(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut record = record_of(std::process::id() as i32);
    record.boot = "00000000-0000-4000-8000-000000000000".into();
    record.since = rfc3339(boot_time() - Duration::from_secs(3600));
    record.plant(&lock);
    assert_taken_over(t, &[], &lock, "before this host rebooted");
}

/// Acceptance 2: another host: alive while its heartbeat is younger than
/// --stale-after, stale once it is older. A record of another boot of this host
/// written after our boot is judged the same way (it cannot be a reboot's leftover).
fn other_host_is_alive_while_its_heartbeat_is_fresh(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut record = record_of(std::process::id() as i32);
    record.boot = "00000000-0000-4000-8000-000000000000".into();
    record.host = "elsewhere".into();
    record.plant(&lock);
    assert_busy(t, &[], &lock);
    set_age(&lock, Duration::from_secs(20));
    assert_busy(t, &[], &lock); // default --stale-after 30s
    assert_busy(t, &["--stale-after", "1m"], &lock);
    assert_taken_over(t, &["--stale-after", "10s"], &lock, "heartbeat stopped 20s ago");

    record.host = record_of(0).host;
    record.since = rfc3339(SystemTime::now());
    record.plant(&lock);
    assert_busy(t, &[], &lock);
    set_age(&lock, Duration::from_secs(40));
    assert_taken_over(t, &[], &lock, "heartbeat stopped");
}

/// Acceptance 2: a waiter on another host's lock takes it over once the heartbeat
/// has aged past --stale-after, not before.
fn other_host_heartbeat_ages_into_stale_while_waiting(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut record = record_of(1);
    record.boot = "00000000-0000-4000-8000-000000000000".into();
    record.host = "elsewhere".into();
    record.plant(&lock);
    let planted = Instant::now();
    let out = t
        .xlock(["--stale-after", "1s", "-w", "10", "-v", lock.to_str().unwrap(), "true"])
        .output()
        .unwrap();
    let took = planted.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("took over stale"), "{stderr}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "took over after {took:?}, for a heartbeat that goes stale after 1 s"
    );
}

/// Acceptance 2: our boot id, another PID namespace: the PID is not compared (here it
/// names a live process of ours, with its true start time). With kernel locks, their
/// being free decides; without, the heartbeat does.
fn other_pid_namespace_is_not_judged_by_pid(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let sleeper = Sleeper::start();
    let mut record = record_of(sleeper.pid());
    record.pidns = "pid:[1]".into();
    record.plant(&lock);
    if t == Mode::NoLocks {
        assert_busy(t, &[], &lock);
        set_age(&lock, Duration::from_secs(60));
        assert_taken_over(t, &[], &lock, "heartbeat stopped");
    } else {
        assert_taken_over(t, &[], &lock, "another PID namespace");
    }
}

/// SPEC §4.4: the holder bumps its file's mtime every stale-after/3.
fn heartbeat_keeps_the_mtime_fresh(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = t.hold(&["--stale-after", "300ms"], &lock, "read _; exit 0");
    set_age(&lock, Duration::from_secs(3600));
    wait_until(Duration::from_secs(5), "the heartbeat refreshes the mtime", || {
        let modified = fs::metadata(&lock).unwrap().modified().unwrap();
        modified.elapsed().unwrap_or_default() < Duration::from_secs(1)
    });
    holder.release();
    assert!(holder.wait().success());
    assert!(!lock.exists());
}

/// Acceptance 4: deleting LOCK while the command runs: within a heartbeat the command
/// gets SIGTERM, and xlock exits 125 naming the lock.
fn deleted_lock_stops_the_command(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let script = "trap 'echo got TERM; exit 3' TERM; echo started; while :; do sleep 0.01; done";
    let errors = sandbox
        .dir
        .path()
        .parent()
        .unwrap()
        .join(format!("{}.err", std::process::id()));
    let mut command = t.hold_args(&["--stale-after", "300ms"], &lock, script);
    command.stderr(fs::File::create(&errors).unwrap());
    let mut holder = t.hold_command(command);
    fs::remove_file(&lock).unwrap();
    let removed = Instant::now();
    assert_eq!(holder.line(), "got TERM");
    let status = holder.wait();
    let took = removed.elapsed();
    assert_eq!(status.code(), Some(125));
    assert!(took < Duration::from_secs(2), "the loss was noticed after {took:?}");
    let stderr = fs::read_to_string(&errors).unwrap();
    let _ = fs::remove_file(&errors);
    assert!(
        stderr.contains("lost the lock") && stderr.contains(lock.to_str().unwrap()),
        "{stderr}"
    );
    // xlock says it in one line. (The whole tree gets SIGTERM: the shell may report
    // its `sleep` as "Terminated" on the same stderr.)
    let own: Vec<&str> = stderr.lines().filter(|l| l.starts_with("xlock:")).collect();
    assert_eq!(own.len(), 1, "{stderr}");
    assert_eq!(sandbox.entries(), Vec::<String>::new());
}

/// SPEC §4.4: a replaced LOCK is lost too, and the replacement is never touched.
fn replaced_lock_stops_the_command_and_is_left_alone(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let errors = sandbox.path("errors");
    let mut command = t.hold_args(&["--stale-after", "300ms"], &lock, "echo started; exec sleep 30");
    command.stderr(fs::File::create(&errors).unwrap());
    let mut holder = t.hold_command(command);
    let replacement = record_of(std::process::id() as i32);
    let temp = sandbox.path("replacement");
    replacement.plant(&temp);
    fs::rename(&temp, &lock).unwrap();
    let status = holder.wait();
    assert_eq!(status.code(), Some(125));
    assert!(fs::read_to_string(&errors).unwrap().contains("lost the lock"));
    assert_eq!(fs::read_to_string(&lock).unwrap(), replacement.text());
}

/// SPEC §4.5: the nonce is checked, not just the inode: a record written over ours in
/// the same file (another program's, with another nonce) makes the lock not ours, and
/// xlock leaves the file alone.
fn overwritten_lock_is_not_ours_any_more(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let other = record_of(std::process::id() as i32);
    let written = sandbox.path("other");
    other.plant(&written);
    let out = t
        .xlock([
            lock.to_str().unwrap(),
            "sh",
            "-c",
            &format!("cat '{}' > '{}'", written.display(), lock.display()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("removed or replaced"), "{stderr}");
    assert_eq!(fs::read_to_string(&lock).unwrap(), other.text());
}

/// Acceptance 5: `xlock L -- sh -c 'xlock L -- echo inner'` prints `inner` at once;
/// the command sees XLOCK_PATH and XLOCK_HELD.
fn nested_xlock_on_the_same_lock_runs_at_once(t: Mode) {
    let sandbox = Sandbox::new();
    let (lock, other) = (sandbox.lock(), sandbox.path("other.lock"));
    let inner = format!(
        "{x} -w 5 {l} -- echo inner && {x} -w 5 {o} sh -c 'echo \"$XLOCK_PATH\"; echo \"$XLOCK_HELD\"'",
        x = xlock_bin().display(),
        l = lock.display(),
        o = other.display()
    );
    let started = Instant::now();
    let out = t.xlock([lock.to_str().unwrap(), "sh", "-c", &inner]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "inner");
    assert_eq!(lines[1], other.to_str().unwrap(), "XLOCK_PATH");
    // XLOCK_HELD: the outer lock, then the inner one, each `NONCE PATH`.
    for (line, path) in [(lines[2], &lock), (lines[3], &other)] {
        let (nonce, held) = line.split_once(' ').unwrap();
        assert!(
            nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
        assert_eq!(held, path.to_str().unwrap());
    }
    assert_eq!(sandbox.entries(), Vec::<String>::new());
}

/// Acceptance 5: a forged XLOCK_HELD entry, or one left from an earlier acquisition of
/// the same lock, gives no free pass: the inner xlock waits and times out.
fn forged_or_stale_xlock_held_gives_no_free_pass(t: Mode) {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let earlier = t
        .xlock([lock.to_str().unwrap(), "sh", "-c", "echo \"$XLOCK_HELD\""])
        .output()
        .unwrap();
    let earlier = String::from_utf8_lossy(&earlier.stdout).trim().to_owned();
    assert!(earlier.ends_with(lock.to_str().unwrap()), "{earlier}");
    let forged = format!("{} {}", "0".repeat(32), lock.display());
    for held in [forged, earlier] {
        let inner = format!(
            "XLOCK_HELD='{held}' {x} -w 300ms {l} -- echo inner; echo \"inner exit $?\"",
            x = xlock_bin().display(),
            l = lock.display()
        );
        let out = t.xlock([lock.to_str().unwrap(), "sh", "-c", &inner]).output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "inner exit 75\n",
            "XLOCK_HELD={held}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Acceptance 2, with a real PID namespace (`unshare --pid --fork`, where permitted):
/// a holder in another namespace on this kernel is waited for by its kernel locks,
/// and once that namespace is gone its lock is taken over at once.
#[test]
fn holder_in_another_pid_namespace_is_decided_by_kernel_locks() {
    let user_ns: &[&str] = if is_root() { &[] } else { &["-r"] };
    let probe = std::process::Command::new("unshare")
        .args(user_ns)
        .args(["--pid", "--fork", "true"])
        .output();
    if !probe.as_ref().is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: unshare --pid --fork is not permitted here: {probe:?}");
        return;
    }
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut command = std::process::Command::new("unshare");
    command.args(user_ns).args(["--pid", "--fork"]).arg(xlock_bin()).args([
        lock.to_str().unwrap(),
        "sh",
        "-c",
        "echo started; exec sleep 30",
    ]);
    // unshare complains when its child dies of SIGKILL, as it will here.
    command.stderr(Stdio::null());
    let mut holder = Running::start(command);
    assert_eq!(holder.line(), "started");
    let record = read_record(&lock);
    assert_ne!(
        record.pidns,
        fs::read_link("/proc/self/ns/pid").unwrap().to_str().unwrap()
    );
    assert_busy(Mode::Unnamed, &[], &lock);
    // The namespace's init is the xlock: killing it ends everything in the namespace.
    let init = children_of(holder.child.id() as i32)[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), Signal::SIGKILL).unwrap();
    holder.wait();
    let out = xlock(["-w", "5", "-v", lock.to_str().unwrap(), "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("another PID namespace"), "{stderr}");
}

fn boot_time() -> SystemTime {
    let stat = fs::read_to_string("/proc/stat").unwrap();
    let seconds: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}
