#!/usr/bin/env bash
# What durable sessions cost: QoS 1 flows whose subscribers keep their
# sessions (clean_session=0, so a broker with a data dir stores them and
# their messages), on ringmq in memory, ringmq with a data dir at each
# durability, and Mosquitto with `persistence true`, in the same run.
#
#   bench/durability.sh [--reps N] [--duration D] [--only B1,B2] OUT.md
#
# Brokers: mem (no --data-dir), none, batch, always (--data-dir
# --durability X), mosquitto (persistence true, autosave_interval at its
# default of 1800 s: Mosquitto writes its database then and at shutdown,
# never per message, and never fsyncs a message before its PUBACK).
# Flows, QoS 1, subscribers persistent:
#   pairs-sat   pairs --pairs 100, closed loop (saturation)
#   pairs-500   pairs --pairs 100 --rate 500 (50,000 msg/s offered)
#   stresser    stresser -num-clients 100 -num-messages 1000, QoS 1
# Every run has a fresh broker and a fresh, empty data dir (under
# target/durability-data, on the checkout's disk: not tmpfs), so no session
# of one run outlives it. Broker pinned to CPU 0 (`--cores 1`), generator
# to CPU 1. Each cell is run --reps times (default 3), the brokers
# interleaved within each repeat; the table gives medians, with the range.
# Raw JSON and logs go to OUT.md's directory, under OUT-raw/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log() { echo "durability: $*" >&2; }

REPS=3
DURATION=5s
ONLY="mem,none,batch,always,mosquitto"
OUT=""
while (($#)); do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) OUT=$1; shift ;;
    esac
done
require_out "usage: bench/durability.sh [--reps N] [--duration D] [--only mem,none,batch,always,mosquitto] OUT.md"

PORT=18950
DATA="$ROOT/target/durability-data"
RAW="${OUT%.md}-raw"
mkdir -p "$RAW"
trap stop_broker EXIT

ensure_mosquitto
build_release

# start BROKER NAME: a fresh broker of kind BROKER, its data dir emptied.
start() {
    local broker=$1 name=$2
    rm -rf "$DATA"
    mkdir -p "$DATA"
    case $broker in
        mem) start_ringmq "$PORT" 2>"$RAW/$name.broker.log" ;;
        none | batch | always)
            start_ringmq "$PORT" --data-dir "$DATA" --durability "$broker" \
                2>"$RAW/$name.broker.log"
            ;;
        mosquitto)
            start_mosquitto "$DATA/mosquitto.conf" "$PORT" \
                "persistence true
persistence_location $DATA/" 2>"$RAW/$name.broker.log"
            ;;
    esac
    wait_port "$PORT"
}

FLOWS=(pairs-sat pairs-500 stresser)
flow_args() {
    local common=(--broker "127.0.0.1:$PORT" --pairs 100 --qos 1 --persistent-subscribers
        --duration "$DURATION" --warmup 1s --cpus "$BENCH_CPU" --broker-pid "$PID" --json)
    case $1 in
        pairs-sat) echo pairs "${common[@]}" ;;
        pairs-500) echo pairs "${common[@]}" --rate 500 ;;
        stresser)
            echo stresser -broker "tcp://127.0.0.1:$PORT" -num-clients 100 -num-messages 1000 \
                -publisher-qos 1 -subscriber-qos 1 -global-timeout 120s --persistent-subscribers \
                --cpus "$BENCH_CPU" --broker-pid "$PID" --json
            ;;
    esac
}

# summary JSON: one run's rate and CPU, for the progress log.
summary() {
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
rate = d.get("received_per_second") or d.get("aggregate_per_second")
print("%.0f msg/s, %s us/msg" % (rate, d.get("broker_cpu_us_per_message")))' "$1" 2>/dev/null || echo "no result"
}

START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
IFS=, read -ra BROKERS <<<"$ONLY"
for rep in $(seq "$REPS"); do
    for flow in "${FLOWS[@]}"; do
        for broker in "${BROKERS[@]}"; do
            name="$flow.$broker.$rep"
            start "$broker" "$name"
            # shellcheck disable=SC2046 # flow_args is a word list
            bench_json "$RAW/$name" $(flow_args "$flow")
            echo "$(cut -d' ' -f1-3 /proc/loadavg)" >"$RAW/$name.load"
            stop_broker
            log "$name: $(summary "$RAW/$name.json"), load $(cat "$RAW/$name.load")"
        done
    done
