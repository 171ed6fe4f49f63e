//! Unit tests of the command line: the parser against clap's definition, every
//! form of SPEC §1, and the messages.

use super::parser::{spec, CONFLICTS, OPTIONS};
use super::*;
use clap::CommandFactory;
use std::os::unix::ffi::OsStringExt;

fn parsed(args: &[&str]) -> Result<Parsed, String> {
    parse(std::iter::once("xlock").chain(args.iter().copied()))
}

fn run(args: &[&str]) -> Config {
    match parsed(args) {
        Ok(Parsed::Run(config)) => config,
        other => panic!("{args:?}: expected a config, got {other:?}"),
    }
}

fn status(args: &[&str]) -> StatusQuery {
    match parsed(args) {
        Ok(Parsed::Status(query)) => query,
        other => panic!("{args:?}: expected a status query, got {other:?}"),
    }
}

fn error(args: &[&str]) -> String {
    match parsed(args) {
        Err(message) => message,
        other => panic!("{args:?}: expected an error, got {other:?}"),
    }
}

fn argv(words: &[&str]) -> CommandSpec {
    CommandSpec::Argv(words.iter().map(OsString::from).collect())
}

fn shell(text: &str) -> CommandSpec {
    CommandSpec::Shell(text.into())
}

/// The parser's table and clap's definition name the same options the same way,
/// so that --help, the man page and the completions describe what is parsed.
#[test]
fn option_table_matches_clap() {
    let mut command = Cli::command();
    command.build();
    let fix = "change OPTIONS in src/cli.rs and the #[arg] of Cli together";
    let mut seen = Vec::new();
    for arg in command.get_arguments().filter(|arg| !arg.is_positional()) {
        let id = arg.get_id().as_str();
        let row = OPTIONS.iter().find(|row| row.id == id).unwrap_or_else(|| {
            panic!("clap's Cli has --{id} but the parser's OPTIONS has no row with id \"{id}\": {fix}")
        });
        seen.push(id);
        assert_eq!(arg.get_short(), row.short, "short of {id}: {fix}");
        assert_eq!(arg.get_long(), Some(row.long), "long of {id}: {fix}");
        let mut shorts = arg.get_all_short_aliases().unwrap_or_default();
        shorts.sort_unstable();
        let mut row_shorts = row.short_aliases.to_vec();
        row_shorts.sort_unstable();
        assert_eq!(shorts, row_shorts, "short aliases of {id}: {fix}");
        let mut longs = arg.get_all_aliases().unwrap_or_default();
        longs.sort_unstable();
        let mut row_longs = row.long_aliases.to_vec();
        row_longs.sort_unstable();
        assert_eq!(longs, row_longs, "long aliases of {id}: {fix}");
        assert_eq!(
            arg.get_action().takes_values(),
            row.value.is_some(),
            "whether {id} takes a value: {fix}"
        );
        if let Some(value) = row.value {
            let names: Vec<&str> = arg
                .get_value_names()
                .unwrap_or_default()
                .iter()
                .map(|n| n.as_str())
                .collect();
            assert_eq!(names, [value], "value name of {id}: {fix}");
        }
    }
    for row in OPTIONS {
        assert!(
            seen.contains(&row.id),
            "the parser's OPTIONS has --{} (id \"{}\") but clap's Cli has not: {fix}",
            row.long,
            row.id
        );
    }
    // And the same pairs of options exclude each other.
    let id = |opt| spec(opt).id;
    let mut ours: Vec<(&str, &str)> = CONFLICTS
        .iter()
        .map(|&(a, b)| (id(a).min(id(b)), id(a).max(id(b))))
        .collect();
    let mut clap: Vec<(&str, &str)> = command
        .get_arguments()
        .flat_map(|a| {
            command.get_arg_conflicts_with(a).into_iter().map(move |b| {
                let (a, b) = (a.get_id().as_str(), b.get_id().as_str());
                (a.min(b), a.max(b))
            })
        })
        .collect();
    for list in [&mut ours, &mut clap] {
        list.sort_unstable();
        list.dedup();
    }
    assert_eq!(
        ours, clap,
        "conflicts: change CONFLICTS in src/cli.rs and conflicts_with in Cli together"
    );
    assert_eq!(parse_duration(DEFAULT_STALE_AFTER), Ok(DEFAULT_STALE_AFTER_DURATION));
}

