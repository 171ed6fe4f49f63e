//! The `xlock` binary: hands argv to the library and ends as it says.
//!
//! `no_main`: Rust's usual entry point, before `main`, ignores SIGPIPE and sets up a
//! stack-overflow handler (reading /proc/self/maps, mapping an alternate signal stack).
//! xlock wants neither: the command must inherit SIGPIPE's disposition as xlock got
//! it (SPEC §5), and start-up time is what an uncontended run costs (SPEC §7).
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    xlock::run(std::env::args_os()).exit()
}
