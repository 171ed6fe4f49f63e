//! xlock against flock(1) and the other lock tools, in one run (SPEC §7).
//!
//!     cargo bench --bench compare
//!
//! Measures, interleaving the tools so that drift on a shared machine hits them alike:
//! 1. uncontended cost of `TOOL LOCK true` (median, p95, ratios);
//! 2. hand-off: holder's command ends -> waiter's command starts, stamped by the
//!    commands themselves (a tiny C program reading CLOCK_REALTIME);
//! 3. take-over: holder's wrapper SIGKILLed -> waiter's command starts;
//! 4. throughput: M processes (M = 1, 4, 16, 64), each running `TOOL LOCK true` in a
//!    loop, as ratios to flock(1) in the same run, with the CPU time per run;
//! 5. peak RSS of the wrapper process (wait4's rusage);
//! 6. shared locks and slots next to the exclusive lock: uncontended and hand-off
//!    (benches/compare/shared.rs);
//! 7. etcd (SPEC §10): lock -> `true` -> unlock on one local etcd, xlock against
//!    `etcdctl lock`, interleaved (skipped if etcd or etcdctl is not installed;
//!    benches/compare/etcd.rs).
//!
//! Beside the peers runs the physical floor (SPEC §7): benches/floor.c, a static C
//! program that only opens LOCK, flocks it, vforks and execs the command and waits
//! (no record, no checks), compiled here with `gcc -O2 -static`.
//!
//! A full run writes its figures to docs/benchmarks.md (and prints them), with the
//! date, the machine, the tool versions and the load average; the README only
//! summarises the targets and points there. `XLOCK_BENCH=throughput` (a
//! comma-separated list of `uncontended`, `handoff`, `takeover`, `throughput`, `rss`)
//! runs only those sections and only prints them: the machine may be shared, and a
//! full run takes minutes. A section is a function taking the [`Bench`], called once
//! from `main` through [`Sections::run`] (benches/compare/sections.rs).
//!
//! xlock is measured as `cargo build --release` makes it (statically linked on
//! linux-gnu, by .cargo/config.toml) and, for comparison, dynamically linked
//! (`-C target-feature=-crt-static`, built here into target/dynamic). A peer that is
//! not installed is listed as skipped. Settings: XLOCK_BENCH_ROUNDS (uncontended
//! rounds, default 300), XLOCK_BENCH_HANDOFFS (default 100),
//! XLOCK_BENCH_THROUGHPUT_ROUNDS (default 3), XLOCK_BENCH_THROUGHPUT_RUNS (runs per M,
//! shared among the M processes, default 800), XLOCK_BENCH_THROUGHPUT_M (default
//! `1,4,16,64`), XLOCK_BENCH_ETCD_ROUNDS (default 50), XLOCK_BENCH_BASELINE (another
//! xlock binary, measured beside this one as "xlock (baseline)": a before/after
//! comparison in one run), XLOCK_BENCH_XLOCK (another xlock binary measured in place
//! of this build: sections without a baseline column, such as 6, run once per build).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the run reports, in Markdown: printed as it goes, and written to
/// docs/benchmarks.md at the end.
static REPORT: Mutex<String> = Mutex::new(String::new());

/// `println!`, and the line kept for docs/benchmarks.md.
macro_rules! say {
    () => { say!("") };
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        println!("{line}");
        let mut report = crate::REPORT.lock().unwrap();
        report.push_str(&line);
        report.push('\n');
    }};
}

/// How a tool runs a command under a lock.
#[derive(Clone)]
struct Tool {
    name: &'static str,
    /// The words before LOCK; `None` for procmail's lockfile, which only makes the lock.
    program: Option<Vec<String>>,
    /// Words between LOCK and the command.
    after_lock: Vec<String>,
    /// Runs the command and waits for it (as opposed to exec'ing it).
    fork_and_wait: bool,
    /// The Debian package it comes from, for its version.
    package: Option<&'static str>,
}

