//! Randomness: every random choice of a run comes from one seed, split into independent
//! ChaCha streams by purpose, so adding a draw in one place (say, the network) does not shift
//! the choices made in another (say, the workload).

use std::sync::{Arc, Mutex, MutexGuard};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream of random numbers is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Network,
    Disk,
    Nemesis,
    Setup,
    /// Handshake nonce seeds of the server nodes, one draw per incarnation.
    Nonces,
    /// Peer-link faults: where a connection is cut, which writes break it.
    Links,
    /// Replicated runs: the replicas' election seeds and what power losses keep of their
    /// Raft stores (a stream of its own, so that unreplicated runs draw exactly as before).
    Replicas,
    /// The operator that moves copies (which partition, from and to which node, when), and
    /// the coordination service's outages and slow watches.
    Moves,
    /// The coordination service: how long each node takes to learn a new version.
    Coordinator,
    /// The coordination service's faults: outages and slow watches.
    CoordinatorFaults,
    /// Node additions: how many nodes join the map, and when the operator adds each.
    Joins,
    /// Lost leases: when the coordination service expires a node's lease, and whose.
    Leases,
    /// Which drained nodes the operator removes from the map, and when it adds them back.
    Removals,
    /// One stream per client, `Client(i)`.
    Client(u32),
}

impl Purpose {
    fn stream_id(self) -> u64 {
        match self {
            Purpose::Network => 1,
            Purpose::Disk => 2,
            Purpose::Nemesis => 3,
            Purpose::Setup => 4,
            Purpose::Nonces => 5,
            Purpose::Links => 6,
            Purpose::Replicas => 7,
            Purpose::Moves => 8,
            Purpose::Coordinator => 9,
            Purpose::CoordinatorFaults => 10,
            Purpose::Joins => 11,
            Purpose::Leases => 12,
            Purpose::Removals => 13,
            Purpose::Client(i) => 1_000 + u64::from(i),
        }
    }
}

/// The random stream of `purpose` for `seed`.
pub fn stream(seed: u64, purpose: Purpose) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(purpose.stream_id());
    rng
}

/// A stream shared by the tasks of one component (the simulation runs on one thread, so the
/// lock is never contended; it only makes the stream `Send`).
#[derive(Debug, Clone)]
pub struct SharedRng(Arc<Mutex<ChaCha8Rng>>);

impl SharedRng {
    pub fn new(seed: u64, purpose: Purpose) -> SharedRng {
        SharedRng(Arc::new(Mutex::new(stream(seed, purpose))))
    }

    pub fn lock(&self) -> MutexGuard<'_, ChaCha8Rng> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
