# Sourced by benches/load/ab.sh, benches/instructions/compare.sh,
# scripts/bolt.sh, scripts/pgo.sh, scripts/ci/idle-memory.sh and
# scripts/ci/instructions.sh: a scratch directory and background
# processes cleaned up at exit, a `steer demo-upstream`, and a steer
# config with one route to it.

work="$(mktemp -d)"
# wait_ready reads steer's "steer started" line, an info line.
export RUST_LOG=info
pids=()
# KEEP=1 keeps $work (callgrind output, logs) for a look afterwards.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
# stop PID [SECONDS]: SIGTERM, up to SECONDS (5) to exit, then SIGKILL;
# reaps it. Sets killed=1 if it took SIGKILL (a process killed so writes
# nothing at exit, such as an instrumented binary's profile), else 0.
stop() {
  killed=0
  kill "$1" 2>/dev/null || true
  for _ in $(seq $(( ${2:-5} * 10 ))); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$1" 2>/dev/null && killed=1
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
# free_port: a port free now, for programs that cannot report the one they
# bound (nginx, HAProxy in compare.sh); another process may take it before
# they bind. steer listens on port 0 and says which (wait_ready).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_upstream CMD...: runs `CMD demo-upstream up 127.0.0.1:0` in the
# background (CMD: a steer binary, maybe behind taskset); sets $up.
start_upstream() {
  "$@" demo-upstream up 127.0.0.1:0 >"$work/up.addr" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/up.addr" ] && break; sleep 0.1; done
  up="$(head -1 "$work/up.addr")"
  [ -n "$up" ] || { echo "steer demo-upstream did not start" >&2; exit 1; }
}

# write_routes: $work/routes.toml, listeners on port 0 (wait_ready learns
# the ports), one route to $up over ${PROTO:-http1}, no access log (with
# ACCESS=1 the JSON access log). With TLS=1 also an HTTPS listener with a
# self-signed certificate for localhost (needs openssl).
write_routes() {
  local https_listener="" certificates=""
  if [ "${TLS:-0}" = 1 ]; then
    # openssl's output is noise when it works; when it fails, say so (set -e
    # would end the caller without a word).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj /CN=localhost -addext subjectAltName=DNS:localhost \
      -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1 \
      || { echo "write_routes: TLS=1 needs openssl to make a certificate" >&2; exit 2; }
    https_listener='https = "127.0.0.1:0"'
    certificates="[[tls.certificates]]
cert = \"$work/cert.pem\"
key = \"$work/key.pem\""
  fi
  cat >"$work/routes.toml" <<EOT
[listen]
http = "127.0.0.1:0"
$https_listener
admin = "127.0.0.1:0"

# Stopped at once: nothing waits for traffic when a run ends. The
# connection cap set, not fitted to the open-files limit: idle-memory.sh
# holds 4,000 idle clients on one listener under ulimit -n 8192.
[proxy]
shutdown_delay = "0s"
drain_timeout = "0s"
max_connections = 10000

[log]
access = $([ "${ACCESS:-0}" = 1 ] && echo true || echo false)

$certificates

[upstreams.up]
endpoints = ["$up"]
protocol = "${PROTO:-http1}"
health = false

[[routes]]
name = "r"
upstream = "up"
EOT
}

# wait_ready LOG [TRIES]: until steer, logging (JSON, its default when
# not on a terminal) to LOG, says "steer started", which names the ports
# it bound ($http, $https, $admin); then until its admin API says ready.
# Polled every 0.1 s, TRIES times each (100: 10 s); fails the script when
# either never comes.
wait_ready() {
  local log="$1" tries="${2:-100}" line=""
  for _ in $(seq "$tries"); do
    line="$(grep -m1 '"message":"steer started"' "$log" 2>/dev/null || true)"
    [ -n "$line" ] && break
    sleep 0.1
  done
  [ -n "$line" ] || { echo "steer did not start (log: $log)" >&2; tail -5 "$log" >&2; exit 1; }
  field() { echo "$line" | sed -n "s/.*\"$1\":\"127\.0\.0\.1:\([0-9]*\)\".*/\1/p"; }
  http="$(field http)"; https="$(field https)"; admin="$(field admin)"
  for _ in $(seq "$tries"); do
    curl -fs --max-time 1 "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "steer did not become ready on 127.0.0.1:$admin" >&2
  exit 1
}