impl Tool {
    fn new(name: &'static str, program: &[&str], fork_and_wait: bool) -> Tool {
        Tool {
            name,
            program: Some(program.iter().map(|s| s.to_string()).collect()),
            after_lock: Vec::new(),
            fork_and_wait,
            package: None,
        }
    }

    fn packaged_in(self, package: &'static str) -> Tool {
        Tool {
            package: Some(package),
            ..self
        }
    }

    /// Where the tool comes from, with its version: `PACKAGE VERSION` from dpkg.
    fn version(&self) -> String {
        let Some(package) = self.package else {
            return String::new();
        };
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", package])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map_or_else(
                || format!("{package}, version unknown"),
                |out| format!("{package} {}", String::from_utf8_lossy(&out.stdout).trim()),
            )
    }

    fn command(&self, lock: &Path, cmd: &[&str]) -> Command {
        match &self.program {
            Some(program) => {
                let mut command = Command::new(&program[0]);
                command.args(&program[1..]).arg(lock).args(&self.after_lock).args(cmd);
                command
            }
            None => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg("lockfile -1 -r -1 \"$0\" && { \"$@\"; s=$?; rm -f \"$0\"; exit $s; }")
                    .arg(lock)
                    .args(cmd);
                command
            }
        }
    }

    fn run(&self, lock: &Path, cmd: &[&str]) -> Child {
        self.command(lock, cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn installed(&self) -> bool {
        let program = self.program.as_ref().map_or("lockfile", |p| p[0].as_str());
        Path::new(program).is_absolute() && Path::new(program).exists()
            || Command::new("sh")
                .args(["-c", &format!("command -v {program} >/dev/null")])
                .status()
                .is_ok_and(|s| s.success())
    }
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

/// The order of `len` interleaved contenders in round `round`: a shuffle of its own
/// (Fisher-Yates on a xorshift seeded by the round, so a run can be repeated), so that
/// no contender always runs first, or always right after the same neighbour. In a fixed
/// order, `xlock -w 5` measured 10 % faster than `xlock` (the same binary, the same
/// system calls) because it always ran right after it, its code still in the caches.
fn shuffled(len: usize, round: usize) -> impl Iterator<Item = usize> {
    let mut state = (round as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order.into_iter()
}

/// Page faults (minor) of every child waited for so far.
fn children_page_faults() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .unwrap()
        .minor_page_faults()
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn work_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-compare");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The C helper that stamps CLOCK_REALTIME into a file: starts in well under a
/// millisecond, so the stamps measure the lock tools, not the stamper.
fn build_stamp(dir: &Path) -> PathBuf {
    let source = dir.join("stamp.c");
    fs::write(
        &source,
        "#include <stdio.h>\n#include <time.h>\nint main(int c, char **v) { struct timespec t; \
         clock_gettime(CLOCK_REALTIME, &t); FILE *f = fopen(v[1], \"w\"); \
         fprintf(f, \"%lld\\n\", (long long)t.tv_sec * 1000000000LL + t.tv_nsec); return fclose(f); }\n",
    )
    .unwrap();
    compile_c(&source, false, "its timestamp helper")
}

/// Compiles `source` next to it (with `statically`, static where the C library allows,
/// else dynamic), or stops the benchmark saying what needed a C compiler.
fn compile_c(source: &Path, statically: bool, what: &str) -> PathBuf {
    let binary = source.with_extension("");
    let cc = |flags: &[&str]| {
        Command::new("cc")
            .args(flags)
            .arg("-o")
            .arg(&binary)
            .arg(source)
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        (statically && cc(&["-O2", "-static"])) || cc(&["-O2"]),
        "the benchmark needs a C compiler (cc) for {what}"
    );
    binary
}

/// A C launcher that forks, execs its arguments and prints the child's peak RSS from
/// wait4. Linux counts the RSS a child had before exec (a copy of its parent) in
/// ru_maxrss, so a small C parent keeps that floor low.
fn build_rss(dir: &Path) -> PathBuf {
    let source = dir.join("rss.c");
    fs::write(
        &source,
        "#include <stdio.h>\n#include <unistd.h>\n#include <sys/resource.h>\n#include <sys/wait.h>\n\
         int main(int c, char **v) { pid_t p = fork(); if (p == 0) { execvp(v[1], v + 1); _exit(127); } \
         int s; struct rusage u; wait4(p, &s, 0, &u); printf(\"%ld\\n\", u.ru_maxrss); return 0; }\n",
    )
    .unwrap();
    compile_c(&source, true, "its RSS helper")
}

/// The floor's name in the tables.
const FLOOR: &str = "floor (C, open+flock+vfork/exec+wait)";

/// benches/floor.c, compiled static into the work directory.
fn build_floor(dir: &Path) -> PathBuf {
    let source = dir.join("floor.c");
    fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/floor.c"),
        &source,
    )
    .unwrap();
    let binary = source.with_extension("");
    let built = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        built,
        "the benchmark needs gcc and a static C library (Debian: libc6-dev) for benches/floor.c"
    );
    binary
}

/// xlock linked dynamically (as without .cargo/config.toml), built into target/dynamic.
fn build_dynamic_xlock() -> Option<PathBuf> {
    let rustc = Command::new("rustc").arg("-vV").output().ok()?;
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "--bin",
            "xlock",
            "--target",
            &host,
            "--target-dir",
        ])
        .arg(root.join("target/dynamic"))
        .current_dir(&root)
        .env("RUSTFLAGS", "-C target-feature=-crt-static")
        .status()
        .ok()?;
    let binary = root.join("target/dynamic").join(&host).join("release/xlock");
    (status.success() && binary.exists()).then_some(binary)
}

