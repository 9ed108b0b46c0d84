#!/usr/bin/env bash
# Instructions per proxied request, steer against nginx and HAProxy, each
# under callgrind with one worker: the same requests (h2load, one
# connection, one request at a time) to the same upstream (`steer
# demo-upstream`, a 64-byte answer). User-space instructions only: the
# kernel's share (sockets, loopback) is not counted, and differs little
# between the three (benches/load/run.sh measures it as system CPU).
# Unlike CPU time on this shared machine, the counts repeat within ~1 %.
#
# Scenarios (as scripts/ci/instructions.sh):
#   http1      HTTP/1.1 in, HTTP/1.1 out
#   h2-tls     HTTP/2 over TLS in, HTTP/1.1 out
#   h2-tls-h2c HTTP/2 over TLS in, h2c out (nginx: grpc_pass, its only
#              HTTP/2 upstream module)
# Every proxy sets the same forwarding fields and X-Request-ID, access
# logs off (as benches/load/run.sh configures them, without the log).
#
# Usage: benches/instructions/compare.sh [--requests N] [--streams CxM] [--cache-sim [--branch-sim]] [--atomics] [--steer-only]
#   --streams CxM  C connections with M streams each over HTTP/2 (C
#                  connections over HTTP/1.1) instead of one request at a
#                  time: the working set of a loaded proxy
#   --cache-sim    callgrind's cache simulation too: first-level
#                  instruction and data misses and last-level misses
#                  (data and instructions) per request, a second table
#   --branch-sim   with --cache-sim: simulated branch mispredictions per
#                  request (conditional and indirect) in that table too
#   --atomics      locked (atomic read-modify-write) instructions per
#                  request too, in the proxy and its libraries, and the
#                  hot code: KiB of 64-byte code lines run in at least
#                  every other request, what a request needs of the
#                  instruction cache (benches/instructions/atomics.py;
#                  needs objdump)
#   --steer-only   steer alone (STEER=binary, target/release/steer by
#                  default): one line per scenario, the numbers only
# CALLGRIND_ARGS: more options for callgrind, e.g. a fixed cache model
# (--I1=32768,8,64) instead of this host's sizes.
# Needs valgrind, h2load, nginx and haproxy (apt-get install valgrind
# nghttp2-client nginx haproxy) and target/release/steer.
set -euo pipefail
cd "$(dirname "$0")/../.."
# CALLGRIND: the options the flags add to callgrind's command line.
REQUESTS=3000 CONNS=1 STREAMS=1 CALLGRIND=() CACHE_SIM=0 BRANCH_SIM=0 ATOMICS=0 STEER_ONLY=0
usage() { echo "usage: $0 [--requests N] [--streams CxM] [--cache-sim [--branch-sim]] [--atomics] [--steer-only]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) [ $# -ge 2 ] || usage; REQUESTS="$2"; shift 2 ;;
    --streams)
      [ $# -ge 2 ] || usage
      case "$2" in *x*) ;; *) usage ;; esac
      CONNS="${2%%x*}"; STREAMS="${2#*x}"; shift 2 ;;
    --cache-sim) CACHE_SIM=1; CALLGRIND+=(--cache-sim=yes); shift ;;
    --branch-sim) BRANCH_SIM=1; CALLGRIND+=(--branch-sim=yes); shift ;;
    # atomics.py reads the dump by instruction address, and with every
    # name in it: the dumps before the zeroing are deleted.
    --atomics) ATOMICS=1; CALLGRIND+=(--dump-instr=yes --compress-strings=no); shift ;;
    --steer-only) STEER_ONLY=1; shift ;;
    *) usage ;;
  esac
done
# Each a positive integer; h2load needs at least as many requests as
# connections.
for v in "$REQUESTS" "$CONNS" "$STREAMS"; do
  case "$v" in ''|*[!0-9]*|0*) usage ;; esac
done
[ "$REQUESTS" -ge "$CONNS" ] || usage
[ "$BRANCH_SIM" = 0 ] || [ "$CACHE_SIM" = 1 ] || usage
tools=(valgrind callgrind_control h2load openssl curl python3)
[ "$STEER_ONLY" = 1 ] || tools+=(nginx haproxy)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] \
    || { echo "compare.sh needs $tool" >&2; exit 2; }
done
STEER="${STEER:-$PWD/target/release/steer}"
[ -x "$STEER" ] || { echo "build first: cargo build --release --locked" >&2; exit 2; }
# shellcheck source=benches/load/one_route.sh
. benches/load/one_route.sh
# shellcheck source=benches/load/proxy_conf.sh
. benches/load/proxy_conf.sh
start_upstream "$STEER"

