#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), starting from the
# committed corpus, and fails if any target finds a crash.
#
#   fuzz/run.sh [SECONDS]
#
# Needs a Rust toolchain and a C++ compiler (libFuzzer is built from source
# by libfuzzer-sys). cargo-fuzz passes nightly-only flags (-Zsanitizer, ...);
# on a stable toolchain RUSTC_BOOTSTRAP=1 lets rustc accept them.
# New inputs libFuzzer finds go to a scratch directory, so the committed
# corpus stays small; a crash is saved under fuzz/artifacts/TARGET/.
set -euo pipefail

seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: fuzz/run.sh [SECONDS]" >&2
    exit 2
fi

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# -a: debug assertions and overflow checks on, so the encoder's own
# `debug_assert!`s (body length against bytes written) are checked too.
fuzz_flags=(-a)

targets=$(cargo fuzz list)
cargo fuzz build "${fuzz_flags[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in $targets; do
    mkdir -p "$scratch/$target"
    echo "fuzz: $target for ${seconds}s"
    log="$scratch/$target.log"
    if cargo fuzz run "${fuzz_flags[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^Done ' "$log" || true
        grep -E '#[0-9]+.*cov:' "$log" | tail -n 1 || true
    else
        tail -n 60 "$log"
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a crash"
