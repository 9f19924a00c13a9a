#!/usr/bin/env bash
# TLS against plaintext, ringmq and Mosquitto side by side, in one run:
#
#   bench/tls.sh [REPS]        (after cargo build --release --bin ringmq)
#
# Each broker runs alone on CPU 0 (ringmq with one shard), the clients on
# CPU 1, over loopback, a fresh broker per measurement. Three figures:
#
# - handshakes: `openssl s_time -new` for 10 s (a full handshake per
#   connection, TLS 1.3, X25519, an ECDSA P-256 certificate): connections
#   per second, and the broker's CPU per handshake (utime + stime from
#   /proc/PID/stat, before and after);
# - messages: `mosquitto_pub --repeat MESSAGES` sends a 64-byte message
#   that many times at QoS 1 (one in flight at a time) to a
#   `mosquitto_sub -C MESSAGES` at QoS 1, over TLS or plain TCP; the
#   broker's CPU per message delivered. (Not `mosquitto_pub -l`: it drops
#   what is still queued when stdin ends, with either broker.)
# - idle connections: bench/tls_idle.py opens IDLE connections (TLS or
#   TCP), then the broker's VmRSS per connection.
#
# Prints one line per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${1:-3}
MESSAGES=${MESSAGES:-50000}
IDLE=${IDLE:-1000}
RINGMQ=target/release/ringmq
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT

# A CA and a server certificate for localhost and 127.0.0.1, as the
# README's TLS section makes them.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$DIR/ca.key" -out "$DIR/ca.pem" -days 30 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$DIR/server.key" -out "$DIR/server.csr" -subj "/CN=localhost" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" >"$DIR/ext"
openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
    -CAcreateserial -days 30 -extfile "$DIR/ext" -out "$DIR/server.pem" 2>/dev/null

# `user root`: the key in the temporary directory is root's alone.
cat >"$DIR/mosquitto.conf" <<EOF
user root
per_listener_settings false
allow_anonymous true
max_connections -1
max_inflight_messages 100
max_queued_messages 100000
listener 18861 127.0.0.1
listener 18862 127.0.0.1
certfile $DIR/server.pem
keyfile $DIR/server.key
EOF

# Broker CPU in clock ticks (utime + stime).
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# Starts broker $1 (ringmq or mosquitto); sets PID, TCP and TLS ports.
start() {
    case $1 in
    ringmq)
        taskset -c 0 "$RINGMQ" --cores 1 --listen 127.0.0.1:18851 \
            --tls-listen 127.0.0.1:18852 --tls-cert "$DIR/server.pem" \
            --tls-key "$DIR/server.key" --max-queued-messages 100000 \
            --log-level warn 2>>"$DIR/ringmq.log" &
        PID=$! TCP=18851 TLS=18852
        ;;
    mosquitto)
        taskset -c 0 mosquitto -c "$DIR/mosquitto.conf" 2>>"$DIR/mosquitto.log" &
        PID=$! TCP=18861 TLS=18862
        ;;
    esac
    sleep 1
}

stop() {
    kill "$PID"
    wait "$PID" 2>/dev/null || true
}

handshakes() {
    start "$1"
    local before after out start_ns end_ns
    before=$(ticks "$PID")
    start_ns=$(date +%s%N)
    out=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$TLS" -new -time 10 \
        -CAfile "$DIR/ca.pem" 2>/dev/null | grep 'connections in .* real seconds')
    end_ns=$(date +%s%N)
    after=$(ticks "$PID")
    stop
    local n real
    n=$(echo "$out" | awk '{ print $1 }')
    real=$(awk "BEGIN { printf \"%.2f\", ($end_ns - $start_ns) / 1e9 }")
    echo "$1 handshakes: $n in ${real} s = $(awk "BEGIN { printf \"%.0f\", $n / $real }")/s;" \
        "broker CPU $(awk "BEGIN { printf \"%.0f\", ($after - $before) / $hz * 1e6 / $n }") us per handshake"
}

messages() {
    local broker=$1 transport=$2
    start "$broker"
    local port=$TCP tls=()
    if [ "$transport" = tls ]; then
        port=$TLS tls=(--cafile "$DIR/ca.pem")
    fi
    taskset -c 1 mosquitto_sub -h localhost -p "$port" "${tls[@]}" -q 1 -t bench/tls \
        -C "$MESSAGES" -W 300 >/dev/null &
    local sub=$!
    sleep 1
    local before after start_ns end_ns
    before=$(ticks "$PID")
    start_ns=$(date +%s%N)
    taskset -c 1 mosquitto_pub -h localhost -p "$port" "${tls[@]}" -q 1 -t bench/tls \
        -m "$(printf '%064d' 0)" --repeat "$MESSAGES"
    wait "$sub"
    end_ns=$(date +%s%N)
    after=$(ticks "$PID")
    stop
    echo "$broker $transport messages: $MESSAGES QoS 1 in" \
        "$(awk "BEGIN { printf \"%.2f\", ($end_ns - $start_ns) / 1e9 }") s;" \
        "broker CPU $(awk "BEGIN { printf \"%.2f\", ($after - $before) / $hz * 1e6 / $MESSAGES }") us per message"
}

idle() {
    local broker=$1 transport=$2
    start "$broker"
    local port=$TCP ca=()
    if [ "$transport" = tls ]; then
        port=$TLS ca=("$DIR/ca.pem")
    fi
    echo "$broker $(taskset -c 1 python3 bench/tls_idle.py 127.0.0.1 "$port" "$IDLE" "$PID" "${ca[@]}")"
    stop
}

echo "bench/tls.sh at $(git rev-parse --short HEAD), $(date -u +%FT%TZ), reps $REPS"
for rep in $(seq "$REPS"); do
    for broker in ringmq mosquitto; do
        handshakes "$broker"
        for transport in tcp tls; do
            messages "$broker" "$transport"
        done
    done
done
for broker in ringmq mosquitto; do
    for transport in tcp tls; do
        idle "$broker" "$transport"
    done
done
