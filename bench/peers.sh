#!/usr/bin/env bash
# Runs the same scenarios against Mosquitto, rumqttd and ringmq on
# loopback and writes markdown tables to OUT.
#
#   bench/peers.sh [--quick] OUT.md
#   bench/peers.sh --from DIR OUT.md    (tables again from an earlier run's DIR)
#
# Each broker in turn is started pinned to CPU 0 (`taskset -c 0`), the load
# generator runs pinned to CPU 1 (`--cpus 1`), and the broker is stopped
# before the next one starts, so they never compete. Per broker, in order:
#   1. conn: idle connections (first, on a fresh broker, so its RSS before
#      is the broker's own baseline), from 127.0.0.2-5;
#   2. stresser: mqtt-stresser flows 500x100 and 100x1000 at QoS 0, 1, 2;
#   3. pubsub: pairs (100), fan-in (100 -> 1), fan-out (5 -> 1000), at QoS
#      0 and 1.
# FLASHMQ=/path/to/flashmq adds FlashMQ (one thread, pinned like the others)
# after rumqttd; MQTT_STRESSER=/path/to/mqtt-stresser adds, beside each
# stresser run, the same flow from the real inovex/mqtt-stresser (on CPU 1;
# its report parsed by bench/mqtt_stresser.py).
# Broker CPU time comes from /proc/PID/stat (`--broker-pid`) and is given
# per delivered message. `--quick` runs the same set at small sizes, to
# check the harness end to end in a couple of minutes.
#
# Installs what is missing: mosquitto (apt), rumqttd (cargo install into
# bench/.tools), and builds ringmq and ringmq-bench in release mode.
# The JSON of every run stays in a temporary directory, named at the end.
set -euo pipefail

QUICK=0
OUT=""
FROM=""
while (($#)); do
    arg=$1
    shift
    case "$arg" in
    --quick) QUICK=1 ;;
    --from)
        FROM="$(cd "${1:?--from needs a directory}" && pwd)"
        shift
        ;;
    -h | --help)
        sed -n '2,26p' "$0"
        exit 0
        ;;
    *) OUT="$arg" ;;
    esac
done

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_out "usage: bench/peers.sh [--quick | --from DIR] OUT.md"

TOOLS="$ROOT/bench/.tools"
RUMQTTD="$TOOLS/bin/rumqttd"
WORK="${FROM:-$(mktemp -d /tmp/ringmq-peers.XXXXXX)}"

log() { echo "peers: $*" >&2; }

if [[ -z "$FROM" ]]; then

# --- install -------------------------------------------------------------
ensure_mosquitto
if [[ ! -x "$RUMQTTD" ]]; then
    log "installing rumqttd into $TOOLS (a few minutes)"
    # Not --locked: rumqttd 0.20.0's lock file pins metrics 0.22.1, which
    # no longer compiles (E0521 in recorder/mod.rs) on current rustc; the
    # newest 0.22.x does. Default features are TLS and websockets, unused.
    cargo install --quiet --root "$TOOLS" --no-default-features rumqttd
fi
build_release

# --- sizes ---------------------------------------------------------------
if ((QUICK)); then
    STRESS=("50 20" "20 100")
    PAIRS=20 FANIN="20 1" FANOUT="2 50"
    DURATION=2s WARMUP=1s
    CONNS=1000 HOLD=2s
else
    STRESS=("500 100" "100 1000")
    PAIRS=100 FANIN="100 1" FANOUT="5 1000"
    DURATION=10s WARMUP=2s
    CONNS=10000 HOLD=5s
fi
SOURCES=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5

# --- brokers -------------------------------------------------------------
trap stop_broker EXIT

start_broker() {
    local name=$1 port=$2
    case "$name" in
    mosquitto)
        start_mosquitto "$WORK/mosquitto.conf" "$port" 2>"$WORK/$name.log"
        ;;
    rumqttd)
        sed "s/127.0.0.1:18862/127.0.0.1:$port/" "$ROOT/bench/peers/rumqttd.toml" >"$WORK/rumqttd.toml"
        taskset -c "$BROKER_CPU" "$RUMQTTD" --quiet --config "$WORK/rumqttd.toml" >"$WORK/$name.log" 2>&1 &
        PID=$!
        ;;
    flashmq)
        start_flashmq "$WORK/flashmq.conf" "$port" 1 >"$WORK/$name.log" 2>&1
        ;;
    ringmq)
        start_ringmq "$port" >"$WORK/$name.log" 2>&1
        ;;
    esac
    wait_port "$port"
    log "$name started (pid $PID, port $port)"
}

