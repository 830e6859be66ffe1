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

/// Entries `(due, key)`, taken earliest first. Entries due at the same time come out in a
/// fixed order (the order they were pushed in, but for those the heap holds), which is all
/// a replay needs: nothing is due "before" another at the same time.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    /// Sorted by due time: each entry is due no earlier than the one before it.
    in_order: VecDeque<Entry>,
    /// Entries due earlier than the last of `in_order`. An entry due at the same time as the
    /// last is not one of them: a group of commands sets one due time for thousands of
    /// flights, and ordering their ties by key sent every second one here.
    out_of_order: BinaryHeap<Reverse<Entry>>,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, due: Micros, key: TransferKey) {
        let entry = (due, key);
        match self.in_order.back() {
            Some(last) if last.0 > due => self.out_of_order.push(Reverse(entry)),
            _ => self.in_order.push_back(entry),
        }
    }

    /// Whether the deque's front comes before the heap's top: earlier, or due at the same
    /// time (the deque's first).
    fn front_first(&self) -> Option<bool> {
        match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(a), Some(Reverse(b))) => Some(a.0 <= b.0),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    /// The earliest entry.
    pub(crate) fn peek(&self) -> Option<&Entry> {
        match self.front_first()? {
            true => self.in_order.front(),
            false => self.out_of_order.peek().map(|Reverse(entry)| entry),
        }
    }

    /// Takes the earliest entry.
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        let from_deque = self.front_first()?;
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
        /// Whatever the order of pushes, entries come out by due time, each once.
        #[test]
        fn entries_come_out_earliest_first(dues in prop::collection::vec(0u64..50, 0..60)) {
            let mut queue = TimerQueue::default();
            let mut expected = Vec::new();
            for (i, due) in dues.iter().enumerate() {
                let k = key(acct("a"), &format!("t{i}"));
                queue.push(*due, k);
                expected.push((*due, k));
            }
            prop_assert_eq!(queue.len(), expected.len());
            let mut taken = Vec::new();
            while let Some(entry) = queue.peek().copied() {
                prop_assert_eq!(queue.pop(), Some(entry));
                taken.push(entry);
            }
            prop_assert!(taken.windows(2).all(|pair| pair[0].0 <= pair[1].0), "{:?}", taken);
            taken.sort();
            expected.sort();
            prop_assert_eq!(taken, expected);
        }
    }

    /// Flights given one due time (a group of commands) all go to the deque, whatever
    /// their keys, and come out in the order they were pushed.
    #[test]
    fn ties_stay_in_the_deque_in_push_order() {
        let mut queue = TimerQueue::default();
        let keys: Vec<TransferKey> = ["t9", "t1", "t5", "t0"]
            .iter()
            .map(|id| key(acct("a"), id))
            .collect();
        for k in &keys {
            queue.push(7, *k);
        }
        assert!(queue.out_of_order.is_empty());
        let taken: Vec<TransferKey> = std::iter::from_fn(|| queue.pop()).map(|(_, k)| k).collect();
        assert_eq!(taken, keys);
    }
}
