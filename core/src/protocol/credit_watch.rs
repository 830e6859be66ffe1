//! The destination's watch over its pending credits: a credit still pending a while after it
//! was tried is asked about ([`crate::protocol::message::PeerMessage::Unresolved`]), and
//! again at that interval until it is confirmed or cancelled.
//!
//! Why a destination must ask: a home sends its Try before its own debit is durable (the
//! commit point needs both sides durable, not one after the other), so a power loss at the
//! home can take back a debit whose credit the destination already holds. The home then has
//! no row and sends nothing; only the destination knows the credit exists. Asked, the home
//! answers from its row, or records the transfer refused for good and cancels the credit.
//!
//! Cheap on the hot path: rows of the transfers table (credit rows among the home rows, see
//! [`crate::ledger::transfer_table`]) are only ever appended, so the watch keeps no key per
//! credit, only marks ("rows below this position are due at that time", one per tick that
//! added rows) and a cursor. Every row is looked at once, when its mark is due (a home row's
//! packed state only); the few credits still pending are kept by position and looked at
//! again. A pending credit is never on disk only; one that has gone there is final.
//!
//! A credit pending for long moves on in the transfers table (see `transfer_table`, "Rows in
//! flight move on"): the table reports each move, and the watch follows the credit to its new
//! position ([`CreditWatch::moved`]), keeping its due time and deferral. Without that, a
//! credit that moved before its first look would be looked at as a new row, later, and on a
//! busy partition (a move every million rows) might move again before each look, never asked
//! about.
//!
//! A hold's credit stays pending as long as the hold is held, which may be days. Asked about
//! one, its home answers that it is held and until when
//! ([`crate::protocol::message::PeerMessage::StillHeld`]); the watch then leaves it alone
//! until then ([`CreditWatch::defer`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::ledger::Ledger;
use crate::model::event::{Transfer, TransferKey};
use crate::protocol::coordinator::Micros;

/// Most deferred credits the watch keeps; past it, the credits of more held holds are asked
/// about at the usual interval (a destination takes credits from every home, each of which
/// holds at most [`crate::ledger::OPEN_HOLDS_MAX`] open holds).
const DEFERRED_MAX: usize = 1 << 20;

/// Most credits asked about in one call of [`CreditWatch::due`]: a destination that holds
/// many pending credits (its home down for long) asks in rounds, not in one burst as large
/// as its table. The rest stay due, and the next tick takes the next round.
pub const UNRESOLVED_PER_ROUND_MAX: usize = 4096;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct CreditWatch {
    /// `(due, end)`: credit rows at positions below `end` are due at `due`. Both ascend.
    marks: VecDeque<(Micros, usize)>,
    /// Rows at positions below this one were looked at once, or are covered by a mark.
    marked: usize,
    /// Rows below this one were looked at once.
    looked_at: usize,
    /// `(due, position)` of rows found still pending, to look at again.
    again: VecDeque<(Micros, usize)>,
    /// Credits of held holds, by position: not asked about before the time given. By
    /// position, not key: a row that leaves memory once final ([`crate::ledger::cold`])
    /// cannot be read back for its key when its deferral ends.
    deferred: FxHashMap<usize, Micros>,
    /// `(due, position)` of deferred rows whose `again` entry came up before their time,
    /// and of credits that moved on before their first look.
    later: BinaryHeap<Reverse<(Micros, usize)>>,
    /// Where a credit that an entry of `again` or `later` names moved on to.
    forward: FxHashMap<usize, usize>,
    /// Positions moved credits went to, not yet passed by the looks at new rows: their
    /// credits are watched from the entry that followed them, not looked at as new.
    followed: FxHashSet<usize>,
}

impl CreditWatch {
    /// Watches every credit `ledger` holds now (a recovered state) from `now` on.
    pub fn new() -> CreditWatch {
        CreditWatch::default()
    }

    /// Covers the credit rows added since the last call: due `after_us` from `now`.
    pub fn mark(&mut self, ledger: &mut Ledger, now: Micros, after_us: u64) {
        self.follow(ledger, now, after_us);
        // Positions of the transfers table: credit rows among home rows.
        let end = ledger.transfer_count();
        if end > self.marked {
            self.marks.push_back((now + after_us, end));
            self.marked = end;
        }
    }

    /// Follows credits that moved on in the transfers table: `moves` are `(from, to)`
    /// positions, in the order they moved ([`Ledger::take_moved_credits`]). A credit keeps
    /// its due time and deferral; one not looked at yet is looked at when it would have
    /// been (or `after_us` from `now`, if no mark covers it).
    fn moved(&mut self, moves: &[(usize, usize)], now: Micros, after_us: u64) {
        for &(from, to) in moves {
            if let Some(until) = self.deferred.remove(&from) {
                self.deferred.insert(to, until);
            }
            if from < self.looked_at || self.followed.remove(&from) {
                // Looked at, so pending then and named by an entry: the entry follows it.
                self.forward.insert(from, to);
            } else {
                let covering = self.marks.partition_point(|&(_, end)| end <= from);
                let due = self.marks.get(covering).map_or(now + after_us, |m| m.0);
                self.later.push(Reverse((due, to)));
            }
            self.followed.insert(to);
        }
    }

