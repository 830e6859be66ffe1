# walletd developer recipes. `just` lists them; each has a plain-cargo equivalent in README.md.

# List the recipes.
default:
    @just --list

# Run the whole test suite (what the README promises on a fresh machine).
test:
    cargo test --workspace

# Format every crate.
fmt:
    cargo fmt --all

# Lint with clippy; warnings are errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Start the all-in-one server on ./data and 127.0.0.1:8080.
run *ARGS:
    cargo run --release -p walletd-server -- serve {{ARGS}}

# Run node N of the example 3-node cluster on 127.0.0.1 (data in ./data/node-N).
node id="0" *ARGS:
    cargo run --release -p walletd-server -- node --config cluster.example.toml --id {{id}} {{ARGS}}

# One node of the same three-node cluster with one copy of each partition (no Raft):
# `just node-unreplicated 0`, then 1 and 2. Its data goes to ./data-unreplicated.
node-unreplicated id="0" *ARGS:
    sed 's/^# replicas = 3/replicas = 1/' cluster.example.toml > cluster.unreplicated.toml
    cargo run --release -p walletd-server -- node --config cluster.unreplicated.toml --id {{id}} --data-dir ./data-unreplicated {{ARGS}}

# Run the deterministic simulator: `just sim --seed 7`, `just sim --seeds 0..200`, `just sim --seed 7 --bug skip-barrier`.
sim *ARGS:
    cargo sim -- {{ARGS}}

# The engine per partition count, in-process on real files, fsync on: same-partition against cross-partition transfers (`wallet bench partitions`).
bench-engine *ARGS:
    cargo run --release -p walletd-server -- bench partitions {{ARGS}}

# The cluster benchmark: nodes in one process over loopback TCP, fsync on (`wallet bench cluster`).
bench-cluster *ARGS:
    cargo run --release -p walletd-server -- bench cluster {{ARGS}}

# The ledger alone on one core, no disk: the ceiling (`wallet bench ledger`).
bench-ledger *ARGS:
    cargo run --release -p walletd-server -- bench ledger {{ARGS}}

# Resident memory per transfer ever made, and the p99 of retries of early transfers whose rows are on disk only (`wallet bench memory --transfers N`).
bench-memory transfers="10000000" *ARGS:
    cargo run --release -p walletd-server -- bench memory --transfers {{transfers}} {{ARGS}}

# History pages and as_of balances on a small and a 100 times larger log (`wallet bench history`; `--history-scan` adds the whole-log fold they replaced).
bench-history *ARGS:
    cargo run --release -p walletd-server -- bench history {{ARGS}}

# Fuzz one decoder on nightly for a minute (`just fuzz snapshot`, `just fuzz wire_frame -max_total_time=600`); targets and what each checks in fuzz/README.md.
fuzz target *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    cd fuzz
    mkdir -p corpus/{{target}}
    dirs=(corpus/{{target}} seeds/{{target}})
    if [ -d ../core/tests/regressions/{{target}} ]; then dirs+=(../core/tests/regressions/{{target}}); fi
    cargo +nightly fuzz run {{target}} "${dirs[@]}" -- -max_total_time=60 -rss_limit_mb=512 -malloc_limit_mb=256 {{ARGS}}

# Check the Prometheus alert rules and run their unit tests (needs promtool: `apt-get install prometheus`).
alerts:
    bash ops/check.sh

# Exactly what CI runs.
ci:
    bash .ci/run

# Throughput side by side: walletd (HTTP, HTTP batch, in-process engine) beside PostgreSQL and Redis on one workload (installs them with apt-get if missing).
bench-peers:
    bash bench/peers.sh

# The load generator, any modes: `just bench http --accounts 10000`, `just bench memory`, `just bench --help`.
bench *ARGS:
    cargo run --release -p walletd-server -- bench {{ARGS}}
