//! The message boundary between partitions: phase requests to destinations and their answers
//! back to home partitions.
//!
//! Delivery is best effort: a message may be lost, delayed, duplicated or reordered, and the
//! protocol is built for that (the coordinator resends, the barrier makes repeats no-ops). So
//! [`Transport::send_all`] never blocks and never fails; a full queue drops what was for it.
//!
//! Messages travel in groups: what one call sends to one partition is one inbox input
//! ([`Input::Peers`], split at [`PEER_MESSAGES_PER_INPUT_MAX`]), and for a partition of
//! another node one wire message. A batch that starts a thousand transfers to one partition
//! thus costs one channel send, not a thousand, and its destination takes them in one input.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::driver::Input;
use walletd_core::model::partition::PartitionId;
pub use walletd_core::protocol::message::{PeerMessage, PEER_MESSAGES_PER_INPUT_MAX};

/// Carries peer messages to the partitions that own them.
pub trait Transport: Send + Sync + 'static {
    /// Sends each of `messages` to the partition it is for: those for one partition together
    /// and in the order given. Never blocks; may drop any of them.
    fn send_all(&self, messages: Vec<PeerMessage>);

    /// Sends one message. The same as [`Transport::send_all`] of one, so that a transport has
    /// one way to deliver and cannot treat a lone message differently from a group.
    fn send(&self, message: PeerMessage) {
        self.send_all(vec![message]);
    }
}

/// Delivers straight into the inboxes of partitions running in this process (or into the
/// queue of the forwarder that carries them to the node that runs them).
#[derive(Debug, Clone)]
pub struct LocalTransport {
    partitions: u32,
    inboxes: Arc<[mpsc::Sender<Input>]>,
}

impl LocalTransport {
    /// `inboxes[p]` is the inbox of partition `p`.
    pub fn new(inboxes: Arc<[mpsc::Sender<Input>]>) -> LocalTransport {
        LocalTransport {
            partitions: inboxes.len() as u32,
            inboxes,
        }
    }
}

impl Transport for LocalTransport {
    /// One `try_send` per destination partition (per [`PEER_MESSAGES_PER_INPUT_MAX`] of its
    /// messages).
    fn send_all(&self, messages: Vec<PeerMessage>) {
        for (partition, group) in by_destination(messages, self.partitions) {
            let count = group.len();
            // A full inbox means the destination is overloaded; the senders' resends recover.
            if self.inboxes[partition as usize]
                .try_send(Input::Peers(group))
                .is_err()
            {
                tracing::debug!(
                    partition,
                    count,
                    "peer messages dropped: inbox full or closed"
                );
            }
        }
    }
}

/// `messages` grouped by the partition each is for: the groups in order of partition (so a
/// simulation run is the same every time), each in the order given and of
/// 1..=[`PEER_MESSAGES_PER_INPUT_MAX`] messages (a larger group is split, in order).
pub(crate) fn by_destination(
    messages: Vec<PeerMessage>,
    partitions: u32,
) -> Vec<(PartitionId, Vec<PeerMessage>)> {
    let destinations: Vec<PartitionId> = messages
        .iter()
        .map(|message| message.destination(partitions))
        .collect();
    let groups = match destinations.first() {
        None => return Vec::new(),
        // Everything a node receives in one wire message, and often all a batch sends: no copy.
        Some(&first) if destinations.iter().all(|&d| d == first) => vec![(first, messages)],
        Some(_) => {
            let mut groups: BTreeMap<PartitionId, Vec<PeerMessage>> = BTreeMap::new();
            for (destination, message) in destinations.into_iter().zip(messages) {
                groups.entry(destination).or_default().push(message);
            }
            groups.into_iter().collect()
        }
    };
    groups
        .into_iter()
        .flat_map(|(partition, group)| {
            split_per_input(group)
                .into_iter()
                .map(move |piece| (partition, piece))
        })
        .collect()
}

