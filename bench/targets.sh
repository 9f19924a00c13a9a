#!/usr/bin/env bash
# Measures ringmq against the issue #4 targets that bench/peers.sh does not
# answer on its own, and writes markdown tables (medians over repeats) to OUT.
#
#   bench/targets.sh [--reps N] [--only S1,S2,...] OUT.md
#   bench/targets.sh --from DIR [--from DIR2 ...] OUT.md
#                        (tables again from earlier runs, pooled if several;
#                        with --only, of those sections only)
#
# Sections (all by default, in this order):
#   mosquitto  ringmq against Mosquitto, alternating: pairs 100 QoS 0 and the
#              stresser flows 500x100 and 100x1000 at QoS 0;
#   qos1       pairs 100 QoS 1 at saturation, then at a half, a third and a
#              quarter of the median saturated rate and at 500, 250 and 100
#              msg/s per publisher (--rate), for the latency, with Mosquitto
#              at the same fixed rates;
#   fanout     fan-out 5 -> 1000 QoS 0 at fixed offered rates, open loop
#              (--max-lag 0): $FANOUT_RATES msg/s per publisher (50 is
#              250,000 out); and 5 -> 100 at 500 and 50 (250,000 and 25,000
#              out), to see what the number of subscribers does; Mosquitto
#              at 10, 5 and 1;
#   driver     --io-driver uring against epoll, alternating: pairs QoS 0,
#              pairs QoS 1, fan-out 5 -> 1000 QoS 0 at saturation;
#   cores      --cores 1 pinned to CPU 0 against --cores 2 unpinned (ringmq
#              pins shard i to CPU i itself), the same three runs and
#              fan-out at 50 msg/s per publisher;
#   peers      Mosquitto, FlashMQ (when FLASHMQ names its binary) and ringmq,
#              pinned and then unpinned (two broker threads where the broker
#              has them, generator --cpus 0,1): pairs 100 at QoS 0 and 1,
#              fan-out 5 -> 1000 QoS 0, `ringmq-bench stresser` 100x1000 and
#              200x1000 QoS 0, and the same two with the real mqtt-stresser
#              when MQTT_STRESSER names its binary. In the default list only
#              when FLASHMQ or MQTT_STRESSER is set.
# Every run gets a fresh broker; brokers other than `cores 2` are pinned to
# CPU 0 (`taskset -c 0`, ringmq `--cores 1`), the generator to CPU 1
# (`--cpus 1`). Each run is repeated --reps times (default 3), variants
# alternating within a repeat. Broker CPU is utime+stime from /proc/PID/stat.
# The JSON of every run stays in a /tmp/ringmq-targets.* directory.
set -euo pipefail

REPS=3
ONLY="mosquitto,qos1,fanout,driver,cores"
if [[ -n "${FLASHMQ:-}${MQTT_STRESSER:-}" ]]; then
    ONLY+=",peers"
fi
OUT=""
FROM=()
while (($#)); do
    arg=$1
    shift
    case "$arg" in
    --reps)
        REPS=${1:?--reps needs a number}
        shift
        ;;
    --only)
        ONLY=${1:?--only needs a list}
        shift
        ;;
    --from)
        FROM+=("$(cd "${1:?--from needs a directory}" && pwd)")
        shift
        ;;
    -h | --help)
        sed -n '2,38p' "$0"
        exit 0
        ;;
    *) OUT="$arg" ;;
    esac
done

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_out "usage: bench/targets.sh [--reps N] [--only S1,S2] [--from DIR] OUT.md"

