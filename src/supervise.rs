//! Child supervision (SPEC §5, §4.4): spawn the command from the main thread in
//! xlock's own process group, pass signals through to it, keep the lock's heartbeat
//! while it runs (and stop it with SIGTERM if the lock is lost), always reap it, and
//! turn how it ended into xlock's exit.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, getppid, getsid, Pid};

use crate::error::io_reason;
use crate::exit::Exit;
use crate::report;
use crate::signals::{self, ChildReset, Event, Signals};

/// The lock's side of supervision, checked while the command runs (SPEC §4.4, §10).
pub trait Guard {
    /// When `check` wants to run next (`None`: never).
    fn next_check(&self) -> Option<std::time::Instant>;
    /// Heartbeat / lease renewal. `Health::Lost`: supervise prints `message`, sends
    /// SIGTERM to the command's tree, SIGKILL at `kill_by` if given, exits 125.
    fn check(&self) -> Health;
}

pub enum Health {
    Held,
    Lost {
        message: String,
        kill_by: Option<std::time::Instant>,
    },
}

/// What to run: everything supervision needs to know of the command.
pub struct Job<'a> {
    /// The program and its arguments (`/bin/sh -c STR` for `-c`).
    pub argv: Vec<&'a OsStr>,
    /// Variables added to xlock's environment (XLOCK_PATH, XLOCK_HELD, ...).
    pub env: &'a [(&'a str, OsString)],
    /// What the command gets if xlock dies (SIGTERM; SIGKILL with `--close`).
    pub death: Signal,
    /// The descriptor the command inherits (the command lock), if any.
    pub inherit: Option<BorrowedFd<'a>>,
}

/// Runs `job` while `guard` (if any: `None` when an ancestor holds the lock) says the
/// lock is held, and says how the command ended.
pub fn run(job: &Job<'_>, guard: Option<&dyn Guard>, signals: &Signals) -> Result<Exit> {
    let shown = job.argv[0].to_string_lossy().into_owned();
    let mut exec = Exec::new(
        &job.argv,
        job.env,
        job.death,
        job.inherit.map(|fd| fd.as_raw_fd()),
        signals,
    )?;
    let pid = match exec.spawn() {
        Ok(pid) => pid,
        Err(err) => return Ok(spawn_failure(&shown, &err)),
    };
    let session_leader = getsid(None).is_ok_and(|sid| sid == getpid());
    let mut lost = false;
    let mut kill_by: Option<Instant> = None;
    loop {
        let next = [guard.filter(|_| !lost).and_then(|g| g.next_check()), kill_by]
            .into_iter()
            .flatten()
            .min();
        let timeout = next.map(|at| at.saturating_duration_since(Instant::now()));
        match signals.wait(None, timeout).context("cannot wait for signals")? {
            Event::Signal(info) if signals::number(&info) == libc::SIGCHLD => {
                // The child is the only process xlock waits for.
                let ended = match waitpid(pid, Some(WaitPidFlag::WNOHANG)).context("cannot wait for the command")? {
                    WaitStatus::Exited(_, code) => Exit::Child(code as u8),
                    WaitStatus::Signaled(_, signal, _) => Exit::Signaled(signal as i32),
                    _ => continue,
                };
                return Ok(if lost { Exit::Failure } else { ended });
            }
            Event::Timeout => {
                if kill_by.is_some_and(|at| at <= Instant::now()) {
                    kill_by = None;
                    let _ = kill(pid, Signal::SIGKILL);
                }
                if let (Some(guard), false) = (guard, lost) {
                    if guard.next_check().is_some_and(|at| at <= Instant::now()) {
                        if let Health::Lost { message, kill_by: by } = guard.check() {
                            lost = true;
                            kill_by = by;
                            report::line(format_args!("{message}"));
                            let _ = kill(pid, Signal::SIGTERM);
                        }
                    }
                }
            }
            Event::Signal(info) if signals::should_forward(&info, session_leader) => {
                // The child is not reaped yet, so its PID is still its own.
                if let Ok(signal) = Signal::try_from(signals::number(&info)) {
                    let _ = kill(pid, signal);
                }
            }
            _ => {}
        }
    }
}

/// Size of the stack the child runs on until it execs.
const CHILD_STACK: usize = 256 * 1024;

/// Everything the child needs between clone and exec, made ready by the parent.
///
/// The child is started like posix_spawn(3) starts one: `clone(CLONE_VM | CLONE_VFORK)`,
/// sharing xlock's memory while xlock waits for it to exec. A fork would copy xlock's
/// page tables and then fault on every page either side writes (about 0.5 ms of an
/// uncontended run here, SPEC §7); posix_spawn itself cannot arm the parent-death
/// signal (SPEC §4.2), which is why this is done by hand. The child therefore makes
/// only async-signal-safe calls and allocates nothing.
struct Exec {
    argv: Vec<CString>,
    /// The variables xlock adds (the rest of `envp_ptrs` is xlock's own environment).
    added_env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    death: Signal,
    /// The command lock's descriptor: close-on-exec in xlock, the command keeps it.
    inherit: Option<RawFd>,
    reset: ChildReset,
    parent: libc::pid_t,
    /// Set by the child if a step before exec, or exec itself, failed: its errno.
    error: libc::c_int,
}

