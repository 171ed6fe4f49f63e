//! Text from a lock record (cmd, host, since) and LOCK paths are printed with control
//! characters escaped (SPEC §6): a record planted by another local user cannot clear
//! the screen, set the title or fake `xlock:` lines, and every message stays one line.
//! `--json` stays lossless.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::common::*;
use serde_json::Value;

/// A command line meant to drive the terminal and fake an xlock line.
const EVIL_CMD: &str = "make\u{1b}[2J\u{1b}]0;pwned\u{7}\nxlock: acquired /etc/passwd\r\u{9b}31m\u{7f}";
const EVIL_HOST: &str = "build\u{1b}[31m-3\nxlock: fake";

/// Plants a record naming `pid` (this host, boot and PID namespace) with hostile text.
fn plant(path: &Path, pid: i32, since: &str) {
    let mut record = record_of(pid);
    record.host = EVIL_HOST.into();
    record.cmd = EVIL_CMD.into();
    record.since = since.into();
    record.plant(path);
}

fn now() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// A live process whose record counts as held (same boot, namespace and start time).
fn live_holder() -> Child {
    Command::new("sleep").arg("60").spawn().unwrap()
}

/// Asserts `bytes` are `lines` lines of plain text: no C0 control but the line ends,
/// no DEL, no C1 control (U+0080–U+009F, also as UTF-8).
fn assert_plain_lines(what: &str, bytes: &[u8], lines: usize) {
    let text = String::from_utf8_lossy(bytes);
    let bad: Vec<char> = text.chars().filter(|&c| c != '\n' && (c.is_control())).collect();
    assert!(
        bad.is_empty(),
        "{what}: control characters {bad:?} printed raw in {text:?}"
    );
    assert_eq!(text.lines().count(), lines, "{what}: not {lines} line(s): {text:?}");
    assert!(text.ends_with('\n'), "{what}: {text:?}");
}

/// The hostile text as xlock shows it.
fn assert_shows_escaped(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        text.contains(r"make\x1b[2J\x1b]0;pwned\x07\nxlock: acquired /etc/passwd\r\u009b31m\x7f"),
        "{what}: command not shown escaped: {text:?}"
    );
    assert!(
        text.contains(r"build\x1b[31m-3\nxlock: fake"),
        "{what}: host not shown escaped: {text:?}"
    );
}