/// `group` in pieces of at most [`PEER_MESSAGES_PER_INPUT_MAX`], in order, each of which
/// crosses a peer link as one `Peers` message (see [`walletd_core::wire::peer_groups`]).
fn split_per_input(group: Vec<PeerMessage>) -> Vec<Vec<PeerMessage>> {
    walletd_core::wire::peer_groups(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use walletd_core::ledger::PhaseResult;
    use walletd_core::model::event::TransferKey;
    use walletd_core::model::ids::{AccountId, TransactionId};
    use walletd_core::model::partition::partition_of;
    use walletd_core::protocol::coordinator::{Phase, PhaseResponse};

    const PARTITIONS: u32 = 3;

    /// A transport over `PARTITIONS` inboxes of `capacity` inputs each, and their receivers.
    fn transport(capacity: usize) -> (LocalTransport, Vec<mpsc::Receiver<Input>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..PARTITIONS).map(|_| mpsc::channel(capacity)).unzip();
        (LocalTransport::new(senders.into()), receivers)
    }

    /// The `n`th response for partition `partition` (its transaction id names `n`).
    fn response(partition: PartitionId, n: usize) -> PeerMessage {
        let from = (0..)
            .map(|i| AccountId::new(&format!("home-{i}")).unwrap())
            .find(|account| partition_of(account, PARTITIONS) == partition)
            .unwrap();
        PeerMessage::Response(PhaseResponse {
            phase: Phase::Try,
            key: TransferKey {
                from,
                transaction_id: TransactionId::new(&format!("t-{n}")).unwrap(),
            },
            result: PhaseResult::Tried,
        })
    }

    /// The groups of peer messages waiting in `inbox`, in order.
    fn groups(inbox: &mut mpsc::Receiver<Input>) -> Vec<Vec<PeerMessage>> {
        let mut groups = Vec::new();
        while let Ok(input) = inbox.try_recv() {
            match input {
                Input::Peers(group) => groups.push(group),
                other => panic!("not peer messages: {other:?}"),
            }
        }
        groups
    }

    #[test]
    fn messages_to_one_partition_arrive_as_one_input_in_their_order() {
        let (transport, mut inboxes) = transport(8);
        let for_1: Vec<PeerMessage> = (0..1000).map(|n| response(1, n)).collect();
        let for_2: Vec<PeerMessage> = (0..3).map(|n| response(2, n)).collect();
        // Interleaved, as a batch's release holds them.
        let mut messages = for_1.clone();
        let picks = [(10, &for_2[0]), (500, &for_2[1]), (1002, &for_2[2])];
        for (at, message) in picks.map(|(at, m)| (at, m.clone())) {
            messages.insert(at, message);
        }
        transport.send_all(messages);
        assert_eq!(groups(&mut inboxes[1]), vec![for_1]);
        assert_eq!(groups(&mut inboxes[2]), vec![for_2]);
        assert!(groups(&mut inboxes[0]).is_empty());
        transport.send(response(0, 7));
        assert_eq!(groups(&mut inboxes[0]), vec![vec![response(0, 7)]]);
        transport.send_all(Vec::new());
        assert!(inboxes.iter_mut().all(|inbox| groups(inbox).is_empty()));
    }

    #[test]
    fn a_group_larger_than_one_input_is_split_in_order() {
        let (transport, mut inboxes) = transport(8);
        let count = 2 * PEER_MESSAGES_PER_INPUT_MAX + 1;
        let messages: Vec<PeerMessage> = (0..count).map(|n| response(0, n)).collect();
        transport.send_all(messages.clone());
        let received = groups(&mut inboxes[0]);
        let sizes: Vec<usize> = received.iter().map(Vec::len).collect();
        let max = PEER_MESSAGES_PER_INPUT_MAX;
        assert_eq!(sizes, vec![max, max, 1]);
        assert_eq!(received.concat(), messages);
    }

    #[test]
    fn a_full_inbox_drops_its_group_and_no_other() {
        let (transport, mut inboxes) = transport(1);
        transport.send(response(0, 0));
        transport.send_all(vec![response(0, 1), response(1, 1), response(0, 2)]);
        assert_eq!(groups(&mut inboxes[0]), vec![vec![response(0, 0)]]);
        assert_eq!(groups(&mut inboxes[1]), vec![vec![response(1, 1)]]);
    }
}
