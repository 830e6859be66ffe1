//! The message boundary between partitions: phase requests to destinations and their answers
//! back to home partitions.
//!
//! Delivery is best effort: a message may be lost, delayed, duplicated or reordered, and the
//! protocol is built for that (the coordinator resends, the barrier makes repeats no-ops). So
//! [`Transport::send`] never blocks and never fails; a full queue drops the message.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::driver::Input;
pub use walletd_core::protocol::message::PeerMessage;

/// Carries peer messages to the partitions that own them.
pub trait Transport: Send + Sync + 'static {
    /// Sends `message` to the partition it is for. Never blocks; may drop.
    fn send(&self, message: PeerMessage);
}

/// Delivers straight into the inboxes of partitions running in this process.
#[derive(Debug, Clone)]
pub struct LocalTransport {
    partitions: u32,
    inboxes: Arc<[mpsc::Sender<Input>]>,
}

impl LocalTransport {
    /// `inboxes[p]` is the inbox of partition `p`; every partition must be local.
    pub fn new(inboxes: Arc<[mpsc::Sender<Input>]>) -> LocalTransport {
        LocalTransport {
            partitions: inboxes.len() as u32,
            inboxes,
        }
    }
}

impl Transport for LocalTransport {
    fn send(&self, message: PeerMessage) {
        let inbox = &self.inboxes[message.destination(self.partitions) as usize];
        // A full inbox means the destination is overloaded; the sender's resend recovers.
        if inbox.try_send(Input::Peer(message)).is_err() {
            tracing::debug!(?message, "peer message dropped: inbox full or closed");
        }
    }
}