# Runs one ringmq-bench command; keeps its JSON as $WORK/<tag>.json.
# A run with errors exits 1: the JSON still says what happened.
run() {
    local tag=$1
    shift
    log "$tag: ringmq-bench $*"
    bench_json "$WORK/$tag" "$@" --cpus "$BENCH_CPU" --broker-pid "$PID" --json
}

port=18860
for broker in mosquitto rumqttd ${FLASHMQ:+flashmq} ringmq; do
    port=$((port + 1))
    start_broker "$broker" "$port"
    addr="127.0.0.1:$port"
    run "$broker.conn" conn --broker "$addr" --connections "$CONNS" \
        --source-addrs "$SOURCES" --hold "$HOLD"
    for size in "${STRESS[@]}"; do
        read -r clients messages <<<"$size"
        for qos in 0 1 2; do
            flow=(-broker "tcp://$addr" -num-clients "$clients" -num-messages "$messages"
                -publisher-qos "$qos" -subscriber-qos "$qos" -global-timeout 120s)
            run "$broker.stresser.${clients}x$messages.q$qos" stresser "${flow[@]}"
            if [[ -n "$MQTT_STRESSER" ]]; then
                log "$broker.mqtt-stresser.${clients}x$messages.q$qos: mqtt-stresser ${flow[*]}"
                mqtt_stresser_json "$WORK/$broker.mqtt-stresser.${clients}x$messages.q$qos" \
                    "$BENCH_CPU" "${flow[@]}"
            fi
        done
    done
    read -r fi_pub fi_sub <<<"$FANIN"
    read -r fo_pub fo_sub <<<"$FANOUT"
    for qos in 0 1; do
        common=(--broker "$addr" --qos "$qos" --duration "$DURATION" --warmup "$WARMUP")
        run "$broker.pubsub.pairs.q$qos" pubsub --layout pairs --publishers "$PAIRS" "${common[@]}"
        run "$broker.pubsub.fan-in.q$qos" pubsub --layout fan-in \
            --publishers "$fi_pub" --subscribers "$fi_sub" "${common[@]}"
        run "$broker.pubsub.fan-out.q$qos" pubsub --layout fan-out \
            --publishers "$fo_pub" --subscribers "$fo_sub" "${common[@]}"
    done
    stop_broker
done

# What ran, for the tables (and for --from later).
{
    echo "quick=$QUICK"
    echo "when=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "load=$(cut -d' ' -f1 /proc/loadavg)"
    echo "versions=$(mosquitto -h 2>&1 | head -n 1 || true), $(grep -o 'rumqttd [0-9.]*' "$TOOLS/.crates.toml" 2>/dev/null | head -n 1 || echo rumqttd), ringmq $(cd "$ROOT" && git rev-parse --short HEAD)$(peer_versions)"
} >"$WORK/run.txt"
fi

# --- tables --------------------------------------------------------------
python3 - "$WORK" "$OUT" <<'PY'
import json, os, platform, sys
work, out = sys.argv[1:]
run = dict(line.rstrip("\n").split("=", 1) for line in open(os.path.join(work, "run.txt")))

