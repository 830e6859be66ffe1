//! The text a run prints before its summary lines: one table per kind of measurement, each
//! under a heading that says how it was run, so that a table pasted alone still reads right.

use std::fmt::Write as _;

use super::args::{BenchArgs, Mode};
use super::report::{render_table, BenchReport, ModeReport};

/// The tables of every kind of measurement that ran, and the ledger's and memory's results.
pub fn render(args: &BenchArgs, report: &BenchReport) -> String {
    let mut out = String::new();
    let per_partition = args.accounts_per_partition;
    let sections = [
        (&report.modes, Mode::Engine, format!("walletd, {} accounts", report.accounts), "mode"),
        (
            &report.partitions,
            Mode::Partitions,
            format!("engine in-process per partition count, fsync on, {per_partition} accounts per partition (funded beyond what a run spends)"),
            "run",
        ),
        (
            &report.cluster,
            Mode::Cluster,
            format!("cluster in one process over loopback TCP, fsync on, every transfer across nodes, {per_partition} accounts per partition"),
            "run",
        ),
    ];
    for (rows, mode, heading, per) in sections {
        if rows.is_empty() {
            continue;
        }
        let clock = args.clock(mode);
        let _ = writeln!(
            out,
            "\n{heading}, {} s measured after {} s warm-up per {per}:",
            clock.seconds, clock.warmup_seconds
        );
        out.push_str(&table(rows));
    }
    if let Some(ledger) = &report.ledger {
        let _ = writeln!(out, "\n{}", ledger.lines().0);
    }
    if let Some(memory) = &report.memory {
        let _ = writeln!(
            out,
            "\nmemory: {} accounts opened in {:.1} s ({} partitions); VmRSS {:.1} MiB -> {:.1} MiB: {:.0} bytes per account",
            memory.accounts,
            memory.seconds_to_open,
            memory.partitions,
            memory.rss_before_bytes as f64 / (1 << 20) as f64,
            memory.rss_after_bytes as f64 / (1 << 20) as f64,
            memory.bytes_per_account
        );
    }
    out
}

fn table(rows: &[ModeReport]) -> String {
    let rows: Vec<String> = rows.iter().map(ModeReport::tsv).collect();
    render_table(&rows)
}
