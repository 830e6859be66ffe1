//! # walletd-sim
//!
//! Deterministic simulation of a walletd cluster: the real partition drivers and peer links
//! of `walletd-runtime` run inside madsim on simulated nodes, disks and TCP, driven by
//! simulated clients, under faults drawn from one seed, and the invariants of DESIGN
//! section 5 are checked while the run goes (what must hold at every instant) and at its
//! end. Builds only with `--cfg madsim` (use `cargo sim` / `cargo simtest`).
//!
//! # Layout
//! - [`config`]: the run's configuration and the set of faults.
//! - [`rng`]: one seed split into independent ChaCha streams, one per purpose.
//! - [`disk`]: `SimDisk`, core's `Storage` on simulated segment files: a page cache that
//!   outlives a process crash, a medium that a power loss leaves with what was synced.
//! - [`network`]: the simulated network between clients and node gateways (HTTP's place).
//! - [`gateway`]: a node's request handler, through its `engine::Client`.
//! - [`links`]: the production peer links between nodes over madsim's TCP, wrapped to trace
//!   frames, count bytes in flight and break connections.
//! - [`cluster`]: named nodes started by `net::start_node_with`, kill and restart, the
//!   mapping of network faults onto TCP.
//! - [`replicas`]: replicated runs: nodes started by `start_replicated_node` on their
//!   disks (copies created and deleted as they move), following the coordination service;
//!   the leaders they publish, watched.
//! - [`coordinator`]: the coordination service (etcd's place): the map and placement under
//!   a revision, compare-and-swap, watches, outages.
//! - [`mover`]: the operator who moves copies and drains nodes through it.
//! - [`raft_disk`]: `SimRaftStore`, a replica's Raft store on a disk that a power loss cuts
//!   back to a prefix of what was appended.
//! - [`replica_logs`]: what each replica would restart from, and whether the replicas agree.
//! - [`majority`]: after every crash, each answer rests on records durable on a majority.
//! - [`workload`]: clients: accounts, deposits, transfers, retries, invalid requests.
//! - [`refunds`]: the committed transfers clients refund, and races of refunds.
//! - [`holds`]: the holds clients place, and how and when they end them (races with the
//!   expiry included); what the answers may be.
//! - [`edges`]: edge episodes, in which a client takes an account through a decision boundary.
//! - [`boundary`]: the boundaries, and how often a run or a sweep hit each.
//! - [`nemesis`]: injects and heals faults.
//! - [`storage_faults`]: damage to synced data, and what the restarts on it must do.
//! - [`history`]: what the clients were told, and when.
//! - [`model`]: the oracle, an independent sequential model of a partition log.
//! - [`reads`]: linearizable balance reads, from the clients' times and the final logs.
//! - [`live`]: the invariants checked at every instant, while the run goes.
//! - [`late`]: retries of a run's first transfers once it has quiesced: the cold path.
//! - [`checkers`]: the named invariants, checked at the end of a run.
//! - [`hold_checks`]: what clients were told about holds, against each other and the logs.
//! - [`trace`]: the determinism trace hash.
//! - [`sim`]: one run, end to end, and its report.
//! - [`panics`]: panics inside the simulation become reports.
//! - [`shared`]: state shared by the tasks of a run and the harness.
#![cfg(madsim)]

pub mod boundary;
pub mod checkers;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod disk;
pub mod edges;
pub mod gateway;
pub mod history;
pub mod hold_checks;
pub mod holds;
pub mod late;
pub mod links;
pub mod live;
pub mod liveness;
pub mod majority;
pub mod model;
pub mod mover;
pub mod nemesis;
pub mod network;
pub mod panics;
pub mod raft_disk;
pub mod reads;
pub mod refunds;
pub mod replica_logs;
pub mod replicas;
pub mod rng;
pub mod shared;
pub mod sim;
pub mod storage_faults;
pub mod trace;
pub mod transactions;
pub mod workload;
