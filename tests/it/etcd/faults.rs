//! Faults (SPEC §10): the command's whole tree is stopped before the lease can expire
//! when renewals are not acknowledged (server frozen, network partitioned), and the
//! next holder gets the lock only after; a leader change loses nothing; a SIGKILLed
//! xlock's command gets SIGKILL and the next waiter the lock once the lease expires.
//!
//! Each uses a short lease (`--stale-after` 3 to 8 s). The waiter that takes over checks, as
//! its command starts, that no process of the first holder's tree is alive.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::*;

/// A holder on `url` with a lease of `ttl` whose command is a shell with a child
/// (their PIDs written to `pids`), its stderr in `log`.
/// `-v`: what it says (and does not say: "released" after "lock lost") is checked.
fn hold_tree(url: &str, ttl: &str, pids: &Path, log: &Path) -> Running {
    let script = format!("sleep 60 & echo $$ $! > {}; echo started; wait", pids.display());
    let mut command = Mode::Unnamed.hold_args(&["-v", "--stale-after", ttl], Path::new(url), &script);
    command.stderr(fs::File::create(log).unwrap());
    Mode::Unnamed.hold_command(command)
}

/// A waiter on `url` whose command reports which of `pids` are alive, then `got`.
fn waiter(url: &str, pids: &Path) -> Running {
    let script = format!("{}; echo got", report_alive(pids));
    Running::start(xlock(["-w", "60", url, "-c", &script]))
}

/// The first holder ended with "lock lost", exit 125, its tree gone; the waiter then
/// got the lock with none of that tree alive.
fn assert_lost_then_taken_over(mut holder: Running, log: &Path, pids: &Path, mut next: Running) {
    let status = holder.wait();
    let said = fs::read_to_string(log).unwrap();
    assert_eq!(status.code(), Some(125), "{said}");
    assert!(said.contains("xlock: lock lost: "), "{said}");
    let tree: Vec<i32> = fs::read_to_string(pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(tree.len(), 2);
    wait_until(Duration::from_secs(10), "the first holder's tree has ended", || {
        tree.iter().all(|&p| !process_alive(p))
    });
    let got = next.rest();
    assert_eq!(
        got, "got\n",
        "a process of the first holder's tree was alive when the next one got the lock"
    );
    assert!(next.wait().success());
}

#[test]
fn a_frozen_server_stops_the_command_tree_before_the_lease_can_expire() {
    let etcd = Etcd::start();
    let url = etcd.url("frozen");
    let dir = tempfile::tempdir().unwrap();
    let (pids, log) = (dir.path().join("pids"), dir.path().join("log"));
    let holder = hold_tree(&url, "3", &pids, &log);
    let next = waiter(&url, &pids);
    wait_for_queue(&url, 2);
    etcd.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let mut holder = holder;
    let status = holder.wait();
    // Frozen past the TTL: when it thaws, the first lease has expired.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(stopped.elapsed()));
    etcd.signal(Signal::SIGCONT);
    let said = fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(125), "{said}");
    assert!(said.contains("no lease renewal acknowledged"), "{said}");
    assert_lost_then_taken_over(holder, &log, &pids, next);
}

#[test]
fn a_partition_stops_the_command_tree_before_the_lease_expires() {
    let etcd = Etcd::start();
    let proxy = Proxy::to(etcd.client_port);
    let through_proxy = format!("etcd://127.0.0.1:{}/part", proxy.port);
    let direct = etcd.url("part");
    let dir = tempfile::tempdir().unwrap();
    let (pids, log) = (dir.path().join("pids"), dir.path().join("log"));
    // 6 s: SIGTERM 2 s before the server can expire the lease, room for a loaded machine.
    let holder = hold_tree(&through_proxy, "6", &pids, &log);
    let next = waiter(&direct, &pids);
    wait_for_queue(&direct, 2);
    // The server goes on and expires the first lease in its own time; the first
    // xlock hears nothing more.
    proxy.freeze();
    assert_lost_then_taken_over(holder, &log, &pids, next);
}

