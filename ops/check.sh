#!/usr/bin/env bash
# Checks the alerting rules and runs their unit tests with promtool (Debian: `apt-get install
# prometheus`). Without promtool it says so and succeeds: CI does not depend on it.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null; then
  echo "promtool not found: rules not checked (apt-get install prometheus provides it)"
  exit 0
fi
promtool check rules alerts.yml
promtool test rules alerts.test.yml
