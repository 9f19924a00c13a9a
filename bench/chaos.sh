#!/usr/bin/env bash
# Repeats cluster faults on three real ringmq nodes in network namespaces
# and prints, per round, what each subscriber lost, received twice and
# received out of order.
#
#   bench/chaos.sh [--rounds N] [--cut-secs S] [--release]
#
# Rounds alternate: an even round cuts one node's cluster traffic (UDP on
# the cluster port, nftables inside its namespace) for S seconds and heals
# it; an odd round kills one node with SIGKILL and starts it again (a new
# incarnation). The node changes every two rounds (A, B, C, A, ...). Each
# round uses fresh topics: one QoS 1 publisher per node publishing
# numbered messages without pause, and one QoS 1 subscriber per node; a
# killed node's clients die with it and are not counted. Defaults: 10
# rounds, 10 s cuts. The run fails if any round lost, duplicated or
# reordered a message.
#
# It is the `chaos` test of tests/cluster_faults.rs (ignored by plain
# `cargo test`), run alone with the round count in CHAOS_ROUNDS and the cut
# length in CHAOS_CUT_SECS. Needs root, `ip` (iproute2) and `nft`
# (nftables). A round takes about S + 15 seconds in a debug build.
set -euo pipefail

ROUNDS=10
CUT_SECS=10
PROFILE=()
while (($#)); do
    arg=$1
    shift
    case "$arg" in
    --rounds)
        ROUNDS="${1:?--rounds needs a number}"
        shift
        ;;
    --cut-secs)
        CUT_SECS="${1:?--cut-secs needs a number}"
        shift
        ;;
    --release) PROFILE=(--release) ;;
    -h | --help)
        sed -n '2,21p' "$0"
        exit 0
        ;;
    *)
        echo "unknown argument: $arg (see --help)" >&2
        exit 2
        ;;
    esac
done

[[ $ROUNDS =~ ^[0-9]+$ && $CUT_SECS =~ ^[0-9]+$ ]] || {
    echo "--rounds and --cut-secs take whole numbers" >&2
    exit 2
}
[[ $(id -u) == 0 ]] || {
    echo "chaos.sh needs root (network namespaces, nftables)" >&2
    exit 1
}
for tool in ip nft; do
    command -v "$tool" >/dev/null || {
        echo "chaos.sh needs $tool (apt-get install iproute2 nftables)" >&2
        exit 1
    }
done

cd "$(dirname "$0")/.."
CHAOS_ROUNDS=$ROUNDS CHAOS_CUT_SECS=$CUT_SECS \
    cargo test "${PROFILE[@]}" --test cluster_faults chaos -- \
    --ignored --exact --nocapture --test-threads 1
