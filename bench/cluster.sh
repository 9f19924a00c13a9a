#!/usr/bin/env bash
# Measures what the cluster hop costs: the same flows on a three-node ringmq
# cluster and on one ringmq node, in the same run, and writes markdown
# tables (medians and ranges over repeats, ratios cluster / single) to OUT.
#
#   bench/cluster.sh [--reps N] [--quick] OUT.md
#   bench/cluster.sh --from DIR OUT.md     (tables again from an earlier run)
#
# Nodes n1, n2, n3 listen on 127.0.0.11-13 (MQTT port $MQTT_PORT, QUIC
# $CLUSTER_PORT, metrics $METRICS_PORT), `--cores 1` each, seeded with each
# other, a fresh RINGMQ_CLUSTER_SECRET per run; the single node is the same
# binary on 127.0.0.14 without cluster flags. A cluster counts as up when
# every node's /ready answers 200 and its log shows `cluster link up` for
# both others. Per repeat, cluster first, then single node, the same
# ringmq-bench commands:
#   pairs-q0, pairs-q1        100 pairs, publishers on n1, subscribers on n2
#                             (every message crosses one hop), saturated;
#   pairs-qQ-rate-R           the same open loop (--max-lag 0) at each of
#                             $RATES (default 500 and 100 msg/s per
#                             publisher, 50,000 and 10,000 msg/s; `half` is
#                             half the cluster's saturated rate that repeat);
#   fanout-q0, fanout-q1      5 publishers on n1 -> 300 subscribers spread
#                             over n1, n2, n3 (--sub-broker), saturated;
#   subscribe                 1,000 SUBSCRIBEs in sequence to new filters on
#                             n2: SUBSCRIBE -> SUBACK latency.
# The single node gets the same flows with every address pointing at it.
# Pinning: on a two-core machine all brokers (the three nodes together, or
# the single node) share CPU 0 (`taskset -c 0`), the generator has CPU 1
# (`--cpus 1`), so both variants have one core for brokering; broker CPU
# is utime+stime summed over every node (`--broker-pid n1,n2,n3`).
# Peers, when built by hand: RMQTT=/path/to/rmqttd (cluster-raft plugin)
# and VIBEMQ=/path/to/vibemq run the pairs and fan-out flows on their own
# three-node clusters on the same addresses, after the ringmq variants in
# each repeat (configuration written into the run directory);
# WITH_SINGLE=0 leaves the single ringmq node out. The JSON, command and
# node logs of every run stay in a /tmp/ringmq-cluster.* directory.
# DURATION, WARMUP override the window (5s, 2s); --quick is a small check
# of the script itself.
# A/B of two builds: CANDIDATE=/path/to/ringmq runs that binary (no build)
# as ringmq-cluster, BASE=/path/to/ringmq another as base-cluster, in the
# same repeats, the two clusters' order swapped every other repeat, ratios
# ringmq-cluster / base-cluster in the tables. FLOWS picks flows among
# `pairs` (saturated), `rates`, `fanout`, `subscribe` (default: all).
# PROFILE=DIR: `perf record -e cpu-clock -F 1999 -g` on the three nodes of
# ringmq-cluster for 3 s after the warm-up of each saturated pairs run, into
# DIR/TAG.perf.data (call graphs want a build with frame pointers:
# RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release
# --target-dir target/fp, run as CANDIDATE).
set -euo pipefail

REPS=3
QUICK=0
OUT=""
FROM=""
while (($#)); do
    arg=$1
    shift
    case "$arg" in
    --reps)
        REPS=${1:?--reps needs a number}
        shift
        ;;
    --quick) QUICK=1 ;;
    --from)
        FROM="$(cd "${1:?--from needs a directory}" && pwd)"
        shift
        ;;
    -h | --help)
        sed -n '2,47p' "$0"
        exit 0
        ;;
    *) OUT="$arg" ;;
    esac
done

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if [[ -n "${CANDIDATE:-}" ]]; then
    RINGMQ=$CANDIDATE
fi
BASE=${BASE:-}
FLOWS=${FLOWS:-pairs rates fanout subscribe}
require_out "usage: bench/cluster.sh [--reps N] [--quick | --from DIR] OUT.md"