fn read_stamp(path: &Path) -> Option<i128> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What every section gets: the lock tools present, and the helpers built for the run.
struct Bench {
    dir: PathBuf,
    tools: Vec<Tool>,
    /// The timestamp helper (section 2, 3).
    stamp: String,
    /// xlock's median hand-off, once section 2 has run (section 3's target).
    handoff_median: std::cell::Cell<Option<f64>>,
}

#[path = "compare/etcd.rs"]
mod etcd;
#[path = "compare/sections.rs"]
mod sections;
#[path = "compare/shared.rs"]
mod shared;
#[path = "compare/throughput.rs"]
mod throughput;
use etcd::etcd_round_trip;
use sections::Sections;
use shared::shared_and_slots;
use throughput::throughput;

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let sections = Sections::from_env();
    let dir = work_dir();
    let stamp = build_stamp(&dir);
    let other = std::env::var("XLOCK_BENCH_XLOCK").ok();
    let xlock = other.as_deref().unwrap_or(env!("CARGO_BIN_EXE_xlock"));
    let dynamic_xlock = if sections.all() { build_dynamic_xlock() } else { None };
    let floor = build_floor(&dir);

    // `-w 5`: an option on the line, which the plain form does not have (SPEC §7's
    // targets hold with any option, not only for `xlock LOCK COMMAND`).
    let mut tools = vec![
        Tool::new("xlock", &[xlock], true),
        Tool::new("xlock -w 5", &[xlock, "-w", "5"], true),
    ];
    if let Some(path) = &dynamic_xlock {
        tools.push(Tool::new("xlock (dynamic)", &[path.to_str().unwrap()], true));
    }
    if let Ok(baseline) = std::env::var("XLOCK_BENCH_BASELINE") {
        tools.push(Tool::new("xlock (baseline)", &[&baseline], true));
    }
    tools.extend([
        Tool::new("flock(1)", &["flock"], true).packaged_in("util-linux"),
        Tool::new("lckdo -w", &["lckdo", "-w"], true).packaged_in("moreutils"),
        Tool {
            after_lock: Vec::new(),
            ..Tool::new("dotlockfile -l", &["dotlockfile", "-l", "-r", "-1"], true)
        }
        .packaged_in("liblockfile-bin"),
        Tool::new("with-lock-ex -w", &["with-lock-ex", "-w"], false).packaged_in("chiark-utils-bin"),
        Tool::new("chpst -l", &["chpst", "-l"], false).packaged_in("runit"),
        Tool {
            program: None,
            after_lock: Vec::new(),
            name: "lockfile (procmail)",
            fork_and_wait: true,
            package: Some("procmail"),
        },
        Tool::new(FLOOR, &[floor.to_str().unwrap()], true),
    ]);
    let (present, missing): (Vec<Tool>, Vec<Tool>) = tools.into_iter().partition(Tool::installed);

    let began = Instant::now();
    let load_before = load_average();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap().trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    say!("# Benchmark figures");
    say!();
    say!("Written by `cargo bench --bench compare` (benches/compare.rs) at every run: the figures");
    say!("of the latest run, on one machine. Compare the ratios, which are measured side by");
    say!("side; absolute times drift on a shared machine. The targets are SPEC §7's, summarised");
    say!("in the README.");
    say!();
    say!("- Run: {}", humantime::format_rfc3339_seconds(SystemTime::now()));
    say!("- Machine: {cpu}, {cores} cores, Linux {}", kernel.trim());
    say!(
        "- xlock {} ({}), {}",
        env!("CARGO_PKG_VERSION"),
        git_revision(),
        first_line("rustc", &["-V"])
    );
    for tool in &present {
        if tool.package.is_some() {
            say!("- {}: {}", tool.name, tool.version());
        }
    }
    say!("- {FLOOR}: benches/floor.c, {}", first_line("cc", &["--version"]));
    if dynamic_xlock.is_none() && sections.all() {
        say!("- xlock (dynamic): skipped, the dynamic build failed");
    }
    for tool in &missing {
        say!("- {}: skipped, not installed", tool.name);
    }
    say!("- Lock files in {}", dir.display());
    say!("- Load average when the run began: {load_before}");
    say!();

    let bench = Bench {
        dir,
        tools: present,
        stamp: stamp.to_str().unwrap().to_owned(),
        handoff_median: std::cell::Cell::new(None),
    };
    sections.run("uncontended", || uncontended(&bench));
    sections.run("handoff", || bench.handoff_median.set(Some(handoff(&bench))));
    sections.run("takeover", || takeover(&bench));
    sections.run("throughput", || throughput(&bench));
    sections.run("rss", || peak_rss(&bench, &build_rss(&bench.dir)));
    sections.run("shared", || shared_and_slots(&bench.dir, xlock, &bench.stamp));
    sections.run("etcd", || etcd_round_trip(&bench.dir));
    sections.check_names();

    let load_after = load_average();
    say!(
        "The run took {:.0} s. Load average when it ended: {load_after}.",
        began.elapsed().as_secs_f64()
    );
    let busiest = [&load_before, &load_after]
        .iter()
        .filter_map(|load| load.split_whitespace().next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    if busiest > cores as f64 {
        say!();
        say!(
            "**The machine was busy with other work during this run** (load average {busiest:.1} on \
             {cores} cores): every tool was slowed alike, as they are interleaved, but the spread \
             is wider than on an idle machine."
        );
    }
    if sections.all() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
        fs::write(&docs, REPORT.lock().unwrap().as_bytes()).unwrap();
        println!("(written to {})", docs.display());
    } else {
        println!("(only some sections ran: docs/benchmarks.md left as it was)");
    }
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg shows them.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The first line a program prints, or "unknown".
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_owned))
        .unwrap_or_else(|| format!("{program}: unknown"))
}

