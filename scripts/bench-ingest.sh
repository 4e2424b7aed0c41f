#!/usr/bin/env bash
# The ingest benchmark, in one run (docs/ingest-benchmark.md): builds the release binaries, then measures
#   1. the HTTP ceiling: a no-op actix endpoint parsing the same JSON (src/bin/ledger-ceiling.rs);
#   2. handoff-ledger on SQLite and on PostgreSQL, at 10 and at 2,000 events per conversation;
#   3. the p99 acknowledgement latency at half of each store's peak rate (open-loop schedule);
#   4. `handoff-ledger replay` of the SQLite log written above, online: run again and again while `serve` on
#      that database answers the load generator (replay rate, and the webhook rate and p99 meanwhile);
# and prints every rate with its ratio to the ceiling measured in the same run. Not part of CI.
#
#   bash scripts/bench-ingest.sh                   # 20,000 webhooks per run, 64 clients
#   REQUESTS=40000 CONCURRENCY=64 bash scripts/bench-ingest.sh
#   LEDGER_BIN=/path/to/other/handoff-ledger bash scripts/bench-ingest.sh   # measure another build (e.g. main)
#   STORES=postgres bash scripts/bench-ingest.sh   # only these stores (the replay runs only with sqlite)
#   PG_DB=mine_bench bash scripts/bench-ingest.sh  # the PostgreSQL database it creates and drops
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS="${REQUESTS:-20000}"
CONCURRENCY="${CONCURRENCY:-64}"
PG_ADMIN="${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT="${PORT:-18180}"
STORES="${STORES:-sqlite postgres}"
PG_DB="${PG_DB:-ledger_bench}"

cargo build --release --bins >&2
bin="${CARGO_TARGET_DIR:-target}/release"
LEDGER_BIN="${LEDGER_BIN:-$bin/handoff-ledger}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_ready() {
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the server on port $PORT did not become ready" >&2
  return 1
}

stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# load ROOMS [RATE] -> "rate p50 p99" of one loadgen run
load() {
  local out
  out="$("$bin/ledger-loadgen" --url "http://127.0.0.1:$PORT" --requests "$REQUESTS" \
    --concurrency "$CONCURRENCY" --rooms "$1" --rate "${2:-0}")"
  echo "  $out" >&2
  echo "$out" | sed -E 's/.*: ([0-9]+) webhooks\/s; latency ms p50 ([0-9.]+) p90 [0-9.]+ p99 ([0-9.]+).*/\1 \2 \3/'
}

# serve URL: starts handoff-ledger on a store and waits until it answers. It runs as configured by default:
# `log.level = info`, so it writes one access line per request, as in production (the service reads its level
# from `log.level` / LEDGER__LOG__LEVEL, not RUST_LOG).
serve() {
  LEDGER__SERVER__BIND="127.0.0.1:$PORT" LEDGER__STORE__URL="$1" \
    "$LEDGER_BIN" serve >"$work/serve.log" 2>&1 &
  server=$!
  pids+=("$server")
  wait_ready
}

