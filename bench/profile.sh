#!/usr/bin/env bash
# Profiles a broker's CPU while ringmq-bench loads it, and prints where the
# samples fall: by binary or library (kernel, ringmq, libc, vdso) and the
# top symbols.
#
#   bench/profile.sh [--broker ringmq|mosquitto] OUTDIR -- RINGMQ-BENCH-ARGS...
#
# e.g. bench/profile.sh /tmp/prof -- stresser -num-clients 500 -num-messages 100
#
# The broker is started pinned to CPU 0 (`taskset -c 0`, ringmq `--cores
# 1`) on 127.0.0.1:18945; `--broker 127.0.0.1:18945 --cpus 1 --broker-pid
# PID --json` are added to the generator's arguments. perf samples the
# broker process only, by the cpu-clock software event (this VM has no
# hardware counters) at 4999 Hz with call graphs, from just before the
# generator starts to its end, connection setup included. OUTDIR keeps
# perf.data, the generator's JSON, dso.txt, symbols.txt and breakdown.txt
# (each sample by binary, and kernel samples by the system call they came
# through).
set -euo pipefail

BROKER=ringmq
while [[ "${1:-}" == --broker ]]; do
    BROKER=${2:?--broker needs ringmq or mosquitto}
    shift 2
done
OUTDIR=${1:?usage: bench/profile.sh [--broker ringmq|mosquitto] OUTDIR -- ARGS...}
shift
[[ "${1:-}" == -- ]] && shift
mkdir -p "$OUTDIR"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT=18945
case "$BROKER" in
ringmq)
    taskset -c 0 "$ROOT/target/release/ringmq" --listen "127.0.0.1:$PORT" --cores 1 \
        --log-level warn >"$OUTDIR/broker.log" 2>&1 &
    ;;
mosquitto)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\n' "$PORT" >"$OUTDIR/mosquitto.conf"
    taskset -c 0 mosquitto -c "$OUTDIR/mosquitto.conf" >"$OUTDIR/broker.log" 2>&1 &
    ;;
*)
    echo "unknown broker $BROKER" >&2
    exit 2
    ;;
esac
PID=$!
PERF=""
cleanup() {
    [[ -n "$PERF" ]] && kill -INT "$PERF" 2>/dev/null && wait "$PERF" 2>/dev/null
    kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    true
}
trap cleanup EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

perf record -e cpu-clock -F 4999 -g -p "$PID" -o "$OUTDIR/perf.data" 2>"$OUTDIR/perf.log" &
PERF=$!
sleep 0.5
rc=0
"$ROOT/target/release/ringmq-bench" "$@" --broker "127.0.0.1:$PORT" --cpus 1 --broker-pid "$PID" \
    --json >"$OUTDIR/bench.json" 2>"$OUTDIR/bench.log" || rc=$?
kill -INT "$PERF"
wait "$PERF" || true
PERF=""
echo "generator exit $rc; $(grep -c . "$OUTDIR/bench.log") progress lines in bench.log" >&2

perf report -i "$OUTDIR/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    grep -v '^$' >"$OUTDIR/dso.txt"
perf report -i "$OUTDIR/perf.data" --no-children --sort dso,sym --stdio -g none \
    --percent-limit 0.5 2>/dev/null | grep -v '^$' >"$OUTDIR/symbols.txt"
# Each sample by where it landed: the binary for user space; for the
# kernel, the system call it came through, and whether it was inside the
# loopback delivery to the peer socket that a send runs in softirq.
perf script -i "$OUTDIR/perf.data" -F ip,sym,dso 2>/dev/null | python3 -c '
import collections, re, sys
counts = collections.Counter()
total = 0
def classify(stack):
    leaf = stack[0]
    if "[kernel.kallsyms]" not in leaf:
        m = re.search(r"\(([^)]*)\)$", leaf)
        lib = (m.group(1) if m else "?").rsplit("/", 1)[-1]
        return "user: " + lib
    call = next((re.sub(r"^(__x64_sys_|__do_sys_|__se_sys_)", "", f.split()[1].split("+")[0])
                 for f in stack if re.search(r" (__x64_sys_|__do_sys_)", f)), None)
    if call is None:
        return "kernel: no system call (interrupt, page fault, scheduler)"
    where = "kernel: " + call
    if call in ("sendto", "sendmsg", "write", "writev", "io_uring_enter") and any(" net_rx_action" in f for f in stack):
        where += ", loopback delivery to the peer (softirq)"
    return where
stack = []
for line in sys.stdin.read().splitlines() + [""]:
    if line.strip():
        stack.append(line.strip())
    elif stack:
        counts[classify(stack)] += 1
        total += 1
        stack = []
print(f"{total} samples")
for what, n in counts.most_common():
    print(f"{100 * n / total:6.1f}%  {what}")
' >"$OUTDIR/breakdown.txt"
cat "$OUTDIR/breakdown.txt"
echo
grep -v '^#' "$OUTDIR/dso.txt"
echo
grep -v '^#' "$OUTDIR/symbols.txt" | head -n 40