impl Exec {
    fn new(
        argv: &[&OsStr],
        env: &[(&str, OsString)],
        death: Signal,
        inherit: Option<RawFd>,
        signals: &Signals,
    ) -> Result<Exec> {
        let c_string = |bytes: Vec<u8>| CString::new(bytes).context("an argument or variable contains a NUL byte");
        let argv = argv
            .iter()
            .map(|arg| c_string(arg.as_bytes().to_vec()))
            .collect::<Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(name, value)| c_string([name.as_bytes(), b"=", value.as_bytes()].concat()))
            .collect::<Result<Vec<_>>>()?;
        let pointers = |strings: &[CString]| strings.iter().map(|s| s.as_ptr()).collect::<Vec<_>>();
        let mut argv_ptrs = pointers(&argv);
        argv_ptrs.push(std::ptr::null());
        // xlock's own environment as it is (its strings, not copies), less the
        // variables `env` sets, then those.
        let mut envp_ptrs = inherited_environment(env);
        envp_ptrs.extend(pointers(&envp));
        envp_ptrs.push(std::ptr::null());
        Ok(Exec {
            argv_ptrs,
            envp_ptrs,
            argv,
            added_env: envp,
            death,
            inherit,
            reset: signals.child_reset(),
            parent: getpid().as_raw(),
            error: 0,
        })
    }

    /// Starts the command; returns once it has exec'd (or failed to).
    fn spawn(&mut self) -> io::Result<Pid> {
        debug_assert_eq!(self.argv_ptrs.len(), self.argv.len() + 1);
        debug_assert!(self.envp_ptrs.len() > self.added_env.len());
        // Never freed: xlock starts one command, and unmapping the stack (a TLB flush)
        // cost about 2% of an uncontended run (SPEC §7). It goes with xlock's exit.
        let stack = Vec::leak(vec![0u8; CHILD_STACK]);
        // Stacks grow down: the child starts at the top, 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
        // SAFETY: `child` gets a pointer to `self`, which outlives the child's use of it:
        // CLONE_VFORK suspends this thread until the child has exec'd or exited, and
        // `stack` is never freed. The child touches nothing else of ours.
        let pid = unsafe {
            libc::clone(
                child,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (self as *mut Exec).cast(),
            )
        };
        if pid == -1 {
            return Err(io::Error::last_os_error());
        }
        let pid = Pid::from_raw(pid);
        // SAFETY: the child has exec'd or exited; it wrote `error` through the pointer
        // it was given, so read it anew.
        let error = unsafe { std::ptr::read_volatile(&self.error) };
        if error != 0 {
            let _ = waitpid(pid, None); // it has exited: reap it
            return Err(io::Error::from_raw_os_error(error));
        }
        Ok(pid)
    }
}

extern "C" {
    /// The C library's environment: the one std reads and `execve` passes on.
    static environ: *const *const libc::c_char;
}

/// Pointers to xlock's environment strings, less those naming a variable in `env`.
fn inherited_environment(env: &[(&str, OsString)]) -> Vec<*const libc::c_char> {
    let mut pointers = Vec::new();
    // SAFETY: `environ` is a null-terminated array of NUL-terminated strings. xlock
    // never changes its environment (no setenv; one thread), so the array and its
    // strings stay as they are until the child's exec has copied them.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let bytes = std::ffi::CStr::from_ptr(*entry).to_bytes();
            let name = bytes.split(|&b| b == b'=').next().unwrap_or_default();
            if !env.iter().any(|(ours, _)| ours.as_bytes() == name) {
                pointers.push(*entry);
            }
            entry = entry.add(1);
        }
    }
    pointers
}

/// The child, between clone and exec, sharing xlock's memory.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Exec` that `spawn` passed; its thread is suspended until
    // we exec or exit, so nothing else uses it meanwhile.
    let exec = unsafe { &mut *arg.cast::<Exec>() };
    let step: io::Result<()> = (|| {
        nix::sys::prctl::set_pdeathsig(exec.death)?;
        if let Some(fd) = exec.inherit {
            nix::fcntl::fcntl(
                // SAFETY: the descriptor is open (the `Held` that owns it outlives the spawn).
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
        }
        exec.reset.apply()?;
        // xlock may have died before the death signal was armed: then nobody waits
        // for this command, so it must not run.
        if getppid().as_raw() != exec.parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: both arrays are null-terminated arrays of pointers to NUL-terminated
        // strings, all owned by `exec`, alive until exec replaces this process.
        unsafe { libc::execvpe(exec.argv_ptrs[0], exec.argv_ptrs.as_ptr(), exec.envp_ptrs.as_ptr()) };
        Err(io::Error::last_os_error())
    })();
    if let Err(err) = step {
        exec.error = err.raw_os_error().unwrap_or(libc::EINVAL);
    }
    // SAFETY: _exit ends the child at once, running nothing of the parent's (atexit
    // handlers, buffers) that it shares.
    unsafe { libc::_exit(127) }
}

/// 127 if the command was not found, 126 if it could not be executed, 125 if xlock
/// could not start it (out of processes or descriptors).
fn spawn_failure(shown: &str, err: &io::Error) -> Exit {
    let (exit, what) = match err.raw_os_error() {
        Some(libc::ENOENT) => (Exit::NotFound, "command not found; check the name and PATH".to_owned()),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM) => (Exit::Failure, io_reason(err)),
        Some(libc::EACCES) => (
            Exit::CannotExecute,
            "permission denied; is it executable (chmod +x)?".to_owned(),
        ),
        _ => (Exit::CannotExecute, err.to_string()),
    };
    report::line(format_args!("cannot run '{shown}': {what}"));
    exit
}