#[test]
fn everything_after_lock_is_the_command() {
    assert_eq!(run(&["L", "true"]).command, argv(&["true"]));
    assert_eq!(run(&["L", "-v", "x"]).command, argv(&["-v", "x"]));
    assert_eq!(run(&["L", "-v", "x"]).verbosity, Verbosity::Normal);
    assert_eq!(run(&["L", "ls", "-c", "x"]).command, argv(&["ls", "-c", "x"]));
    assert_eq!(run(&["L", "--", "-c", "x"]).command, argv(&["-c", "x"]));
    assert_eq!(run(&["L", "--", "--", "x"]).command, argv(&["--", "x"]));
    assert_eq!(
        run(&["-v", "L", "--", "ls", "--", "x"]).command,
        argv(&["ls", "--", "x"])
    );
    assert_eq!(run(&["L", "-c", "x", "y"]).command, argv(&["-c", "x", "y"]));
    assert_eq!(run(&["L", "-c"]).command, argv(&["-c"]));
    assert_eq!(run(&["L", "--help"]).command, argv(&["--help"]));
    assert_eq!(run(&["L", "--status", "x"]).command, argv(&["--status", "x"]));
    // `--` before LOCK: the next word is LOCK, whatever it looks like.
    assert_eq!(run(&["--", "L", "--", "echo", "hi"]).command, argv(&["echo", "hi"]));
    assert_eq!(run(&["--", "-n", "true"]).lock, PathBuf::from("-n"));
    assert_eq!(run(&["--", "-n", "true"]).wait, Wait::Forever);
    assert_eq!(run(&["-", "true"]).lock, PathBuf::from("-"));
}

#[test]
fn shell_form_before_lock_or_as_the_last_two_words() {
    assert_eq!(run(&["L", "-c", "echo hi"]).command, shell("echo hi"));
    assert_eq!(run(&["-c", "echo hi", "L"]).command, shell("echo hi"));
    assert_eq!(run(&["--command=echo hi", "L"]).command, shell("echo hi"));
    assert_eq!(run(&["--command", "echo hi", "L"]).command, shell("echo hi"));
    assert_eq!(run(&["-cecho hi", "L"]).command, shell("echo hi"));
    assert_eq!(run(&["--", "L", "-c", "echo hi"]).command, shell("echo hi"));
    // STR is taken verbatim, whatever xlock would make of it elsewhere.
    for text in ["-v", "--help", "-n", "--close", "--", "-c"] {
        assert_eq!(run(&["L", "-c", text]).command, shell(text), "{text}");
        assert_eq!(run(&["-E", "75", "L", "-c", text]).command, shell(text), "{text}");
        assert_eq!(run(&["-c", text, "L"]).command, shell(text), "{text}");
    }
    assert!(error(&["-c", "x", "L", "true"]).contains("both -c"));
    assert!(error(&["-c", "x", "L", "-c", "y"]).contains("both before LOCK and after"));
}

/// Different spellings of one meaning read the same.
#[test]
fn spellings_agree() {
    let groups: &[&[&[&str]]] = &[
        &[
            &["-w", "5", "L", "true"],
            &["-w5", "L", "true"],
            &["-w=5", "L", "true"],
            &["--timeout", "5", "L", "true"],
            &["--timeout=5", "L", "true"],
            &["--timeout=5s", "--", "L", "true"],
            &["-w", "5", "L", "--", "true"],
        ],
        &[
            &["-q", "-w", "1", "L", "x"],
            &["-qw", "1", "L", "x"],
            &["-qw1", "L", "x"],
            &["-w1", "-q", "L", "--", "x"],
            &["--quiet", "--timeout=1000ms", "L", "x"],
        ],
        &[
            &["-n", "-v", "L", "x"],
            &["-nv", "L", "x"],
            &["-vn", "--", "L", "x"],
            &["--verbose", "--nonblock", "L", "--", "x"],
            &["-w", "0", "-v", "L", "x"],
        ],
        &[
            &["-E", "3", "L", "x"],
            &["-E3", "L", "x"],
            &["--conflict-exit-code=3", "L", "x"],
            &["-xE", "3", "L", "x"],
            &["-e", "--exclusive", "-E", "3", "L", "x"],
        ],
        &[&["--close", "L", "x"], &["-o", "L", "x"], &["-xo", "L", "x"]],
        &[
            &["-s", "L", "x"],
            &["--shared", "L", "x"],
            &["-s", "-s", "L", "x"],
            &["-s", "--", "L", "x"],
        ],
        &[
            &["--slots", "2", "L", "x"],
            &["--slots=2", "--", "L", "x"],
            &["--slots", "02", "L", "x"],
        ],
        &[
            &["-c", "echo a", "L"],
            &["L", "-c", "echo a"],
            &["--", "L", "-c", "echo a"],
            &["--command=echo a", "--", "L"],
            &["-qc", "echo a", "L"],
        ],
    ];
    for group in groups {
        let first = run(group[0]);
        for args in &group[1..] {
            let mut config = run(args);
            // -q is in the second group only, and says nothing else.
            if group[0].contains(&"-q") {
                assert_eq!(config.verbosity, Verbosity::Quiet, "{args:?}");
            }
            if args.contains(&"-qc") {
                config.verbosity = Verbosity::Normal;
            }
            assert_eq!(config, first, "{args:?} vs {:?}", group[0]);
        }
    }
}