def load(tag):
    try:
        with open(os.path.join(work, tag + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def num(x, digits=0):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"

order = {"mosquitto": 0, "rumqttd": 1, "flashmq": 2, "ringmq": 3}
def key(tag):
    parts = tag.split(".")
    return (parts[1:], order.get(parts[0], 9))
tags = sorted((f[:-5] for f in os.listdir(work) if f.endswith(".json")), key=key)
lines = []
w = lines.append
w(f"## Peers side by side ({run['when']}{', quick sizes' if run['quick'] == '1' else ''})")
w("")
w(f"Brokers: {run['versions']}. Each pinned to CPU 0 (`taskset -c 0`, ringmq "
  "`--cores 1`), one at a time; load generator `ringmq-bench ... --cpus 1`, loopback. "
  f"Machine: {os.cpu_count()} CPUs, Linux {platform.release()}, load average "
  f"{float(run['load']):.1f} at the end of the run. Broker CPU is utime+stime from "
  "/proc/PID/stat: per delivered message it is the figure least moved by the load "
  "generator sharing the machine; msg/s depend on how the two cores are shared.")
w("")

w("### mqtt-stresser flow (`ringmq-bench stresser -num-clients N -num-messages M -publisher-qos Q -subscriber-qos Q`)")
w("")
w("| broker | N x M | QoS | completed | received / expected | publish msg/s per worker (median) | receive msg/s per worker (median) | aggregate msg/s | wall s | broker CPU µs / msg | errors |")
w("|---|---|---|---|---|---|---|---|---|---|---|")
for tag in tags:
    parts = tag.split(".")
    if parts[1] not in ("stresser", "mqtt-stresser"):
        continue
    r = load(tag)
    pub = (r.get("publishing") or {}).get("median")
    rec = (r.get("receiving") or {}).get("median")
    # The real mqtt-stresser's rows (MQTT_STRESSER) are marked as such.
    name = parts[0] + (" (mqtt-stresser)" if parts[1] == "mqtt-stresser" else "")
    w(f"| {name} | {parts[2]} | {r['publisher_qos']} | {r['completed']} / {r['clients']} | "
      f"{r['received']:,} / {r['expected']:,} | {num(pub)} | {num(rec)} | {num(r['aggregate_per_second'])} | "
      f"{r['wall_seconds']:.2f} | {num(r.get('broker_cpu_us_per_message'), 2)} | {r['errors']} |")
w("")

w("### Publish/subscribe layouts (`ringmq-bench pubsub --layout L --publishers P --subscribers S --qos Q`, 64-byte payload)")
w("")
w("| broker | layout | P -> S | QoS | delivered msg/s | broker CPU µs / msg | p50 ms | p99 ms | p99.9 ms | missing | written off | errors |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|")
for tag in tags:
    parts = tag.split(".")
    if parts[1] != "pubsub":
        continue
    r = load(tag)
    p = r["params"]
    lat = r["latency_us"]
    # No sample: nothing sent in the window arrived by the end.
    ms = lambda us: f"{us / 1000:,.1f}" if lat["samples"] else "n/a"
    w(f"| {parts[0]} | {p['layout']} | {p['publishers']} -> {p['subscribers']} | {p['qos']} | "
      f"{num(r['received_per_second'])} | {num(r.get('broker_cpu_us_per_message'), 2)} | "
      f"{ms(lat['p50'])} | {ms(lat['p99'])} | {ms(lat['p99_9'])} | {r['missing']:,} | "
      f"{r['written_off']:,} | {r['errors']} |")
w("")
w("Publishers run closed-loop (`--max-lag 500`), so latency is time in a bounded queue at "
  "saturation. *Written off*: deliveries publishers stopped waiting for after a 1 s stall "
  "(see bench/README.md); with many, the run was open loop and latency `n/a` means nothing "
  "sent in the window arrived before the end. *Missing* at QoS 1: messages the broker "
  "dropped (Mosquitto and ringmq drop QoS 1 messages past 1,000 queued per session).")
w("")

w("### Idle connections (`ringmq-bench conn --connections N --source-addrs 127.0.0.2,...,127.0.0.5`, keep-alive 60 s)")
w("")
w("| broker | connections | connected | connects/s | broker RSS before MiB | after MiB | bytes / connection | broker CPU s connecting | errors |")
w("|---|---|---|---|---|---|---|---|---|")
for tag in tags:
    parts = tag.split(".")
    if parts[1] != "conn":
        continue
    r = load(tag)
    mib = lambda k: "n/a" if k is None else f"{k / 1024:,.1f}"
    w(f"| {parts[0]} | {r['requested']:,} | {r['connected']:,} | {num(r['connects_per_second'])} | "
      f"{mib(r['broker_rss_before_kib'])} | {mib(r['broker_rss_after_kib'])} | "
      f"{num(r['broker_bytes_per_connection'])} | {num(r.get('broker_connect_cpu_seconds'), 2)} | {r['errors']} |")
w("")
failed = sorted(set(f[:-4] for f in os.listdir(work) if f.endswith(".log") and "." in f[:-4]) - set(tags))
if failed:
    w("Runs that could not start (see their logs): " + ", ".join(failed))
    w("")
with open(out, "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines))
PY
log "tables written to $OUT; raw JSON and logs in $WORK"
