//! The holder record (SPEC §4.1): the one line of JSON that a lock file carries,
//! written completely before the file appears at LOCK and never changed afterwards.
//!
//! Anything at LOCK that does not parse as such a record is *foreign*: xlock never
//! writes to, renames over or deletes it. This module says whether bytes are a
//! record, and if not, why not, in words a user can act on.

use std::ffi::{OsStr, OsString};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest record xlock writes or accepts.
pub(crate) const MAX_LEN: usize = 4096;
/// Every record starts with these bytes.
const MAGIC: &[u8] = br#"{"xlock":"#;
/// The protocol version written into `"xlock"`.
const VERSION: u32 = 1;
/// `cmd` is cut to this many bytes.
const MAX_CMD: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub xlock: u32,
    /// The holder's xlock process.
    pub pid: i32,
    /// Its start time (field 22 of /proc/PID/stat), so a recycled PID is not it.
    pub start: u64,
    /// Its PID namespace: the PID means something only inside it.
    pub pidns: String,
    /// The boot id of the kernel it runs on.
    pub boot: String,
    pub host: String,
    /// 128 random bits, unique to this acquisition.
    pub nonce: String,
    /// When the lock was acquired, RFC 3339 UTC.
    pub since: String,
    /// The command line, shell-quoted, cut to 512 bytes.
    pub cmd: String,
    /// The kind of lock, absent for the exclusive lock (so its record stays as SPEC
    /// §4.1 shows it): [`Mode::SHARED`] or [`Mode::SLOTS`] (SPEC §9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// With `"mode":"slots"`: N, the number of slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// A slot holder's slot, 0..N (absent in the record of a waiter for a slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

/// The values of [`Record::mode`].
pub struct Mode;

impl Mode {
    pub const SHARED: &'static str = "shared";
    pub const SLOTS: &'static str = "slots";
}

/// Why the bytes at LOCK are not a lock record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotARecord {
    Empty,
    TooBig(u64),
    WrongStart,
    BadJson(String),
    Version(u32),
    BadNonce,
}

impl fmt::Display for NotARecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotARecord::Empty => write!(f, "it is an empty file"),
            NotARecord::TooBig(size) => write!(f, "it is {size} bytes, larger than any lock record ({MAX_LEN})"),
            NotARecord::WrongStart => write!(f, "it does not start with {}", String::from_utf8_lossy(MAGIC)),
            NotARecord::BadJson(err) => write!(f, "it is not a valid lock record ({err})"),
            NotARecord::Version(v) => write!(
                f,
                "it is a lock record of protocol version {v}, which this xlock does not know"
            ),
            NotARecord::BadNonce => write!(f, "its nonce is not 32 hex digits"),
        }
    }
}

/// Whether `bytes`, a record xlock wrote, carries `nonce`: the record's nonce field,
/// found without parsing (this runs at every verification, on the hand-off's path).
/// A nonce is 32 hex digits, so its quoted field cannot occur anywhere else.
pub(crate) fn carries_nonce(bytes: &[u8], nonce: &str) -> bool {
    let field = format!("\"nonce\":\"{nonce}\"");
    bytes.starts_with(MAGIC) && bytes.windows(field.len()).any(|window| window == field.as_bytes())
}

impl Record {
    /// The record as written to the file: one line of JSON ending in a newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a record always serializes");
        line.push(b'\n');
        debug_assert!(line.len() <= MAX_LEN, "record of {} bytes", line.len());
        line
    }

    /// Reads a record from the bytes of a lock file.
    pub fn parse(bytes: &[u8]) -> Result<Record, NotARecord> {
        if bytes.is_empty() {
            return Err(NotARecord::Empty);
        }
        if bytes.len() > MAX_LEN {
            return Err(NotARecord::TooBig(bytes.len() as u64));
        }
        if !bytes.starts_with(MAGIC) {
            return Err(NotARecord::WrongStart);
        }
        let record: Record = serde_json::from_slice(bytes).map_err(|err| NotARecord::BadJson(err.to_string()))?;
        if record.xlock != VERSION {
            return Err(NotARecord::Version(record.xlock));
        }
        if !is_nonce(&record.nonce) {
            return Err(NotARecord::BadNonce);
        }
        Ok(record)
    }

    pub fn version() -> u32 {
        VERSION
    }
}

