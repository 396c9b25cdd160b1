//! Seed sweeps and replay commands.
//!
//! A test runs [`check_seeds`] over many seeds. The seeds are derived deterministically from a
//! fixed base, so every run of the suite explores the same schedules; `MAFTIA_SIM_SEEDS=k`
//! widens the sweep to `k` seeds (soak), and `MAFTIA_SIM_SEED=s` runs only seed `s`, which is
//! what the command printed by a failure sets.
use crate::{SimFailure, SEEDS_ENV, SEED_ENV};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use thiserror::Error;

/// Base every derived seed starts from ("maftiaSI").
const SEED_BASE: u64 = 0x6d61_6674_6961_5349;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SeedError {
    #[error("{SEED_ENV}={value:?} is not a seed (expected a decimal or 0x-hex u64)")]
    InvalidSeed { value: String },
    #[error("{SEEDS_ENV}={value:?} is not a seed count (expected a decimal u64)")]
    InvalidCount { value: String },
}

/// The `index`-th seed of a sweep (SplitMix64 of base + index: distinct for distinct indices,
/// and spread over the whole `u64` range).
pub fn derived_seed(index: u64) -> u64 {
    let mut z = SEED_BASE.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn parse_u64(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The seeds a sweep runs, given the values of `MAFTIA_SIM_SEED` (`seed_var`) and
/// `MAFTIA_SIM_SEEDS` (`count_var`): only the named seed if `seed_var` is set, else the first
/// `count_var` (or `default_count`) derived seeds. Empty variables count as unset.
pub fn seeds_to_run(
    default_count: u64,
    seed_var: Option<&str>,
    count_var: Option<&str>,
) -> Result<Vec<u64>, SeedError> {
    if let Some(value) = seed_var.filter(|v| !v.trim().is_empty()) {
        let seed = parse_u64(value).ok_or_else(|| SeedError::InvalidSeed {
            value: value.into(),
        })?;
        return Ok(vec![seed]);
    }
    let count = match count_var.filter(|v| !v.trim().is_empty()) {
        Some(value) => value
            .trim()
            .parse::<u64>()
            .map_err(|_| SeedError::InvalidCount {
                value: value.into(),
            })?,
        None => default_count,
    };
    Ok((0..count).map(derived_seed).collect())
}

/// Run `check(seed)` for every seed of the sweep (see [`seeds_to_run`]; the environment
/// variables are read here). A test helper: it panics with the failure's `Display` — reason,
/// seed and replay command — on the first seed whose check fails or panics.
#[allow(clippy::panic)] // failing the calling test by panicking is this helper's purpose
pub fn check_seeds(default_count: u64, mut check: impl FnMut(u64) -> Result<(), SimFailure>) {
    let seed_var = std::env::var(SEED_ENV).ok();
    let count_var = std::env::var(SEEDS_ENV).ok();
    let seeds = match seeds_to_run(default_count, seed_var.as_deref(), count_var.as_deref()) {
        Ok(seeds) => seeds,
        Err(e) => panic!("{e}"),
    };
    for seed in seeds {
        match catch_unwind(AssertUnwindSafe(|| check(seed))) {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => panic!("{failure}"),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(non-string panic payload)");
                panic!(
                    "simulation panicked: {message}\n  seed {seed}\n  replay with: {}",
                    replay_command(seed)
                );
            }
        }
    }
}

/// The command that re-runs the current test with `seed` only.
///
/// Everything is detected at run time, so protocol crates need not pass anything: the package
/// from `CARGO_PKG_NAME` (cargo sets it for the test processes it runs), the test target from
/// the test executable's name (`--lib` for unit tests, `--test NAME` when
/// `$CARGO_MANIFEST_DIR/tests/NAME.rs` exists), and the test path from the current thread's
/// name (libtest names each test's thread after the test). What cannot be detected is left
/// out or shown as a placeholder.
pub fn replay_command(seed: u64) -> String {
    let package = std::env::var("CARGO_PKG_NAME").ok();
    let target = package.as_deref().and_then(detect_target);
    let thread = std::thread::current();
    let test = thread.name().filter(|name| *name != "main");
    replay_command_for(
        seed,
        package.as_deref().unwrap_or("<package>"),
        target.as_deref(),
        test,
    )
}

/// The replay command for explicit parts: `target` is e.g. `"--lib"` or `"--test sim"`, `test`
/// the libtest path of the test (run with `--exact`).
pub fn replay_command_for(
    seed: u64,
    package: &str,
    target: Option<&str>,
    test: Option<&str>,
) -> String {
    let mut command = format!("{SEED_ENV}={seed} cargo test --release -p {package}");
    if let Some(target) = target {
        command.push(' ');
        command.push_str(target);
    }
    if let Some(test) = test {
        command.push_str(" -- ");
        command.push_str(test);
        command.push_str(" --exact");
    }
    command
}

/// `--lib` or `--test NAME` for the running test executable, if it can be told.
fn detect_target(package: &str) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let stem = exe.file_stem()?.to_str()?;
    // Test executables are named `<crate name>-<16 hex digits>`.
    let (name, hash) = stem.rsplit_once('-')?;
    if hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if name == package.replace('-', "_") {
        return Some("--lib".to_string());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let tests = Path::new(&manifest_dir).join("tests");
    let is_integration_test =
        tests.join(format!("{name}.rs")).is_file() || tests.join(name).join("main.rs").is_file();
    is_integration_test.then(|| format!("--test {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_seed_wins_over_counts() {
        assert_eq!(seeds_to_run(100, Some("1234"), Some("7")), Ok(vec![1234]));
        assert_eq!(seeds_to_run(100, Some(" 0xff "), None), Ok(vec![255]));
        assert_eq!(
            seeds_to_run(100, Some("seven"), None),
            Err(SeedError::InvalidSeed {
                value: "seven".into()
            })
        );
    }

    #[test]
    fn counts_and_defaults_derive_the_same_prefix() {
        let default = seeds_to_run(50, None, None).unwrap();
        assert_eq!(default.len(), 50);
        let soak = seeds_to_run(50, Some(""), Some("200")).unwrap();
        assert_eq!(soak.len(), 200);
        assert_eq!(&soak[..50], &default[..]);
        let distinct: std::collections::BTreeSet<_> = soak.iter().collect();
        assert_eq!(distinct.len(), 200);
        assert_eq!(default[3], derived_seed(3));
        assert!(seeds_to_run(5, None, Some("-1")).is_err());
        assert_eq!(seeds_to_run(0, None, None), Ok(vec![]));
    }

    #[test]
    fn replay_command_names_seed_package_target_and_test() {
        assert_eq!(
            replay_command_for(
                42,
                "maftia-broadcast",
                Some("--lib"),
                Some("rbc::sim::equivocating_sender")
            ),
            "MAFTIA_SIM_SEED=42 cargo test --release -p maftia-broadcast --lib -- \
             rbc::sim::equivocating_sender --exact"
        );
        assert_eq!(
            replay_command_for(7, "x", None, None),
            "MAFTIA_SIM_SEED=7 cargo test --release -p x"
        );
    }

    #[test]
    fn detected_replay_command_points_at_this_test() {
        let command = replay_command(99);
        assert!(
            command.starts_with("MAFTIA_SIM_SEED=99 cargo test --release -p maftia-sim"),
            "{command}"
        );
        assert!(command.contains(" --lib "), "{command}");
        assert!(
            command
                .ends_with(" -- seeds::tests::detected_replay_command_points_at_this_test --exact"),
            "{command}"
        );
    }

    #[test]
    #[should_panic(expected = "MAFTIA_SIM_SEED=")]
    fn check_seeds_reports_the_failing_seed() {
        check_seeds(3, |seed| {
            Err(SimFailure {
                seed,
                reason: "boom".into(),
                replay: replay_command(seed),
                n: 4,
                event: 1,
            })
        });
    }

    #[test]
    #[should_panic(expected = "simulation panicked: protocol bug")]
    fn check_seeds_reports_a_panicking_seed() {
        check_seeds(3, |_| panic!("protocol bug"));
    }

    #[test]
    fn check_seeds_runs_every_seed() {
        if std::env::var(SEED_ENV).is_ok() || std::env::var(SEEDS_ENV).is_ok() {
            return; // the sweep is overridden from outside; nothing to count
        }
        let mut seen = Vec::new();
        check_seeds(5, |seed| {
            seen.push(seed);
            Ok(())
        });
        assert_eq!(seen, seeds_to_run(5, None, None).unwrap());
    }
}
