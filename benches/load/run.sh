#!/usr/bin/env bash
# Side-by-side load benchmark: steer vs. nginx vs. HAProxy on loopback.
#
#   bash benches/load/run.sh [--rounds N] [--seconds S] [--quick]
#                            [--idle-conns N] [--idle-kinds plain,tls,h2]
#                            [--scenarios a,b,c,d,e]
#
# One upstream (nginx, fixed 100-byte body, CPU 1) behind three proxies
# (CPU 0, one worker/thread each, access logs on). Scenarios, each in
# interleaved rounds (nginx, haproxy, steer, nginx, haproxy, steer, ...):
#   a  HTTP/1.1 keep-alive, wrk -t1 -c50
#   b  HTTP/2 over TLS, h2load -c50 -m10 (HTTP/1.1 upstream)
#   c  1 connection, everything on CPU 0: added latency vs. the upstream
#   d  idle keep-alive client connections: RSS per connection, for each
#      kind in --idle-kinds (plain HTTP/1.1 by default; tls: HTTP/1.1
#      over TLS; h2: HTTP/2 over TLS)
#   e  HTTP/2 over TLS in, h2c out (ZITADEL's shape), h2load -c50 -m10
#      at /h2c/, which each proxy sends to the upstream's h2c port
#      (nginx with grpc_pass, its only HTTP/2 upstream module)
# Proxy CPU = utime+stime from /proc/PID/stat over the run / requests.
# Prints Markdown tables (medians over rounds, ratios other/steer) and
# writes them to benches/load/results-<date>.md. See README.md here.
# STEER=binary measures another steer build than target/release/steer
# (the BOLT build of scripts/bolt.sh, say).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=benches/load/upstream.sh
. "$HERE/upstream.sh"
# shellcheck source=benches/load/proxy_conf.sh
. "$HERE/proxy_conf.sh"
REPO="$(cd "$HERE/../.." && pwd)"

ROUNDS=3 SECONDS_=10 IDLE_CONNS=8000 IDLE_HOLD=3 IDLE_KINDS=plain SCENARIOS="a,b,c,d,e"
QUICK=0 ROUNDS_SET="" SECONDS_SET=""
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS_SET="$2"; shift 2 ;;
    --seconds) SECONDS_SET="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --idle-conns) IDLE_CONNS="$2"; shift 2 ;;
    --idle-kinds) IDLE_KINDS="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 1 ;;
  esac
done
if [ "$QUICK" = 1 ]; then ROUNDS=1 SECONDS_=5; fi
[ -n "$ROUNDS_SET" ] && ROUNDS="$ROUNDS_SET"
[ -n "$SECONDS_SET" ] && SECONDS_="$SECONDS_SET"
case "$ROUNDS$SECONDS_$IDLE_CONNS" in *[!0-9]*) echo "run.sh: --rounds, --seconds and --idle-conns take integers" >&2; exit 1 ;; esac
[ "$ROUNDS" -ge 1 ] && [ "$SECONDS_" -ge 1 ] || { echo "run.sh: --rounds and --seconds must be >= 1" >&2; exit 1; }
for kind in ${IDLE_KINDS//,/ }; do
  case "$kind" in plain|tls|h2) ;; *) echo "run.sh: --idle-kinds takes plain, tls and h2" >&2; exit 1 ;; esac
