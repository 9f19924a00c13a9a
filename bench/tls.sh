#!/usr/bin/env bash
# TLS against plaintext, ringmq and Mosquitto side by side, in one run:
#
#   bench/tls.sh [REPS] [OUT.md]      (REPS default 3; builds the release
#                                      binaries first)
#   bench/tls.sh --from DIR [--from DIR2 ...] [OUT.md]
#                                     (no measurement: the table again from
#                                      earlier runs' directories, pooled)
#
# Each broker runs alone on CPU 0 (ringmq with one shard), the clients on
# CPU 1, over loopback, a fresh broker per measurement, with a plain TCP
# listener and a TLS one (TLS 1.3, X25519, an ECDSA P-256 certificate made
# here with openssl). Within each repeat every flow runs on ringmq and
# then Mosquitto, each over TCP and then over TLS, so the four variants of
# a flow are minutes apart at most. The flows, all with `ringmq-bench`
# (`--tls --tls-ca` for TLS: the broker's certificate is verified):
#
# - pairs-q0, pairs-q1: `pairs`, 100 pairs, QoS 0 and 1, at saturation
#   (closed loop: `--max-lag` 500, at QoS 1 `--inflight` 16);
# - pairs-q0-rate, pairs-q1-rate: the same at RATE msg/s per publisher
#   (default 100: 10,000 msg/s offered), for latency and CPU at a load
#   both brokers carry;
# - stresser-q0, stresser-q1: the mqtt-stresser flow, 100 clients x 1000
#   messages;
# - conn: CONNS (500) connections made, held 1 s: connects per second,
#   broker CPU per connect (TCP handshake, TLS handshake, CONNECT), and
#   broker memory per connection;
# - handshakes (TLS only): `openssl s_time -new` for 10 s, full TLS
#   handshakes with no MQTT, and the broker's CPU per handshake.
#
# Broker CPU is utime + stime from /proc/PID/stat (`--broker-pid`; for
# pairs over the measured window, for stresser over the whole test, for
# conn while connecting). DURATION and WARMUP (5s, 2s) set the pairs
# window. Prints a markdown table of medians (range in brackets) and of
# the ratios within each repeat, also to OUT.md if given; every run's JSON
# and exact command stay in a /tmp/ringmq-tls.* directory.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FROM=()
while [[ ${1:-} == --from ]]; do
    FROM+=("$2")
    shift 2
