#!/usr/bin/env bash
# Ingest throughput and cross-process delivery latency on PostgreSQL.
#   bash deploy/bench/run.sh [postgresql://postgres@127.0.0.1:5432]
# Needs wrk (apt-get install -y wrk) and the repository's .venv with '.[postgres]'.
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVER="${1:-postgresql://postgres@127.0.0.1:5432}"
DB="receiver_bench_$$"
WORK="$(mktemp -d)"
export SECRET=bench-secret BENCH_LOG="$WORK/handled.log" PYTHONPATH="$PWD/deploy/bench"
export RECEIVER_DATABASE_URL="$SERVER/$DB?pool_size=16" RECEIVER_HANDLERS=bench_handlers
export RECEIVER_APIFRAME_WEBHOOK_SECRET=$SECRET RECEIVER_ADMIN_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n") RECEIVER_LOG_LEVEL=ERROR
psql -q "$SERVER/postgres" -c "CREATE DATABASE $DB"
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    psql -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
    rm -rf "$WORK"
}
trap cleanup EXIT
.venv/bin/receiver migrate >/dev/null
wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return; sleep 0.1; done; exit 1; }

echo "== ingest: one 'serve --no-worker' process, wrk -t2 -c16 -d20s"
RECEIVER_PORT=8101 .venv/bin/receiver serve --no-worker 2>>"$WORK/serve.log" & pids+=($!)
wait_up 8101
wrk -t2 -c16 -d20s -s deploy/bench/callbacks.lua http://127.0.0.1:8101

echo "== ingest: two 'serve --no-worker' processes, one wrk -t1 -c16 -d20s each"
RECEIVER_PORT=8102 .venv/bin/receiver serve --no-worker 2>>"$WORK/serve.log" & pids+=($!)
wait_up 8102
wrk -t1 -c16 -d20s -s deploy/bench/callbacks.lua http://127.0.0.1:8101 >"$WORK/a.txt" &
wrk -t1 -c16 -d20s -s deploy/bench/callbacks.lua http://127.0.0.1:8102 >"$WORK/b.txt"
wait %% 2>/dev/null || sleep 1
grep -h -E "Requests/sec|Non-2xx|Latency" "$WORK/a.txt" "$WORK/b.txt"

echo "== latency: callback to receiver 8101, handler in a separate 'receiver worker'"
psql -q "$SERVER/$DB" -c "UPDATE deliveries SET state = 'done' WHERE state = 'pending'"
.venv/bin/receiver worker 2>>"$WORK/worker.log" & pids+=($!)
sleep 2
.venv/bin/python deploy/bench/latency.py http://127.0.0.1:8101 300
