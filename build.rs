//! Build script: lays out the functions an ordinary run executes next to each other,
//! first in the program's text (link/hot-text.ld, written by tools/hot-text). The binary
//! also carries the etcd client, which a file-lock run never executes; in the linker's
//! default order the file lock's few hundred functions lie scattered over all of it,
//! and each 64 KiB window they touch costs a page fault at every run. See
//! docs/design.md, "Code layout".

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=link/hot-text.ld");
    // GNU ld and LLD (Rust's default linker on x86_64 Linux) read the script, which
    // only adds an output section before `.text`; a pattern that matches nothing is
    // ignored, so a stale list costs speed, never correctness.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-Xlinker");
        println!("cargo:rustc-link-arg-bins=-T");
        println!("cargo:rustc-link-arg-bins=-Xlinker");
        println!("cargo:rustc-link-arg-bins={dir}/link/hot-text.ld");
    }
}
