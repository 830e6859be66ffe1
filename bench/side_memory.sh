#!/usr/bin/env bash
# Resident memory a money movement leaves behind, for the kinds whose rows still stay in
# memory for good (multi-leg transactions, holds): starts `wallet serve` with its defaults
# (8 partitions), runs one second of MODE as warm-up, waits for the snapshot that follows,
# then runs SECONDS of MODE and prints how much the server's resident set grew, per
# operation.
#
# Usage: bash bench/side_memory.sh [MODE] [SECONDS] [WALLET_BINARY] [SERVE_ARGS...]
#   MODE           a `wallet bench` HTTP mode: multileg4 (default) or hold-capture
#   SECONDS        measured seconds (default 10)
#   WALLET_BINARY  the `wallet` binary to run (default, or "": built here with --release)
#   SERVE_ARGS     more flags for `wallet serve`, e.g. a small in-memory budget
#                  (`--transfer-rows-in-memory-max 131072 --snapshot-every-events 200000`)
#                  so that final rows reach disk within a short run
#
# Last line: `side_memory mode=M ops=N rss_growth_mb=X bytes_per_op=B`. Operations are the
# mode's mean rate times SECONDS (a 4-leg transaction, or a hold and its capture, is one).
# The growth includes the transfer rows still in memory (hot chunks) and allocator slack,
# so compare binaries in the same run, not against zero.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-multileg4}
seconds=${2:-10}
source bench/serve_lib.sh
wallet_binary "${3:-}"
port=${SIDE_MEMORY_PORT:-18779}
start_serve "$port" "${@:4}"
resident_kb() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
run() { "$wallet" bench "$mode" --target "http://127.0.0.1:$port" --warmup-seconds 0 --seconds "$1"; }
echo "side_memory: ${mode}, 1 s of warm-up, then ${seconds} s measured"
run 1 >"$data/warmup.txt" 2>&1
sleep 2
before=$(resident_kb)
run "$seconds" >"$data/bench.txt" 2>&1
sleep 3 # a snapshot may still be writing
after=$(resident_kb)
rate=$(grep -o "_tps=[0-9]*" "$data/bench.txt" | tail -1 | cut -d= -f2)
if [[ -z "$rate" || "$rate" == 0 ]]; then
  cat "$data/bench.txt" >&2
  echo "side_memory: the benchmark reported no rate" >&2
  exit 1
fi
ops=$((rate * seconds))
growth_kb=$((after - before))
echo "side_memory mode=$mode ops=$ops rss_growth_mb=$((growth_kb / 1024)) bytes_per_op=$((growth_kb * 1024 / ops))"
