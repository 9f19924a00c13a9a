#!/usr/bin/env bash
# How long a session takes to follow its client to another node: three
# ringmq nodes on 127.0.0.11-13 (`--cores 1` each, all on CPU 0, a data
# dir each with `--durability batch`), the generator on CPU 1, and
# `ringmq-bench takeover` moving persistent sessions between n1 and n2:
# each move is a CONNECT at the other node whose CONNACK must say session
# present, timed from the TCP connect to the CONNACK.
#
#   bench/takeover.sh [--moves N] OUT.md
#
# Flows, each on a fresh cluster: one client moving in sequence (the
# latency of a lone move), ten clients moving at once, and one client
# taken over while still connected (--while-connected). The JSON of every
# run stays in a /tmp/ringmq-takeover.* directory.
set -euo pipefail

MOVES=300
OUT=""
while (($#)); do
    case "$1" in
    --moves)
        MOVES=${2:?--moves needs a number}
        shift 2
        ;;
    -h | --help)
        sed -n '2,15p' "$0"
        exit 0
        ;;
    *)
        OUT=$1
        shift
        ;;
    esac
done
[[ -n $OUT ]] || { echo "usage: bench/takeover.sh [--moves N] OUT.md" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --release --bin ringmq >&2
(cd bench && cargo build --release >&2)
RINGMQ="$ROOT/target/release/ringmq"
BENCH="$ROOT/target/release/ringmq-bench"
WORK=$(mktemp -d /tmp/ringmq-takeover.XXXXXX)
PIDS=()

stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap stop_all EXIT

# start_cluster TAG: three nodes; returns once each has a raft leader.
start_cluster() {
    export RINGMQ_CLUSTER_SECRET
    RINGMQ_CLUSTER_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    for i in 1 2 3; do
        local seeds=""
        for j in 1 2 3; do [[ $j != "$i" ]] && seeds+="127.0.0.1$j:7990,"; done
        rm -rf "$WORK/data.$1.n$i"
        taskset -c 0 "$RINGMQ" --cores 1 --listen "127.0.0.1$i:18890" \
            --metrics-listen "127.0.0.1$i:19090" --node-id "n$i" \
            --cluster-listen "127.0.0.1$i:7990" --seeds "${seeds%,}" \
            --data-dir "$WORK/data.$1.n$i" --durability batch \
            --log-level warn >"$WORK/$1.n$i.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 300); do
        local up=0
        for i in 1 2 3; do
            curl -s "http://127.0.0.1$i:19090/metrics" | grep -qx 'ringmq_ownership_has_quorum 1' && up=$((up + 1))
        done
        ((up == 3)) && return 0
        sleep 0.1
    done
    echo "the cluster formed no raft in 30 s; see $WORK" >&2
    return 1
}

run() {
    local tag=$1
    shift
    start_cluster "$tag"
    local pids
    pids=$(IFS=,; echo "${PIDS[*]}")
    echo "ringmq-bench takeover --broker 127.0.0.11:18890 --other-broker 127.0.0.12:18890 $* --cpus 1" >"$WORK/$tag.cmd"
    "$BENCH" takeover --broker 127.0.0.11:18890 --other-broker 127.0.0.12:18890 "$@" \
        --cpus 1 --broker-pid "$pids" --json >"$WORK/$tag.json"
    stop_all
}

run lone --clients 1 --moves "$MOVES"
run ten --clients 10 --moves "$((MOVES / 10))"
run connected --clients 1 --moves "$MOVES" --while-connected

python3 - "$WORK" "$OUT" "$(git rev-parse --short HEAD)" <<'PY'
import json, sys
work, out, commit = sys.argv[1:]
rows = [("lone", "1 client, moves in sequence"), ("ten", "10 clients moving at once"),
        ("connected", "1 client, taken over while connected")]
lines = [f"Takeover on `{commit}`: CONNECT at the other node to CONNACK (session present), "
         "three nodes on CPU 0, generator on CPU 1, `--durability batch`. Commands in "
         f"`{work}/*.cmd`.", "",
         "| flow | moves | p50 ms | p99 ms | max ms | broker CPU µs / move | errors |",
         "|---|---|---|---|---|---|---|"]
for tag, name in rows:
    d = json.load(open(f"{work}/{tag}.json"))
    l = d["latency_us"]
    cpu = d.get("broker_cpu_us_per_move")
    lines.append(f"| {name} | {d['completed']} | {l['p50']/1e3:.2f} | {l['p99']/1e3:.2f} | "
                 f"{l['max']/1e3:.2f} | {cpu:.0f} | {d['errors']} |" if cpu is not None else
                 f"| {name} | {d['completed']} | {l['p50']/1e3:.2f} | {l['p99']/1e3:.2f} | "
                 f"{l['max']/1e3:.2f} | n/a | {d['errors']} |")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
