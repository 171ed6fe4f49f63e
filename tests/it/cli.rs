//! The command line through the real binary (SPEC §1–3, §6): spellings that mean the
//! same run the same command with the same exit status; each disagreement issue 12
//! listed stays fixed; closed standard descriptors and huge timeouts are harmless.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `xlock ARGS...` in `dir`, where `L` is a lock file; nothing on stdin.
fn xlock<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xlock"))
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a run showed: exit code (or signal), stdout, stderr.
fn seen(out: &Output) -> (Option<i32>, String, String) {
    use std::os::unix::process::ExitStatusExt;
    let code = out.status.code().or(out.status.signal().map(|s| 1000 + s));
    (code, text(&out.stdout), text(&out.stderr))
}

fn words<'a>(line: &[&'a str]) -> Vec<&'a str> {
    line.to_vec()
}

const ARGV: &str = "[%s]\\n";

/// Each group: argv forms that must run the same command with the same outcome.
#[test]
fn spellings_of_one_meaning_agree() {
    let dir = tempfile::tempdir().unwrap();
    let printf = ["printf", ARGV, "a b", "-v", "--help", "-c", "--", "-n"];
    let with = |before: &[&str], after_lock: &[&str]| -> Vec<String> {
        let mut line: Vec<&str> = words(before);
        line.push("L");
        line.extend_from_slice(after_lock);
        line.iter().map(|w| w.to_string()).collect()
    };
    let plain: Vec<&str> = printf.to_vec();
    let dashed: Vec<&str> = std::iter::once("--").chain(printf).collect();
    let shell_text = "printf '[%s]\\n' 'a b' -v --help; exit 3";
    let groups: Vec<(&str, Vec<Vec<String>>)> = vec![
        (
            "a command",
            [
                &[][..],
                &["--"],
                &["-w", "5"],
                &["-w5"],
                &["-w=5"],
                &["--timeout=5"],
                &["--timeout", "5s"],
                &["-qw", "5"],
                &["-qw5"],
                &["-x", "-e", "--exclusive"],
                &["-o"],
                &["--close"],
                &["-E", "9"],
                &["-E9", "-v"],
                &["-n"],
                &["-nq"],
                &["--stale-after", "1m", "--"],
            ]
            .iter()
            .flat_map(|before| [with(before, &plain), with(before, &dashed)])
            .collect(),
        ),
        (
            "a shell command",
            vec![
                with(&[], &["-c", shell_text]),
                with(&["--"], &["-c", shell_text]),
                with(&["-c", shell_text], &[]),
                with(&["--command", shell_text], &[]),
                with(&[&format!("--command={shell_text}")], &[]),
                with(&["-w", "5", "-c", shell_text], &[]),
                with(&["-w", "5"], &["-c", shell_text]),
                with(&["-qc", shell_text, "--"], &[]),
                with(&["-E", "75", "--"], &["-c", shell_text]),
                with(&[], &["sh", "-c", shell_text]),
                with(&["-n"], &["--", "sh", "-c", shell_text]),
            ],
        ),
        (
            "-c with a STR that looks like an option",
            vec![
                with(&[], &["-c", "-v"]),
                with(&["-E", "75"], &["-c", "-v"]),
                with(&["-c", "-v"], &[]),
                with(&["-w", "1", "--"], &["-c", "-v"]),
                with(&[], &["/bin/sh", "-c", "-v"]),
            ],
        ),
        (
            "a command named -c",
            vec![
                with(&[], &["--", "-c", "x"]),
                with(&["--"], &["--", "-c", "x"]),
                with(&["-w", "5"], &["--", "-c", "x"]),
            ],
        ),
        (
            "a command that fails",
            vec![
                with(&[], &["sh", "-c", "exit 7", "--", "-n"]),
                with(&["-w", "0.5"], &["--", "sh", "-c", "exit 7", "--", "-n"]),
                with(&["--"], &["sh", "-c", "exit 7", "--", "-n"]),
            ],
        ),
    ];
    for (what, forms) in groups {
        let first = seen(&xlock(dir.path(), &forms[0]));
        // xlock itself did not fail (125) or panic; the command's own status is fine.
        assert!(
            first.0.is_some_and(|code| code != 125 && code < 1000),
            "{what}: {:?}: {first:?}",
            forms[0]
        );
        for form in &forms[1..] {
            let out = seen(&xlock(dir.path(), form));
            // -v says on stderr what happened: compare stdout and the status only.
            let same = if form.iter().any(|w| w.starts_with("-E9")) {
                (out.0, out.1.clone()) == (first.0, first.1.clone())
            } else {
                out == first
            };
            assert!(same, "{what}: {form:?} gave {out:?}, {:?} gave {first:?}", forms[0]);
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{what}: a file left behind"
        );
    }
    // The command's argv really is what was asked for.
    let out = xlock(dir.path(), &with(&["-w5"], &dashed));
    assert_eq!(text(&out.stdout), "[a b]\n[-v]\n[--help]\n[-c]\n[--]\n[-n]\n");
}

#[test]
fn shell_form_after_dashes_before_lock() {
    let dir = tempfile::tempdir().unwrap();
    // flock(1) runs the shell form here; xlock ran a program named -c.
    let out = xlock(dir.path(), &["--", "L", "-c", "echo hi"]);
    assert_eq!(seen(&out), (Some(0), "hi\n".into(), String::new()));
    // ... and a program named --.
    let out = xlock(dir.path(), &["--", "L", "--", "echo", "hi"]);
    assert_eq!(seen(&out), (Some(0), "hi\n".into(), String::new()));
}