if ((${#FROM[@]})); then
    WORK=${FROM[0]}
else
    WORK=$(mktemp -d /tmp/ringmq-targets.XXXXXX)
    FROM=("$WORK")
fi
PORT=18940
# Overridable for a quick check of the script itself.
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
FANOUT_RATES=${FANOUT_RATES:-50 40 30 20 10 5 2 1}

log() { echo "targets: $*" >&2; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }

if [[ "${FROM[0]}" == "$WORK" && ! -e "$WORK/run.txt" ]]; then

ensure_mosquitto
build_release

trap stop_broker EXIT

# start_broker VARIANT: mosquitto, ringmq (one shard on CPU 0, auto driver),
# uring / epoll (ringmq, one shard on CPU 0, that driver), cores1 / cores2,
# flashmq (one thread on CPU 0); and for `peers` the unpinned ones:
# mosquitto-unpinned (on either CPU), flashmq-unpinned (two threads, not
# pinned), ringmq-unpinned (= cores2).
start_broker() {
    local variant=$1 tag=$2
    case "$variant" in
    mosquitto)
        start_mosquitto "$WORK/mosquitto.conf" "$PORT" 2>"$WORK/$tag.broker.log"
        ;;
    mosquitto-unpinned)
        BROKER_CPU=0,1 start_mosquitto "$WORK/mosquitto.conf" "$PORT" 2>"$WORK/$tag.broker.log"
        ;;
    flashmq | flashmq-unpinned)
        local threads=1
        [[ $variant == flashmq ]] || threads=2
        start_flashmq "$WORK/flashmq.conf" "$PORT" "$threads" >"$WORK/$tag.broker.log" 2>&1
        ;;
    ringmq | cores1)
        start_ringmq "$PORT" >"$WORK/$tag.broker.log" 2>&1
        ;;
    uring | epoll)
        start_ringmq "$PORT" --io-driver "$variant" >"$WORK/$tag.broker.log" 2>&1
        ;;
    cores2 | ringmq-unpinned)
        "$RINGMQ" --listen "127.0.0.1:$PORT" --cores 2 --log-level warn \
            >"$WORK/$tag.broker.log" 2>&1 &
        PID=$!
        ;;
    esac
    wait_port "$PORT"
}

# run TAG VARIANT ringmq-bench-args...: a fresh broker, one run, its JSON as
# $WORK/TAG.json and the exact command in $WORK/TAG.cmd. A run with errors
# exits 1: the JSON still says what happened. `run TAG VARIANT
# mqtt-stresser ARGS...` runs the real mqtt-stresser instead. The generator
# is on CPU 1, or on both CPUs against an `-unpinned` variant.
run() {
    local tag=$1 variant=$2 cpus=$BENCH_CPU port=$PORT
    shift 2
    [[ $variant != *-unpinned ]] || cpus=0,1
    if [[ $variant == flashmq* ]]; then
        # FlashMQ cannot bind a port that still has TIME_WAIT sockets
        # (see start_flashmq), so each of its runs takes the next of 16
        # ports above PORT: a port comes back after a minute or more.
        FLASHMQ_RUNS=$((${FLASHMQ_RUNS:-0} + 1))
        port=$((PORT + 1 + FLASHMQ_RUNS % 16))
        set -- "${@//127.0.0.1:$PORT/127.0.0.1:$port}"
    fi
    # Let the previous broker's sockets leave TIME_WAIT behind them.
    sleep 1
    PORT=$port start_broker "$variant" "$tag"
    if [[ $1 == mqtt-stresser ]]; then
        echo "taskset -c $cpus $* -no-progress" >"$WORK/$tag.cmd"
        log "$tag: $(<"$WORK/$tag.cmd")"
        mqtt_stresser_json "$WORK/$tag" "$cpus" "${@:2}"
    else
        local args=("$@" --cpus "$cpus" --broker-pid "$PID" --json)
        echo "ringmq-bench ${args[*]}" | sed "s/--broker-pid $PID/--broker-pid PID/" >"$WORK/$tag.cmd"
        log "$tag: ringmq-bench ${args[*]}"
        bench_json "$WORK/$tag" "${args[@]}"
    fi
    stop_broker
}

ADDR="127.0.0.1:$PORT"
WINDOW=(--duration "$DURATION" --warmup "$WARMUP")
stresser() { echo stresser -broker "tcp://$ADDR" -num-clients "$1" -num-messages "$2" -global-timeout 120s; }

if want mosquitto; then
    for rep in $(seq "$REPS"); do
        for broker in mosquitto ringmq; do
            run "mosquitto.pairs-q0.$broker.$rep" "$broker" pairs --broker "$ADDR" --pairs 100 --qos 0 "${WINDOW[@]}"
            # shellcheck disable=SC2046
            run "mosquitto.stresser-500x100-q0.$broker.$rep" "$broker" $(stresser 500 100)
            # shellcheck disable=SC2046
            run "mosquitto.stresser-100x1000-q0.$broker.$rep" "$broker" $(stresser 100 1000)
        done
    done
fi

