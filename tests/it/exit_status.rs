//! Exit status (SPEC §3) through the real binary: the child's code passed through,
//! 126/127 for exec failures, and death by the child's signal.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;

use crate::common::*;
use assert_cmd::Command;
use predicates::prelude::*;

fn xlock_in(sandbox: &Sandbox) -> Command {
    let mut command = Command::new(xlock_bin());
    command.arg(sandbox.lock());
    command
}

#[test]
fn child_exit_codes_pass_through_unchanged() {
    let sandbox = Sandbox::new();
    for code in [0, 1, 7, 42, 75, 125, 126, 127, 255] {
        xlock_in(&sandbox)
            .args(["sh", "-c", &format!("exit {code}")])
            .assert()
            .code(code)
            .stderr("");
        xlock_in(&sandbox)
            .args(["-c", &format!("exit {code}")])
            .assert()
            .code(code)
            .stderr("");
    }
    assert_eq!(sandbox.entries(), Vec::<String>::new());
}

#[test]
fn the_command_gets_its_arguments_and_stdio_verbatim() {
    let sandbox = Sandbox::new();
    xlock_in(&sandbox)
        .args(["printf", "%s|", "-v", "--", "a b", "-c", ""])
        .assert()
        .success()
        .stdout("-v|--|a b|-c||");
    xlock_in(&sandbox)
        .args(["cat"])
        .write_stdin("through stdin")
        .assert()
        .success()
        .stdout("through stdin");
    xlock_in(&sandbox)
        .args(["-c", "echo $0 \"$1\""])
        .assert()
        .success()
        .stdout("/bin/sh \n");
}

#[test]
fn command_not_found_is_127() {
    let sandbox = Sandbox::new();
    xlock_in(&sandbox)
        .arg("xlock-no-such-command")
        .assert()
        .code(127)
        .stderr(predicate::str::contains("xlock-no-such-command").and(predicate::str::contains("not found")));
    // `--` then `-c`: a program named -c.
    xlock_in(&sandbox).args(["--", "-c", "true"]).assert().code(127);
    assert_eq!(sandbox.entries(), Vec::<String>::new(), "the lock must be released");
}

#[test]
fn command_not_executable_is_126() {
    let sandbox = Sandbox::new();
    let script = sandbox.path("script.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    xlock_in(&sandbox)
        .arg(&script)
        .assert()
        .code(126)
        .stderr(predicate::str::contains(script.to_str().unwrap()).and(predicate::str::contains("chmod +x")));
    xlock_in(&sandbox).arg(sandbox.dir.path()).assert().code(126);
    assert_eq!(sandbox.entries(), ["script.sh"], "the lock must be released");
}

#[test]
fn a_child_killed_by_a_signal_kills_xlock_with_it() {
    let sandbox = Sandbox::new();
    for (signal, name) in [(15, "TERM"), (9, "KILL"), (2, "INT"), (6, "ABRT"), (11, "SEGV")] {
        let status = xlock([
            sandbox.lock().to_str().unwrap(),
            "sh",
            "-c",
            &format!("kill -{name} $$"),
        ])
        .status()
        .unwrap();
        assert_eq!(
            status.signal(),
            Some(signal),
            "child died of SIG{name}, xlock: {status:?}"
        );
        assert!(!status.core_dumped(), "xlock dumped core re-raising SIG{name}");
        assert!(!sandbox.lock().exists(), "lock left behind after SIG{name}");
    }
}

#[test]
fn help_and_version_exit_0() {
    Command::new(xlock_bin())
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Usage: xlock [OPTIONS] LOCK"));
    Command::new(xlock_bin())
        .arg("--version")
        .assert()
        .success()
        .stdout(format!("xlock {}\n", env!("CARGO_PKG_VERSION")));
}

/// Core dumps are off when xlock re-raises a fatal signal: with dumps allowed, the
/// command dumps core (its `core` file appears), xlock does not (bash, its parent,
/// would say "(core dumped)").
#[test]
fn xlock_does_not_dump_core_when_it_re_raises() {
    let sandbox = Sandbox::new();
    let script = format!(
        "ulimit -c unlimited; '{}' '{}' sh -c 'kill -SEGV $$'; echo xlock=$?; ls",
        xlock_bin().display(),
        sandbox.lock().display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(sandbox.dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        stdout, "xlock=139\ncore\n",
        "dumps were not allowed, or xlock failed; stderr: {stderr}"
    );
    assert!(stderr.contains("Segmentation fault"), "{stderr}");
    assert!(!stderr.contains("core dumped"), "xlock dumped core: {stderr}");
}
