# Sourced by the bench scripts that measure a running `wallet serve`: picks the binary and
# starts the server on a fresh data directory, stopped and removed when the script exits.
#
#   wallet_binary PATH_OR_EMPTY   sets $wallet (builds target/release/wallet when empty)
#   start_serve PORT [ARGS...]    starts `$wallet serve ARGS` on 127.0.0.1:PORT, sets $server
#                                 (its pid) and $data (its data directory), waits for health

wallet_binary() {
  wallet=$1
  if [[ -z "$wallet" ]]; then
    cargo build --release --quiet -p walletd-server
    wallet=target/release/wallet
  fi
}

start_serve() {
  local port=$1
  shift
  data=$(mktemp -d)
  "$wallet" serve "$@" --data-dir "$data" --listen "127.0.0.1:$port" >"$data/server.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "localhost:$port/healthz" && return 0
    sleep 0.1
  done
  echo "wallet serve did not answer on port $port; its log:" >&2
  cat "$data/server.log" >&2
  return 1
}
