//! A single-value channel that wakes its waiters in a fixed order: the subset of
//! `tokio::sync::watch` this crate uses.
//!
//! Why not tokio's: its receivers wait on one of eight `Notify`s picked by a thread-local
//! generator that tokio seeds from a process-wide counter, so the order in which a change
//! wakes them depends on how many threads used that generator before. Under the simulator
//! that made a run's interleaving depend on the runs before it in the same process (the
//! links of a restarted node redialled its peers in another order). Here every receiver
//! waits on one `Notify`, which wakes its waiters in the order they started waiting.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::Notify;

struct Shared<T> {
    value: RwLock<T>,
    /// Bumped by every change, under the value's write lock.
    version: AtomicU64,
    /// The sender is gone: no change will come.
    closed: AtomicBool,
    changed: Notify,
}

impl<T> Shared<T> {
    fn read(&self) -> RwLockReadGuard<'_, T> {
        self.value.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.value.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half: one per channel.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A receiving half; each one remembers the last version it saw.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// `changed` found the sender gone and nothing unseen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sender of this watch is gone")]
pub struct Closed;

/// A channel holding `value`, and a receiver that has seen it.
pub fn channel<T>(value: T) -> (Sender<T>, Receiver<T>) {
    let sender = Sender::new(value);
    let receiver = sender.subscribe();
    (sender, receiver)
}

impl<T> Sender<T> {
    pub fn new(value: T) -> Sender<T> {
        Sender {
            shared: Arc::new(Shared {
                value: RwLock::new(value),
                version: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                changed: Notify::new(),
            }),
        }
    }

    /// A receiver that has seen the current value.
    pub fn subscribe(&self) -> Receiver<T> {
        let _value = self.shared.read();
        Receiver {
            shared: Arc::clone(&self.shared),
            seen: self.shared.version.load(Ordering::Acquire),
        }
    }

    /// The current value (hold the guard briefly: a change waits for it).
    pub fn borrow(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    /// Puts `value` in, wakes every waiting receiver, and returns the value it replaced.
    pub fn send_replace(&self, value: T) -> T {
        let mut old = None;
        self.send_if_modified(|current| {
            old = Some(std::mem::replace(current, value));
            true
        });
        old.expect("replaced")
    }

    /// Lets `modify` change the value in place; if it says it did, wakes every waiting
    /// receiver. Whether it did.
    pub fn send_if_modified(&self, modify: impl FnOnce(&mut T) -> bool) -> bool {
        let modified = {
            let mut current = self.shared.write();
            let modified = modify(&mut current);
            if modified {
                self.shared.version.fetch_add(1, Ordering::AcqRel);
            }
            modified
        };
        if modified {
            self.shared.changed.notify_waiters();
        }
        modified
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("value", &*self.shared.read())
            .field("version", &self.shared.version.load(Ordering::Acquire))
            .finish()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("value", &*self.shared.read())
            .field("seen", &self.seen)
            .finish()
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
    }
}

impl<T> Receiver<T> {
    /// The current value, without marking it seen.
    pub fn borrow(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    /// The current value, marked seen.
    pub fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        let value = self.shared.read();
        self.seen = self.shared.version.load(Ordering::Acquire);
        value
    }

    /// Waits for a value this receiver has not seen, and marks it seen. `Err` once the
    /// sender is gone and every value was seen.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            // Registered before the checks, so a change between them and the wait wakes it.
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let version = self.shared.version.load(Ordering::Acquire);
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Closed);
            }
            notified.await;
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver {
            shared: Arc::clone(&self.shared),
            seen: self.seen,
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_receiver_sees_each_change_once_and_then_the_close() {
        let (sender, mut receiver) = channel(1);
        let waiting = tokio::spawn(async move {
            receiver.changed().await.expect("a change");
            let first = *receiver.borrow_and_update();
            let closed = receiver.changed().await;
            (first, closed)
        });
        tokio::task::yield_now().await;
        assert_eq!(sender.send_replace(2), 1);
        tokio::task::yield_now().await;
        assert!(!sender.send_if_modified(|_| false), "no change, no wake-up");
        drop(sender);
        let (first, closed) = waiting.await.expect("the task");
        assert_eq!(first, 2);
        assert_eq!(closed, Err(Closed));
    }

    #[tokio::test]
    async fn an_unseen_change_is_found_even_after_the_sender_left() {
        let (sender, mut receiver) = channel("a");
        sender.send_replace("b");
        drop(sender);
        assert_eq!(receiver.changed().await, Ok(()));
        assert_eq!(*receiver.borrow(), "b");
        assert_eq!(receiver.changed().await, Err(Closed));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiters_wake_in_the_order_they_started_waiting() {
        let sender = Sender::new(0);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let mut receiver = sender.subscribe();
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                receiver.changed().await.expect("a change");
                order.lock().expect("lock").push(i);
            }));
            // Each task starts waiting before the next is spawned.
            tokio::task::yield_now().await;
        }
        sender.send_replace(1);
        for task in tasks {
            task.await.expect("the task");
        }
        assert_eq!(*order.lock().expect("lock"), (0..8).collect::<Vec<_>>());
    }
}
