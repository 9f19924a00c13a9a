# shellcheck shell=bash
# What bench/peers.sh, bench/targets.sh and bench/profile.sh share: the
# paths and CPU layout, installing Mosquitto and building, starting,
# waiting for and stopping a broker, and one generator run. Sourced after
# the caller's `set -euo pipefail`, as
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# The functions report through `log MESSAGE...`, which each caller defines
# for its own messages too (on stderr, prefixed `peers:` or `targets:`).

# The checkout and its release binaries, wherever the script is run from.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/target/release/ringmq-bench"
RINGMQ="$ROOT/target/release/ringmq"
# The broker is pinned to BROKER_CPU and the generator (`--cpus`) to
# BENCH_CPU, so that the two never compete for a core.
BROKER_CPU=0
# shellcheck disable=SC2034 # used by the callers
BENCH_CPU=1
# The broker started last: for `--broker-pid`, and what stop_broker stops.
PID=""

# require_out USAGE: peers.sh and targets.sh both end in an OUT.md argument;
# without one, USAGE and exit 2. OUT is made absolute, as the closing
# "tables written to" line names it.
require_out() {
    if [[ -z "$OUT" ]]; then
        echo "$1" >&2
        exit 2
    fi
    if [[ "$OUT" != /* ]]; then
        OUT="$PWD/$OUT"
    fi
}

# Mosquitto is the broker every comparison is made against: installed with
# apt the first time.
ensure_mosquitto() {
    if ! command -v mosquitto >/dev/null; then
        log "installing mosquitto"
        apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
    fi
}

# A run measures the checkout as it is, so both binaries are rebuilt first
# (quick when nothing changed).
build_release() {
    log "building ringmq and ringmq-bench (release)"
    (cd "$ROOT" && cargo build --quiet --release -p ringmq -p ringmq-bench)
}

# wait_port PORT: a broker started in the background needs a moment before
# it listens, and a generator that connects too early counts only errors.
# Fails (after logging) if nothing listens on 127.0.0.1:PORT within 10 s.
wait_port() {
    local port=$1
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "nothing listens on port $port"
    return 1
}

# start_ringmq PORT [ARGS...]: ringmq on 127.0.0.1:PORT as the benches run
# it, one shard (`--cores 1`) with the whole process pinned to BROKER_CPU,
# and warnings only, so logging costs nothing per message; ARGS go before
# `--log-level`. In the background, its output wherever the caller
# redirects this call; sets PID. Does not wait for the port.
start_ringmq() {
    local port=$1
    shift
    taskset -c "$BROKER_CPU" "$RINGMQ" --listen "127.0.0.1:$port" --cores 1 "$@" \
        --log-level warn &
    PID=$!
}

# start_mosquitto CONF PORT [EXTRA]: Mosquitto on 127.0.0.1:PORT, configured
# the same way for every comparison (config written to CONF): anonymous, no
# connection limit, and only errors and warnings logged, so logging costs
# nothing per connection; EXTRA (configuration lines) is appended. Pinned
# to BROKER_CPU, in the background, its output wherever the caller
# redirects this call; sets PID. Does not wait for the port.
start_mosquitto() {
    local conf=$1 port=$2 extra=${3:-}
    cat >"$conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
max_connections -1
log_dest stderr
log_type error
log_type warning
$extra
EOF
    taskset -c "$BROKER_CPU" mosquitto -c "$conf" &
    PID=$!
}

# Every run starts on a fresh broker, and a script that exits (or fails)
# must not leave one running: stops PID and waits for it, so its port and
# CPU are free for the next. Does nothing without one, so it also serves
# as an EXIT trap.
stop_broker() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID"
        wait "$PID" 2>/dev/null || true
    fi
    PID=""
}

# bench_json BASE ARGS...: runs `ringmq-bench ARGS` (which should include
# --json), its stdout in BASE.json and stderr in BASE.log. A run with
# errors exits 1 and its JSON still says what happened, so that stays; a
# run that could not start (exit 2 or more) loses its JSON, so the tables
# leave it out, and its log's last lines are logged.
bench_json() {
    local base=$1
    shift
    local tag=${base##*/} rc=0
    "$BENCH" "$@" >"$base.json" 2>"$base.log" || rc=$?
    if ((rc >= 2)); then
        log "$tag failed to run (exit $rc): $(tail -n 3 "$base.log")"
        rm -f "$base.json"
    fi
}

# --- peers built by hand -------------------------------------------------
# FlashMQ and the real inovex/mqtt-stresser join the comparisons when
# FLASHMQ and MQTT_STRESSER name their binaries (built by hand from their
# public sources: no build script for another project is committed).
# Without them the scripts run what they always ran.
FLASHMQ=${FLASHMQ:-}
MQTT_STRESSER=${MQTT_STRESSER:-}

# start_flashmq CONF PORT THREADS: FlashMQ on 127.0.0.1:PORT, configured
# like Mosquitto above (config written to CONF): anonymous, no
# persistence (no storage_dir), warnings and errors only, THREADS worker
# threads. With one thread it is pinned to BROKER_CPU like the others;
# with more it is left to the scheduler. rlimit_nofile is this machine's
# hard limit (FlashMQ's default, 1,000,000, cannot be set here). In the
# background, its output wherever the caller redirects this call; sets PID.
# FlashMQ 1.26.2 asks for `SO_REUSEADDR | SO_REUSEPORT` in one setsockopt
# call, which is SO_REUSEPORT alone, so it cannot listen on a port that
# still has TIME_WAIT sockets from an earlier broker: give it a port of its
# own per run.
start_flashmq() {
    local conf=$1 port=$2 threads=$3
    cat >"$conf" <<EOC
thread_count $threads
allow_anonymous true
log_level warning
rlimit_nofile $(ulimit -Hn)
listen {
    protocol mqtt
    inet4_bind_address 127.0.0.1
    port $port
}
EOC
    if ((threads == 1)); then
        taskset -c "$BROKER_CPU" "$FLASHMQ" --config-file "$conf" &
    else
        "$FLASHMQ" --config-file "$conf" &
    fi
    PID=$!
}

# cpu_ticks PID: the process's utime+stime in clock ticks (/proc/PID/stat
# fields 14 and 15, counted after the parenthesised command name).
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}

