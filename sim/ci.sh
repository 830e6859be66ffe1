#!/usr/bin/env bash
# The deterministic-simulation steps of CI (.ci/run calls this file when it exists).
# Each step is also a command a developer can run by hand; see sim/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step says when it starts (seconds into this script), so a slow one shows in the log.
step() { printf -- '--> %s (at %ss)\n' "$*" "$SECONDS"; }
sim_build=(--config "build.rustflags=['--cfg','madsim']" --config "build.target-dir='target/sim'")

step "clippy on the simulation build (warnings are errors)"
cargo clippy -p walletd-sim --all-targets "${sim_build[@]}" -- -D warnings

step "the simulator's own tests (release: the build the sweeps below use, built once)"
# A seed draws the same run in either build (sim/README.md), and the release tests take a
# sixth of the debug ones' time.
cargo simtest --release

step "every seed of the regression list"
cargo sim -- --regressions sim/regressions.txt

step "a sweep of 500 seeds (replicated: --replicas 3, the default of 3 nodes), all faults on: every one must pass"
cargo sim -- --seeds 0..500

step "a sweep of 100 replicated seeds with copies moving (4 nodes, 3 copies: moves, drains, coordinator outages, slow watches and lost leases, with every other fault): every one must pass"
cargo sim -- --seeds 0..100 --nodes 4 --replicas 3

step "a sweep of 200 unreplicated seeds (--replicas 1), all faults on: every one must pass"
cargo sim -- --seeds 0..200 --replicas 1

step "every known bug must be found by a short unreplicated sweep"
# NAME:SEEDS. The disk bugs need a power loss at the right moment, which fewer seeds draw;
# so does an early body read (a crash must take the record it was answered from).
for entry in skip-barrier:0..20 reply-before-sync:0..20 no-idempotency:0..20 \
  credit-before-debit:0..20 retry-failed-sync:0..20 refusal-unrecorded:0..20 \
  recovery-trusts-unsynced:0..200 rollover-without-dir-sync:0..200 \
  cancel-after-durable-credit:0..20 commit-on-home-only:0..20 confirm-sent-once:0..20 \
  refund-beyond-original:0..20 capture-after-expiry:0..20 multi-leg-partial:0..20 \
  body-before-durable:0..200 hold-end-misreported:0..20; do
  bug=${entry%%:*}
  seeds=${entry#*:}
  if out=$(cargo sim -- --seeds "$seeds" --replicas 1 --bug "$bug" --fail-fast 2>&1); then
    printf '%s\n' "$out" | tail -5
    echo "the simulator did not find the known bug $bug in unreplicated seeds $seeds" >&2
    exit 1
  fi
  printf '%s: %s\n' "$bug" "$(printf '%s\n' "$out" | tail -1)"
done

step "every known bug of replication must be found by a short replicated sweep"
# A stale read needs a leader cut off and drained while a deposit lands elsewhere: rarer.
# A transaction's other legs confirmed needs a leader to lose the home's Try after its
# participants tried, then a client's retry with other legs: rarer still.
for entry in ack-before-quorum:0..20 forget-vote:0..20 stale-read:0..30 \
  rejoin-under-old-id:0..20 tx-confirm-other-legs:0..200; do
  bug=${entry%%:*}
  seeds=${entry#*:}
  if out=$(cargo sim -- --seeds "$seeds" --replicas 3 --bug "$bug" --fail-fast 2>&1); then
    printf '%s\n' "$out" | tail -5
    echo "the simulator did not find the known bug $bug in replicated seeds $seeds" >&2
    exit 1
  fi
  printf '%s: %s\n' "$bug" "$(printf '%s\n' "$out" | tail -1)"
done

step "every known bug of moving copies must be found by a short sweep with moves"
for entry in leave-before-removed:0..20 lost-lease-ignored:0..40; do
  bug=${entry%%:*}
  seeds=${entry#*:}
  if out=$(cargo sim -- --seeds "$seeds" --nodes 4 --replicas 3 --bug "$bug" --fail-fast 2>&1); then
    printf '%s\n' "$out" | tail -5
    echo "the simulator did not find the known bug $bug in seeds $seeds with moves" >&2
    exit 1
  fi
  printf '%s: %s\n' "$bug" "$(printf '%s\n' "$out" | tail -1)"
done