/// The commit measured, with `+dirty` for uncommitted changes.
fn git_revision() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let revision = first_line("git", &["-C", root, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", root, "diff", "--quiet", "HEAD"])
        .status()
        .is_ok_and(|s| !s.success());
    format!("commit {revision}{}", if dirty { "+dirty" } else { "" })
}

/// Section 1: Uncontended `TOOL LOCK true`, interleaved round by round.
fn uncontended(bench: &Bench) {
    let (dir, tools) = (&bench.dir, &bench.tools);
    let rounds = setting("XLOCK_BENCH_ROUNDS", 300);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); tools.len() + 1];
    // Page faults of each run (the tool and its `true`): the figure that code layout
    // moves (docs/design.md, "Code layout"), and not blurred by a busy machine.
    let mut faults: Vec<Vec<f64>> = vec![Vec::new(); tools.len() + 1];
    for round in 0..rounds {
        // The tools, and plain `true` as the last contender.
        for i in shuffled(tools.len() + 1, round) {
            let faults_before = children_page_faults();
            let Some(tool) = tools.get(i) else {
                let started = Instant::now();
                Command::new("true").status().unwrap();
                samples[i].push(started.elapsed().as_secs_f64() * 1e3);
                faults[i].push((children_page_faults() - faults_before) as f64);
                continue;
            };
            let lock = dir.join(format!("uncontended.{i}.lock"));
            let started = Instant::now();
            let status = tool.run(&lock, &["true"]).wait().unwrap();
            samples[i].push(started.elapsed().as_secs_f64() * 1e3);
            faults[i].push((children_page_faults() - faults_before) as f64);
            assert!(status.success(), "{} failed in round {round}", tool.name);
        }
    }
    let median = |i: usize, samples: &mut Vec<Vec<f64>>| percentile(&mut samples[i], 0.5);
    let index = |name: &str| tools.iter().position(|t| t.name == name);
    say!("## 1. Uncontended `TOOL LOCK true` ({rounds} runs each, interleaved)");
    say!();
    say!("| tool | kind | median ms | p95 ms | vs flock(1) | vs lckdo | page faults |");
    say!("|---|---|---|---|---|---|---|");
    let flock = index("flock(1)").map(|i| median(i, &mut samples));
    let lckdo = index("lckdo -w").map(|i| median(i, &mut samples));
    for (i, tool) in tools.iter().enumerate() {
        let m = median(i, &mut samples);
        let p95 = percentile(&mut samples[i], 0.95);
        let ratio = |base: Option<f64>| base.map_or("-".into(), |b| format!("{:.2}", m / b));
        let kind = if tool.name == FLOOR {
            "floor: no record, no checks"
        } else if tool.fork_and_wait {
            "fork and wait"
        } else {
            "exec (cannot release)"
        };
        say!(
            "| {} | {kind} | {m:.2} | {p95:.2} | {} | {} | {:.0} |",
            tool.name,
            ratio(flock),
            ratio(lckdo),
            percentile(&mut faults[i], 0.5)
        );
    }
    let plain = median(tools.len(), &mut samples);
    say!(
        "| plain `true` | floor | {plain:.2} | {:.2} | - | - | {:.0} |",
        percentile(&mut samples[tools.len()], 0.95),
        percentile(&mut faults[tools.len()], 0.5)
    );
    say!();
    // SPEC §7: xlock's overhead over plain `true` should approach the floor's.
    let overhead: Vec<String> = ["xlock", FLOOR, "flock(1)"]
        .iter()
        .filter_map(|&name| Some(format!("{name} {:.2} ms", median(index(name)?, &mut samples) - plain)))
        .collect();
    say!("Overhead over plain `true` (medians): {}.", overhead.join(", "));
    say!();
}