done
has() { case ",$SCENARIOS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

BASE="${LOAD_BASE_PORT:-18080}"
PORT_UP=$BASE
PORT_UP_H2C=$((BASE + 4))
declare -A HTTP_PORT=([nginx]=$((BASE + 1)) [haproxy]=$((BASE + 2)) [steer]=$((BASE + 3)))
declare -A TLS_PORT=([nginx]=$((BASE + 11)) [haproxy]=$((BASE + 12)) [steer]=$((BASE + 13)))
PORT_ADMIN=$((BASE + 20))
PROXIES=(nginx haproxy steer)
# steer builds a multi-thread tokio runtime (src/main.rs) with one worker
# per CPU by default; `--workers 1` runs it on one thread (a current-thread runtime), like one nginx worker.
# worker thread like the others. Override with STEER_WORKER_THREADS.
STEER_THREADS="${STEER_WORKER_THREADS:-1}"
# nginx keeps at most this many idle upstream connections (the brief's 64).
# Under h2load -c50 -m10 (500 requests in flight) nginx then opens and
# closes upstream connections all the time; see README.md.
NGINX_KEEPALIVE="${NGINX_UPSTREAM_KEEPALIVE:-64}"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------ packages
need_pkgs=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v h2load >/dev/null || need_pkgs+=(nghttp2-client)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]} (apt-get)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"
# Debian starts the packaged services when it can; this benchmark runs its
# own instances on its own ports and leaves those alone.

ncpu=$(nproc --all)
[ "$ncpu" -ge 2 ] || die "needs at least 2 CPUs (proxy on CPU 0, load on CPU 1); this machine has $ncpu"
CLK_TCK=$(getconf CLK_TCK)

# ------------------------------------------------------------ steer binary
STEER_SRC="${STEER:-$REPO/target/release/steer}"
[ -n "${STEER:-}" ] && [ ! -x "$STEER_SRC" ] && die "STEER=$STEER is not an executable"
if [ ! -x "$STEER_SRC" ]; then
  log "no $STEER_SRC: building it (cargo build --release --locked)"
  (cd "$REPO" && cargo build --release --locked)
fi

# ------------------------------------------------------------ limits, ports
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((IDLE_CONNS * 2 + 1000)) ]; then
  new=$(( (NOFILE - 1000) / 2 ))
  log "open-file limit $NOFILE is too low for $IDLE_CONNS idle connections; using $new"
  IDLE_CONNS=$new
fi
for p in $PORT_UP $PORT_UP_H2C "${HTTP_PORT[@]}" "${TLS_PORT[@]}" $PORT_ADMIN; do
  if ss -Htln "sport = :$p" | grep -q .; then die "port $p is in use (set LOAD_BASE_PORT to move the block $BASE..$((BASE + 20)))"; fi
done

# ------------------------------------------------------------ work dir, cleanup
WORK="$(mktemp -d /tmp/steer-load.XXXXXX)"
chmod 755 "$WORK"
STARTED=()  # PIDs this script started (only these are ever signalled)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP_WORK:-}" ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cp "$STEER_SRC" "$WORK/steer"   # a rebuild during the run cannot swap it
STEER_BIN="$WORK/steer"
RAW="$WORK/raw.jsonl"; : > "$RAW"

