#!/usr/bin/env bash
# Instruction counts per proxied request (callgrind), compared with the
# committed baseline: CI fails when a scenario costs more than
# THRESHOLD_PERCENT (3 %) above it. Instructions, not seconds: repeatable on
# a noisy shared machine (the same binary and inputs give the same counts
# within a few hundred per request).
#
# Scenarios, each with one connection sending N requests one after another
# (h2load -c 1: no batching, so the count does not depend on timing), to a
# 64-byte answer from `steer demo-upstream`:
#   http1      HTTP/1.1 in, HTTP/1.1 out
#   h2-tls     HTTP/2 over TLS in, HTTP/1.1 out
#   h2-tls-h2c HTTP/2 over TLS in, h2c out (ZITADEL's shape)
#   http1-log  http1 with the JSON access log on (as benches/load/run.sh
#              runs every proxy)
#
# Usage: scripts/ci/instructions.sh [--update] [--requests N]
#   --update   write the measured counts as the new baseline
# Needs valgrind and h2load (nghttp2-client); installs them with apt-get
# when missing. Uses target/release/steer (built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASELINE=benches/instructions/baseline.txt
THRESHOLD_PERCENT=3
REQUESTS=3000
UPDATE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --update) UPDATE=1 ;;
    --requests) REQUESTS="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
need() { command -v "$1" >/dev/null 2>&1; }
# shellcheck source=scripts/lib/apt.sh
. scripts/lib/apt.sh
if ! need valgrind || ! need h2load; then
  apt_install valgrind nghttp2-client
fi
[ -x target/release/steer ] || cargo build --release --locked
STEER="${STEER:-$PWD/target/release/steer}"
# shellcheck source=benches/load/one_route.sh
. benches/load/one_route.sh

# The upstream (not measured): one demo deployment.
start_upstream "$STEER"

# One scenario: steer under callgrind, warmed up, counters zeroed, N
# requests, counters dumped; prints instructions per request.
measure() {
  local name="$1" protocol="$2" scheme="$3"
  local dir="$work/$name" tls=0 port
  mkdir -p "$dir"
  [ "$scheme" = https ] && tls=1
  ACCESS="${ACCESS:-0}" TLS="$tls" PROTO="$protocol" write_routes
  mv "$work/routes.toml" "$dir/routes.toml"
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$STEER" run --config "$dir/routes.toml" --workers 1 --log-format json \
    >/dev/null 2>"$dir/stderr" &
  local pid=$!
  pids+=("$pid")
  wait_ready "$dir/stderr" 600 # valgrind starts slowly
  port="$http"
  [ "$scheme" = https ] && port="$https"
  local url="$scheme://127.0.0.1:$port/demo/bytes?n=64"
  local flags=()
  [ "$scheme" = http ] && flags+=(--h1)
  h2load "${flags[@]}" -c 1 -n 300 "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  h2load "${flags[@]}" -c 1 -n "$REQUESTS" "$url" >"$dir/h2load" 
  grep -q " 0 failed, 0 errored" "$dir/h2load" || { cat "$dir/h2load" >&2; exit 1; }
  callgrind_control -d "$pid" >/dev/null
  stop "$pid" 60 # valgrind writes its last profile as steer exits
  # The dump after -z holds the load window only.
  local total
  total="$(cat "$dir"/callgrind.out* | sed -n 's/^summary: \([0-9]*\).*/\1/p' | sort -n | tail -1)"
  echo $(( total / REQUESTS ))
}

declare -A now
now[http1]="$(ACCESS=0 measure http1 http1 http)"
now[h2-tls]="$(ACCESS=0 measure h2-tls http1 https)"
now[h2-tls-h2c]="$(ACCESS=0 measure h2-tls-h2c h2c https)"
now[http1-log]="$(ACCESS=1 measure http1-log http1 http)"

if [ "$UPDATE" = 1 ]; then
  {
    echo "# Instructions per proxied request (scripts/ci/instructions.sh, $REQUESTS"
    echo "# requests over one connection, callgrind on target/release/steer"
    echo "# --workers 1). CI fails when a scenario exceeds its line by more"
    echo "# than $THRESHOLD_PERCENT %. Update with: scripts/ci/instructions.sh --update"
    for s in http1 h2-tls h2-tls-h2c http1-log; do echo "$s ${now[$s]}"; done
  } >"$BASELINE"
  echo "instructions: baseline written to $BASELINE"
  cat "$BASELINE"
  exit 0
fi

failed=0
printf '%-12s %12s %12s %8s\n' scenario baseline now change
while read -r s base; do
  case "$s" in ''|\#*) continue ;; esac
  n="${now[$s]:-0}"
  pct="$(python3 -c "print(f'{($n - $base) * 100 / $base:+.1f}%')")"
  printf '%-12s %12s %12s %8s\n' "$s" "$base" "$n" "$pct"
  if [ $(( n * 100 )) -gt $(( base * (100 + THRESHOLD_PERCENT) )) ]; then
    echo "instructions: $s costs more than $THRESHOLD_PERCENT % above the baseline" >&2
    failed=1
  fi
done <"$BASELINE"
[ "$failed" = 0 ] && echo "instructions: ok (within $THRESHOLD_PERCENT % of $BASELINE)"
exit "$failed"