WORK="${FROM:-$(mktemp -d /tmp/ringmq-cluster.XXXXXX)}"
MQTT_PORT=${MQTT_PORT:-18870}
CLUSTER_PORT=${CLUSTER_PORT:-7970}
METRICS_PORT=${METRICS_PORT:-19070}
DURATION=${DURATION:-5s}
# Fixed rates per publisher for the open-loop runs: `half` is half the
# cluster's saturated rate of the repeat, numbers are msg/s per publisher.
RATES=${RATES:-500 100}
WARMUP=${WARMUP:-2s}
# WITH_SINGLE=0 leaves the single node out (a peers comparison only).
WITH_SINGLE=${WITH_SINGLE:-1}
# Peers whose cluster is restarted before every flow: RMQTT, flooded by a
# saturated run, is still delivering that backlog minutes later (the
# runs after it then see only stale deliveries).
PEER_FRESH=${PEER_FRESH:-rmqtt}
# Starts of RMQTT so far: each start moves its gRPC and raft ports (a
# restarted node cannot bind a port its predecessor left in TIME_WAIT).
RMQTT_STARTS=0
# Set once a run has used the variant now up (for PEER_FRESH).
USED=0
if ((QUICK)); then
    PAIRS=20 FANOUT_SUBS=30 SUBSCRIBES=200 DURATION=2s WARMUP=1s
else
    # ringmq refuses a client's 1,001st subscription (max_subscriptions_per_client).
    PAIRS=100 FANOUT_SUBS=300 SUBSCRIBES=1000
fi
NODES=(1 2 3)
# Per-publisher rates of the -rate runs, set from the cluster's saturated runs.
RATE_Q0=100 RATE_Q1=100
# Every broker process of the variant running now, for --broker-pid.
PIDS=()

log() { echo "cluster: $*" >&2; }

# wait_addr HOST PORT: as lib.sh's wait_port, on any loopback address.
wait_addr() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "nothing listens on $1:$2"
    return 1
}

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

# start_cluster REP [BINARY]: three ringmq nodes on CPU 0; returns once each
# is ready and linked to both others, or fails after 30 s naming the node.
start_cluster() {
    local rep=$1 bin=${2:-$RINGMQ} i j seeds
    RINGMQ_CLUSTER_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    export RINGMQ_CLUSTER_SECRET
    for i in "${NODES[@]}"; do
        seeds=""
        for j in "${NODES[@]}"; do
            [[ $j != "$i" ]] && seeds+="127.0.0.1$j:$CLUSTER_PORT,"
        done
        taskset -c "$BROKER_CPU" "$bin" --cores 1 --listen "127.0.0.1$i:$MQTT_PORT" \
            --metrics-listen "127.0.0.1$i:$METRICS_PORT" --node-id "n$i" \
            --cluster-listen "127.0.0.1$i:$CLUSTER_PORT" --seeds "${seeds%,}" \
            --log-level info >"$WORK/ringmq.n$i.$rep.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 300); do
        local up=0
        for i in "${NODES[@]}"; do
            local code links
            code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1$i:$METRICS_PORT/ready" || true)
            # tracing may colour the fields: strip escapes before matching.
            links=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/ringmq.n$i.$rep.log" |
                { grep -o 'cluster link up peer=[^ ]*' || true; } | sort -u | wc -l)
            if [[ $code == 200 ]] && ((links >= 2)); then
                up=$((up + 1))
            fi
        done
        if ((up == 3)); then
            log "cluster up (pids ${PIDS[*]})"
            # Linked is not yet serving: on a busy machine the ownership
            # raft may still be electing, and the first run's clients
            # then fail to connect (claims time out). A message crossing
            # n1 -> n2 shows it is done.
            local try
            for try in 1 2 3; do
                probe_hop && break
                ((try < 3)) || log "going on anyway"
            done
            return 0
        fi
        sleep 0.1
    done
    log "cluster did not come up in 30 s; see $WORK/ringmq.n*.$rep.log"
    return 1
}

start_single() {
    taskset -c "$BROKER_CPU" "$RINGMQ" --cores 1 --listen "127.0.0.14:$MQTT_PORT" \
        --metrics-listen "127.0.0.14:$METRICS_PORT" --log-level info \
        >"$WORK/ringmq.single.$1.log" 2>&1 &
    PIDS+=($!)
    wait_addr 127.0.0.14 "$MQTT_PORT"
}

