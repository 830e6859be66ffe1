//! A window on the driver for tests and the simulator, compiled only into them
//! (`cfg(any(test, madsim))`): production builds have no hook and pay nothing.
//!
//! An [`Observer`] installed on a thread ([`install`]) is shown, by every driver running on
//! that thread, the three moments an invariant can be checked at while a run goes:
//!
//! - a partition starts from its recovered state ([`Observer::started`]);
//! - a batch is cut ([`Observer::committing`]): the state it leaves, its records and what it
//!   will release, before anything of it leaves;
//! - a release leaves ([`Observer::releasing`]): from the storage's `on_durable` callback
//!   once the batch is durable (or at once for a batch without records), with the batch's
//!   last lsn, which everything it sends depends on.
//!
//! The simulator runs every node on one thread, so one observer sees the whole cluster and
//! can compare a release with what its disk has synced at that instant. File storage calls
//! `on_durable` on a writing thread, where no observer is installed: releases are then not
//! shown.

use std::cell::RefCell;
use std::rc::Rc;

use walletd_core::ledger::Ledger;
use walletd_core::model::event::Lsn;
use walletd_core::model::partition::PartitionId;
use walletd_core::protocol::machine::{Commit, Release};

use super::Channels;

/// What a test or the simulator wants to see of the drivers of its thread. Each method may
/// panic to stop the run at the first broken invariant.
pub trait Observer {
    /// Partition `partition` starts (again) from `ledger`, what recovery rebuilt.
    fn started(&self, partition: PartitionId, ledger: &Ledger);
    /// A batch of `partition` is cut: `ledger` is the state it leaves.
    fn committing(&self, partition: PartitionId, ledger: &Ledger, commit: &Commit<Channels>);
    /// What the batch of `partition` ending at `last_lsn` releases is about to leave.
    fn releasing(&self, partition: PartitionId, last_lsn: Lsn, release: &Release<Channels>);
}

thread_local! {
    static OBSERVER: RefCell<Option<Rc<dyn Observer>>> = const { RefCell::new(None) };
}

/// Shows this thread's drivers to `observer` from now on (`None`: to nobody).
pub fn install(observer: Option<Rc<dyn Observer>>) {
    OBSERVER.with(|slot| *slot.borrow_mut() = observer);
}

/// Calls `show` with this thread's observer, if one is installed. The observer is taken out
/// of the slot first, so it may panic or install another without a borrow in the way.
fn with_observer(show: impl FnOnce(&dyn Observer)) {
    let observer = OBSERVER.with(|slot| slot.borrow().clone());
    if let Some(observer) = observer {
        show(&*observer);
    }
}

pub(super) fn started(partition: PartitionId, ledger: &Ledger) {
    with_observer(|o| o.started(partition, ledger));
}

pub(super) fn committing(partition: PartitionId, ledger: &Ledger, commit: &Commit<Channels>) {
    with_observer(|o| o.committing(partition, ledger, commit));
}

pub(super) fn releasing(partition: PartitionId, last_lsn: Lsn, release: &Release<Channels>) {
    with_observer(|o| o.releasing(partition, last_lsn, release));
}
