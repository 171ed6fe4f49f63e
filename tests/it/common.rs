//! Helpers shared by the integration tests: they drive the real `xlock` binary.
//! What a process is doing is read through the library's own /proc reader
//! (`xlock::liveness::proc_stat`), and lock records are `xlock::record::Record`s.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
pub use xlock::liveness::proc_stat;
pub use xlock::record::Record;

/// The binary under test.
pub fn xlock_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xlock"))
}

/// `xlock ARGS...` as a std Command.
pub fn xlock<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(xlock_bin());
    command.args(args);
    command
}

/// A temporary directory holding one lock, removed at the end of the test.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The lock path used by most tests.
    pub fn lock(&self) -> PathBuf {
        self.path("test.lock")
    }

    /// Names in the directory, sorted.
    pub fn entries(&self) -> Vec<String> {
        entries(self.dir.path())
    }

    /// Kind, mode and contents of everything in the directory (recursively), to show
    /// that nothing changed.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        snapshot(self.dir.path())
    }
}

pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let kind = meta.file_type();
        let what = if kind.is_symlink() {
            format!("link -> {}", fs::read_link(&path).unwrap().display())
        } else if kind.is_dir() {
            out.extend(snapshot(&path));
            "dir".to_owned()
        } else if kind.is_file() {
            format!("file {:?}", fs::read(&path).unwrap())
        } else if kind.is_fifo() {
            "fifo".to_owned()
        } else {
            format!("special {:x}", meta.rdev())
        };
        out.insert(
            path,
            format!(
                "{what} mode {:o} ino {} mtime {}",
                meta.mode(),
                meta.ino(),
                meta.mtime_nsec()
            ),
        );
    }
    out
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// A shell snippet that appends `WORD <pid> <ns>` to LOG.
pub fn stamp(word: &str, log: &Path) -> String {
    format!("echo \"{word} $$ $(date +%s%N)\" >> '{}'", log.display())
}

/// One line of a stamp log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub word: String,
    pub pid: u32,
    pub ns: u128,
}

pub fn read_stamps(log: &Path) -> Vec<Stamp> {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.split_whitespace();
            Stamp {
                word: parts.next().expect("word").to_owned(),
                pid: parts.next().expect("pid").parse().expect("pid"),
                ns: parts.next().expect("ns").parse().expect("ns"),
            }
        })
        .collect()
}

/// Asserts that critical sections, logged as `B pid` / `E pid` pairs, never
/// overlapped: the log strictly alternates B and E of the same process. Returns how
/// many sections there were.
pub fn assert_sections_never_overlap(log: &Path) -> usize {
    let stamps = read_stamps(log);
    assert!(
        stamps.len().is_multiple_of(2),
        "unfinished section at the end of {stamps:?}"
    );
    for (i, pair) in stamps.chunks(2).enumerate() {
        assert!(
            pair[0].word == "B" && pair[1].word == "E" && pair[0].pid == pair[1].pid,
            "sections overlapped at section {i}: {:?}\nfull log: {stamps:#?}",
            pair
        );
    }
    stamps.len() / 2
}

/// A started process whose stdout is read line by line, to learn when its command
/// has started (and so holds the lock).
pub struct Running {
    pub child: Child,
    lines: BufReader<ChildStdout>,
}

impl Running {
    /// Starts `command` with stdout piped, and stdin piped and kept open (so a `read`
    /// in the command blocks until the test lets it go).
    pub fn start(mut command: Command) -> Running {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = BufReader::new(child.stdout.take().unwrap());
        Running { child, lines }
    }

    /// Waits for the next line on its stdout.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).expect("read line");
        assert!(!line.is_empty(), "process ended before printing a line");
        line.trim_end().to_owned()
    }

    /// Everything else it prints, until it closes its stdout.
    pub fn rest(&mut self) -> String {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.lines, &mut rest).expect("read stdout");
        rest
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn kill(&mut self, signal: Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("kill");
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }

    /// Closes its stdin: a `read _` in its command returns (a holder started with
    /// `hold(.., "read _; exit 0")` releases the lock).
    pub fn release(&mut self) {
        drop(self.child.stdin.take());
    }
}