#[test]
fn a_killed_leader_loses_nothing() {
    let free = free_ports(6);
    let ports: Vec<(u16, u16)> = (0..3).map(|i| (free[2 * i], free[2 * i + 1])).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<Etcd> = ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            Etcd::spawn(
                &format!("m{i}"),
                *client,
                &Setup {
                    cluster: Some((cluster.clone(), *peer)),
                    tls: None,
                },
            )
        })
        .collect();
    for member in &members {
        member.wait_healthy();
    }
    let leader = leader_of(&members);
    // The leader first: the endpoint xlock talks to is the one that dies.
    let mut order: Vec<&Etcd> = vec![&members[leader]];
    order.extend(members.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, m)| m));
    let endpoints: Vec<String> = order.iter().map(|m| m.endpoint()).collect();
    let url = format!("etcd://{}/ha", endpoints.join(","));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    // 8 s: lost only if no renewal is acknowledged for 5.3 s, longer than an election
    // on a loaded machine.
    let mut command = Mode::Unnamed.hold_args(&["--stale-after", "8"], Path::new(&url), "echo started; read _; exit 0");
    command.stderr(fs::File::create(&log).unwrap());
    let mut holder = Mode::Unnamed.hold_command(command);
    members[leader].signal(Signal::SIGKILL);
    // More than the TTL: had no renewal been acknowledged since, the lease would be
    // gone and the command stopped (at two thirds of it).
    std::thread::sleep(Duration::from_secs(9));
    assert!(
        holder.child.try_wait().unwrap().is_none(),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
    let survivors = format!("etcd://{}/ha", endpoints[1..].join(","));
    let queue = status(&survivors);
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["pid"], holder.child.id());
    holder.release();
    let status = holder.wait();
    let said = fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{said}");
    assert!(!said.contains("lock lost"), "{said}");
}

/// The index of the cluster's leader among `members`.
fn leader_of(members: &[Etcd]) -> usize {
    let mut found = None;
    wait_until(Duration::from_secs(20), "the cluster has a leader", || {
        found = members.iter().position(|m| {
            post(m.client_port, "/v3/maintenance/status", "{}").is_some_and(|answer| {
                let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
                v["leader"]
                    .as_str()
                    .is_some_and(|l| l != "0" && v["header"]["member_id"].as_str() == Some(l))
            })
        });
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn a_killed_xlock_s_command_gets_sigkill_and_the_lease_expires() {
    let etcd = Etcd::start();
    let url = etcd.url("killed");
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // SIGTERM ignored: only SIGKILL ends it.
    let script = format!(
        "trap '' TERM; echo $$ > {}; echo started; exec sleep 60",
        pids.display()
    );
    let mut command = Mode::Unnamed.hold_args(&["--stale-after", "3"], Path::new(&url), &script);
    command.stderr(Stdio::null());
    let mut holder = Mode::Unnamed.hold_command(command);
    let command_pid: i32 = fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
    let mut next = Running::start(xlock(["-w", "60", url.as_str(), "-c", "echo got"]));
    wait_for_queue(&url, 2);
    holder.kill(Signal::SIGKILL);
    let killed = Instant::now();
    holder.wait();
    wait_until(Duration::from_secs(10), "the command got SIGKILL", || {
        !process_alive(command_pid)
    });
    assert_eq!(next.line(), "got");
    // Not before the lease expired: renewed at most a third of its 3 s before.
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        killed.elapsed()
    );
    assert!(next.wait().success());
}

#[test]
fn a_lease_revoked_under_the_holder_stops_the_command_tree_at_once() {
    let etcd = Etcd::start();
    let url = etcd.url("revoked");
    let dir = tempfile::tempdir().unwrap();
    let (pids, log) = (dir.path().join("pids"), dir.path().join("log"));
    // Renewed every 3 s; its message tells a renewal answered with TTL 0 from one
    // not acknowledged.
    let mut holder = hold_tree(&url, "9", &pids, &log);
    let leases = post(etcd.client_port, "/v3/lease/leases", "{}").unwrap();
    let leases: serde_json::Value = serde_json::from_str(&leases).unwrap();
    let id = leases["leases"][0]["ID"].as_str().unwrap().to_owned();
    post(etcd.client_port, "/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#)).unwrap();
    // The tree's `sleep 60` would end it with status 0, a minute later.
    let status = holder.wait();
    let said = fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(125), "{said}");
    assert!(
        said.contains("xlock: lock lost: ") && said.contains("etcd says the lease has expired"),
        "{said}"
    );
    assert!(!said.contains("released"), "{said}");
    let tree: Vec<i32> = fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    wait_until(Duration::from_secs(10), "the holder's tree has ended", || {
        tree.iter().all(|&p| !process_alive(p))
    });
}

#[test]
fn a_waiter_whose_lock_call_hangs_on_a_frozen_endpoint_still_gets_the_lock() {
    let etcd = Etcd::start();
    let proxy = Proxy::to(etcd.client_port);
    let direct = etcd.url("stuck");
    // The waiter's calls go through the proxy first, its Lock call with them.
    let both = format!("etcd://127.0.0.1:{},{}/stuck", proxy.port, etcd.endpoint());
    let mut holder = hold_url(&[], &direct, "echo started; read _; exit 0");
    let mut waiter = Running::start(xlock([
        "--stale-after",
        "6",
        "-w",
        "60",
        both.as_str(),
        "-c",
        "echo got",
    ]));
    wait_for_queue(&direct, 2);
    // The proxy's endpoint freezes with the Lock call in flight; renewals go on
    // through the other endpoint, and the holder lets go.
    proxy.freeze();
    holder.release();
    assert!(holder.wait().success());
    assert_eq!(waiter.line(), "got");
    assert!(waiter.wait().success());
}
