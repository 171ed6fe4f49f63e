//! xlock's integration tests: one binary (as ripgrep and just do), a module per area.
//! Each test drives the real `xlock` binary; `common` holds the helpers, `pty` the
//! pseudo-terminals.
//!
//!     cargo test --test it                 every integration test
//!     cargo test --test it protocol::      one area

#[macro_use]
mod common;

mod bad_input;
mod bad_input_files;
mod cli;
mod completions;
mod etcd;
mod evidence;
mod exit_status;
mod exit_status_interpreter;
mod field;
mod generated;
mod handoff;
mod idioms;
mod nesting_paths;
mod protocol;
mod protocol_tree;
mod pty;
mod shared;
mod shared_files;
mod signals;
mod signals_ignored;
mod status;
mod status_docs;
mod status_escapes;
mod status_notice;
mod stress;
mod stress_shared;
mod stress_tree;
