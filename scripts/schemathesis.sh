#!/usr/bin/env bash
# Contract test: schemathesis (every check, a fixed seed, a bounded number of examples) against the real
# service started on a free loopback port with a fresh SQLite database and a fresh ClickHouse database (so
# `source=clickhouse` reports are served, as in production). Fails on any failure. The checks deliberately
# narrowed for some operations, and why, are in schemathesis.toml.
#   bash scripts/schemathesis.sh            # builds target/debug/handoff-ledger if needed
#   LEDGER_BIN=path/to/handoff-ledger bash scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v st >/dev/null 2>&1; then
  echo "installing schemathesis (pip)"
  python3 -m pip install --quiet 'schemathesis>=4.1,<5'
fi
bin="${LEDGER_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --bin handoff-ledger
  bin="${CARGO_TARGET_DIR:-target}/debug/handoff-ledger"
fi

ch_url="${LEDGER_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123}"
if [ -z "${LEDGER_TEST_CLICKHOUSE_URL:-}" ]; then
  bash scripts/clickhouse.sh >/dev/null
fi
ch_db="ledger_schemathesis_$$"

work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], data=sys.argv[2].encode(), timeout=10)" \
    "${ch_url}/" "DROP DATABASE IF EXISTS ${ch_db}" 2>/dev/null || true
}
trap cleanup EXIT
export LEDGER__STORE__URL="sqlite://${work}/ledger.db"
# The run uses a key of its own (admin: every operation), so the service is not open and the auth checks
# (no key, a wrong key) see the 401s a deployment answers.
key="$("$bin" keys create --name schemathesis --scope admin | tail -n 1)"
if [ -z "$key" ]; then
  echo "could not create the run's API key"; exit 1
fi
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:${port}"
LEDGER__SERVER__BIND="127.0.0.1:${port}" \
LEDGER__CLICKHOUSE__URL="${ch_url}" \
LEDGER__CLICKHOUSE__DATABASE="${ch_db}" \
  "$bin" serve >"${work}/service.log" 2>&1 &
pid=$!

for _ in $(seq 1 100); do
  if python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "${base}/readyz" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the service did not start:"; cat "${work}/service.log"; exit 1
  fi
  sleep 0.2
done

set +e
st --config-file schemathesis.toml run "${base}/openapi.json" \
  --checks all \
  --seed "${SCHEMATHESIS_SEED:-20261205}" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-40}" \
  --workers 1 \
  --generation-database none \
  --no-color \
  -H "Authorization: Bearer ${key}"
status=$?
set -e
if [ "$status" -ne 0 ]; then
  echo "schemathesis failed (exit ${status}); the service's log:"
  tail -n 50 "${work}/service.log"
fi
exit "$status"
