#!/usr/bin/env bash
# Guard: scripts/pgo.sh still makes an optimized steer that works and that
# the profile reached. pgo.sh fails when its training run loses a request;
# here the optimized binary serves the three scenarios of the instruction
# guard under callgrind (benches/instructions/compare.sh --steer-only,
# which fails on any failed request, one request at a time), and must run
# at most 0.9x the instructions per request of the plain release build of
# the same source. At 413b937: http1 28,495 -> 22,374, h2-tls 49,012 ->
# 37,164, h2-tls-h2c 68,282 -> 52,099 (0.76-0.79x; BENCHMARKS.md,
# "Profile-guided optimization"). A profile that matched nothing (a
# training run that ran other code, flags that did not reach the build)
# leaves the count where it was.
#
# Needs llvm-profdata, valgrind and nghttp2-client; installs them when
# missing: llvm-profdata from rustup's llvm-tools, or where rustup cannot
# fetch it, Debian's llvm-19 (its llvm-profdata reads the raw profiles of
# rustc 1.95's LLVM 22, and rustc reads what it writes: checked at
# 413b937 with the same instruction counts).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib/apt.sh
. scripts/lib/apt.sh
host="$(rustc -vV | sed -n 's/^host: //p')"
if [ -z "${LLVM_PROFDATA:-}" ] && [ ! -x "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" ] \
  && ! timeout 120 rustup component add llvm-tools; then
  [ -x /usr/lib/llvm-19/bin/llvm-profdata ] || apt_install llvm-19
  export LLVM_PROFDATA=/usr/lib/llvm-19/bin/llvm-profdata
fi
need() { command -v "$1" >/dev/null 2>&1; }
if ! need valgrind || ! need h2load; then
  apt_install valgrind nghttp2-client
fi
# The plain build of this source (a no-op when it is current).
cargo build --release --locked
bash scripts/pgo.sh target/pgo/steer

measure() {  # binary -> "scenario instructions" lines
  STEER="$(realpath "$1")" bash benches/instructions/compare.sh --steer-only \
    2> >(grep -v '^sending command' >&2) | awk '{ print $1, $2 }'
}
before="$(measure target/release/steer)"
after="$(measure target/pgo/steer)"
python3 scripts/lib/ratio.py pgo instructions 0.9 "$before" "$after"
