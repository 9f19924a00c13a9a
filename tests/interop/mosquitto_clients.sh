#!/usr/bin/env bash
# Interoperability check of ringmq against the Mosquitto command-line
# clients (Debian package mosquitto-clients).
#
# Usage: mosquitto_clients.sh HOST PORT
#
# For MQTT 3.1.1 and 5.0: publish/subscribe at QoS 0/1/2, retained messages
# (set, read with the retain flag, clear), a will published on abnormal
# disconnect, and (5.0) properties passed through. Exits non-zero on the
# first failure.
set -euo pipefail

HOST=${1:?usage: mosquitto_clients.sh HOST PORT}
PORT=${2:?usage: mosquitto_clients.sh HOST PORT}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    echo "FAIL $*" >&2
    for f in "$WORK"/*.out; do
        [ -e "$f" ] && { echo "--- $f" >&2; cat "$f" >&2; }
    done
    exit 1
}

# Message lines are printed as: MSG|qos|retain|topic|payload
FORMAT='MSG|%q|%r|%t|%p'

# start_sub NAME VERSION COUNT ARGS... : runs mosquitto_sub in the background
# and returns once its SUBACK has arrived. Its pid goes in $SUB_PID.
start_sub() {
    local name=$1 version=$2 count=$3
    shift 3
    : >"$WORK/$name.out" # exists before the background job opens it
    # stdbuf: mosquitto_sub block-buffers stdout into a file, and the
    # SUBACK line must be visible as soon as it is printed.
    stdbuf -oL mosquitto_sub -h "$HOST" -p "$PORT" -V "$version" -d -C "$count" -W 30 \
        -F "$FORMAT" "$@" >"$WORK/$name.out" 2>&1 &
    SUB_PID=$!
    PIDS+=("$SUB_PID")
    for _ in $(seq 400); do
        grep -q 'SUBACK' "$WORK/$name.out" && return 0
        if ! kill -0 "$SUB_PID" 2>/dev/null; then
            # A subscriber with -C 1 that is sent a retained message with
            # its SUBACK can subscribe, receive and exit between the grep
            # above and this check: look once more before calling it failed.
            grep -q 'SUBACK' "$WORK/$name.out" && return 0
            fail "$name: mosquitto_sub exited before subscribing"
        fi
        sleep 0.05
    done
    fail "$name: no SUBACK within 20s"
}

# wait_sub NAME PID : waits for mosquitto_sub to exit after its -C count.
wait_sub() {
    wait "$2" || fail "$1: mosquitto_sub exited with status $? (missing messages?)"
}

messages() {
    grep '^MSG|' "$WORK/$1.out" | sort || true
}

pub() {
    mosquitto_pub -h "$HOST" -p "$PORT" "$@" || fail "mosquitto_pub $* exited with $?"
}

for V in mqttv311 mqttv5; do
    echo "== $V"

    # QoS 0/1/2 to a QoS 2 subscription and to a QoS 1 subscription.
    start_sub "qos2-$V" "$V" 3 -q 2 -t "interop/sh/$V/qos"
    sub2=$SUB_PID
    start_sub "qos1-$V" "$V" 3 -q 1 -t "interop/sh/$V/qos"
    sub1=$SUB_PID
    for q in 0 1 2; do
        pub -V "$V" -q "$q" -t "interop/sh/$V/qos" -m "m$q"
    done
    wait_sub "qos2-$V" "$sub2"
    wait_sub "qos1-$V" "$sub1"
    expected=$(printf 'MSG|0|0|interop/sh/%s/qos|m0\nMSG|1|0|interop/sh/%s/qos|m1\nMSG|2|0|interop/sh/%s/qos|m2\n' "$V" "$V" "$V")
    [ "$(messages "qos2-$V")" = "$expected" ] || fail "$V QoS 2 subscription got: $(messages "qos2-$V")"
    expected=$(printf 'MSG|0|0|interop/sh/%s/qos|m0\nMSG|1|0|interop/sh/%s/qos|m1\nMSG|1|0|interop/sh/%s/qos|m2\n' "$V" "$V" "$V")
    [ "$(messages "qos1-$V")" = "$expected" ] || fail "$V QoS 1 subscription got: $(messages "qos1-$V")"
    echo "ok   $V qos 0/1/2"

    # Retained: stored, delivered with the retain flag, cleared.
    pub -V "$V" -q 1 -r -t "interop/sh/$V/retained" -m "kept"
    start_sub "ret-$V" "$V" 1 -q 1 -t "interop/sh/$V/retained"
    wait_sub "ret-$V" "$SUB_PID"
    [ "$(messages "ret-$V")" = "MSG|1|1|interop/sh/$V/retained|kept" ] \
        || fail "$V retained got: $(messages "ret-$V")"
    pub -V "$V" -q 1 -r -n -t "interop/sh/$V/retained"
    mosquitto_sub -h "$HOST" -p "$PORT" -V "$V" -W 2 -F "$FORMAT" \
        -t "interop/sh/$V/retained" >"$WORK/ret-cleared-$V.out" 2>&1 || true
    [ -z "$(messages "ret-cleared-$V")" ] || fail "$V retained message not cleared: $(messages "ret-cleared-$V")"
    echo "ok   $V retained"

    # Will: a client killed without DISCONNECT has its will published.
    start_sub "will-$V" "$V" 1 -q 1 -t "interop/sh/$V/will"
    watcher=$SUB_PID
    start_sub "doomed-$V" "$V" 1 -t "interop/sh/$V/unused" \
        --will-topic "interop/sh/$V/will" --will-payload "gone" --will-qos 1
    kill -9 "$SUB_PID"
    { wait "$SUB_PID" || true; } 2>/dev/null
    wait_sub "will-$V" "$watcher"
    [ "$(messages "will-$V")" = "MSG|1|0|interop/sh/$V/will|gone" ] \
        || fail "$V will got: $(messages "will-$V")"
    echo "ok   $V will"
done

# MQTT 5 properties pass through unchanged.
start_sub props mqttv5 1 -q 1 -t interop/sh/props -F 'PROPS|%C|%R|%D|%P|%p'
pub -V mqttv5 -q 1 -t interop/sh/props -m 'body' \
    -D publish content-type text/plain \
    -D publish response-topic interop/sh/reply \
    -D publish correlation-data corr42 \
    -D publish user-property color blue
wait_sub props "$SUB_PID"
got=$(grep '^PROPS|' "$WORK/props.out" || true)
[ "$got" = "PROPS|text/plain|interop/sh/reply|corr42|color:blue|body" ] || fail "v5 properties got: $got"
echo "ok   mqttv5 properties"

echo "all mosquitto client checks passed"