/// LOCK paths with a newline, an escape and a byte that is not UTF-8.
fn evil_lock(sandbox: &Sandbox) -> PathBuf {
    let mut name = b"a\nxlock: b\x1b[2J\xff".to_vec();
    name.extend_from_slice(b".lock");
    sandbox.dir.path().join(OsStr::from_bytes(&name))
}
const EVIL_LOCK_SHOWN: &str = r"a\nxlock: b\x1b[2J\xff.lock";

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn busy_message_escapes_the_record_and_the_path() {
    let sandbox = Sandbox::new();
    let lock = evil_lock(&sandbox);
    let mut sleeper = live_holder();
    plant(&lock, sleeper.id() as i32, &now());
    let out = run(xlock(["-n".as_ref(), lock.as_os_str(), "true".as_ref()]).stderr(Stdio::piped()));
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    assert_plain_lines("busy", &out.stderr, 1);
    assert_shows_escaped("busy", &out.stderr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(EVIL_LOCK_SHOWN), "path not shown escaped: {stderr:?}");
    assert!(stderr.contains(" for 0s)") || stderr.contains(" for 1s)"), "{stderr:?}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// `-v` on a non-terminal: the waiting line and the timeout line.
#[test]
fn verbose_waiting_and_timeout_lines_escape_the_record() {
    let sandbox = Sandbox::new();
    let lock = evil_lock(&sandbox);
    let mut sleeper = live_holder();
    plant(&lock, sleeper.id() as i32, &now());
    let out = run(xlock([
        "-v".as_ref(),
        "-w".as_ref(),
        "1.3".as_ref(),
        lock.as_os_str(),
        "true".as_ref(),
    ])
    .stderr(Stdio::piped()));
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("xlock: waiting for "), "{stderr:?}");
    assert_plain_lines("-v waiting, then timeout", &out.stderr, 2);
    for line in stderr.lines() {
        assert_shows_escaped("-v", line.as_bytes());
        assert!(line.contains(EVIL_LOCK_SHOWN), "{line:?}");
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// `-v` taking over a stale lock names the dead holder's host, since and command.
#[test]
fn verbose_take_over_line_escapes_the_record() {
    let sandbox = Sandbox::new();
    let lock = evil_lock(&sandbox);
    plant(&lock, dead_pid(), "2026-01-01T00:00:00.000Z\u{1b}[2J\nxlock: x");
    let out = run(xlock(["-v".as_ref(), lock.as_os_str(), "true".as_ref()]).stderr(Stdio::piped()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_plain_lines("-v take-over, acquired, released", &out.stderr, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap();
    assert!(first.starts_with("xlock: took over stale "), "{stderr:?}");
    assert_shows_escaped("-v take-over", first.as_bytes());
    assert!(
        first.contains(r"since 2026-01-01T00:00:00.000Z\x1b[2J\nxlock: x"),
        "{first:?}"
    );
    assert!(stderr.lines().all(|line| line.contains(EVIL_LOCK_SHOWN)), "{stderr:?}");
}

#[test]
fn status_escapes_the_record_and_the_path() {
    let sandbox = Sandbox::new();
    let lock = evil_lock(&sandbox);
    let mut sleeper = live_holder();
    plant(&lock, sleeper.id() as i32, "not a time\u{1b}[2J\nxlock: x");
    let out = run(xlock(["--status".as_ref(), lock.as_os_str()]).stdout(Stdio::piped()));
    assert_eq!(out.status.code(), Some(75));
    assert_plain_lines("--status held", &out.stdout, 1);
    assert_shows_escaped("--status held", &out.stdout);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("/{EVIL_LOCK_SHOWN}: held by pid ")),
        "{stdout:?}"
    );
    assert!(stdout.contains(r"since not a time\x1b[2J\nxlock: x"), "{stdout:?}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // The holder is gone: stale.
    let out = run(xlock(["--status".as_ref(), lock.as_os_str()]).stdout(Stdio::piped()));
    assert_eq!(out.status.code(), Some(0));
    assert_plain_lines("--status stale", &out.stdout, 1);
    assert!(String::from_utf8_lossy(&out.stdout).contains(EVIL_LOCK_SHOWN));
}

/// A foreign file whose name would drive the terminal, next to an error about a path
/// with a newline: one line each.
#[test]
fn status_errors_and_foreign_files_are_one_line_each() {
    let sandbox = Sandbox::new();
    let foreign = evil_lock(&sandbox);
    std::fs::write(&foreign, "user data\n").unwrap();
    let missing = sandbox.dir.path().join("no\nsuch\u{1b}[2J").join("x.lock");
    let out = run(xlock(["--status".as_ref(), foreign.as_os_str(), missing.as_os_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()));
    assert_eq!(out.status.code(), Some(125));
    assert_plain_lines("--status foreign", &out.stdout, 1);
    assert_plain_lines("--status error", &out.stderr, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r"no\nsuch\x1b[2J"),
        "{out:?}"
    );
    // The same error when running a command.
    let out = run(xlock([missing.as_os_str(), "true".as_ref()]).stderr(Stdio::piped()));
    assert_eq!(out.status.code(), Some(125));
    assert_plain_lines("run in a missing directory", &out.stderr, 1);
    let out = run(xlock([foreign.as_os_str(), "true".as_ref()]).stderr(Stdio::piped()));
    assert_eq!(out.status.code(), Some(125));
    assert_plain_lines("run on a foreign file", &out.stderr, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(EVIL_LOCK_SHOWN),
        "{out:?}"
    );
}

/// `--json` is JSON Lines whatever the record holds: one object per line, the text
/// exactly as in the record, and no DEL or C1 control raw on the terminal either.
#[test]
fn status_json_is_one_line_and_lossless() {
    let sandbox = Sandbox::new();
    let lock = sandbox.path("x\ny\u{1b}.lock");
    let mut sleeper = live_holder();
    plant(&lock, sleeper.id() as i32, &now());
    let out = run(xlock(["--status".as_ref(), "--json".as_ref(), lock.as_os_str()]).stdout(Stdio::piped()));
    assert_eq!(out.status.code(), Some(75));
    assert_plain_lines("--json", &out.stdout, 1);
    let object: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(object["cmd"], EVIL_CMD);
    assert_eq!(object["host"], EVIL_HOST);
    assert_eq!(object["lock"], lock.to_str().unwrap());
    assert!(object.get("lock_bytes").is_none(), "{object}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // A path that is not UTF-8 cannot be a JSON string: its bytes come too.
    let lock = evil_lock(&sandbox);
    let out = run(xlock(["--status".as_ref(), "--json".as_ref(), lock.as_os_str()]).stdout(Stdio::piped()));
    assert_eq!(out.status.code(), Some(0));
    let object: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes: Vec<u8> = object["lock_bytes"]
        .as_array()
        .unwrap_or_else(|| panic!("no lock_bytes: {object}"))
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(bytes, lock.as_os_str().as_bytes());
    assert_eq!(object["lock"], lock.to_string_lossy().as_ref());
}
