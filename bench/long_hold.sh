#!/usr/bin/env bash
# Memory of a partition with a long hold open: one 30-day hold is placed on a one-partition
# `wallet serve`, then `wallet bench batch` runs against it; the script prints the batch
# rate and, from /metrics, the transfer rows recorded, those still in memory and the
# resident memory, and checks that the hold is still held.
#
# Usage: bash bench/long_hold.sh [SECONDS] [WALLET_BINARY]
#   SECONDS        measured seconds of batches (default 20)
#   WALLET_BINARY  the `wallet` binary to run (default: built here with --release)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
source bench/serve_lib.sh
wallet_binary "${2:-}"
port=${LONG_HOLD_PORT:-18777}
start_serve "$port" --partitions 1
post() { curl -sf -X POST "localhost:$port$1" -H 'Content-Type: application/json' -d "$2" >/dev/null; }
post /v1/accounts '{"account_id":"holder","currency":"USD"}'
post /v1/accounts '{"account_id":"payee","currency":"USD"}'
post /v1/accounts/holder/deposit '{"amount":"100.00","currency":"USD","transaction_id":"dep-1"}'
post /v1/wallet/holds '{"from_account":"holder","to_account":"payee","amount":"20.00","currency":"USD","transaction_id":"h-1","expires_in_ms":2592000000}'
echo "long_hold: a 30-day hold placed; ${seconds}s of batches"
"$wallet" bench batch --target "http://127.0.0.1:$port" --seconds "$seconds" --warmup-seconds 1 \
  >"$data/bench.txt" 2>&1
rate=$(grep -o 'measure *[0-9]*/[0-9]*s *[0-9]* transfers/s' "$data/bench.txt" |
  awk '{s += $3; n++} END {if (n) printf "%d", s / n; else print 0}')
sleep 3 # a snapshot may still be writing the last chunks
metrics=$(curl -sf "localhost:$port/metrics")
metric() { printf '%s\n' "$metrics" | awk -v m="$1" '$1 ~ "^"m {print $2; exit}'; }
in_memory=$(metric walletd_partition_transfer_rows_in_memory)
cold=$(metric walletd_partition_cold_transfer_chunks)
rss=$(metric process_resident_memory_bytes)
status=$(curl -sf "localhost:$port/v1/transfers/holder/h-1" | grep -o '"status":"[a-z]*"')
echo "long_hold batch_tps=$rate rows_in_memory=$in_memory cold_chunks=$cold rss_mb=$((${rss%.*} / 1048576)) hold=$status"
