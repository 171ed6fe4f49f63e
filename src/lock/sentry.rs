//! A slot waiter's sentries (SPEC §9, `slots.rs`): no kernel call waits for "any of N
//! locks", so a waiter that finds every slot busy starts, for each busy slot, a child
//! process that blocks on that slot's kernel locks (the process lock, then the command
//! lock, as the exclusive waiter takes them) through a read-only descriptor of its
//! own, and exits once it has had both: the slot's holder and its command's tree are
//! gone, or released it. Its exit wakes the waiter (SIGCHLD, read from the signalfd
//! that every wait polls), and comes after its descriptor is closed and its locks are
//! dropped (do_exit: exit_files before exit_notify), so the waiter's next look cannot
//! find the sentry in the way. No polling, and no thread: a sentry is ended with
//! SIGKILL, race-free.
//!
//! A sentry is made with `clone(CLONE_VM)`: it shares the waiter's memory, so making
//! it copies no page tables and its exit tears none down (a forked sentry's exit,
//! on the way from a slot's release to the waiter's wake, made a slot hand-off 1.2 to
//! 1.4x the exclusive lock's). It runs beside the waiter's thread, so it must not
//! touch anything of that thread's: it makes its system calls itself (`syscall`
//! instructions: the C library's wrappers would set the waiter's errno), on a stack
//! of its own, from arguments that the [`Sentry`] owns until the child is reaped.
//! On other architectures than x86_64 and aarch64 it is forked.

use std::fs::OpenOptions;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::kernel::command_byte;

/// The sentry's stack: a few frames of system calls. Untouched pages of it are never
/// faulted in.
const STACK: usize = 16 * 1024;

/// What the sentry reads, owned by its [`Sentry`] (so alive until it is reaped).
struct Args {
    fd: libc::c_int,
    parent: libc::pid_t,
    command_byte: libc::flock,
}

/// A sentry on one busy slot's file. Dropped: killed and reaped.
pub(super) struct Sentry {
    pid: Pid,
    /// The slot's file that it waits on (device, inode).
    pub(super) id: (u64, u64),
    reaped: bool,
    // Read (`args`) and written (`stack`) by the child until it is reaped.
    _args: Box<Args>,
    _stack: Vec<u8>,
}

impl Sentry {
    /// A sentry on the file at `path`; `Ok(None)` if there is none any more (the
    /// waiter looks again).
    pub(super) fn start(path: &Path) -> io::Result<Option<Sentry>> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let meta = file.metadata()?;
        let args = Box::new(Args {
            fd: file.as_raw_fd(),
            parent: nix::unistd::getpid().as_raw(),
            command_byte: command_byte(libc::F_RDLCK as i16),
        });
        let mut stack = Vec::<u8>::with_capacity(STACK);
        let pid = start_child(&args, stack.spare_capacity_mut())?;
        // Our copy is closed (`file` dropped): the child's is the only one, so its
        // locks go with it.
        drop(file);
        Ok(Some(Sentry {
            pid,
            id: (meta.dev(), meta.ino()),
            reaped: false,
            _args: args,
            _stack: stack,
        }))
    }

    /// `Some(..)` once it has ended (reaped then): `true` if it had the locks (or was
    /// killed), `false` if a lock call failed (the waiter polls then).
    pub(super) fn ended(&mut self) -> Option<bool> {
        let ended = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return None,
            Ok(WaitStatus::Exited(_, code)) => code == 0,
            Ok(WaitStatus::Signaled(..)) | Err(_) => true,
            Ok(_) => return None,
        };
        self.reaped = true;
        Some(ended)
    }

    /// Sends it SIGKILL, without waiting for it to die (dropping it waits).
    pub(super) fn kill(&self) {
        if !self.reaped {
            // Our own unreaped child: its PID cannot have been reused.
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}

impl Drop for Sentry {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            // Reaped before its arguments and stack are freed (the fields drop after).
            while let Err(nix::errno::Errno::EINTR) = waitpid(self.pid, None) {}
        }
    }
}

/// Starts the child on `stack`, sharing our memory.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn start_child(args: &Args, stack: &mut [MaybeUninit<u8>]) -> io::Result<Pid> {
    // Stacks grow down: the child starts at the top, 16-byte aligned.
    let top = stack.as_mut_ptr_range().end as usize & !15;
    // SAFETY: `sentry` runs on `stack` and reads `args`, both owned by the `Sentry`
    // that this call's caller makes, which reaps the child before they are freed
    // (`Drop`). Without CLONE_FILES, CLONE_SIGHAND or CLONE_THREAD the child has its
    // own descriptor table, signal handlers and process: it shares only memory, and
    // touches only `args`, its stack and the registers of its system calls.
    let pid = unsafe {
        libc::clone(
            sentry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::SIGCHLD,
            std::ptr::from_ref(args).cast_mut().cast(),
        )
    };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(Pid::from_raw(pid))
}

/// Forks the child (no system-call instructions of our own for this architecture).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn start_child(args: &Args, _stack: &mut [MaybeUninit<u8>]) -> io::Result<Pid> {
    // SAFETY: fork(2). The child runs only `sentry`: system calls on values made
    // before the fork, then exit; sound even if another thread held a lock of the
    // allocator or of std at the fork.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = sentry(std::ptr::from_ref(args).cast_mut().cast());
            // SAFETY: ends the child, running nothing of the parent's.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(Pid::from_raw(pid)),
    }
}