#[test]
fn options_with_values_are_skipped_when_finding_lock() {
    let config = run(&["-w", "5", "-E", "9", "L", "true"]);
    assert_eq!(config.lock, PathBuf::from("L"));
    assert_eq!(config.wait, Wait::Upto(Duration::from_secs(5)));
    assert_eq!(config.busy_exit, 9);
    assert_eq!(
        run(&["--timeout=250ms", "L", "true"]).wait,
        Wait::Upto(Duration::from_millis(250))
    );
    assert_eq!(run(&["-qw", "1", "L", "true"]).verbosity, Verbosity::Quiet);
    assert_eq!(run(&["-n", "L", "true"]).wait, Wait::Upto(Duration::ZERO));
    assert_eq!(run(&["L", "true"]).wait, Wait::Forever);
    assert_eq!(run(&["L", "true"]).busy_exit, 75);
    assert!(run(&["--close", "L", "true"]).close);
    assert!(!run(&["-x", "L", "true"]).close);
    assert_eq!(run(&["L", "true"]).stale_after, Duration::from_secs(30));
    assert_eq!(
        run(&["--stale-after", "2m", "L", "true"]).stale_after,
        Duration::from_secs(120)
    );
    // A value is the next word even when it looks like an option or LOCK.
    assert_eq!(run(&["-c", "-v", "L"]).command, shell("-v"));
    assert_eq!(run(&["-c", "L", "M"]).lock, PathBuf::from("M"));
}

#[test]
fn values_are_taken_verbatim_and_errors_name_the_option() {
    let err = error(&["-w", "-1", "L", "true"]);
    assert!(err.contains("'-1'") && err.contains("--timeout"), "{err}");
    let err = error(&["-E", "-1", "L", "true"]);
    assert!(
        err.contains("'-1'") && err.contains("-E, --conflict-exit-code"),
        "{err}"
    );
    let err = error(&["--stale-after", "-5", "L", "true"]);
    assert!(err.contains("'-5'") && err.contains("--stale-after"), "{err}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    for bad in ["", "-1", "5x", "abc", "1..2", "1e999999"] {
        let err = parse_duration(bad).expect_err(bad);
        assert!(err.contains("250ms"), "{bad}: {err}");
    }
}

/// A timeout whose end cannot be represented waits forever; one that is not even
/// a duration is a usage error naming --timeout. Neither panics.
#[test]
fn huge_timeouts_wait_forever_or_are_refused() {
    for huge in ["9300000000000000000", "300000000000years", "18000000000000000000"] {
        assert_eq!(run(&["-w", huge, "L", "true"]).wait, Wait::Forever, "{huge}");
    }
    for too_big in [
        "1000000000000000000000000000000",
        "18446744073709551616",
        "3000000000000years",
    ] {
        let err = error(&["-w", too_big, "L", "true"]);
        assert!(err.contains("--timeout") && err.contains(too_big), "{err}");
    }
    // Far, but representable: an ordinary timeout.
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    assert_eq!(run(&["-w", "36500days", "L", "true"]).wait, Wait::Upto(century));
    assert_eq!(wait_for(Duration::MAX), Wait::Forever);
}

