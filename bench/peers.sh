#!/usr/bin/env bash
# Throughput side by side: walletd (HTTP single transfers, HTTP batches, the engine
# in-process) against PostgreSQL and Redis on the same workload, on this machine, in one run.
#
#   bash bench/peers.sh          (or: just bench-peers)
#
# The workload, for every system: K accounts funded with 1,000.00 each; transfers between two
# accounts drawn uniformly at random, amounts 0.01..100.00, a unique dedup id per transfer,
# insufficient funds rejected (nothing moves); afterwards the balances must sum to the money
# funded. Each system runs for BENCH_SECONDS after a warm-up, as a private instance (own
# temporary data directory, own port) that is stopped at the end, even on failure.
#
# The 4-leg rows (PostgreSQL at the best PG_CLIENTS count of the single transfers, Redis
# `appendfsync always` unpipelined with REDIS_CLIENTS): one transaction of four transfers among
# eight accounts drawn at random (a leg's destination drawn among the other accounts, as a
# single transfer's; Redis skips a leg whose two keys are the same, 1 in K), amounts as above,
# one dedup id per transaction. All legs commit or none: each account's net debit over the four
# legs must fit its balance (A->B then B->C passes through B even if B starts empty), otherwise
# the transaction is recorded as rejected and nothing moves, as a rejected single transfer. In
# these rows one unit of the transfers/s column is one 4-leg transaction.
#
# Knobs (environment): BENCH_SECONDS (10), BENCH_WARMUP_SECONDS (2), BENCH_ACCOUNTS (100000),
# PG_CLIENTS ("8 16 32": the best is reported), REDIS_CLIENTS (50; also walletd's single-transfer
# clients), REDIS_PIPELINE (16), WALLETD_PARTITIONS (1), WALLETD_REFERENCE_PARTITIONS (8; empty
# skips the reference rows), WALLET_BENCH_ARGS (extra arguments for `wallet bench`),
# PEERS_SKIP_WALLETD, PEERS_SKIP_POSTGRES, PEERS_SKIP_REDIS (1: neither build nor run that part;
# its figures print "-").
#
# Prints one table and ends with exactly one line:
#   peers http_tps=A http_batch_tps=B engine_tps=C pg_sync_tps=D redis_always_tps=E redis_always_pipelined_tps=F redis_everysec_tps=G http8_tps=H http8_batch_tps=I http8_p50_ms=J http1_p50_ms=K http8_multileg4_tps=M pg_multileg4_tps=P redis_always_multileg4_tps=R http8_hold_capture_tps=L
# where the http8 figures are the server's default partition count (the reference rows; "-"
# when they are skipped), http1_p50_ms is the single-transfer row of WALLETD_PARTITIONS, the
# multileg4 figures are 4-leg transactions/s (walletd's over POST /v1/wallet/transactions on
# the reference partitions), and http8_hold_capture_tps counts pairs of a hold and its capture (each
# pair moves money once).
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_WARMUP_SECONDS=${BENCH_WARMUP_SECONDS:-2}
BENCH_ACCOUNTS=${BENCH_ACCOUNTS:-100000}
PG_CLIENTS=${PG_CLIENTS:-"8 16 32"}
REDIS_CLIENTS=${REDIS_CLIENTS:-50}
REDIS_PIPELINE=${REDIS_PIPELINE:-16}
WALLET_BENCH_ARGS=${WALLET_BENCH_ARGS:-}
# One partition: on a machine this small every transfer is then local to its partition (one
# log sync, one event). With more partitions, a random transfer usually crosses partitions and
# runs the two-phase protocol; those rows are printed for reference (empty: skip them).
WALLETD_PARTITIONS=${WALLETD_PARTITIONS:-1}
WALLETD_REFERENCE_PARTITIONS=${WALLETD_REFERENCE_PARTITIONS-8}
PEERS_SKIP_WALLETD=${PEERS_SKIP_WALLETD:-}
PEERS_SKIP_POSTGRES=${PEERS_SKIP_POSTGRES:-}
PEERS_SKIP_REDIS=${PEERS_SKIP_REDIS:-}
FUNDING_MINOR=100000        # 1,000.00 per account, as `wallet bench` funds
TRANSFER_MINOR_MAX=10000    # 100.00, as `wallet bench` draws

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/walletd-peers.XXXXXX)
chmod 755 "$WORK"           # the postgres user must reach its data directory below
ROWS="$WORK/rows.tsv"
PG_BIN=""
PG_DATA="$WORK/pg"
REDIS_PID=""

