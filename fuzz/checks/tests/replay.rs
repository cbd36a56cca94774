//! Replays the fuzz corpora on stable: every file of `fuzz/seeds/<target>/` and
//! `fuzz/regressions/<target>/` through the target's check, one test per target. A failing
//! input is reported by path (the panic message above it says which property broke); to
//! debug it under the fuzzer: `cd fuzz && cargo +nightly fuzz run <target> <path>`.

use media_relay_fuzz_checks::TARGETS;
use std::path::{Path, PathBuf};

/// `fuzz/`, found from this crate's manifest directory (`fuzz/checks`).
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/checks has a parent")
        .to_path_buf()
}

/// The files of `fuzz/<corpus>/<target>/`, sorted (none if the directory does not exist).
fn inputs(corpus: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(corpus).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let check = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .unwrap_or_else(|| panic!("no check for target {target}"));
    let seeds = inputs("seeds", target);
    assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ has no seeds");
    let mut failed = Vec::new();
    let mut n = 0;
    for path in seeds.iter().chain(&inputs("regressions", target)) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {n} inputs failed:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

#[test]
fn ws_reader() {
    replay("ws_reader");
}

#[test]
fn ws_roundtrip() {
    replay("ws_roundtrip");
}

#[test]
fn twilio_codec() {
    replay("twilio_codec");
}

#[test]
fn agent_dialects() {
    replay("agent_dialects");
}

#[test]
fn signature() {
    replay("signature");
}

#[test]
fn twiml() {
    replay("twiml");
}

#[test]
fn call_machine() {
    replay("call_machine");
}

#[test]
fn telnyx_codec() {
    replay("telnyx_codec");
}

/// The target lists agree: `fuzz/Cargo.toml`'s `[[bin]]`s (what `fuzz/run.sh` runs), the
/// checks, the tests above, and the corpus directories, so no corpus goes unreplayed.
#[test]
fn every_target_is_replayed() {
    let mut checks: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    checks.sort_unstable();

    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            bin.lines()
                .find_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"'))
        })
        .collect();
    bins.sort_unstable();
    assert_eq!(
        bins, checks,
        "fuzz/Cargo.toml [[bin]]s and the checks differ"
    );

    let this = include_str!("replay.rs");
    for name in &checks {
        assert!(
            this.contains(&format!("#[test]\nfn {name}() {{\n    replay(\"{name}\");")),
            "no replay test for {name}"
        );
    }

    for corpus in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(corpus)) else {
            continue;
        };
        for e in entries {
            let e = e.expect("readable directory entry");
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                checks.contains(&name.as_str()),
                "fuzz/{corpus}/{name}/ belongs to no target"
            );
        }
    }
}