#[test]
fn bad_input_is_a_one_line_error_naming_the_value() {
    for (args, needle) in [
        (&["-w", "soon", "L", "true"][..], "soon"),
        (&["-E", "300", "L", "true"][..], "300"),
        (&["-E", "x", "L", "true"][..], "'x'"),
        (&["L"][..], "no command"),
        (&["L", "--"][..], "no command"),
        (&["-w", "5", "L"][..], "no command"),
        (&[][..], "no LOCK"),
        (&["-n"][..], "no LOCK"),
        (&["--"][..], "no LOCK"),
        (&["", "true"][..], "LOCK is an empty path"),
        (&["--", "", "true"][..], "LOCK is an empty path"),
        (&["dir/", "true"][..], "directory"),
        (&["..", "true"][..], "directory"),
        (&["-n", "-w", "1", "L", "true"][..], "--timeout"),
        (&["-w1", "-n", "L", "true"][..], "--nonblock"),
        (&["-q", "-v", "L", "true"][..], "--quiet"),
        (&["--frobnicate", "L", "true"][..], "'--frobnicate'"),
        (&["-nZ", "L", "true"][..], "'-Z' (in '-nZ')"),
        (&["--close=3", "L", "true"][..], "'3'"),
        (&["-w"][..], "--timeout <DUR>' needs a value"),
        (&["--timeout"][..], "--timeout <DUR>' needs a value"),
        (&["-E"][..], "needs a value"),
        (&["-v", "-v", "L", "true"][..], "given twice"),
        (&["-w", "1", "--timeout=2", "L", "true"][..], "given twice"),
        (&["--stale-after", "0", "L", "true"][..], "--stale-after 0s"),
        (&["--stale-after", "later", "L", "true"][..], "later"),
        (&["--json", "L", "true"][..], "--status"),
        (&["--status", "-n", "L"][..], "--nonblock"),
        (&["--status", "L", "-c", "x"][..], "--command"),
        (&["--status"][..], "at least one LOCK"),
        (
            &["-s", "--slots", "2", "L", "true"][..],
            "'-s, --shared' cannot be used with '--slots <N>'",
        ),
        (
            &["-xs", "L", "true"][..],
            "'-x, --exclusive' cannot be used with '-s, --shared'",
        ),
        (
            &["--slots", "3", "-e", "L", "true"][..],
            "cannot be used with '--slots <N>'",
        ),
        (
            &["--slots", "0", "L", "true"][..],
            "invalid value '0' for '--slots <N>': a lock needs at least one slot",
        ),
        (
            &["--slots", "-1", "L", "true"][..],
            "invalid value '-1' for '--slots <N>'",
        ),
        (&["--slots=two", "L", "true"][..], "'two' is not a number of slots"),
        (&["--slots", "99999999999", "L", "true"][..], "'99999999999'"),
        (&["--slots"][..], "'--slots <N>' needs a value"),
        (&["--slots", "2", "--slots", "2", "L", "true"][..], "given twice"),
        (&["--status", "-s", "L"][..], "--shared"),
        (&["--status", "--slots", "2", "L"][..], "--slots"),
        (&["-F", "L", "true"][..], "always runs COMMAND as its child"),
        (&["--no-fork", "L", "true"][..], "exec xlock"),
        (&["9"][..], "not a file descriptor"),
        (&["-n", "9"][..], "xlock /var/lock/NAME.lock -c 'COMMANDS'"),
    ] {
        let err = error(args);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains('\n'), "{args:?}: {err}");
        // Usage errors point to --help; errors about a value's meaning say what to do.
        let about_meaning = [
            "no command",
            "LOCK",
            "directory",
            "descriptor",
            "/var/lock",
            "--stale-after 0s",
        ];
        if !about_meaning.iter().any(|m| needle.contains(m)) {
            assert!(err.ends_with("; see 'xlock --help'"), "{args:?}: {err}");
        }
    }
    // A LOCK named 9 with a command is just a file.
    assert_eq!(run(&["9", "true"]).lock, PathBuf::from("9"));
    // Control characters in a word are shown escaped.
    assert!(error(&["--bad\nline", "L", "x"]).contains("--bad\\nline"));
}

