//! Control characters out of everything xlock prints (SPEC §6).
//!
//! A lock record is written by whoever holds the lock, possibly another local user,
//! and LOCK paths and process names can hold any byte: printed raw, a newline would
//! fake an `xlock:` line and an escape sequence would clear the screen or set the
//! terminal's title. Every printer (the stderr lines, the waiting notice, `--status`)
//! sends such text through here, so each message stays one line of plain text.
//!
//! Escaped are the C0 controls (newline, CR, tab, ESC...), DEL and the C1 controls
//! (U+0080–U+009F, which some terminals obey): `\n`, `\r`, `\t`, `\xHH` (C0, DEL)
//! and `\u00HH` (C1). A byte of a path that is not UTF-8 is shown as `\xHH`. A
//! backslash is left as it is: commands are full of them, and the text is for
//! people (`--json` is the lossless form).

use std::borrow::Cow;
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `text` with its control characters escaped.
pub fn text(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push(&mut out, c);
    }
    Cow::Owned(out)
}

/// A path as xlock shows it: its control characters escaped, and any byte that is
/// not UTF-8 as `\xHH` (not U+FFFD, so that such names can be told apart).
pub fn path(path: &Path) -> String {
    bytes(path.as_os_str().as_bytes())
}

/// Bytes (a path, a program name) as [`path`] shows them.
pub fn bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push(&mut out, c);
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// A line of JSON (serde_json's: C0 controls already escaped) with DEL and the C1
/// controls escaped too, as `\u00HH`: the same JSON value, but nothing a terminal
/// would act on when `--json` is read on one. These characters occur only inside
/// strings (JSON's own syntax is ASCII), where `\u` escapes mean the same.
pub fn json(line: &str) -> Cow<'_, str> {
    if !line.chars().any(char::is_control) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn push(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_ascii_control() => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        c if c.is_control() => {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn controls_are_escaped_and_the_rest_is_kept() {
        assert!(matches!(text("make deploy 'é' \\n …"), Cow::Borrowed(_)));
        assert_eq!(
            text("a\nb\rc\td\u{1b}[2J\u{7}\u{0}\u{7f}\u{80}\u{9b}\u{9f}\u{a0}é"),
            "a\\nb\\rc\\td\\x1b[2J\\x07\\x00\\x7f\\u0080\\u009b\\u009f\u{a0}é"
        );
        // Escaping escaped text changes nothing.
        let once = text("x\u{1b}\n").into_owned();
        assert_eq!(text(&once), once);
    }

    #[test]
    fn paths_show_bytes_that_are_not_utf8() {
        let path = Path::new(OsStr::from_bytes(b"/tmp/a\nb\xff\xfe\xc3\xa9\x1b.lock"));
        assert_eq!(self::path(path), "/tmp/a\\nb\\xff\\xfeé\\x1b.lock");
        assert_eq!(
            bytes(b"\xc2\x9b"),
            "\\u009b",
            "C1 as UTF-8 is a character, escaped as such"
        );
        assert_eq!(bytes(b"\x9b"), "\\x9b", "a lone byte is not");
    }

    #[test]
    fn json_keeps_its_value() {
        let value = serde_json::json!({"cmd": "a\u{1b}\u{7f}\u{85}\u{9b}b\n", "é": 1});
        let line = serde_json::to_string(&value).unwrap();
        let escaped = json(&line);
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&escaped).unwrap(), value);
        assert!(matches!(json("{\"a\":\"é\"}"), Cow::Borrowed(_)));
    }
}
