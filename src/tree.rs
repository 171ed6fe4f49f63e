//! The command's process tree (SPEC §4.4, §10): every process the command started,
//! not only the first, so that a lost lock (or, for etcd, an expiring lease) can stop
//! all of them.
//!
//! The tree is xlock's descendants. Before it starts the command, xlock makes itself a
//! child subreaper (PR_SET_CHILD_SUBREAPER), so a process of the tree whose parent
//! exits is re-parented to xlock, not to init: a daemon's double fork does not take it
//! out of the tree. The tree is then found by following parent links in /proc/*/stat
//! down from xlock. The alternatives do not fit: xlock shares its process group with
//! the command and with its caller (SPEC §5), so a group kill would hit the caller;
//! and the lock file's writers are not the tree (a process may close the descriptor,
//! and an etcd lock has none).
//!
//! A scan races with forks: a process may fork after /proc was listed and before it is
//! signalled. So [`signal`] first freezes the tree: it sends SIGSTOP to each descendant
//! it finds and scans again, until a scan finds no new process and every one found has
//! stopped (a stopped process cannot fork; one still on its way to the stop may finish
//! a fork, whose child the next scan lists). Then it sends the signal to all of them,
//! and SIGCONT, so that what their handlers start afterwards is left alone. SIGKILL
//! needs no freeze: a process with SIGKILL pending cannot complete a fork.
//!
//! Every signal goes through a pidfd opened before the process's start time is checked
//! again, so a PID that was reused after the scan is never hit (kill(2) where the
//! kernel has no pidfds, before Linux 5.3).
//!
//! A leaf module of the spawn layer: `supervise` stops the tree with it, and the file
//! lock's release asks it whether any of the tree survives (SPEC §4.5).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use rustix::process::{pidfd_open, pidfd_send_signal, PidfdFlags};

/// The freeze gives up after this long (a process in an uninterruptible sleep, on a
/// hung NFS server, may take any time to stop; one that cannot be signalled may go on
/// forking), and signals what it has.
const FREEZE_LIMIT: Duration = Duration::from_secs(1);

/// Makes this process the child subreaper of what it starts from now on (orphans of
/// the command's tree are re-parented to it). Not inherited by the command.
pub fn adopt_orphans() -> io::Result<()> {
    // Any PID turns the attribute on (rustix passes it as the prctl's non-zero flag).
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(io::Error::from)
}

/// Whether any process of the tree still runs, once the command has ended: every
/// survivor is a descendant of xlock, so the topmost one is xlock's child (adopted as
/// an orphan). Reaps adopted orphans that have exited; no /proc scan.
pub fn survivors() -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) => continue, // an adopted orphan had ended: reaped
            Err(Errno::ECHILD) => return false,
            Err(Errno::EINTR) => continue,
            Err(_) => return true, // cannot tell: assume they run
        }
    }
}

/// The PIDs of this process's descendants now (the command's tree).
pub fn members() -> Vec<i32> {
    descendants(std::process::id() as i32)
        .into_iter()
        .map(|(p, _)| p.pid)
        .collect()
}

/// A process of the tree, as one scan saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Process {
    pid: i32,
    /// Start time (field 22 of /proc/PID/stat): with the PID, who it is.
    start: u64,
}

