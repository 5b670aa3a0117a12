#!/usr/bin/env bash
# The container proof: builds the image from the host's release binary,
# makes certificates, starts the 3-broker compose cluster (TLS on every
# listener, mutual TLS between brokers, ACLs enforced), gets the first
# admin token the documented way (sluice token issue --bootstrap), and
# runs an application container (`sluice bench soak`: an idempotent
# acks=ALL producer and a consumer-group member, over TLS with the token)
# through the whole test while brokers are
#   1. stopped hard (SIGKILL), left down, started again;
#   2. restarted one at a time (SIGTERM, start, back in every ISR).
# At the end every acknowledged record must have been consumed exactly
# once with no error surfaced to the application. Prints each broker's
# time to become ready again, and the application's report.
#
#   deploy/proof.sh                 (as root; podman, runc, podman-compose)
#
# Skips with the reason printed where podman, podman-compose or root is
# missing. Settings: SLUICE_PROOF_RATE (records/s, default 500),
# SLUICE_PROOF_WARMUP / SLUICE_PROOF_DOWN (seconds, default 15 / 5),
# SLUICE_BINARY (default: target/release/sluice, built first),
# SLUICE_PROOF_REPORT (a file for the JSON summary), SLUICE_PROOF_LOGS (a
# directory for every container's log, default target/proof-logs),
# SLUICE_PROOF_KEEP=1 (leave the cluster running afterwards, for inspection).
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  echo "deploy/proof.sh: SKIPPED: $*"
  exit 0
}
log() { echo "proof: $*" >&2; }

command -v podman >/dev/null || skip "podman is not installed (apt-get install podman runc podman-compose debootstrap)"
command -v podman-compose >/dev/null || skip "podman-compose is not installed (apt-get install podman-compose)"
[ "$(id -u)" = 0 ] || skip "run as root (rootless podman is not set up here)"

# crun refuses some hosts' cgroup setups; runc works wherever podman does.
if [ -z "${CONTAINERS_CONF:-}" ] && command -v runc >/dev/null; then
  CONTAINERS_CONF=$(mktemp)
  printf '[engine]\nruntime = "runc"\n' >"$CONTAINERS_CONF"
  export CONTAINERS_CONF
fi
# Container limits at or below this shell's own (raising them is refused
# in some sandboxes).
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=65536
nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] && nproc=4096
export SLUICE_NOFILE=$((nofile < 65536 ? nofile : 65536))
export SLUICE_NPROC=$((nproc < 4096 ? nproc : 4096))

# The base image: no registry may be reachable, so make it from Debian's
# packages when it is missing.
base=docker.io/library/debian:bookworm-slim
if ! podman image exists "$base"; then
  command -v debootstrap >/dev/null || skip "no $base image and no debootstrap to make one"
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d)
  log "making $base from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null ||
    skip "debootstrap could not make $base from $mirror"
  tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$rootfs"
fi
# A machine where podman cannot run any container at all (no cgroups, no
# namespaces for this user) cannot run the proof either.
podman run --rm --ulimit "nofile=$SLUICE_NOFILE:$SLUICE_NOFILE" --ulimit "nproc=$SLUICE_NPROC:$SLUICE_NPROC" \
  "$base" true >/dev/null 2>&1 || skip "podman cannot run a container here (podman run $base true failed)"

if [ -n "${SLUICE_BINARY:-}" ]; then
  binary=$SLUICE_BINARY
else
  log "building the release binary"
  cargo build --release --bin sluice
  binary=target/release/sluice
fi
image=localhost/sluice:proof
ctx=$(mktemp -d)
cp "$binary" "$ctx/sluice"
if command -v strip >/dev/null; then strip --strip-debug "$ctx/sluice"; fi
podman build --quiet --format docker -f deploy/Dockerfile.prebuilt -t "$image" "$ctx" >/dev/null
rm -rf "$ctx"
log "image $image built"

# Free host ports for the three brokers (API and metrics).
read -r -a ports <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
export SLUICE_IMAGE=$image SLUICE_BIND=127.0.0.1
export SLUICE_1_PORT=${ports[0]} SLUICE_1_METRICS_PORT=${ports[1]}
export SLUICE_2_PORT=${ports[2]} SLUICE_2_METRICS_PORT=${ports[3]}
export SLUICE_3_PORT=${ports[4]} SLUICE_3_METRICS_PORT=${ports[5]}
metrics_port() { local v="SLUICE_$1_METRICS_PORT"; echo "${!v}"; }
api_port() { local v="SLUICE_$1_PORT"; echo "${!v}"; }

