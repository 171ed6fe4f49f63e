//! Section 4 of the benchmark (SPEC §7, "Many contenders"): M processes on one lock,
//! each running `TOOL LOCK true` in a loop, for M = 1, 4, 16 and 64, as ratios to
//! flock(1) in the same round, beside the floor (benches/floor.c).
//!
//! The cost of a hand-off must not grow with the number of waiters faster than
//! flock(1)'s. Besides runs per second, the table gives the CPU time per run (user +
//! system of the tool and its `true`, from the rusage of the children reaped during
//! the measurement): on a shared machine wall time drifts with the other load, while
//! the work a tool does per run (every waiter woken at every hand-off, or only the
//! next) shows in its CPU time.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};

use super::{percentile, setting, shuffled, Bench, Tool, FLOOR};

/// The tools measured under contention: xlock (static; its baseline if given), the
/// fork-and-wait peers that block on a kernel lock, and the floor. The others poll
/// (dotlockfile, procmail's lockfile: minutes at M = 64) or cannot release after the
/// command.
fn contenders(tools: &[Tool]) -> Vec<&Tool> {
    tools
        .iter()
        .filter(|t| {
            matches!(
                t.name,
                "xlock" | "xlock -w 5" | "xlock (baseline)" | "flock(1)" | "lckdo -w"
            ) || t.name == FLOOR
        })
        .collect()
}

/// One measurement: runs per second, CPU ms per run, and whether every run was done
/// within the cap.
#[derive(Clone, Copy)]
struct Figure {
    rate: f64,
    cpu_ms: f64,
    complete: bool,
}

/// `procs` processes, each running `TOOL LOCK true` `runs` times (stopping at `cap`).
fn measure(tool: &Tool, lock: &Path, procs: usize, runs: usize, cap: Duration) -> Figure {
    let _ = fs::remove_file(lock);
    let cpu_before = children_cpu();
    let started = Instant::now();
    let workers: Vec<_> = (0..procs)
        .map(|_| {
            let (tool, lock) = (tool.clone(), lock.to_owned());
            thread::spawn(move || {
                let mut done = 0;
                for _ in 0..runs {
                    if started.elapsed() > cap {
                        break;
                    }
                    if tool.run(&lock, &["true"]).wait().unwrap().success() {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let done: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let elapsed = started.elapsed().as_secs_f64();
    Figure {
        rate: done as f64 / elapsed,
        cpu_ms: (children_cpu() - cpu_before).as_secs_f64() * 1e3 / done.max(1) as f64,
        complete: done == procs * runs,
    }
}

/// User + system time of the children reaped so far (and of theirs).
fn children_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    let time = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    time(usage.user_time()) + time(usage.system_time())
}

/// The process counts (XLOCK_BENCH_THROUGHPUT_M, default 1,4,16,64).
fn process_counts() -> Vec<usize> {
    std::env::var("XLOCK_BENCH_THROUGHPUT_M")
        .ok()
        .map(|list| {
            list.split(',')
                .map(|m| {
                    m.trim()
                        .parse()
                        .expect("XLOCK_BENCH_THROUGHPUT_M: a comma-separated list of counts")
                })
                .collect()
        })
        .unwrap_or_else(|| vec![1, 4, 16, 64])
}

/// Section 4: throughput under contention, for each process count.
pub(super) fn throughput(bench: &Bench) {
    let tools = contenders(&bench.tools);
    let counts = process_counts();
    let total = setting("XLOCK_BENCH_THROUGHPUT_RUNS", 800);
    let rounds = setting("XLOCK_BENCH_THROUGHPUT_ROUNDS", 3);
    let cap = Duration::from_secs(60);
    let runs_each = |procs: usize| (total / procs).max(5);
    // figures[count][tool]: one per round.
    let mut figures: Vec<Vec<Vec<Figure>>> = vec![vec![Vec::new(); tools.len()]; counts.len()];
    for round in 0..rounds {
        for (c, &procs) in counts.iter().enumerate() {
            for t in shuffled(tools.len(), round) {
                let tool = &tools[t];
                let lock = bench.dir.join(format!("throughput.{t}.lock"));
                figures[c][t].push(measure(tool, &lock, procs, runs_each(procs), cap));
            }
        }
    }
    let flock = tools.iter().position(|t| t.name == "flock(1)");
    let shape: Vec<String> = counts.iter().map(|&m| format!("{m} x {}", runs_each(m))).collect();
    say!("## 4. Throughput: M processes on one lock, each running `TOOL LOCK true` in a loop");
    say!();
    say!(
        "M processes x runs each: {}. Median of {rounds} rounds, the tools interleaved in each.",
        shape.join(", ")
    );
    say!("Runs per second, and in brackets the median of each round's ratio to flock(1) in that");
    say!("round (at least 1.0 is SPEC §7's target for xlock); then the CPU time per run.");
    say!();
    let header: Vec<String> = counts.iter().map(|m| format!("M={m}")).collect();
    let rule = "|---".repeat(counts.len() + 1);
    say!("| tool | {} |", header.join(" | "));
    say!("{rule}|");
    for (t, tool) in tools.iter().enumerate() {
        let cells: Vec<String> = (0..counts.len())
            .map(|c| {
                let own = &figures[c][t];
                let median = percentile(&mut own.iter().map(|f| f.rate).collect::<Vec<_>>(), 0.5);
                let mut ratios: Vec<f64> = flock
                    .map(|f| own.iter().zip(&figures[c][f]).map(|(a, b)| a.rate / b.rate).collect())
                    .unwrap_or_default();
                let ratio = if ratios.is_empty() {
                    String::new()
                } else {
                    format!(" ({:.2})", percentile(&mut ratios, 0.5))
                };
                let incomplete = if own.iter().all(|f| f.complete) {
                    ""
                } else {
                    " (capped)"
                };
                format!("{median:.0}{ratio}{incomplete}")
            })
            .collect();
        say!("| {} | {} |", tool.name, cells.join(" | "));
    }
    say!();
    say!("CPU ms per run (user + system, the tool and its `true`; median of the rounds):");
    say!();
    say!("| tool | {} |", header.join(" | "));
    say!("{rule}|");
    for (t, tool) in tools.iter().enumerate() {
        let cells: Vec<String> = (0..counts.len())
            .map(|c| {
                let mut cpu: Vec<f64> = figures[c][t].iter().map(|f| f.cpu_ms).collect();
                format!("{:.2}", percentile(&mut cpu, 0.5))
            })
            .collect();
        say!("| {} | {} |", tool.name, cells.join(" | "));
    }
    say!();
    if figures.iter().flatten().flatten().any(|f| !f.complete) {
        say!("(capped: not every run was done within {} s)", cap.as_secs());
        say!();
    }
}
