//! Liveness evidence (SPEC §4.1, §4.3): who this process is (PID, start time, PID
//! namespace, boot id, host), and whether a record's holder process still runs.
//!
//! Kernel locks are the primary evidence; the record's process is the cross-check.
//! It matters even on a local disk: a SIGKILLed xlock drops its flock while the
//! kernel tears it down (exit_files) *before* it sends its command the parent-death
//! signal (exit_notify), so "lock free" alone may come a moment too early. A holder
//! that is still running (not yet a zombie) is therefore treated as alive.

use std::fs;
use std::io;

use anyhow::{Context, Result};

use crate::record::Record;

/// What identifies this xlock process in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    pub start: u64,
    pub pidns: String,
    pub boot: String,
    pub host: String,
}

impl Identity {
    /// Reads this process's identity from /proc and the kernel.
    pub fn current() -> Result<Identity> {
        let pid = std::process::id() as i32;
        let (start, _) = proc_stat(pid)
            .and_then(|stat| stat.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
            .map_err(|err| proc_error(&format!("/proc/{pid}/stat"), err))?;
        let pidns = fs::read_link("/proc/self/ns/pid")
            .map_err(|err| proc_error("/proc/self/ns/pid", err))?
            .to_string_lossy()
            .into_owned();
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map_err(|err| proc_error("/proc/sys/kernel/random/boot_id", err))?
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

/// An error reading the evidence xlock needs from /proc, with what to do about it.
fn proc_error(path: &str, err: io::Error) -> anyhow::Error {
    let reason = match err.raw_os_error() {
        Some(nix::libc::ENOENT) => "not found; xlock needs /proc: mount it (mount -t proc proc /proc)".to_owned(),
        _ => crate::status::io_reason(&err),
    };
    anyhow::anyhow!("cannot read {path}: {reason}")
}

/// Start time (field 22) and state (field 3) of a process, or `None` if there is no
/// such process.
pub fn proc_stat(pid: i32) -> io::Result<Option<(u64, char)>> {
    let text = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        // ESRCH: the process ended between the open and the read.
        Err(err) if err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(nix::libc::ESRCH) => {
            return Ok(None)
        }
        Err(err) => return Err(err),
    };
    parse_stat(&text).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat: {text}"),
        )
    })
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

/// What the record's process says about its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The recorded process runs, with the recorded start time.
    Running,
    /// It has ended (or its PID now belongs to another process).
    Gone,
    /// Its PID means nothing here: another PID namespace or another kernel.
    Unknown,
}

/// Judges the record's process from this process's point of view.
pub fn holder_process(record: &Record, me: &Identity) -> io::Result<Holder> {
    if record.boot != me.boot || record.pidns != me.pidns {
        return Ok(Holder::Unknown);
    }
    Ok(match proc_stat(record.pid)? {
        Some((start, state)) if start == record.start && !matches!(state, 'Z' | 'X' | 'x') => Holder::Running,
        _ => Holder::Gone,
    })
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
}