if want qos1; then
    for rep in $(seq "$REPS"); do
        run "qos1.saturated.ringmq.$rep" ringmq pairs --broker "$ADDR" --pairs 100 --qos 1 "${WINDOW[@]}"
    done
    # A fraction of the median saturated rate, per publisher.
    median=$(python3 - "$WORK" <<'PY'
import glob, json, statistics, sys
rates = [json.load(open(f))["received_per_second"] for f in glob.glob(sys.argv[1] + "/qos1.saturated.*.json")]
print(int(statistics.median(rates)))
PY
)
    log "qos1: median saturated rate $median msg/s"
    for rep in $(seq "$REPS"); do
        for fraction in half:2 third:3 quarter:4 rate-500:0 rate-250:0 rate-100:0; do
            name=${fraction%:*} divisor=${fraction#*:}
            if ((divisor)); then
                rate=$((median / divisor / 100))
            else
                rate=${name#rate-}
            fi
            # Mosquitto at the same offered load, for the cost of a
            # message that travels alone.
            for broker in ringmq mosquitto; do
                run "qos1.$name.$broker.$rep" "$broker" pairs --broker "$ADDR" --pairs 100 --qos 1 \
                    --rate "$rate" "${WINDOW[@]}"
            done
        done
    done
fi

if want fanout; then
    for rep in $(seq "$REPS"); do
        for rate in $FANOUT_RATES; do
            run "fanout.subs1000-rate-$rate.ringmq.$rep" ringmq pubsub --layout fan-out --publishers 5 \
                --subscribers 1000 --qos 0 --rate "$rate" --max-lag 0 --broker "$ADDR" "${WINDOW[@]}"
        done
        for rate in 500 50; do
            run "fanout.subs100-rate-$rate.ringmq.$rep" ringmq pubsub --layout fan-out --publishers 5 \
                --subscribers 100 --qos 0 --rate "$rate" --max-lag 0 --broker "$ADDR" "${WINDOW[@]}"
        done
        # Mosquitto where it keeps up (it saturates near 100,000 out).
        for rate in 10 5 1; do
            run "fanout.subs1000-rate-$rate.mosquitto.$rep" mosquitto pubsub --layout fan-out --publishers 5 \
                --subscribers 1000 --qos 0 --rate "$rate" --max-lag 0 --broker "$ADDR" "${WINDOW[@]}"
        done
    done
fi

for section in driver cores; do
    want "$section" || continue
    case "$section" in
    driver) variants=(uring epoll) ;;
    cores) variants=(cores1 cores2) ;;
    esac
    for rep in $(seq "$REPS"); do
        for variant in "${variants[@]}"; do
            run "$section.pairs-q0.$variant.$rep" "$variant" pairs --broker "$ADDR" --pairs 100 --qos 0 "${WINDOW[@]}"
            run "$section.pairs-q1.$variant.$rep" "$variant" pairs --broker "$ADDR" --pairs 100 --qos 1 "${WINDOW[@]}"
            run "$section.fanout-q0.$variant.$rep" "$variant" pubsub --layout fan-out --publishers 5 \
                --subscribers 1000 --qos 0 --broker "$ADDR" "${WINDOW[@]}"
            if [[ $section == cores ]]; then
                run "$section.fanout-q0-rate-50.$variant.$rep" "$variant" pubsub --layout fan-out \
                    --publishers 5 --subscribers 1000 --qos 0 --rate 50 --max-lag 0 --broker "$ADDR" "${WINDOW[@]}"
            fi
        done
    done
done

if want peers; then
    brokers=(mosquitto ${FLASHMQ:+flashmq} ringmq)
    for rep in $(seq "$REPS"); do
        for pinning in "" -unpinned; do
            for broker in "${brokers[@]}"; do
                v=$broker$pinning
                for qos in 0 1; do
                    run "peers.pairs-q$qos.$v.$rep" "$v" pubsub --layout pairs --publishers 100 \
                        --qos "$qos" --broker "$ADDR" "${WINDOW[@]}"
                done
                run "peers.fanout-q0.$v.$rep" "$v" pubsub --layout fan-out --publishers 5 \
                    --subscribers 1000 --qos 0 --broker "$ADDR" "${WINDOW[@]}"
                for clients in 100 200; do
                    # shellcheck disable=SC2046
                    run "peers.stresser-${clients}x1000-q0.$v.$rep" "$v" $(stresser "$clients" 1000)
                    if [[ -n "$MQTT_STRESSER" ]]; then
                        # shellcheck disable=SC2046
                        run "peers.mqtt-stresser-${clients}x1000-q0.$v.$rep" "$v" mqtt-stresser \
                            $(stresser "$clients" 1000 | cut -d' ' -f2-)
                    fi
                done
            done
        done
    done
fi

{
    echo "when=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "load=$(cut -d' ' -f1 /proc/loadavg)"
    echo "versions=$(mosquitto -h 2>&1 | head -n 1 || true), ringmq $(cd "$ROOT" && git rev-parse --short HEAD)$(peer_versions)"
} >"$WORK/run.txt"
fi