done
rm -rf "$DATA"
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$RAW" "$REPS" "$ONLY" "$START_LOAD" "$END_LOAD" "$(cd "$ROOT" && git rev-parse --short HEAD)" >"$OUT" <<'EOF'
import json, statistics, sys, os
raw, reps, only, start_load, end_load, commit = sys.argv[1:7]
reps = int(reps)
brokers = only.split(",")
flows = [("pairs-sat", "pairs 100 QoS 1, saturated"),
         ("pairs-500", "pairs 100 QoS 1, 500/s each (50,000 offered)"),
         ("stresser", "stresser 100x1000 QoS 1")]
label = {"mem": "ringmq in memory", "none": "ringmq --durability none",
         "batch": "ringmq --durability batch", "always": "ringmq --durability always",
         "mosquitto": "Mosquitto, persistence true *"}

def load(flow, broker, rep):
    path = f"{raw}/{flow}.{broker}.{rep}.json"
    try:
        d = json.load(open(path))
    except (OSError, ValueError):
        return None
    rate = d.get("received_per_second", d.get("aggregate_per_second"))
    p99 = d.get("latency_us", {}).get("p99")
    missing = d.get("missing", d.get("expected", 0) - d.get("received", 0))
    return dict(rate=rate, cpu=d.get("broker_cpu_us_per_message"), p99=p99,
                errors=d.get("errors", 0), missing=missing)

def med(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(values))}–{fmt(max(values))})"

rate_fmt = lambda v: f"{v:,.0f}"
cpu_fmt = lambda v: f"{v:.2f}"
ms_fmt = lambda v: f"{v / 1000:.2f}"
print(f"Durable sessions, `{commit}`, {reps} repeats; load average at start {start_load}, at end {end_load}.\n")
print("| flow | broker | delivered msg/s | broker CPU µs/msg | p99 ms | errors / missing |")
print("|---|---|---|---|---|---|")
for flow, title in flows:
    for broker in brokers:
        runs = [r for r in (load(flow, broker, i) for i in range(1, reps + 1)) if r]
        if not runs:
            print(f"| {title} | {label[broker]} | (no run) | | | |")
            continue
        p99 = med([r["p99"] for r in runs], ms_fmt) if flow != "stresser" else "n/a"
        bad = f"{sum(r['errors'] for r in runs)} / {sum(r['missing'] or 0 for r in runs)}"
        print(f"| {title} | {label[broker]} | {med([r['rate'] for r in runs], rate_fmt)} "
              f"| {med([r['cpu'] for r in runs], cpu_fmt)} | {p99} | {bad} |")
print()
print("Per repeat, against ringmq in memory in the same repeat (rate ratio; CPU ratio):\n")
print("| flow | broker | rate / in-memory | CPU / in-memory | rate / Mosquitto |")
print("|---|---|---|---|---|")
for flow, title in flows:
    for broker in brokers:
        if broker == "mem":
            continue
        ratios, cpus, vs_mosq = [], [], []
        for i in range(1, reps + 1):
            r, m, q = load(flow, broker, i), load(flow, "mem", i), load(flow, "mosquitto", i)
            if r and m and r["rate"] and m["rate"]:
                ratios.append(r["rate"] / m["rate"])
                if r["cpu"] and m["cpu"]:
                    cpus.append(r["cpu"] / m["cpu"])
            if r and q and r["rate"] and q["rate"]:
                vs_mosq.append(r["rate"] / q["rate"])
        f2 = lambda v: f"{v:.2f}"
        print(f"| {title} | {label[broker]} | {med(ratios, f2)} | {med(cpus, f2)} | {med(vs_mosq, f2)} |")
print()
print("\\* Mosquitto keeps messages in memory and writes its database every "
      "`autosave_interval` (default 1800 s) and at shutdown: it never writes, "
      "let alone fsyncs, a message before its PUBACK.")
EOF
log "tables written to $OUT"
cat "$OUT"
