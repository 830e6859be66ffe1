//! The code the simulator runs (core, its runtime, the simulator) draws nothing from tokio's
//! thread-local generator, which tokio seeds from a process-wide counter, not from the run's
//! seed: under madsim a draw from it made a run's interleaving depend on how many threads had
//! used it before in the process (the same seed drew two traces when the simulator's tests
//! ran side by side, and a second run of a seed in one process another trace). Two users of
//! it are kept out:
//! - an unbiased `tokio::select!` picks which ready branch to poll first from it, so every
//!   `select!` is `biased` (its branches are polled in the order written: each one's place
//!   is a decision made here);
//! - `tokio::sync::watch` parks each receiver on one of eight `Notify`s drawn from it, so a
//!   change wakes them in a drawn order; `walletd_runtime::watch` wakes them in the order
//!   they started waiting.

use std::fs;
use std::path::{Path, PathBuf};

/// The source trees whose code runs under the simulator, from this crate's directory.
const SIMULATED: [&str; 3] = ["src", "../src", "../../sim/src"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The 1-based lines of `source` that open a `select!` whose first statement is not
/// `biased;` (comments between the two are allowed).
fn unbiased_selects(source: &str) -> Vec<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if !code.contains("select! {") {
            continue;
        }
        let first = lines[at + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty() && !l.starts_with("//"));
        if first != Some("biased;") {
            found.push(at + 1);
        }
    }
    found
}

#[test]
fn the_rule_sees_an_unbiased_select() {
    let unbiased = "tokio::select! {\n    _ = a => {}\n    _ = b => {}\n}\n";
    let biased = "tokio::select! {\n    // why this order\n    biased;\n    _ = a => {}\n}\n";
    assert_eq!(unbiased_selects(unbiased), vec![1]);
    assert_eq!(unbiased_selects(biased), Vec::<usize>::new());
}

/// Every source file of the simulated code, with its text.
fn simulated_sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in SIMULATED {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    (files.into_iter())
        .map(|file| {
            let source = fs::read_to_string(&file).expect("a source file");
            (file, source)
        })
        .collect()
}

/// The 1-based lines of `source` that name tokio's watch channel (outside comments).
fn tokio_watches(source: &str) -> Vec<usize> {
    let named = |code: &str| {
        code.contains("tokio::sync::watch")
            || (code.contains("tokio::sync::{") && code.contains("watch"))
    };
    (source.lines().enumerate())
        .filter(|(_, line)| named(line.split("//").next().unwrap_or("")))
        .map(|(at, _)| at + 1)
        .collect()
}

#[test]
fn the_rule_sees_a_tokio_watch() {
    assert_eq!(tokio_watches("use tokio::sync::{mpsc, watch};\n"), vec![1]);
    assert_eq!(
        tokio_watches("let (a, b) = tokio::sync::watch::channel(0);\n"),
        vec![1]
    );
    assert_eq!(
        tokio_watches("// not tokio::sync::watch\nuse crate::watch;\n"),
        Vec::<usize>::new()
    );
}

/// `file:line` of every line of the simulated code that `rule` finds.
fn offenders(rule: fn(&str) -> Vec<usize>) -> String {
    let mut found = Vec::new();
    for (file, source) in simulated_sources() {
        for line in rule(&source) {
            found.push(format!("{}:{line}", file.display()));
        }
    }
    found.join("\n")
}

#[test]
fn the_simulated_code_uses_no_tokio_watch() {
    let found = offenders(tokio_watches);
    assert!(
        found.is_empty(),
        "tokio::sync::watch in simulated code (use walletd_runtime::watch):\n{found}"
    );
}

#[test]
fn every_select_the_simulator_runs_is_biased() {
    let found = offenders(unbiased_selects);
    assert!(
        found.is_empty(),
        "select! without `biased;` (the simulator could not replay a seed):\n{found}"
    );
}