/// The sentry's whole life: it dies with the waiter (PR_SET_PDEATHSIG), keeps nothing
/// of the waiter's but its descriptor of the slot's file (the gate's locks must not
/// outlive the waiter in it), and returns 0 once it has had both locks, 1 if a lock
/// call failed; returning ends it (the C library's clone makes the exit system call).
extern "C" fn sentry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Args` that `start_child` passed, alive until we are reaped.
    let args = unsafe { &*arg.cast_const().cast::<Args>() };
    let fd = args.fd as libc::c_long;
    // SAFETY: plain system calls (every `sys` below) on our own descriptors and on
    // `args.command_byte`, a valid struct flock for F_OFD_SETLKW.
    unsafe {
        sys(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as libc::c_long,
            libc::SIGKILL as libc::c_long,
            0,
        );
        if sys(libc::SYS_getppid, 0, 0, 0) != args.parent as libc::c_long {
            return 1; // the waiter is gone already
        }
        if fd > 0 {
            sys(libc::SYS_close_range, 0, fd - 1, 0);
        }
        sys(libc::SYS_close_range, fd + 1, libc::c_uint::MAX as libc::c_long, 0);
        let interrupted = |ret: libc::c_long| ret == -(libc::EINTR as libc::c_long);
        loop {
            match sys(libc::SYS_flock, fd, libc::LOCK_EX as libc::c_long, 0) {
                0 => break,
                ret if interrupted(ret) => {}
                _ => return 1,
            }
        }
        let lock = std::ptr::from_ref(&args.command_byte) as libc::c_long;
        loop {
            match sys(libc::SYS_fcntl, fd, libc::F_OFD_SETLKW as libc::c_long, lock) {
                0 => break,
                ret if interrupted(ret) => {}
                _ => return 1,
            }
        }
    }
    0
}

/// A system call, made by this code (not the C library's wrapper, which would set
/// errno: the waiter's thread's, which the sentry shares): the result, or -errno.
///
/// # Safety
///
/// As for the system call `n` with these arguments.
#[cfg(target_arch = "x86_64")]
unsafe fn sys(n: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> libc::c_long {
    let ret;
    // SAFETY: the caller's; `syscall` clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn sys(n: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> libc::c_long {
    let ret;
    // SAFETY: the caller's; `svc 0` returns in x0 and clobbers nothing else.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a => ret,
            in("x1") b,
            in("x2") c,
            options(nostack),
        );
    }
    ret
}

/// Elsewhere the sentry is a forked process with its own errno: the C library's call.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn sys(n: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> libc::c_long {
    // SAFETY: the caller's.
    let ret = unsafe { libc::syscall(n, a, b, c) };
    if ret == -1 {
        -(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL) as libc::c_long)
    } else {
        ret
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Waits until `sentry` has ended, at most 10 s: what it said, or `None`.
    fn ended_within(sentry: &mut Sentry) -> Option<bool> {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(had_them) = sentry.ended() {
                return Some(had_them);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    #[test]
    fn a_sentry_ends_once_both_locks_are_free_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        std::fs::write(&path, "record").unwrap();
        // The holder: the process lock (flock), then the command lock (OFD write lock
        // on the command byte), each on a descriptor of its own, as a holder has them.
        let process = std::fs::File::open(&path).unwrap();
        process.lock().unwrap();
        let command = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let byte = command_byte(libc::F_WRLCK as i16);
        // SAFETY: a valid struct flock for F_OFD_SETLK on our own descriptor.
        assert_eq!(unsafe { libc::fcntl(command.as_raw_fd(), libc::F_OFD_SETLK, &byte) }, 0);
        let mut sentry = Sentry::start(&path).unwrap().expect("the file is there");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(sentry.ended(), None, "ended while the process lock was held");
        drop(process);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(sentry.ended(), None, "ended while the command lock was held");
        drop(command);
        assert_eq!(ended_within(&mut sentry), Some(true));
        // Reaped: nothing left to kill or wait for.
        drop(sentry);
    }

    #[test]
    fn a_dropped_sentry_is_killed_and_reaped_and_its_lock_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        std::fs::write(&path, "record").unwrap();
        // Nobody holds it: the sentry takes both locks and ends at once.
        let mut free = Sentry::start(&path).unwrap().unwrap();
        assert_eq!(ended_within(&mut free), Some(true));
        let holder = std::fs::File::open(&path).unwrap();
        holder.lock().unwrap();
        let sentry = Sentry::start(&path).unwrap().unwrap();
        let pid = sentry.pid;
        drop(sentry);
        // Killed and reaped by the drop: no such child any more.
        assert_eq!(waitpid(pid, Some(WaitPidFlag::WNOHANG)), Err(nix::errno::Errno::ECHILD));
        // It never had the lock, and it queues no more: the holder's release frees it.
        drop(holder);
        let again = std::fs::File::open(&path).unwrap();
        assert!(again.try_lock().is_ok());
        assert!(Sentry::start(&dir.path().join("gone")).unwrap().is_none());
    }
}