# Certificates for the cluster (deploy/make-certs.sh), readable by the
# containers' user.
tls=$(mktemp -d)
SLUICE_BINARY=$binary deploy/make-certs.sh "$tls" >/dev/null
chmod 0644 "$tls"/*.key
export SLUICE_TLS_DIR=$tls
# The host's CLI: TLS to the published ports (the certificates name
# 127.0.0.1), with the admin token once there is one.
export SLUICE_TLS_CA=$tls/ca.crt

project=sluice-proof
compose=(podman-compose -p "$project" -f deploy/compose.yaml)
container() { echo "${project}_sluice-$1_1"; }
client=${project}-client

logs=${SLUICE_PROOF_LOGS:-target/proof-logs}
# Keeps every container's log; after a failure also prints their tails, so
# a CI transcript (where the files are gone) shows the cause.
save_logs() {
  local status=$1 f
  mkdir -p "$logs"
  for i in 1 2 3; do podman logs --timestamps "$(container "$i")" >"$logs/broker-$i.log" 2>&1 || true; done
  podman logs --timestamps "$client" >"$logs/client.log" 2>&1 || true
  if [ "$status" -ne 0 ]; then
    for f in "$logs"/broker-1.log "$logs"/broker-2.log "$logs"/broker-3.log "$logs"/client.log; do
      echo "proof: last lines of $f" >&2
      tail -n 25 "$f" >&2 || true
    done
  fi
  echo "proof: container logs in $logs" >&2
}
cleanup() {
  podman rm -f "$client" >/dev/null 2>&1 || true
  "${compose[@]}" down >/dev/null 2>&1 || true
  for i in 1 2 3; do podman volume rm -f "${project}_sluice-$i-data" >/dev/null 2>&1 || true; done
  podman network rm -f "${project}_default" >/dev/null 2>&1 || true
}
remove_certs() { rm -rf "$tls"; }
if [ -n "${SLUICE_PROOF_KEEP:-}" ]; then
  trap 'save_logs $?; echo "proof: kept the cluster (project $project) for inspection" >&2' EXIT
else
  trap 'save_logs $?; cleanup; remove_certs' EXIT
fi
cleanup

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

# Starts broker $1's container and waits until it answers /readyz (its
# metadata caught up and this process registered); prints the seconds from
# the start command.
start_and_wait_ready() {
  local start deadline
  start=$(now)
  podman start "$(container "$1")" >/dev/null 2>&1
  deadline=$((SECONDS + 120))
  until "$binary" health --metrics "127.0.0.1:$(metrics_port "$1")" --timeout-ms 500 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      podman logs --tail 30 "$(container "$1")" >&2 || true
      echo "proof: broker $1 not ready after 120 s" >&2
      return 1
    fi
    sleep 0.1
  done
  since "$start"
}

# Waits until every partition of topic $1 has a leader and, on every
# broker, no partition it leads (internal topics included) lacks an
# in-sync replica: what an operator checks before restarting the next one.
wait_in_sync() {
  local deadline=$((SECONDS + 120))
  until "$binary" topic describe "$1" --json --broker "http://127.0.0.1:$(api_port 1),http://127.0.0.1:$(api_port 2),http://127.0.0.1:$(api_port 3)" 2>/dev/null |
    python3 -c '
import json, sys, urllib.request
t = json.load(sys.stdin)
if not all(sorted(p["isr"]) == sorted(p["replicas"]) and p["leader"] >= 0 for p in t["partitions"]):
    sys.exit(1)
for port in sys.argv[1:]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    for line in body.splitlines():
        if line.startswith("sluice_partitions_under_replicated ") and float(line.split()[1]) > 0:
            sys.exit(1)' "$(metrics_port 1)" "$(metrics_port 2)" "$(metrics_port 3)"; do
    if [ $SECONDS -ge $deadline ]; then
      echo "proof: topic $1 not back in sync after 120 s" >&2
      return 1
    fi
    sleep 0.2
  done
}

log "starting the compose cluster"
start=$(now)
"${compose[@]}" up -d >/dev/null 2>&1
# SECONDS counts from the script's start, which includes the build: the
# deadline is taken here.
deadline=$((SECONDS + 120))
for i in 1 2 3; do
  until "$binary" health --metrics "127.0.0.1:$(metrics_port "$i")" --timeout-ms 500 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "proof: broker $i not ready 120 s after compose up" >&2; exit 1; }
    sleep 0.1
  done
done
log "cluster ready $(since "$start") s after compose up"

# The first admin token: left in broker 1's data directory, imported within
# seconds, printed once.
SLUICE_TOKEN=$(podman exec "$(container 1)" sluice token issue --bootstrap \
  --data-dir /var/lib/sluice --principal User:admin 2>/dev/null)
export SLUICE_TOKEN
deadline=$((SECONDS + 60))
until "$binary" whoami --broker "http://127.0.0.1:$(api_port 1)" >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { echo "proof: the bootstrap token was not imported within 60 s" >&2; exit 1; }
  sleep 0.2
done
log "admin token imported; $("$binary" whoami --broker "http://127.0.0.1:$(api_port 1)")"
# Refused without it: authorization is on.
if SLUICE_TOKEN= "$binary" topic list --broker "http://127.0.0.1:$(api_port 1)" >/dev/null 2>&1; then
  echo "proof: a call without a token was answered" >&2
  exit 1
fi

topic=proof
podman exec -e SLUICE_TOKEN="$SLUICE_TOKEN" "$(container 1)" sluice topic create "$topic" --partitions 6 --replication-factor 3 >&2
wait_in_sync "$topic"

rate=${SLUICE_PROOF_RATE:-500}
podman run -d --name "$client" --network "${project}_default" \
  --ulimit "nofile=$SLUICE_NOFILE:$SLUICE_NOFILE" --ulimit "nproc=$SLUICE_NPROC:$SLUICE_NPROC" \
  -e SLUICE_BROKER=http://sluice-1:9400,http://sluice-2:9400,http://sluice-3:9400 \
  -e SLUICE_TOKEN="$SLUICE_TOKEN" -e SLUICE_TLS_CA=/etc/sluice-tls/ca.crt \
  -v "$tls:/etc/sluice-tls:ro" \
  -e RUST_LOG=warn,sluice::client=debug \
  "$image" bench soak "$topic" --group proof --rate "$rate" --drain-timeout 60 >/dev/null
log "application running: $rate records/s, acks=ALL, idempotent, one group member"
sleep "${SLUICE_PROOF_WARMUP:-15}"

declare -A kill_ready roll_stop roll_ready
# 1. A hard stop.
victim=2
log "SIGKILL broker $victim"
podman kill --signal KILL "$(container $victim)" >/dev/null
sleep "${SLUICE_PROOF_DOWN:-5}"
kill_ready[$victim]=$(start_and_wait_ready $victim)
log "broker $victim ready ${kill_ready[$victim]} s after its start"
wait_in_sync "$topic"
log "every partition back in sync"
sleep 5

# 2. A rolling restart, one broker at a time.
for i in 1 2 3; do
  start=$(now)
  podman stop -t 60 "$(container "$i")" >/dev/null
  roll_stop[$i]=$(since "$start")
  roll_ready[$i]=$(start_and_wait_ready "$i")
  wait_in_sync "$topic"
  log "broker $i: stopped in ${roll_stop[$i]} s, ready ${roll_ready[$i]} s after its start, back in sync"
done
sleep 10

log "stopping the application"
podman kill --signal TERM "$client" >/dev/null
status=$(podman wait "$client")
report=$(podman logs "$client" 2>/dev/null | grep '^{' | tail -n1)
if [ -z "$report" ]; then
  podman logs --tail 30 "$client" >&2 || true
  echo "proof: the application printed no report" >&2
  exit 1
fi

summary=$(python3 - "$report" "$status" "${kill_ready[$victim]}" "$victim" \
  "${roll_stop[1]}" "${roll_ready[1]}" "${roll_stop[2]}" "${roll_ready[2]}" "${roll_stop[3]}" "${roll_ready[3]}" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
a = sys.argv[2:]
out = {
    "application": r,
    "application_exit_status": int(a[0]),
    "sigkill": {"broker": int(a[2]), "ready_after_start_s": float(a[1])},
    "rolling": [
        {"broker": i + 1, "stop_s": float(a[3 + 2 * i]), "ready_after_start_s": float(a[4 + 2 * i])}
        for i in range(3)
    ],
}
print(json.dumps(out, indent=2))
EOF
)
echo "$summary"
if [ -n "${SLUICE_PROOF_REPORT:-}" ]; then echo "$summary" >"$SLUICE_PROOF_REPORT"; fi
if [ "$status" != 0 ] || ! python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["ok"] else 1)' "$report"; then
  echo "proof: FAILED: the application's checks did not pass" >&2
  exit 1
fi
echo "proof: passed"
