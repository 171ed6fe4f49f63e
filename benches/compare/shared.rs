//! Section 6 of the benchmark (SPEC §7): shared locks and slots (`-s`, `--slots 2`)
//! next to the exclusive lock, uncontended and at a hand-off; the target is 1.1x of
//! the exclusive lock's figures.

use super::*;

/// Section 6 (SPEC §7, §9): `--shared` and `--slots 2` next to the exclusive lock,
/// uncontended and at a hand-off, interleaved; the target is within 1.1x.
pub(super) fn shared_and_slots(dir: &Path, xlock: &str, stamp: &str) {
    let rounds = setting("XLOCK_BENCH_ROUNDS", 300);
    let kinds: [(&str, &[&str]); 3] = [
        ("exclusive", &[]),
        ("--shared", &["-s"]),
        ("--slots 2", &["--slots", "2"]),
    ];
    let run = |lock: &Path, opts: &[&str], cmd: &[&str]| {
        Command::new(xlock)
            .args(opts)
            .arg(lock)
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for round in 0..rounds {
        for i in shuffled(kinds.len(), round) {
            let opts = kinds[i].1;
            let lock = dir.join(format!("kinds.{i}.lock"));
            let started = Instant::now();
            assert!(run(&lock, opts, &["true"]).wait().unwrap().success());
            samples[i].push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    say!("## 6. Shared locks and slots next to the exclusive lock");
    say!();
    say!("Uncontended `xlock [-s | --slots 2] LOCK true` ({rounds} runs each, interleaved):");
    say!();
    say!("| kind | median ms | p95 ms | vs exclusive |");
    say!("|---|---|---|---|");
    let base = percentile(&mut samples[0], 0.5);
    for (i, (name, _)) in kinds.iter().enumerate() {
        let m = percentile(&mut samples[i], 0.5);
        say!(
            "| {name} | {m:.2} | {:.2} | {:.2} |",
            percentile(&mut samples[i], 0.95),
            m / base
        );
    }
    say!();
    // Hand-offs: holder's command ends -> waiter's command starts. For slots, a third
    // holder keeps the other slot busy throughout, so the waiter waits for the one.
    let n = setting("XLOCK_BENCH_HANDOFFS", 100);
    let pairs: [(&str, &[&str], &[&str]); 4] = [
        ("exclusive -> exclusive", &[], &[]),
        ("exclusive -> --shared", &[], &["-s"]),
        ("--shared -> exclusive", &["-s"], &[]),
        (
            "--slots 2 -> --slots 2 (other slot busy)",
            &["--slots", "2"],
            &["--slots", "2"],
        ),
    ];
    let slot_lock = dir.join("handoff-kinds.3.lock");
    let mut busy = run(&slot_lock, &["--slots", "2"], &["sleep", "100000"]);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
    let mut discarded = 0;
    for round in 0..n {
        for i in shuffled(pairs.len(), round) {
            let (_, holder_opts, waiter_opts) = pairs[i];
            let lock = dir.join(format!("handoff-kinds.{i}.lock"));
            let (end, start) = (dir.join(format!("kinds-end.{i}")), dir.join(format!("kinds-start.{i}")));
            let _ = (fs::remove_file(&end), fs::remove_file(&start));
            let holder_cmd = format!("sleep 0.02; exec '{stamp}' '{}'", end.display());
            let mut holder = run(&lock, holder_opts, &["sh", "-c", &holder_cmd]);
            thread::sleep(Duration::from_millis(8)); // the holder gets the lock first
            let mut waiter = run(&lock, waiter_opts, &[stamp, start.to_str().unwrap()]);
            holder.wait().unwrap();
            waiter.wait().unwrap();
            match (read_stamp(&end), read_stamp(&start)) {
                (Some(e), Some(s)) if s > e => samples[i].push((s - e) as f64 / 1e6),
                _ => discarded += 1,
            }
        }
    }
    // SIGTERM: xlock passes it to its command and releases the slot.
    let _ = Command::new("kill").arg(busy.id().to_string()).status();
    let _ = busy.wait();
    say!("Hand-off: holder's command ends -> waiter's command starts ({n} each, interleaved):");
    say!();
    say!("| holder -> waiter | median ms | p95 ms | vs exclusive |");
    say!("|---|---|---|---|");
    let base = percentile(&mut samples[0], 0.5);
    for (i, (name, _, _)) in pairs.iter().enumerate() {
        let m = percentile(&mut samples[i], 0.5);
        say!(
            "| {name} | {m:.2} | {:.2} | {:.2} |",
            percentile(&mut samples[i], 0.95),
            m / base
        );
    }
    if discarded > 0 {
        say!();
        say!("({discarded} rounds discarded: the waiter started before the holder)");
    }
    say!();
}
