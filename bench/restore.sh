#!/usr/bin/env bash
# Restore time after a crash: a broker with a data dir is filled through
# MQTT with stored sessions and their queued QoS 1 messages
# (`ringmq-bench sessions`: 100,000 sessions x 10 messages by default),
# killed with SIGKILL, then restarted --reps times (each restart killed
# with SIGKILL in turn), timing each until every shard has logged
# `sessions restored`. Warm: the files as the kernel caches them; cold:
# the data dir's files dropped from the page cache first
# (posix_fadvise DONTNEED; on a VM the host may still cache them).
#
#   bench/restore.sh [--sessions N] [--messages M] [--reps N] [--cores "1 2"]
#                    [--against BINARY]
#
# Prints one line per restart and a median per (cores, cache) to stdout.
# The data dir is under target/restore-data, on the checkout's disk.
# `RINGMQ=PATH` restarts (and fills with) that binary instead of the
# checkout's. `--against BINARY` restarts BINARY too, on the same data
# dir, alternating with the checkout's binary restart by restart (which
# goes first alternates too), so both meet the same machine load and
# the same files; lines and medians then say `binary=new` or `base`.
set -euo pipefail
OVERRIDE=${RINGMQ:-}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RINGMQ=${OVERRIDE:-$RINGMQ}

log() { echo "restore: $*" >&2; }

SESSIONS=100000
MESSAGES=10
REPS=3
CORES="1 2"
AGAINST=""
while (($#)); do
    case $1 in
        --sessions) SESSIONS=$2; shift 2 ;;
        --messages) MESSAGES=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --cores) CORES=$2; shift 2 ;;
        --against) AGAINST=$2; shift 2 ;;
        *) echo "usage: bench/restore.sh [--sessions N] [--messages M] [--reps N] [--cores \"1 2\"] [--against BINARY]" >&2; exit 2 ;;
    esac
done

PORT=18960
DATA="$ROOT/target/restore-data"
LOGS="$ROOT/target/restore-logs"
mkdir -p "$LOGS"
trap 'if [[ -n "$PID" ]]; then kill -9 "$PID" 2>/dev/null || true; fi' EXIT
build_release

# broker CORES LOG [BINARY]: ringmq (or BINARY) with the data dir, in the
# background; sets PID. One shard is pinned to CPU 0 as in the other
# benches; two get both CPUs.
broker() {
    local cores=$1 logfile=$2 binary=${3:-$RINGMQ} pin=0
    ((cores > 1)) && pin=0-$((cores - 1))
    taskset -c "$pin" "$binary" --listen "127.0.0.1:$PORT" --cores "$cores" \
        --data-dir "$DATA" --log-level info >/dev/null 2>"$logfile" &
    PID=$!
}

crash() {
    kill -9 "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
}

drop_cache() {
    python3 - "$DATA" <<'EOF'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
EOF
}

# restart CORES LOG [BINARY]: starts the broker (PID) and sets
# SECONDS_TO_RESTORE (exec to the last shard's `sessions restored`),
# READ_MS (the log's `data dir read` millis) and RESTORED (sessions, over
# the shards).
restart() {
    local cores=$1 logfile=$2 binary=${3:-$RINGMQ}
    local start end
    start=$(date +%s.%N)
    broker "$cores" "$logfile" "$binary"
    for _ in $(seq 3000); do
        if (($(grep -c "sessions restored" "$logfile" || true) >= cores)); then
            break
        fi
        sleep 0.005
    done
    end=$(date +%s.%N)
    SECONDS_TO_RESTORE=$(echo "$end - $start" | bc)
    READ_MS=$(grep -o 'data dir read.*millis=[0-9]*' "$logfile" | grep -o 'millis=[0-9]*' | cut -d= -f2)
    RESTORED=$(grep -o 'sessions restored.*' "$logfile" | grep -o 'sessions=[0-9]*' | cut -d= -f2 | paste -sd+ | bc)
}

for cores in $CORES; do
    rm -rf "$DATA"
    log "cores $cores: filling $SESSIONS sessions x $MESSAGES messages"
    broker "$cores" "$LOGS/fill-$cores.log"
    wait_port "$PORT"
    "$BENCH" sessions --broker "127.0.0.1:$PORT" --sessions "$SESSIONS" --messages "$MESSAGES" \
        --cpus "$BENCH_CPU" >&2
    crash
    log "data dir $(du -sm "$DATA" | cut -f1) MB"
    for cache in warm cold; do
        declare -A times=()
        for rep in $(seq "$REPS"); do
            order=(new)
            if [[ -n $AGAINST ]]; then
                order=(new base)
                ((rep % 2 == 0)) && order=(base new)
            fi
            for which in "${order[@]}"; do
                binary=$RINGMQ label=""
                if [[ -n $AGAINST ]]; then
                    label=" binary=$which"
                    [[ $which == base ]] && binary=$AGAINST
                fi
                [[ $cache == cold ]] && drop_cache
                restart "$cores" "$LOGS/restart-$cores-$cache-$rep-$which.log" "$binary"
                echo "cores=$cores cache=$cache rep=$rep$label restored_sessions=$RESTORED until_restored_s=$SECONDS_TO_RESTORE data_dir_read_ms=$READ_MS load=$(cut -d' ' -f1 /proc/loadavg)"
                times[$which]+="$SECONDS_TO_RESTORE "
                crash
            done
        done
        for which in "${order[@]}"; do
            label=""
            [[ -n $AGAINST ]] && label=" binary=$which"
            # shellcheck disable=SC2086 # one time per word
            median=$(printf '%s\n' ${times[$which]} | sort -n | sed -n "$(((REPS + 1) / 2))p")
            echo "cores=$cores cache=$cache$label median_until_restored_s=$median"
        done
        unset times
    done
done
rm -rf "$DATA"
