//! What the user sees (SPEC §2): `--status` in text and JSON, the waiting notice on a
//! terminal, and `-v` lines.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::pty::Pty;
use serde_json::Value;

fn status(args: &[&str]) -> Output {
    let mut all = vec!["--status"];
    all.extend_from_slice(args);
    xlock(all).output().unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

#[test]
fn status_of_a_free_lock() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let out = status(&[lock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: free\n", lock.display())
    );
    let out = status(&["--json", lock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let objects = json_lines(&out);
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["state"], "free");
    assert_eq!(objects[0]["lock"], lock.to_str().unwrap());
    assert_eq!(sandbox.entries(), Vec::<String>::new());
}

#[test]
fn status_of_a_held_lock_names_the_holder() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = hold(&[], &lock, "sleep 10");
    let pid = holder.child.id();
    let before = sandbox.snapshot();
    let out = status(&[lock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(75));
    let text = String::from_utf8_lossy(&out.stdout);
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert!(
        text.starts_with(&format!("{}: held by pid {pid} (host {host}) since ", lock.display())),
        "{text}"
    );
    assert!(text.trim_end().ends_with(": echo started; sleep 10"), "{text}");
    assert_eq!(status(&["-E", "9", lock.to_str().unwrap()]).status.code(), Some(9));
    let out = status(&["--json", lock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(75));
    let object = &json_lines(&out)[0];
    assert_eq!(object["state"], "held");
    assert_eq!(object["pid"], pid);
    assert_eq!(object["host"], host.as_str());
    assert_eq!(object["cmd"], "echo started; sleep 10");
    assert_eq!(object["holder_alive"], true);
    assert!(
        humantime::parse_rfc3339(object["since"].as_str().unwrap()).is_ok(),
        "{object}"
    );
    assert_eq!(sandbox.snapshot(), before, "--status changed something");
    holder.kill(Signal::SIGTERM);
    holder.wait();
}

#[test]
fn status_of_a_stale_lock() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let dead = Mode::Unnamed.make_stale(&lock);
    let before = sandbox.snapshot();
    let out = status(&[lock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "a stale lock is not held");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{}: stale (holder pid {dead} died): the next acquirer takes it over\n",
            lock.display()
        )
    );
    let object = &json_lines(&status(&["--json", lock.to_str().unwrap()]))[0];
    assert_eq!(object["state"], "stale");
    assert_eq!(object["pid"], dead);
    assert_eq!(sandbox.snapshot(), before, "--status must not take the lock over");
}

/// The holder's xlock died but its command tree still has the lock: say so, and name
/// the processes, which no peer tool can tell.
#[test]
fn status_names_the_command_tree_of_a_dead_holder() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    // Named once it has exec'd sleep (until then it is a copy of the shell).
    let mut holder = Mode::Unnamed.hold_script(
        &[],
        &lock,
        "sleep 30 & until read -r n < /proc/$!/comm && [ \"$n\" = sleep ]; do :; done; \
         echo started; echo $!; read _",
    );
    let background: i32 = holder.line().parse().unwrap();
    holder.kill(Signal::SIGKILL);
    holder.wait();
    let out = status(&[lock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(75));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("that xlock has ended, but processes of its command still hold the lock"),
        "{text}"
    );
    assert!(text.contains(&format!("pid {background} (sleep)")), "{text}");
    let object = &json_lines(&status(&["--json", lock.to_str().unwrap()]))[0];
    assert_eq!(object["holder_alive"], false);
    assert!(
        object["command_pids"].as_array().unwrap().contains(&background.into()),
        "{object}"
    );
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(background), Signal::SIGKILL);
}

/// A waiter behind such a lock gets the dead xlock's flock and waits for the command
/// lock; `--status` must still say that the xlock has ended and name the tree (it
/// said "held by" the dead xlock while a waiter, or a slot waiter's sentry, had it).
#[test]
fn status_of_a_dead_holders_tree_is_the_same_with_a_waiter_behind_it() {
    for kind in [&[][..], &["--slots", "1"][..]] {
        let sandbox = Sandbox::new();
        let lock = sandbox.lock();
        let mut holder = Mode::Unnamed.hold_script(
            kind,
            &lock,
            "trap '' TERM; sleep 30 & until read -r n < /proc/$!/comm && [ \"$n\" = sleep ]; do :; done; \
             echo started; echo $!; read _",
        );
        let background: i32 = holder.line().parse().unwrap();
        holder.kill(Signal::SIGKILL);
        holder.wait();
        let mut waiter = Mode::Unnamed
            .xlock(kind.iter().copied().chain([lock.to_str().unwrap(), "true"]))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The waiter (or its sentry, a child of it) has the dead xlock's flock.
        let file = if kind.is_empty() {
            lock.clone()
        } else {
            sandbox.path(".test.lock.xlock-solo")
        };
        let (key, _) = file_key(&file);
        let flocked_by_waiter = || {
            let waiters = [waiter.id() as i32].into_iter().chain(children_of(waiter.id() as i32));
            let holders = flock_holders(&key);
            waiters.into_iter().any(|pid| holders.contains(&pid))
        };
        wait_until(Duration::from_secs(10), "the waiter has the flock", flocked_by_waiter);
        let out = status(&[lock.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("that xlock has ended, but processes of its command still hold the lock"),
            "{kind:?}: {text}"
        );
        assert!(text.contains(&format!("pid {background} (sleep)")), "{kind:?}: {text}");
        let object = &json_lines(&status(&["--json", lock.to_str().unwrap()]))[0];
        assert_eq!(object["holder_alive"], false, "{kind:?}: {object}");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(background), Signal::SIGKILL);
        assert!(waiter.wait().unwrap().success(), "{kind:?}");
    }
}

