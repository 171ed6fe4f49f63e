//! man/xlock.1 is rendered from its roff source man/xlock.1.in and the CLI
//! definition (the OPTIONS list comes from `Cli::command()`), and committed. This test
//! renders it again and fails when it drifts from either.
//!
//! To regenerate: `XLOCK_REGENERATE=1 cargo test --test it generated`
//!
//! The completion scripts in completions/ are written by hand; tests/it/completions.rs
//! checks their options against the CLI by driving the shells.

use std::fs;
use std::path::PathBuf;

use clap::{ArgAction, CommandFactory};

/// Escapes text for a roff text line.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// The OPTIONS list: one `.TP` entry per option that --help shows, with every
/// spelling (short, long, aliases), its value's name, its help and its default.
fn options() -> String {
    let mut command = xlock::cli::Cli::command();
    command.build();
    let mut out = String::new();
    for arg in command.get_arguments() {
        if arg.is_positional() || arg.is_hide_set() {
            continue;
        }
        let mut names: Vec<String> = Vec::new();
        let shorts = arg
            .get_short()
            .into_iter()
            .chain(arg.get_all_short_aliases().unwrap_or_default());
        names.extend(shorts.map(|c| format!("\\fB\\-{c}\\fR")));
        let longs = arg
            .get_long()
            .into_iter()
            .chain(arg.get_all_aliases().unwrap_or_default());
        names.extend(longs.map(|l| format!("\\fB\\-\\-{}\\fR", roff(l))));
        let mut head = names.join(", ");
        let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
        if takes_value {
            for value in arg.get_value_names().unwrap_or_default() {
                head.push_str(&format!(" \\fI{}\\fR", roff(value)));
            }
        }
        out.push_str(".TP\n");
        out.push_str(&head);
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let mut text = help.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !text.ends_with('.') {
            text.push('.');
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if takes_value && !defaults.is_empty() {
            text.push_str(&format!(" Default: {}.", defaults.join(", ")));
        }
        // Short source lines (mandoc -T lint asks for at most 80 bytes).
        let mut line = String::new();
        for word in text.split(' ') {
            if !line.is_empty() && line.len() + 1 + word.len() > 70 {
                out.push_str(&roff(&line));
                out.push('\n');
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(&roff(&line));
        out.push('\n');
    }
    out
}

fn rendered() -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = root.join("man/xlock.1.in");
    let template = fs::read_to_string(&source).unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    assert!(
        template.contains(".\\\" @OPTIONS@\n"),
        "{} has no '.\\\" @OPTIONS@' line for the options list",
        source.display()
    );
    let man = template
        .replace(".\\\" @OPTIONS@\n", &options())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    vec![(root.join("man/xlock.1"), man.into_bytes())]
}

#[test]
fn man_page_matches_the_cli() {
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
        "out of date with the CLI or man/xlock.1.in: {}\nregenerate with: XLOCK_REGENERATE=1 cargo test --test it generated",
        stale.join(", ")
    );
}

/// README's commands for building the Debian package are the ones `.ci/run` runs:
/// a plain `cargo deb` cannot find the binary (it ignores the build target that
/// .cargo/config.toml sets), so both must pass `--target`.
#[test]
fn readme_builds_the_package_as_ci_does() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let ci = fs::read_to_string(root.join(".ci/run")).unwrap();
    let deb_lines = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|line| line.starts_with("cargo deb") || line.contains("$(cargo deb"))
            .map(str::to_owned)
            .collect()
    };
    let (readme_lines, ci_lines) = (deb_lines(&readme), deb_lines(&ci));
    assert!(!ci_lines.is_empty() && !readme_lines.is_empty());
    for line in readme_lines.iter().chain(&ci_lines) {
        assert!(
            line.contains("--target \"$(rustc -vV | sed -n 's/^host: //p')\"") || line.contains("--target \"$host\""),
            "builds the package without --target (cargo-deb then misses the binary): {line}"
        );
    }
}

/// The test command that README's "Try it" gives is the one `.ci/run` runs, so what
/// CI proves is what a newcomer runs; and it installs what the tests drive (the
/// packages that the tests fail naming when one is missing).
#[test]
fn readme_test_command_is_what_ci_runs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let ci = fs::read_to_string(root.join(".ci/run")).unwrap();
    let try_it = &readme[readme.find("## Try it").unwrap()..readme.find("## Install").unwrap()];
    let command = try_it
        .split("Run the test suite:")
        .nth(1)
        .and_then(|rest| rest.lines().map(str::trim).find(|line| !line.is_empty()))
        .expect("README's Try it gives the test command after \"Run the test suite:\"");
    assert_eq!(command, "tests/run", "README's test command");
    assert!(
        ci.lines().any(|line| line.trim() == command),
        ".ci/run does not run README's test command {command:?}"
    );
    let script = fs::read_to_string(root.join(command)).unwrap();
    for package in ["util-linux", "bash-completion", "zsh", "fish", "etcd-server", "openssl"] {
        assert!(script.contains(package), "{command} does not install {package}");
    }
    assert!(script.lines().any(|line| line.trim() == "exec cargo test \"$@\""));
}
