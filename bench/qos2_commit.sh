#!/usr/bin/env bash
# What output commit costs (src/shard/state/commit.rs): QoS 2 flows to
# stored sessions on two ringmq binaries, A and B (say, one without output
# commit and one with it), interleaved in the same run.
#
#   bench/qos2_commit.sh [--reps N] [--duration D] A_BINARY B_BINARY OUT.md
#
# Flows, QoS 2 publishers and persistent QoS 2 subscribers (so a broker
# with a data dir stores them), `pairs --pairs 100`:
#   sat    closed loop (saturation)
#   200    200 msg/s per publisher (20,000 offered)
# each with `--durability batch` and `always`, a fresh broker and an empty
# data dir (target/qos2-commit-data, on the checkout's disk) per run.
# Broker pinned to CPU 0 (`--cores 1`), generator to CPU 1. The table gives
# medians with their range, and B against A per repeat.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log() { echo "qos2-commit: $*" >&2; }

REPS=3
DURATION=5s
ARGS=()
while (($#)); do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
if ((${#ARGS[@]} != 3)); then
    echo "usage: bench/qos2_commit.sh [--reps N] [--duration D] A_BINARY B_BINARY OUT.md" >&2
    exit 2
fi
declare -A BINARY=([A]=${ARGS[0]} [B]=${ARGS[1]})
OUT=${ARGS[2]}
require_out "usage: bench/qos2_commit.sh [--reps N] [--duration D] A_BINARY B_BINARY OUT.md"

PORT=18955
DATA="$ROOT/target/qos2-commit-data"
RAW="${OUT%.md}-raw"
mkdir -p "$RAW"
trap stop_broker EXIT
(cd "$ROOT" && cargo build --quiet --release -p ringmq-bench)

START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$REPS"); do
    for durability in batch always; do
        for rate in sat 200; do
            for build in A B; do
                name="$durability.$rate.$build.$rep"
                rm -rf "$DATA" && mkdir -p "$DATA"
                RINGMQ=${BINARY[$build]} start_ringmq "$PORT" --data-dir "$DATA" \
                    --durability "$durability" 2>"$RAW/$name.broker.log"
                wait_port "$PORT"
                flow=(pairs --broker "127.0.0.1:$PORT" --pairs 100 --qos 2 --persistent-subscribers
                    --duration "$DURATION" --warmup 1s --cpus "$BENCH_CPU" --broker-pid "$PID" --json)
                if [[ $rate != sat ]]; then
                    flow+=(--rate "$rate")
                fi
                bench_json "$RAW/$name" "${flow[@]}"
                stop_broker
                log "$name done"
            done
        done
    done
done
rm -rf "$DATA"
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

PYTHONPATH="$ROOT/bench" python3 - "$RAW" "$REPS" "$START_LOAD" "$END_LOAD" "${BINARY[A]}" "${BINARY[B]}" >"$OUT" <<'EOF'
import json, sys
from tables import median_range
raw, reps, start_load, end_load, a, b = sys.argv[1:7]
reps = int(reps)
skipped = []

def load(name):
    try:
        d = json.load(open(f"{raw}/{name}.json"))
    except (OSError, ValueError):
        return None
    # A run whose clients could not all connect (a broker slow to answer
    # on a loaded machine) measured something else: left out, and counted.
    if d.get("errors", 0):
        skipped.append(name)
        return None
    return dict(rate=d.get("received_per_second"), cpu=d.get("broker_cpu_us_per_message"),
                p50=d.get("latency_us", {}).get("p50"), p99=d.get("latency_us", {}).get("p99"),
                missing=d.get("missing", 0))

def med(values, digits, scale=1):
    return median_range([v / scale for v in values if v is not None], digits, empty="–")

print(f"A = `{a}`, B = `{b}`; {reps} repeats; load average at start {start_load}, at end {end_load}.\n")
print("| durability | flow | build | delivered msg/s | broker CPU µs/msg | p50 ms | p99 ms | missing |")
print("|---|---|---|---|---|---|---|---|")
for durability in ("batch", "always"):
    for rate, title in (("sat", "pairs 100 QoS 2, saturated"), ("200", "pairs 100 QoS 2, 200/s each")):
        for build in ("A", "B"):
            runs = [r for r in (load(f"{durability}.{rate}.{build}.{i}") for i in range(1, reps + 1)) if r]
            print(f"| {durability} | {title} | {build} | {med([r['rate'] for r in runs], 0)} "
                  f"| {med([r['cpu'] for r in runs], 2)} | {med([r['p50'] for r in runs], 2, 1000)} "
                  f"| {med([r['p99'] for r in runs], 2, 1000)} | {sum(r['missing'] or 0 for r in runs)} |")
print("\nB against A, per repeat (rate ratio; CPU ratio):\n")
print("| durability | flow | rate B / A | CPU B / A |")
print("|---|---|---|---|")
for durability in ("batch", "always"):
    for rate in ("sat", "200"):
        rates, cpus = [], []
        for i in range(1, reps + 1):
            ra, rb = load(f"{durability}.{rate}.A.{i}"), load(f"{durability}.{rate}.B.{i}")
            if ra and rb and ra["rate"] and rb["rate"]:
                rates.append(rb["rate"] / ra["rate"])
                if ra["cpu"] and rb["cpu"]:
                    cpus.append(rb["cpu"] / ra["cpu"])
        print(f"| {durability} | {rate} | {med(rates, 2)} | {med(cpus, 2)} |")
if skipped:
    print(f"\nLeft out, with connection errors: {', '.join(sorted(set(skipped)))}.")
EOF
log "tables written to $OUT"
cat "$OUT"
