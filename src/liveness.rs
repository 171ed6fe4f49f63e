//! Liveness evidence (SPEC §4.1, §4.3): who this process is (PID, start time, PID
//! namespace, boot id, host), and the evidence table that says whether a record's
//! holder is alive once its kernel locks are free (or the file system has none).
//!
//! Kernel locks are the primary evidence; the record's process is the cross-check.
//! It matters even on a local disk: a SIGKILLed xlock drops its flock while the
//! kernel tears it down (exit_files) *before* it sends its command the parent-death
//! signal (exit_notify), so "lock free" alone may come a moment too early. A holder
//! that is still running (not yet a zombie) is therefore treated as alive.
//!
//! The table ([`judge`]):
//! - same boot id, same PID namespace: the recorded process (PID + start time) runs →
//!   alive. Without kernel locks, processes that have the lock file open for writing
//!   (the command's tree, which inherited it) are alive too.
//! - same boot id, another PID namespace: the PID means nothing here; the kernel locks
//!   decided. Without kernel locks, the heartbeat decides, as for another host.
//! - another boot id, our host name, written before this machine booted: stale.
//! - anything else (another machine): alive while the file's mtime (the holder's
//!   heartbeat) is younger than `--stale-after`.

use std::fmt;
use std::fs;
use std::io;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::error::proc_error;
use crate::record::Record;

/// Whether a lock file's kernel locks speak for its holder (SPEC §4.2–4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locking {
    /// The file system has kernel locks: the holder's process and command locks
    /// decide, and the evidence table only cross-checks a holder whose locks are free.
    Kernel,
    /// It refuses them (ENOLCK, EOPNOTSUPP, ENOSYS), or they were switched off: the
    /// evidence table runs on the record alone, waiters poll.
    RecordOnly,
}

/// What identifies this xlock process in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub pid: i32,
    pub start: u64,
    pub pidns: String,
    pub boot: String,
    pub host: String,
}

impl Identity {
    /// Reads this process's identity from /proc and the kernel.
    pub(crate) fn current() -> Result<Identity> {
        let pid = std::process::id() as i32;
        // /proc/self, not /proc/PID: in a PID namespace whose /proc is the parent's,
        // PID names another process there.
        let (start, _) = read_stat("/proc/self/stat")
            .and_then(|stat| stat.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
            .map_err(|err| proc_error("/proc/self/stat", &err))?;
        let pidns = fs::read_link("/proc/self/ns/pid")
            .map_err(|err| proc_error("/proc/self/ns/pid", &err))?
            .to_string_lossy()
            .into_owned();
        let boot = read_proc("/proc/sys/kernel/random/boot_id")
            .map_err(|err| proc_error("/proc/sys/kernel/random/boot_id", &err))?
            .trim()
            .to_owned();
        let host = nix::unistd::gethostname()
            .context("cannot read the host name")?
            .to_string_lossy()
            .into_owned();
        Ok(Identity {
            pid,
            start,
            pidns,
            boot,
            host,
        })
    }
}

/// Start time (field 22) and state (field 3) of a process, or `None` if there is no
/// such process.
pub fn proc_stat(pid: i32) -> io::Result<Option<(u64, char)>> {
    read_stat(&format!("/proc/{pid}/stat"))
}

fn read_stat(path: &str) -> io::Result<Option<(u64, char)>> {
    let text = match read_proc(path) {
        Ok(text) => text,
        // ESRCH: the process ended between the open and the read.
        Err(err) if err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(nix::libc::ESRCH) => {
            return Ok(None)
        }
        Err(err) => return Err(err),
    };
    parse_stat(&text)
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unexpected {path}: {text}")))
}

/// Reads a small /proc file whole. /proc files report size 0, so `read_to_string`
/// would stat the file and then read it in growing pieces (six reads for a stat
/// line); one read into a page-sized buffer does, on every xlock's start.
fn read_proc(path: &str) -> io::Result<String> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut buffer = [0u8; 4096];
    let mut len = 0;
    // Both files xlock reads this way are one line: its newline ends the reading.
    while len < buffer.len() && !buffer[..len].ends_with(b"\n") {
        match file.read(&mut buffer[len..])? {
            0 => break,
            n => len += n,
        }
    }
    String::from_utf8(buffer[..len].to_vec()).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// Parses /proc/PID/stat. The command name (field 2) may hold spaces and ')', so
/// fields are counted from the last ')'.
fn parse_stat(text: &str) -> Option<(u64, char)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?; // field 3
    let start = fields.nth(22 - 4)?.parse().ok()?; // field 22
    Some((start, state))
}

