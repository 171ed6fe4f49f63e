//! Integration tests, one binary (the lead merges this with the tests branch).

mod completions;
mod idioms;
