//! The completion scripts in completions/, driven by the real shells: bash with
//! bash-completion (the completion function called with COMP_WORDS set, as readline
//! calls it), zsh (an interactive zsh on a pseudo-terminal through its zpty module,
//! with compadd wrapped to print what it is given) and fish (`complete -C LINE`).
//!
//! Each test runs every shell and reports every shell that fails. A shell that is not
//! installed fails the test with what to install: nothing is skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

#[derive(Clone, Copy, Debug)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Options of the CLI definition that the scripts deliberately do not offer.
const NOT_OFFERED: &[&str] = &[];

/// bash-completion's entry point: defines _init_completion, _command_offset, _filedir.
const BASH_COMPLETION: &str = "/usr/share/bash-completion/bash_completion";

/// `bash -c BASH_DRIVER bash SCRIPT LINE`: prints COMPREPLY for LINE<TAB>.
const BASH_DRIVER: &str = r#"
source /usr/share/bash-completion/bash_completion
source "$1"
# compopt works only inside a completion that readline started.
compopt() { :; }
line=$2
COMP_LINE=$line
COMP_POINT=${#line}
# Split as readline does: shell words, and each '=' (in COMP_WORDBREAKS) a word of
# its own.
eval "split=($line)"
[[ $line == *' ' ]] && split+=('')
COMP_WORDS=()
for w in "${split[@]}"; do
    while [[ $w == *=* ]]; do
        [[ ${w%%=*} ]] && COMP_WORDS+=("${w%%=*}")
        COMP_WORDS+=('=')
        w=${w#*=}
    done
    [[ $w || ${COMP_WORDS[-1]} != '=' ]] && COMP_WORDS+=("$w")
done
[[ ${COMP_WORDS[-1]} == '=' ]] && COMP_WORDS+=('')
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_xlock xlock "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;

/// `zsh -f -c ZSH_DRIVER zsh FPATH_DIR LINE`: prints each match that zsh's
/// completion system adds for LINE<TAB>, in an interactive zsh on a pseudo-terminal.
const ZSH_DRIVER: &str = include_str!("completions_driver.zsh");

impl Shell {
    fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
        }
    }

    /// The script under test, relative to the crate root.
    fn script(self) -> &'static str {
        match self {
            Shell::Bash => "completions/xlock.bash",
            Shell::Zsh => "completions/_xlock",
            Shell::Fish => "completions/xlock.fish",
        }
    }

    /// Fails, saying what to install, when the shell is missing.
    fn require(self) {
        let found = Command::new(self.name())
            .args(["-c", "exit 0"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{} is not installed: install it (apt-get install -y {}); .ci/run does",
            self.name(),
            self.name()
        );
        if let Shell::Bash = self {
            assert!(
                Path::new(BASH_COMPLETION).exists(),
                "{BASH_COMPLETION} is missing: install bash-completion (apt-get install -y \
                 bash-completion); .ci/run does"
            );
        }
    }
}

