//! The self-lock idiom for scripts (README, man page): the first line of a script
//! re-runs it under xlock, with its arguments, unless it already runs under it.
//!
//!     lock=/var/lock/myjob.lock
//!     [ "$XLOCK_PATH" = "$lock" ] || exec xlock -n "$lock" "$0" "$@"
//!
//! and its shorter form `[ -n "$XLOCK_PATH" ] || exec xlock -n LOCK "$0" "$@"`, with
//! the traps of each: a relative LOCK in the first (XLOCK_PATH is absolute, so the
//! test never holds and the script re-runs itself without end), an unrelated outer
//! xlock in the second (XLOCK_PATH is set, so the script takes no lock of its own).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// The script's body: records that it ran and its arguments, tells the test that it
/// runs, then waits for the test to let it end.
const BODY: &str = r#"
echo "$$" >> "$DIR/ran"
printf '[%s]\n' "$@" > "$DIR/args"
: > "$DIR/running"
while [ ! -e "$DIR/release" ]; do sleep 0.01; done
"#;

/// The arguments the script is run with: spaces, an empty one, a $, options.
const ARGS: [&str; 5] = ["a b", "", "$HOME", "-n", "--"];

/// The recommended form: compare XLOCK_PATH with the lock, an absolute path.
const SELF_LOCK: &str = r#"lock=$DIR/myjob.lock
[ "$XLOCK_PATH" = "$lock" ] || exec xlock -n "$lock" "$0" "$@""#;

/// The shorter form: any xlock ancestor counts.
const SELF_LOCK_SHORT: &str = r#"[ -n "$XLOCK_PATH" ] || exec xlock -n "$DIR/myjob.lock" "$0" "$@""#;

struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    /// A directory with `myjob.sh`: `#!/bin/sh`, `head`, then BODY.
    fn new(head: &str) -> Job {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("myjob.sh");
        std::fs::write(&script, format!("#!/bin/sh\n{head}\n{BODY}")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Job { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `./myjob.sh ARGS...` in the job's directory, with xlock on PATH and `DIR` set
    /// to the directory; run under `xlock OUTER` when given.
    fn command(&self, outer: Option<&str>) -> Command {
        let xlock = Path::new(env!("CARGO_BIN_EXE_xlock"));
        let path = std::env::join_paths(
            std::iter::once(xlock.parent().unwrap().to_path_buf())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .unwrap();
        let mut command = match outer {
            Some(outer) => {
                let mut command = Command::new(xlock);
                command.arg(self.path(outer)).arg("./myjob.sh");
                command
            }
            None => Command::new("./myjob.sh"),
        };
        command
            .args(ARGS)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("DIR", self.dir.path())
            .env_remove("XLOCK_PATH")
            .env_remove("XLOCK_HELD");
        command
    }

    fn ran(&self) -> usize {
        std::fs::read_to_string(self.path("ran")).map_or(0, |s| s.lines().count())
    }
}

/// Waits (up to a minute) for `done` to hold.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the job twice at once (each under its own outer xlock when `outer`) and
/// checks that exactly one runs, the other exiting 75 without running the body, and
/// that the arguments reach the script unchanged.
fn exactly_one_runs(job: &Job, outer: bool) {
    let mut jobs: Vec<Child> = ["outer1.lock", "outer2.lock"]
        .map(|o| job.command(outer.then_some(o)).spawn().expect("start myjob.sh"))
        .into();
    // The one that could not have the lock ends on its own; the other waits for us.
    let mut loser: Option<(usize, ExitStatus)> = None;
    wait_for("one of the two runs to end", || {
        loser = jobs
            .iter_mut()
            .enumerate()
            .find_map(|(i, child)| child.try_wait().unwrap().map(|status| (i, status)));
        loser.is_some()
    });
    let (i, status) = loser.unwrap();
    assert_eq!(status.code(), Some(75), "the second run should find the lock busy");
    wait_for("the other run to start its body", || job.path("running").exists());
    std::fs::write(job.path("release"), "").unwrap();
    let status = jobs[1 - i].wait().unwrap();
    assert!(status.success(), "the run that had the lock: {status}");
    assert_eq!(job.ran(), 1, "exactly one run executes the body");
    let expected: String = ARGS.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(std::fs::read_to_string(job.path("args")).unwrap(), expected);
    assert!(!job.path("myjob.lock").exists(), "the lock is released");
}

#[test]
fn self_lock_runs_once_and_passes_the_arguments() {
    exactly_one_runs(&Job::new(SELF_LOCK), false);
}

#[test]
fn short_self_lock_runs_once_and_passes_the_arguments() {
    exactly_one_runs(&Job::new(SELF_LOCK_SHORT), false);
}

#[test]
fn self_lock_holds_under_an_unrelated_xlock() {
    exactly_one_runs(&Job::new(SELF_LOCK), true);
}

/// The trap of the short form: run under another xlock (a cron line that
/// serializes several jobs), XLOCK_PATH is set and the script takes no lock.
#[test]
fn short_self_lock_is_skipped_under_an_unrelated_xlock() {
    let job = Job::new(SELF_LOCK_SHORT);
    let mut jobs: Vec<Child> = ["outer1.lock", "outer2.lock"]
        .map(|o| job.command(Some(o)).spawn().expect("start myjob.sh"))
        .into();
    wait_for("both runs to execute the body", || job.ran() == 2);
    std::fs::write(job.path("release"), "").unwrap();
    for child in &mut jobs {
        assert!(child.wait().unwrap().success());
    }
}

/// The relative-path trap: XLOCK_PATH is absolute, so comparing it with a relative
/// LOCK never matches, and each run re-runs the script under a new xlock, which
/// finds the lock held by its own ancestor and runs the script at once: without
/// end. (The script stops itself after 5 rounds here.)
#[test]
fn self_lock_with_a_relative_lock_reruns_itself_without_end() {
    let job = Job::new(
        r#"export ROUNDS=$((${ROUNDS:-0} + 1))
if [ "$ROUNDS" -gt 5 ]; then echo "round $ROUNDS, XLOCK_PATH=$XLOCK_PATH" >&2; exit 99; fi
lock=myjob.lock
[ "$XLOCK_PATH" = "$lock" ] || exec xlock -n "$lock" "$0" "$@""#,
    );
    let output = job.command(None).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(99), "stderr: {stderr}");
    let absolute = std::fs::canonicalize(job.dir.path()).unwrap().join("myjob.lock");
    assert_eq!(stderr.trim(), format!("round 6, XLOCK_PATH={}", absolute.display()));
    assert_eq!(job.ran(), 0);
}