    /// Takes the moves of pending credits `ledger` made since the last call and follows them
    /// ([`CreditWatch::moved`]): every method that looks at a position calls it first, so a
    /// move is never missed.
    fn follow(&mut self, ledger: &mut Ledger, now: Micros, after_us: u64) {
        let moves = ledger.take_moved_credits();
        if !moves.is_empty() {
            self.moved(&moves, now, after_us);
        }
    }

    /// Where the credit an entry names at `position` is now: the entry follows its moves.
    fn current(&mut self, mut position: usize) -> usize {
        while let Some(to) = self.forward.remove(&position) {
            position = to;
        }
        position
    }

    /// When the watch next has something to look at.
    pub fn next_due(&self) -> Option<Micros> {
        let mark = self.marks.front().map(|(due, _)| *due);
        let again = self.again.front().map(|(due, _)| *due);
        let later = self.later.peek().map(|Reverse((due, _))| *due);
        mark.into_iter().chain(again).chain(later).min()
    }

    /// Leaves the credit of `key` alone until `until`: its home said the hold is held until
    /// about then. The deferral ends with the credit, or when it is next asked about. A key
    /// with no pending credit in memory here is not deferred: there is nothing to ask about.
    pub fn defer(
        &mut self,
        ledger: &mut Ledger,
        key: &TransferKey,
        until: Micros,
        now: Micros,
        after_us: u64,
    ) {
        self.follow(ledger, now, after_us);
        let Some(position) = ledger.pending_credit_position(key) else {
            return;
        };
        if self.deferred.len() < DEFERRED_MAX {
            self.deferred.insert(position, until);
        }
    }

    /// The transfers whose credits are due and still pending at `now`, at most
    /// [`UNRESOLVED_PER_ROUND_MAX`] of them; each is looked at again `after_us` later.
    pub fn due(
        &mut self,
        ledger: &mut Ledger,
        now: Micros,
        after_us: u64,
        out: &mut Vec<Transfer>,
    ) {
        self.follow(ledger, now, after_us);
        let mut pending = Vec::new();
        let first = out.len();
        let full = |out: &Vec<Transfer>| out.len() - first >= UNRESOLVED_PER_ROUND_MAX;
        while let Some(&Reverse((due, position))) = self.later.peek() {
            if due > now || full(out) {
                break;
            }
            self.later.pop();
            let position = self.current(position);
            self.undefer(position);
            if let Some(transfer) = pending_transfer(ledger, position) {
                out.push(transfer);
                pending.push(position);
            }
        }
        'marks: while let Some(&(due, end)) = self.marks.front() {
            if due > now {
                break;
            }
            while self.looked_at < end {
                if full(out) {
                    break 'marks;
                }
                // A credit that moved here is watched from the entry that followed it.
                let followed = !self.followed.is_empty() && self.followed.remove(&self.looked_at);
                let transfer = (!followed)
                    .then(|| pending_transfer(ledger, self.looked_at))
                    .flatten();
                if let Some(transfer) = transfer {
                    out.push(transfer);
                    pending.push(self.looked_at);
                }
                self.looked_at += 1;
            }
            self.marks.pop_front();
        }
        while let Some(&(due, position)) = self.again.front() {
            if due > now || full(out) {
                break;
            }
            self.again.pop_front();
            let position = self.current(position);
            let Some(transfer) = pending_transfer(ledger, position) else {
                self.undefer(position);
                continue;
            };
            match self.deferred.get(&position) {
                Some(&until) if until > now => self.later.push(Reverse((until, position))),
                _ => {
                    self.undefer(position);
                    out.push(transfer);
                    pending.push(position);
                }
            }
        }
        self.again.extend(
            pending
                .into_iter()
                .map(|position| (now + after_us, position)),
        );
    }

    /// Ends the deferral of the credit row at `position`, if it has one.
    fn undefer(&mut self, position: usize) {
        self.deferred.remove(&position);
    }

    /// Credits still pending that the watch will look at again.
    #[cfg(test)]
    fn unresolved(&self) -> usize {
        self.again.len()
    }
}

