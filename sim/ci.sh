#!/usr/bin/env bash
# The deterministic-simulation steps of CI (.ci/run calls this file when it exists).
# Each step is also a command a developer can run by hand; see sim/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
sim_build=(--config "build.rustflags=['--cfg','madsim']" --config "build.target-dir='target/sim'")

echo "--> clippy on the simulation build (warnings are errors)"
cargo clippy -p walletd-sim --all-targets "${sim_build[@]}" -- -D warnings

echo "--> the simulator's own tests"
cargo simtest

echo "--> every seed of the regression list"
cargo sim -- --regressions sim/regressions.txt

echo "--> a sweep of 100 seeds, all faults on"
cargo sim -- --seeds 0..100