#[test]
fn status_takes_every_other_word_as_a_lock() {
    let query = status(&["--status", "--json", "-E", "9", "a.lock", "--", "-b.lock", "--json"]);
    assert_eq!(
        query.locks,
        [PathBuf::from("a.lock"), "-b.lock".into(), "--json".into()]
    );
    assert!(query.json);
    assert_eq!(query.busy_exit, 9);
    // Options may follow the LOCKs.
    let query = status(&["--status", "a", "--json", "b", "-E3"]);
    assert_eq!(query.locks, [PathBuf::from("a"), "b".into()]);
    assert!(query.json);
    assert_eq!(query.busy_exit, 3);
    assert_eq!(status(&["--status", "--", "-x.lock"]).locks, [PathBuf::from("-x.lock")]);
    let err = error(&["--status", "-x.lock"]);
    assert!(
        err.contains("'-.' (in '-x.lock')") && err.contains("xlock --status -- -x.lock"),
        "{err}"
    );
    let err = error(&["--status", "L", "-b.lock"]);
    assert!(err.contains("xlock --status -- -b.lock"), "{err}");
    assert!(matches!(parsed(&["--status", "L", "--help"]), Ok(Parsed::Print(_))));
}

#[test]
fn help_and_version_are_printed() {
    let Ok(Parsed::Print(help)) = parsed(&["--help"]) else {
        panic!("--help")
    };
    for needle in [
        "<LOCK>",
        "<COMMAND>...",
        "Options come before LOCK",
        "-c STR as the last two words",
        "xlock -n /var/lock",
        "--timeout 10m",
        "--status --json",
        "-x, --exclusive",
        "-o, --close",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    assert!(!help.contains("[LOCK]") && !help.contains("[COMMAND]"), "{help}");
    assert!(matches!(parsed(&["-h"]), Ok(Parsed::Print(text)) if text.contains("<LOCK>")));
    assert!(matches!(parsed(&["-nh", "L"]), Ok(Parsed::Print(text)) if text.contains("<LOCK>")));
    let version = format!("xlock {}\n", env!("CARGO_PKG_VERSION"));
    assert!(matches!(parsed(&["-V"]), Ok(Parsed::Print(text)) if text == version));
    assert!(matches!(parsed(&["--version", "L", "x"]), Ok(Parsed::Print(text)) if text == version));
    // After LOCK, --help is the command's.
    assert_eq!(run(&["L", "--help"]).command, argv(&["--help"]));
}

#[test]
fn words_need_not_be_utf8() {
    let odd = OsString::from_vec(vec![b'L', 0xff]);
    let args = ["xlock".into(), odd.clone(), odd.clone()];
    let Ok(Parsed::Run(config)) = parse(args) else { panic!() };
    assert_eq!(config.lock, PathBuf::from(&odd));
    assert_eq!(config.command, CommandSpec::Argv(vec![odd.clone()]));
    let mut dash_c = b"-c".to_vec();
    dash_c.push(0xff);
    let Ok(Parsed::Run(config)) = parse(["xlock".into(), OsString::from_vec(dash_c), "L".into()]) else {
        panic!()
    };
    assert_eq!(config.command, CommandSpec::Shell(OsString::from_vec(vec![0xff])));
    let err = parse([
        "xlock".into(),
        "-w".into(),
        OsString::from_vec(vec![0xff]),
        "L".into(),
        "x".into(),
    ])
    .unwrap_err();
    assert!(err.contains("--timeout") && err.contains("UTF-8"), "{err}");
    let err = parse([
        "xlock".into(),
        OsString::from_vec(vec![b'-', 0xff]),
        "L".into(),
        "x".into(),
    ])
    .unwrap_err();
    assert!(err.contains("unknown option"), "{err}");
}

#[test]
fn misplaced_options_get_a_hint() {
    let hint = |word: &str| misplaced_option_hint(OsStr::new(word));
    assert_eq!(
        hint("-n").as_deref(),
        Some("'-n' is an xlock option: options come before LOCK (xlock -n LOCK COMMAND)")
    );
    assert!(hint("-w").unwrap().contains("(xlock -w DUR LOCK COMMAND)"));
    assert!(hint("-w5").unwrap().contains("(xlock -w5 LOCK COMMAND)"));
    assert!(hint("--timeout")
        .unwrap()
        .contains("(xlock --timeout DUR LOCK COMMAND)"));
    assert!(hint("--timeout=5")
        .unwrap()
        .contains("(xlock --timeout=5 LOCK COMMAND)"));
    assert!(hint("-nv").unwrap().contains("options come before LOCK"));
    assert!(hint("-qw").unwrap().contains("(xlock -qw DUR LOCK COMMAND)"));
    assert!(hint("--close").unwrap().contains("(xlock --close LOCK COMMAND)"));
    assert!(hint("-o").unwrap().contains("(xlock -o LOCK COMMAND)"));
    assert!(hint("-c").unwrap().contains("xlock LOCK -c STR as the last two words"));
    assert!(hint("--help").unwrap().contains("(xlock --help)"));
    assert!(hint("--status").unwrap().contains("xlock --status LOCK..."));
    assert!(hint("-s").unwrap().contains("(xlock -s LOCK COMMAND)"));
    assert!(hint("--slots").unwrap().contains("(xlock --slots N LOCK COMMAND)"));
    assert!(hint("--no-fork").unwrap().contains("-F/--no-fork"));
    for other in ["ls", "-", "--", "-1", "-nZ", "--frob", "./-n", ""] {
        assert_eq!(hint(other), None, "{other}");
    }
}

/// In a cluster, the first of -h and -V wins and ends the reading, as it does as a
/// word of its own (`-h -Z`) and in clap and flock(1): `-hV` is help, `-hZ` is not
/// an unknown option, `-hw` needs no value.
/// The kind of lock (SPEC §9): exclusive unless -s or --slots N.
#[test]
fn the_mode_is_exclusive_shared_or_slots() {
    assert_eq!(run(&["L", "x"]).mode, LockMode::Exclusive);
    assert_eq!(run(&["-x", "L", "x"]).mode, LockMode::Exclusive);
    assert_eq!(run(&["-sn", "L", "x"]).mode, LockMode::Shared);
    assert_eq!(run(&["--slots", "1", "L", "x"]).mode, LockMode::Slots(1));
    assert_eq!(run(&["--slots=4294967295", "L", "x"]).mode, LockMode::Slots(u32::MAX));
    // After LOCK, -s is the command's.
    assert_eq!(run(&["L", "-s"]).mode, LockMode::Exclusive);
}

#[test]
fn help_or_version_in_a_cluster_ends_the_reading() {
    let version = format!("xlock {}\n", env!("CARGO_PKG_VERSION"));
    for cluster in ["-hV", "-hZ", "-hw", "-nhw"] {
        assert!(
            matches!(parsed(&[cluster]), Ok(Parsed::Print(ref text)) if text.contains("<LOCK>")),
            "{cluster}: {:?}",
            parsed(&[cluster])
        );
    }
    for cluster in ["-Vh", "-VZ", "-xVE"] {
        assert!(
            matches!(parsed(&[cluster]), Ok(Parsed::Print(ref text)) if *text == version),
            "{cluster}: {:?}",
            parsed(&[cluster])
        );
    }
}

/// flock(1)'s other long spellings, a habit when switching: `--wait` (its alias of
/// `--timeout`) and `-u/--unlock` say what to write instead of "unknown option".
#[test]
fn flock_wait_and_unlock_get_a_hint() {
    for (args, needle) in [
        (&["--wait", "5", "L", "true"][..], "xlock -w DUR LOCK COMMAND"),
        (&["--wait=5", "L", "true"][..], "--timeout"),
        (&["-u", "9"][..], "released when the command ends"),
        (&["--unlock", "9"][..], "released when the command ends"),
    ] {
        let err = error(args);
        assert!(
            err.contains(needle) && !err.contains("unknown option"),
            "{args:?}: {err}"
        );
    }
}

/// etcd locks are exclusive only (SPEC §9 is for lock files): `--shared` and `--slots`
/// with an etcd URL are refused up front, naming the URL and the option.
#[test]
fn etcd_locks_refuse_shared_and_slots() {
    for (args, option) in [
        (&["-s", "etcd://127.0.0.1:1/x", "true"][..], "--shared"),
        (&["--slots", "2", "etcd://127.0.0.1:1/x", "true"][..], "--slots"),
    ] {
        let message = error(args);
        assert!(
            message.contains("etcd://127.0.0.1:1/x") && message.contains(&format!("drop {option}")),
            "{args:?}: {message}"
        );
    }
    assert_eq!(run(&["etcd://127.0.0.1:1/x", "true"]).mode, LockMode::Exclusive);
}