/// Starts an xlock holding `lock` with `command` (a shell snippet, run with sh -c
/// after printing `started`), and returns once the command runs.
pub fn hold(extra: &[&str], lock: &Path, command: &str) -> Running {
    Mode::Unnamed.hold(extra, lock, command)
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Ok(Some((_, state))) if state != 'Z' && state != 'X')
}

/// The live processes (not zombies) whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(needle) && process_alive(pid)
        })
        .collect()
}

/// Waits until `cond` holds, for at most `limit`: for conditions that another process
/// brings about in its own time (a process exiting after SIGKILL). Panics on timeout.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until process `pid` waits for the lock now at `lock`: it has that file open
/// and sleeps in a system call that waits (a lock call, poll, or a sleep between
/// polls), as /proc/PID/syscall shows. Panics after 10 s, saying what it saw.
pub fn wait_until_waiting(pid: i32, lock: &Path) {
    let holders_file = fs::metadata(lock)
        .unwrap_or_else(|err| panic!("{}: {err}", lock.display()))
        .ino();
    wait_until_waiting_on(pid, holders_file, lock);
}

/// [`wait_until_waiting`] on the file with inode `holders_file` (which may no longer
/// be at `lock`: a released file that waiters still sleep on).
pub fn wait_until_waiting_on(pid: i32, holders_file: u64, lock: &Path) {
    let call = || fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let end = Instant::now() + Duration::from_secs(10);
    while !waits_on(pid, holders_file) {
        assert!(
            Instant::now() < end,
            "timed out waiting until pid {pid} waits for {}: its system call is {:?}, {}",
            lock.display(),
            call().trim(),
            if has_open(pid, holders_file) {
                "it has the lock file open"
            } else {
                "it does not have the lock file open"
            }
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether process `pid` has the file with inode `ino` open and sleeps in a system
/// call that waits (a lock call, poll, or a sleep between polls).
pub fn waits_on(pid: i32, ino: u64) -> bool {
    use nix::libc;
    #[allow(unused_mut)] // poll(2) exists on some architectures only
    let mut waiting_calls = vec![
        libc::SYS_flock,
        libc::SYS_fcntl,
        libc::SYS_ppoll,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
    ];
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    waiting_calls.push(libc::SYS_poll);
    let blocked_in = fs::read_to_string(format!("/proc/{pid}/syscall"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|nr| nr.parse::<libc::c_long>().ok());
    blocked_in.is_some_and(|nr| waiting_calls.contains(&nr)) && has_open(pid, ino)
}

/// Whether process `pid` has the file with inode `ino` open.
pub fn has_open(pid: i32, ino: u64) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten()
            .any(|fd| fs::metadata(fd.path()).is_ok_and(|m| m.ino() == ino))
    })
}

/// A file as /proc/locks names it: `MAJOR:MINOR:INODE`, in hex but for the inode.
fn proc_locks_id(dev: u64, ino: u64) -> String {
    use nix::sys::stat::{major, minor};
    format!("{:02x}:{:02x}:{ino}", major(dev), minor(dev))
}

/// The file at `path`: (device as /proc/locks writes it, inode).
pub fn file_key(path: &Path) -> (String, u64) {
    let meta = fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    (proc_locks_id(meta.dev(), meta.ino()), meta.ino())
}

/// The PIDs that hold (not wait for) a flock on the file `key`, from /proc/locks.
pub fn flock_holders(key: &str) -> Vec<i32> {
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter_map(|line| {
            // "3: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF"; a waiter's line has
            // "->" before FLOCK.
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&key))
                .then(|| fields[4].parse().ok())
                .flatten()
        })
        .collect()
}

