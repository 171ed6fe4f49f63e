//! Pseudo-terminals for the tests where the terminal matters (SPEC §2's waiting
//! notice, §5's Ctrl-C, Ctrl-Z and hang-ups): a process runs as the session leader
//! of a new one, and the test types on it and reads what it shows.

use std::fs;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A process started as the session leader of a new pseudo-terminal, which is its
/// controlling terminal: what the test writes to the master is typed on it.
pub struct Pty {
    pub master: Option<std::os::fd::OwnedFd>,
    pub child: Child,
    seen: String,
}

impl Pty {
    pub fn spawn(mut command: Command) -> Pty {
        use nix::fcntl::OFlag;
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::process::CommandExt;
        // Close-on-exec from the start (openpty cannot do that): a process that other
        // tests start meanwhile must not inherit the master, or dropping ours would not
        // hang the terminal up.
        let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).expect("posix_openpt");
        let size = nix::libc::winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the struct it is given.
        unsafe { nix::libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&master), nix::libc::TIOCSWINSZ, &size) };
        nix::pty::grantpt(&master).expect("grantpt");
        nix::pty::unlockpt(&master).expect("unlockpt");
        let slave: std::os::fd::OwnedFd = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(nix::pty::ptsname_r(&master).expect("ptsname"))
            .expect("open pty slave")
            .into();
        command
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: setsid, signal and ioctl are async-signal-safe and allocate nothing.
        unsafe {
            command.pre_exec(|| {
                // A new terminal session starts with default dispositions, whatever the
                // test runner inherited (under nohup, SIGHUP is ignored, and an xlock
                // started with a signal ignored keeps it ignored: SPEC §5).
                for signal in [nix::libc::SIGHUP, nix::libc::SIGINT, nix::libc::SIGQUIT] {
                    nix::libc::signal(signal, nix::libc::SIG_DFL);
                }
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn on pty");
        drop(command); // closes the parent's copies of the slave
        Pty {
            master: Some(master.into()),
            child,
            seen: String::new(),
        }
    }

    /// Types `bytes` on the terminal.
    pub fn send(&mut self, bytes: &[u8]) {
        nix::unistd::write(self.master.as_ref().unwrap(), bytes).expect("write to pty");
    }

    /// Reads the terminal until `needle` has appeared (after what earlier calls
    /// consumed); returns everything read up to and including it.
    pub fn expect(&mut self, needle: &str) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = self.seen.find(needle) {
                let upto: String = self.seen.drain(..at + needle.len()).collect();
                return upto;
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {needle:?}; the terminal showed: {:?}",
                self.seen
            );
            let master = self.master.as_ref().unwrap();
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(master),
                nix::poll::PollFlags::POLLIN,
            )];
            let timeout = nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
            if nix::poll::poll(&mut fds, timeout).expect("poll") == 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => {
                    panic!("terminal closed before {needle:?}; it showed: {:?}", self.seen)
                }
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(err) => panic!("read from pty: {err}"),
            }
        }
    }

    /// Everything the terminal shows until every process has closed it.
    pub fn rest(&mut self) -> String {
        let master = self.master.as_ref().unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => return std::mem::take(&mut self.seen),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(err) => panic!("read from pty: {err}"),
            }
        }
    }

    /// Hangs the terminal up: the master is closed.
    pub fn hang_up(&mut self) {
        self.master = None;
    }
}
