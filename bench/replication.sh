#!/usr/bin/env bash
# Measures what replicated sessions cost: the same flows on a three-node
# ringmq cluster with data dirs, `--cluster-replication-factor 1` (no
# copies) against 2 (the default: one copy), alternating within each
# repeat, and writes a markdown table (medians and ranges, and per-repeat
# ratios 2 / 1) to OUT.
#
#   bench/replication.sh [--reps N] OUT.md
#
# Nodes n1, n2, n3 on 127.0.0.11-13, `--cores 1` each, `--durability
# batch` (the default), all three pinned to CPU 0, the generator on CPU 1;
# broker CPU is utime+stime summed over the three nodes, per delivered
# message. Flows (publishers on n1, persistent subscribers on n2, so every
# message is queued for a stored session on n2, whose copies go to n3):
#   pairs-sat   pubsub pairs, 100 QoS 1 pairs, saturated
#   pairs-200   the same at 200 msg/s per publisher (20,000 offered)
# DURATION, WARMUP override the window (5 s, 2 s). The JSON and node logs
# stay in a /tmp/ringmq-replication.* directory.
set -euo pipefail

REPS=3
OUT=""
while (($#)); do
    case "$1" in
    --reps)
        REPS=${2:?--reps needs a number}
        shift 2
        ;;
    -h | --help)
        sed -n '2,18p' "$0"
        exit 0
        ;;
    *)
        OUT=$1
        shift
        ;;
    esac
done
[[ -n $OUT ]] || {
    echo "usage: bench/replication.sh [--reps N] OUT.md" >&2
    exit 2
}

log() { echo "replication: $*" >&2; }
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_release

WORK=$(mktemp -d /tmp/ringmq-replication.XXXXXX)
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
MQTT_PORT=18883
CLUSTER_PORT=17946
METRICS_PORT=19090
PIDS=()

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap stop_all EXIT

# start_cluster FACTOR TAG: three nodes with fresh data dirs; returns once
# each node's raft has a leader (CONNECTs are served).
start_cluster() {
    local factor=$1 tag=$2 i j seeds
    RINGMQ_CLUSTER_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    export RINGMQ_CLUSTER_SECRET
    for i in 1 2 3; do
        seeds=""
        for j in 1 2 3; do
            [[ $j != "$i" ]] && seeds+="127.0.0.1$j:$CLUSTER_PORT,"
        done
        rm -rf "$WORK/data.n$i"
        taskset -c "$BROKER_CPU" "$RINGMQ" --cores 1 --listen "127.0.0.1$i:$MQTT_PORT" \
            --metrics-listen "127.0.0.1$i:$METRICS_PORT" --node-id "n$i" \
            --cluster-listen "127.0.0.1$i:$CLUSTER_PORT" --seeds "${seeds%,}" \
            --data-dir "$WORK/data.n$i" --cluster-replication-factor "$factor" \
            --max-queued-messages 1000000 --log-level warn >"$WORK/$tag.n$i.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 300); do
        local up=0
        for i in 1 2 3; do
            if curl -s "http://127.0.0.1$i:$METRICS_PORT/metrics" |
                grep -q '^ringmq_ownership_has_quorum 1'; then
                up=$((up + 1))
            fi
        done
        ((up == 3)) && return 0
        sleep 0.1
    done
    log "cluster did not come up in 30 s; see $WORK/$tag.n*.log"
    return 1
}

run() {
    local tag=$1
    shift
    local pids
    pids=$(
        IFS=,
        echo "${PIDS[*]}"
    )
    local args=(pubsub --layout pairs --publishers 100 --qos 1 --persistent-subscribers
        --broker "127.0.0.11:$MQTT_PORT" --sub-broker "127.0.0.12:$MQTT_PORT"
        --duration "$DURATION" --warmup "$WARMUP" "$@"
        --cpus "$BENCH_CPU" --broker-pid "$pids" --json)
    echo "ringmq-bench ${args[*]}" | sed "s/--broker-pid $pids/--broker-pid PIDS/" >"$WORK/$tag.cmd"
    log "$tag"
    bench_json "$WORK/$tag" "${args[@]}"
}

START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$REPS"); do
    for factor in 1 2; do
        for flow in pairs-sat pairs-200; do
            tag="$flow.rf$factor.$rep"
            start_cluster "$factor" "$tag"
            case $flow in
            pairs-sat) run "$tag" ;;
            pairs-200) run "$tag" --rate 200 ;;
            esac
            stop_all
        done
    done
done
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$WORK" "$REPS" "$START_LOAD" "$END_LOAD" "$(cd "$ROOT" && git rev-parse --short HEAD)" "$(cat "$WORK/pairs-sat.rf2.1.cmd" 2>/dev/null)" >"$OUT" <<'PY'
import json, statistics, sys
work, reps, start_load, end_load, commit, command = sys.argv[1:7]
reps = int(reps)
flows = [("pairs-sat", "pairs 100 QoS 1, persistent subscribers, saturated"),
         ("pairs-200", "pairs 100 QoS 1, persistent subscribers, 200/s each (20,000 offered)")]

def load(flow, factor, rep):
    try:
        d = json.load(open(f"{work}/{flow}.rf{factor}.{rep}.json"))
    except (OSError, ValueError):
        return None
    return dict(rate=d.get("received_per_second"), cpu=d.get("broker_cpu_us_per_message"),
                p99=d.get("latency_us", {}).get("p99"), errors=d.get("errors", 0),
                missing=d.get("missing", 0))

def med(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = statistics.median(values)
    return fmt(m) if len(values) == 1 else f"{fmt(m)} ({fmt(min(values))}–{fmt(max(values))})"

print(f"Replicated sessions, `{commit}`, {reps} repeats; load average at start {start_load}, at end {end_load}.")
print(f"Command (rf 2, first repeat): `{command}`\n")
print("| flow | replication_factor | delivered msg/s | CPU µs/msg, 3 nodes | p99 ms | errors / missing |")
print("|---|---|---|---|---|---|")
for flow, title in flows:
    for factor in (1, 2):
        runs = [r for r in (load(flow, factor, i) for i in range(1, reps + 1)) if r]
        if not runs:
            print(f"| {title} | {factor} | (no run) | | | |")
            continue
        print(f"| {title} | {factor} | {med([r['rate'] for r in runs], lambda v: f'{v:,.0f}')} "
              f"| {med([r['cpu'] for r in runs], lambda v: f'{v:.2f}')} "
              f"| {med([r['p99'] for r in runs], lambda v: f'{v / 1000:.2f}')} "
              f"| {sum(r['errors'] for r in runs)} / {sum(r['missing'] or 0 for r in runs)} |")
print("\nPer repeat, replication_factor 2 against 1 in the same repeat:\n")
print("| flow | rate ratio | CPU ratio |")
print("|---|---|---|")
for flow, title in flows:
    rates, cpus = [], []
    for i in range(1, reps + 1):
        one, two = load(flow, 1, i), load(flow, 2, i)
        if one and two and one["rate"] and two["rate"]:
            rates.append(two["rate"] / one["rate"])
        if one and two and one["cpu"] and two["cpu"]:
            cpus.append(two["cpu"] / one["cpu"])
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs) or "–"
    print(f"| {title} | {fmt(rates)} | {fmt(cpus)} |")
PY
log "wrote $OUT (raw runs in $WORK)"
