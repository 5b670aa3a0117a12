#!/usr/bin/env bash
# Makes the certificates deploy/compose.yaml mounts: a private CA and one
# certificate per broker (server and client use: the client listeners and
# mutual TLS between brokers), valid for sluice-N, localhost and 127.0.0.1,
# plus a client certificate for User:admin. Keys are made readable by the
# container user (uid 10001) only where this runs as root; otherwise by
# everyone who can read DIR (keep DIR private).
#
#   deploy/make-certs.sh [DIR]        (default deploy/tls; SLUICE_BINARY: the sluice binary)
set -euo pipefail
dir=${1:-deploy/tls}
sluice=${SLUICE_BINARY:-sluice}
mkdir -p "$dir"
"$sluice" cert create-ca --dir "$dir" --name "Sluice compose CA" >/dev/null
for i in 1 2 3; do
  "$sluice" cert create --dir "$dir" --name "sluice-$i" --host "sluice-$i" --host localhost --host 127.0.0.1 >/dev/null
done
"$sluice" cert create --dir "$dir" --name admin >/dev/null
if [ "$(id -u)" = 0 ]; then
  chown 10001:10001 "$dir"/sluice-*.key
  chmod 0400 "$dir"/sluice-*.key
else
  chmod 0644 "$dir"/sluice-*.key
fi
chmod 0755 "$dir"
echo "$dir: ca.crt, sluice-{1,2,3}.crt/.key, admin.crt/.key"