/// Section 2: Hand-off latency for the fork-and-wait tools that block on a kernel lock.
/// Returns xlock's median, in ms.
fn handoff(bench: &Bench) -> f64 {
    let (dir, tools, stamp) = (&bench.dir, &bench.tools, &bench.stamp);
    let n = setting("XLOCK_BENCH_HANDOFFS", 100);
    let chosen: Vec<&Tool> = tools
        .iter()
        .filter(|t| t.name.starts_with("xlock") || t.name == "flock(1)")
        .collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); chosen.len()];
    let mut discarded = 0;
    for round in 0..n {
        for i in shuffled(chosen.len(), round) {
            let tool = chosen[i];
            let lock = dir.join(format!("handoff.{i}.lock"));
            let (end, start) = (dir.join(format!("end.{i}")), dir.join(format!("start.{i}")));
            let _ = (fs::remove_file(&end), fs::remove_file(&start));
            let holder_cmd = format!("sleep 0.02; exec '{stamp}' '{}'", end.display());
            let mut holder = tool.run(&lock, &["sh", "-c", &holder_cmd]);
            thread::sleep(Duration::from_millis(8)); // the holder gets the lock first
            let mut waiter = tool.run(&lock, &[stamp, start.to_str().unwrap()]);
            holder.wait().unwrap();
            waiter.wait().unwrap();
            match (read_stamp(&end), read_stamp(&start)) {
                (Some(e), Some(s)) if s > e => samples[i].push((s - e) as f64 / 1e6),
                _ => discarded += 1, // the waiter got there first: not a hand-off
            }
        }
    }
    say!("## 2. Hand-off: holder's command ends -> waiter's command starts ({n} each)");
    say!();
    say!("| tool | median ms | p95 ms |");
    say!("|---|---|---|");
    let mut xlock_median = f64::NAN;
    for (i, tool) in chosen.iter().enumerate() {
        let m = percentile(&mut samples[i], 0.5);
        if tool.name == "xlock" {
            xlock_median = m;
        }
        say!("| {} | {m:.2} | {:.2} |", tool.name, percentile(&mut samples[i], 0.95));
    }
    if discarded > 0 {
        say!();
        say!("({discarded} rounds discarded: the waiter started before the holder)");
    }
    say!();
    xlock_median
}

