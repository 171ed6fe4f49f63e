//! Starting the command (SPEC §5, §4.2): `clone(CLONE_VM | CLONE_VFORK)` and exec,
//! with the parent-death signal armed and the signal state reset in between. All of
//! the unsafe code that starting a process needs lives here, and nothing else.
//!
//! The child is started like posix_spawn(3) starts one: it shares xlock's memory
//! while xlock's thread is suspended until the child has exec'd (or exited). A fork
//! would copy xlock's page tables and then fault on every page either side writes
//! (about 0.5 ms of an uncontended run, SPEC §7); posix_spawn itself cannot arm the
//! parent-death signal (SPEC §4.2), which is why this is done by hand. Everything the
//! child needs is made ready by the parent; between clone and exec the child makes
//! only async-signal-safe calls and allocates nothing.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::libc;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{getpid, getppid, Pid};

use crate::signals::ChildReset;

/// Stack the child may use besides execvpe's copy of argv: our own calls, glibc's
/// execvpe (its PATH buffer of up to PATH_MAX + NAME_MAX bytes), a lazy symbol
/// binding. glibc's posix_spawn reserves the same 32 KiB + 512 bytes for its child.
const CHILD_SLACK: usize = 32 * 1024 + 512;

/// The stack the child needs for a command of `argc` words: on ENOEXEC, glibc's
/// execvpe copies argv into a stack array of argc + 2 pointers to run the file with
/// /bin/sh.
fn stack_needed(argc: usize) -> usize {
    CHILD_SLACK + (argc + 2) * size_of::<*const libc::c_char>()
}

/// Everything the child needs between clone and exec, made ready by the parent.
pub struct Exec<'a> {
    argv: Vec<CString>,
    /// The variables xlock adds (the rest of `envp_ptrs` is xlock's own environment).
    added_env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    death: Signal,
    /// The command lock's descriptor: close-on-exec in xlock, the command keeps it.
    inherit: Option<BorrowedFd<'a>>,
    reset: ChildReset,
    parent: Pid,
    /// Set by the child if a step before exec, or exec itself, failed: its errno.
    error: AtomicI32,
}

impl<'a> Exec<'a> {
    /// Prepares `argv` (argv[0] first, looked up in PATH) with xlock's environment plus
    /// `env`, `death` as its parent-death signal, and `inherit` left open across exec.
    pub fn new(
        argv: &[&OsStr],
        env: &[(&str, OsString)],
        death: Signal,
        inherit: Option<BorrowedFd<'a>>,
        reset: ChildReset,
    ) -> Result<Exec<'a>> {
        anyhow::ensure!(!argv.is_empty(), "no command to run");
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
            reset,
            parent: getpid(),
            error: AtomicI32::new(0),
        })
    }

    /// Starts the command; returns once it has exec'd (or failed to).
    pub fn spawn(&self) -> io::Result<Pid> {
        debug_assert_eq!(self.argv_ptrs.len(), self.argv.len() + 1);
        debug_assert!(self.envp_ptrs.len() > self.added_env.len());
        // On the heap, not in this frame: a 40 KiB array here made the compiler probe
        // (fault in) each of its ten pages on every run, whether the child used them
        // or not (stack-clash protection). Untouched heap pages are never faulted in;
        // the child touches the top one or two. Freed once the child has exec'd.
        let mut stack = Vec::<u8>::with_capacity(stack_needed(self.argv.len()));
        self.clone_on(stack.spare_capacity_mut())
    }

    /// Runs [`child`] on `stack` and waits for it to exec.
    fn clone_on(&self, stack: &mut [MaybeUninit<u8>]) -> io::Result<Pid> {
        // Stacks grow down: the child starts at the top, 16-byte aligned.
        let top = stack.as_mut_ptr_range().end as usize & !15;
        // SAFETY: `child` gets a pointer to `self` and runs on `stack`; both outlive
        // its use of them, because CLONE_VFORK suspends this thread (which owns
        // both) until the child has exec'd or exited. The child only reads `self`,
        // but for `error`, an atomic.
        let pid = unsafe {
            libc::clone(
                child,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(self).cast_mut().cast(),
            )
        };
        if pid == -1 {
            return Err(io::Error::last_os_error());
        }
        let pid = Pid::from_raw(pid);
        // The child has exec'd or exited by now (CLONE_VFORK).
        let error = self.error.load(Ordering::Acquire);
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
            let bytes = CStr::from_ptr(*entry).to_bytes();
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
    // SAFETY: `arg` is the `Exec` that `clone_on` passed; its thread is suspended
    // until we exec or exit, so it stays alive and unchanged meanwhile.
    let exec = unsafe { &*arg.cast_const().cast::<Exec<'_>>() };
    if let Err(err) = prepare_and_exec(exec) {
        exec.error
            .store(err.raw_os_error().unwrap_or(libc::EINVAL), Ordering::Release);
    }
    // Returning ends the child at once (clone(2): the C library's clone makes the
    // exit system call with this status), running nothing of the parent's (atexit
    // handlers, buffers) that it shares.
    127
}

/// The child's steps; returns only if one of them, or exec, failed.
fn prepare_and_exec(exec: &Exec<'_>) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(exec.death)?;
    if let Some(fd) = exec.inherit {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    }
    exec.reset.apply()?;
    // xlock may have died before the death signal was armed: then nobody waits
    // for this command, so it must not run.
    if getppid() != exec.parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: both arrays are null-terminated arrays of pointers to NUL-terminated
    // strings, owned by `exec` (or xlock's unchanging environment), alive until exec
    // replaces this process.
    unsafe { libc::execvpe(exec.argv_ptrs[0], exec.argv_ptrs.as_ptr(), exec.envp_ptrs.as_ptr()) };
    Err(io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_stack_holds_glibc_posix_spawns_reserve_and_execvpes_copy_of_argv() {
        assert!(stack_needed(1) >= 32 * 1024 + 512);
        // A long argv (xargs-style): room for execvpe's copy of it, on top of the reserve.
        assert!(stack_needed(100_000) >= 32 * 1024 + 512 + 100_002 * 8);
    }
}