/// A descriptor that becomes readable when process `pid` (of our PID namespace) exits:
/// a pidfd. `None` where the kernel has none (before Linux 5.3) or the process is gone.
pub(crate) fn exit_fd(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()
}

/// What the record's process says about its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// The recorded process runs, with the recorded start time.
    Running,
    /// It has ended (or its PID now belongs to another process).
    Gone,
    /// Its PID means nothing here: another PID namespace or another kernel.
    Unknown,
}

/// Whether the record's own process (its xlock) is known to have ended: a flock on
/// its file may then be a waiter's, kept while the command's tree holds the command
/// lock (SPEC §4.5), not the holder's.
pub(crate) fn holder_gone(record: &Record, me: &Identity) -> bool {
    matches!(holder_process(record, me), Ok(Holder::Gone))
}

/// Judges the record's process from this process's point of view.
fn holder_process(record: &Record, me: &Identity) -> io::Result<Holder> {
    if record.boot != me.boot || record.pidns != me.pidns {
        return Ok(Holder::Unknown);
    }
    Ok(match proc_stat(record.pid)? {
        Some((start, state)) if start == record.start && !matches!(state, 'Z' | 'X' | 'x') => Holder::Running,
        _ => Holder::Gone,
    })
}

/// Why a holder counts as alive although its kernel locks are free (or absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Alive {
    /// Its xlock process runs.
    Running,
    /// Its xlock is gone, but these processes (PID, name) still have the lock file
    /// open for writing: its command's tree (no kernel locks to say so).
    Command(Vec<(i32, String)>),
    /// Another host (or namespace): its heartbeat is this old, younger than `--stale-after`.
    Heartbeat(Duration),
}

/// Why a holder's lock is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stale {
    /// Its xlock process has ended (or its PID is another process's now).
    Died,
    /// Another PID namespace on this kernel, whose kernel locks are free.
    LocksFree,
    /// It ran on this host before the host rebooted.
    Rebooted,
    /// Another host, whose heartbeat stopped this long ago.
    Silent(Duration),
}

/// The evidence table's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Alive(Alive),
    Stale(Stale),
}

impl Stale {
    /// For "took over stale LOCK {from}": `from dead pid 42`.
    pub(crate) fn taken_from(&self, record: &Record) -> String {
        let pid = record.pid;
        match self {
            Stale::Died => format!("from dead pid {pid}"),
            Stale::LocksFree => format!("from pid {pid} of another PID namespace, whose locks were free"),
            Stale::Rebooted => format!("from pid {pid}, which held it before this host rebooted"),
            Stale::Silent(age) => format!("from pid {pid}, whose heartbeat stopped {} ago", whole_seconds(*age)),
        }
    }
}

impl fmt::Display for Stale {
    /// For `--status`: `stale (holder pid 42 died)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stale::Died => write!(f, "died"),
            Stale::LocksFree => write!(f, "in another PID namespace holds no kernel lock"),
            Stale::Rebooted => write!(f, "held it before this host rebooted"),
            Stale::Silent(age) => write!(f, "sent no heartbeat for {}", whole_seconds(*age)),
        }
    }
}

fn whole_seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// What else is known of a holder whose record is `record`.
pub(crate) struct Facts<'a> {
    pub me: &'a Identity,
    /// [`Locking::Kernel`]: the file system has kernel locks, and they were found free.
    pub locking: Locking,
    /// The lock file's (device, inode), to find processes that have it open.
    pub file_id: (u64, u64),
    /// How old the lock file's mtime is.
    pub heartbeat_age: Duration,
    pub stale_after: Duration,
}