/// The children of process `pid` (none if it is gone).
pub fn children_of(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// What still holds the files in `dir` (and its subdirectories): the lines of
/// /proc/locks on them (flock, OFD and POSIX locks), and `pid P has PATH open` for
/// each process (this one included) with one of them open. A process that is exiting
/// has lost its command line (`processes_naming`) before its descriptors, and keeps
/// its locks a moment longer than its descriptors: this sees both.
pub fn held_in(dir: &Path) -> Vec<String> {
    fn files(dir: &Path, out: &mut Vec<(PathBuf, u64, u64)>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                files(&entry.path(), out);
            } else {
                out.push((entry.path(), meta.dev(), meta.ino()));
            }
        }
    }
    let mut found = Vec::new();
    files(dir, &mut found);
    let ids: Vec<String> = found.iter().map(|(_, dev, ino)| proc_locks_id(*dev, *ino)).collect();
    let mut held: Vec<String> = fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.split_whitespace().any(|field| ids.iter().any(|id| id == field)))
        .map(|line| format!("/proc/locks: {line}"))
        .collect();
    for proc_entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        for fd in fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
            let Ok(meta) = fs::metadata(fd.path()) else { continue };
            if let Some((path, ..)) = found
                .iter()
                .find(|(_, dev, ino)| (*dev, *ino) == (meta.dev(), meta.ino()))
            {
                held.push(format!("pid {pid} has {} open", path.display()));
            }
        }
    }
    held
}

/// Whether this process runs as root (some cases need to drop privileges).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// setpriv(1)'s arguments that make root's command run as user nobody (uid and gid
/// 65534, no supplementary groups); setpriv execs the command: the same process.
pub const AS_NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// `xlock ARGS...` in mode `t` as user nobody: root drops privileges.
pub fn as_nobody(t: Mode, args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command.args(AS_NOBODY).arg(xlock_bin()).args(args);
    t.apply(&mut command);
    command
}

/// How the xlock under test works: the default (O_TMPFILE where the file system has
/// it), forced named temp files (`XLOCK_NAMED_TEMP=1`, the path taken on file systems
/// without O_TMPFILE), or forced no-locks mode (`XLOCK_NO_KERNEL_LOCKS=1`, the path
/// taken on file systems that refuse locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Unnamed,
    Named,
    NoLocks,
}

impl Mode {
    pub fn xlock<I, S>(self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = xlock(args);
        self.apply(&mut command);
        command
    }

    /// Sets this mode's environment on a command that runs xlock.
    pub fn apply(self, command: &mut Command) -> &mut Command {
        command
            .env_remove("XLOCK_NAMED_TEMP")
            .env_remove("XLOCK_NO_KERNEL_LOCKS");
        match self {
            Mode::Unnamed => command,
            Mode::Named => command.env("XLOCK_NAMED_TEMP", "1"),
            Mode::NoLocks => command.env("XLOCK_NO_KERNEL_LOCKS", "1"),
        }
    }

    /// As [`hold`], in this mode.
    pub fn hold(self, extra: &[&str], lock: &Path, command: &str) -> Running {
        self.hold_script(extra, lock, &format!("echo started; {command}"))
    }

    /// Starts xlock on `lock` with `script` (for sh -c), which must print `started` once
    /// it is ready; returns then.
    pub fn hold_script(self, extra: &[&str], lock: &Path, script: &str) -> Running {
        self.hold_command(self.hold_args(extra, lock, script))
    }

    /// `xlock EXTRA... LOCK -c SCRIPT` in this mode, not yet started.
    pub fn hold_args(self, extra: &[&str], lock: &Path, script: &str) -> Command {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.push(lock.display().to_string());
        args.push("-c".into());
        args.push(script.to_owned());
        self.xlock(&args)
    }

    /// Starts `command` (from [`Mode::hold_args`]) and returns once it printed `started`.
    pub fn hold_command(self, command: Command) -> Running {
        let mut running = Running::start(command);
        assert_eq!(running.line(), "started");
        running
    }
}

impl Mode {
    /// Leaves a stale lock at `lock`: its holder xlock (with --close, so no command tree
    /// survives it) is SIGKILLed. Returns the dead holder's PID.
    pub fn make_stale(self, lock: &Path) -> u32 {
        let mut holder = self.hold(&["--close"], lock, "exec sleep 30");
        let pid = holder.child.id();
        holder.kill(Signal::SIGKILL);
        holder.wait();
        pid
    }
}

/// Waits for xlocks started with `-v` and stderr piped; asserts each succeeded, and
/// returns how many took a stale lock over.
pub fn count_takeovers(waiters: Vec<Child>) -> usize {
    let mut takeovers = 0;
    for waiter in waiters {
        let out = waiter.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{:?}: {stderr}", out.status);
        takeovers += stderr.matches("took over stale").count();
    }
    takeovers
}