# count NAME URL [H2LOAD FLAGS]: the process under callgrind as NAME
# ($pid): warm up, zero the counters, send $REQUESTS requests, dump;
# prints instructions per request, locked instructions per request and
# hot code KiB ("- -" without --atomics), and with --cache-sim also
# first-level instruction,
# first-level data and last-level misses per request.
count() {
  local name="$1" url="$2" load=(-c "$CONNS")
  shift 2
  # Streams for HTTP/2 only: h2load's -m over HTTP/1.1 pipelines.
  [ "${1:-}" = --h1 ] || load+=(-m "$STREAMS")
  # Bounded: a proxy that stops answering fails the run, not hangs it.
  timeout 300 h2load "$@" "${load[@]}" -n $(( CONNS * STREAMS > 1 ? 2000 : 300 )) "$url" >/dev/null
  timeout 60 callgrind_control -z "$pid" >/dev/null
  timeout 900 h2load "$@" "${load[@]}" -n "$REQUESTS" "$url" >"$work/$name.h2load"
  grep -q " 0 failed, 0 errored" "$work/$name.h2load" || { cat "$work/$name.h2load" >&2; exit 1; }
  rm -f "$work/$name.out".*
  timeout 60 callgrind_control -d "$pid" >/dev/null
  # Dumps go to NAME.out.1, .2, ...: the one after the zeroing holds the
  # load alone. Its last line is written last.
  for _ in $(seq 100); do
    grep -qs '^totals:' "$work/$name.out".* && break
    sleep 0.1
  done
  # events: Ir [Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw] (--cache-sim)
  # [Bc Bcm Bi Bim] (--branch-sim)
  local atomics="- -"
  [ "$ATOMICS" = 0 ] || atomics="$(python3 benches/instructions/atomics.py "$REQUESTS" "$work/$name.out".*)"
  cat "$work/$name.out".* | sed -n 's/^summary: //p' | sort -n | tail -1 |
    # By the flags, not the field count: callgrind leaves out trailing
    # zero counts (no last-level write misses in a short run).
    awk -v n="$REQUESTS" -v a="$atomics" -v cache="$CACHE_SIM" -v branch="$BRANCH_SIM" '
      { printf "%d %s", $1 / n, a }
      cache == 1 { printf " %.1f %.1f %.1f", $4 / n, ($5 + $6) / n, ($7 + $8 + $9) / n }
      branch == 1 { printf " %.1f", ($11 + $13) / n } END { print "" }'
}

# wait_http URL: until it answers, valgrind starting slowly (60 s).
wait_http() {
  for _ in $(seq 600); do curl -kfs -o /dev/null --max-time 1 "$1" && return; sleep 0.1; done
  echo "no answer from $1" >&2
  exit 1
}

# callgrind_on NAME CMD...: CMD under callgrind, counters dumped to
# $work/NAME.out; sets $pid.
callgrind_on() {
  local name="$1"
  shift
  # shellcheck disable=SC2086  # CALLGRIND_ARGS: words for valgrind
  valgrind --tool=callgrind ${CALLGRIND_ARGS:-} "${CALLGRIND[@]}" --callgrind-out-file="$work/$name.out" "$@" \
    >"$work/$name.stdout" 2>"$work/$name.stderr" &
  pid=$!
  pids+=("$pid")
}

declare -A result
path="/demo/bytes?n=64"

# steer: one instance per scenario, as scripts/ci/instructions.sh.
steer_scenario() {  # scenario proto scheme
  local scenario="$1" proto="$2" scheme="$3" port
  TLS=1 PROTO="$proto" ACCESS=0 write_routes
  callgrind_on "steer-$scenario" "$STEER" run --config "$work/routes.toml" --workers 1
  wait_ready "$work/steer-$scenario.stderr" 600
  port="$http"
  [ "$scheme" = https ] && port="$https"
  local flags=()
  [ "$scheme" = http ] && flags=(--h1)
  result[steer,$scenario]="$(count "steer-$scenario" "$scheme://127.0.0.1:$port$path" "${flags[@]}")"
  stop "$pid" 60
}
steer_scenario http1 http1 http
steer_scenario h2-tls http1 https
steer_scenario h2-tls-h2c h2c https
if [ "$STEER_ONLY" = 1 ]; then
  # scenario, instructions, locked instructions, hot code KiB ("- -"
  # without --atomics)
  # [first-level instruction, first-level data and last-level misses
  # [branch mispredictions]], per request
  for s in http1 h2-tls h2-tls-h2c; do echo "$s ${result[steer,$s]}"; done
  exit 0
fi

