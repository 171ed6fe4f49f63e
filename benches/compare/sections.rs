//! Which sections of the benchmark run: `XLOCK_BENCH` (a comma-separated list of
//! [`Sections::ALL`]), all when unset. A new section is a function taking the
//! `Bench`, its name in [`Sections::ALL`], and one `sections.run(NAME, ...)` call in
//! `main`.

/// The sections that `XLOCK_BENCH` asks for (all when unset).
pub(super) struct Sections(Option<Vec<String>>);

impl Sections {
    pub(super) const ALL: [&'static str; 5] = ["uncontended", "handoff", "takeover", "throughput", "rss"];

    pub(super) fn from_env() -> Sections {
        let chosen = std::env::var("XLOCK_BENCH").ok().filter(|v| !v.is_empty());
        Sections(chosen.map(|list| {
            let names: Vec<String> = list.split(',').map(|n| n.trim().to_owned()).collect();
            for name in &names {
                assert!(
                    Self::ALL.contains(&name.as_str()),
                    "XLOCK_BENCH: no section {name:?}; the sections are {}",
                    Self::ALL.join(", ")
                );
            }
            names
        }))
    }

    /// Every section runs (so the figures go to docs/benchmarks.md).
    pub(super) fn all(&self) -> bool {
        self.0.is_none()
    }

    /// Runs `section` if it was asked for.
    pub(super) fn run(&self, name: &str, section: impl FnOnce()) {
        if self.0.as_ref().is_none_or(|names| names.iter().any(|n| n == name)) {
            section();
        }
    }
}