/// A directory to complete in: files db.lock and other.txt, a directory sub.
struct Sandbox {
    dir: tempfile::TempDir,
    /// HOME and XDG directories: no user configuration comes in.
    home: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("db.lock"), "").unwrap();
        std::fs::write(dir.path().join("other.txt"), "").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let home = tempfile::tempdir().expect("temp dir");
        for sub in ["config", "data"] {
            std::fs::create_dir(home.path().join(sub)).unwrap();
        }
        Sandbox { dir, home }
    }

    /// What `shell` offers for `line` followed by TAB, with the cursor at the end;
    /// a directory's trailing '/' is dropped, duplicates are removed.
    fn complete(&self, shell: Shell, line: &str) -> BTreeSet<String> {
        shell.require();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let script = root.join(shell.script());
        let mut command = Command::new("timeout");
        command.arg("60").arg(shell.name());
        match shell {
            Shell::Bash => command
                .args(["--norc", "--noprofile", "-c", BASH_DRIVER, "bash"])
                .arg(&script)
                .arg(line),
            Shell::Zsh => command
                .args(["-f", "-c", ZSH_DRIVER, "zsh"])
                .arg(script.parent().unwrap())
                .arg(line),
            Shell::Fish => command.arg("-c").arg(format!(
                "set -p fish_complete_path {}; complete -C {}",
                fish_quote(script.parent().unwrap().to_str().unwrap()),
                fish_quote(line)
            )),
        };
        // xlock on PATH: fish loads the completions of commands it can find.
        let bin = Path::new(env!("CARGO_BIN_EXE_xlock")).parent().unwrap();
        let path = std::env::join_paths(
            std::iter::once(bin.to_path_buf())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .unwrap();
        let home = self.home.path();
        let output = command
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"))
            .env("TMPDIR", home)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", shell.name()));
        assert!(
            output.status.success(),
            "{} driving {} on {line:?} failed ({}): {}",
            shell.name(),
            shell.script(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            // fish prints "candidate<TAB>description".
            .map(|l| l.split('\t').next().unwrap().trim_end_matches('/').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

fn fish_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs `check` for every shell, then fails naming every shell whose check failed.
fn for_each_shell(check: impl Fn(&Sandbox, Shell) -> Vec<String>) {
    let sandbox = Sandbox::new();
    let mut failures = Vec::new();
    for shell in SHELLS {
        for failure in check(&sandbox, shell) {
            failures.push(format!("{} ({}): {failure}", shell.name(), shell.script()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Checks that completing `line` offers all of `wanted` and none of `unwanted`.
fn offers(sandbox: &Sandbox, shell: Shell, line: &str, wanted: &[&str], unwanted: &[&str]) -> Vec<String> {
    let got = sandbox.complete(shell, line);
    let missing: Vec<_> = wanted.iter().filter(|w| !got.contains(**w)).collect();
    let extra: Vec<_> = unwanted.iter().filter(|u| got.contains(**u)).collect();
    if missing.is_empty() && extra.is_empty() {
        return Vec::new();
    }
    let shown: Vec<_> = got.iter().take(20).collect();
    vec![format!(
        "{line:?}<TAB> should offer {missing:?} and not {extra:?}; it offers {shown:?}{}",
        if got.len() > 20 { " ..." } else { "" }
    )]
}

/// The option spellings of the CLI definition: every short and long name and alias
/// of each argument that --help shows.
fn cli_options() -> BTreeSet<String> {
    let mut command = xlock::cli::Cli::command();
    command.build();
    let mut names = BTreeSet::new();
    for arg in command.get_arguments() {
        if arg.is_positional() || arg.is_hide_set() {
            continue;
        }
        let shorts = arg
            .get_short()
            .into_iter()
            .chain(arg.get_all_short_aliases().unwrap_or_default());
        names.extend(shorts.map(|c| format!("-{c}")));
        let longs = arg
            .get_long()
            .into_iter()
            .chain(arg.get_all_aliases().unwrap_or_default());
        names.extend(longs.map(|l| format!("--{l}")));
    }
    for name in NOT_OFFERED {
        names.remove(*name);
    }
    names
}

const XLOCK_ONLY: &[&str] = &["--nonblock", "--conflict-exit-code", "--stale-after", "--status"];

#[test]
fn options_offered_match_the_cli() {
    let expected = cli_options();
    for_each_shell(|sandbox, shell| {
        let offered: BTreeSet<String> = sandbox
            .complete(shell, "xlock -")
            .into_iter()
            // zsh offers --timeout= for --timeout VALUE.
            .map(|o| o.trim_end_matches('=').to_string())
            .collect();
        let missing: Vec<_> = expected.difference(&offered).collect();
        let extra: Vec<_> = offered.difference(&expected).collect();
        if missing.is_empty() && extra.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "the options offered for 'xlock -<TAB>' differ from the CLI (src/cli.rs): \
             missing {missing:?}, not in the CLI {extra:?}; edit {}",
            shell.script()
        )]
    })
}

#[test]
fn lock_completes_as_a_file() {
    for_each_shell(|sandbox, shell| {
        let mut failures = offers(
            sandbox,
            shell,
            "xlock ",
            &["db.lock", "other.txt", "sub"],
            &["-n", "--nonblock"],
        );
        failures.extend(offers(sandbox, shell, "xlock -n d", &["db.lock"], &[]));
        failures.extend(offers(sandbox, shell, "xlock -w 5 -q o", &["other.txt"], &[]));
        failures.extend(offers(sandbox, shell, "xlock -nw 5 d", &["db.lock"], &[]));
        failures.extend(offers(sandbox, shell, "xlock --timeout=5 d", &["db.lock"], &[]));
        failures
    })
}

#[test]
fn after_lock_the_command_completes() {
    for_each_shell(|sandbox, shell| {
        let mut failures = offers(sandbox, shell, "xlock L ech", &["echo"], &[]);
        failures.extend(offers(sandbox, shell, "xlock -n L ech", &["echo"], &[]));
        failures.extend(offers(sandbox, shell, "xlock -w 5 L -- ech", &["echo"], &[]));
        failures.extend(offers(sandbox, shell, "xlock --timeout=5 L ech", &["echo"], &[]));
        failures
    })
}

#[test]
fn after_the_command_its_own_completion_and_never_xlocks_options() {
    for_each_shell(|sandbox, shell| {
        let mut failures = offers(sandbox, shell, "xlock L ls --al", &["--all", "--almost-all"], &[]);
        failures.extend(offers(sandbox, shell, "xlock L ls --", &["--all"], XLOCK_ONLY));
        failures.extend(offers(sandbox, shell, "xlock -n L -- ls --", &["--all"], XLOCK_ONLY));
        failures.extend(offers(sandbox, shell, "xlock L cat d", &["db.lock"], &[]));
        // The word after LOCK is the command, even when it starts with -.
        failures.extend(offers(sandbox, shell, "xlock L -", &[], XLOCK_ONLY));
        failures
    })
}

#[test]
fn option_values_do_not_complete_as_files() {
    let files = ["db.lock", "other.txt", "sub"];
    for_each_shell(|sandbox, shell| {
        let mut failures = Vec::new();
        for line in [
            "xlock -w ",
            "xlock --timeout ",
            "xlock -nw ",
            "xlock -E ",
            "xlock --conflict-exit-code ",
            "xlock --stale-after ",
            "xlock -n -w ",
        ] {
            failures.extend(offers(sandbox, shell, line, &[], &files));
        }
        // -c takes a shell command: command names, not files.
        failures.extend(offers(sandbox, shell, "xlock -c ech", &["echo"], &[]));
        // (fish offers directories too: a command may be a path.)
        failures.extend(offers(sandbox, shell, "xlock -c ", &[], &files[..2]));
        failures
    })
}

#[test]
fn after_status_every_word_is_a_lock() {
    for_each_shell(|sandbox, shell| {
        let mut failures = offers(sandbox, shell, "xlock --status a.lock ", &["db.lock", "other.txt"], &[]);
        failures.extend(offers(
            sandbox,
            shell,
            "xlock --status --json a.lock b.lock o",
            &["other.txt"],
            &[],
        ));
        failures.extend(offers(sandbox, shell, "xlock --status a.lock ech", &[], &["echo"]));
        failures
    })
}

/// `LOCK -c STR` as the last two words is the shell form: STR completes as a command
/// name, and nothing can follow it. After `LOCK --`, `-c` is a program's name
/// (SPEC §1: `xlock LOCK -- -c x` runs a program named -c), not the shell form.
#[test]
fn shell_form_only_as_the_two_words_after_lock() {
    for_each_shell(|sandbox, shell| {
        let mut failures = offers(sandbox, shell, "xlock L -c ech", &["echo"], &[]);
        failures.extend(offers(sandbox, shell, "xlock L -- -c ech", &[], &["echo"]));
        failures.extend(offers(sandbox, shell, "xlock L -c 'ls' o", &[], &["other.txt"]));
        failures
    })
}
