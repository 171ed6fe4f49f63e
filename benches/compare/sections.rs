//! Which sections of the benchmark run: `XLOCK_BENCH`, a comma-separated list of
//! section names (`uncontended,throughput`), all when unset. A new section is a
//! function taking the `Bench` and one `sections.run(NAME, ...)` call in `main`; a
//! name that no call knows is reported once the known sections have run.

use std::cell::RefCell;

/// The sections that `XLOCK_BENCH` asks for (all when unset), and the names of those
/// `main` offers.
pub(super) struct Sections {
    chosen: Option<Vec<String>>,
    known: RefCell<Vec<&'static str>>,
}

impl Sections {
    pub(super) fn from_env() -> Sections {
        let chosen = std::env::var("XLOCK_BENCH").ok().filter(|v| !v.trim().is_empty());
        Sections {
            chosen: chosen.map(|list| list.split(',').map(|n| n.trim().to_owned()).collect()),
            known: RefCell::default(),
        }
    }

    /// Every section runs (so the figures go to docs/benchmarks.md).
    pub(super) fn all(&self) -> bool {
        self.chosen.is_none()
    }

    /// Runs `section` if it was asked for.
    pub(super) fn run(&self, name: &'static str, section: impl FnOnce()) {
        self.known.borrow_mut().push(name);
        if self.chosen.as_ref().is_none_or(|names| names.iter().any(|n| n == name)) {
            section();
        }
    }

    /// Stops the benchmark if `XLOCK_BENCH` named a section that no [`Sections::run`]
    /// call knows (a typo would otherwise measure nothing, silently).
    pub(super) fn check_names(&self) {
        let known = self.known.borrow();
        for name in self.chosen.iter().flatten() {
            assert!(
                known.contains(&name.as_str()),
                "XLOCK_BENCH={}: there is no section {name:?}; the sections are {}",
                self.chosen.as_ref().unwrap().join(","),
                known.join(", ")
            );
        }
    }
}
