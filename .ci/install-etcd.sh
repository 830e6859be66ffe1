#!/usr/bin/env bash
# Installs etcd (Debian's etcd-server) if no `etcd` is on the PATH, for the tests that start
# a private etcd (tests/etcd.rs). Needs root and apt-get; exits 1 with the reason otherwise,
# and the tests then skip, saying so loudly.
set -euo pipefail
if command -v etcd >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-etcd: no etcd on the PATH and no apt-get to install it" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-etcd: no etcd on the PATH, and installing it needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The package's service is not started: every test runs its own etcd on ports of its own.
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends etcd-server >&2
command -v etcd >/dev/null 2>&1
