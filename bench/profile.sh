#!/usr/bin/env bash
# Profiles a broker's CPU while ringmq-bench loads it, and prints where the
# samples fall: by binary (kernel, broker, libc, vdso), kernel samples by
# the system call they came through, the top symbols, and system calls per
# delivered message.
#
#   bench/profile.sh [--broker ringmq|mosquitto] OUTDIR -- RINGMQ-BENCH-ARGS...
#
# e.g. bench/profile.sh /tmp/prof -- stresser -num-clients 500 -num-messages 100
#
# The broker is started pinned to CPU 0 (`taskset -c 0`, ringmq `--cores
# 1`) on 127.0.0.1:18945; `--broker 127.0.0.1:18945 --cpus 1 --broker-pid
# PID --json` are added to the generator's arguments. Two runs, each on a
# fresh broker:
#   1. perf record -e cpu-clock -F 4999 -g -p PID (software clock: this VM
#      has no hardware counters), from just before the generator starts to
#      its end, connection setup included;
#   2. perf stat on the syscalls:sys_enter_* tracepoints, which count every
#      call but slow each one down, hence a run of its own.
# OUTDIR keeps perf.data, the generators' JSON (bench.json, bench-count.json),
# dso.txt, symbols.txt, syscalls.csv and breakdown.txt.
set -euo pipefail

BROKER=ringmq
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    sed -n '2,21p' "$0"
    exit 0
fi
while [[ "${1:-}" == --broker ]]; do
    BROKER=${2:?--broker needs ringmq or mosquitto}
    shift 2
done
OUTDIR=${1:?usage: bench/profile.sh [--broker ringmq|mosquitto] OUTDIR -- ARGS...}
shift
[[ "${1:-}" == -- ]] && shift
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PORT=18945
SYSCALLS=sendto,recvfrom,read,write,writev,sendmsg,recvmsg,io_uring_enter,epoll_wait,epoll_pwait,epoll_ctl,accept4,shutdown,close
PERF=""
# This script's messages (and lib.sh's) go to stderr unprefixed.
log() { echo "$*" >&2; }
cleanup() {
    if [[ -n "$PERF" ]]; then
        kill -INT "$PERF" 2>/dev/null || true
        wait "$PERF" 2>/dev/null || true
    fi
    stop_broker
    PERF=""
}
trap cleanup EXIT

start_broker() {
    case "$BROKER" in
    ringmq)
        start_ringmq "$PORT" >>"$OUTDIR/broker.log" 2>&1
        ;;
    mosquitto)
        # Not start_mosquitto: this config keeps Mosquitto's default
        # logging, which notes every connection.
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\n' "$PORT" >"$OUTDIR/mosquitto.conf"
        taskset -c "$BROKER_CPU" mosquitto -c "$OUTDIR/mosquitto.conf" >>"$OUTDIR/broker.log" 2>&1 &
        PID=$!
        ;;
    *)
        log "unknown broker $BROKER"
        exit 2
        ;;
    esac
    wait_port "$PORT" || exit 2
}

# measure JSON PERF-ARGS...: a fresh broker, perf attached to it, one run.
measure() {
    local json=$1
    shift
    start_broker
    perf "$@" -p "$PID" 2>>"$OUTDIR/perf.log" &
    PERF=$!
    sleep 0.5
    local rc=0
    "$BENCH" "${ARGS[@]}" --broker "127.0.0.1:$PORT" --cpus "$BENCH_CPU" \
        --broker-pid "$PID" --json >"$OUTDIR/$json" 2>>"$OUTDIR/bench.log" || rc=$?
    log "generator exit $rc"
    cleanup
    sleep 1
}

ARGS=("$@")
echo "ringmq-bench ${ARGS[*]} --broker 127.0.0.1:$PORT --cpus $BENCH_CPU --broker-pid PID --json" >"$OUTDIR/command.txt"
measure bench.json record -e cpu-clock -F 4999 -g -o "$OUTDIR/perf.data"
measure bench-count.json stat -x, -o "$OUTDIR/syscalls.csv" \
    -e "$(echo "$SYSCALLS" | sed 's/\([a-z_0-9]*\)/syscalls:sys_enter_\1/g')"

perf report -i "$OUTDIR/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    grep -v '^$' >"$OUTDIR/dso.txt"
perf report -i "$OUTDIR/perf.data" --no-children --sort dso,sym --stdio -g none \
    --percent-limit 0.5 2>/dev/null | grep -v '^$' >"$OUTDIR/symbols.txt"

# Each sample by where it landed: the binary for user space; for the
# kernel, the system call it came through (the frame do_syscall_64
# called), and for sends whether it was inside the delivery of the segment
# to the peer socket, which loopback runs in the sender's softirq.
perf script -i "$OUTDIR/perf.data" -F ip,sym,dso 2>/dev/null | python3 -c '
import collections, re, sys
SENDS = {"sendto", "sendmsg", "write", "writev", "io_uring_enter"}
counts = collections.Counter()
def call_of(frame):
    name = frame.split()[1].split("+")[0]
    return re.sub(r"^(__x64_sys_|__do_sys_|__se_sys_|ksys_|__sys_)", "", name)
def classify(stack):
    leaf = stack[0]
    if "[kernel.kallsyms]" not in leaf:
        m = re.search(r"\(([^)]*)\)$", leaf)
        return "user: " + (m.group(1) if m else "?").rsplit("/", 1)[-1]
    syms = [f.split()[1] for f in stack]
    if "do_syscall_64" not in syms:
        return "kernel: outside system calls (interrupts, softirq, page faults)"
    i = syms.index("do_syscall_64")
    if i == 0:
        return "kernel: system call entry and exit"
    call = call_of(stack[i - 1])
    if call in ("exit_to_user_mode_loop", "syscall_exit_to_user_mode"):
        return "kernel: returning from a system call (scheduling, signals)"
    if call in SENDS and "net_rx_action" in syms:
        return "kernel: " + call + ", delivering to the peer socket (softirq)"
    return "kernel: " + call
stack = []
for line in sys.stdin.read().splitlines() + [""]:
    if line.strip():
        stack.append(line.strip())
    elif stack:
        counts[classify(stack)] += 1
        stack = []
total = sum(counts.values())
print(f"{total} samples")
for what, n in counts.most_common():
    print(f"{100 * n / total:6.1f}%  {what}")
' >"$OUTDIR/breakdown.txt"

python3 - "$OUTDIR" >>"$OUTDIR/breakdown.txt" <<'PY'
import csv, json, sys
out = sys.argv[1]
profiled = json.load(open(out + "/bench.json"))
counted = json.load(open(out + "/bench-count.json"))
print(f"\nprofiled run: broker CPU {profiled.get('broker_cpu_us_per_message')} µs per message "
      "(perf's own sampling included)")
received = counted["received"]
print(f"system calls in the counted run, per message received ({received:,} received; "
      "whole run, setup included):")
for row in csv.reader(l for l in open(out + "/syscalls.csv") if l.strip() and not l.startswith("#")):
    count, event = row[0], row[2]
    if count.isdigit() and int(count):
        print(f"  {event.split('sys_enter_')[-1]:16} {int(count):>12,}  {int(count) / max(received, 1):8.3f}")
PY
cat "$OUTDIR/breakdown.txt"
echo
grep -v '^#' "$OUTDIR/dso.txt"
echo
grep -v '^#' "$OUTDIR/symbols.txt" | head -n 40