/// The evidence table of SPEC §4.3, for a holder whose kernel locks are free or absent.
pub(crate) fn judge(record: &Record, facts: &Facts<'_>) -> io::Result<Verdict> {
    let me = facts.me;
    let kernel_locks = facts.locking == Locking::Kernel;
    if record.boot == me.boot && (record.pidns == me.pidns || kernel_locks) {
        if holder_process(record, me)? == Holder::Running {
            return Ok(Verdict::Alive(Alive::Running));
        }
        if record.pidns != me.pidns {
            return Ok(Verdict::Stale(Stale::LocksFree));
        }
        if !kernel_locks {
            let writers = processes_writing(facts.file_id);
            if !writers.is_empty() {
                return Ok(Verdict::Alive(Alive::Command(writers)));
            }
        }
        return Ok(Verdict::Stale(Stale::Died));
    }
    if record.boot != me.boot && record.host == me.host && written_before_boot(record) {
        return Ok(Verdict::Stale(Stale::Rebooted));
    }
    Ok(if facts.heartbeat_age < facts.stale_after {
        Verdict::Alive(Alive::Heartbeat(facts.heartbeat_age))
    } else {
        Verdict::Stale(Stale::Silent(facts.heartbeat_age))
    })
}

/// Whether the record was written before this machine booted (`btime` in /proc/stat).
fn written_before_boot(record: &Record) -> bool {
    let Ok(since) = humantime::parse_rfc3339(&record.since) else {
        return false;
    };
    boot_time().is_some_and(|booted| since < booted)
}

fn boot_time() -> Option<SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let seconds: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The processes (PID, name) that have the file `id` open for writing, as the holder
/// and its command's tree have it (waiters only read it). OFD locks carry no PID, so
/// /proc/*/fd is the way to tell who keeps a lock file. Other users' processes are
/// visible only to root.
pub(crate) fn processes_writing(id: (u64, u64)) -> Vec<(i32, String)> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids = procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()));
    processes_writing_among(id, pids)
}

/// As [`processes_writing`], among the processes `pids` only (xlock's own tree).
pub(crate) fn processes_writing_among(id: (u64, u64), pids: impl IntoIterator<Item = i32>) -> Vec<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for pid in pids {
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let has_it = fds.flatten().any(|fd| {
            fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == id) && opened_for_writing(pid, &fd.file_name())
        });
        if has_it {
            let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, name.trim().to_owned()));
        }
    }
    found.sort();
    found
}

