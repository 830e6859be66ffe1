//! Dry runs: what a command would get if it came now, with nothing recorded.
//!
//! A dry run is [`Ledger::decide`] with its events thrown away. `decide` is where every
//! business rule lives and it changes nothing, so a dry run is decided by exactly the code
//! that decides the real command: the same refusals, the same idempotent answers to a
//! transaction id already used (its first outcome, or a conflict for another body), and no
//! id used up, no money moved, no record written.
//!
//! A transfer across partitions is decided in two places: its home would debit the source
//! into a hold, and its destination's Try would accept or refuse the credit. Its dry run
//! here says so, naming the transfer the destination would be asked to credit
//! ([`DryRun::credit`]: for a refund, whose amount may be decided here, the amount decided);
//! the caller then asks the destination's partition for a dry run of
//! [`Command::TryCredit`] of it, whose answer is the outcome the client would be told.

use crate::ledger::{Command, Ledger, LedgerError, Reply};
use crate::model::event::{Event, Timestamp, Transfer};

/// What a command would get from this partition now (see [`Ledger::dry_run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// The answer the command would get here.
    pub result: Result<Reply, LedgerError>,
    /// The command is a new transfer (or refund) whose destination is another partition's:
    /// the source would be debited into a hold here for this transfer, and its outcome is
    /// what that destination's Try of it would answer.
    pub credit: Option<Transfer>,
    /// The command is a multi-leg transaction this partition would refuse: the leg that
    /// fails. (One it would try across partitions answers `Pending`: its outcome is what
    /// every other participant's Try of it would answer.)
    pub failed_leg: Option<u8>,
}

impl Ledger {
    /// What `command` would get if it came now: decided as [`Ledger::execute`] would
    /// decide it, against the state as it is, with nothing applied.
    pub fn dry_run(&self, command: &Command) -> DryRun {
        self.dry_run_at(command, self.last.timestamp)
    }