fresh_pg() {
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
  psql "$PG_ADMIN" -qc "CREATE DATABASE $PG_DB" >/dev/null
  echo "${PG_ADMIN%/*}/$PG_DB"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "HTTP ceiling" >&2
"$bin/ledger-ceiling" --bind "127.0.0.1:$PORT" >/dev/null 2>&1 &
server=$!
pids+=("$server")
wait_ready
read -r ceiling _ _ <<<"$(load 2000)"
stop "$server"

declare -A rate p99 half_p99
for store in $STORES; do
  for per in 10 2000; do
    rooms=$((REQUESTS / per))
    [ "$rooms" -ge 1 ] || rooms=1
    if [ "$store" = sqlite ]; then
      rm -f "$work"/ledger.db*
      url="sqlite://$work/ledger.db"
    else
      url="$(fresh_pg)"
    fi
    echo "$store, $per events per conversation ($rooms conversations)" >&2
    serve "$url"
    read -r r _ p <<<"$(load "$rooms")"
    rate[$store,$per]=$r
    p99[$store,$per]=$p
    if [ "$per" = 10 ]; then
      echo "$store at half its peak rate ($((r / 2))/s)" >&2
      read -r _ _ hp <<<"$(load "$rooms" "$((r / 2))")"
      half_p99[$store]=$hp
    fi
    stop "$server"
    if [ "$store" = sqlite ] && [ "$per" = 10 ]; then
      cp "$work/ledger.db" "$work/replay.db"
      for ext in -wal -shm; do [ -f "$work/ledger.db$ext" ] && cp "$work/ledger.db$ext" "$work/replay.db$ext"; done
    fi
  done
done

with_replay=0
case " $STORES " in *" sqlite "*) with_replay=1 ;; esac
if [ "$with_replay" = 1 ]; then
echo "replay of the SQLite log (10 events per conversation, both runs) while serve answers the load generator" >&2
# `replay` runs online beside the writer: the load generator runs against `serve` on the same database and
# replays follow one another for as long as it runs, so every webhook it counts was answered during a replay.
serve "sqlite://$work/replay.db"
"$bin/ledger-loadgen" --url "http://127.0.0.1:$PORT" --requests "$REQUESTS" --concurrency "$CONCURRENCY" \
  --rooms 2000 >"$work/replay-load.txt" &
loader=$!
pids+=("$loader")
replays=0 events=0 replay_seconds=0
while [ "$replays" -eq 0 ] || kill -0 "$loader" 2>/dev/null; do
  start=$(date +%s.%N)
  out="$(LEDGER__STORE__URL="sqlite://$work/replay.db" "$LEDGER_BIN" replay 2>"$work/replay.err" | tail -n1)"
  end=$(date +%s.%N)
  echo "  $out ($(tail -n1 "$work/replay.err"))" >&2
  n=$(echo "$out" | sed -E 's/replayed ([0-9]+) events.*/\1/')
  events=$((events + n))
  replays=$((replays + 1))
  replay_seconds=$(awk -v s="$replay_seconds" -v a="$start" -v b="$end" 'BEGIN {printf "%.3f", s + b - a}')
done
wait "$loader" || true
stop "$server"
load_out="$(cat "$work/replay-load.txt")"
echo "  $load_out" >&2
read -r replay_load _ replay_p99 <<<"$(echo "$load_out" |
  sed -E 's/.*: ([0-9]+) webhooks\/s; latency ms p50 ([0-9.]+) p90 [0-9.]+ p99 ([0-9.]+).*/\1 \2 \3/')"
replay_rate=$(awk -v n="$events" -v s="$replay_seconds" 'BEGIN {printf "%.0f", n / s}')
fi

pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f %%", 100 * a / b}'; }
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %-44s | %12s | %14s | %10s |\n' "what" "webhooks/s" "of the ceiling" "p99 ms"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..12})"
printf '| %-44s | %12s | %14s | %10s |\n' "HTTP ceiling (no-op actix, same JSON)" "$ceiling" "100.0 %" ""
for store in $STORES; do
  for per in 10 2000; do
    printf '| %-44s | %12s | %14s | %10s |\n' "$store, $per events/conversation" "${rate[$store,$per]}" \
      "$(pct "${rate[$store,$per]}" "$ceiling")" "${p99[$store,$per]}"
  done
  printf '| %-44s | %12s | %14s | %10s |\n' "$store, 2000 vs 10 events/conversation" "" \
    "$(pct "${rate[$store,2000]}" "${rate[$store,10]}") of 10" ""
  printf '| %-44s | %12s | %14s | %10s |\n' "$store at half its peak (open loop)" "$((${rate[$store,10]} / 2))" "" "${half_p99[$store]}"
done
[ "$with_replay" = 0 ] && exit 0
printf '| %-44s | %12s | %14s | %10s |\n' "replay ($replays runs, $events events), events/s" "$replay_rate" "" ""
printf '| %-44s | %12s | %14s | %10s |\n' "sqlite webhooks during the replays" "$replay_load" \
  "$(pct "$replay_load" "$ceiling")" "$replay_p99"