/// The transfer of the credit row at `position`, if that credit is still pending.
fn pending_transfer(ledger: &Ledger, position: usize) -> Option<Transfer> {
    ledger.pending_credit_at(position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Command;
    use crate::protocol::tests::support::{cross_transfer_for, destination_ledger};

    #[test]
    fn a_pending_credit_is_asked_about_once_due_and_again_until_it_is_settled() {
        let (mut ledger, transfers) = destination_ledger(3);
        let mut watch = CreditWatch::new();
        watch.mark(&mut ledger, 1_000, 500);
        assert_eq!(watch.next_due(), Some(1_500));
        let mut out = Vec::new();
        watch.due(&mut ledger, 1_499, 500, &mut out);
        assert!(out.is_empty(), "nothing is due before its time");
        watch.due(&mut ledger, 1_500, 500, &mut out);
        assert_eq!(out, transfers, "every pending credit, in log order");
        // Settle one: only the other two are asked about again.
        let mut events = Vec::new();
        ledger
            .execute(&Command::ConfirmCredit(transfers[1]), 2, &mut events)
            .unwrap();
        out.clear();
        watch.due(&mut ledger, 2_000, 500, &mut out);
        assert_eq!(out, vec![transfers[0], transfers[2]]);
        assert_eq!(watch.unresolved(), 2);
        // A credit tried later is covered by the next mark, not by the first.
        let late = cross_transfer_for(&ledger, "late");
        ledger
            .execute(&Command::TryCredit(late), 3, &mut events)
            .unwrap();
        watch.mark(&mut ledger, 2_100, 500);
        out.clear();
        watch.due(&mut ledger, 2_500, 500, &mut out);
        assert_eq!(out, vec![transfers[0], transfers[2]]);
        out.clear();
        watch.due(&mut ledger, 2_600, 500, &mut out);
        assert_eq!(out, vec![late]);
    }
}

#[cfg(test)]
mod move_tests {
    use super::*;
    use crate::ledger::transfer_table::MOVE_AFTER_CHUNKS;
    use crate::ledger::{Command, CHUNK_ROWS};
    use crate::protocol::tests::support::{cross_transfer_for, destination_ledger};

    /// Records enough settled credits that every pending credit moves on once, and hands
    /// the watch the moves, as the partition machine does.
    fn move_pending_credits(ledger: &mut Ledger, watch: &mut CreditWatch, tag: &str, now: u64) {
        let mut events = Vec::new();
        let moved_before = ledger.transfer_count();
        for i in 0..(MOVE_AFTER_CHUNKS + 1) * CHUNK_ROWS {
            let settled = cross_transfer_for(ledger, &format!("{tag}-{i}"));
            for command in [Command::TryCredit(settled), Command::ConfirmCredit(settled)] {
                ledger.execute(&command, 2, &mut events).unwrap();
            }
        }
        let moves = ledger.take_moved_credits();
        assert!(moves
            .iter()
            .all(|&(from, to)| from < moved_before && to >= moved_before));
        assert_eq!(
            moves.len(),
            ledger.pending_credits().count(),
            "each moved once"
        );
        watch.moved(&moves, now, 500);
        watch.mark(ledger, now, 500);
    }

    #[test]
    fn a_credit_that_moves_on_keeps_its_due_time_its_deferral_and_one_entry() {
        let (mut ledger, transfers) = destination_ledger(3);
        let mut watch = CreditWatch::new();
        watch.mark(&mut ledger, 1_000, 500);
        // Moved before their first look: asked about when they would have been, once.
        move_pending_credits(&mut ledger, &mut watch, "a", 1_100);
        let mut out = Vec::new();
        watch.due(&mut ledger, 1_500, 500, &mut out);
        assert_eq!(out, transfers);
        out.clear();
        watch.due(&mut ledger, 1_600, 500, &mut out);
        assert!(out.is_empty(), "not looked at again as new rows: {out:?}");
        // One is deferred; then all move on again after their look.
        watch.defer(&mut ledger, &transfers[0].key(), 10_000, 1_600, 500);
        move_pending_credits(&mut ledger, &mut watch, "b", 1_700);
        out.clear();
        watch.due(&mut ledger, 2_000, 500, &mut out);
        assert_eq!(out, vec![transfers[1], transfers[2]]);
        out.clear();
        watch.due(&mut ledger, 2_200, 500, &mut out);
        assert!(out.is_empty(), "each credit once: {out:?}");
        // And again, before the next round comes due: the entries follow every move.
        move_pending_credits(&mut ledger, &mut watch, "c", 2_300);
        out.clear();
        watch.due(&mut ledger, 2_500, 500, &mut out);
        assert_eq!(out, vec![transfers[1], transfers[2]]);
        out.clear();
        watch.due(&mut ledger, 10_000, 500, &mut out);
        assert_eq!(out, transfers, "the deferred one once its deferral ends");
        assert!(watch.forward.is_empty() && watch.followed.is_empty());
    }
}

#[cfg(test)]
mod round_tests {
    use super::*;
    use crate::protocol::tests::support::destination_ledger;

    #[test]
    fn many_due_credits_are_asked_about_in_rounds_each_once() {
        let count = UNRESOLVED_PER_ROUND_MAX + 10;
        let (mut ledger, transfers) = destination_ledger(count);
        let mut watch = CreditWatch::new();
        watch.mark(&mut ledger, 0, 100);
        let mut out = Vec::new();
        watch.due(&mut ledger, 100, 100, &mut out);
        assert_eq!(out.len(), UNRESOLVED_PER_ROUND_MAX, "one round at most");
        assert_eq!(watch.next_due(), Some(100), "the rest are still due");
        watch.due(&mut ledger, 101, 100, &mut out);
        assert_eq!(out.len(), transfers.len(), "every credit once");
        assert!(out == transfers, "in log order");
    }
}
