#!/usr/bin/env bash
# Interleaved A/B of two steer binaries: CPU per proxied request (user +
# system time of the steer process, from /proc/PID/stat), user time alone,
# minor page faults per request and req/s, round by round (A, B, A, B, ...),
# then the mean of each. For changes whose instruction count (callgrind,
# scripts/ci/instructions.sh) does not tell the whole story: kernel time,
# page faults and wakeups under concurrency.
#
#   bash benches/load/ab.sh A_BINARY B_BINARY ROUNDS [h2load arguments]
#   e.g. bash benches/load/ab.sh /tmp/old/steer target/release/steer 5 --h1 -c 50 -n 150000
#
# steer (`--workers 1`) on CPU 0; h2load and the upstream (`steer
# demo-upstream`, 64-byte answers) on CPU 1. PROTO=h2c makes the upstream
# h2c (default http1); TLS=1 sends the load over TLS (h2load negotiates
# HTTP/2 by ALPN unless told --h1; needs openssl). Needs h2load
# (nghttp2-client), taskset, curl.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
A="$(realpath "$1")"; B="$(realpath "$2")"; ROUNDS="$3"; shift 3
[ $# -gt 0 ] || set -- --h1 -c 50 -n 150000
# shellcheck source=benches/load/one_route.sh
. "$(dirname "$0")/one_route.sh"
stat_field() { awk -v f="$2" '{print $f}' "/proc/$1/stat"; }

start_upstream taskset -c 1 "$B"
write_routes
tck="$(getconf CLK_TCK)"
for r in $(seq "$ROUNDS"); do
  for which in A B; do
    bin="$A"; [ "$which" = B ] && bin="$B"
    # A log per run: wait_ready must not read an earlier run's ports.
    log="$work/steer-$r-$which.log"
    taskset -c 0 "$bin" run --config "$work/routes.toml" --workers 1 >/dev/null 2>"$log" &
    pid=$!
    wait_ready "$log"
    url="http://127.0.0.1:$http/demo/bytes?n=64"
    [ "${TLS:-0}" = 1 ] && url="https://127.0.0.1:$https/demo/bytes?n=64"
    taskset -c 1 h2load "$@" -n 5000 "$url" >/dev/null
    cpu0=$(( $(stat_field "$pid" 14) + $(stat_field "$pid" 15) )); user0=$(stat_field "$pid" 14); flt0=$(stat_field "$pid" 10)
    out="$(taskset -c 1 h2load "$@" "$url")"
    cpu1=$(( $(stat_field "$pid" 14) + $(stat_field "$pid" 15) )); user1=$(stat_field "$pid" 14); flt1=$(stat_field "$pid" 10)
    n="$(echo "$out" | sed -n 's/^requests: \([0-9]*\) total.*/\1/p')"
    rps="$(echo "$out" | sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')"
    python3 -c "print(f'round $r $which cpu_us_per_req={($cpu1-$cpu0)/$tck*1e6/$n:.2f} user_us_per_req={($user1-$user0)/$tck*1e6/$n:.2f} minflt_per_req={($flt1-$flt0)/$n:.3f} req_s=$rps')"
    stop "$pid"
  done
done | tee "$work/rounds"
awk '{split($4,c,"="); split($5,u,"="); s[$3]+=c[2]; su[$3]+=u[2]; n[$3]++}
  END {for (k in s) printf "%s mean: cpu_us_per_req=%.2f user_us_per_req=%.2f (%d rounds)\n", k, s[k]/n[k], su[k]/n[k], n[k]}' "$work/rounds" | sort
