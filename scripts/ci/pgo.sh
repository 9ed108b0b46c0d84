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
# Needs rustup's llvm-tools, valgrind and nghttp2-client; installs them
# when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
host="$(rustc -vV | sed -n 's/^host: //p')"
[ -n "${LLVM_PROFDATA:-}" ] || [ -x "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" ] \
  || rustup component add llvm-tools
need() { command -v "$1" >/dev/null 2>&1; }
if ! need valgrind || ! need h2load; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind nghttp2-client >/dev/null
fi
bash scripts/pgo.sh target/pgo/steer

measure() {  # binary -> "scenario instructions" lines
  STEER="$(realpath "$1")" bash benches/instructions/compare.sh --steer-only \
    2> >(grep -v '^sending command' >&2) | awk '{ print $1, $2 }'
}
python3 scripts/lib/ratio.py pgo instructions 0.9 "$(measure target/release/steer)" "$(measure target/pgo/steer)"