/// Sends `signal` to every descendant of this process (the command's whole tree),
/// frozen first unless it is SIGKILL. Returns how many processes got it.
pub fn signal(signal: Signal) -> usize {
    let me = std::process::id() as i32;
    // Processes signalled (SIGSTOP, or `signal` if it is SIGKILL), and those that
    // could not be (another user's, or gone).
    let mut reached: Vec<Process> = Vec::new();
    let mut failed: Vec<Process> = Vec::new();
    let first = if signal == Signal::SIGKILL {
        signal
    } else {
        Signal::SIGSTOP
    };
    let began = Instant::now();
    loop {
        let scan = descendants(me);
        let mut found_new = false;
        for &(process, _) in &scan {
            if reached.contains(&process) || failed.contains(&process) {
                continue;
            }
            found_new = true;
            if send(process, first) {
                reached.push(process);
            } else {
                failed.push(process);
            }
        }
        let still_running = |&(process, state): &(Process, char)| {
            reached.contains(&process) && !matches!(state, 'T' | 't' | 'Z' | 'X' | 'x')
        };
        let settled = !found_new && (first == Signal::SIGKILL || !scan.iter().any(still_running));
        // Bounded: a process that cannot be signalled (another user's) may go on forking.
        if settled || began.elapsed() > FREEZE_LIMIT {
            break;
        }
        if !found_new {
            std::thread::yield_now(); // some are still on their way to the stop
        }
    }
    if first != signal {
        for &process in &reached {
            send(process, signal);
        }
        for &process in &reached {
            send(process, Signal::SIGCONT);
        }
    }
    reached.len()
}

/// This process's descendants now, with their states: a breadth-first walk of the
/// parent links in /proc/*/stat.
fn descendants(root: i32) -> Vec<(Process, char)> {
    let mut children: HashMap<i32, Vec<(Process, char)>> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // it has ended
        };
        if let Some((ppid, start, state)) = parse_stat(&stat) {
            children.entry(ppid).or_default().push((Process { pid, start }, state));
        }
    }
    let mut tree = Vec::new();
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for &(process, state) in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            tree.push((process, state));
            next.push(process.pid);
        }
    }
    tree
}

/// Parent PID (field 4), start time (field 22) and state (field 3) from
/// /proc/PID/stat, counted from the last ')' (the name may hold anything).
fn parse_stat(text: &str) -> Option<(i32, u64, char)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?; // field 3
    let ppid = fields.next()?.parse().ok()?; // field 4
    let start = fields.nth(22 - 5)?.parse().ok()?; // field 22
    Some((ppid, start, state))
}

/// Sends `signal` to `process` if it is still the process that the scan saw.
fn send(process: Process, signal: Signal) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(process.pid) else {
        return false;
    };
    let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(pidfd) => pidfd,
        // No pidfds: the PID may have been reused since the scan; checked just before.
        Err(rustix::io::Errno::NOSYS) => {
            return start_time(process.pid) == Some(process.start)
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid), signal).is_ok();
        }
        Err(_) => return false, // it has ended
    };
    // The pidfd names whoever had the PID when it was opened: if that process started
    // when the scan's did, it is the scan's process.
    if start_time(process.pid) != Some(process.start) {
        return false;
    }
    let Some(signal) = rustix::process::Signal::from_named_raw(signal as i32) else {
        return false;
    };
    pidfd_send_signal(&pidfd, signal).is_ok()
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start, _)| start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_past_odd_command_names() {
        let line = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_stat(line), Some((17, 987654, 'S')));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn descendants_are_found_through_parent_links() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let shell = child.id() as i32;
        let parent_of = |pid: i32| {
            start_time(pid)
                .and(fs::read_to_string(format!("/proc/{pid}/stat")).ok())
                .and_then(|s| parse_stat(&s))
                .map(|(ppid, _, _)| ppid)
        };
        // The shell's child may not have started yet: wait until the walk finds it.
        let (tree, sleep) = loop {
            let tree = descendants(std::process::id() as i32);
            if let Some(&(sleep, _)) = tree.iter().find(|(p, _)| parent_of(p.pid) == Some(shell)) {
                break (tree, sleep);
            }
            std::thread::yield_now();
        };
        assert!(tree.iter().any(|(p, _)| p.pid == shell), "{tree:?}");
        assert!(send(sleep, Signal::SIGKILL));
        // A process that is not the one scanned (another start time) is never hit.
        let other = Process { pid: shell, start: 1 };
        assert!(!send(other, Signal::SIGKILL));
        assert!(send(
            Process {
                pid: shell,
                start: start_time(shell).unwrap()
            },
            Signal::SIGKILL
        ));
        child.wait().unwrap();
    }
}
