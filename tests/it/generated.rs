//! completions/ and man/ are generated from the clap definition and committed. This
//! test renders them again and fails when they drift from the CLI.
//!
//! To regenerate: `XLOCK_REGENERATE=1 cargo test --test it generated`

use std::fs;
use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn rendered() -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for (shell, name) in [
        (Shell::Bash, "xlock.bash"),
        (Shell::Zsh, "_xlock"),
        (Shell::Fish, "xlock.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut xlock::cli::Cli::command(), "xlock", &mut out);
        files.push((root.join("completions").join(name), out));
    }
    let mut man = Vec::new();
    clap_mangen::Man::new(xlock::cli::Cli::command())
        .render(&mut man)
        .unwrap();
    files.push((root.join("man/xlock.1"), man));
    files
}

#[test]
fn completions_and_man_page_match_the_cli() {
    let regenerate = std::env::var_os("XLOCK_REGENERATE").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (path, contents) in rendered() {
        if regenerate {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &contents).unwrap();
        } else if fs::read(&path).ok().as_deref() != Some(&contents[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date with the CLI: {}\nregenerate them with: XLOCK_REGENERATE=1 cargo test --test it generated",
        stale.join(", ")
    );
}
