//! The long-poll: waiting, up to a deadline, for a partition's durable lsn to pass a
//! position. The driver wakes [`DriverStats::durable`] each time a batch becomes durable, so
//! a waiting request costs nothing until there is something to read: no timer loop, no disk.

use std::sync::atomic::Ordering;
use std::time::Duration;

use walletd_core::model::event::Lsn;
use walletd_runtime::driver::DriverStats;

/// Where the durable lsn stands against the position a reader asked to read after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// There are durable records after the position, up to this lsn; or the wait ended with
    /// none (then this lsn is the position itself).
    UpTo(Lsn),
    /// The position is past the durable end of the log, at this lsn: no record will follow it
    /// that the reader could tell from a different log.
    Behind(Lsn),
}

/// Waits at most `wait` for the durable lsn of `stats`' partition to pass `after`.
pub async fn durable_after(stats: &DriverStats, after: Lsn, wait: Duration) -> Durable {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before the lsn is read: an advance between the two still wakes us.
        let notified = stats.durable.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let durable = stats.last_lsn.load(Ordering::Acquire);
        if after > durable {
            return Durable::Behind(durable);
        }
        if after < durable {
            return Durable::UpTo(durable);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Durable::UpTo(durable);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[tokio::test]
    async fn answers_at_once_when_there_is_something_or_the_position_is_past_the_end() {
        let stats = DriverStats::default();
        stats.last_lsn.store(5, Ordering::Relaxed);
        let long = Duration::from_secs(60);
        assert_eq!(durable_after(&stats, 3, long).await, Durable::UpTo(5));
        assert_eq!(durable_after(&stats, 6, long).await, Durable::Behind(5));
    }

    #[tokio::test]
    async fn a_wait_ends_when_a_batch_becomes_durable_or_at_its_deadline() {
        let stats = Arc::new(DriverStats::default());
        stats.last_lsn.store(5, Ordering::Relaxed);
        let started = Instant::now();
        assert_eq!(
            durable_after(&stats, 5, Duration::from_millis(50)).await,
            Durable::UpTo(5)
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        let driver = Arc::clone(&stats);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            driver.last_lsn.store(7, Ordering::Relaxed);
            driver.durable.notify_waiters();
        });
        let started = Instant::now();
        assert_eq!(
            durable_after(&stats, 5, Duration::from_secs(60)).await,
            Durable::UpTo(7)
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
