#!/usr/bin/env bash
# Zero-downtime restart (upgrade) of the CDS service instances on this host, one at a time:
#   1. drain:    mark the instance `down` in nginx's upstream and reload nginx gracefully
#                (in-flight requests finish; no new request and no idle keep-alive reaches it)
#   2. restart:  systemctl restart cds-service@PORT (SIGTERM: gunicorn finishes in-flight requests)
#   3. ready:    wait until the instance's /readyz answers 200 (database reachable, schema usable)
#   4. undrain:  remove `down`, reload nginx; next instance
# Run the schema migration first (`cds-service migrate`) when the release has one.
# tests/cluster/test_failover.py::test_rolling_restart_of_one_instance_under_load performs these steps
# under load against the real nginx and gunicorn: 0 failed requests.
#
# Usage: deploy/rolling-restart.sh 8081 8082 ...
#        deploy/rolling-restart.sh --mark down|up HOST:PORT   only edit NGINX_SITE (no reload, no restart)
# Environment: NGINX_SITE (default /etc/nginx/conf.d/cds-service.conf), NGINX_PID (/run/nginx.pid),
#              INSTANCE_HOST (127.0.0.1),
#              READY_TIMEOUT seconds (60).
set -euo pipefail

NGINX_SITE=${NGINX_SITE:-/etc/nginx/conf.d/cds-service.conf}
NGINX_PID=${NGINX_PID:-/run/nginx.pid}
INSTANCE_HOST=${INSTANCE_HOST:-127.0.0.1}
READY_TIMEOUT=${READY_TIMEOUT:-60}

mark() {  # $1 = down|up, $2 = host:port: edit that upstream `server` line (idempotent)
    local state=$1 address=$2 pattern
    pattern="^\(\s*server ${address//./\\.} [^;]*\)"
    grep -q "${pattern};\$" "$NGINX_SITE" || { echo "no 'server $address ...;' line in $NGINX_SITE" >&2; exit 1; }
    sed -i "s/${pattern} down;\$/\1;/" "$NGINX_SITE"
    if [ "$state" = down ]; then
        sed -i "s/${pattern};\$/\1 down;/" "$NGINX_SITE"
    fi
}

set_down() {  # $1 = down|up, $2 = host:port: edit, check, reload nginx gracefully
    local old pid waited=0
    mark "$1" "$2"
    nginx -t -q
    old=$(pgrep -P "$(cat "$NGINX_PID")" || true)
    systemctl reload nginx
    # The old workers finish their in-flight requests, close their keep-alive connections and exit.
    for pid in $old; do
        while kill -0 "$pid" 2>/dev/null && [ $waited -lt 300 ]; do sleep 0.1; waited=$((waited + 1)); done
    done
}

if [ "${1:-}" = --mark ]; then
    [ $# -eq 3 ] && { [ "$2" = down ] || [ "$2" = up ]; } || { echo "usage: $0 --mark down|up HOST:PORT" >&2; exit 2; }
    mark "$2" "$3"
    exit 0
fi
[ $# -gt 0 ] || { echo "usage: $0 PORT [PORT ...]" >&2; exit 2; }

for port in "$@"; do
    address="$INSTANCE_HOST:$port"
    echo "== $address: drain"
    set_down down "$address"
    trap 'echo "aborted: $address is still marked down in $NGINX_SITE" >&2' ERR
    echo "== $address: restart"
    systemctl restart "cds-service@$port.service"
    echo -n "== $address: waiting for /readyz "
    deadline=$((SECONDS + READY_TIMEOUT))
    until curl -fsS -o /dev/null --max-time 2 "http://$address/readyz"; do
        if [ $SECONDS -ge $deadline ]; then
            echo; echo "$address not ready after ${READY_TIMEOUT}s: left drained; fix it, then rerun" >&2
            exit 1
        fi
        echo -n .; sleep 1
    done
    echo " ready"
    set_down up "$address"
    trap - ERR
    echo "== $address: back in rotation"
done