/// Defines each listed `fn name(mode: Mode)` as three tests, one per [`Mode`].
/// (`#[macro_use]` on `mod common` in main.rs makes it visible to every module.)
macro_rules! tests_in_every_mode {
    ($($name:ident),* $(,)?) => {
        mod unnamed_tmpfile {
            $( #[test] fn $name() { super::$name($crate::common::Mode::Unnamed) } )*
        }
        mod named_temp {
            $( #[test] fn $name() { super::$name($crate::common::Mode::Named) } )*
        }
        mod no_kernel_locks {
            $( #[test] fn $name() { super::$name($crate::common::Mode::NoLocks) } )*
        }
    };
}

/// The Python 3 interpreter itself: `python3` on PATH may be a wrapper (pyenv's shim
/// is a bash script) that costs more than the interpreter's own start-up, which the
/// field tests pay hundreds of times. Asked once.
pub fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("the tests need python3 on PATH");
        let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(
            out.status.success() && !path.is_empty(),
            "python3 does not say where it is"
        );
        path
    })
}

/// The signal reporter (tests/helpers/sigreport.py), as a command line.
pub fn sigreport() -> [String; 2] {
    [
        python().into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/sigreport.py").into(),
    ]
}

/// The parent PID of a process (the `PPid:` line of /proc/PID/status).
pub fn parent_of(pid: i32) -> i32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .unwrap_or_else(|| panic!("no PPid in /proc/{pid}/status: {status}"))
        .trim()
        .parse()
        .unwrap()
}

/// The state letter of a process (R, S, T, Z...).
pub fn state_of(pid: i32) -> char {
    proc_stat(pid)
        .unwrap_or_else(|err| panic!("/proc/{pid}/stat: {err}"))
        .unwrap_or_else(|| panic!("process {pid} does not exist"))
        .1
}

/// Field 22 of /proc/PID/stat (the start time a record carries), if the process exists.
pub fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).ok().flatten().map(|(start, _)| start)
}

