//! The workloads of the field cases (SPEC §8), one process per call, for
//! tests/field.rs to run under xlock (and, to show the test can fail, without it).
//!
//!     fieldcase sqlite-init DB               WAL + schema, as every worker does at start
//!     fieldcase sqlite-write DB WORKER SEQ   one write transaction
//!     fieldcase sqlite-check DB              mode=... rows=... distinct=... integrity=...
//!     fieldcase json-append INDEX ENTRY      read the JSON index, add ENTRY, write it back
//!     fieldcase journal-append FILE WRITER COUNT   COUNT multi-line entries, line by line
//!     fieldcase section LOG                  `B pid`, a few ms of work, `E pid`
//!
//! SQLite's busy timeout is 0, so contention shows as "database is locked" instead of
//! being waited out: only xlock keeps the workers apart.

use std::error::Error;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["sqlite-init", db] => sqlite_init(db),
        ["sqlite-write", db, worker, seq] => sqlite_write(db, worker.parse().unwrap(), seq.parse().unwrap()),
        ["sqlite-check", db] => sqlite_check(db),
        ["json-append", index, entry] => json_append(index, entry),
        ["journal-append", file, writer, count] => journal_append(file, writer, count.parse().unwrap()),
        ["section", log] => section(log),
        _ => Err(format!("usage: see the top of {}", file!()).into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fieldcase {}: {err}", args.join(" "));
            ExitCode::FAILURE
        }
    }
}

fn open(db: &str) -> Result<Connection> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::ZERO)?;
    Ok(conn)
}

fn sqlite_init(db: &str) -> Result<()> {
    let conn = open(db)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if mode != "wal" {
        return Err(format!("journal_mode is {mode}, not wal").into());
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS items (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             worker INTEGER NOT NULL,
             seq INTEGER NOT NULL,
             UNIQUE (worker, seq));
         CREATE INDEX IF NOT EXISTS items_by_worker ON items (worker);",
    )?;
    Ok(())
}

fn sqlite_write(db: &str, worker: i64, seq: i64) -> Result<()> {
    let mut conn = open(db)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let before: i64 = tx.query_row("SELECT count(*) FROM items", [], |row| row.get(0))?;
    tx.execute("INSERT INTO items (worker, seq) VALUES (?1, ?2)", [worker, seq])?;
    let after: i64 = tx.query_row("SELECT count(*) FROM items", [], |row| row.get(0))?;
    if after != before + 1 {
        return Err(format!("count went from {before} to {after}").into());
    }
    tx.commit()?;
    Ok(())
}

fn sqlite_check(db: &str) -> Result<()> {
    let conn = open(db)?;
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
    let rows: i64 = conn.query_row("SELECT count(*) FROM items", [], |row| row.get(0))?;
    let distinct: i64 = conn.query_row(
        "SELECT count(*) FROM (SELECT DISTINCT worker, seq FROM items)",
        [],
        |row| row.get(0),
    )?;
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    println!("mode={mode} rows={rows} distinct={distinct} integrity={integrity}");
    Ok(())
}

/// The hand-rolled read-modify-write that loses updates without a lock. The pause
/// between read and write stands for the work a real program does there.
fn json_append(index: &str, entry: &str) -> Result<()> {
    let mut entries: Vec<String> = match fs::read_to_string(index) {
        Ok(text) if !text.trim().is_empty() => serde_json::from_str(&text)?,
        Ok(_) => Vec::new(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err.into()),
    };
    thread::sleep(Duration::from_millis(30));
    entries.push(entry.to_owned());
    fs::write(index, serde_json::to_string(&entries)?)?;
    Ok(())
}

/// Appends entries of four lines, one write per line with a short pause between, as
/// a logger that formats as it goes would.
fn journal_append(file: &str, writer: &str, count: usize) -> Result<()> {
    let mut journal = OpenOptions::new().create(true).append(true).open(file)?;
    for i in 0..count {
        for line in [
            format!("BEGIN {writer} {i}\n"),
            format!("  data {writer} {i} a\n"),
            format!("  data {writer} {i} b\n"),
            format!("END {writer} {i}\n"),
        ] {
            journal.write_all(line.as_bytes())?;
            thread::sleep(Duration::from_micros(50));
        }
    }
    Ok(())
}

/// A critical section: `B pid`, about 2 ms of work, `E pid`.
fn section(log: &str) -> Result<()> {
    let pid = std::process::id();
    let mut out = OpenOptions::new().create(true).append(true).open(log)?;
    writeln!(out, "B {pid} 0")?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2) {
        std::hint::spin_loop();
    }
    writeln!(out, "E {pid} 0")?;
    Ok(())
}
