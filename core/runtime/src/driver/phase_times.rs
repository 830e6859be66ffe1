//! How long cross-partition transfers take at their home, for the driver's histograms.
//!
//! The home decides a transfer, and finishes it, only while it handles a phase response (a
//! timer resends messages, it never decides), and the ledger stamps both moments on the
//! transfer's row (`decided_at`, `finished_at`, the times the API shows). So the driver
//! reads those stamps for the rows a round of responses is about, before and after the
//! machine handles them, and a stamp that appeared is a transition to record. This reads
//! the rows and changes nothing: no rule of the protocol lives here.

use walletd_core::ledger::{Ledger, TransferRow};
use walletd_core::model::event::{Timestamp, TransferKey};
use walletd_core::protocol::message::PeerMessage;

use super::DriverStats;

/// The stamps of one home row before its responses were handled.
#[derive(Debug, Clone, Copy)]
struct Before {
    key: TransferKey,
    decided_at: Timestamp,
    finished_at: Timestamp,
}

/// The rows a round of phase responses is about, as they were before it. At most one input's
/// messages ([`PEER_MESSAGES_PER_INPUT_MAX`](walletd_core::protocol::message::PEER_MESSAGES_PER_INPUT_MAX))
/// at a time; the buffer is kept for the next input.
#[derive(Debug, Default)]
pub(super) struct PhaseTimes {
    before: Vec<Before>,
}

impl PhaseTimes {
    /// Notes the stamps of the unfinished home rows that the responses among `messages` are
    /// about (a response about a finished row changes nothing).
    pub(super) fn before(&mut self, ledger: &Ledger, messages: &[PeerMessage]) {
        debug_assert!(self.before.is_empty());
        for message in messages {
            let PeerMessage::Response(response) = message else {
                continue;
            };
            let Some(row) = ledger.transfer(&response.key) else {
                continue;
            };
            if row.remote && row.finished_at == 0 {
                self.before.push(Before {
                    key: response.key,
                    decided_at: row.decided_at,
                    finished_at: row.finished_at,
                });
            }
        }
        // A transfer answered twice in one input is one transition, recorded once.
        self.before.sort_unstable_by_key(|before| before.key);
        self.before.dedup_by(|a, b| a.key == b.key);
    }

    /// Records the decisions and ends that happened since [`PhaseTimes::before`].
    pub(super) fn after(&mut self, ledger: &Ledger, stats: &DriverStats) {
        for before in self.before.drain(..) {
            let Some(row) = ledger.transfer(&before.key) else {
                continue;
            };
            record(&before, &row, stats);
        }
    }
}

/// Wall-clock stamps may step back (the clock was set): such a span counts as 0.
fn record(before: &Before, row: &TransferRow, stats: &DriverStats) {
    if before.decided_at == 0 && row.decided_at != 0 {
        let span_us = row.decided_at.saturating_sub(row.accepted_at);
        stats.try_to_decision_us.record(span_us);
    }
    if before.finished_at == 0 && row.finished_at != 0 {
        let span_us = row.finished_at.saturating_sub(row.decided_at);
        stats.decision_to_finish_us.record(span_us);
    }
}
