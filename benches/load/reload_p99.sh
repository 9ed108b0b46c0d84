#!/usr/bin/env bash
# A 10,000-route reload under load: how long `POST /reload` takes (read,
# parse, validate, build the table, swap) and what it does to the p99 of
# concurrent traffic. The performance issue's target: applied in < 100 ms,
# p99 raised by less than 2x.
#
#   bash benches/load/reload_p99.sh [--rounds N] [--seconds S] [--every S] [--routes N]
#
# Setup, as in run.sh: an nginx upstream on CPU 1 (fixed 100-byte answers),
# steer --workers 1 on CPU 0 with a routes.toml of 10,000 host/path routes
# plus a catch-all (the route wrk hits), wrk -t1 -c50 --latency on CPU 1.
# Each round runs wrk twice, interleaved: once quiet, once while a loop
# forces a full reload (`POST /reload`: the same file, read, parsed and
# built again) every `--every` seconds (default 2). Prints the reload times
# and both p99s per round, and the median ratio.
#
# Needs: nginx and wrk (apt-get install nginx wrk), target/release/steer.
set -euo pipefail

ROUNDS=3 SECONDS_=10 ROUTES=10000 EVERY=2
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --seconds) SECONDS_="$2"; shift 2 ;;
    --routes) ROUTES="$2"; shift 2 ;;
    --every) EVERY="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=benches/load/upstream.sh
. "$HERE/upstream.sh"
BASE="${LOAD_BASE_PORT:-18180}"
PORT_UP=$BASE PORT_PROXY=$((BASE + 1)) PORT_ADMIN=$((BASE + 2))
for tool in nginx wrk curl python3 taskset; do
  command -v "$tool" >/dev/null || { echo "reload_p99: $tool is missing (apt-get install nginx wrk curl)" >&2; exit 1; }
done
[ -x "$REPO/target/release/steer" ] || (cd "$REPO" && cargo build --release --locked)

WORK="$(mktemp -d /tmp/steer-reload.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
cp "$REPO/target/release/steer" "$WORK/steer"

upstream_conf "$WORK/up" "$PORT_UP"
taskset -c 1 nginx -p "$WORK/up/" -e "$WORK/up/error.log" -c "$WORK/up/nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
PIDS+=($!)

python3 - "$WORK/routes.toml" "$ROUTES" "$PORT_PROXY" "$PORT_ADMIN" "$PORT_UP" <<'EOF'
import sys
path, n, proxy, admin, up = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
families = ["oauth/v2/", "oidc/v1/", "ui/login", "zitadel."]
with open(path, "w") as f:
    f.write(f'[listen]\nhttp = "127.0.0.1:{proxy}"\nadmin = "127.0.0.1:{admin}"\n\n')
    f.write('[proxy]\nshutdown_delay = "0s"\ndrain_timeout = "0s"\n\n[log]\naccess = true\n\n')
    f.write(f'[upstreams.up]\nendpoints = ["127.0.0.1:{up}"]\nprotocol = "http1"\nhealth = false\n\n')
    for i in range(n):
        f.write(f'[[routes]]\nname = "r{i}"\nhosts = ["t{i // 4}.auth.example.com"]\n'
                f'path_prefix = "/{families[i % 4]}"\nupstream = "up"\n\n')
    f.write('[[routes]]\nname = "all"\nupstream = "up"\n')
EOF

RUST_LOG=info taskset -c 0 "$WORK/steer" --workers 1 --log-format json \
  --config "$WORK/routes.toml" >/dev/null 2>"$WORK/steer.log" &
PIDS+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT_PROXY/" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT_PROXY/" >/dev/null || { echo "steer did not start:" >&2; tail "$WORK/steer.log" >&2; exit 1; }
taskset -c 1 wrk -t1 -c50 -d2 "http://127.0.0.1:$PORT_PROXY/" >/dev/null   # warm-up

p99() { awk '/^ +99%/ { v = $2; if (v ~ /ms$/) { sub(/ms/, "", v); v *= 1000 } else if (v ~ /us$/) { sub(/us/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000000 }; print v }'; }

echo "# Reloads of $ROUTES routes (+ catch-all) every ${EVERY} s under wrk -t1 -c50 ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "| round | p99 quiet | p99 with reloads | ratio | reloads | reload time min / median / max |"
echo "|---|---:|---:|---:|---:|---|"
RATIOS=() MEDIANS=()
for r in $(seq "$ROUNDS"); do
  quiet=$(taskset -c 1 wrk -t1 -c50 -d"$SECONDS_" --latency "http://127.0.0.1:$PORT_PROXY/" | p99)
  : > "$WORK/times"
  (
    end=$((SECONDS + SECONDS_))
    while [ $SECONDS -lt $end ]; do
      taskset -c 1 curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST \
        "http://127.0.0.1:$PORT_ADMIN/reload" >> "$WORK/times"
      sleep "$EVERY"
    done
  ) &
  loop=$!
  busy=$(taskset -c 1 wrk -t1 -c50 -d"$SECONDS_" --latency "http://127.0.0.1:$PORT_PROXY/" | p99)
  wait "$loop"
  stats=$(python3 - "$WORK/times" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
bad = [r for r in rows if r[0] != "200"]
t = sorted(float(r[1]) * 1000 for r in rows if r[0] == "200")
if bad or not t:
    print(f"FAILED ({len(bad)} of {len(rows)} reloads not 200)")
else:
    print(f"{len(t)} | {t[0]:.1f} / {statistics.median(t):.1f} / {t[-1]:.1f} ms")
EOF
)
  ratio=$(python3 -c "print(f'{$busy / $quiet:.2f}')")
  RATIOS+=("$ratio"); MEDIANS+=("$(echo "$stats" | awk -F'/' '{print $2}' | tr -d ' ')")
  echo "| $r | $quiet µs | $busy µs | ${ratio}× | $stats |"
done
echo
python3 - "${RATIOS[@]}" <<'EOF'
import statistics, sys
print(f"Median p99 ratio (with reloads / quiet): {statistics.median(float(x) for x in sys.argv[1:]):.2f}x")
EOF
