//! What crosses a partition's boundary: the commands and queries of clients with their
//! answers, and the TC/C phase messages between partitions.
//!
//! These are values only; how they travel (in-process inboxes, TCP frames of [`crate::wire`])
//! is the runtime's business.

use std::sync::Arc;

use crate::ledger::{
    Account, Command, DryRun, HoldTerms, LedgerError, Reply, TransactionTerms, TransferRow,
};
use crate::model::event::{Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::partition::{partition_of, PartitionId};
use crate::model::transaction::Transaction;
use crate::protocol::coordinator::{PhaseRequest, PhaseResponse};
use crate::protocol::tx_coordinator::{TxRequest, TxResponse};

/// A read-only question to a partition, answered after everything before it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Account(AccountId),
    Transfer(TransferKey),
    /// What a client command would get if it came now, decided by the same code and with
    /// nothing recorded (see [`crate::ledger::Ledger::dry_run`]). Only the commands a client
    /// sends, and a destination's Try (the second step of a cross-partition transfer's dry
    /// run), are asked this way.
    DryRun(Command),
    /// Which transfer the transfer `key` refunds, if it is a refund.
    RefundOf(TransferKey),
    /// The terms of the hold `key` (its expiry, what was captured), if it is a hold.
    HoldTerms(TransferKey),
    /// The legs of the multi-leg transaction `key` and the leg that failed, if it is one
    /// (asked of its home).
    Transaction(TransferKey),
    /// The body of the transfer `key` (its accounts, amount and currency), if it has a row.
    /// A body never changes once recorded, so its answer leaves as soon as the record is
    /// durable, without waiting for the open batch as every other answer does. (A capture
    /// or void no longer reads its hold's body: its answer carries it, see
    /// [`crate::ledger::HoldEnd`].)
    TransferBody(TransferKey),
}

impl Query {
    /// The partition (of `partitions`) that answers this query.
    pub fn partition(&self, partitions: u32) -> PartitionId {
        match self {
            Query::Account(account) => partition_of(account, partitions),
            Query::Transfer(key)
            | Query::RefundOf(key)
            | Query::HoldTerms(key)
            | Query::Transaction(key)
            | Query::TransferBody(key) => partition_of(&key.from, partitions),
            Query::DryRun(command) => command.partition(partitions),
        }
    }
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryAnswer {
    Account(Option<Account>),
    Transfer(Option<TransferRow>),
    /// The partition keeps the row asked for on disk only and could not read it (it logged
    /// why): the question may be asked again once the disk is repaired.
    Unreadable,
    DryRun(DryRun),
    /// The transaction id of the transfer a refund refunds (from the refund's destination),
    /// `None` if the transfer asked about is not a refund.
    RefundOf(Option<TransactionId>),
    HoldTerms(Option<HoldTerms>),
    Transaction(Option<TransactionTerms>),
    TransferBody(Option<Transfer>),
}

/// The result of a command as seen by its client.
pub type CommandResult = Result<Reply, LedgerError>;

/// Most commands in one command group; a client splits larger sets.
pub const COMMANDS_PER_INPUT_MAX: usize = 4096;

/// Most peer messages that travel together to one partition: one inbox input, and across a
/// peer link one [`crate::wire::Message::Peers`]. A sender splits larger groups.
///
/// 1024 rather than [`COMMANDS_PER_INPUT_MAX`]: a group this large of the longest peer
/// messages is one wire message of about 211 KiB, which fits in one frame under the frame
/// bound every reader allocates for (about 256 KiB, [`crate::wire::FRAME_BODY_LEN_MAX`]),
/// so one input crosses a link as one message without raising what an unauthenticated peer
/// can make a node allocate. A batch of a thousand transfers to one partition still sends
/// one group.
pub const PEER_MESSAGES_PER_INPUT_MAX: usize = 1024;

/// Commands a client handed over together, shared by the groups that carry them to their
/// partitions: each group picks its commands by position, so none is copied on its way (a
/// transfer command is about 200 bytes, and copying them was a tenth of a batch's cost).
#[derive(Clone)]
pub struct CommandGroup {
    commands: Arc<Vec<Command>>,
    picks: Arc<[u32]>,
}

impl CommandGroup {
    /// All of `commands`, in order.
    pub fn all(commands: Vec<Command>) -> CommandGroup {
        let picks = (0..commands.len() as u32).collect();
        CommandGroup::picked(Arc::new(commands), picks)
    }

