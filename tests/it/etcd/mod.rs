//! The etcd lock (SPEC §10) against real `etcd` servers: each test starts its own on
//! free loopback ports (never 2379), waits for `/health`, and kills it by PID when
//! done. `.ci/run` installs `etcd-server` (and `openssl` for the TLS tests).
//!
//! Helpers here; the tests: [`basic`] (run, conflict, timeout, FIFO, tokens, status,
//! signals, nesting, bad input), [`faults`] (server frozen, partition, leader killed,
//! xlock killed), [`tls`] (TLS and authentication).

mod basic;
mod faults;
mod tls;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// A port nobody listens on now (bound to port 0, then let go).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct ports nobody listens on now: all bound at once, then let go.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// One etcd member, killed (SIGKILL) on drop.
pub struct Etcd {
    pub child: Child,
    pub client_port: u16,
    pub name: String,
    pub dir: tempfile::TempDir,
}

/// How to start a member.
#[derive(Default, Clone)]
pub struct Setup {
    /// `--initial-cluster` for a cluster (name=peer URL,...), with this member's peer port.
    pub cluster: Option<(String, u16)>,
    /// TLS: (cert, key, trusted CA for client certificates).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Etcd {
    /// A single-node server, healthy.
    pub fn start() -> Etcd {
        let ports = free_ports(2);
        let cluster = format!("t=http://127.0.0.1:{}", ports[1]);
        let setup = Setup {
            cluster: Some((cluster, ports[1])),
            tls: None,
        };
        let etcd = Etcd::spawn("t", ports[0], &setup);
        etcd.wait_healthy();
        etcd
    }

    /// A member named `name`, started (not yet healthy).
    pub fn spawn(name: &str, client_port: u16, setup: &Setup) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let (peer_port, cluster) = match &setup.cluster {
            Some((cluster, peer_port)) => (*peer_port, cluster.clone()),
            None => {
                let port = free_port();
                (port, format!("{name}=http://127.0.0.1:{port}"))
            }
        };
        let scheme = if setup.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = fs::File::create(dir.path().join("log")).expect("log file");
        let mut command = Command::new("etcd");
        command
            .args(["--name", name, "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &cluster, "--initial-cluster-token", "xlock-test"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((cert, key, ca)) = &setup.tls {
            command
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start etcd ({err}); install it: apt-get install etcd-server"));
        Etcd {
            child,
            client_port,
            name: name.to_owned(),
            dir,
        }
    }

    /// `HOST:PORT` of its client port.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `etcd://127.0.0.1:PORT/name`.
    pub fn url(&self, name: &str) -> String {
        format!("etcd://{}/{name}", self.endpoint())
    }

    /// Waits (up to 20 s) until it says it is healthy (plain HTTP only).
    pub fn wait_healthy(&self) {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if get(self.client_port, "/health").is_some_and(|body| body.contains(r#""health":"true""#)) {
                return;
            }
            assert!(
                Instant::now() < end,
                "etcd {} not healthy in 20 s; its log: {}",
                self.name,
                fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("signal etcd");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a loopback port over plain HTTP: the body, if it answered.
pub fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// `POST path` with a JSON `body` on a loopback port over plain HTTP: the body.
pub fn post(port: u16, path: &str, body: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// `xlock --status --json URL`: one JSON object per holder and waiter, in line order.
pub fn status(url: &str) -> Vec<serde_json::Value> {
    let out = xlock(["--status", "--json", url]).output().expect("run xlock --status");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Waits until `url` has `n` keys in line (the holder and `n - 1` waiters).
pub fn wait_for_queue(url: &str, n: usize) {
    wait_until(Duration::from_secs(20), &format!("{n} in line at {url}"), || {
        let queue = status(url);
        queue.len() == n && queue.iter().all(|o| o["state"] != "free")
    });
}

/// Starts an xlock holding `url` with the shell snippet `script` (which must print
/// `started` when it runs); returns once it has.
pub fn hold_url(extra: &[&str], url: &str, script: &str) -> Running {
    Mode::Unnamed.hold_script(extra, Path::new(url), script)
}

/// A shell snippet that prints whether any of the PIDs listed in `file` is still a
/// live process (not a zombie): `ALIVE PID` for each.
pub fn report_alive(file: &Path) -> String {
    format!(
        "for p in $(cat {}); do s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null); \
         if [ -n \"$s\" ] && [ \"$s\" != Z ]; then echo ALIVE $p; fi; done",
        file.display()
    )
}

/// A TCP proxy to a port that can be frozen (a partition): then it forwards nothing
/// more, in either direction, on any connection, and holds new ones unanswered.
pub struct Proxy {
    pub port: u16,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    pub fn to(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let accept_frozen = Arc::clone(&frozen);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let frozen = Arc::clone(&accept_frozen);
                std::thread::spawn(move || {
                    while frozen.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                        return;
                    };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let f2 = Arc::clone(&frozen);
                    std::thread::spawn(move || pipe(c2, s2, &f2));
                    pipe(server, client, &frozen);
                });
            }
        });
        Proxy { port, frozen }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; while frozen, holds what it read.
fn pipe(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