/// Runs `script` with sh in a new user and mount namespace, where it is root and may
/// mount a tmpfs of its own; `$0` is the xlock binary. `Err` says why that is not
/// possible on this machine (no user namespaces, no unshare).
pub fn in_mount_namespace(script: &str) -> Result<std::process::Output, String> {
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
        .arg(xlock_bin())
        .output()
        .map_err(|err| format!("cannot run unshare (util-linux): {err}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.starts_with("unshare: ") {
        return Err(format!("this machine does not allow user namespaces: {stderr}"));
    }
    Ok(out)
}

/// A small xorshift generator: random enough to pick victims and pauses.
pub struct Random(pub u64);

impl Random {
    /// Seeded from the clock.
    pub fn new() -> Random {
        Random(now_ns() as u64 | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A lock record naming process `pid` (with its true start time, if it runs) of this
/// host, boot and PID namespace, acquired now: as another xlock would have written
/// it (SPEC §4.1), to plant at LOCK. Tests then change fields to play other hosts,
/// boots and namespaces; what xlock makes of it is the evidence table under test.
pub fn record_of(pid: i32) -> Record {
    Record {
        xlock: 1, // the protocol version (SPEC §4.1)
        pid,
        start: start_time(pid).unwrap_or(1),
        pidns: fs::read_link("/proc/self/ns/pid")
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        boot: fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
            .to_owned(),
        host: nix::unistd::gethostname().unwrap().to_string_lossy().into_owned(),
        nonce: format!("{:032x}", now_ns()),
        since: rfc3339(SystemTime::now()),
        cmd: "planted by a test".to_owned(),
        mode: None,
        slots: None,
        slot: None,
    }
}

/// A time as a record's `since` field.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Planting records: what tests do with them beyond `Record`'s own methods.
pub trait Plant {
    /// The record's line, as xlock writes it.
    fn text(&self) -> String;
    /// Writes the record at `path`.
    fn plant(&self, path: &Path);
}

impl Plant for Record {
    fn text(&self) -> String {
        String::from_utf8(self.to_line()).unwrap()
    }

    fn plant(&self, path: &Path) {
        fs::write(path, self.to_line()).unwrap();
    }
}

/// The record at `path`, parsed as xlock parses it.
pub fn read_record(path: &Path) -> Record {
    let bytes = fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    Record::parse(&bytes)
        .unwrap_or_else(|why| panic!("{}: {why}: {:?}", path.display(), String::from_utf8_lossy(&bytes)))
}

/// The PID of a process that has ended and been reaped.
pub fn dead_pid() -> i32 {
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id() as i32
}

/// Sets the file's mtime (the heartbeat) to `age` ago.
pub fn set_age(path: &Path, age: Duration) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}
/// Every process now: (PID, parent PID, start time), from /proc/*/stat.
pub fn process_table() -> Vec<(i32, i32, u64)> {
    let mut table = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if let (Some(ppid), Some(start)) = (
            fields.get(1).and_then(|f| f.parse().ok()),
            fields.get(19).and_then(|f| f.parse().ok()),
        ) {
            table.push((pid, ppid, start));
        }
    }
    table
}

/// Sends `signal` to process `pid` only if it is still the process that started at
/// `start`: through a pidfd opened first, so a PID reused in between is never hit.
pub fn signal_exact(pid: i32, start: u64, signal: Signal) -> bool {
    use rustix::process::{pidfd_open, pidfd_send_signal, PidfdFlags};
    let Some(pidfd) = rustix::process::Pid::from_raw(pid).and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok())
    else {
        return false;
    };
    if start_time(pid) != Some(start) {
        return false; // the pidfd may name a newer process with that PID
    }
    rustix::process::Signal::from_named_raw(signal as i32)
        .is_some_and(|signal| pidfd_send_signal(&pidfd, signal).is_ok())
}

/// Stress tests: starts `command` (an xlock) with its PID in `live` (the killer's
/// victims), waits for its exit without reaping it, so that a killer holding `live`'s
/// mutex never hits a reused PID, then reaps it.
pub fn run_as_victim(
    live: &std::sync::Mutex<std::collections::HashSet<i32>>,
    command: &mut Command,
) -> std::process::ExitStatus {
    run_as_victim_with_pid(live, command).1
}

/// [`run_as_victim`], also saying which PID the xlock had.
pub fn run_as_victim_with_pid(
    live: &std::sync::Mutex<std::collections::HashSet<i32>>,
    command: &mut Command,
) -> (i32, std::process::ExitStatus) {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let mut child = {
        let mut live = live.lock().unwrap();
        let child = command.spawn().unwrap();
        live.insert(child.id() as i32);
        child
    };
    let pid = Pid::from_raw(child.id() as i32);
    waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).unwrap();
    live.lock().unwrap().remove(&pid.as_raw());
    (pid.as_raw(), child.wait().unwrap())
}

/// The kinds of line that `-v` prints on a run that went well.
pub const VERBOSE_LINES: &[&str] = &["waiting for", "acquired", "released", "took over stale"];

/// Stress tests: an xlock that was not killed ran its section and exited 0; else the
/// test fails naming its status and xlock's own errors: the lines of the shared `-v`
/// log `messages` that are none of the `expected` kinds.
pub fn assert_ran(status: std::process::ExitStatus, messages: &Path, expected: &[&str]) {
    if !status.success() {
        let errors = unexpected_lines(messages, expected);
        panic!("an xlock that was not killed failed: {status:?}; its errors: {errors:?}");
    }
}

/// Stress tests: the lines of a shared `-v` log that are none of the `expected` kinds
/// (xlock's errors), for the message of a run that failed.
fn unexpected_lines(log: &Path, expected: &[&str]) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| !expected.iter().any(|e| line.contains(e)))
        .map(str::to_owned)
        .collect()
}

/// Bad input: asserts the one-line `xlock: ...` error of exit 125, containing each of `needles`; returns it.
pub fn assert_fails(out: &std::process::Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(stderr.starts_with("xlock: ") && stderr.ends_with('\n'), "{stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
    assert!(out.stdout.is_empty(), "the command must not run");
    stderr
}
