//! What the user sees (SPEC §2): xlock's own lines on stderr. On the success path
//! xlock prints nothing (cron mails whatever is printed); a busy lock is one line
//! naming the holder, unless `-q`; `-v` adds one grep-able line per event.

use std::io::Write;
use std::time::{Duration, SystemTime};

use crate::cli::Verbosity;
use crate::record::Record;

/// Writes xlock's lines for one lock.
#[derive(Debug)]
pub struct Reporter {
    verbosity: Verbosity,
    lock: String,
}

impl Reporter {
    pub fn new(verbosity: Verbosity, lock: &std::path::Path) -> Reporter {
        Reporter {
            verbosity,
            lock: lock.display().to_string(),
        }
    }

    /// `-v`: acquired after having had to wait.
    pub fn acquired_after(&self, waited: Duration) {
        self.verbose(format_args!("acquired {} after waiting {}", self.lock, seconds(waited)));
    }

    /// `-v`: a dead holder's lock was taken over.
    pub fn took_over(&self, dead: &Record) {
        self.verbose(format_args!(
            "took over stale {} from dead pid {} (host {}, since {}): {}",
            self.lock, dead.pid, dead.host, dead.since, dead.cmd
        ));
    }

    /// `-v`: released.
    pub fn released(&self) {
        self.verbose(format_args!("released {}", self.lock));
    }

    /// The lock could not be had in time (not with `-q`).
    pub fn busy(&self, holder: Option<&Record>, waited: Option<Duration>) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        let by = holder
            .map(|h| format!(" (held by {})", holder_text(h)))
            .unwrap_or_default();
        match waited {
            None => line(format_args!("{} is busy{by}", self.lock)),
            Some(waited) => line(format_args!(
                "timed out after {} waiting for {}{by}",
                seconds(waited),
                self.lock
            )),
        }
    }

    fn verbose(&self, args: std::fmt::Arguments<'_>) {
        if self.verbosity == Verbosity::Verbose {
            line(args);
        }
    }
}

/// `pid 4242 'make deploy' on build-3 for 3m12s`
pub fn holder_text(holder: &Record) -> String {
    let age = humantime::parse_rfc3339(&holder.since)
        .ok()
        .and_then(|since| SystemTime::now().duration_since(since).ok())
        .map(|age| {
            format!(
                " for {}",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
                    .to_string()
                    .replace(' ', "")
            )
        })
        .unwrap_or_default();
    format!("pid {} '{}' on {}{age}", holder.pid, holder.cmd, holder.host)
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// Prints `xlock: <message>` on stderr. A closed stderr is not worth dying for.
pub fn line(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "xlock: {args}");
}

/// An I/O error as words a user can act on: the system's reason, and what to do for
/// the errors that have a general remedy.
pub fn io_reason(err: &std::io::Error) -> String {
    use nix::libc;
    let Some(errno) = err.raw_os_error() else {
        return err.to_string();
    };
    let reason = nix::errno::Errno::from_raw(errno).desc();
    let remedy = match errno {
        libc::EMFILE | libc::ENFILE => "; raise the open-file limit (ulimit -n)",
        libc::ENOSPC | libc::EDQUOT => "; free some space",
        libc::EROFS => "; use a writable file system",
        libc::ENOMEM | libc::EAGAIN => "; too many processes or not enough memory",
        _ => "",
    };
    format!("{reason}{remedy}")
}

/// Prints an error once, on one line.
pub fn error(err: &anyhow::Error) {
    let text = format!("{err:#}").replace('\n', " ");
    line(format_args!("{text}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_text_names_pid_command_host_and_age() {
        let since = SystemTime::now() - Duration::from_secs(192);
        let record = Record {
            xlock: 1,
            pid: 4242,
            start: 1,
            pidns: String::new(),
            boot: String::new(),
            host: "build-3".into(),
            nonce: "0".repeat(32),
            since: humantime::format_rfc3339_millis(since).to_string(),
            cmd: "make deploy".into(),
        };
        let text = holder_text(&record);
        assert!(text.starts_with("pid 4242 'make deploy' on build-3 for 3m1"), "{text}");
    }
}