# nginx and HAProxy: one process each; port A: HTTP/1.1 and TLS to the
# HTTP/1.1 upstream; port B: TLS to the same upstream over h2c.
cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"
ng_http="$(free_port)"; ng_tls="$(free_port)"; ng_h2c="$(free_port)"
mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<EOT
master_process off;
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1000; }
http {
  access_log off;
  keepalive_requests 10000000;
$(nginx_temp_paths "$work/nginx/tmp")
  ssl_certificate $work/cert.pem;
  ssl_certificate_key $work/key.pem;
  upstream up { server $up; keepalive 64; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$ng_http;
    listen 127.0.0.1:$ng_tls ssl http2;
    location / {
$(nginx_proxy_http1 up)
    }
  }
  server {
    listen 127.0.0.1:$ng_h2c ssl http2;
    location / {
      grpc_pass grpc://up;
$(nginx_forwarding grpc)
    }
  }
}
EOT
callgrind_on nginx nginx -p "$work/nginx/" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
wait_http "http://127.0.0.1:$ng_http$path"
result[nginx,http1]="$(count nginx "http://127.0.0.1:$ng_http$path" --h1)"
result[nginx,h2-tls]="$(count nginx "https://127.0.0.1:$ng_tls$path")"
result[nginx,h2-tls-h2c]="$(count nginx "https://127.0.0.1:$ng_h2c$path")"
stop "$pid" 60

hp_http="$(free_port)"; hp_tls="$(free_port)"; hp_h2c="$(free_port)"
cat >"$work/haproxy.cfg" <<EOT
global
  nbthread 1
  maxconn 1000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$hp_http
  bind 127.0.0.1:$hp_tls ssl crt $work/haproxy.pem alpn h2,http/1.1
  bind 127.0.0.1:$hp_h2c ssl crt $work/haproxy.pem alpn h2,http/1.1
$(haproxy_forwarding)
  use_backend be_h2c if { dst_port $hp_h2c }
  default_backend be
backend be
  http-reuse always
  server up $up
backend be_h2c
  http-reuse always
  server up_h2c $up proto h2
EOT
callgrind_on haproxy haproxy -db -f "$work/haproxy.cfg"
wait_http "http://127.0.0.1:$hp_http$path"
result[haproxy,http1]="$(count haproxy "http://127.0.0.1:$hp_http$path" --h1)"
result[haproxy,h2-tls]="$(count haproxy "https://127.0.0.1:$hp_tls$path")"
result[haproxy,h2-tls-h2c]="$(count haproxy "https://127.0.0.1:$hp_h2c$path")"
stop "$pid" 60

echo "instructions per request (h2load -c $CONNS, HTTP/2 -m $STREAMS, $REQUESTS requests)"
printf '%-12s %10s %10s %10s %14s %14s\n' scenario steer nginx haproxy steer/nginx steer/haproxy
for s in http1 h2-tls h2-tls-h2c; do
  read -r st _ <<<"${result[steer,$s]}"; read -r ng _ <<<"${result[nginx,$s]}"; read -r hp _ <<<"${result[haproxy,$s]}"
  printf '%-12s %10s %10s %10s %14s %14s\n' "$s" "$st" "$ng" "$hp" \
    "$(python3 -c "print(f'{$st / $ng:.2f}x')")" "$(python3 -c "print(f'{$st / $hp:.2f}x')")"
done
# table WIDTH CELL: a row per scenario, a column per proxy; CELL prints
# one cell from that proxy's fields after the instruction count, read
# into locked, hot, i1, d1, ll and bm.
table() {
  local width="$1" cell="$2" s px cells _ locked hot i1 d1 ll bm
  printf "%-12s %${width}s %${width}s %${width}s\n" scenario steer nginx haproxy
  for s in http1 h2-tls h2-tls-h2c; do
    cells=()
    for px in steer nginx haproxy; do
      read -r _ locked hot i1 d1 ll bm <<<"${result[$px,$s]}"
      cells+=("$("$cell")")
    done
    printf "%-12s %${width}s %${width}s %${width}s\n" "$s" "${cells[@]}"
  done
}
atomics_cell() { echo "$locked / $hot"; }
cache_cell() { echo "$i1 / $d1 / $ll${bm:+ / $bm}"; }
if [ "$ATOMICS" = 1 ]; then
  echo
  echo "locked (atomic read-modify-write) instructions per request / hot code in KiB (64-byte lines run in at least every other request)"
  table 16 atomics_cell
fi
[ "$CACHE_SIM" = 1 ] || exit 0
echo
echo "per request (callgrind's simulation): first-level instruction misses / first-level data misses / last-level misses [/ branch mispredictions]"
table 30 cache_cell
