#!/usr/bin/env bash
# Latency while the broker does heavy disk work, and recovery time: the
# figures README gives for the durability work. Needs a release build and,
# to drop the page cache, root. Uses 127.0.0.1:9500 and about 14 GB of disk
# under ${SLUICE_BENCH_DIR:-/tmp/sluice-durability}.
#
#   cargo build --release && bash benches/durability.sh [latency|recovery]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SLUICE_BIN:-target/release/sluice}
DIR=${SLUICE_BENCH_DIR:-/tmp/sluice-durability}
ADDR=127.0.0.1:9500
export SLUICE_BROKER=http://$ADDR
PID=

serve() {
  "$BIN" serve --data-dir "$DIR" --listen "$ADDR" --metrics-listen off 2>>"$DIR.log" &
  PID=$!
  for _ in $(seq 100); do
    "$BIN" topic list >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "server did not start" >&2
  exit 1
}
kill9() { kill -9 "$PID"; wait "$PID" 2>/dev/null || true; }
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; }
drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; else echo "(not root: page cache kept)"; fi
}

# Heartbeat p99 (100 one-member groups) and single-record produce p99
# (1,000/s, acks=LEADER) for 20 s, while "$@" runs after 3 s.
latency_while() {
  "$BIN" bench heartbeats --topic hb --groups 100 --seconds 20 --connections 2 >"$DIR.hb" &
  local hb=$!
  "$BIN" bench produce lat --records 25000 --record-size 100 --batch 1 --concurrency 1 \
    --in-flight 1 --rate 1000 --partitions 1 >"$DIR.lat" &
  local lat=$!
  sleep 3
  if [ $# -gt 0 ]; then
    local t0=$(date +%s.%N)
    "$@" >/dev/null
    echo "  background work took $(echo "$(date +%s.%N) - $t0" | bc) s"
  fi
  wait "$hb" "$lat"
  echo "  heartbeats: $(grep -i p99 "$DIR.hb" | head -1)"
  echo "  produce:    $(grep -i p99 "$DIR.lat" | head -1)"
}

latency() {
  rm -rf "$DIR" "$DIR.log"
  serve
  "$BIN" topic create big --partitions 1 >/dev/null
  "$BIN" topic create cold --partitions 2 >/dev/null
  echo "writing 1 GiB to big/0 and 2 GB to cold..."
  "$BIN" bench produce big --records 1000000 --record-size 1000 --batch 1000 --concurrency 1 --partitions 1 >/dev/null
  "$BIN" bench produce cold --records 2000000 --record-size 1000 --batch 1000 --concurrency 2 --partitions 2 >/dev/null
  kill9
  serve
  echo "baseline (idle broker):"
  latency_while
  drop_caches
  echo "while big/0 recovers its 1 GiB unclean tail (cold page cache):"
  latency_while "$BIN" consume big --offset 0 --max-records 1 --timeout-ms 1
  drop_caches
  echo "while a consumer reads 2 GB of cold data:"
  latency_while "$BIN" bench consume cold --records 2000000 --concurrency 2
  echo "control: the same 2 GB again, now in the page cache (CPU contention only):"
  latency_while "$BIN" bench consume cold --records 2000000 --concurrency 2
  stop
}

recovery() {
  rm -rf "$DIR" "$DIR.log"
  serve
  echo "writing 10 MiB to each of 1,000 partitions..."
  "$BIN" bench produce wide --records 10240000 --record-size 1000 --batch 1000 --concurrency 1000 \
    --partitions 1000 >/dev/null
  kill9
  timed_start unclean
  stop
  timed_start clean
  stop
}

# Time from start to serving, then until every partition of "wide" is open
# (recovered, after an unclean stop), with a cold page cache.
timed_start() {
  drop_caches
  local t0=$(date +%s.%N)
  serve
  echo "$1: start to serving $(echo "$(date +%s.%N) - $t0" | bc) s"
  t0=$(date +%s.%N)
  "$BIN" topic describe wide >/dev/null
  echo "$1: every partition opened $(echo "$(date +%s.%N) - $t0" | bc) s"
}

case "${1:-latency}" in
  latency) latency ;;
  recovery) recovery ;;
  *) echo "usage: $0 [latency|recovery]" >&2; exit 2 ;;
esac