# mqtt_stresser_json BASE CPUS ARGS...: runs the real mqtt-stresser with
# ARGS (plus -no-progress, so that it does not write a dot per received
# message) on CPUS (`taskset -c`; Go then runs that many threads), against
# the broker PID. Its report goes to BASE.log; BASE.json then holds the
# figures of `ringmq-bench stresser --json` that the tables read (see
# bench/mqtt_stresser.py), with the wall time of the process and the
# broker's CPU time from /proc/PID/stat around it, as ringmq-bench measures
# them for its own stresser.
mqtt_stresser_json() {
    local base=$1 cpus=$2
    shift 2
    local before after rc=0 TIMEFORMAT='%3R %3U %3S'
    before=$(cpu_ticks "$PID")
    { time taskset -c "$cpus" "$MQTT_STRESSER" "$@" -no-progress >"$base.log" 2>&1 || rc=$?; } 2>"$base.time"
    after=$(cpu_ticks "$PID")
    python3 "$ROOT/bench/mqtt_stresser.py" "$base.log" "$base.time" "$((after - before))" \
        "$(getconf CLK_TCK)" "$@" >"$base.json" || rm -f "$base.json"
    if ((rc)); then
        log "${base##*/}: mqtt-stresser exit $rc: $(tail -n 3 "$base.log")"
    fi
}

# peer_versions: ", FlashMQ x.y.z" and ", mqtt-stresser PATH" for what is
# set, for the versions line of a run; nothing otherwise.
peer_versions() {
    if [[ -n "$FLASHMQ" ]]; then
        printf ', %s' "$("$FLASHMQ" --version 2>&1 | grep -o 'FlashMQ [^ ]* *[0-9][0-9.]*' | head -n 1 || echo "FlashMQ $FLASHMQ")"
    fi
    if [[ -n "$MQTT_STRESSER" ]]; then
        printf ', mqtt-stresser %s' "$MQTT_STRESSER"
    fi
}
