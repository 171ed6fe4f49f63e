//! Nesting on LOCK paths with any bytes (SPEC §4.6, §6; issue 13, item 9): a path with
//! a newline, or one that is not UTF-8, is listed in `XLOCK_HELD` like any other, so
//! an xlock nested in the holder's command runs at once instead of waiting for its
//! own ancestor.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::common::*;

tests_in_every_mode!(nesting_works_on_a_path_with_a_newline, nesting_works_on_a_non_utf8_path);

fn nesting_works_on_a_path_with_a_newline(t: Mode) {
    nesting_works_on(t, b"job\nnext.lock", b"job\\nnext.lock");
}

fn nesting_works_on_a_non_utf8_path(t: Mode) {
    // A backslash is escaped too, so that `\n` in the listing always means a newline.
    nesting_works_on(t, b"caf\xe9\\n.lock", b"caf\xe9\\\\n.lock");
}

/// The outer xlock holds `name`; its command runs `xlock -n "$XLOCK_PATH"` (busy, exit
/// 75, if the free pass is missing) and shows `XLOCK_HELD`: one line, `NONCE PATH`,
/// with the path written as `listed`.
fn nesting_works_on(t: Mode, name: &[u8], listed: &[u8]) {
    let sandbox = Sandbox::new();
    let lock = sandbox.dir.path().join(OsStr::from_bytes(name));
    let script = r#""$0" -n "$XLOCK_PATH" -- echo inner; echo "inner exit $?"; printf '%s' "$XLOCK_HELD""#;
    let out = t
        .xlock([lock.as_os_str(), OsStr::new("sh"), OsStr::new("-c"), OsStr::new(script)])
        .arg(xlock_bin())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    let (ran, held) = split_after_second_line(&out.stdout);
    assert_eq!(
        ran, b"inner\ninner exit 0\n",
        "the nested xlock did not run at once: {stderr}"
    );
    let (nonce, path) = held.split_at(33);
    assert!(
        nonce[..32].iter().all(u8::is_ascii_hexdigit) && nonce[32] == b' ',
        "XLOCK_HELD: {:?}",
        String::from_utf8_lossy(held)
    );
    let mut expected = sandbox.dir.path().as_os_str().as_bytes().to_vec();
    expected.push(b'/');
    expected.extend_from_slice(listed);
    assert_eq!(
        String::from_utf8_lossy(path),
        String::from_utf8_lossy(&expected),
        "the path in XLOCK_HELD"
    );
    assert_eq!(path, &expected[..], "the path in XLOCK_HELD (bytes)");
    assert!(!Path::new(&lock).exists(), "the lock was not released");
    assert_eq!(sandbox.entries(), Vec::<String>::new());
}

fn split_after_second_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    let first = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
    let second = bytes[first..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| first + i + 1);
    bytes.split_at(second)
}
