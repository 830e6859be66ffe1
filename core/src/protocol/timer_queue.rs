//! The coordinators' due times, earliest first: a queue that costs O(1) for the common case,
//! and the rule by which a coordinator's flights keep one live entry each in it.
//!
//! Nearly every due time the coordinator sets is "now plus a constant" with a clock that only
//! goes forward, so it is no earlier than the last one set: such entries are appended to a
//! plain deque, which stays sorted. Only an entry earlier than the deque's last (a shorter
//! interval set after a longer one) goes to a binary heap. A heap alone sifted every entry
//! through `log n` levels of 138-byte moves, a few percent of a cross-partition transfer.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;

use crate::model::event::TransferKey;
use crate::protocol::coordinator::Micros;

type Entry = (Micros, TransferKey);

/// Entries `(due, key)`, taken earliest first (ties by key).
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    /// Sorted: each entry is no earlier than the one before it.
    in_order: VecDeque<Entry>,
    /// Entries that came earlier than the last of `in_order`.
    out_of_order: BinaryHeap<Reverse<Entry>>,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, due: Micros, key: TransferKey) {
        let entry = (due, key);
        match self.in_order.back() {
            Some(last) if *last > entry => self.out_of_order.push(Reverse(entry)),
            _ => self.in_order.push_back(entry),
        }
    }

    /// The earliest entry.
    pub(crate) fn peek(&self) -> Option<&Entry> {
        match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(a), Some(Reverse(b))) => Some(if a <= b { a } else { b }),
            (a, b) => a.or(b.map(|Reverse(b)| b)),
        }
    }

    /// Takes the earliest entry.
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        let from_deque = match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(a), Some(Reverse(b))) => a <= b,
            (a, _) => a.is_some(),
        };
        if from_deque {
            self.in_order.pop_front()
        } else {
            self.out_of_order.pop().map(|Reverse(entry)| entry)
        }
    }

    /// Queues an entry for `flight`, under `key`, unless it has one at or before its due time
    /// (an early entry is queued again for that time when it comes up, see
    /// [`TimerQueue::settle`]) or is never due.
    pub(crate) fn arm(&mut self, key: TransferKey, flight: &mut impl Timed) {
        let due = flight.due();
        if due != NEVER && flight.entry().is_none_or(|queued| due < queued) {
            self.push(due, key);
            *flight.entry() = Some(due);
        }
    }

    /// Makes the earliest entry, if any, the exact due time of a flight of `flights`, so that
    /// [`TimerQueue::peek`] tells when the next one is due. Entries are not removed when their
    /// flight moves on or ends (that would cost a search); here an entry whose flight is gone
    /// or has another live entry is dropped, and a flight's early entry is queued again for
    /// its due time (or dropped, if it is never due).
    pub(crate) fn settle<F: Timed>(&mut self, flights: &mut impl FlightsByKey<F>) {
        while let Some((due, key)) = self.peek().copied() {
            let Some(flight) = flights.flight_mut(&key) else {
                self.pop();
                continue;
            };
            if *flight.entry() != Some(due) {
                self.pop();
                continue;
            }
            debug_assert!(flight.due() >= due, "an entry is never late for its flight");
            if flight.due() == due {
                return;
            }
            self.pop();
            *flight.entry() = None;
            self.arm(key, flight);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }
}

/// The due time of a flight that is never due: no entry is queued for it.
pub(crate) const NEVER: Micros = Micros::MAX;

/// A flight the queue wakes: when it is next due, and the due time of its live entry in the
/// queue, if it has one (at or before the due time).
pub(crate) trait Timed {
    fn due(&self) -> Micros;
    fn entry(&mut self) -> &mut Option<Micros>;
}

/// A coordinator's flights by key, as [`TimerQueue::settle`] looks them up.
pub(crate) trait FlightsByKey<F> {
    fn flight_mut(&mut self, key: &TransferKey) -> Option<&mut F>;
}

impl<F, S: BuildHasher> FlightsByKey<F> for HashMap<TransferKey, F, S> {
    fn flight_mut(&mut self, key: &TransferKey) -> Option<&mut F> {
        self.get_mut(key)
    }
}

impl<F> FlightsByKey<F> for BTreeMap<TransferKey, F> {
    fn flight_mut(&mut self, key: &TransferKey) -> Option<&mut F> {
        self.get_mut(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::support::acct;
    use crate::protocol::tests::support::key;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of pushes, entries come out sorted, each once.
        #[test]
        fn entries_come_out_earliest_first(dues in prop::collection::vec(0u64..50, 0..60)) {
            let mut queue = TimerQueue::default();
            let mut expected = Vec::new();
            for (i, due) in dues.iter().enumerate() {
                let k = key(acct("a"), &format!("t{i}"));
                queue.push(*due, k);
                expected.push((*due, k));
            }
            expected.sort();
            prop_assert_eq!(queue.len(), expected.len());
            let mut taken = Vec::new();
            while let Some(entry) = queue.peek().copied() {
                prop_assert_eq!(queue.pop(), Some(entry));
                taken.push(entry);
            }
            prop_assert_eq!(taken, expected);
        }
    }
}
