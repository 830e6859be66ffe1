//! Refunds in the workload: the transfers between the shared accounts that clients saw
//! committed, which any client may refund ([`Board`], kept with the history of what the
//! clients saw); what a refund asks for; and races, in which several clients refund one
//! transfer at once.
//!
//! A client that refunds posts the transfer for others to race with, now and then: for a
//! short while, every client whose next request is a refund refunds that transfer too. The
//! partition of the transfer's destination decides them one after another, and whatever
//! their order their accepted sum must stay within the transfer's amount (`refund_cap`).
//! Only transfers between the shared accounts are refunded: the accounts of edge episodes
//! ([`crate::edges`]) must keep the balances their clients know.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use walletd_core::ledger::{Command, Refund};
use walletd_core::model::event::Transfer;
use walletd_core::model::ids::TransactionId;
use walletd_core::model::money::Amount;
use walletd_core::model::partition::partition_of;

use crate::history::{Expect, History};

/// Committed transfers the board keeps (the oldest leave first).
const COMMITTED_MAX: usize = 32;
/// Of them, the newest that a refund picks half of the time.
const NEWEST: usize = 4;
/// How long a transfer posted for a race stays posted.
const RACE_WINDOW: Duration = Duration::from_millis(150);
/// One refund in this many posts its transfer for others to race with.
const POST_ONE_IN: u32 = 3;

/// The transfers the clients of a run may refund.
#[derive(Debug, Default)]
pub struct Board {
    /// Transfers between shared accounts that a client saw committed, newest last.
    committed: VecDeque<Transfer>,
    /// A transfer a client is refunding, for others to race with until the instant.
    racing: Option<(Transfer, Instant)>,
    /// Refunds that joined a race: sent for a transfer another client was refunding.
    pub raced: u64,
}

impl Board {
    /// A client saw `transfer`, between shared accounts, committed.
    pub fn publish(&mut self, transfer: Transfer) {
        if self.committed.len() == COMMITTED_MAX {
            self.committed.pop_front();
        }
        self.committed.push_back(transfer);
    }

    /// The transfer a client's next refund refunds: the one posted for a race, if any, else
    /// one of the committed ones (the newest more often), which it may post for a race.
    pub fn pick(&mut self, rng: &mut ChaCha8Rng) -> Option<Transfer> {
        let now = Instant::now();
        if let Some((transfer, until)) = self.racing {
            if now < until {
                self.raced += 1;
                return Some(transfer);
            }
            self.racing = None;
        }
        let count = self.committed.len();
        if count == 0 {
            return None;
        }
        let index = if rng.gen_bool(0.5) {
            rng.gen_range(count.saturating_sub(NEWEST)..count)
        } else {
            rng.gen_range(0..count)
        };
        let transfer = self.committed[index];
        if rng.gen_ratio(1, POST_ONE_IN) {
            self.racing = Some((transfer, now + RACE_WINDOW));
        }
        Some(transfer)
    }
}

/// How much a refund of a transfer of `minor` asks for: part of it, all that is left
/// (`None`), all of it, more than half (two such refunds pass it), or more than it moved.
pub fn asked(rng: &mut ChaCha8Rng, minor: u64) -> Option<Amount> {
    let minor = match rng.gen_range(0..20) {
        0..=5 => rng.gen_range(1..=minor),
        6..=9 => return None,
        10..=12 => minor,
        13..=14 => rng.gen_range(minor + 1..=2 * minor),
        _ => rng.gen_range(minor / 2 + 1..=minor),
    };
    Some(Amount::from_minor(minor).expect("a positive amount in range"))
}

/// A refund, under `refund_id`, of `original` (committed), asking `amount`; and what its
/// answer may be. The command names the partition of the original's destination, the
/// account it takes the money from, which `history` notes for the refund's id.
pub fn refund(
    history: &History,
    refund_id: TransactionId,
    original: &Transfer,
    amount: Option<Amount>,
    partitions: u32,
) -> (Command, Expect) {
    history.refund_source(refund_id, original.to);
    let command = Command::Refund(Refund {
        refund_id,
        original: original.key(),
        partition: partition_of(&original.to, partitions),
        amount,
    });
    let expect = Expect::Refund {
        original: original.key(),
        local: partition_of(&original.from, partitions) == partition_of(&original.to, partitions),
        beyond: amount.is_some_and(|a| a > original.amount),
    };
    (command, expect)
}

/// The transfer that refund `refund` of `original`, asking `amount`, makes.
pub fn refund_body(refund: &Refund, original: &Transfer, amount: Amount) -> Transfer {
    Transfer {
        transaction_id: refund.refund_id,
        from: original.to,
        to: original.from,
        amount,
        currency: original.currency,
    }
}