# --- tables --------------------------------------------------------------
PYTHONPATH="$ROOT/bench" python3 - "$OUT" "$ONLY" "${FROM[@]}" <<'PY'
import glob, json, os, platform, sys
from tables import median_range
out, only, works = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
infos = [dict(line.rstrip("\n").split("=", 1) for line in open(os.path.join(work, "run.txt")))
         for work in works]

# tag = section.test.variant.rep; runs pooled over the directories, each
# kept with (directory, rep) so variants of one repeat can be paired.
runs = {}
for work in works:
    for path in sorted(glob.glob(os.path.join(work, "*.json"))):
        tag = os.path.basename(path)[:-5]
        section, test, variant, rep = tag.split(".")
        if section not in only:
            continue
        with open(path) as f:
            try:
                r = json.load(f)
            except ValueError:
                continue
        r["_repeat"] = (work, rep)
        runs.setdefault((section, test, variant), []).append(r)

def cmd(section, test, variant):
    tags = sorted(t for work in works
                  for t in glob.glob(os.path.join(work, f"{section}.{test}.{variant}.*.cmd")))
    return open(tags[0]).read().strip().replace(" --json", "") if tags else "n/a"

med = median_range

def ms(r, key):
    lat = r.get("latency_us") or {}
    return lat[key] / 1000 if lat.get("samples") else None

lines = []
w = lines.append
when = "; ".join(i["when"] for i in infos)
w(f"## issue #4 targets ({when}{', pooled' if len(infos) > 1 else ''})")
w("")
loads = ", ".join(f"{float(i['load']):.1f}" for i in infos)
w(f"{infos[0]['versions']}. Machine: {os.cpu_count()} CPUs, Linux {platform.release()}, load "
  f"average {loads} at the end. Fresh broker per run; medians over the "
  "repeats, range in brackets. Broker CPU is utime+stime from /proc/PID/stat over the "
  "window (stresser: over the whole test).")
w("")

def natural(test):
    # rate-5 before rate-50.
    head, _, tail = test.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (test, 0)

def offered(r):
    p = r["params"]
    if not p.get("rate"):
        return None
    return p["rate"] * p["publishers"] * (1 if p["layout"] == "pairs" else p["subscribers"])

def pubsub_table(section, title, variants_order, tests_order=()):
    keys = [k for k in runs if k[0] == section and "clients" not in runs[k][0]]
    if not keys:
        return
    w(f"### {title}")
    w("")
    w("| test | variant | runs | offered msg/s out | delivered msg/s | broker CPU µs / msg | broker CPU s / s | generator CPU s / s | p50 ms | p99 ms | p99.9 ms | missing | written off | errors |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = lambda k: (tests_order.index(k[1]) if k[1] in tests_order else len(tests_order),
                       natural(k[1]), variants_order.index(k[2]) if k[2] in variants_order else 9)
    for key in sorted(keys, key=order):
        rs = runs[key]
        busy = [r["window"].get("broker_cpu_seconds", 0) / r["window"]["seconds"] for r in rs]
        bench = [r["window"].get("bench_cpu_seconds", 0) / r["window"]["seconds"] for r in rs]
        load = offered(rs[0])
        w(f"| {key[1]} | {key[2]} | {len(rs)} | {'closed loop' if load is None else f'{load:,}'} | "
          f"{med([r['received_per_second'] for r in rs], 0)} | "
          f"{med([r.get('broker_cpu_us_per_message') for r in rs], 3)} | {med(busy, 2)} | {med(bench, 2)} | "
          f"{med([ms(r, 'p50') for r in rs], 1)} | {med([ms(r, 'p99') for r in rs], 1)} | "
          f"{med([ms(r, 'p99_9') for r in rs], 1)} | {sum(r['missing'] for r in rs):,} | "
          f"{sum(r['written_off'] for r in rs):,} | {sum(r['errors'] for r in rs)} |")
    w("")
    for key in sorted(keys, key=order):
        w(f"- {key[1]}, {key[2]}: `{cmd(*key)}`")
    w("")

