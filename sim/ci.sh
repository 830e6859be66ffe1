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

echo "--> a sweep of 500 seeds, all faults on: every one must pass"
cargo sim -- --seeds 0..500

echo "--> every known bug must be found by a short sweep"
for bug in skip-barrier reply-before-sync no-idempotency credit-before-debit retry-failed-sync refusal-unrecorded; do
  if out=$(cargo sim -- --seeds 0..20 --bug "$bug" 2>&1); then
    printf '%s\n' "$out" | tail -5
    echo "the simulator did not find the known bug $bug in seeds 0..20" >&2
    exit 1
  fi
  printf '%s: %s\n' "$bug" "$(printf '%s\n' "$out" | tail -1)"
done
