//! The `partitions` mode: what partitions buy. For each partition count, a fresh engine runs
//! transfers whose two accounts share a partition (each is one event in one log sync, and
//! partitions work in parallel), then, with two partitions or more, transfers whose accounts
//! are on different partitions (each runs the two-phase protocol: three log syncs on two
//! partitions before the reply).

use super::args::{BenchArgs, Mode};
use super::engine_driver::Load;
use super::engine_run::{self, EngineRun};
use super::placement::{Placed, Placement};
use super::report::ModeReport;
use super::workload::Workload;
use super::BenchError;

/// The row names of the two placements.
pub const SAME_PARTITION: &str = "engine_same_partition";
pub const CROSS_PARTITION: &str = "engine_cross_partition";

/// Runs every partition count of `--partition-counts`, same-partition then cross-partition.
pub async fn run(args: &BenchArgs, run_tag: &str) -> Result<Vec<ModeReport>, BenchError> {
    let mut rows = Vec::new();
    for (i, &partitions) in args.partition_counts.iter().enumerate() {
        let placements: &[_] = if partitions > 1 {
            &[Placement::SamePartition, Placement::CrossHome]
        } else {
            &[Placement::SamePartition]
        };
        for (j, &placement) in placements.iter().enumerate() {
            // For the engine every partition is a home of its own.
            let homes: Vec<u32> = (0..partitions).collect();
            let placed = Placed::new(&homes, args.accounts_per_partition, placement)?;
            let label = match placement {
                Placement::SamePartition => SAME_PARTITION,
                Placement::CrossHome => CROSS_PARTITION,
            };
            let workload = Workload::placed(placed, format!("{run_tag}p{partitions}"));
            let spec = EngineRun {
                label,
                partitions,
                snapshot_every_events: args.snapshot_every_events,
                group_commit: args.group_commit,
                load: Load {
                    clients: args.partition_clients,
                    batch: args.partition_batch,
                    seed: args.seed.wrapping_add((i * 2 + j) as u64 * 15_485_863),
                },
                clock: args.clock(Mode::Partitions),
            };
            rows.push(engine_run::run(spec, &workload).await?);
        }
    }
    Ok(rows)
}

/// The machine-readable line of the mode, for the partition count whose same-partition and
/// cross-partition rates sum highest:
/// `engine same_partition_tps=N cross_partition_tps=M partitions=P fsync=on`.
pub fn summary_line(rows: &[ModeReport]) -> Option<String> {
    let rate = |mode: &str, partitions: u32| {
        rows.iter()
            .find(|row| row.mode == mode && row.partitions == partitions)
            .map_or(0.0, |row| row.transfers_per_second)
    };
    let best = rows
        .iter()
        .map(|row| row.partitions)
        .map(|p| (p, rate(SAME_PARTITION, p), rate(CROSS_PARTITION, p)))
        .fold(None, |best: Option<(u32, f64, f64)>, run| match best {
            Some((_, same, cross)) if same + cross >= run.1 + run.2 => best,
            _ => Some(run),
        });
    let (partitions, same, cross) = best?;
    Some(format!(
        "engine same_partition_tps={same:.0} cross_partition_tps={cross:.0} partitions={partitions} fsync=on"
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::report::{RunShape, Tally};

    fn row(mode: &str, partitions: u32, transfers: u64) -> ModeReport {
        let mut tally = Tally::new();
        tally.transfers = transfers;
        let shape = RunShape {
            clients: 1,
            transfers_per_request: 1,
            partitions,
            nodes: None,
        };
        ModeReport::from_tally(mode, &tally, Duration::from_secs(1), shape)
    }

    #[test]
    fn the_line_names_the_best_partition_count() {
        let rows = [
            row(SAME_PARTITION, 1, 700),
            row(SAME_PARTITION, 2, 500),
            row(CROSS_PARTITION, 2, 100),
            row(SAME_PARTITION, 8, 600),
            row(CROSS_PARTITION, 8, 140),
        ];
        assert_eq!(
            summary_line(&rows).unwrap(),
            "engine same_partition_tps=600 cross_partition_tps=140 partitions=8 fsync=on"
        );
        assert_eq!(summary_line(&[]), None);
    }
}
