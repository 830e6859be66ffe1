//! Every `tokio::select!` in the code the simulator runs (core, its runtime, the simulator)
//! is `biased`.
//!
//! Why: an unbiased `select!` picks which ready branch to poll first from a thread-local
//! generator that tokio seeds from a process-wide counter, not from the run's seed. Under
//! madsim that makes the interleaving depend on how many threads started before the run:
//! the same seed drew two traces when the simulator's tests ran side by side. With `biased`
//! the branches are polled in the order written, so each one's place is a decision made here.

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

#[test]
fn every_select_the_simulator_runs_is_biased() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in SIMULATED {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let mut offenders = Vec::new();
    for file in &files {
        let source = fs::read_to_string(file).expect("a source file");
        for line in unbiased_selects(&source) {
            offenders.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(
        offenders.is_empty(),
        "select! without `biased;` (the simulator could not replay a seed):\n{}",
        offenders.join("\n")
    );
}