# run TAG ringmq-bench-args...: one run against the variant now up; JSON in
# $WORK/TAG.json, the command in $WORK/TAG.cmd (pids as PIDS).
run() {
    local tag=$1
    shift
    local variant=${tag#*.} rep=${tag##*.}
    variant=${variant%.*}
    if ((USED)) && [[ " $PEER_FRESH " == *" $variant "* ]]; then
        stop_all
        if ! "start_$variant" "$rep"; then
            log "$variant did not start again: $tag left out"
            return 0
        fi
        log "$variant restarted for $tag (pids ${PIDS[*]})"
    fi
    USED=1
    local pids
    pids=$(
        IFS=,
        echo "${PIDS[*]}"
    )
    local args=("$@" --cpus "$BENCH_CPU" --broker-pid "$pids" --json)
    echo "ringmq-bench ${args[*]}" | sed "s/--broker-pid $pids/--broker-pid PIDS/" >"$WORK/$tag.cmd"
    log "$tag: ringmq-bench ${args[*]}"
    if [[ -n "${PROFILE:-}" && $variant == ringmq-cluster && $tag == pairs-q[01].* ]]; then
        mkdir -p "$PROFILE"
        (
            sleep "${WARMUP%s}"
            perf record -e cpu-clock -F 1999 -g -p "$pids" -o "$PROFILE/$tag.perf.data" \
                -- sleep 3 >/dev/null 2>&1
        ) &
    fi
    bench_json "$WORK/$tag" "${args[@]}"
    # Let the run's connections close before the next one starts.
    sleep 1
}

# half_rate TAG: per-publisher rate at half of TAG's delivered msg/s.
half_rate() {
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(max(1, int(r["received_per_second"] / 2 / int(sys.argv[2]))))' \
        "$WORK/$1.json" "$PAIRS" 2>/dev/null || echo 100
}

# flows VARIANT REP PUB SUB SPREAD: the flows against one variant; PUB is
# the publishers' node, SUB the pairs subscribers', SPREAD the fan-out
# subscribers' (comma-separated). Rates for the -rate runs come from the
# cluster's saturated runs of the same repeat (RATE_Q0, RATE_Q1).
flows() {
    local variant=$1 rep=$2 pub=$3 sub=$4 spread=$5
    local window=(--duration "$DURATION" --warmup "$WARMUP")
    local qos
    for qos in 0 1; do
        [[ " $FLOWS " == *" pairs "* ]] || continue
        run "pairs-q$qos.$variant.$rep" pubsub --layout pairs --publishers "$PAIRS" --qos "$qos" \
            --broker "$pub" --sub-broker "$sub" "${window[@]}"
        if [[ $variant == ringmq-cluster ]]; then
            eval "RATE_Q$qos=$(half_rate "pairs-q$qos.$variant.$rep")"
        fi
        local rate_var="RATE_Q$qos" name rate
        [[ " $FLOWS " == *" rates "* ]] || continue
        for name in $RATES; do
            rate=$name
            [[ $name == half ]] && rate=${!rate_var}
            run "pairs-q$qos-rate-$name.$variant.$rep" pubsub --layout pairs --publishers "$PAIRS" \
                --qos "$qos" --rate "$rate" --max-lag 0 --broker "$pub" --sub-broker "$sub" "${window[@]}"
        done
    done
    for qos in 0 1; do
        [[ " $FLOWS " == *" fanout "* ]] || continue
        run "fanout-q$qos.$variant.$rep" pubsub --layout fan-out --publishers 5 \
            --subscribers "$FANOUT_SUBS" --qos "$qos" --broker "$pub" --sub-broker "$spread" "${window[@]}"
    done
    [[ $variant != rmqtt && $variant != vibemq && " $FLOWS " == *" subscribe "* ]] || return 0
    run "subscribe.$variant.$rep" subscribe --broker "$sub" --subscribes "$SUBSCRIBES"
}

# probe_hop: a peer's cluster counts as formed once a message published on
# n1 reaches a subscriber on n2 (mosquitto_pub / mosquitto_sub), within 20 s.
probe_hop() {
    local out="$WORK/probe.$$" _
    mosquitto_sub -h 127.0.0.12 -p "$MQTT_PORT" -t probe/hop -C 1 -W 20 >"$out" 2>&1 &
    local sub=$!
    for _ in $(seq 40); do
        sleep 0.5
        mosquitto_pub -h 127.0.0.11 -p "$MQTT_PORT" -t probe/hop -m x 2>/dev/null || true
        if ! kill -0 "$sub" 2>/dev/null; then
            break
        fi
    done
    wait "$sub" 2>/dev/null || true
    if [[ $(cat "$out") != x ]]; then
        log "no message crossed from n1 to n2 in 20 s: cluster not formed"
        return 1
    fi
}

# Peers' three-node clusters, configured here; each start_* sets PIDS and
# returns once all three MQTT ports answer (and a settling pause, since
# neither says when its cluster has formed).
start_rmqtt() {
    local rep=$1 i grpc="" raft="" base=$((CLUSTER_PORT + 100 * (RMQTT_STARTS % 8)))
    RMQTT_STARTS=$((RMQTT_STARTS + 1))
    for i in "${NODES[@]}"; do
        grpc+="\"$i@127.0.0.1$i:$((base + 10))\","
        raft+="\"$i@127.0.0.1$i:$((base + 20))\","
    done
    for i in "${NODES[@]}"; do
        local dir="$WORK/rmqtt.n$i"
        mkdir -p "$dir/plugins"
        cat >"$dir/rmqtt.toml" <<EOF
[node]
id = $i
[rpc]
server_addr = "127.0.0.1$i:$((base + 10))"
[log]
to = "console"
level = "warn"
[plugins]
dir = "$dir/plugins"
default_startups = ["rmqtt-cluster-raft"]
[listener.tcp.external]
addr = "127.0.0.1$i:$MQTT_PORT"
workers = 1
nodelay = true
max_connections = 1048576
max_handshaking_limit = 4096
max_inflight = 16
max_mqueue_len = 1000
mqueue_rate_limit = "100000000,1s"
allow_anonymous = true
EOF
        cat >"$dir/plugins/rmqtt-acl.toml" <<EOF
rules = [["allow", "all"]]
EOF
        cat >"$dir/plugins/rmqtt-cluster-raft.toml" <<EOF
worker_threads = 1
node_grpc_addrs = [${grpc%,}]
raft_peer_addrs = [${raft%,}]
# Without a named leader, nodes started together may each lead a raft
# group of one: every SUBSCRIBE is acknowledged, nothing crosses.
leader_id = 1
EOF
        # exec: $! must be rmqttd itself, whose CPU --broker-pid reads.
        (cd "$dir" && exec taskset -c "$BROKER_CPU" "$RMQTT" -f "$dir/rmqtt.toml" \
            >>"$WORK/rmqtt.n$i.$rep.log" 2>&1) &
        PIDS+=($!)
    done
    for i in "${NODES[@]}"; do
        wait_addr "127.0.0.1$i" "$MQTT_PORT"
    done
    sleep 5
    probe_hop
}

start_vibemq() {
    local rep=$1 i j seeds
    for i in "${NODES[@]}"; do
        seeds=""
        for j in "${NODES[@]}"; do
            [[ $j != "$i" ]] && seeds+="\"127.0.0.1$j:$((CLUSTER_PORT + 40))\","
        done
        cat >"$WORK/vibemq.n$i.toml" <<EOF
[server]
bind = "127.0.0.1$i:$MQTT_PORT"
workers = 1
[log]
level = "warn"
[metrics]
enabled = false
[limits]
max_inflight = 16
max_queued_messages = 1000
# Persistence is on by default, in ./data: three nodes in one directory
# collide there, and ringmq keeps sessions in memory.
[persistence]
enabled = false
[[cluster]]
enabled = true
node_id = "n$i"
gossip_addr = "127.0.0.1$i:$((CLUSTER_PORT + 40))"
gossip_advertise_addr = "127.0.0.1$i:$((CLUSTER_PORT + 40))"
peer_addr = "127.0.0.1$i:$((CLUSTER_PORT + 50))"
peer_advertise_addr = "127.0.0.1$i:$((CLUSTER_PORT + 50))"
seeds = [${seeds%,}]
EOF
        taskset -c "$BROKER_CPU" "$VIBEMQ" -c "$WORK/vibemq.n$i.toml" >"$WORK/vibemq.n$i.$rep.log" 2>&1 &
        PIDS+=($!)
    done
    for i in "${NODES[@]}"; do
        wait_addr "127.0.0.1$i" "$MQTT_PORT"
    done
    sleep 5
    probe_hop
}

if [[ -z "$FROM" ]]; then
    if [[ -z "${CANDIDATE:-}" ]]; then
        build_release
    fi
    trap stop_all EXIT
    N1="127.0.0.11:$MQTT_PORT" N2="127.0.0.12:$MQTT_PORT" N3="127.0.0.13:$MQTT_PORT"
    SINGLE="127.0.0.14:$MQTT_PORT"
    for rep in $(seq "$REPS"); do
        clusters=(ringmq-cluster)
        if [[ -n "$BASE" ]]; then
            # The two builds take turns going first.
            if ((rep % 2)); then clusters+=(base-cluster); else clusters=(base-cluster ringmq-cluster); fi
        fi
        for variant in "${clusters[@]}"; do
            bin=$RINGMQ
            [[ $variant == base-cluster ]] && bin=$BASE
            start_cluster "$rep.$variant" "$bin"
            flows "$variant" "$rep" "$N1" "$N2" "$N1,$N2,$N3"
            stop_all
        done
        if ((WITH_SINGLE)); then
            start_single "$rep"
            flows ringmq-single "$rep" "$SINGLE" "$SINGLE" "$SINGLE"
            stop_all
        fi
        for peer in rmqtt vibemq; do
            bin=${peer^^}
            [[ -n "${!bin:-}" ]] || continue
            if ! "start_$peer" "$rep"; then
                log "$peer left out of repeat $rep; see $WORK/$peer.n*.$rep.log"
                stop_all
                continue
            fi
            log "$peer cluster started (pids ${PIDS[*]})"
            USED=0
            flows "$peer" "$rep" "$N1" "$N2" "$N1,$N2,$N3"
            stop_all
        done
    done
    {
        echo "when=$(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "load=$(cut -d' ' -f1 /proc/loadavg)"
        echo "commit=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src bench || echo '+changes')"
        echo "peers=${RMQTT:+rmqtt $RMQTT }${VIBEMQ:+vibemq $VIBEMQ}"
        echo "binaries=ringmq-cluster ${CANDIDATE:-$RINGMQ}${BASE:+, base-cluster $BASE}"
    } >"$WORK/run.txt"
fi

# --- tables --------------------------------------------------------------
python3 - "$WORK" "$OUT" <<'PY'
import glob, json, os, platform, statistics, sys
work, out = sys.argv[1:]
info = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(work, "run.txt")))
runs = {}
for path in sorted(glob.glob(os.path.join(work, "*.json"))):
    test, variant, rep = os.path.basename(path)[:-5].split(".")
    try:
        r = json.load(open(path))
    except ValueError:
        continue
    r["_cmd"] = open(path[:-5] + ".cmd").read().strip()
    runs.setdefault((test, variant), {})[rep] = r

