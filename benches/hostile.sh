#!/usr/bin/env bash
# Well-behaved latency beside hostile connections, and load held: the
# figures README gives under "Hostile clients". Needs a release build;
# uses 127.0.0.1:9600 and a scratch directory under
# ${SLUICE_BENCH_DIR:-/tmp/sluice-hostile}.
#
#   cargo build --release && bash benches/hostile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SLUICE_BIN:-target/release/sluice}
DIR=${SLUICE_BENCH_DIR:-/tmp/sluice-hostile}
ADDR=127.0.0.1:9600
SECONDS_EACH=${SECONDS_EACH:-20}
rm -rf "$DIR" && mkdir -p "$DIR"
# The bench itself holds thousands of connections.
ulimit -n "$(ulimit -Hn)"

"$BIN" serve --data-dir "$DIR/data" --listen "$ADDR" --metrics-listen off 2>"$DIR/server.log" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$BIN" topic list --broker "http://$ADDR" >/dev/null 2>&1 && break
  sleep 0.1
done

run() {
  "$BIN" bench hostile --broker "http://$ADDR" --seconds "$SECONDS_EACH" --server-pid "$PID" "$@"
}
# 4 producers (one record per request) and 4 fetchers measure; 0, 100 and
# 1,000 hostile connections run beside them.
for n in 0 100 1000; do run --hostile "$n"; done
# Load held: 5,000 idle connections and 500 active ones.
run --hostile 0 --idle 5000 --active 500