log() { printf '%s\n' "$*" >&2; }
die() { log "peers.sh: $*"; exit 1; }

cleanup() {
  local status=$?
  if [[ -n "$REDIS_PID" ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  if [[ -n "$PG_BIN" && -f "$PG_DATA/postmaster.pid" ]]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command as the owner of the private PostgreSQL instance (postgres refuses root).
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$(( 20000 + RANDOM % 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free port found"
}

install_peers() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-benchmark >/dev/null || missing+=(redis-tools)
  ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
  fi
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pgbench" ]] || die "PostgreSQL binaries not found under /usr/lib/postgresql"
}

# Appends one row to the table: system/mode, clients, per-request, tps, p50, p99, p99.9 (ms),
# rejected, errors, money conserved, durability.
row() { local IFS=$'\t'; printf '%s\n' "$*" >>"$ROWS"; }

# p50 p99 p99.9 in ms of a file of latencies in microseconds, one per line.
percentiles() {
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "- - -"; exit }
    split("0.5 0.99 0.999", q, " ")
    for (i = 1; i <= 3; i++) { k = int(q[i] * NR + 0.999999); if (k < 1) k = 1; if (k > NR) k = NR
      printf "%s%.2f", (i > 1 ? " " : ""), v[k] / 1000 }
    print "" }'
}

run_walletd() {
  log "== walletd: building and running wallet bench"
  (cd "$ROOT" && cargo build --release -q -p walletd-server) >&2
  local target_dir=${CARGO_TARGET_DIR:-target}
  [[ $target_dir == /* ]] || target_dir="$ROOT/$target_dir"
  local wallet="$target_dir/release/wallet"
  local common=(--accounts "$BENCH_ACCOUNTS" --seconds "$BENCH_SECONDS" --warmup-seconds "$BENCH_WARMUP_SECONDS"
    --clients "$REDIS_CLIENTS" --rows "$ROWS")
  # shellcheck disable=SC2086  # WALLET_BENCH_ARGS is a list of words by design
  "$wallet" bench http batch engine --partitions "$WALLETD_PARTITIONS" "${common[@]}" $WALLET_BENCH_ARGS \
    >"$WORK/walletd.out"
  cat "$WORK/walletd.out" >&2
  # `wallet bench` ends with one machine-readable line per kind of measurement; the modes
  # run here print `walletd http_tps=N http_batch_tps=N engine_tps=N`.
  WALLETD_LINE=$(grep '^walletd ' "$WORK/walletd.out" | tail -1)
  if [[ -n "$WALLETD_REFERENCE_PARTITIONS" ]]; then
    log "== walletd with $WALLETD_REFERENCE_PARTITIONS partitions, for reference (most transfers cross partitions)"
    # shellcheck disable=SC2086
    "$wallet" bench http batch multileg4 hold-capture --partitions "$WALLETD_REFERENCE_PARTITIONS" "${common[@]}" $WALLET_BENCH_ARGS >&2
  fi
}

# Figure $1 of walletd's machine-readable line; "-" if walletd did not run.
walletd_tps() {
  local v
  v=$(sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$WALLETD_LINE")
  echo "${v:--}"
}

# Column $2 (4: transfers/s, 5: p50 ms) of the table row labelled $1; "-" if there is none.
row_field() { awk -F'\t' -v label="$1" -v col="$2" '$1 == label { v = $col } END { print (v == "" ? "-" : v) }' "$ROWS"; }

pg_sql() { as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench "$@"; }

start_postgres() {
  PG_PORT=$(free_port)
  mkdir -p "$PG_DATA"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$PG_DATA"
  # --no-sync only skips syncing initdb's own files; the server below runs with fsync on.
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust --no-sync -E UTF8 >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -o \
    "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DATA -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers=256MB -c max_connections=100" \
    start >/dev/null
  as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
  pg_sql <<SQL
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE transfers (id bigint PRIMARY KEY, from_id int NOT NULL, to_id int NOT NULL,
                        amount bigint NOT NULL, status text NOT NULL);
INSERT INTO accounts SELECT g, $FUNDING_MINOR FROM generate_series(0, $BENCH_ACCOUNTS - 1) g;
-- One transfer, one transaction: the dedup row, the debit guarded by the balance (the CHECK
-- is the safety net), the credit. Rows are locked in id order so that two opposite
-- transfers never deadlock. A retry of an id answers the first outcome.
CREATE FUNCTION transfer(p_id bigint, p_from int, p_to int, p_amount bigint) RETURNS text AS \$\$
DECLARE prior text;
BEGIN
  INSERT INTO transfers VALUES (p_id, p_from, p_to, p_amount, 'committed') ON CONFLICT (id) DO NOTHING;
  IF NOT FOUND THEN
    SELECT status INTO prior FROM transfers WHERE id = p_id;
    RETURN prior;
  END IF;
  PERFORM 1 FROM accounts WHERE id IN (p_from, p_to) ORDER BY id FOR UPDATE;
  UPDATE accounts SET balance = balance - p_amount WHERE id = p_from AND balance >= p_amount;
  IF NOT FOUND THEN
    UPDATE transfers SET status = 'rejected' WHERE id = p_id;
    RETURN 'rejected';
  END IF;
  UPDATE accounts SET balance = balance + p_amount WHERE id = p_to;
  IF NOT FOUND THEN RAISE EXCEPTION 'no account %', p_to; END IF;
  RETURN 'committed';
END \$\$ LANGUAGE plpgsql;
-- One 4-leg transaction, one SQL transaction: the dedup row, then each account's net change
-- over the legs; the accounts are locked in id order and, if any would go below zero, the
-- transaction is recorded as rejected and nothing moves (as a rejected transfer), else every
-- account gets its net change at once.
CREATE TABLE transactions (id bigint PRIMARY KEY, from_ids int[] NOT NULL, to_ids int[] NOT NULL,
                           amounts bigint[] NOT NULL, status text NOT NULL);
CREATE FUNCTION transact(p_id bigint, p_from int[], p_to int[], p_amount bigint[]) RETURNS text AS \$\$
DECLARE prior text; v_ids int[]; v_net bigint[]; locked int;
BEGIN
  INSERT INTO transactions VALUES (p_id, p_from, p_to, p_amount, 'committed') ON CONFLICT (id) DO NOTHING;
  IF NOT FOUND THEN
    SELECT status INTO prior FROM transactions WHERE id = p_id;
    RETURN prior;
  END IF;
  SELECT array_agg(id ORDER BY id), array_agg(net ORDER BY id) INTO v_ids, v_net
    FROM (SELECT id, sum(d)::bigint AS net
            FROM (SELECT f AS id, -a AS d FROM unnest(p_from, p_amount) AS l(f, a)
                  UNION ALL SELECT t, a FROM unnest(p_to, p_amount) AS l(t, a)) legs
           GROUP BY id) n;
  PERFORM 1 FROM accounts WHERE id = ANY (v_ids) ORDER BY id FOR UPDATE;
  GET DIAGNOSTICS locked = ROW_COUNT;
  IF locked <> cardinality(v_ids) THEN RAISE EXCEPTION 'no account among %', v_ids; END IF;
  PERFORM 1 FROM accounts a JOIN unnest(v_ids, v_net) AS n(id, net) USING (id) WHERE a.balance + n.net < 0;
  IF FOUND THEN
    UPDATE transactions SET status = 'rejected' WHERE id = p_id;
    RETURN 'rejected';
  END IF;
  UPDATE accounts a SET balance = a.balance + n.net
    FROM unnest(v_ids, v_net) AS n(id, net) WHERE a.id = n.id AND n.net <> 0;
  RETURN 'committed';
END \$\$ LANGUAGE plpgsql;
VACUUM ANALYZE;
CHECKPOINT;
SQL
  cat >"$WORK/transfer.pgbench" <<PGB
\set from random(0, $BENCH_ACCOUNTS - 1)
\set to (:from + 1 + random(0, $BENCH_ACCOUNTS - 2)) % $BENCH_ACCOUNTS
\set amount random(1, $TRANSFER_MINOR_MAX)
\set id random(1, 9000000000000000000)
SELECT transfer(:id, :from, :to, :amount);
PGB
  # Four legs, each drawn as the transfer above (its destination among the other accounts).
  cat >"$WORK/multileg4.pgbench" <<PGB
\set f1 random(0, $BENCH_ACCOUNTS - 1)
\set t1 (:f1 + 1 + random(0, $BENCH_ACCOUNTS - 2)) % $BENCH_ACCOUNTS
\set a1 random(1, $TRANSFER_MINOR_MAX)
\set f2 random(0, $BENCH_ACCOUNTS - 1)
\set t2 (:f2 + 1 + random(0, $BENCH_ACCOUNTS - 2)) % $BENCH_ACCOUNTS
\set a2 random(1, $TRANSFER_MINOR_MAX)
\set f3 random(0, $BENCH_ACCOUNTS - 1)
\set t3 (:f3 + 1 + random(0, $BENCH_ACCOUNTS - 2)) % $BENCH_ACCOUNTS
\set a3 random(1, $TRANSFER_MINOR_MAX)
\set f4 random(0, $BENCH_ACCOUNTS - 1)
\set t4 (:f4 + 1 + random(0, $BENCH_ACCOUNTS - 2)) % $BENCH_ACCOUNTS
\set a4 random(1, $TRANSFER_MINOR_MAX)
\set id random(1, 9000000000000000000)
SELECT transact(:id, ARRAY[:f1, :f2, :f3, :f4]::int[], ARRAY[:t1, :t2, :t3, :t4]::int[],
                ARRAY[:a1, :a2, :a3, :a4]::bigint[]);
PGB
  chmod 644 "$WORK/transfer.pgbench" "$WORK/multileg4.pgbench"
}

# pgbench with $1 clients for $2 seconds of script $3 (transfer, multileg4; default transfer);
# prints "tps failed" and leaves latencies in $WORK/pg.lat.
pgbench_run() {
  local clients=$1 seconds=$2 script=${3:-transfer} out
  rm -rf "$WORK/pglog" && mkdir -p "$WORK/pglog" && chmod 777 "$WORK/pglog"
  out=$(cd "$WORK/pglog" && as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared \
    -f "$WORK/$script.pgbench" -c "$clients" -j 2 -T "$seconds" -l --log-prefix="$WORK/pglog/tx" bench 2>&1)
  cat "$WORK/pglog"/tx* 2>/dev/null | awk '{ print $3 }' >"$WORK/pg.lat"
  local tps failed
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
  [[ -n "$tps" ]] || { log "$out"; die "pgbench printed no tps"; }
  printf '%.0f %s\n' "$tps" "${failed:-0}"
}

run_postgres() {
  log "== PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'): fsync=on, synchronous_commit=on"
  start_postgres
  pgbench_run 8 "$BENCH_WARMUP_SECONDS" >/dev/null   # warm-up, not counted
  local best_tps=0 best_clients=0 best_failed=0 best_rejected=0 best_lat=""
  for clients in $PG_CLIENTS; do
    local rejected_before result tps failed
    rejected_before=$(pg_sql -At -c "SELECT count(*) FROM transfers WHERE status = 'rejected'")
    result=$(pgbench_run "$clients" "$BENCH_SECONDS")
    read -r tps failed <<<"$result"
    log "   pgbench $clients clients: $tps transfers/s, $failed failed"
    if ((tps > best_tps)); then
      best_tps=$tps best_clients=$clients best_failed=$failed
      best_rejected=$(( $(pg_sql -At -c "SELECT count(*) FROM transfers WHERE status = 'rejected'") - rejected_before ))
      best_lat=$(percentiles "$WORK/pg.lat")
    fi
  done
  local sum conserved=NO
  sum=$(pg_sql -At -c "SELECT sum(balance) FROM accounts")
  [[ "$sum" == $((BENCH_ACCOUNTS * FUNDING_MINOR)) ]] && conserved=yes
  read -r p50 p99 p999 <<<"$best_lat"
  local durability="synchronous_commit=on: commit returns after WAL fsync (group commit)"
  row "postgresql (best of $PG_CLIENTS clients)" "$best_clients" 1 "$best_tps" "$p50" "$p99" "$p999" \
    "$best_rejected" "$best_failed" "$conserved" "$durability"
  PG_TPS=$best_tps
  # 4-leg transactions at the best client count of the transfers, after a warm-up of their own.
  pgbench_run "$best_clients" "$BENCH_WARMUP_SECONDS" multileg4 >/dev/null
  local rejected_before result tps failed rejected
  rejected_before=$(pg_sql -At -c "SELECT count(*) FROM transactions WHERE status = 'rejected'")
  result=$(pgbench_run "$best_clients" "$BENCH_SECONDS" multileg4)
  read -r tps failed <<<"$result"
  rejected=$(( $(pg_sql -At -c "SELECT count(*) FROM transactions WHERE status = 'rejected'") - rejected_before ))
  log "   pgbench 4-leg, $best_clients clients: $tps transactions/s, $failed failed, $rejected rejected"
  conserved=NO
  sum=$(pg_sql -At -c "SELECT sum(balance) FROM accounts")
  [[ "$sum" == $((BENCH_ACCOUNTS * FUNDING_MINOR)) ]] && conserved=yes
  read -r p50 p99 p999 <<<"$(percentiles "$WORK/pg.lat")"
  row "postgresql 4-leg (best transfer clients)" "$best_clients" 1 "$tps" "$p50" "$p99" "$p999" \
    "$rejected" "$failed" "$conserved" "$durability"
  PG_MULTILEG4_TPS=$tps
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null
}

# The transfer as one Lua script (atomic in Redis): KEYS = from, to, dedup key, rejection
# counter; ARGV[1] = a random number the amount is drawn from.
REDIS_SCRIPT='local amount = tonumber(ARGV[1]) % '"$TRANSFER_MINOR_MAX"' + 1
local balance = tonumber(redis.call("GET", KEYS[1]))
if balance == nil or redis.call("EXISTS", KEYS[2]) == 0 then return redis.error_reply("ERR no such account") end
local outcome = "committed"
if balance < amount then outcome = "rejected" end
if not redis.call("SET", KEYS[3], outcome, "NX") then return redis.call("GET", KEYS[3]) end
if outcome == "rejected" then redis.call("INCR", KEYS[4]) return outcome end
redis.call("DECRBY", KEYS[1], amount)
redis.call("INCRBY", KEYS[2], amount)
return outcome'

# A 4-leg transaction as one Lua script: KEYS[2i-1] -> KEYS[2i] is leg i (1..4; a leg whose two
# keys are the same is skipped), KEYS[9] the dedup key, KEYS[10] the rejection counter; ARGV[i]
# a random number leg i's amount is drawn from. Each account's net change over the legs must
# keep it at zero or above, else the transaction is rejected whole.
REDIS_MULTILEG4_SCRIPT='local net, accounts = {}, {}
for i = 1, 4 do
  local from, to = KEYS[2 * i - 1], KEYS[2 * i]
  if from ~= to then
    local amount = tonumber(ARGV[i]) % '"$TRANSFER_MINOR_MAX"' + 1
    if net[from] == nil then net[from] = 0 accounts[#accounts + 1] = from end
    if net[to] == nil then net[to] = 0 accounts[#accounts + 1] = to end
    net[from] = net[from] - amount
    net[to] = net[to] + amount
  end
end
local outcome = "committed"
for _, k in ipairs(accounts) do
  local balance = tonumber(redis.call("GET", k))
  if balance == nil then return redis.error_reply("ERR no such account") end
  if balance + net[k] < 0 then outcome = "rejected" end
end
if not redis.call("SET", KEYS[9], outcome, "NX") then return redis.call("GET", KEYS[9]) end
if outcome == "rejected" then redis.call("INCR", KEYS[10]) return outcome end
for _, k in ipairs(accounts) do
  if net[k] ~= 0 then redis.call("INCRBY", k, net[k]) end
end
return outcome'

redis_cli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# Starts a fresh Redis with AOF on and appendfsync $1, funds the accounts, loads the scripts.
start_redis() {
  local fsync=$1 attempt
  # A port found free can be taken before Redis binds it; such a start is retried on another.
  for attempt in 1 2 3; do
    REDIS_PORT=$(free_port)
    rm -rf "$WORK/redis" && mkdir -p "$WORK/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --save "" \
      --appendonly yes --appendfsync "$fsync" --protected-mode no --logfile "$WORK/redis/redis.log" &
    REDIS_PID=$!
    for _ in $(seq 1 100); do redis_cli ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis_cli ping >/dev/null 2>&1 && break
    log "   redis-server did not start on port $REDIS_PORT (attempt $attempt):"
    tail -n 5 "$WORK/redis/redis.log" >&2 || true
    kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null || true
  done
  redis_cli ping >/dev/null || die "redis-server did not start in three attempts"
  # Accounts are acct:<12 digits>, the form redis-benchmark gives __rand_int__.
  awk -v k="$BENCH_ACCOUNTS" -v f="$FUNDING_MINOR" 'BEGIN {
    for (i = 0; i < k; i++) { key = sprintf("acct:%012d", i)
      printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(key), key, length(f), f } }' |
    redis_cli --pipe >/dev/null
  REDIS_SHA=$(redis_cli SCRIPT LOAD "$REDIS_SCRIPT")
  REDIS_MULTILEG4_SHA=$(redis_cli SCRIPT LOAD "$REDIS_MULTILEG4_SCRIPT")
}

stop_redis() {
  kill "$REDIS_PID" && wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=""
}

# redis-benchmark of script $4 (transfer, multileg4; default transfer) with $1 clients and
# pipeline $2, for about $3 seconds (redis-benchmark counts requests, so a short run first
# measures the rate). Every __rand_int__ is drawn on its own. Prints "rps p50 p99".
redis_run() {
  local clients=$1 pipeline=$2 seconds=$3 script=${4:-transfer} n rps csv cmd
  case $script in
    transfer) cmd=(EVALSHA "$REDIS_SHA" 4 "acct:__rand_int__" "acct:__rand_int__"
      "tx:__rand_int__:__rand_int__:__rand_int__" "bench:rejected" "__rand_int__") ;;
    multileg4) cmd=(EVALSHA "$REDIS_MULTILEG4_SHA" 10 "acct:__rand_int__" "acct:__rand_int__"
      "acct:__rand_int__" "acct:__rand_int__" "acct:__rand_int__" "acct:__rand_int__"
      "acct:__rand_int__" "acct:__rand_int__" "tx:__rand_int__:__rand_int__:__rand_int__" "bench:rejected"
      "__rand_int__" "__rand_int__" "__rand_int__" "__rand_int__") ;;
    *) die "no Redis script $script" ;;
  esac
  csv=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$clients" -P "$pipeline" -r "$BENCH_ACCOUNTS" \
    -n $((clients * pipeline * 200)) --csv "${cmd[@]}" 2>/dev/null | tail -1)
  rps=$(awk -F'"' '{ print $4 }' <<<"$csv")
  n=$(awk -v r="$rps" -v s="$seconds" 'BEGIN { printf "%d", r * s }')
  csv=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$clients" -P "$pipeline" -r "$BENCH_ACCOUNTS" \
    -n "$n" --csv "${cmd[@]}" 2>/dev/null | tail -1)
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  awk -F'"' '{ printf "%.0f %.2f %.2f\n", $4, $10, $14 }' <<<"$csv"
}

# One Redis row: fsync policy $1, clients $2, pipeline $3, durability text $4, script $5
# (transfer, multileg4; default transfer).
redis_row() {
  local fsync=$1 clients=$2 pipeline=$3 durability=$4 script=${5:-transfer}
  local result rps p50 p99 sum rejected conserved=NO label unit=transfers
  start_redis "$fsync"
  result=$(redis_run "$clients" "$pipeline" "$BENCH_SECONDS" "$script")
  read -r rps p50 p99 <<<"$result"
  sum=$(redis_cli EVAL 'local s = 0 for i = 0, tonumber(ARGV[1]) - 1 do s = s + tonumber(redis.call("GET", string.format("acct:%012d", i))) end return s' 0 "$BENCH_ACCOUNTS")
  [[ "$sum" == $((BENCH_ACCOUNTS * FUNDING_MINOR)) ]] && conserved=yes
  rejected=$(redis_cli GET bench:rejected)
  label="redis appendfsync=$fsync"
  ((pipeline > 1)) && label="$label pipelined"
  [[ $script == multileg4 ]] && label="$label 4-leg" unit="4-leg transactions"
  row "$label" "$clients" "$pipeline" "$rps" "$p50" "$p99" "-" "${rejected:-0}" 0 "$conserved" "$durability"
  log "   redis $fsync, $clients clients, pipeline $pipeline: $rps $unit/s"
  stop_redis
  REDIS_RESULT=$rps
}

run_redis() {
  log "== Redis $(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p'): AOF on"
  local always="appendfsync always: fsync of the AOF before the replies of each event-loop batch"
  local everysec="appendfsync everysec: fsync once a second, a crash may lose ~1 s of acknowledged transfers"
  redis_row always "$REDIS_CLIENTS" 1 "$always"; REDIS_ALWAYS=$REDIS_RESULT
  redis_row always "$REDIS_CLIENTS" 1 "$always" multileg4; REDIS_ALWAYS_MULTILEG4=$REDIS_RESULT
  redis_row always "$REDIS_CLIENTS" "$REDIS_PIPELINE" "$always"; REDIS_ALWAYS_PIPELINED=$REDIS_RESULT
  redis_row everysec "$REDIS_CLIENTS" 1 "$everysec"; REDIS_EVERYSEC=$REDIS_RESULT
  redis_row everysec "$REDIS_CLIENTS" "$REDIS_PIPELINE" "$everysec"
}

# Prints the tab-separated rows as an aligned table: numbers right-aligned, text left.
print_table() {
  { printf 'system / mode\tclients\tper req\ttransfers/s\tp50 ms\tp99 ms\tp99.9 ms\trejected\terrors\tconserved\tdurability\n'
    cat "$ROWS"; } | awk -F'\t' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n[NR] = NF }
    END { for (r = 1; r <= NR; r++) { line = ""
      for (i = 1; i <= n[r]; i++) { c = cell[r, i]
        if (i == n[r]) { line = line c }
        else if (i > 1 && (c ~ /^[0-9.]+$/ || c == "-")) { line = line sprintf("%*s  ", w[i], c) }
        else { line = line sprintf("%-*s  ", w[i], c) } }
      print line } }'
}

main() {
  install_peers
  : >"$ROWS"
  log "load: $(uptime | sed 's/.*load average/load average/')"
  # The figures of a part that is skipped stay "-".
  WALLETD_LINE="" PG_TPS=- PG_MULTILEG4_TPS=- REDIS_ALWAYS=- REDIS_ALWAYS_PIPELINED=- REDIS_EVERYSEC=- REDIS_ALWAYS_MULTILEG4=-
  [[ $PEERS_SKIP_WALLETD == 1 ]] || run_walletd
  [[ $PEERS_SKIP_POSTGRES == 1 ]] || run_postgres
  [[ $PEERS_SKIP_REDIS == 1 ]] || run_redis
  echo
  echo "Transfers between random accounts of $BENCH_ACCOUNTS (4-leg rows: transactions of four transfers), ${BENCH_SECONDS} s each after warm-up, on $(nproc) cores ($(uname -m)):"
  print_table
  echo
  local ref="$WALLETD_REFERENCE_PARTITIONS" one="$WALLETD_PARTITIONS"
  local http8_tps http8_batch_tps http8_p50 http1_p50 http8_hold_capture_tps http8_multileg4_tps
  http8_tps=$(row_field "walletd http ($ref partitions)" 4)
  http8_hold_capture_tps=$(row_field "walletd http_hold_capture ($ref partitions)" 4)
  http8_batch_tps=$(row_field "walletd http_batch ($ref partitions)" 4)
  http8_p50=$(row_field "walletd http ($ref partitions)" 5)
  http1_p50=$(row_field "walletd http ($one partition$([[ $one == 1 ]] || echo s))" 5)
  http8_multileg4_tps=$(row_field "walletd http_multileg4 ($ref partitions)" 4)
  echo "peers http_tps=$(walletd_tps http_tps) http_batch_tps=$(walletd_tps http_batch_tps) engine_tps=$(walletd_tps engine_tps) pg_sync_tps=$PG_TPS redis_always_tps=$REDIS_ALWAYS redis_always_pipelined_tps=$REDIS_ALWAYS_PIPELINED redis_everysec_tps=$REDIS_EVERYSEC http8_tps=$http8_tps http8_batch_tps=$http8_batch_tps http8_p50_ms=$http8_p50 http1_p50_ms=$http1_p50 http8_multileg4_tps=$http8_multileg4_tps pg_multileg4_tps=$PG_MULTILEG4_TPS redis_always_multileg4_tps=$REDIS_ALWAYS_MULTILEG4 http8_hold_capture_tps=$http8_hold_capture_tps"
}

main "$@"
