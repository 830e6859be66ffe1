//! Accounts chosen partition by partition, for the modes that compare where a transfer's two
//! accounts live. A transfer is local when both are on one partition (one log sync, one
//! event) and two-phase when they are on partitions of different homes; for the engine a
//! home is a partition, in a cluster it is the node that owns the partition (a transfer
//! between two partitions of one node also runs the two-phase protocol, but never crosses the
//! network, which is what `cluster` measures).

use walletd_core::model::ids::AccountId;
use walletd_core::model::partition::partition_of;

use super::workload::{account_name, Rng};
use super::BenchError;

/// Where a transfer's two accounts are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Both on one partition.
    SamePartition,
    /// On two partitions of different homes.
    CrossHome,
}

/// The same number of accounts on every partition, and the partitions a transfer from each
/// partition may go to.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Account indexes (the account is `bench-{index}`), partition after partition:
    /// partition `p`'s are `indexes[p * per_partition..][..per_partition]`.
    indexes: Vec<u64>,
    per_partition: u64,
    /// For each partition, the partitions a transfer from it goes to.
    destinations: Vec<Vec<u32>>,
}

impl Placed {
    /// Picks `per_partition` accounts on each of `homes.len()` partitions (`homes[p]` is the
    /// home of partition `p`), the first indexes that hash there.
    pub fn new(
        homes: &[u32],
        per_partition: u64,
        placement: Placement,
    ) -> Result<Placed, BenchError> {
        let partitions = homes.len();
        let destinations: Vec<Vec<u32>> = (0..partitions)
            .map(|p| match placement {
                Placement::SamePartition => vec![p as u32],
                Placement::CrossHome => (0..partitions as u32)
                    .filter(|q| homes[*q as usize] != homes[p])
                    .collect(),
            })
            .collect();
        if per_partition < 2 {
            return Err(BenchError::Usage(format!(
                "a transfer needs two accounts, and a partition holds only {per_partition}"
            )));
        }
        if destinations.iter().any(Vec::is_empty) {
            return Err(BenchError::Usage(format!(
                "transfers across homes need two homes, and the partitions' homes are {homes:?}"
            )));
        }
        Ok(Placed {
            indexes: pick_accounts(partitions as u32, per_partition),
            per_partition,
            destinations,
        })
    }

    /// Accounts in all.
    pub fn accounts(&self) -> u64 {
        self.indexes.len() as u64
    }

    /// The index of the `i`-th account, `i` in `0..accounts()`.
    pub fn index(&self, i: u64) -> u64 {
        self.indexes[i as usize]
    }

    /// A transfer's two accounts (indexes), distinct, placed as asked.
    pub fn draw(&self, rng: &mut Rng) -> (u64, u64) {
        let from_partition = rng.below(self.destinations.len() as u64) as usize;
        let targets = &self.destinations[from_partition];
        let to_partition = targets[rng.below(targets.len() as u64) as usize] as usize;
        let n = self.per_partition;
        let from = rng.below(n);
        let to = if from_partition == to_partition {
            // Uniform over the partition's other accounts.
            (from + 1 + rng.below(n - 1)) % n
        } else {
            rng.below(n)
        };
        let pool = |p: usize, i: u64| self.indexes[p * n as usize + i as usize];
        (pool(from_partition, from), pool(to_partition, to))
    }
}

/// The first `per_partition` account indexes of each partition, partition after partition.
fn pick_accounts(partitions: u32, per_partition: u64) -> Vec<u64> {
    let mut pools = vec![Vec::with_capacity(per_partition as usize); partitions as usize];
    let mut unfilled = partitions as usize;
    let mut index = 0u64;
    while unfilled > 0 {
        let account = AccountId::new(&account_name(index)).expect("benchmark ids are valid");
        let pool = &mut pools[partition_of(&account, partitions) as usize];
        if (pool.len() as u64) < per_partition {
            pool.push(index);
            if pool.len() as u64 == per_partition {
                unfilled -= 1;
            }
        }
        index += 1;
    }
    pools.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(index: u64, partitions: u32) -> u32 {
        partition_of(&AccountId::new(&account_name(index)).unwrap(), partitions)
    }

    #[test]
    fn same_partition_draws_stay_on_one_partition() {
        let placed = Placed::new(&[0, 1, 2, 3], 5, Placement::SamePartition).unwrap();
        assert_eq!(placed.accounts(), 20);
        let mut rng = Rng::new(3);
        for _ in 0..2000 {
            let (from, to) = placed.draw(&mut rng);
            assert_ne!(from, to);
            assert_eq!(partition(from, 4), partition(to, 4));
        }
    }

    #[test]
    fn cross_home_draws_change_home() {
        let homes = [0, 1, 2, 0, 1, 2];
        let placed = Placed::new(&homes, 3, Placement::CrossHome).unwrap();
        let mut rng = Rng::new(4);
        for _ in 0..2000 {
            let (from, to) = placed.draw(&mut rng);
            let home = |i| homes[partition(i, 6) as usize];
            assert_ne!(home(from), home(to));
        }
    }

    #[test]
    fn impossible_placements_are_refused() {
        assert!(Placed::new(&[0], 10, Placement::CrossHome).is_err());
        assert!(Placed::new(&[0, 0], 10, Placement::CrossHome).is_err());
        assert!(Placed::new(&[0, 1], 1, Placement::SamePartition).is_err());
    }
}
