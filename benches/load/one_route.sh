# Sourced by benches/load/ab.sh and scripts/ci/idle-memory.sh: a scratch
# directory and background processes cleaned up at exit, a `steer
# demo-upstream`, and a steer config with one route to it.

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_upstream CMD...: runs `CMD demo-upstream up 127.0.0.1:0` in the
# background (CMD: a steer binary, maybe behind taskset); sets $up.
start_upstream() {
  "$@" demo-upstream up 127.0.0.1:0 >"$work/up.addr" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/up.addr" ] && break; sleep 0.1; done
  up="$(head -1 "$work/up.addr")"
}

# write_routes: $work/routes.toml, listeners on free ports ($http,
# $admin), no access log, one route to $up over ${PROTO:-http1}.
write_routes() {
  http="$(free_port)"; admin="$(free_port)"
  cat >"$work/routes.toml" <<EOT
[listen]
http = "127.0.0.1:$http"
admin = "127.0.0.1:$admin"

[log]
access = false

[upstreams.up]
endpoints = ["$up"]
protocol = "${PROTO:-http1}"
health = false

[[routes]]
name = "r"
upstream = "up"
EOT
}

# wait_ready: until steer's admin API says ready (10 s at most).
wait_ready() {
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && return; sleep 0.1; done
}