fn is_nonce(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A command line as the record shows it: its words shell-quoted, cut to 512 bytes
/// on a character boundary.
pub(crate) fn describe_argv(words: &[OsString]) -> String {
    cut(words.iter().map(quote).collect::<Vec<_>>().join(" "), MAX_CMD)
}

/// A `-c` string as the record shows it: as given, cut to 512 bytes on a character
/// boundary.
pub(crate) fn describe_shell(text: &OsStr) -> String {
    cut(text.to_string_lossy().into_owned(), MAX_CMD)
}

fn quote(word: &OsString) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            xlock: 1,
            pid: 4242,
            start: 123456789,
            pidns: "pid:[4026531836]".into(),
            boot: "fc716e8c-c845-4485-be9b-3ab5c5c4fc07".into(),
            host: "build-3".into(),
            nonce: "0123456789abcdef0123456789abcdef".into(),
            since: "2026-11-23T10:00:00.123Z".into(),
            cmd: "make deploy".into(),
            mode: None,
            slots: None,
            slot: None,
        }
    }

    #[test]
    fn round_trip_is_one_line_in_the_documented_order() {
        let line = sample().to_line();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.ends_with(b"\n"));
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            concat!(
                r#"{"xlock":1,"pid":4242,"start":123456789,"pidns":"pid:[4026531836]","#,
                r#""boot":"fc716e8c-c845-4485-be9b-3ab5c5c4fc07","host":"build-3","#,
                r#""nonce":"0123456789abcdef0123456789abcdef","since":"2026-11-23T10:00:00.123Z","cmd":"make deploy"}"#,
                "\n"
            )
        );
        assert_eq!(Record::parse(&line), Ok(sample()));
    }

    #[test]
    fn foreign_contents_are_told_apart() {
        assert_eq!(Record::parse(b""), Err(NotARecord::Empty));
        assert_eq!(Record::parse(b"#!/bin/sh\necho hi\n"), Err(NotARecord::WrongStart));
        assert_eq!(Record::parse(b"{\"other\":1}"), Err(NotARecord::WrongStart));
        assert!(matches!(
            Record::parse(b"{\"xlock\":1,\"pid\":"),
            Err(NotARecord::BadJson(_))
        ));
        assert_eq!(
            Record::parse(&vec![b' '; MAX_LEN + 1]),
            Err(NotARecord::TooBig(MAX_LEN as u64 + 1))
        );
        let mut future = sample();
        future.xlock = 2;
        assert_eq!(Record::parse(&future.to_line()), Err(NotARecord::Version(2)));
        let mut forged = sample();
        forged.nonce = "xyz".into();
        assert_eq!(Record::parse(&forged.to_line()), Err(NotARecord::BadNonce));
    }

    #[test]
    fn commands_are_quoted_and_cut() {
        let argv = |words: &[&str]| describe_argv(&words.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(argv(&["make", "deploy"]), "make deploy");
        assert_eq!(argv(&["sh", "-c", "echo 'hi' $X"]), r#"sh -c 'echo '\''hi'\'' $X'"#);
        assert_eq!(argv(&["printf", ""]), "printf ''");
        assert_eq!(describe_shell(OsStr::new("a && b")), "a && b");
        let long = argv(&["é".repeat(400).as_str()]);
        assert!(long.len() <= MAX_CMD && long.len() >= MAX_CMD - 3, "{}", long.len());
    }

    #[test]
    fn the_nonce_is_found_in_its_field_only() {
        let record = sample();
        assert!(carries_nonce(&record.to_line(), &record.nonce));
        assert!(!carries_nonce(&record.to_line(), "fedcba9876543210fedcba9876543210"));
        // A command that spells out another nonce's field does not carry it.
        let mut tricky = sample();
        let other = "fedcba9876543210fedcba9876543210";
        tricky.cmd = format!(r#"echo "nonce":"{other}""#);
        assert!(!carries_nonce(&tricky.to_line(), other));
        assert!(carries_nonce(&tricky.to_line(), &tricky.nonce));
        // Not a record at all.
        assert!(!carries_nonce(format!(r#""nonce":"{other}""#).as_bytes(), other));
    }

    #[test]
    fn worst_case_record_fits() {
        let mut record = sample();
        record.cmd = "\u{1}".repeat(MAX_CMD);
        record.host = "h".repeat(64);
        assert!(record.to_line().len() <= MAX_LEN);
    }
}