def med(xs, digits=0):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} ({min(xs):,.{digits}f}-{max(xs):,.{digits}f})"

def per_published(r):
    w = r.get("window") or {}
    cpu, sent = w.get("broker_cpu_seconds"), w.get("sent")
    return cpu * 1e6 / sent if cpu is not None and sent else None

variants = ["ringmq-cluster", "base-cluster", "ringmq-single", "rmqtt", "vibemq"]
def order(test):
    parts = test.split("-")
    rate = parts[3] if len(parts) > 3 else ""
    return (parts[0], parts[1], rate != "", rate != "half", -int(rate) if rate.isdigit() else 0)
tests = sorted({t for t, _ in runs if t != "subscribe"}, key=order)
lines = []
w = lines.append
w(f"### Cluster runs ({info['when']}, ringmq {info['commit']})")
w("")
w(f"Machine: {os.cpu_count()} CPUs, Linux {platform.release()}, load average {info['load']} at the end. "
  "All broker processes of a variant on CPU 0, generator on CPU 1. Medians over repeats, "
  "range in brackets. Broker CPU summed over all nodes (`--broker-pid n1,n2,n3`). "
  f"Raw JSON, commands and node logs: `{work}`.")
if info.get("binaries"):
    w(f"Binaries: {info['binaries']}.")
