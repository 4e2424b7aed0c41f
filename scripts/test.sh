#!/usr/bin/env bash
# Runs the whole test suite: makes sure PostgreSQL (127.0.0.1:5432) and a loopback ClickHouse
# are up, then runs every test. The same command CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if [ -f scripts/clickhouse.sh ]; then
  bash scripts/clickhouse.sh
  export LEDGER_TEST_CLICKHOUSE_URL="${LEDGER_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123}"
fi
# The console's browser tests drive Debian's Chromium through its chromedriver.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver from the distribution"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  ${SUDO} apt-get update -qq
  DEBIAN_FRONTEND=noninteractive ${SUDO} apt-get install -y -qq chromium chromium-driver >/dev/null
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
# The API contract against the real service (only on a full run: arguments select tests).
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ]; then
  bash scripts/schemathesis.sh
fi
exit "$status"
