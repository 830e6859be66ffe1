//! Late retries: once the run has quiesced, the first transfers and refunds the clients
//! settled are sent again, each with the answer it first got as the expectation
//! ([`Expect::Same`]).
//!
//! By then a partition has taken many snapshots and most nodes have crashed and restarted,
//! so the home rows of the first transfers are on disk only (chunk files, see
//! `walletd_core::ledger::cold`; the simulator keeps few rows in memory): these retries go
//! through the cold path, across crashes, and a transaction id that was forgotten or read
//! back wrong shows as a different answer. The repeats of the workload, drawn from recent
//! answers, mostly find rows still in memory.

use walletd_core::ledger::{Command, LedgerError};

use crate::history::{is_business_refusal, Expect, History};
use crate::rng::{stream, Purpose};
use crate::workload::Requester;

/// Transfers retried at the end of a run: the first this many that settled.
pub const LATE_RETRIES_MAX: usize = 64;
/// Refunds retried after them: the first this many that settled (a refund's retry finds its
/// row, then what the partition's refund table says it refunds).
pub const LATE_REFUNDS_MAX: usize = 16;

/// The first transfers of `history` that settled, then its first refunds that settled, with
/// their first answer; retried by the client numbered `client` (one past the workload's),
/// each up to `attempts_max` times.
pub async fn retry_first_transfers(
    history: &History,
    requester: &Requester,
    seed: u64,
    client: u32,
    attempts_max: u32,
) {
    let first_of = |refunds: bool, most: usize| -> Vec<_> {
        (history.lock().ops.iter())
            .filter(|op| match op.command {
                Command::Transfer(_) => !refunds && op.expect == Expect::Valid,
                Command::Refund(_) => refunds && matches!(op.expect, Expect::Refund { .. }),
                _ => false,
            })
            .filter_map(|op| Some((op.command.clone(), op.settled()?.clone())))
            .filter(|(_, answer)| answer.as_ref().err().is_none_or(settles))
            .take(most)
            .collect()
    };
    let mut first = first_of(false, LATE_RETRIES_MAX);
    first.extend(first_of(true, LATE_REFUNDS_MAX));
    let mut rng = stream(seed, Purpose::Client(client));
    for (command, answer) in first {
        let op = history.start(client, &command, Expect::Same(answer));
        requester
            .execute(history, op, &command, attempts_max, &mut rng)
            .await;
    }
}

/// Whether an error is an answer the ledger gives forever (a recorded refusal or a conflict).
fn settles(error: &LedgerError) -> bool {
    is_business_refusal(error) || matches!(error, LedgerError::Conflict(_))
}
