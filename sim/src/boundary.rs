//! The decision boundaries the workload aims at ([`crate::edges`]), and how often a run hit
//! each: a run prints its [`Hits`] as one line, and a sweep adds up, per boundary, the runs
//! that hit it ([`SweepHits`]), so a sweep says which edges of the protocol it exercised.
//!
//! A boundary counts as hit only when a client saw the outcome that proves it was reached.

use std::fmt;

/// One decision boundary of the ledger or the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Boundary {
    /// A transfer of exactly the available balance, accepted.
    TransferExact,
    /// A transfer of the available balance and one minor unit more, rejected for funds.
    TransferOver,
    /// A withdrawal of exactly the available balance, leaving zero.
    WithdrawExact,
    /// A withdrawal of one minor unit more than the available balance, refused.
    WithdrawOver,
    /// A retry sent while the first attempt of the request was still unanswered, both
    /// answered (the same request must not be applied twice, nor answered two ways).
    RetryInFlight,
    /// A balance read sent while a deposit to the account was still unanswered (its batch
    /// being synced), answered with the deposit applied: the read waited for that sync.
    ReadDuringSync,
    /// A request to an account sent while the account was being opened, answered (either
    /// way: before the open, the account does not exist yet).
    OpenRace,
    /// Concurrent transfers out of one account to destinations on several partitions, more
    /// than its balance: some accepted, some rejected for funds.
    ConcurrentDrain,
    /// Two concurrent refunds of one committed transfer, each of more than half of it: one
    /// committed, the other refused for exceeding what was left.
    RefundRace,
    /// Then a refund of one more than what is left, refused for exceeding it, and a refund of
    /// all that is left (no amount), accepted.
    RefundRest,
}

impl Boundary {
    pub const ALL: [Boundary; 10] = [
        Boundary::TransferExact,
        Boundary::TransferOver,
        Boundary::WithdrawExact,
        Boundary::WithdrawOver,
        Boundary::RetryInFlight,
        Boundary::ReadDuringSync,
        Boundary::OpenRace,
        Boundary::ConcurrentDrain,
        Boundary::RefundRace,
        Boundary::RefundRest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Boundary::TransferExact => "transfer_exact",
            Boundary::TransferOver => "transfer_over",
            Boundary::WithdrawExact => "withdraw_exact",
            Boundary::WithdrawOver => "withdraw_over",
            Boundary::RetryInFlight => "retry_in_flight",
            Boundary::ReadDuringSync => "read_during_sync",
            Boundary::OpenRace => "open_race",
            Boundary::ConcurrentDrain => "concurrent_drain",
            Boundary::RefundRace => "refund_race",
            Boundary::RefundRest => "refund_rest",
        }
    }
}

/// What starts the line of a run's hits.
pub const HITS_PREFIX: &str = "boundaries:";

/// How many times one run hit each boundary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits([u32; Boundary::ALL.len()]);

impl Hits {
    pub fn hit(&mut self, boundary: Boundary) {
        self.0[boundary as usize] += 1;
    }

    pub fn count(&self, boundary: Boundary) -> u32 {
        self.0[boundary as usize]
    }

    /// The hits of a run's line (`boundaries: transfer_exact=3 ...`), if `line` is one.
    pub fn parse(line: &str) -> Option<Hits> {
        let mut hits = Hits::default();
        for field in line.strip_prefix(HITS_PREFIX)?.split_whitespace() {
            let (name, count) = field.split_once('=')?;
            let boundary = Boundary::ALL.into_iter().find(|b| b.name() == name)?;
            hits.0[boundary as usize] = count.parse().ok()?;
        }
        Some(hits)
    }
}

/// `boundaries: transfer_exact=3 transfer_over=2 ...`, every boundary, in order.
impl fmt::Display for Hits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HITS_PREFIX)?;
        for boundary in Boundary::ALL {
            write!(f, " {}={}", boundary.name(), self.count(boundary))?;
        }
        Ok(())
    }
}

/// Over a sweep: in how many runs each boundary was hit at least once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepHits {
    /// Runs whose hits were reported.
    pub runs: u32,
    hit_in: [u32; Boundary::ALL.len()],
}

impl SweepHits {
    pub fn add(&mut self, hits: &Hits) {
        self.runs += 1;
        for boundary in Boundary::ALL {
            self.hit_in[boundary as usize] += u32::from(hits.count(boundary) > 0);
        }
    }

    /// The boundaries no run hit.
    pub fn missed(&self) -> Vec<Boundary> {
        Boundary::ALL
            .into_iter()
            .filter(|b| self.hit_in[*b as usize] == 0)
            .collect()
    }
}

/// `boundaries hit in runs (of N): transfer_exact=N ...`.
impl fmt::Display for SweepHits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boundaries hit in runs (of {}):", self.runs)?;
        for boundary in Boundary::ALL {
            write!(f, " {}={}", boundary.name(), self.hit_in[boundary as usize])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_line_parses_back_and_adds_up() {
        let mut hits = Hits::default();
        hits.hit(Boundary::OpenRace);
        hits.hit(Boundary::OpenRace);
        let line = hits.to_string();
        assert!(line.contains(" open_race=2 "), "{line}");
        assert_eq!(Hits::parse(&line), Some(hits));
        assert_eq!(Hits::parse("seed=1 result=ok"), None);
        let mut sweep = SweepHits::default();
        sweep.add(&hits);
        sweep.add(&Hits::default());
        assert_eq!(sweep.runs, 2);
        assert!(sweep.to_string().contains(" open_race=1 "));
        assert_eq!(sweep.missed().len(), Boundary::ALL.len() - 1);
    }
}
