//! The `xlock` binary: the process boundary. It takes argv from the C runtime, makes
//! sure descriptors 0–2 are taken, hands argv to the library and ends as it says.
//!
//! `no_main`: Rust's usual entry point, before `main`, ignores SIGPIPE and sets up a
//! stack-overflow handler (reading /proc/self/maps, mapping an alternate signal stack).
//! xlock wants neither: the command must inherit SIGPIPE's disposition as xlock got
//! it (SPEC §5), and start-up time is what an uncontended run costs (SPEC §7). So
//! argv comes from `main`'s own parameters: `std::env::args_os()` is filled before
//! `main` only on linux-gnu (not on musl, the usual static build).
#![cfg_attr(not(test), no_main)]

use std::ffi::{c_char, c_int, CStr, OsStr, OsString};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    fill_standard_descriptors();
    // SAFETY: the C runtime passes `main` argc pointers to NUL-terminated strings,
    // which stay valid for the life of the process.
    let args = unsafe { args_from(argc, argv) };
    xlock::run(args).exit()
}

/// The argument list `main` was given, as Rust strings (any bytes but NUL).
///
/// # Safety
/// `argv` points to at least `argc` pointers, each to a NUL-terminated string.
unsafe fn args_from(argc: c_int, argv: *const *const c_char) -> Vec<OsString> {
    let count = usize::try_from(argc).unwrap_or(0);
    (0..count)
        .map(|i| {
            // SAFETY: i < argc, and the caller promises argc valid C strings at argv.
            let arg = unsafe { CStr::from_ptr(*argv.add(i)) };
            OsStr::from_bytes(arg.to_bytes()).to_owned()
        })
        .collect()
}

/// Opens /dev/null on each of descriptors 0, 1 and 2 that is closed (SPEC §6), so
/// that none of xlock's own files (the lock file above all) gets one of those numbers,
/// where the command's writes to stdout or stderr would land in it. open(2) takes the
/// lowest free number: the first that is 3 or more means 0–2 are all open, and is
/// closed again. Left open (not close-on-exec), the filler is what the command gets
/// too, as glibc does for set-user-ID programs. Without /dev/null nothing can be done.
fn fill_standard_descriptors() {
    use nix::fcntl::{open, OFlag};
    while let Ok(fd) = open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
        if fd.as_raw_fd() > 2 {
            return; // dropped: closed
        }
        let _ = fd.into_raw_fd(); // keep it: it fills a closed standard descriptor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_come_from_a_c_array() {
        let words: [&CStr; 4] = [c"xlock", c"-w", c"5", c"caf\xc3\xa9 \xff"];
        let mut argv: Vec<*const c_char> = words.iter().map(|w| w.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: argv holds 4 valid C strings (and the terminating null, as C's
        // does); argc 0 reads nothing.
        let (args, none) = unsafe { (args_from(4, argv.as_ptr()), args_from(0, std::ptr::null())) };
        let expected: Vec<OsString> = words
            .iter()
            .map(|w| OsStr::from_bytes(w.to_bytes()).to_owned())
            .collect();
        assert_eq!(args, expected);
        assert!(none.is_empty());
    }

    #[test]
    fn open_standard_descriptors_are_left_alone() {
        let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        fill_standard_descriptors();
        assert_eq!(std::fs::read_dir("/proc/self/fd").unwrap().count(), before);
    }
}