def stresser_table(section, variants_order, workers=False):
    """With `workers`, also the per-worker rates each generator reports
    (median publish and receive rate, slowest publisher) and the
    generator's own CPU seconds where known."""
    keys = [k for k in runs if k[0] == section and "clients" in runs[k][0]]
    if not keys:
        return
    extra = " publish msg/s per worker (median) | slowest publisher msg/s | receive msg/s per worker (median) | generator CPU s |"
    w("| test | broker | runs | aggregate msg/s | wall s | broker CPU µs / msg |"
      f"{extra if workers else ''} received / expected | errors |")
    w("|---|---|---|---|---|---|" + ("---|" * 4 if workers else "") + "---|---|")
    order = lambda k: (k[1], variants_order.index(k[2]) if k[2] in variants_order else 9)
    rate = lambda r, side, which: (r.get(side) or {}).get(which)
    for key in sorted(keys, key=order):
        rs = runs[key]
        cells = ""
        if workers:
            cells = (f" {med([rate(r, 'publishing', 'median') for r in rs], 0)} |"
                     f" {med([rate(r, 'publishing', 'slowest') for r in rs], 0)} |"
                     f" {med([rate(r, 'receiving', 'median') for r in rs], 0)} |"
                     f" {med([r.get('bench_cpu_seconds') for r in rs], 2)} |")
        w(f"| {key[1]} | {key[2]} | {len(rs)} | {med([r['aggregate_per_second'] for r in rs], 0)} | "
          f"{med([r['wall_seconds'] for r in rs], 2)} | {med([r.get('broker_cpu_us_per_message') for r in rs], 2)} |"
          f"{cells} {sum(r['received'] for r in rs):,} / {sum(r['expected'] for r in rs):,} | {sum(r['errors'] for r in rs)} |")
    w("")
    for key in sorted(keys, key=order):
        w(f"- {key[1]}, {key[2]}: `{cmd(*key)}`")
    w("")

pubsub_table("mosquitto", "ringmq against Mosquitto, QoS 0", ["mosquitto", "ringmq"])
stresser_table("mosquitto", ["mosquitto", "ringmq"])
def ratios(section, ours, theirs, targets=False):
    """ours / theirs per repeat, for the tests where both ran; with
    `targets`, how many repeats meet issue #4's (CPU at most a third, rate
    at least equal)."""
    for test in sorted({k[1] for k in runs if k[0] == section}):
        a = {r["_repeat"]: r for r in runs.get((section, test, ours), [])}
        b = {r["_repeat"]: r for r in runs.get((section, test, theirs), [])}
        both = sorted(set(a) & set(b))
        if not both:
            continue
        rate = "received_per_second" if "received_per_second" in a[both[0]] else "aggregate_per_second"
        cpu = [a[k]["broker_cpu_us_per_message"] / b[k]["broker_cpu_us_per_message"] for k in both
               if a[k].get("broker_cpu_us_per_message") and b[k].get("broker_cpu_us_per_message")]
        rates = [a[k][rate] / b[k][rate] for k in both if b[k][rate]]
        if targets:
            w(f"- {test}, {ours} / {theirs} in the same repeat ({len(both)}): broker CPU per "
              f"message {med(cpu, 2)}, at most 1/3 in {sum(c <= 1 / 3 for c in cpu)}; rate "
              f"{med(rates, 2)}, at least 1 in {sum(x >= 1 for x in rates)}")
        else:
            w(f"- {test}, {ours} / {theirs} in the same repeat ({len(both)}): broker CPU per "
              f"message {med(cpu, 2)}; rate {med(rates, 2)}")
    w("")

ratios("mosquitto", "ringmq", "mosquitto", targets=True)
pubsub_table("qos1", "QoS 1 pairs: saturation, then fixed rates",
             ["ringmq", "mosquitto"], ["saturated", "half", "third", "quarter"])
pubsub_table("fanout", "Fan-out 5 -> S, QoS 0, fixed offered rate, open loop", ["ringmq", "mosquitto"])
pubsub_table("driver", "io_uring against epoll", ["uring", "epoll"])
ratios("driver", "epoll", "uring")
pubsub_table("cores", "1 core against 2 cores", ["cores1", "cores2"])
ratios("cores", "cores2", "cores1")
PEERS = ["mosquitto", "flashmq", "ringmq", "mosquitto-unpinned", "flashmq-unpinned", "ringmq-unpinned"]
if any(k[0] == "peers" for k in runs):
    pubsub_table("peers", "Mosquitto, FlashMQ and ringmq, pinned and unpinned", PEERS)
    stresser_table("peers", PEERS, workers=True)
    for theirs in ("flashmq", "mosquitto"):
        ratios("peers", "ringmq", theirs)
        ratios("peers", "ringmq-unpinned", theirs + "-unpinned")

with open(out, "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines))
PY
log "tables written to $OUT; raw JSON and logs in $WORK"
