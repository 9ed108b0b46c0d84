#!/usr/bin/env bash
# The README's first command as a newcomer runs it: `steer demo`, then every
# command its banner prints, pasted in order. Checks that the failover loop
# shows green five times once the banner's wait is over, that the reload
# step reports a new version, that Ctrl-C stops the demo with 0 and removes
# its scratch copy, and that no tracked file changed. Needs curl and the
# demo ports (8080, 9001, 9002, 9901) free.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x target/release/steer ] || cargo build --release --locked
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
before="$(git status --porcelain)"
target/release/steer demo --log-format json 2>"$work/stderr" &
pid=$!
for _ in $(seq 300); do
  grep -q "Stop with Ctrl-C" "$work/stderr" && break
  sleep 0.1
done
grep -q "Stop with Ctrl-C" "$work/stderr" || { cat "$work/stderr"; exit 1; }
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:9901/ready >/dev/null && break
  sleep 0.1
done
grep -E '^  (curl|until|for|sed) ' "$work/stderr" >"$work/banner.sh"
echo "-- the banner's commands"
cat "$work/banner.sh"
timeout 60 bash -e "$work/banner.sh" >"$work/out" 2>&1
greens="$(grep -cE '^"deployment": *"green"$' "$work/out" || true)"
[ "$greens" = 5 ] || { echo "failover: expected 5 x green, got:"; cat "$work/out"; exit 1; }
grep -q '"version"' "$work/out" || { echo "reload: no version"; cat "$work/out"; exit 1; }
copy="$(sed -n 's/^Route table: \(.*\) (a copy.*/\1/p' "$work/stderr")"
[ -f "$copy" ] || { echo "no copy at $copy"; exit 1; }
kill -INT "$pid"
wait "$pid"
echo "-- demo exited with 0"
[ ! -e "$copy" ] || { echo "the scratch copy $copy is still there"; exit 1; }
[ "$(git status --porcelain)" = "$before" ] || { echo "the demo changed tracked files:"; git status --porcelain; exit 1; }
echo "demo: ok (the banner's commands worked; no tracked file changed)"
