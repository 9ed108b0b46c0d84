#!/usr/bin/env bash
# Guard: scripts/bolt.sh still makes an optimized steer that works and
# whose layout holds. bolt.sh fails when its training run loses a request;
# here the optimized binary serves the three scenarios of the instruction
# guard under callgrind (benches/instructions/compare.sh --steer-only,
# which fails on any failed request), and must miss the simulated
# first-level instruction cache per request at most half as often as the
# same code before BOLT under load (50 connections, 10 streams each over
# HTTP/2), and at most 0.75x as often one request at a time, whose waits
# and wakeups the layout helps less. At 9e4bb59: under load http1 592 ->
# 20, h2-tls 732 -> 207, h2-tls-h2c 1,022 -> 180; one at a time 1,285 ->
# 287, 2,859 -> 1,699, 4,124 -> 2,539 (BENCHMARKS.md, "Instruction-cache
# misses and atomics"). A guard on the layout, not on time: CPU time on
# this machine moves more between runs than the layout's 2-3.5 % of CPU.
#
# Needs bolt-19, valgrind and nghttp2-client; installs them with apt-get
# when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
need() { [ -x "$1" ] || command -v "$1" >/dev/null 2>&1; }
# shellcheck source=scripts/lib/apt.sh
. scripts/lib/apt.sh
if ! need "${LLVM_BOLT_DIR:-/usr/lib/llvm-19/bin}/llvm-bolt" || ! need valgrind || ! need h2load; then
  apt_install bolt-19 valgrind nghttp2-client
fi
bash scripts/bolt.sh target/bolt/steer

# A fixed cache model, the same on every host (callgrind would take the
# host's sizes otherwise): the 64 KiB 16-way instruction cache and 48 KiB
# data cache of the Xeon the numbers above come from. With a 32 KiB 8-way
# instruction cache a request's code does not fit even laid out (under
# load 0.47-0.52x), so this guards the layout, not a cache size.
MODEL="--I1=65536,16,64 --D1=49152,12,64 --LL=33554432,16,64"
measure() {  # binary, compare.sh flags -> "scenario I1-misses" lines
  STEER="$(realpath "$1")" CALLGRIND_ARGS="$MODEL" bash benches/instructions/compare.sh --steer-only --cache-sim "${@:2}" \
    2> >(grep -v '^sending command' >&2) | awk '{ print $1, $5 }'
}
# check MODE LIMIT FLAGS...: misses after / before, per scenario.
failed=0
check() {
  local mode="$1" limit="$2"
  shift 2
  before="$(measure target/bolt-build/release/steer "$@")"
  after="$(measure target/bolt/steer "$@")"
  python3 scripts/lib/ratio.py "bolt, $mode" "first-level instruction misses" "$limit" "$before" "$after" || failed=1
}
check "under load" 0.5 --requests 10000 --streams 50x10
check "one at a time" 0.75
exit "$failed"
