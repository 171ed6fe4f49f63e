"""The workloads of the field cases (SPEC §8), one process per call, for
tests/it/field.rs to run under xlock (and, to show the test can fail, without it).

    fieldcase.py sqlite-init DB               WAL + schema, as every worker does at start
    fieldcase.py sqlite-write DB WORKER SEQ   one write transaction
    fieldcase.py sqlite-check DB              mode=... rows=... distinct=... integrity=...
    fieldcase.py json-append INDEX ENTRY      read the JSON index, add ENTRY, write it back
    fieldcase.py journal-append FILE WRITER COUNT   COUNT multi-line entries, line by line
    fieldcase.py section LOG                  `B pid`, a few ms of work, `E pid`

SQLite's busy timeout is 0, so contention shows as "database is locked" instead of
being waited out: only xlock keeps the workers apart. Python's own sqlite3 module is
used, so that no Rust build compiles SQLite; modules are imported by the sub-command
that needs them, to keep start-up short (the tests start hundreds of these).
"""
import os
import sys
import time


def connect(db):
    import sqlite3

    # timeout=0: no busy waiting. isolation_level=None: no implicit transactions,
    # each statement is its own unless a BEGIN says otherwise.
    return sqlite3.connect(db, timeout=0, isolation_level=None)


def sqlite_init(db):
    conn = connect(db)
    (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
    if mode != "wal":
        raise RuntimeError(f"journal_mode is {mode}, not wal")
    conn.executescript(
        """CREATE TABLE IF NOT EXISTS items (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               worker INTEGER NOT NULL,
               seq INTEGER NOT NULL,
               UNIQUE (worker, seq));
           CREATE INDEX IF NOT EXISTS items_by_worker ON items (worker);"""
    )
    conn.close()


def sqlite_write(db, worker, seq):
    conn = connect(db)
    conn.execute("BEGIN IMMEDIATE")
    (before,) = conn.execute("SELECT count(*) FROM items").fetchone()
    conn.execute("INSERT INTO items (worker, seq) VALUES (?, ?)", (int(worker), int(seq)))
    (after,) = conn.execute("SELECT count(*) FROM items").fetchone()
    if after != before + 1:
        raise RuntimeError(f"count went from {before} to {after}")
    conn.execute("COMMIT")
    conn.close()


def sqlite_check(db):
    conn = connect(db)
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    (rows,) = conn.execute("SELECT count(*) FROM items").fetchone()
    (distinct,) = conn.execute("SELECT count(*) FROM (SELECT DISTINCT worker, seq FROM items)").fetchone()
    (integrity,) = conn.execute("PRAGMA integrity_check").fetchone()
    print(f"mode={mode} rows={rows} distinct={distinct} integrity={integrity}")
    conn.close()


def json_append(index, entry):
    """The hand-rolled read-modify-write that loses updates without a lock. The
    pause between read and write stands for the work a real program does there."""
    import json

    try:
        with open(index) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    entries = json.loads(text) if text.strip() else []
    time.sleep(0.030)
    entries.append(entry)
    with open(index, "w") as f:
        f.write(json.dumps(entries))


def journal_append(path, writer, count):
    """Appends entries of four lines, one write per line with a short pause between,
    as a logger that formats as it goes would."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for i in range(int(count)):
        for line in (f"BEGIN {writer} {i}\n", f"  data {writer} {i} a\n", f"  data {writer} {i} b\n", f"END {writer} {i}\n"):
            os.write(fd, line.encode())
            time.sleep(0.000050)
    os.close(fd)


def section(log):
    """A critical section: `B pid`, about 2 ms of work, `E pid`."""
    pid = os.getpid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"B {pid} 0\n".encode())
    end = time.monotonic() + 0.002
    while time.monotonic() < end:
        pass
    os.write(fd, f"E {pid} 0\n".encode())
    os.close(fd)


COMMANDS = {
    "sqlite-init": (sqlite_init, 1),
    "sqlite-write": (sqlite_write, 3),
    "sqlite-check": (sqlite_check, 1),
    "json-append": (json_append, 2),
    "journal-append": (journal_append, 3),
    "section": (section, 1),
}


def barrier(directory):
    """FIELDCASE_BARRIER=DIR: say "ready" (DIR/ready.PID), then wait for DIR/go, so
    that workers started without a lock begin their work together however long each
    took to start (the tests' control runs, which must show the collision)."""
    with open(os.path.join(directory, f"ready.{os.getpid()}"), "w"):
        pass
    go = os.path.join(directory, "go")
    give_up = time.monotonic() + 120  # never outlive a test that died
    while not os.path.exists(go):
        if time.monotonic() > give_up:
            raise SystemExit(f"fieldcase: {go} never appeared")
        time.sleep(0.0005)


def main(args):
    command = COMMANDS.get(args[0]) if args else None
    if command is None or len(args) - 1 != command[1]:
        print(f"usage: see the top of {__file__}", file=sys.stderr)
        return 2
    if os.environ.get("FIELDCASE_BARRIER"):
        barrier(os.environ["FIELDCASE_BARRIER"])
    try:
        command[0](*args[1:])
    except Exception as err:  # noqa: BLE001 - every failure is reported the same way
        print(f"fieldcase {' '.join(args)}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