#[test]
fn status_of_foreign_files_and_missing_directories_is_an_error() {
    let sandbox = Sandbox::new();
    let data = sandbox.path("data.txt");
    fs::write(&data, "user data\n").unwrap();
    let missing = sandbox.path("no/such/dir/x.lock");
    let free = sandbox.lock();
    let before = sandbox.snapshot();
    let out = status(&[
        free.to_str().unwrap(),
        data.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(125));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}: free", free.display())), "{text}");
    assert!(text.contains(&format!("{}: foreign file: ", data.display())), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(missing.to_str().unwrap()) && stderr.contains("does not exist"),
        "{stderr}"
    );
    let out = status(&["--json", data.to_str().unwrap(), missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let objects = json_lines(&out);
    assert_eq!(objects[0]["state"], "foreign");
    assert_eq!(objects[1]["state"], "error");
    assert!(objects[1]["error"].as_str().unwrap().contains("does not exist"));
    assert_eq!(sandbox.snapshot(), before);
}

/// On a terminal, a waiter shows who holds the lock within 2 s, and removes the notice
/// when it acquires.
#[test]
fn waiting_notice_on_a_terminal() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = hold(&[], &lock, "read _; exit 0");
    let started = Instant::now();
    let mut pty = Pty::spawn(xlock([lock.to_str().unwrap(), "sh", "-c", "echo GOT''IT"]));
    pty.expect("xlock: waiting for ");
    let shown_after = started.elapsed();
    let notice = pty.expect("…");
    assert!(
        notice.contains(&format!(
            "(held by pid {} 'echo started; read _; exit 0' on ",
            holder.child.id()
        )),
        "{notice:?}"
    );
    assert!(
        shown_after < Duration::from_secs(2),
        "the notice came after {shown_after:?}"
    );
    holder.release();
    let rest = pty.expect("GOTIT");
    assert!(rest.contains("\r\x1b[K"), "the notice was not cleared: {rest:?}");
    assert!(holder.wait().success());
    assert!(pty.child.wait().unwrap().success());
}

/// `-q` silences the notice on a terminal; without `-v`, a non-terminal gets nothing.
#[test]
fn waiting_notice_is_silenced() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let mut holder = hold(&[], &lock, "read _; exit 0");
    let mut pty = Pty::spawn(xlock(["-q", lock.to_str().unwrap(), "sh", "-c", "echo GOT''IT"]));
    wait_past_the_notice(pty.child.id(), &lock);
    holder.release();
    let shown = pty.expect("GOTIT");
    assert!(!shown.contains("xlock"), "-q printed: {shown:?}");
    assert!(holder.wait().success());

    let mut holder = hold(&[], &lock, "read _; exit 0");
    let waiter = xlock([lock.to_str().unwrap(), "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_past_the_notice(waiter.id(), &lock);
    holder.release();
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "printed on a non-terminal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(holder.wait().success());
}

/// Returns once `pid` has waited for `lock` longer than the waiting notice's delay
/// (1 s), counted from when it is seen blocked on the lock: a notice due would have
/// been shown by then. (The wait itself is the workload here.)
fn wait_past_the_notice(pid: u32, lock: &Path) {
    wait_until_waiting(pid as i32, lock);
    std::thread::sleep(Duration::from_millis(1500));
}

/// `-v`: one line each for acquiring after a wait (with how long), taking over a
/// stale lock (with the dead holder's pid), and releasing.
#[test]
fn verbose_lines() {
    let sandbox = Sandbox::new();
    let lock = sandbox.lock();
    let l = lock.display();
    let mut holder = hold(&[], &lock, "read _; exit 0");
    // -w 10: should the waiting line never come, the waiter ends and the test says why.
    let mut waiter = xlock(["-w", "10", "-v", lock.to_str().unwrap(), "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut errors = BufReader::new(waiter.stderr.take().unwrap());
    let mut stderr = String::new();
    errors.read_line(&mut stderr).unwrap(); // the waiting line, after 1 s of waiting
    holder.release();
    errors.read_to_string(&mut stderr).unwrap();
    assert!(waiter.wait().unwrap().success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with(&format!("xlock: waiting for {l} (held by pid {}", holder.child.id())),
        "{stderr}"
    );
    let waited: f64 = lines[1]
        .strip_prefix(&format!("xlock: acquired {l} after waiting "))
        .and_then(|rest| rest.strip_suffix('s'))
        .unwrap_or_else(|| panic!("{stderr}"))
        .parse()
        .unwrap();
    assert!(waited > 0.5 && waited < 5.0, "{stderr}");
    assert_eq!(lines[2], format!("xlock: released {l}"));
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(holder.wait().success());

    let dead = Mode::Unnamed.make_stale(&lock);
    let out = xlock(["-v", lock.to_str().unwrap(), "true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("xlock: took over stale {l} from dead pid {dead} (host ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("\nxlock: acquired {l}\nxlock: released {l}\n")),
        "{stderr}"
    );
}
