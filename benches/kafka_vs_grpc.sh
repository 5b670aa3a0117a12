#!/usr/bin/env bash
# Produce and consume throughput of one broker through a real Kafka client
# (kcat, librdkafka inside) and through gRPC (`sluice bench`), in one run,
# with 100 B and 1 KiB records. Each path gets a topic of one partition and
# one client connection.
#
#   cargo build --release && benches/kafka_vs_grpc.sh [records]
#
# Needs kcat (apt-get install kcat) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
bin=${SLUICE_BINARY:-target/release/sluice}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v kcat >/dev/null || { echo "kcat is not installed (apt-get install kcat)" >&2; exit 1; }

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
kafka_port=$(free_port)
"$bin" serve --data-dir "$work/data" --listen "127.0.0.1:$grpc_port" --metrics-listen off \
  --kafka-listen "127.0.0.1:$kafka_port" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
broker="http://127.0.0.1:$grpc_port"
kafka="127.0.0.1:$kafka_port"
for _ in $(seq 100); do "$bin" topic list --broker "$broker" >/dev/null 2>&1 && break; sleep 0.1; done

now() { date +%s.%N; }
rate() { python3 -c "import sys; n,s,e=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print(f'{n/(e-s):,.0f}')" "$@"; }
mbps() { python3 -c "import sys; n,b,s,e=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]); print(f'{n*b/(e-s)/1e6:,.0f}')" "$@"; }

printf '| record size | path | produce records/s | produce MB/s | consume records/s | consume MB/s |\n|---|---|---|---|---|---|\n'
for size in 100 1024; do
  # gRPC: sluice bench (batches of 1,000, 4 requests in flight, one worker).
  g="grpc-$size"
  "$bin" topic create "$g" --partitions 1 --broker "$broker" >/dev/null
  out=$("$bin" bench produce "$g" --records "$records" --record-size "$size" --batch 1000 \
    --concurrency 1 --broker "$broker" 2>&1)
  gp=$(echo "$out" | python3 -c 'import re,sys; t=sys.stdin.read(); m=re.search(r"([\d,.]+) records/s", t); print(m.group(1) if m else "?")')
  out=$("$bin" bench consume "$g" --records "$records" --record-size "$size" --batch 1000 \
    --concurrency 1 --broker "$broker" 2>&1)
  gc=$(echo "$out" | python3 -c 'import re,sys; t=sys.stdin.read(); m=re.findall(r"([\d,.]+) records/s", t); print(m[-1] if m else "?")')
  to_mb() { python3 -c "import sys; print(f'{float(sys.argv[1].replace(\",\",\"\"))*int(sys.argv[2])/1e6:,.0f}')" "$1" "$size"; }
  echo "| $size B | gRPC (sluice bench) | $gp | $(to_mb "$gp") | $gc | $(to_mb "$gc") |"

  # Kafka: kcat producing lines of `size` bytes from a file, then reading
  # them all back (acks=1, no compression, librdkafka's batching).
  k="kafka-$size"
  "$bin" topic create "$k" --partitions 1 --broker "$broker" >/dev/null
  python3 -c "import sys; line=b'x'*(int(sys.argv[2])-1)+b'\n'; sys.stdout.buffer.write(line*int(sys.argv[1]))" \
    "$records" "$size" >"$work/lines"
  start=$(now)
  kcat -P -b "$kafka" -t "$k" -p 0 -X acks=1 -X linger.ms=5 -X batch.size=1000000 \
    -X queue.buffering.max.messages=2000000 -X queue.buffering.max.kbytes=2097151 -l "$work/lines"
  end=$(now)
  kp=$(rate "$records" "$start" "$end"); kpm=$(mbps "$records" "$size" "$start" "$end")
  start=$(now)
  got=$(kcat -C -b "$kafka" -t "$k" -p 0 -o beginning -e -q -X fetch.max.bytes=52428800 \
    -X fetch.message.max.bytes=4194304 -f '%o\n' | wc -l)
  end=$(now)
  [ "$got" = "$records" ] || echo "kcat read $got of $records" >&2
  kc=$(rate "$records" "$start" "$end"); kcm=$(mbps "$records" "$size" "$start" "$end")
  echo "| $size B | Kafka (kcat) | $kp | $kpm | $kc | $kcm |"
  rm -f "$work/lines"
done