    /// The commands at positions `picks` of `commands`, in that order.
    pub fn picked(commands: Arc<Vec<Command>>, picks: Arc<[u32]>) -> CommandGroup {
        assert!(picks.len() <= COMMANDS_PER_INPUT_MAX);
        assert!(picks.iter().all(|&pick| (pick as usize) < commands.len()));
        CommandGroup { commands, picks }
    }

    pub fn len(&self) -> usize {
        self.picks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.picks.is_empty()
    }

    /// The positions of the group's commands in what the client handed over.
    pub fn picks(&self) -> &[u32] {
        &self.picks
    }

    pub fn get(&self, pick: u32) -> &Command {
        &self.commands[pick as usize]
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Command> + '_ {
        self.picks.iter().map(|&pick| self.get(pick))
    }
}

impl std::fmt::Debug for CommandGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A message between partitions. Not `Copy`: a transaction's Try shares its legs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// From the home partition `from` to the partition of `request.transfer.to`.
    Request {
        from: PartitionId,
        request: PhaseRequest,
    },
    /// From a destination back to the home partition of `response.key.from`.
    Response(PhaseResponse),
    /// From a destination to the home partition of `transfer.from`: "I have held a pending
    /// credit for this transfer for a while; what became of it?" The home may have lost the
    /// transfer (its Try leaves before its debit is durable), and then only this question
    /// gets the credit cancelled.
    Unresolved { transfer: Transfer },
    /// From a home back to the destination (`partition`) that asked about the credit of the
    /// hold `key` ([`PeerMessage::Unresolved`]): the hold is held, and its home ends it
    /// (capture, void or expiry) and carries the end; ask again no sooner than `for_us`
    /// from now, when it expires. A hold may be held for days: without this its destination
    /// would ask every few seconds all that time.
    StillHeld {
        key: TransferKey,
        partition: PartitionId,
        for_us: u64,
    },
    /// From a transaction's home to one of its participants (`request.partition`).
    TxRequest(TxRequest),
    /// From a participant back to the home of `response.key`.
    TxResponse(TxResponse),
    /// From participant `partition` to the home of `tx`: "I still hold my Try of this
    /// transaction; what became of it?" A Confirm is not acknowledged, and may be lost; and
    /// a Try leaves before its home's record of the transaction is durable, so the home may
    /// have lost it. The question carries the legs the participant tried, so that a home
    /// with no row can record the transaction refused for good, and a home holding other
    /// legs under the key (a client's retry after that loss) confirms nothing it did not
    /// commit.
    TxUnresolved {
        tx: Arc<Transaction>,
        partition: PartitionId,
    },
}

impl PeerMessage {
    /// The partition this message is for.
    pub fn destination(&self, partitions: u32) -> PartitionId {
        match self {
            PeerMessage::Request { request, .. } => partition_of(&request.transfer.to, partitions),
            PeerMessage::Response(response) => partition_of(&response.key.from, partitions),
            PeerMessage::Unresolved { transfer } => partition_of(&transfer.from, partitions),
            PeerMessage::StillHeld { partition, .. } => *partition,
            PeerMessage::TxRequest(request) => request.partition,
            PeerMessage::TxResponse(TxResponse { key, .. }) => partition_of(&key.from, partitions),
            PeerMessage::TxUnresolved { tx, .. } => partition_of(&tx.key().from, partitions),
        }
    }
}