# ------------------------------------------------------------ TLS certificate
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 30 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" > "$WORK/haproxy.pem"
chmod 644 "$WORK"/*.pem


# ------------------------------------------------------------ configs
mkdir -p "$WORK/up" "$WORK/nginx" "$WORK/haproxy" "$WORK/steer-conf"
upstream_conf "$WORK/up" "$PORT_UP" "$PORT_UP_H2C"

cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 10000; }
http {
  access_log $WORK/nginx/access.log combined buffer=64k;
  keepalive_timeout 75s;
  keepalive_requests 10000000;
$(nginx_temp_paths $WORK/nginx/tmp)
  upstream up {
    server 127.0.0.1:$PORT_UP;
    keepalive $NGINX_KEEPALIVE;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
  }
  upstream up_h2c {
    server 127.0.0.1:$PORT_UP_H2C;
    keepalive $NGINX_KEEPALIVE;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:${HTTP_PORT[nginx]} backlog=4096;
    listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2 backlog=4096;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
$(nginx_proxy_http1 up)
    }
    location /h2c/ {
      grpc_pass grpc://up_h2c;
$(nginx_forwarding grpc)
    }
  }
}
EOF

cat > "$WORK/haproxy/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9500
  log stdout format raw local0
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  log global
  option httplog
  maxconn 9500
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-request 30s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:${HTTP_PORT[haproxy]}
  bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $WORK/haproxy.pem alpn h2,http/1.1
$(haproxy_forwarding)
  use_backend be_h2c if { path_beg /h2c/ }
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$PORT_UP
backend be_h2c
  http-reuse always
  server up_h2c 127.0.0.1:$PORT_UP_H2C proto h2
EOF

cp "$WORK/cert.pem" "$WORK/key.pem" "$WORK/steer-conf/"
cat > "$WORK/steer-conf/routes.toml" <<EOF
[listen]
http  = "127.0.0.1:${HTTP_PORT[steer]}"
https = "127.0.0.1:${TLS_PORT[steer]}"
admin = "127.0.0.1:$PORT_ADMIN"

[[tls.certificates]]
cert = "cert.pem"
key  = "key.pem"

[proxy]
shutdown_delay = "0s"
drain_timeout  = "0s"
max_connections = 10000   # as nginx's worker_connections and HAProxy's maxconn here

[log]
access = true

[upstreams.up]
endpoints = ["127.0.0.1:$PORT_UP"]
protocol  = "http1"
health    = false     # like nginx and HAProxy here: no active checks

[upstreams.up_h2c]
endpoints = ["127.0.0.1:$PORT_UP_H2C"]
protocol  = "h2c"
health    = false

[[routes]]
name = "h2c"
path_prefix = "/h2c/"
upstream = "up_h2c"

[[routes]]
name = "all"
upstream = "up"
EOF
"$STEER_BIN" check "$WORK/steer-conf/routes.toml" >/dev/null 2>"$WORK/steer-check.err" \
  || { cat "$WORK/steer-check.err" >&2; die "steer check failed on the generated config"; }

# ------------------------------------------------------------ process control
declare -A PIDS MAIN
wait_http() {  # port [scheme]
  local url="${2:-http}://127.0.0.1:$1/"
  for _ in $(seq 100); do
    if [ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" = 200 ]; then return 0; fi
    sleep 0.1
  done
  return 1
}
children() { pgrep -P "$1" | tr '\n' ' '; }
# The commit the work tree is at, and whether it has changes not in it
# (a build of uncommitted code must not be reported as the commit's).
work_tree() {
  local head; head=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  if [ -n "$(cd "$REPO" && git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    echo "$head, with uncommitted changes"
  else
    echo "$head"
  fi
}

start_upstream() {
  mkdir -p "$WORK/up/tmp"
  taskset -c 1 nginx -p "$WORK/up/" -e "$WORK/up/error.log" -c "$WORK/up/nginx.conf" -g 'daemon off;' &
  UP_PID=$!; STARTED+=("$UP_PID")
  wait_http $PORT_UP || die "upstream nginx did not answer on $PORT_UP: $(tail -3 "$WORK/up/error.log")"
  UP_PIDS="$UP_PID $(children "$UP_PID")"
}

start_proxy() {  # name
  case "$1" in
    nginx)
      mkdir -p "$WORK/nginx/tmp"
      taskset -c 0 nginx -p "$WORK/nginx/" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
      local pid=$!; STARTED+=("$pid")
      wait_http "${HTTP_PORT[nginx]}" || die "nginx did not start: $(tail -3 "$WORK/nginx/error.log")"
      local w; w=$(children "$pid")
      PIDS[nginx]="$pid $w"; MAIN[nginx]="${w%% *}"   # RSS: the worker that serves
      ;;
    haproxy)
      taskset -c 0 haproxy -db -f "$WORK/haproxy/haproxy.cfg" >/dev/null 2>"$WORK/haproxy/stderr.log" &
      local pid=$!; STARTED+=("$pid")
      wait_http "${HTTP_PORT[haproxy]}" || die "haproxy did not start: $(tail -3 "$WORK/haproxy/stderr.log")"
      PIDS[haproxy]="$pid"; MAIN[haproxy]="$pid"
      ;;
    steer)
      RUST_LOG=info taskset -c 0 "$STEER_BIN" run --workers "$STEER_THREADS" --log-format json \
        --config "$WORK/steer-conf/routes.toml" 2>/dev/null >/dev/null &
      local pid=$!; STARTED+=("$pid")
      wait_http "${HTTP_PORT[steer]}" || die "steer did not start (try: $STEER_BIN check $WORK/steer-conf/routes.toml)"
      PIDS[steer]="$pid"; MAIN[steer]="$pid"
      ;;
  esac
  wait_http "${TLS_PORT[$1]}" https || die "$1 does not answer on https port ${TLS_PORT[$1]}"
}

stop_proxy() {  # name
  local pid="${PIDS[$1]%% *}"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${STARTED[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}

pin() {  # cpu pid...
  local cpu=$1; shift
  for p in "$@"; do taskset -a -p -c "$cpu" "$p" >/dev/null; done
}

# ------------------------------------------------------------ measurement
measure() {  # scenario round proxy kind timeout -- cmd...
  local sc=$1 rnd=$2 px=$3 kind=$4 to=$5; shift 5
  local pids="" rss=0
  if [ "$px" != direct ]; then pids=$(echo ${PIDS[$px]} | tr ' ' ','); rss=${MAIN[$px]}; fi
  # On CPU 1, with the load: its RSS sampler must not take the proxies' CPU.
  taskset -c 1 python3 "$HERE/bench.py" measure --out "$RAW" --pids "$pids" --rss-pid "$rss" --up-pids "$(echo $UP_PIDS | tr ' ' ',')" \
    --kind "$kind" --h2log "$WORK/h2load.log" --timeout "$to" \
    --meta scenario="$sc" --meta round="$rnd" --meta proxy="$px" --meta rustc="$(rustc_running)" "$@"
  # keep nginx's access log from filling the disk between runs
  : > "$WORK/nginx/access.log"
}

TO=$((SECONDS_ + 60))
WRK_A() { echo taskset -c 1 timeout -k 5 $TO wrk -t1 -c50 -d"${SECONDS_}s" --latency "http://127.0.0.1:$1/"; }

log "work dir $WORK; steer $("$STEER_BIN" --version) (worker threads: $STEER_THREADS), $(nginx -v 2>&1), $(haproxy -v | head -1 | cut -d' ' -f1-3)"
log "rounds=$ROUNDS seconds=$SECONDS_ scenarios=$SCENARIOS idle-conns=$IDLE_CONNS; load $(cut -d' ' -f1-3 /proc/loadavg)"
start_upstream
for px in "${PROXIES[@]}"; do start_proxy "$px"; done
log "started: upstream ${UP_PIDS}; nginx ${PIDS[nginx]}; haproxy ${PIDS[haproxy]}; steer ${PIDS[steer]} ($(ls /proc/${PIDS[steer]}/task | wc -l) threads)"

# Quick functional check: each proxy answers 200 with the 100-byte body, over h1 and h2+TLS.
for px in "${PROXIES[@]}"; do
  n=$(curl -s --max-time 2 "http://127.0.0.1:${HTTP_PORT[$px]}/" | wc -c)
  v=$(curl -sk --http2 --max-time 2 -o /dev/null -w '%{http_version}' "https://127.0.0.1:${TLS_PORT[$px]}/")
  [ "$n" = 100 ] || die "$px returned $n bytes instead of 100"
  [ "$v" = 2 ] || die "$px did not speak HTTP/2 over TLS (got HTTP/$v)"
  h=$(curl -sk --http2 --max-time 2 -D - -o /dev/null "https://127.0.0.1:${TLS_PORT[$px]}/h2c/" | tr -d '\r' | grep -i '^x-upstream:' || true)
  [ "${h,,}" = "x-upstream: h2c" ] || die "$px did not send /h2c/ to the upstream's h2c port (got '${h}')"
done

rustc_running() { pgrep -x rustc >/dev/null 2>&1 && echo yes || echo no; }
NOISY=0 TOTAL_RUNS=0
note_noise() { TOTAL_RUNS=$((TOTAL_RUNS + 1)); [ "$(rustc_running)" = yes ] && NOISY=$((NOISY + 1)); return 0; }

# (a) HTTP/1.1 keep-alive
if has a; then
  log "scenario a: HTTP/1.1 keep-alive, wrk -t1 -c50, ${SECONDS_}s x $ROUNDS rounds"
  for px in "${PROXIES[@]}"; do taskset -c 1 timeout 10 wrk -t1 -c50 -d2s "http://127.0.0.1:${HTTP_PORT[$px]}/" >/dev/null; done
  for r in $(seq "$ROUNDS"); do
    for px in "${PROXIES[@]}"; do
      note_noise; measure a "$r" "$px" wrk $((TO + 10)) -- $(WRK_A "${HTTP_PORT[$px]}")
    done
  done
fi

# h2load over TLS against each proxy at PATH: scenarios b and e.
h2_scenario() {  # scenario path
  local sc=$1 path=$2 px r
  for px in "${PROXIES[@]}"; do
    taskset -c 1 timeout 10 h2load -c50 -m10 -D 2 --tls13-ciphers=TLS_AES_128_GCM_SHA256 "https://127.0.0.1:${TLS_PORT[$px]}$path" >/dev/null 2>&1 || true
  done
  for r in $(seq "$ROUNDS"); do
    for px in "${PROXIES[@]}"; do
      note_noise
      measure "$sc" "$r" "$px" h2load $((TO + 10)) -- taskset -c 1 timeout -k 5 $TO \
        h2load -c50 -m10 -D "$SECONDS_" --tls13-ciphers=TLS_AES_128_GCM_SHA256 --log-file="$WORK/h2load.log" "https://127.0.0.1:${TLS_PORT[$px]}$path"
    done
  done
  rm -f "$WORK/h2load.log"
}

# (b) HTTP/2 over TLS
if has b; then
  log "scenario b: HTTP/2 over TLS, h2load -c50 -m10, ${SECONDS_}s x $ROUNDS rounds"
  h2_scenario b /
fi

# (e) HTTP/2 over TLS in, h2c out
if has e; then
  log "scenario e: HTTP/2 over TLS in, h2c out, h2load -c50 -m10, ${SECONDS_}s x $ROUNDS rounds"
  h2_scenario e /h2c/
fi

# (c) 1 connection, everything on CPU 0
if has c; then
  log "scenario c: wrk -t1 -c1, everything on CPU 0, ${SECONDS_}s x $ROUNDS rounds (direct, nginx, haproxy, steer)"
  pin 0 $UP_PIDS
  targets=(direct "${PROXIES[@]}")
  port_of() { if [ "$1" = direct ]; then echo $PORT_UP; else echo "${HTTP_PORT[$1]}"; fi; }
  for t in "${targets[@]}"; do taskset -c 0 timeout 10 wrk -t1 -c1 -d1s "http://127.0.0.1:$(port_of "$t")/" >/dev/null; done
  for r in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
      note_noise
      measure c "$r" "$t" wrk $((TO + 10)) -- taskset -c 0 timeout -k 5 $TO \
        wrk -t1 -c1 -d"${SECONDS_}s" --latency "http://127.0.0.1:$(port_of "$t")/"
    done
  done
  pin 1 $UP_PIDS
fi

# (d) idle keep-alive connections
if has d; then
  log "scenario d: $IDLE_CONNS idle keep-alive connections per proxy ($IDLE_KINDS), $ROUNDS rounds, fresh proxy each time"
  for kind in ${IDLE_KINDS//,/ }; do
  # steer gives an idle TLS connection's buffers back (rustls's, and
  # h2's over HTTP/2) within two idle ticks of its last request (5-10 s
  # at the default idle_timeout): held 12 s at least. Opening 8,000 TLS
  # connections takes 15-18 s here, so the first HTTP/2 ones see steer's
  # 30 s keep-alive PING (which takes the buffers again) only after the
  # count.
  hold=$IDLE_HOLD
  [ "$kind" != plain ] && hold=$(( IDLE_HOLD > 12 ? IDLE_HOLD : 12 ))
  for r in $(seq "$ROUNDS"); do
    for px in "${PROXIES[@]}"; do
      stop_proxy "$px"; start_proxy "$px"
      port="${HTTP_PORT[$px]}"
      case "$kind" in tls|h2) port="${TLS_PORT[$px]}" ;; esac
      curl -s -o /dev/null --max-time 2 "http://127.0.0.1:${HTTP_PORT[$px]}/"
      sleep 1
      note_noise
      taskset -c 1 timeout -k 5 180 python3 "$HERE/idle_conns.py" --port "$port" --kind "$kind" \
        --pid "${MAIN[$px]}" --conns "$IDLE_CONNS" --hold "$hold" --deadline 120 --out "$RAW" \
        --meta scenario=d --meta round="$r" --meta proxy="$px" --meta rustc="$(rustc_running)" || log "idle run failed for $px ($kind)"
    done
  done
  done
fi

# ------------------------------------------------------------ report
DATE=$(date +%Y-%m-%d-%H%M)
RESULTS="$HERE/results-$DATE.md"
cat > "$WORK/meta.json" <<EOF
{"rounds": $ROUNDS, "seconds": $SECONDS_, "idle_conns": $IDLE_CONNS, "idle_hold": $IDLE_HOLD,
 "order_c": ["direct", "nginx", "haproxy", "steer"]}
EOF
{
  echo "# steer vs. nginx vs. HAProxy — load benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Command: \`bash benches/load/run.sh --rounds $ROUNDS --seconds $SECONDS_$( [ "$IDLE_CONNS" != 8000 ] && echo " --idle-conns $IDLE_CONNS")$( [ "$IDLE_KINDS" != plain ] && echo " --idle-kinds $IDLE_KINDS")$( [ "$SCENARIOS" != a,b,c,d,e ] && echo " --scenarios $SCENARIOS")\`"
  echo
  echo "- steer: $("$STEER_BIN" --version) (binary ${STEER_SRC#"$REPO"/} built $(date -u -r "$STEER_SRC" '+%Y-%m-%d %H:%M UTC'); work tree at commit $(work_tree)), --workers $STEER_THREADS, access log on (JSON to /dev/null)"
  echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //'): 1 worker, upstream keepalive $NGINX_KEEPALIVE, access log on (file, buffer=64k)"
  echo "- $(haproxy -v | head -1 | cut -d' ' -f1-3): nbthread 1, http-reuse always, option httplog to stdout (/dev/null)"
  echo "- $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(h2load --version | head -1); upstream: nginx, 1 worker, 100-byte body"
  echo "- machine: $(nproc --all) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), CLK_TCK=$CLK_TCK"
  echo "- proxies on CPU 0, load generator and upstream on CPU 1 (scenario c: everything on CPU 0)"
  echo "- a Rust compiler (rustc) was running at the start of $NOISY of $TOTAL_RUNS runs: numbers from such runs are disturbed"
  echo
  python3 "$HERE/bench.py" report "$RAW" "$WORK/meta.json"
  echo
  echo "<details><summary>Raw per-run data (JSON lines)</summary>"
  echo
  echo '```'
  cat "$RAW"
  echo '```'
  echo "</details>"
} > "$RESULTS"
echo
sed -n '/^<details>/q;p' "$RESULTS"
log "written to $RESULTS"
