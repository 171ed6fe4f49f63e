//! The integration tests: one binary, a module per area. They drive the real `xlock`.

mod cli;
mod signals_ignored;
