//! `--status` (SPEC §2, §3): what each LOCK's [`State`] looks like to the user, as a
//! line or a JSON object on stdout, and how it bears on the exit status.
//!
//! The state itself comes from the lock's kind (`lock::Kind::inspect`); this module
//! only renders it. A state lists its holders: one for the exclusive file lock, each
//! of them for shared locks and slots (SPEC §9).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::escape;
use crate::lock::{Holder, HolderState, State};
use crate::record::Record;
use crate::report::{age, compact, error};

/// How a `--status` line bears on the exit status (the worst one wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Free,
    Held,
    Error,
}

/// Prints what `--status` found for one lock: a line (one per holder), or one JSON
/// object (one per holder), on stdout (an error also on stderr). Says how it bears on
/// the exit status: the worst of its holders. An error writing stdout is returned.
pub fn print_state(lock: &Path, state: &anyhow::Result<State>, json: bool) -> std::io::Result<Verdict> {
    let shown = escape::path(lock);
    let lines: Vec<(Verdict, String, Value)> = match state {
        Ok(State::Free) => vec![(Verdict::Free, format!("{shown}: free"), json!({"state": "free"}))],
        Ok(State::Holders(holders)) => holders.iter().map(|holder| holder_line(&shown, holder)).collect(),
        Ok(State::HeldByOther(what, waiters)) => std::iter::once((
            Verdict::Held,
            format!("{shown}: held by a client that is not xlock: {}", escape::text(what)),
            json!({"state": "held", "holder": what}),
        ))
        .chain(waiters.iter().map(|waiter| holder_line(&shown, waiter)))
        .collect(),
        Ok(State::Foreign(why)) => vec![(
            Verdict::Error,
            format!("{shown}: foreign file: {}; not an xlock lock file", escape::text(why)),
            json!({"state": "foreign", "reason": why}),
        )],
        Err(err) => {
            error(err);
            vec![(
                Verdict::Error,
                String::new(),
                json!({"state": "error", "error": format!("{err:#}")}),
            )]
        }
    };
    let mut out = std::io::stdout().lock();
    let mut worst = Verdict::Free;
    for (verdict, text, mut object) in lines {
        worst = worst.max(verdict);
        if json {
            if let Some(map) = object.as_object_mut() {
                // JSON strings are Unicode: a path that is not UTF-8 comes as bytes too.
                map.insert("lock".into(), lock.to_string_lossy().into());
                if lock.to_str().is_none() {
                    map.insert("lock_bytes".into(), lock.as_os_str().as_bytes().into());
                }
            }
            writeln!(out, "{}", escape::json(&object.to_string()))?;
        } else if !text.is_empty() {
            writeln!(out, "{}", escape::text(&text))?;
        }
    }
    out.flush()?;
    Ok(worst)
}

/// One holder of the lock `shown`: its verdict, line and JSON object.
fn holder_line(shown: &str, holder: &Holder) -> (Verdict, String, Value) {
    let record = &holder.record;
    // A shared holder's or slot holder's line says which (SPEC §9); an exclusive
    // holder's is as it always was.
    let how = match (record.mode.as_deref(), record.slots, record.slot) {
        (Some(_), Some(n), Some(k)) => format!(" (slot {k} of {n})"),
        (Some(_), Some(n), None) => format!(" (for one of {n} slots)"),
        (Some(mode), None, _) => format!(" ({})", escape::text(mode)),
        (None, ..) => String::new(),
    };
    match &holder.state {
        HolderState::NextInLine => {
            let object = record_object(record, "waiting");
            let wants = if how.is_empty() { " (exclusive)".to_owned() } else { how };
            (
                Verdict::Held,
                format!("{shown}: next in line{wants}: {}", waiter(record)),
                Value::Object(object),
            )
        }
        HolderState::Held { orphans } => {
            let mut object = record_object(record, "held");
            let since = match age(record) {
                Some(age) => format!("since {} (for {})", record.since, compact(age)),
                None => format!("since {}", escape::text(&record.since)),
            };
            let host = escape::text(&record.host);
            let cmd = escape::text(&record.cmd);
            object.insert("holder_alive".into(), orphans.is_empty().into());
            let text = if orphans.is_empty() {
                format!("{shown}: held{how} by pid {} (host {host}) {since}: {cmd}", record.pid)
            } else {
                let pids: Vec<i32> = orphans.iter().map(|(pid, _)| *pid).collect();
                object.insert("command_pids".into(), pids.into());
                let running: Vec<String> = orphans
                    .iter()
                    .map(|(pid, name)| format!("pid {pid} ({})", escape::text(name)))
                    .collect();
                format!(
                    "{shown}: held{how} by the command of pid {} (host {host}) {since}: {cmd}; that xlock has ended, but processes of its command still hold the lock: {}",
                    record.pid,
                    running.join(", ")
                )
            };
            (Verdict::Held, text, Value::Object(object))
        }
        HolderState::Stale { why, blocked: None } => {
            let mut object = record_object(record, "stale");
            object.insert("stale_because".into(), why.to_string().into());
            (
                Verdict::Free,
                format!(
                    "{shown}: stale{how} (holder pid {} {why}): the next acquirer takes it over",
                    record.pid
                ),
                Value::Object(object),
            )
        }
        HolderState::Waiting { position } => {
            let mut object = record_object(record, "waiting");
            object.insert("position".into(), (*position).into());
            (
                Verdict::Held,
                format!("{shown}: waiting ({position} in line): {}", waiter(record)),
                Value::Object(object),
            )
        }
        // A run by this user would fail (exit 125): so does its status.
        HolderState::Stale {
            why,
            blocked: Some(blocked),
        } => {
            let mut object = record_object(record, "stale");
            object.insert("stale_because".into(), why.to_string().into());
            object.insert("takeover_blocked".into(), blocked.clone().into());
            (
                Verdict::Error,
                format!(
                    "{shown}: stale (holder pid {} {why}), but this user cannot take it over: {blocked}",
                    record.pid
                ),
                Value::Object(object),
            )
        }
    }
}

/// A waiter as its line names it: the gate's holder next in line, or one in etcd's queue.
fn waiter(record: &Record) -> String {
    format!(
        "pid {} (host {}) since {}: {}",
        record.pid,
        escape::text(&record.host),
        escape::text(&record.since),
        escape::text(&record.cmd)
    )
}

fn record_object(record: &Record, state: &str) -> Map<String, Value> {
    let mut object = match serde_json::to_value(record) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    object.insert("state".into(), state.into());
    if let Some(age) = age(record) {
        object.insert("held_for_seconds".into(), age.as_secs().into());
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_order_by_severity() {
        assert!(Verdict::Free < Verdict::Held && Verdict::Held < Verdict::Error);
    }
}
