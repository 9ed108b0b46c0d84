#!/usr/bin/env bash
# Guard: memory per idle keep-alive HTTP/1.1 connection. steer (one
# worker) behind 2,000 plain connections that each made one request and
# then went quiet; fails when they hold more than LIMIT_KIB each (RSS with
# them open minus RSS before, over the count). Between requests a
# connection should hold its socket and task only (src/server/h1.rs,
# LIFECYCLE.md item 17): 3.3-3.5 KiB measured, 5.0 with hyper's path,
# 7.6 when the read buffer was kept while waiting.
#
#   bash scripts/ci/idle-memory.sh [STEER_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT_KIB="${LIMIT_KIB:-4.5}"
STEER="${1:-target/release/steer}"
[ -x "$STEER" ] || cargo build --release --locked
STEER="$(realpath "$STEER")"
# shellcheck source=benches/load/one_route.sh
. benches/load/one_route.sh
ulimit -n 8192 2>/dev/null || true

start_upstream "$STEER"
write_routes
"$STEER" run --config "$work/routes.toml" --workers 1 >"$work/steer.log" 2>&1 &
pid=$!
pids+=($pid)
wait_ready
python3 benches/load/idle_conns.py --port "$http" --pid "$pid" --conns 2000 --hold 3 \
  --kind plain --meta proxy=steer --meta round=1 --out "$work/idle.jsonl" >/dev/null
python3 - "$work/idle.jsonl" "$LIMIT_KIB" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
limit = float(sys.argv[2])
ok = r["rc"] == 0 and r["failures"] == 0 and r["alive_ok"] == r["alive_checked"]
kib = r["kib_per_conn"]
print(f"idle plain HTTP/1.1: {kib:.2f} KiB per connection (limit {limit}), "
      f"{r['opened']} opened, {r['alive_ok']}/{r['alive_checked']} still answering")
if not ok:
    sys.exit("idle-memory: the connections did not all open and answer")
if kib > limit:
    sys.exit(f"idle-memory: {kib:.2f} KiB per idle connection is above {limit}")
PY
