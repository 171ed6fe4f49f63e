//! Section 7 of the benchmark (SPEC §7, §10): lock -> `true` -> unlock against one
//! local single-node etcd, xlock next to `etcdctl lock`.

use super::*;

/// Section 7: lock -> `true` -> unlock against one local single-node etcd (started here
/// on free loopback ports, killed at the end), xlock and `etcdctl lock` interleaved.
pub(super) fn etcd_round_trip(dir: &Path) {
    say!("## 7. etcd: lock -> `true` -> unlock on one local etcd");
    say!();
    let installed = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .env("ETCDCTL_API", "3")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !installed("etcd", "--version") || !installed("etcdctl", "version") {
        say!("Skipped: etcd or etcdctl is not installed (Debian: apt-get install etcd-server etcd-client).");
        say!();
        return;
    }
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port()
    };
    let (client, peer) = (port(), port());
    let data = dir.join("etcd-data");
    let _ = fs::remove_dir_all(&data);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut etcd = Command::new("etcd")
        .args(["--name", "bench", "--data-dir", data.to_str().unwrap()])
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
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("127.0.0.1:{client}");
    let healthy = || {
        Command::new("etcdctl")
            .args(["--endpoints", &endpoint, "endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let end = Instant::now() + Duration::from_secs(30);
    while !healthy() {
        assert!(Instant::now() < end, "etcd did not become healthy in 30 s");
        thread::sleep(Duration::from_millis(100));
    }
    let rounds = setting("XLOCK_BENCH_ETCD_ROUNDS", 50);
    let xlock_url = format!("etcd://{endpoint}/bench-xlock");
    let runs: [(&str, Vec<&str>); 2] = [
        ("xlock", vec![env!("CARGO_BIN_EXE_xlock"), &xlock_url, "true"]),
        (
            "etcdctl lock",
            vec!["etcdctl", "--endpoints", &endpoint, "lock", "bench-etcdctl", "true"],
        ),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    for round in 0..rounds {
        for i in shuffled(runs.len(), round) {
            let (name, argv) = &runs[i];
            let started = Instant::now();
            let status = Command::new(argv[0])
                .args(&argv[1..])
                .env("ETCDCTL_API", "3")
                .status()
                .unwrap();
            samples[i].push(started.elapsed().as_secs_f64() * 1e3);
            assert!(status.success(), "{name} failed in round {round}");
        }
    }
    let _ = etcd.kill();
    let _ = etcd.wait();
    let _ = fs::remove_dir_all(&data);
    say!(
        "etcd {} on loopback, {rounds} runs each, interleaved.",
        first_line("etcd", &["--version"]).trim_start_matches("etcd Version: ")
    );
    say!();
    say!("| tool | median ms | p95 ms | vs etcdctl lock |");
    say!("|---|---|---|---|");
    let base = percentile(&mut samples[1], 0.5);
    for (i, (name, _)) in runs.iter().enumerate() {
        let m = percentile(&mut samples[i], 0.5);
        let p95 = percentile(&mut samples[i], 0.95);
        say!("| {name} | {m:.2} | {p95:.2} | {:.2} |", m / base);
    }
    say!();
}
