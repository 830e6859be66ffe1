//! Storage faults in synced data (the nemesis's `damage`, see [`crate::disk::Damage`]) and
//! what the restarts on them did. A restart on damaged synced data must refuse the partition
//! with an error that names the file and the offset: that is expected, and counted. A restart
//! that starts instead (recovery cut the damage like a torn write, or trusted it), or refuses
//! without naming the damage, is a violation of `damage_refused`.
//!
//! A run prints its counts as one line; a sweep adds them up.

use std::fmt;

use crate::cluster::StartOutcome;
use crate::disk::Damage;

/// What starts the line of a run's storage faults.
pub const PREFIX: &str = "storage faults:";

/// The storage faults of one run and what their restarts did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageFaults {
    pub injected: u32,
    /// Restarts that refused the damaged partition, naming the file and offset.
    pub refused: u32,
    /// Restarts that stopped before recovery reached the damage (a sync failed first), or
    /// that the heal made: nothing was shown either way.
    pub unchecked: u32,
    /// What went wrong instead, one line each.
    pub violations: Vec<String>,
}

impl StorageFaults {
    /// Holds the `outcome` of node `node`'s restart on `damage` against what must happen: a
    /// refusal naming the damage. Returns a line for the fault log.
    pub fn judge(&mut self, node: &str, damage: &Damage, outcome: Option<StartOutcome>) -> String {
        let violation = match outcome {
            Some(StartOutcome::Refused(error)) if damage.named_by(&error) => {
                self.refused += 1;
                return format!("{node} refused to start on the damage, as it must: {error}");
            }
            Some(StartOutcome::Stopped) => {
                self.unchecked += 1;
                return format!("{node} stopped before its recovery reached the damage");
            }
            Some(StartOutcome::Refused(error)) => format!(
                "{node} refused to start on damaged synced data ({damage}), but its error does \
                 not name the file and the offset: {error}"
            ),
            Some(StartOutcome::Running) => format!(
                "{node} started on damaged synced data ({damage}): recovery cut or trusted it"
            ),
            None => format!(
                "{node} neither started nor refused to start on damaged synced data ({damage})"
            ),
        };
        self.violations.push(violation.clone());
        format!("VIOLATION: {violation}")
    }

    /// The counts of a run's line (`storage faults: 3 injected, ...`), if `line` is one.
    pub fn parse(line: &str) -> Option<StorageFaults> {
        let mut counts = line.strip_prefix(PREFIX)?.split(',').map(|part| {
            let number = part.split_whitespace().next()?;
            number.parse::<u32>().ok()
        });
        let mut next = || counts.next().flatten();
        Some(StorageFaults {
            injected: next()?,
            refused: next()?,
            unchecked: next()?,
            violations: Vec::new(),
        })
    }
}

/// `storage faults: 3 injected, 3 refused as expected, 0 unchecked`.
impl fmt::Display for StorageFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX} {} injected, {} refused as expected, {} unchecked",
            self.injected, self.refused, self.unchecked
        )
    }
}

/// Over a sweep: the storage faults of every run, and in how many runs there were any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStorageFaults {
    /// Runs whose counts were reported.
    pub runs: u32,
    /// Runs with at least one storage fault.
    pub runs_with: u32,
    pub injected: u64,
    pub refused: u64,
    pub unchecked: u64,
}

impl SweepStorageFaults {
    pub fn add(&mut self, run: &StorageFaults) {
        self.runs += 1;
        self.runs_with += u32::from(run.injected > 0);
        self.injected += u64::from(run.injected);
        self.refused += u64::from(run.refused);
        self.unchecked += u64::from(run.unchecked);
    }
}

/// `storage faults: N injected in R of M runs, N refused as expected, N unchecked`.
impl fmt::Display for SweepStorageFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX} {} injected in {} of {} runs, {} refused as expected, {} unchecked",
            self.injected, self.runs_with, self.runs, self.refused, self.unchecked
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::DamageKind;

    fn damage() -> Damage {
        Damage {
            segment: "log-00000000000000000001.seg".into(),
            sector: 2,
            kind: DamageKind::BitFlips(3),
            offsets: 990..1536,
        }
    }

    #[test]
    fn only_a_refusal_that_names_the_damage_is_as_expected() {
        let mut faults = StorageFaults::default();
        let named = "node-1 refused to start: partition 4: log log-00000000000000000001.seg is \
                     corrupt at byte offset 1003: checksum mismatch in synced data";
        faults.judge(
            "node-1",
            &damage(),
            Some(StartOutcome::Refused(named.into())),
        );
        assert_eq!((faults.refused, faults.violations.len()), (1, 0));
        let unnamed = "node-1 refused to start: partition 4: storage I/O failed: EIO";
        faults.judge(
            "node-1",
            &damage(),
            Some(StartOutcome::Refused(unnamed.into())),
        );
        faults.judge("node-1", &damage(), Some(StartOutcome::Running));
        faults.judge("node-1", &damage(), None);
        assert_eq!(faults.violations.len(), 3, "{:?}", faults.violations);
        assert!(faults.violations[1].contains("started on damaged synced data"));
        faults.judge("node-1", &damage(), Some(StartOutcome::Stopped));
        assert_eq!(faults.unchecked, 1);
    }

    #[test]
    fn a_run_line_parses_back_and_adds_up() {
        let run = StorageFaults {
            injected: 4,
            refused: 3,
            unchecked: 1,
            violations: vec!["not printed".into()],
        };
        let parsed = StorageFaults::parse(&run.to_string()).expect("a storage faults line");
        assert_eq!(
            (parsed.injected, parsed.refused, parsed.unchecked),
            (4, 3, 1)
        );
        assert_eq!(StorageFaults::parse("boundaries: open_race=1"), None);
        let mut sweep = SweepStorageFaults::default();
        sweep.add(&parsed);
        sweep.add(&StorageFaults::default());
        assert_eq!((sweep.runs, sweep.runs_with, sweep.injected), (2, 1, 4));
        assert!(sweep.to_string().contains("4 injected in 1 of 2 runs"));
    }
}
