//! The README documents what `--status` can print and how it exits: every JSON field
//! that xlock actually emits, in every state, and each exit status (a stale lock is 0).
//! It also says that `-c` uses /bin/sh, not `$SHELL` as flock(1) does.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::common::*;
use serde_json::Value;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The keys of the JSON objects that `xlock --status --json LOCKS...` prints.
fn keys(locks: &[&OsStr]) -> BTreeSet<String> {
    let out = xlock([OsStr::new("--status"), OsStr::new("--json")].iter().chain(locks))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|line| {
            let object: Value = serde_json::from_str(line).unwrap();
            object.as_object().unwrap().keys().cloned().collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_readme_documents_every_status_json_field() {
    let sandbox = Sandbox::new();
    // free (and a name that is not UTF-8), stale, held, held by a dead xlock's command,
    // foreign, error.
    let free = sandbox.dir.path().join(OsStr::from_bytes(b"free\xff.lock"));
    let stale = sandbox.path("stale.lock");
    Mode::Unnamed.make_stale(&stale);
    let held = sandbox.path("held.lock");
    let mut holder = hold(&[], &held, "read _");
    let orphaned = sandbox.path("orphaned.lock");
    let mut dead = Mode::Unnamed.hold_script(&[], &orphaned, "sleep 30 & echo started; echo $!; read _");
    let background: i32 = dead.line().parse().unwrap();
    dead.kill(Signal::SIGKILL);
    dead.wait();
    let foreign = sandbox.path("data.txt");
    std::fs::write(&foreign, "data\n").unwrap();
    let missing = sandbox.path("no/such/dir.lock");
    let found = keys(&[
        free.as_os_str(),
        stale.as_os_str(),
        held.as_os_str(),
        orphaned.as_os_str(),
        foreign.as_os_str(),
        missing.as_os_str(),
    ]);
    holder.kill(Signal::SIGTERM);
    holder.wait();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(background), Signal::SIGKILL);

    for expected in ["stale_because", "command_pids", "reason", "error", "lock_bytes", "cmd"] {
        assert!(found.contains(expected), "{expected} not seen in {found:?}");
    }
    let readme = readme();
    let undocumented: Vec<&String> = found
        .iter()
        .filter(|key| !readme.contains(&format!("`{key}`")))
        .collect();
    assert!(undocumented.is_empty(), "README.md does not document {undocumented:?}");
}

#[test]
fn the_readme_documents_status_exits_and_the_shell() {
    let readme = readme();
    // The table whose header is `| `--status` exits | ... |`.
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|line| !line.starts_with("| `--status` exits |"))
        .take_while(|line| line.starts_with('|'))
        .collect();
    assert!(!table.is_empty(), "README.md has no table of --status's exit statuses");
    let row = |status: &str| {
        table
            .iter()
            .find(|line| line.starts_with(&format!("| {status} |")))
            .unwrap_or_else(|| panic!("README.md's --status table has no row for {status}: {table:?}"))
            .to_string()
    };
    assert!(row("0").contains("stale"), "{}", row("0"));
    assert!(row("75, or `-E N`").contains("held"), "{}", row("75, or `-E N`"));
    assert!(row("125").contains("not a lock file"), "{}", row("125"));
    assert!(
        readme.contains("`/bin/sh -c`, not `$SHELL`"),
        "README.md does not say that -c uses /bin/sh, not $SHELL"
    );
}