w("")
w("| flow | broker | runs | delivered msg/s | broker CPU µs / delivered | µs / published | p50 ms | p99 ms | missing | errors |")
w("|---|---|---|---|---|---|---|---|---|---|")
for test in tests:
    for variant in variants:
        rs = list(runs.get((test, variant), {}).values())
        if not rs:
            continue
        w(f"| {test} | {variant} | {len(rs)} | {med([r['received_per_second'] for r in rs])} | "
          f"{med([r.get('broker_cpu_us_per_message') for r in rs], 2)} | {med([per_published(r) for r in rs], 2)} | "
          f"{med([r['latency_us']['p50'] / 1e3 if r['latency_us']['samples'] else None for r in rs], 2)} | "
          f"{med([r['latency_us']['p99'] / 1e3 if r['latency_us']['samples'] else None for r in rs], 2)} | "
          f"{sum(r['missing'] for r in rs):,} | {sum(r['errors'] for r in rs)} |")
w("")
w("Ratios within each repeat (cluster / single; peers / ringmq cluster), median and range:")
w("")
w("| flow | pair | msg/s | CPU µs / delivered | p50 | p99 | CPU difference µs / msg |")
w("|---|---|---|---|---|---|---|")
def ratio_row(test, a, b):
    ra, rb = runs.get((test, a), {}), runs.get((test, b), {})
    reps = sorted(set(ra) & set(rb))
    if not reps:
        return
    def rat(f):
        xs = []
        for rep in reps:
            x, y = f(ra[rep]), f(rb[rep])
            if x is not None and y:
                xs.append(x / y)
        return med(xs, 2)
    diff = [ra[r]["broker_cpu_us_per_message"] - rb[r]["broker_cpu_us_per_message"] for r in reps
            if ra[r].get("broker_cpu_us_per_message") is not None and rb[r].get("broker_cpu_us_per_message") is not None]
    p = lambda q: lambda r: r["latency_us"][q] if r["latency_us"]["samples"] else None
    w(f"| {test} | {a} / {b} | {rat(lambda r: r['received_per_second'])} | "
      f"{rat(lambda r: r.get('broker_cpu_us_per_message'))} | {rat(p('p50'))} | {rat(p('p99'))} | {med(diff, 2)} |")