/// Whether descriptor `fd` of process `pid` is open for writing (its `flags:` in fdinfo).
fn opened_for_writing(pid: i32, fd: &std::ffi::OsStr) -> bool {
    let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy())) else {
        return false;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|flags| i64::from_str_radix(flags.trim(), 8).ok())
        .is_some_and(|flags| flags & i64::from(nix::libc::O_ACCMODE) != i64::from(nix::libc::O_RDONLY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_past_odd_command_names() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_stat(line), Some((987654, 'S')));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn current_identity_matches_proc() {
        let me = Identity::current().unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.start > 0);
        assert!(me.pidns.starts_with("pid:["), "{}", me.pidns);
        assert_eq!(me.boot.len(), 36, "{}", me.boot);
    }

    fn record_of(me: &Identity, pid: i32, start: u64) -> Record {
        Record {
            xlock: 1,
            pid,
            start,
            pidns: me.pidns.clone(),
            boot: me.boot.clone(),
            host: me.host.clone(),
            nonce: "0".repeat(32),
            since: String::new(),
            cmd: String::new(),
            mode: None,
            slots: None,
            slot: None,
        }
    }

    #[test]
    fn holder_evidence() {
        let me = Identity::current().unwrap();
        assert_eq!(
            holder_process(&record_of(&me, me.pid, me.start), &me).unwrap(),
            Holder::Running
        );
        // Same PID, other start time: a recycled PID.
        assert_eq!(
            holder_process(&record_of(&me, me.pid, me.start + 1), &me).unwrap(),
            Holder::Gone
        );
        // A reaped child's PID.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let mut child = child;
        child.wait().unwrap();
        assert_eq!(holder_process(&record_of(&me, pid, 1), &me).unwrap(), Holder::Gone);
        // A zombie (exited, not yet reaped) counts as gone.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let zpid = zombie.id() as i32;
        let zstart = loop {
            match proc_stat(zpid).unwrap() {
                Some((start, 'Z')) => break start,
                Some(_) => std::thread::yield_now(),
                None => panic!("zombie vanished"),
            }
        };
        assert_eq!(
            holder_process(&record_of(&me, zpid, zstart), &me).unwrap(),
            Holder::Gone
        );
        zombie.wait().unwrap();
        // Another namespace or boot: the PID says nothing.
        let mut other = record_of(&me, me.pid, me.start);
        other.pidns = "pid:[1]".into();
        assert_eq!(holder_process(&other, &me).unwrap(), Holder::Unknown);
        let mut other = record_of(&me, me.pid, me.start);
        other.boot = "another".into();
        assert_eq!(holder_process(&other, &me).unwrap(), Holder::Unknown);
    }

    #[test]
    fn evidence_table() {
        let me = Identity::current().unwrap();
        let facts = |kernel_locks: bool, age| Facts {
            me: &me,
            locking: if kernel_locks {
                Locking::Kernel
            } else {
                Locking::RecordOnly
            },
            file_id: (0, 0),
            heartbeat_age: Duration::from_secs(age),
            stale_after: Duration::from_secs(30),
        };
        let alive = |record: &Record, kernel_locks, age| judge(record, &facts(kernel_locks, age)).unwrap();
        // Same kernel, same namespace: the recorded process decides, not the heartbeat.
        let live = record_of(&me, me.pid, me.start);
        assert_eq!(alive(&live, true, 3600), Verdict::Alive(Alive::Running));
        let dead = record_of(&me, me.pid, me.start + 1);
        assert_eq!(alive(&dead, true, 0), Verdict::Stale(Stale::Died));
        assert_eq!(alive(&dead, false, 0), Verdict::Stale(Stale::Died));
        // Same kernel, another namespace: the PID is not looked at.
        let mut other_ns = live.clone();
        other_ns.pidns = "pid:[1]".into();
        assert_eq!(alive(&other_ns, true, 0), Verdict::Stale(Stale::LocksFree));
        assert_eq!(
            alive(&other_ns, false, 5),
            Verdict::Alive(Alive::Heartbeat(Duration::from_secs(5)))
        );
        assert_eq!(
            alive(&other_ns, false, 31),
            Verdict::Stale(Stale::Silent(Duration::from_secs(31)))
        );
        // This host before its reboot; this host after it (a clock gone wrong?) and
        // another host go by the heartbeat.
        let mut rebooted = live.clone();
        rebooted.boot = "another".into();
        rebooted.since = "2000-01-01T00:00:00.000Z".into();
        assert_eq!(alive(&rebooted, true, 0), Verdict::Stale(Stale::Rebooted));
        rebooted.since = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        assert_eq!(
            alive(&rebooted, true, 0),
            Verdict::Alive(Alive::Heartbeat(Duration::ZERO))
        );
        let mut elsewhere = live;
        elsewhere.boot = "another".into();
        elsewhere.host = "elsewhere".into();
        elsewhere.since = "2000-01-01T00:00:00.000Z".into();
        assert_eq!(
            alive(&elsewhere, true, 29),
            Verdict::Alive(Alive::Heartbeat(Duration::from_secs(29)))
        );
        assert_eq!(
            alive(&elsewhere, false, 30),
            Verdict::Stale(Stale::Silent(Duration::from_secs(30)))
        );
    }
}
