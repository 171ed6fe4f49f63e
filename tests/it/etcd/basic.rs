//! The etcd lock's behaviour as for files (SPEC §10): the command's status passed
//! through, `XLOCK_TOKEN`, conflict and timeout naming the holder, waiters served in
//! arrival order with strictly increasing tokens, `--status`, signals, nesting, and
//! bad input (exit 125, one line naming the endpoint).

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use super::*;

#[test]
fn runs_the_command_with_its_status_path_and_token() {
    let etcd = Etcd::start();
    let url = etcd.url("job");
    let out = xlock([url.as_str(), "sh", "-c", "echo $XLOCK_PATH $XLOCK_TOKEN; exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (path, token) = stdout.trim().split_once(' ').unwrap();
    assert_eq!(path, url);
    assert!(token.parse::<i64>().unwrap() > 0, "{stdout}");
    // Released: the lock is free again.
    assert_eq!(status(&url)[0]["state"], "free");
}

#[test]
fn a_busy_lock_names_its_holder_and_a_timeout_waits() {
    let etcd = Etcd::start();
    let url = etcd.url("job");
    let mut holder = hold_url(&[], &url, "echo started; read _; exit 0");
    let out = xlock(["-n", url.as_str(), "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{url} is busy (held by pid {}", holder.child.id())),
        "{stderr}"
    );
    let out = xlock(["-w", "0.3", "-E", "9", url.as_str(), "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(9));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("xlock: timed out after"), "{stderr}");
    assert!(
        stderr.contains(&format!("held by pid {}", holder.child.id())),
        "{stderr}"
    );
    // Neither left a key behind.
    assert_eq!(status(&url).len(), 1);
    holder.release();
    assert!(holder.wait().success());
}

#[test]
fn waiters_are_served_in_arrival_order_with_increasing_tokens() {
    let etcd = Etcd::start();
    let url = etcd.url("fifo");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut holder = hold_url(&[], &url, "echo started; read _; exit 0");
    let mut waiters = Vec::new();
    for i in 1..=4 {
        let script = format!("echo {i} $XLOCK_TOKEN >> {}", log.display());
        waiters.push(xlock([url.as_str(), "-c", &script]).spawn().unwrap());
        // In line before the next one comes.
        wait_for_queue(&url, i + 1);
    }
    let queue = status(&url);
    assert_eq!(queue[0]["state"], "held");
    assert_eq!(queue[0]["pid"], holder.child.id());
    for (i, waiter) in waiters.iter().enumerate() {
        assert_eq!(queue[i + 1]["state"], "waiting");
        assert_eq!(queue[i + 1]["position"], i + 1);
        assert_eq!(queue[i + 1]["pid"], waiter.id());
    }
    holder.release();
    assert!(holder.wait().success());
    for mut waiter in waiters {
        assert!(waiter.wait().unwrap().success());
    }
    let lines = fs::read_to_string(&log).unwrap();
    let served: Vec<(u32, i64)> = lines
        .lines()
        .map(|line| {
            let (i, token) = line.split_once(' ').unwrap();
            (i.parse().unwrap(), token.parse().unwrap())
        })
        .collect();
    assert_eq!(served.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3, 4], "{lines}");
    assert!(
        served.windows(2).all(|w| w[0].1 < w[1].1),
        "tokens not increasing: {lines}"
    );
}

#[test]
fn status_names_holder_and_waiters() {
    let etcd = Etcd::start();
    let url = etcd.url("st");
    let out = xlock(["--status", url.as_str()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{url}: free\n"));
    let mut holder = hold_url(&[], &url, "echo started; read _; exit 0");
    let mut waiter = xlock([url.as_str(), "true"]).spawn().unwrap();
    wait_for_queue(&url, 2);
    let out = xlock(["--status", url.as_str()]).output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!("{url}: held by pid {} (host ", holder.child.id()))
            && lines[0].ends_with(": echo started; read _; exit 0"),
        "{text}"
    );
    assert!(
        lines[1].starts_with(&format!("{url}: waiting (1 in line): pid {} ", waiter.id()))
            && lines[1].ends_with(": true"),
        "{text}"
    );
    let json = status(&url);
    assert_eq!(json[0]["lock"], url.as_str());
    assert_eq!(json[0]["cmd"], "echo started; read _; exit 0");
    assert_eq!(json[1]["state"], "waiting");
    holder.release();
    assert!(holder.wait().success());
    assert!(waiter.wait().unwrap().success());
}

#[test]
fn sigterm_is_passed_to_the_command_and_a_signalled_waiter_leaves_the_line() {
    let etcd = Etcd::start();
    let url = etcd.url("sig");
    let mut holder = hold_url(&[], &url, "echo started; exec sleep 60");
    let mut waiter = xlock([url.as_str(), "true"]).spawn().unwrap();
    wait_for_queue(&url, 2);
    // A signal ends the wait: xlock dies of it, its key gone.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(waiter.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(waiter.wait().unwrap().signal(), Some(libc_sigterm()));
    wait_for_queue(&url, 1);
    // The holder's command gets SIGTERM and dies of it; so does xlock, having released.
    holder.kill(Signal::SIGTERM);
    assert_eq!(holder.wait().signal(), Some(libc_sigterm()));
    assert_eq!(status(&url)[0]["state"], "free");
}

fn libc_sigterm() -> i32 {
    Signal::SIGTERM as i32
}

#[test]
fn a_nested_xlock_on_the_same_url_runs_at_once() {
    let etcd = Etcd::start();
    let url = etcd.url("nest");
    let inner = format!("{} -n {url} sh -c 'echo inner $XLOCK_TOKEN'", xlock_bin().display());
    let out = xlock([url.as_str(), "sh", "-c", &format!("echo outer $XLOCK_TOKEN; {inner}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tokens: Vec<&str> = stdout.lines().map(|l| l.split(' ').nth(1).unwrap_or("")).collect();
    assert_eq!(tokens.len(), 2, "{stdout}");
    assert_eq!(
        tokens[0], tokens[1],
        "the inner command runs under the outer lock: {stdout}"
    );
}

#[test]
fn bad_urls_fail_before_anything_is_sent() {
    for (url, needle) in [
        ("etcd://127.0.0.1:99999/x", "not a number from 1 to 65535"),
        ("etcd://127.0.0.1:2/", "empty lock name"),
        ("etcd://127.0.0.1:2", "no lock name"),
    ] {
        let out = xlock([url, "true"]).output().unwrap();
        assert_fails(&out, &[url, needle]);
    }
    let out = xlock(["etcd:///x", "true"])
        .env_remove("ETCDCTL_ENDPOINTS")
        .output()
        .unwrap();
    assert_fails(&out, &["ETCDCTL_ENDPOINTS is not set"]);
    let out = xlock(["--stale-after", "1s", "etcd://127.0.0.1:2/x", "true"])
        .output()
        .unwrap();
    assert_fails(
        &out,
        &["--stale-after 1s is too short for an etcd lease", "at least 2s"],
    );
}

#[test]
fn endpoints_may_come_from_etcdctl_endpoints() {
    let etcd = Etcd::start();
    let out = xlock(["etcd:///envjob", "sh", "-c", "echo $XLOCK_PATH"])
        .env("ETCDCTL_ENDPOINTS", format!("http://{}", etcd.endpoint()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "etcd:///envjob\n");
}

#[test]
fn an_unreachable_endpoint_fails_in_one_line_within_the_timeout() {
    // Nothing listens: refused at once.
    let port = free_port();
    let url = format!("etcd://127.0.0.1:{port}/x");
    let out = xlock([url.as_str(), "true"]).output().unwrap();
    assert_fails(
        &out,
        &[
            &format!("127.0.0.1:{port}"),
            "connection refused",
            "check that etcd runs",
        ],
    );
    // A server that accepts and never answers: the wait asked for bounds it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("etcd://{}/x", silent.local_addr().unwrap());
    let began = Instant::now();
    let out = xlock(["-w", "1", url.as_str(), "true"]).output().unwrap();
    assert_fails(&out, &[&silent.local_addr().unwrap().to_string(), "timed out"]);
    assert!(began.elapsed() < Duration::from_secs(4), "took {:?}", began.elapsed());
    // --status too.
    let out = xlock(["--status", url.as_str()]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn a_silent_first_endpoint_does_not_use_up_the_time_of_the_next() {
    let etcd = Etcd::start();
    // Accepts connections (the kernel does) and never answers: a frozen member.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("etcd://{},{}/failover", silent.local_addr().unwrap(), etcd.endpoint());
    let out = xlock([url.as_str(), "sh", "-c", "echo ran"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    // Within a short wait too; --status as well.
    let out = xlock(["-w", "4", url.as_str(), "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = xlock(["--status", url.as_str()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_endpoint_that_is_not_etcd_is_skipped_and_named() {
    let etcd = Etcd::start();
    // An HTTP server that is not etcd's gateway (a peer port, a web server).
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let web_endpoint = web.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in web.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n404 page not found\n");
        }
    });
    let url = format!("etcd://{web_endpoint},{}/notetcd", etcd.endpoint());
    let out = xlock([url.as_str(), "sh", "-c", "echo ran"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    // Alone, it is named, with what to check, once.
    let url = format!("etcd://{web_endpoint}/notetcd");
    let out = xlock([url.as_str(), "true"]).output().unwrap();
    assert_fails(
        &out,
        &[&web_endpoint, "HTTP 404 and not JSON", "is it etcd's client port"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("etcd said"), "{stderr}");
}

#[test]
fn a_holder_that_is_not_xlock_is_waited_for_and_reported() {
    let etcd = Etcd::start();
    let port = etcd.client_port;
    // What `etcdctl lock other` does: a lease, and the Lock RPC with it ("b3RoZXI=" is "other").
    let grant = post(port, "/v3/lease/grant", r#"{"TTL":"30"}"#).unwrap();
    let lease: serde_json::Value = serde_json::from_str(&grant).unwrap();
    let id = lease["ID"].as_str().unwrap().to_owned();
    let locked = post(
        port,
        "/v3/lock/lock",
        &format!(r#"{{"name":"b3RoZXI=","lease":"{id}"}}"#),
    )
    .unwrap();
    assert!(locked.contains("\"key\""), "{locked}");
    let url = etcd.url("other");
    let out = xlock(["--status", url.as_str()]).output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("{url}: held by a client that is not xlock: key other/")),
        "{text}"
    );
    let out = xlock(["-n", url.as_str(), "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    // In line behind it; served once it lets go.
    let mut waiter = Running::start(xlock([url.as_str(), "-c", "echo got"]));
    wait_for_queue(&url, 2);
    assert_eq!(status(&url)[1]["state"], "waiting");
    post(port, "/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#)).unwrap();
    assert_eq!(waiter.line(), "got");
    assert!(waiter.wait().success());
}