for test in tests:
    ratio_row(test, "ringmq-cluster", "ringmq-single")
    ratio_row(test, "base-cluster", "ringmq-single")
    ratio_row(test, "ringmq-cluster", "base-cluster")
for test in tests:
    for peer in ("rmqtt", "vibemq"):
        ratio_row(test, peer, "ringmq-cluster")
w("")
sub = {v: list(runs.get(("subscribe", v), {}).values()) for v in variants}
if any(sub.values()):
    w("SUBSCRIBE -> SUBACK, each to a new filter, one in flight (`subscribe`):")
    w("")
    w("| broker | runs | SUBACKs | p50 µs | p99 µs | max µs | broker CPU µs / subscribe | errors |")
    w("|---|---|---|---|---|---|---|---|")
    for v, rs in sub.items():
        if rs:
            w(f"| {v} | {len(rs)} | {sum(r['completed'] for r in rs):,} | {med([r['latency_us']['p50'] for r in rs])} | "
              f"{med([r['latency_us']['p99'] for r in rs])} | {med([r['latency_us']['max'] for r in rs])} | "
              f"{med([r.get('broker_cpu_us_per_subscribe') for r in rs], 1)} | {sum(r['errors'] for r in rs)} |")
    w("")
w("Commands (repeat 1; PIDS are the variant's broker processes):")
w("")
w("```")
for (test, variant), rs in sorted(runs.items()):
    first = rs[sorted(rs)[0]]
    w(f"{test} {variant}: {first['_cmd']}")
w("```")
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "tables written to $OUT; raw JSON and logs in $WORK"
