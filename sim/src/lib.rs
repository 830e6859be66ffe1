//! # walletd-sim
//!
//! Deterministic simulation of a walletd cluster: the real partition drivers of `core` run
//! inside madsim on simulated nodes, disks and network, driven by simulated clients, under
//! faults drawn from one seed, and the invariants of DESIGN section 5 are checked at the end.
//! Builds only with `--cfg madsim` (use `cargo sim` / `cargo simtest`).
//!
//! # Layout
//! - [`config`]: the run's configuration and the set of faults.
//! - [`rng`]: one seed split into independent ChaCha streams, one per purpose.
//! - [`disk`]: `SimDisk`, core's `Storage` on simulated segment files: a page cache that
//!   outlives a process crash, a medium that a power loss leaves with what was synced.
//! - [`network`]: the simulated network that carries core's inputs between hosts.
//! - [`cluster`]: named nodes running `Engine::start_partitions`, kill and restart.
//! - [`workload`]: clients: accounts, deposits, transfers, retries, invalid requests.
//! - [`nemesis`]: injects and heals faults.
//! - [`history`]: what the clients were told, and when.
//! - [`model`]: the oracle, an independent sequential model of a partition log.
//! - [`checkers`]: the named invariants.
//! - [`trace`]: the determinism trace hash.
//! - [`sim`]: one run, end to end, and its report.
//! - [`panics`]: panics inside the simulation become reports.
#![cfg(madsim)]

pub mod checkers;
pub mod cluster;
pub mod config;
pub mod disk;
pub mod history;
pub mod model;
pub mod nemesis;
pub mod network;
pub mod panics;
pub mod rng;
pub mod sim;
pub mod trace;
pub mod workload;
