#!/usr/bin/env bash
# Two broker binaries against each other in the same run, on what
# `durability = batch` costs at saturation: QoS 1 pairs (100 publishers,
# 100 persistent subscribers), closed loop, each binary with
# `--data-dir --durability batch` and in memory.
#
#   bench/durability_ab.sh [--reps N] OUTDIR BINARY_A BINARY_B
#
# Copy the binaries aside first (cp target/release/ringmq /tmp/ringmq-X):
# a rebuild under a running comparison would change what it measures.
# Broker pinned to CPU 0 (`--cores 1`), generator on CPU 1, a fresh broker
# and an empty data dir (target/durability-ab-data) per run, 4 s after
# 1 s of warm-up. Odd repeats run A first, even ones B first, so that
# neither binary always follows the other. Besides the generator's JSON,
# each run keeps its threads' CPU ticks (/proc/PID/task/*/stat), which
# split the broker's CPU per message between the shard, the log's writer
# and the checkpoint thread: on a shared machine the split holds steadier
# than the totals. Prints medians, and B against A per repeat.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log() { echo "durability_ab: $*" >&2; }

REPS=3
if [[ "${1:-}" == --reps ]]; then
    REPS=$2
    shift 2
fi
if (($# != 3)); then
    echo "usage: bench/durability_ab.sh [--reps N] OUTDIR BINARY_A BINARY_B" >&2
    exit 2
fi
OUT=$1 A=$2 B=$3
mkdir -p "$OUT"
PORT=18978
DATA="$ROOT/target/durability-ab-data"
trap stop_broker EXIT

# run NAME BINARY MODE: one run; MODE is batch or mem.
run() {
    local name=$1 binary=$2 mode=$3
    rm -rf "$DATA"
    mkdir -p "$DATA"
    local args=()
    [[ $mode == batch ]] && args=(--data-dir "$DATA" --durability batch)
    RINGMQ=$binary start_ringmq "$PORT" "${args[@]}" 2>"$OUT/$name.log"
    wait_port "$PORT"
    "$BENCH" pairs --broker "127.0.0.1:$PORT" --pairs 100 --qos 1 --persistent-subscribers \
        --duration 4s --warmup 1s --cpus "$BENCH_CPU" --broker-pid "$PID" --json \
        >"$OUT/$name.json" 2>>"$OUT/$name.log" || true
    for task in /proc/"$PID"/task/*; do
        echo "$(cat "$task/comm") $(cut -d' ' -f14,15 "$task/stat")"
    done >"$OUT/$name.threads"
    stop_broker
    log "$name: load $(cut -d' ' -f1 /proc/loadavg)"
}

for rep in $(seq "$REPS"); do
    for mode in batch mem; do
        if ((rep % 2)); then
            run "$mode.A.$rep" "$A" "$mode"
            run "$mode.B.$rep" "$B" "$mode"
        else
            run "$mode.B.$rep" "$B" "$mode"
            run "$mode.A.$rep" "$A" "$mode"
        fi
    done
done
rm -rf "$DATA"

python3 - "$OUT" "$REPS" <<'PY'
import json, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])

def run(mode, which, rep):
    result = json.load(open(f"{out}/{mode}.{which}.{rep}.json"))
    ticks = {}
    for line in open(f"{out}/{mode}.{which}.{rep}.threads"):
        name, user, system = line.rsplit(None, 2)
        name = name.rstrip("-0123456789")
        ticks[name] = ticks.get(name, 0) + int(user) + int(system)
    return result, ticks

def spread(values, fmt):
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"

for mode in ("batch", "mem"):
    for which in ("A", "B"):
        runs = [run(mode, which, rep) for rep in range(1, reps + 1)]
        rate = [r["received_per_second"] for r, _ in runs]
        cpu = [r["broker_cpu_us_per_message"] for r, _ in runs]
        bad = sum(r.get("errors", 0) + r.get("missing", 0) for r, _ in runs)
        threads = {}
        for (r, ticks) in runs:
            total = sum(ticks.values()) or 1
            for name, t in ticks.items():
                threads.setdefault(name, []).append(r["broker_cpu_us_per_message"] * t / total)
        split = ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in sorted(threads.items())
                          if statistics.median(v) >= 0.01)
        print(f"{mode} {which}: {spread(rate, lambda v: f'{v:,.0f}')} msg/s, "
              f"{spread(cpu, lambda v: f'{v:.2f}')} us/msg ({split}); errors+missing {bad}")
    ratio = lambda key: " ".join(
        f"{run(mode, 'B', rep)[0][key] / run(mode, 'A', rep)[0][key]:.2f}" for rep in range(1, reps + 1))
    print(f"{mode} B/A per repeat: CPU/msg {ratio('broker_cpu_us_per_message')}; msg/s {ratio('received_per_second')}")
PY
