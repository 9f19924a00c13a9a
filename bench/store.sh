#!/usr/bin/env bash
# Compares the embedded stores for durable sessions (fjall, redb) on one
# shard's write pattern and on the restore scan, and prints markdown tables.
#
#   bench/store.sh [--dir DIR] [--messages N] [--time-limit 10s] [--raw FILE]
#
# Write pattern: every store x durability (always, batch, none) x batch
# (1, 16, 128 messages per group commit), plus fjall `always` with
# fdatasync instead of fsync; each cell writes --messages messages (default
# 200,000) or stops publishing at --time-limit and drains its acks. Restore:
# 100,000 sessions x 10 queued messages per store, reopened after a clean
# close (warm and cold page cache) and after a crash (cold).
#
# DIR (default target/store-bench) must be on the filesystem to measure,
# not a tmpfs; each run uses a fresh subdirectory of it and removes it.
# --raw FILE keeps every run's JSON, one line each. Needs jq.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/target/release/ringmq-bench"
DIR="$ROOT/target/store-bench"
MESSAGES=200000
TIME_LIMIT=10s
RAW=""
while (($#)); do
    arg=$1
    shift
    case "$arg" in
    --dir) DIR="${1:?--dir needs a path}" && shift ;;
    --messages) MESSAGES="${1:?--messages needs a number}" && shift ;;
    --time-limit) TIME_LIMIT="${1:?--time-limit needs a duration}" && shift ;;
    --raw) RAW="${1:?--raw needs a file}" && shift ;;
    -h | --help)
        sed -n '2,16p' "$0"
        exit 0
        ;;
    *)
        echo "unknown argument: $arg (see --help)" >&2
        exit 2
        ;;
    esac
done
command -v jq >/dev/null || {
    echo "store.sh needs jq (apt-get install jq)" >&2
    exit 1
}

mkdir -p "$DIR"
fstype=$(df --output=fstype "$DIR" | tail -1)
if [[ $fstype == tmpfs ]]; then
    echo "$DIR is on tmpfs: fsync would cost nothing; pick a real disk" >&2
    exit 1
fi
(cd "$ROOT" && cargo build -j1 --release -q -p ringmq-bench)
RUNS=$(mktemp)
trap 'rm -f "$RUNS"' EXIT

# run ARGS...: one run, its JSON appended to RUNS as one line.
run() {
    echo "store.sh: $*" >&2
    "$BENCH" store --dir "$DIR" --json "$@" | jq -c . >>"$RUNS"
}

for store in fjall redb; do
    for durability in always batch none; do
        for batch in 1 16 128; do
            run --store "$store" --durability "$durability" --batch "$batch" \
                --messages "$MESSAGES" --time-limit "$TIME_LIMIT"
        done
    done
done
for batch in 1 16 128; do
    run --store fjall --durability always --fjall-sync data --batch "$batch" \
        --messages "$MESSAGES" --time-limit "$TIME_LIMIT"
done
for store in fjall redb; do
    run --store "$store" --restore
    run --store "$store" --restore --cold
    run --store "$store" --restore --crash --cold
done

echo "machine: $(nproc) CPUs, $DIR on $fstype ($(df --output=source "$DIR" | tail -1))"
echo
echo "| store | durability | batch | messages | msg/s | commit p50 µs | commit p99 µs | CPU µs/msg | disk MB open | disk MB closed |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
jq -r 'select(.scenario == "store")
    | [ .store,
        .durability + (if .fjall_sync == "data" and .durability == "always" then " (fdatasync)" else "" end),
        .batch,
        (.messages | tostring) + (if .time_limited then " (time limit)" else "" end),
        (.messages_per_second | round),
        (.commit_us.p50 * 10 | round / 10),
        (.commit_us.p99 * 10 | round / 10),
        (.cpu_us_per_message * 100 | round / 100),
        (.disk_bytes / 1e5 | round / 10),
        (.disk_bytes_closed / 1e5 | round / 10) ]
    | "| " + (map(tostring) | join(" | ")) + " |"' "$RUNS"
echo
echo "| store | reopened after | page cache | disk MB | fill s | close s | reopen s | scan s | reopen + scan s | keys found | errors |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
jq -r 'select(.scenario == "store-restore")
    | [ .store,
        (if .crash then "crash" else "clean close" end),
        (if .cold then "cold" else "warm" end),
        (.disk_bytes / 1e5 | round / 10),
        (.fill_seconds * 100 | round / 100),
        (if .close_seconds == null then "–" else (.close_seconds * 1000 | round / 1000) end),
        (.reopen_seconds * 1000 | round / 1000),
        (.scan_seconds * 1000 | round / 1000),
        (.restore_seconds * 1000 | round / 1000),
        (.found.sessions + .found.messages + .found.queue_entries),
        .errors ]
    | "| " + (map(tostring) | join(" | ")) + " |"' "$RUNS"
if [[ -n $RAW ]]; then
    cp "$RUNS" "$RAW"
fi