    /// [`Ledger::dry_run`] at the wall-clock time `now`, as [`Ledger::execute`] at `now`
    /// would decide it (a hold's capture or void after its expiry answers the expiry).
    pub fn dry_run_at(&self, command: &Command, now: Timestamp) -> DryRun {
        let mut events = Vec::new();
        let result = self.decide_at(command, now.max(self.last.timestamp), &mut events);
        let credit = events.iter().find_map(|event| match event.effect() {
            Event::DebitTried { transfer } => Some(transfer),
            _ => None,
        });
        let failed_leg = events.iter().find_map(|event| match event {
            Event::TransactionRejected { failed_leg, .. } => *failed_leg,
            _ => None,
        });
        DryRun {
            result,
            credit,
            failed_leg,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ledger::{PhaseResult, TransferStatus};
    use crate::model::event::{Reason, Transfer};
    use crate::model::ids::{AccountId, TransactionId};
    use crate::model::money::{Amount, Currency};
    use crate::model::partition::partition_of;

    const PARTITIONS: u32 = 4;

    fn account(name: &str) -> AccountId {
        AccountId::new(name).unwrap()
    }

    fn usd(minor: u64) -> Amount {
        Amount::from_minor(minor).unwrap()
    }

    /// Two accounts on partition 0 and one elsewhere, each funded with 100.00.
    fn funded() -> (Ledger, [AccountId; 3]) {
        let on = |p: bool| {
            (0..)
                .map(|i| account(&format!("acct-{i}")))
                .filter(move |a| (partition_of(a, PARTITIONS) == 0) == p)
        };
        let mut home = on(true);
        let accounts = [
            home.next().unwrap(),
            home.next().unwrap(),
            on(false).next().unwrap(),
        ];
        let mut ledger = Ledger::new(0, PARTITIONS);
        let mut events = Vec::new();
        for (i, a) in accounts[..2].iter().enumerate() {
            let open = Command::OpenAccount {
                account: *a,
                currency: Currency::USD,
            };
            ledger.execute(&open, 1, &mut events).unwrap();
            let deposit = Command::Deposit {
                account: *a,
                amount: usd(10_000),
                currency: Currency::USD,
                transaction_id: TransactionId::new(&format!("fund-{i}")).unwrap(),
            };
            ledger.execute(&deposit, 1, &mut events).unwrap();
        }
        (ledger, accounts)
    }

    fn transfer(id: &str, from: AccountId, to: AccountId, minor: u64) -> Transfer {
        Transfer {
            transaction_id: TransactionId::new(id).unwrap(),
            from,
            to,
            amount: usd(minor),
            currency: Currency::USD,
        }
    }

    #[test]
    fn a_dry_run_answers_as_the_command_would_and_records_nothing() {
        let (mut ledger, [a, b, far]) = funded();
        let before = crate::log::snapshot::encode_snapshot(&ledger);
        let within = Command::Transfer(transfer("t1", a, b, 2_500));
        let across = Command::Transfer(transfer("t2", a, far, 2_500));
        let too_much = Command::Transfer(transfer("t3", a, b, 10_001));
        let dry = [&within, &across, &too_much].map(|c| ledger.dry_run(c));
        assert_eq!(
            dry[0].result,
            Ok(Reply::Transfer(TransferStatus::Committed))
        );
        assert_eq!(dry[0].credit, None);
        assert_eq!(dry[1].result, Ok(Reply::Transfer(TransferStatus::Pending)));
        assert_eq!(
            dry[1].credit,
            Some(transfer("t2", a, far, 2_500)),
            "the destination decides the rest"
        );
        assert_eq!(
            dry[2].result,
            Ok(Reply::Transfer(TransferStatus::Rejected(
                Reason::InsufficientFunds
            )))
        );
        // Nothing changed: not a byte of the state, and every id is still free.
        assert_eq!(crate::log::snapshot::encode_snapshot(&ledger), before);
        let mut events = Vec::new();
        for (command, dry) in [&within, &across, &too_much].into_iter().zip(&dry) {
            assert_eq!(ledger.execute(command, 2, &mut events), dry.result);
        }
        // Once recorded, a dry run of the same id answers as a retry would.
        assert_eq!(
            ledger.dry_run(&within),
            DryRun {
                result: Ok(Reply::Transfer(TransferStatus::Committed)),
                credit: None,
                failed_leg: None,
            }
        );
        let other_body = Command::Transfer(transfer("t1", a, b, 1));
        assert_eq!(
            ledger.dry_run(&other_body).result,
            Err(LedgerError::Conflict(TransactionId::new("t1").unwrap()))
        );
    }

    #[test]
    fn a_destination_dry_run_of_a_try_says_whether_it_would_take_the_credit() {
        let (ledger, [a, b, _]) = funded();
        let (far_source, _) = (0..)
            .map(|i| account(&format!("src-{i}")))
            .map(|s| (s, partition_of(&s, PARTITIONS)))
            .find(|(_, p)| *p != 0)
            .unwrap();
        let credit = |to| Command::TryCredit(transfer("t9", far_source, to, 100));
        assert_eq!(
            ledger.dry_run(&credit(b)).result,
            Ok(Reply::Phase(PhaseResult::Tried))
        );
        let unknown = (0..)
            .map(|i| account(&format!("nobody-{i}")))
            .find(|u| partition_of(u, PARTITIONS) == 0)
            .unwrap();
        assert_eq!(
            ledger.dry_run(&credit(unknown)).result,
            Ok(Reply::Phase(PhaseResult::TryFailed(
                Reason::DestinationNotFound
            )))
        );
        assert!(ledger
            .credit(&transfer("t9", far_source, a, 100).key())
            .is_none());
    }

    proptest! {
        /// For any sequence of client commands, a dry run of each answers exactly what
        /// executing it then answers, and leaves the state as it was.
        #[test]
        fn dry_runs_agree_with_execution(
            steps in prop::collection::vec((0..4usize, 0..3usize, 0..3usize, 1..15_000u64, 0..6u8), 1..40)
        ) {
            let (mut ledger, accounts) = funded();
            let mut events = Vec::new();
            for (i, (kind, from, to, minor, id)) in steps.into_iter().enumerate() {
                let id = TransactionId::new(&format!("id-{id}")).unwrap();
                let command = match kind {
                    0 | 1 => Command::Transfer(Transfer {
                        transaction_id: id,
                        from: accounts[from % 2],
                        to: accounts[to],
                        amount: usd(minor),
                        currency: Currency::USD,
                    }),
                    2 => Command::Deposit {
                        account: accounts[from % 2],
                        amount: usd(minor),
                        currency: Currency::USD,
                        transaction_id: id,
                    },
                    _ => Command::Withdraw {
                        account: accounts[from % 2],
                        amount: usd(minor),
                        currency: Currency::USD,
                        transaction_id: id,
                    },
                };
                let before = crate::log::snapshot::encode_snapshot(&ledger);
                let dry = ledger.dry_run(&command);
                prop_assert_eq!(&crate::log::snapshot::encode_snapshot(&ledger), &before);
                events.clear();
                let real = ledger.execute(&command, i as u64 + 2, &mut events);
                prop_assert_eq!(&real, &dry.result);
                let tried = events.iter().find_map(|e| match e {
                    Event::DebitTried { transfer } => Some(*transfer),
                    _ => None,
                });
                prop_assert_eq!(dry.credit, tried);
            }
        }
    }
}
