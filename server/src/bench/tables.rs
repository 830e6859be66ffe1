//! The text a run prints before its summary lines: one table per kind of measurement, each
//! under a heading that says how it was run, so that a table pasted alone still reads right.

use std::fmt::Write as _;

use super::args::{BenchArgs, Mode};
use super::report::{render_table, BenchReport, ModeReport};

/// The tables of every kind of measurement that ran, and the ledger's and memory's results.
pub fn render(args: &BenchArgs, report: &BenchReport) -> String {
    let mut out = String::new();
    if !report.modes.is_empty() {
        let clock = args.clock(Mode::Engine);
        let _ = writeln!(
            out,
            "\nwalletd, {} accounts, {} s measured after {} s warm-up per mode:",
            report.accounts, clock.seconds, clock.warmup_seconds
        );
        out.push_str(&table(&report.modes));
    }
    if !report.partitions.is_empty() {
        let clock = args.clock(Mode::Partitions);
        let _ = writeln!(
            out,
            "\nengine in-process per partition count, fsync on, {} accounts per partition (funded beyond what a run spends), {} s measured after {} s warm-up per run:",
            args.accounts_per_partition, clock.seconds, clock.warmup_seconds
        );
        out.push_str(&table(&report.partitions));
    }
    if !report.cluster.is_empty() {
        let clock = args.clock(Mode::Cluster);
        let _ = writeln!(
            out,
            "\ncluster in one process over loopback TCP, fsync on, every transfer across nodes, {} accounts per partition, {} s measured after {} s warm-up per run:",
            args.accounts_per_partition, clock.seconds, clock.warmup_seconds
        );
        out.push_str(&table(&report.cluster));
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