done
if ((${#FROM[@]})); then
    OUT=${1:-}
else
    REPS=${1:-3} OUT=${2:-}
fi
if [[ -n "$OUT" && "$OUT" != /* ]]; then
    OUT="$PWD/$OUT"
fi
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
RATE=${RATE:-100}
CONNS=${CONNS:-500}
log() { echo "tls: $*" >&2; }

# tables: the markdown table of the runs in the directories FROM (pooled
# when several), on stdout and in OUT if given.
tables() {
    PYTHONPATH="$ROOT/bench" python3 - "${OUT:-/dev/null}" "${FROM[@]}" <<'PY'
import glob, json, os, statistics, sys
from tables import median_range
out, works = sys.argv[1], sys.argv[2:]
infos = [dict(line.rstrip("\n").split("=", 1) for line in open(os.path.join(work, "run.txt")))
         for work in works]

# runs[(flow, broker, transport)][rep] = figures
runs = {}
for index, work in enumerate(works):
    for path in glob.glob(os.path.join(work, "*.json")):
        flow, broker, transport, rep = os.path.basename(path)[:-5].split(".")
        # Repeats of several directories pooled: run 2's repeat 1 is "2.1".
        rep = f"{index + 1}.{rep}" if len(works) > 1 else rep
        try:
            r = json.load(open(path))
        except ValueError:
            continue
        runs.setdefault((flow, broker, transport), {})[rep] = r

def lat(key):
    return lambda r: r["latency_us"][key] / 1000 if r["latency_us"]["samples"] else None
def per_connect(r):
    cpu = r.get("broker_connect_cpu_seconds")
    return cpu * 1e6 / r["connected"] if cpu is not None and r["connected"] else None

PAIRS = [("delivered msg/s", lambda r: r["received_per_second"], 0),
         ("broker CPU µs / msg", lambda r: r.get("broker_cpu_us_per_message"), 2),
         ("p50 ms", lat("p50"), 2), ("p99 ms", lat("p99"), 2),
         ("generator CPU s / s", lambda r: r["window"]["bench_cpu_seconds"] / r["window"]["seconds"], 2)]
STRESSER = [("msg/s (received / wall)", lambda r: r["aggregate_per_second"], 0),
            ("broker CPU µs / msg", lambda r: r.get("broker_cpu_us_per_message"), 2)]
FLOWS = [
    ("pairs-q0", "pairs, 100, QoS 0, saturation", PAIRS),
    ("pairs-q1", "pairs, 100, QoS 1, saturation", PAIRS),
    ("pairs-q0-rate", "pairs, 100, QoS 0, fixed rate", PAIRS),
    ("pairs-q1-rate", "pairs, 100, QoS 1, fixed rate", PAIRS),
    ("stresser-q0", "stresser 100 x 1000, QoS 0", STRESSER),
    ("stresser-q1", "stresser 100 x 1000, QoS 1", STRESSER),
    ("conn", "conn", [("connects / s", lambda r: r["connects_per_second"], 0),
                      ("broker CPU µs / connect", per_connect, 0),
                      ("broker bytes / connection", lambda r: r.get("broker_bytes_per_connection"), 0)]),
    ("handshakes", "`openssl s_time -new`, 10 s", [
        ("handshakes / s", lambda r: r["handshakes_per_second"], 0),
        ("broker CPU µs / handshake", lambda r: r["broker_cpu_us_per_handshake"], 0)]),
]

def values(flow, broker, transport, fn):
    return {rep: fn(r) for rep, r in runs.get((flow, broker, transport), {}).items()}

def fmt(xs, digits):
    return median_range(xs, digits, empty="–")

def ratio(a, b):
    """Median over the repeats of a / b within each repeat."""
    rs = [a[k] / b[k] for k in a if k in b and a[k] is not None and b.get(k)]
    return f"{statistics.median(rs):.2f}" if rs else "–"

lines = []
w = lines.append
for info in infos:
    w(f"bench/tls.sh at `{info['commit']}`, {info['when']}; {info['mosquitto']}; {info['openssl']}; "
      f"load average {info['load_start']} at the start, {info.get('load_end', '?')} at the end.")
w("")
w(f"{'Runs pooled. ' if len(infos) > 1 else ''}"
  "Medians over the repeats, range in brackets; ratios are medians of the ratios within each repeat.")
w("")
w("| flow | figure | ringmq TCP | ringmq TLS | TLS / TCP | Mosquitto TCP | Mosquitto TLS | TLS / TCP | ringmq / Mosquitto, TCP | ringmq / Mosquitto, TLS |")
w("|---|---|---|---|---|---|---|---|---|---|")
for flow, title, figures in FLOWS:
    for name, fn, digits in figures:
        v = {(b, t): values(flow, b, t, fn) for b in ("ringmq", "mosquitto") for t in ("tcp", "tls")}
        if not any(v.values()):
            continue
        w(f"| {title} | {name} | {fmt(v['ringmq', 'tcp'].values(), digits)} | {fmt(v['ringmq', 'tls'].values(), digits)} | "
          f"{ratio(v['ringmq', 'tls'], v['ringmq', 'tcp'])} | "
          f"{fmt(v['mosquitto', 'tcp'].values(), digits)} | {fmt(v['mosquitto', 'tls'].values(), digits)} | "
          f"{ratio(v['mosquitto', 'tls'], v['mosquitto', 'tcp'])} | "
          f"{ratio(v['ringmq', 'tcp'], v['mosquitto', 'tcp'])} | {ratio(v['ringmq', 'tls'], v['mosquitto', 'tls'])} |")
w("")
trouble = []
for (flow, broker, transport), reps in sorted(runs.items()):
    for rep, r in sorted(reps.items()):
        bad = {k: r.get(k) for k in ("errors", "missing", "failed") if r.get(k)}
        if bad:
            trouble.append(f"- {flow} {broker} {transport} repeat {rep}: {bad}")
w("\n".join(trouble) if trouble else "No run had errors, missing deliveries or failed connects.")
w("")
w("Commands (`PORT` the listener's; `--tls --tls-ca ca.pem` for TLS):")
w("")
for flow, _, _ in FLOWS:
    for path in sorted(glob.glob(os.path.join(works[0], f"{flow}.ringmq.tls.*.cmd")))[:1]:
        w(f"- {flow}: `{open(path).read().strip().replace(' --json', '')}`")
text = "\n".join(lines) + "\n"
sys.stdout.write(text)
open(out, "w").write(text)
PY
}

if ((${#FROM[@]})); then
    tables
    exit 0
fi

WORK=$(mktemp -d /tmp/ringmq-tls.XXXXXX)
RINGMQ_TCP=18851 RINGMQ_TLS=18852 MOSQUITTO_TCP=18861 MOSQUITTO_TLS=18862

ensure_mosquitto
build_release
trap stop_broker EXIT

# A CA and a server certificate for localhost and 127.0.0.1, as the
# README's TLS section makes them.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 30 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" -subj "/CN=localhost" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" >"$WORK/ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 30 -extfile "$WORK/ext" -out "$WORK/server.pem" 2>/dev/null

# start_broker BROKER TAG: a fresh broker with both listeners; sets PID
# (lib.sh), TCP and TLS (its ports).
start_broker() {
    local broker=$1 tag=$2
    case $broker in
    ringmq)
        start_ringmq "$RINGMQ_TCP" --tls-listen "127.0.0.1:$RINGMQ_TLS" \
            --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key" \
            --max-queued-messages 100000 >"$WORK/$tag.broker.log" 2>&1
        TCP=$RINGMQ_TCP TLS=$RINGMQ_TLS
        ;;
    mosquitto)
        # `user root`: the key in the work directory is root's alone.
        start_mosquitto "$WORK/mosquitto.conf" "$MOSQUITTO_TCP" "user root
max_inflight_messages 100
max_queued_messages 100000
listener $MOSQUITTO_TLS 127.0.0.1
certfile $WORK/server.pem
keyfile $WORK/server.key" 2>"$WORK/$tag.broker.log"
        TCP=$MOSQUITTO_TCP TLS=$MOSQUITTO_TLS
        ;;
    esac
    wait_port "$TCP"
    wait_port "$TLS"
}

# run FLOW BROKER TRANSPORT ringmq-bench-args...: one measurement on a
# fresh broker, its JSON in $WORK/FLOW.BROKER.TRANSPORT.REP.json and the
# exact command beside it (.cmd). `@ADDR@` in the arguments is the
# listener's address.
run() {
    local flow=$1 broker=$2 transport=$3
    shift 3
    local tag="$flow.$broker.$transport.$rep"
    # Let the previous broker's sockets leave TIME_WAIT behind them.
    sleep 1
    start_broker "$broker" "$tag"
    local port=$TCP tls=() args=() arg
    if [[ $transport == tls ]]; then
        port=$TLS tls=(--tls --tls-ca "$WORK/ca.pem")
    fi
    for arg in "$@"; do
        args+=("${arg//@ADDR@/127.0.0.1:$port}")
    done
    args+=("${tls[@]}" --cpus "$BENCH_CPU" --broker-pid "$PID" --json)
    echo "ringmq-bench ${args[*]}" | sed "s/--broker-pid $PID/--broker-pid PID/; s|$WORK/||g" \
        >"$WORK/$tag.cmd"
    log "$tag: ringmq-bench ${args[*]}"
    bench_json "$WORK/$tag" "${args[@]}"
    stop_broker
}

# handshakes BROKER: `openssl s_time -new` for 10 s against the TLS
# listener; handshakes per second and broker CPU per handshake as JSON.
handshakes() {
    local broker=$1 tag="handshakes.$1.tls.$rep"
    sleep 1
    start_broker "$broker" "$tag"
    local before after start_ns end_ns n
    before=$(cpu_ticks "$PID")
    start_ns=$(date +%s%N)
    n=$(taskset -c "$BENCH_CPU" openssl s_time -connect "127.0.0.1:$TLS" -new -time 10 \
        -CAfile "$WORK/ca.pem" 2>/dev/null | awk '/connections in .* real seconds/ { print $1 }')
    end_ns=$(date +%s%N)
    after=$(cpu_ticks "$PID")
    stop_broker
    echo "openssl s_time -connect 127.0.0.1:PORT -new -time 10 -CAfile ca.pem" >"$WORK/$tag.cmd"
    awk -v n="${n:-0}" -v ns=$((end_ns - start_ns)) -v ticks=$((after - before)) \
        -v hz="$(getconf CLK_TCK)" 'BEGIN {
            printf "{\"handshakes\": %d, \"handshakes_per_second\": %.1f, \"broker_cpu_us_per_handshake\": %s}\n",
                n, n / (ns / 1e9), (n > 0 ? sprintf("%.1f", ticks / hz * 1e6 / n) : "null") }' \
        >"$WORK/$tag.json"
    log "$tag: $(cat "$WORK/$tag.json")"
}

WINDOW=(--duration "$DURATION" --warmup "$WARMUP")
STRESSER=(stresser -broker "tcp://@ADDR@" -num-clients 100 -num-messages 1000 -global-timeout 120s)
{
    echo "commit=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo +changes)"
    echo "when=$(date -u +%FT%TZ)"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "mosquitto=$(mosquitto -h 2>/dev/null | head -n 1)"
    echo "openssl=$(openssl version)"
} >"$WORK/run.txt"
log "work directory $WORK"

for rep in $(seq "$REPS"); do
    for broker in ringmq mosquitto; do
        handshakes "$broker"
    done
    for flow in pairs-q0 pairs-q1 pairs-q0-rate pairs-q1-rate stresser-q0 stresser-q1 conn; do
        for broker in ringmq mosquitto; do
            for transport in tcp tls; do
                case $flow in
                pairs-q0) run "$flow" "$broker" "$transport" pairs --broker @ADDR@ --pairs 100 --qos 0 "${WINDOW[@]}" ;;
                pairs-q1) run "$flow" "$broker" "$transport" pairs --broker @ADDR@ --pairs 100 --qos 1 "${WINDOW[@]}" ;;
                pairs-q0-rate) run "$flow" "$broker" "$transport" pairs --broker @ADDR@ --pairs 100 --qos 0 --rate "$RATE" "${WINDOW[@]}" ;;
                pairs-q1-rate) run "$flow" "$broker" "$transport" pairs --broker @ADDR@ --pairs 100 --qos 1 --rate "$RATE" "${WINDOW[@]}" ;;
                stresser-q0) run "$flow" "$broker" "$transport" "${STRESSER[@]}" ;;
                stresser-q1) run "$flow" "$broker" "$transport" "${STRESSER[@]}" -publisher-qos 1 -subscriber-qos 1 ;;
                conn) run "$flow" "$broker" "$transport" conn --broker @ADDR@ --connections "$CONNS" --hold 1s ;;
                esac
            done
        done
    done
done
echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/run.txt"
FROM=("$WORK")
tables

log "raw JSON and logs in ${FROM[*]}"
