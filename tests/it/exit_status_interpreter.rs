//! A script whose `#!` interpreter is missing: exec fails with ENOENT although the
//! script exists. Exit 127 as for any command not found (SPEC §3), but the message
//! names the interpreter instead of sending the user to check the script's name.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;
use assert_cmd::Command;

fn script(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn stderr_of(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

#[test]
fn a_missing_interpreter_is_named() {
    let sandbox = Sandbox::new();
    let path = sandbox.path("job.sh");
    script(&path, "#! /usr/bin/xlock-no-such-interpreter -e\necho hi\n");
    // By path.
    let assert = Command::new(xlock_bin())
        .arg(sandbox.lock())
        .arg(&path)
        .assert()
        .code(127);
    let stderr = stderr_of(&assert);
    assert_eq!(
        stderr,
        format!(
            "xlock: cannot run '{}': its interpreter /usr/bin/xlock-no-such-interpreter was not found; \
             install it or fix the script's #! line\n",
            path.display()
        )
    );
    // Found through PATH: the same.
    let assert = Command::new(xlock_bin())
        .env("PATH", sandbox.dir.path())
        .arg(sandbox.lock())
        .arg("job.sh")
        .assert()
        .code(127);
    let stderr = stderr_of(&assert);
    assert!(
        stderr.contains("'job.sh': its interpreter /usr/bin/xlock-no-such-interpreter was not found"),
        "{stderr}"
    );
    assert_eq!(sandbox.entries(), ["job.sh"], "the lock must be released");
}

/// The classic: a script saved with Windows line endings asks for `/bin/sh\r`.
#[test]
fn a_script_with_crlf_line_endings_is_told_so() {
    let sandbox = Sandbox::new();
    let path = sandbox.path("dos.sh");
    script(&path, "#!/bin/sh\r\necho hi\r\n");
    let assert = Command::new(xlock_bin())
        .arg(sandbox.lock())
        .arg(&path)
        .assert()
        .code(127);
    let stderr = stderr_of(&assert);
    assert!(
        stderr.contains(r"its interpreter /bin/sh\r was not found; the script has Windows line endings (CRLF)"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
}

/// A command that does not exist at all keeps its message.
#[test]
fn a_missing_command_is_still_not_found() {
    let sandbox = Sandbox::new();
    let assert = Command::new(xlock_bin())
        .arg(sandbox.lock())
        .arg(sandbox.path("nothing-here"))
        .assert()
        .code(127);
    let stderr = stderr_of(&assert);
    assert!(
        stderr.contains("command not found; check the name and PATH"),
        "{stderr}"
    );
}

/// A directory given as the command: exec says EACCES, and xlock says what it is, not
/// "is it executable".
#[test]
fn a_directory_as_the_command_is_told_so() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("subdir");
    fs::create_dir(&dir).unwrap();
    let assert = Command::new(xlock_bin())
        .arg(sandbox.lock())
        .arg(&dir)
        .assert()
        .code(126);
    let stderr = stderr_of(&assert);
    assert!(stderr.contains("it is a directory"), "{stderr}");
    assert!(!stderr.contains("chmod"), "{stderr}");
    // A file without the x bit still gets the chmod advice.
    let plain = sandbox.path("plain.sh");
    fs::write(&plain, "echo hi\n").unwrap();
    let assert = Command::new(xlock_bin())
        .arg(sandbox.lock())
        .arg(&plain)
        .assert()
        .code(126);
    assert!(stderr_of(&assert).contains("chmod +x"));
}