/// Section 3: Take-over: the holder's wrapper is SIGKILLed while a waiter waits.
fn takeover(bench: &Bench) {
    let (dir, tools, stamp) = (&bench.dir, &bench.tools, &bench.stamp);
    let mut rows: Vec<(String, Tool, usize, &str)> = Vec::new();
    for tool in tools {
        match tool.name {
            "xlock" | "xlock (dynamic)" => {
                let mut close = tool.clone();
                close.program.as_mut().unwrap().push("--close".into());
                rows.push((format!("{} --close", tool.name), close, 30, "sleep 3"));
                rows.push((
                    format!("{} (command gets SIGTERM)", tool.name),
                    tool.clone(),
                    30,
                    "sleep 3",
                ));
            }
            "flock(1)" | "lckdo -w" => rows.push((tool.name.to_owned(), tool.clone(), 3, "sleep 3")),
            "dotlockfile -l" => {
                let mut pid = tool.clone();
                pid.program
                    .as_mut()
                    .unwrap()
                    .extend(["-p".to_owned(), "-i".to_owned(), "1".to_owned()]);
                rows.push(("dotlockfile -l -p -i 1".into(), pid, 3, "sleep 3"));
            }
            "lockfile (procmail)" => rows.push(("lockfile (stale after its -l 2)".into(), tool.clone(), 3, "sleep 3")),
            _ => {}
        }
    }
    say!("## 3. Take-over: holder's wrapper SIGKILLed -> waiter's command starts");
    say!();
    match bench.handoff_median.get() {
        Some(median) => {
            say!("The holder's command is `sleep 3`. xlock's target: at most a hand-off ({median:.2} ms) + 1 ms.")
        }
        None => {
            say!("The holder's command is `sleep 3`. xlock's target: at most a hand-off (section 2, not run) + 1 ms.")
        }
    }
    say!();
    say!("| tool | runs | median ms | p95 ms | how the lock comes free |");
    say!("|---|---|---|---|---|");
    for (i, (name, tool, runs, holder_cmd)) in rows.into_iter().enumerate() {
        let mut samples = Vec::new();
        for round in 0..runs {
            let lock = dir.join(format!("takeover.{i}.{round}.lock"));
            let start = dir.join(format!("takeover.{i}.start"));
            let _ = fs::remove_file(&start);
            let holder_args: Vec<&str> = holder_cmd.split(' ').collect();
            let mut holder = if name.starts_with("lockfile") {
                // procmail's lockfile: -l 2 makes a lock older than 2 s stale.
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    "lockfile -1 -r -1 -l 2 \"$0\" && exec \"$@\"",
                    lock.to_str().unwrap(),
                ])
                .args(&holder_args);
                c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
            } else {
                tool.run(&lock, &holder_args)
            };
            thread::sleep(Duration::from_millis(60)); // the holder holds the lock
            let mut waiter = if name.starts_with("lockfile") {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    "lockfile -1 -r -1 -l 2 \"$0\" && { \"$@\"; rm -f \"$0\"; }",
                    lock.to_str().unwrap(),
                ])
                .args([stamp, start.to_str().unwrap()]);
                c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
            } else {
                tool.run(&lock, &[stamp, start.to_str().unwrap()])
            };
            thread::sleep(Duration::from_millis(20)); // the waiter waits
            let killed = now_ns();
            let _ = holder.kill();
            let _ = holder.wait();
            let deadline = Instant::now() + Duration::from_secs(15);
            while waiter.try_wait().unwrap().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            let _ = waiter.kill();
            let _ = waiter.wait();
            if let Some(s) = read_stamp(&start) {
                samples.push((s - killed) as f64 / 1e6);
            }
            // Let an orphaned `sleep 3` (flock, lckdo) end before the next round.
            let _ = Command::new("pkill").args(["-f", "^sleep 3$"]).status();
        }
        let how = match name.as_str() {
            n if n.contains("--close") => "xlock's flock dies with it; the command is SIGKILLed",
            n if n.starts_with("xlock") => "the command gets SIGTERM and ends; its command lock goes",
            "flock(1)" => "never while the command runs: the orphaned command keeps the lock",
            "lckdo -w" => "at once, but the orphaned command runs on: no exclusion from it",
            n if n.starts_with("dotlockfile") => "a retry (every 1 s) finds the recorded pid dead",
            _ => "forced removal once older than -l, then lockfile suspends 16 s (-s)",
        };
        if samples.is_empty() {
            say!("| {name} | {runs} | - | - | {how} (not within 15 s) |");
        } else {
            let (m, p95) = (percentile(&mut samples, 0.5), percentile(&mut samples, 0.95));
            say!("| {name} | {runs} | {m:.2} | {p95:.2} | {how} |");
        }
    }
    say!();
}

/// Section 5: Peak RSS of the wrapper process, from wait4 in a small C parent.
fn peak_rss(bench: &Bench, rss: &Path) {
    let (dir, tools) = (&bench.dir, &bench.tools);
    say!("## 5. Peak RSS of the wrapper running `true` (max of 20 runs, wait4 from a small C parent)");
    say!();
    let floor = Command::new(rss).arg("true").output().unwrap();
    say!(
        "The floor (the C parent's own pages, counted before exec): `true` alone shows {} KiB.",
        String::from_utf8_lossy(&floor.stdout).trim()
    );
    say!();
    say!("| tool | peak RSS KiB |");
    say!("|---|---|");
    for (i, tool) in tools.iter().enumerate() {
        let lock = dir.join(format!("rss.{i}.lock"));
        let mut peak = 0u64;
        for _ in 0..20 {
            let command = tool.command(&lock, &["true"]);
            let out = Command::new(rss)
                .arg(command.get_program())
                .args(command.get_args())
                .stderr(Stdio::null())
                .output()
                .unwrap();
            peak = peak.max(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0));
        }
        say!("| {} | {peak} |", tool.name);
    }
    say!();
}