#[test]
fn an_empty_lock_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = xlock(dir.path(), &["", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).starts_with("xlock: LOCK is an empty path"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_value_that_starts_with_a_dash_names_its_option() {
    let dir = tempfile::tempdir().unwrap();
    for (args, option) in [(["-w", "-1"], "--timeout"), (["-E", "-1"], "-E, --conflict-exit-code")] {
        let out = xlock(dir.path(), &[args[0], args[1], "L", "true"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(
            err.contains("'-1'") && err.contains(option) && err.ends_with("; see 'xlock --help'\n"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn status_reads_options_after_locks() {
    let dir = tempfile::tempdir().unwrap();
    let out = xlock(dir.path(), &["--status", "L", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "free");
    assert_eq!(json["lock"], "L", "{json}");
    // After --, a lock may be named like an option.
    let out = xlock(dir.path(), &["--status", "--", "-x.lock"]);
    assert_eq!(seen(&out), (Some(0), "-x.lock: free\n".into(), String::new()));
    let out = xlock(dir.path(), &["--status", "-x.lock"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("xlock --status -- -x.lock"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn flock_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let out = xlock(dir.path(), &["-x", "-e", "--exclusive", "-o", "L", "echo", "ok"]);
    assert_eq!(seen(&out), (Some(0), "ok\n".into(), String::new()));
    let out = xlock(dir.path(), &["-s", "-o", "L", "echo", "ok"]);
    assert_eq!(seen(&out), (Some(0), "ok\n".into(), String::new()));
    for (args, needle) in [
        (&["-s", "-x", "L", "true"][..], "cannot be used with"),
        (
            &["--shared", "--slots", "2", "L", "true"][..],
            "cannot be used with '--slots <N>'",
        ),
        (&["-F", "L", "true"][..], "always runs COMMAND as its child"),
        (&["9"][..], "not a file descriptor"),
    ] {
        let out = xlock(dir.path(), args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(text(&out.stderr).contains(needle), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// `xlock L -n true` (an option after LOCK, a flock habit) runs a command named `-n`,
/// which is not found: the message says that options come before LOCK.
#[test]
fn an_option_after_lock_gets_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = xlock(dir.path(), &["L", "-n", "true"]);
    assert_eq!(out.status.code(), Some(127));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot run '-n'") && stderr.contains("options come before LOCK"),
        "{stderr}"
    );
    // A command that is simply missing gets the usual advice, no hint.
    let out = xlock(dir.path(), &["L", "no-such-command-xlock"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("check the name and PATH"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn help_shows_lock_and_command_as_required() {
    let dir = tempfile::tempdir().unwrap();
    let out = xlock(dir.path(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(
        help.contains("<LOCK>") && help.contains("<COMMAND>...") && help.contains("Examples:"),
        "{help}"
    );
    assert!(!help.contains("[LOCK]"), "{help}");
}

/// xlock started with stdin, stdout or stderr closed: neither xlock's own messages
/// (-v) nor the command's writes to those numbers reach the lock file, and the
/// command's status is passed on. (Without the fix, with all three closed, the lock
/// file was descriptor 2.)
#[test]
fn closed_standard_descriptors_never_reach_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_xlock");
    for (case, closing) in ["0>&-", "1>&-", "2>&-", "0>&- 1>&- 2>&-"].iter().enumerate() {
        let record = dir.path().join(format!("record{case}"));
        let script = format!(
            "exec {closing}; exec '{bin}' -v L sh -c 'for fd in 0 1 2; do echo garbage >&$fd; done; cat \"$XLOCK_PATH\" > {record}; exit 7'",
            record = record.display()
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7), "{closing}: {}", text(&out.stderr));
        let record = std::fs::read_to_string(&record).unwrap();
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&record);
        assert!(
            parsed.is_ok_and(|r| r["xlock"] == 1) && record.lines().count() == 1,
            "{closing}: the lock file holds {record:?}"
        );
        assert!(!dir.path().join("L").exists(), "{closing}: lock left behind");
    }
}

/// A timeout too large to represent waits forever (the lock is free, so the command
/// runs); one beyond any duration is a usage error. Never a panic (exit 134, SIGABRT).
#[test]
fn huge_timeouts_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    for huge in ["9300000000000000000", "300000000000years", "18000000000000000000"] {
        let out = xlock(dir.path(), &["-w", huge, "L", "echo", "ran"]);
        assert_eq!(seen(&out), (Some(0), "ran\n".into(), String::new()), "-w {huge}");
    }
    for too_big in ["1000000000000000000000000000000", "3000000000000years"] {
        let out = xlock(dir.path(), &["-w", too_big, "L", "echo", "ran"]);
        assert_eq!(out.status.code(), Some(125), "-w {too_big}: {:?}", seen(&out));
        assert!(text(&out.stderr).contains("--timeout"), "{}", text(&out.stderr));
    }
}

/// What xlock prints on stdout (`--help`, `--version`, `--status`) cannot be written
/// (a full disk, /dev/full): exit 125 with one line saying so, never a panic or abort
/// (exit 101/134), never exit 0 with the report lost.
#[test]
fn unwritable_stdout_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["-h"][..],
        &["-V"][..],
        &["--status", "L"][..],
        &["--status", "--json", "L", "M"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_xlock"))
            .args(args)
            .current_dir(dir.path())
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let (code, _, stderr) = seen(&out);
        assert_eq!(code, Some(125), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("xlock: ") && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("standard output") && stderr.contains("No space left"),
            "{args:?}: {stderr}"
        );
    }
}
