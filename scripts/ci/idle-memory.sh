#!/usr/bin/env bash
# Guard: memory per idle keep-alive connection. steer (one worker) behind
# 4,000 connections of one kind that each made one request and then went
# quiet; fails when they hold more than the kind's limit each (RSS with
# them open minus RSS before, over the count). A fresh steer per kind.
# 4,000, not 2,000: the runtime's and allocator's growth that does not
# scale with the count (~0.6 MiB) is ~0.15 KiB of each connection's share
# at 4,000 but ~0.3 at 2,000, enough to move plain connections across
# their limit with nothing in them changed (BENCHMARKS.md, "Memory").
# CONNS=N to change the count.
#
#   kind   limit  measured  what an idle connection holds
#   plain  2.0    1.8       its task, the boxed HTTP/1.1 serve future
#                           (socket, context, the wait), the socket's
#                           registration and timer; no buffer
#                           (src/server/park.rs, LIFECYCLE.md item 19).
#                           3.5 when the request path's state was kept
#                           inline, 5.0 with hyper's path, 7.6 when the
#                           read buffer was kept.
#   tls    6.5    5.6       the same and the rustls session (boxed once:
#                           keys, state). Its buffers go back within two
#                           idle ticks of the last request (5-10 s at the
#                           default idle_timeout; vendor/rustls/STEER.md),
#                           so these connections are held 12 s, not 3,
#                           before the count. 9.5 while rustls kept them,
#                           17.4 when the session was copied into each
#                           future it passed through.
#   h2     12.0   9.5       the h2 crate's connection, steer's connection
#                           state (a 1.6 KB future; the handshake's is
#                           freed before, src/server/h2.rs `start`) and
#                           the rustls session. h2's codec, HPACK and
#                           stream-slab buffers and rustls's go back as
#                           over HTTP/1.1 (vendor/h2/STEER.md,
#                           vendor/rustls/STEER.md).
#                           19.5-20.0 while the connection's future kept room
#                           for the handshake (3.6 KB; mimalloc kept far
#                           more than those bytes, BENCHMARKS.md),
#                           24.2 while only h2's codec buffers went back,
#                           32.6 while h2 kept them, 37.8 with the start
#                           state kept.
#
#   bash scripts/ci/idle-memory.sh [STEER_BINARY]
#   KINDS="plain tls" to measure some kinds only; LIMIT_PLAIN_KIB,
#   LIMIT_TLS_KIB, LIMIT_H2_KIB to change a limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEER="${1:-target/release/steer}"
KINDS="${KINDS:-plain tls h2}"
CONNS="${CONNS:-4000}"
declare -A LIMIT_KIB=([plain]=${LIMIT_PLAIN_KIB:-2.0} [tls]=${LIMIT_TLS_KIB:-6.5} [h2]=${LIMIT_H2_KIB:-12.0})
declare -A HOLD_S=([plain]=3 [tls]=12 [h2]=12)
for kind in $KINDS; do
  [ -n "${LIMIT_KIB[$kind]:-}" ] || { echo "idle-memory: unknown kind '$kind' (plain, tls or h2)" >&2; exit 2; }
done
[ -x "$STEER" ] || cargo build --release --locked
STEER="$(realpath "$STEER")"
# shellcheck source=benches/load/one_route.sh
. benches/load/one_route.sh
ulimit -n 8192 2>/dev/null || true
start_upstream "$STEER"
TLS=1 write_routes

failed=0
for kind in $KINDS; do
  "$STEER" run --config "$work/routes.toml" --workers 1 >"$work/steer-$kind.log" 2>&1 &
  pid=$!
  pids+=($pid)
  wait_ready "$work/steer-$kind.log"
  port="$http"
  case "$kind" in tls | h2) port="$https" ;; esac
  rm -f "$work/idle.jsonl"
  python3 benches/load/idle_conns.py --port "$port" --pid "$pid" --conns "$CONNS" --hold "${HOLD_S[$kind]}" \
    --kind "$kind" --meta proxy=steer --meta round=1 --out "$work/idle.jsonl" >/dev/null || true
  python3 - "$work/idle.jsonl" "$kind" "${LIMIT_KIB[$kind]}" <<'PY' || failed=1
import json, sys
path, kind, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    r = json.loads(open(path).read().splitlines()[-1])
except (OSError, IndexError):
    sys.exit(f"idle-memory {kind}: no measurement (steer or the client failed)")
ok = r["rc"] == 0 and r["failures"] == 0 and r["alive_ok"] == r["alive_checked"]
kib = r["kib_per_conn"]
if not ok or kib is None:
    sys.exit(f"idle-memory {kind}: the connections did not all open and answer ({r.get('first_error')})")
print(f"idle {kind}: {kib:.2f} KiB per connection (limit {limit}), "
      f"{r['opened']} opened, {r['alive_ok']}/{r['alive_checked']} still answering")
if kib > limit:
    sys.exit(f"idle-memory {kind}: {kib:.2f} KiB per idle connection is above {limit}")
PY
  stop "$pid"
done
exit "$failed"
