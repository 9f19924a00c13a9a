#!/usr/bin/env bash
# Idle connections at the open-file limit: ringmq and Mosquitto each hold
# N connections (default 19,980: the open-file limit here is 20,000 per
# process, and ringmq keeps 12 descriptors of its own),
# 3.1.1 and v5, with and without one subscription each, and the broker's
# memory per connection is printed beside the kernel's.
#
#   bench/conn_limit.sh [--connections N] [--reps R] [--mosquitto PATH]
#
# Per run: a fresh broker pinned to CPU 0 (ringmq `--cores 1`; Mosquitto
# with `max_connections -1`), then `bench/sub_idle.py` on CPU 1 (raw
# sockets: CONNECT, SUBACK checked, a second's pause; VmRSS and RssAnon of
# the broker, slab and TCP buffer pages of the kernel, before and after)
# and, for 3.1.1 without a subscription, `ringmq-bench conn` as well.
# Brokers alternate within a repeat. Lines go to stdout as they come.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log() { echo "conn_limit: $*" >&2; }

CONNECTIONS=19980
REPS=2
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
while (($#)); do
    case $1 in
        --connections) CONNECTIONS=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --mosquitto) MOSQUITTO=$2; shift 2 ;;
        *) echo "usage: bench/conn_limit.sh [--connections N] [--reps R] [--mosquitto PATH]" >&2; exit 2 ;;
    esac
done

PORT=18980
WORK=$(mktemp -d /tmp/ringmq-conn-limit.XXXXXX)
PID=""
trap 'if [[ -n "$PID" ]]; then kill -9 "$PID" 2>/dev/null || true; fi' EXIT
build_release

start() {
    local broker=$1
    PORT=$((PORT + 1))
    if [[ $broker == ringmq ]]; then
        taskset -c "$BROKER_CPU" "$RINGMQ" --listen "127.0.0.1:$PORT" --cores 1 \
            --max-connections $((CONNECTIONS + 100)) --log-level error >"$WORK/ringmq.$PORT.log" 2>&1 &
    else
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\n' "$PORT" \
            >"$WORK/mosquitto.$PORT.conf"
        taskset -c "$BROKER_CPU" "$MOSQUITTO" -c "$WORK/mosquitto.$PORT.conf" >"$WORK/mosquitto.$PORT.log" 2>&1 &
    fi
    PID=$!
    wait_port "$PORT"
}

stop() {
    kill -9 "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
    # Let the closed sockets leave the kernel's tables before the next run.
    sleep 2
}

echo "# $(date -u '+%F %H:%M UTC'), ringmq $(git -C "$ROOT" rev-parse --short HEAD), $("$MOSQUITTO" -h 2>/dev/null | head -1), load $(cut -d' ' -f1 /proc/loadavg)"
for rep in $(seq "$REPS"); do
    for broker in ringmq mosquitto; do
        for flags in "--no-subscribe" "--v5 --no-subscribe" "" "--v5"; do
            start "$broker"
            # shellcheck disable=SC2086 # flags are words on purpose
            echo "$broker rep $rep: $(taskset -c "$BENCH_CPU" python3 "$ROOT/bench/sub_idle.py" 127.0.0.1 "$PORT" \
                "$CONNECTIONS" "$PID" $flags)"
            stop
        done
        start "$broker"
        echo "$broker rep $rep: ringmq-bench conn: $("$BENCH" conn \
            --broker "127.0.0.1:$PORT" --connections "$CONNECTIONS" \
            --source-addrs 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5 --cpus "$BENCH_CPU" --broker-pid "$PID" \
            2>&1 | grep -i "per connection\|bytes" | tr '\n' ' ')"
        stop
    done
done
