#!/usr/bin/env bash
# A resolver that never answers, with three upstream endpoints named by
# DNS: steer must start, answer `POST /reload` and apply an edit of its
# config (a cutover) within 10 s each, not wait glibc's 10 s per name in
# turn (30 s, 30 s and 60 s before src/dns.rs). Resolution is bounded at
# 6 s for all names at once, and the DNS refresh runs apart from reloads.
#
# Runs steer in its own mount and network namespaces (`unshare -mn`, needs
# root): loopback only, and /etc/resolv.conf bound over with one naming a
# UDP and TCP server on 127.0.0.1:53 that reads queries and never answers.
# Uses target/release/steer (built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ] || ! unshare -mn true 2>/dev/null; then
  echo "dns-outage: needs root and unshare -mn" >&2
  exit 1
fi
[ -x target/release/steer ] || cargo build --release --locked
export STEER="$PWD/target/release/steer"
LIMIT=10

if [ "${1:-}" != inner ]; then
  exec timeout 300 unshare -mn bash "$0" inner
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ip link set lo up
echo "nameserver 127.0.0.1" >"$work/resolv.conf"
mount --bind "$work/resolv.conf" /etc/resolv.conf

# The resolver: takes queries over UDP and TCP, answers none.
python3 - >"$work/dns.out" 2>&1 <<'EOF' &
import socket, threading
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 53))
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", 53))
tcp.listen(64)
held = []
def accept():
    while True:
        held.append(tcp.accept()[0])
threading.Thread(target=accept, daemon=True).start()
print("ready", flush=True)
while True:
    udp.recvfrom(4096)
EOF
pids+=($!)
for _ in $(seq 50); do grep -q ready "$work/dns.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$work/dns.out" || { echo "dns-outage: the silent resolver did not start" >&2; exit 1; }

"$STEER" demo-upstream blue 127.0.0.1:0 >"$work/up.addr" 2>/dev/null &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/up.addr" ] && break; sleep 0.1; done
up="$(head -1 "$work/up.addr")"

cat >"$work/routes.toml" <<EOT
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[upstreams.blue]
endpoints = ["$up"]
health = false

[upstreams.named]
endpoints = ["a.zitadel.example:8080", "b.zitadel.example:8080", "c.zitadel.example:8080"]
health = false

[[routes]]
name = "named"
path_prefix = "/named"
upstream = "named"

[[routes]]
name = "r"
upstream = "blue"
EOT

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
within() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$1" "$LIMIT"; }
failed=0
check() {
  local what="$1" took="$2"
  if within "$took"; then echo "dns-outage: $what took ${took} s"; else
    echo "dns-outage: FAIL: $what took ${took} s (limit ${LIMIT} s)"; failed=1; fi
}

start=$(now)
RUST_LOG=info "$STEER" run --config "$work/routes.toml" --workers 1 >"$work/steer.out" 2>&1 &
pids+=($!)
for _ in $(seq 600); do grep -q '"steer started"' "$work/steer.out" && break; sleep 0.1; done
check "start" "$(since "$start")"
admin="$(grep -o '"admin":"[^"]*"' "$work/steer.out" | head -1 | cut -d'"' -f4)"
[ -n "$admin" ] || { echo "dns-outage: steer did not start" >&2; cat "$work/steer.out" >&2; exit 1; }
version() { curl -s -m 5 "http://$admin/config" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])'; }

start=$(now)
curl -s -m 120 -o /dev/null -X POST "http://$admin/reload"
check "POST /reload" "$(since "$start")"

# A cutover: the file is edited, and the watcher, the poll or both pick it
# up while DNS rounds fail.
before="$(version)"
sed -i 's|^upstream = "blue"|upstream = "named"|; s|^name = "r"|name = "r2"|' "$work/routes.toml"
start=$(now)
for _ in $(seq 1200); do
  [ "$(version)" != "$before" ] && break
  sleep 0.1
done
check "an edit until it runs" "$(since "$start")"

# Requests are served meanwhile (the named upstream has no address: 503).
code="$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$(grep -o '"http":"[^"]*"' "$work/steer.out" | head -1 | cut -d'"' -f4)/x")"
echo "dns-outage: a request during the outage got $code"
[ "$code" = 503 ] || failed=1
grep -c "cannot resolve endpoint name" "$work/steer.out" | sed 's/^/dns-outage: resolve warnings logged: /'
exit "$failed"
