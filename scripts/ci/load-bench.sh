#!/usr/bin/env bash
# CI's smoke run of the side-by-side load benchmark and the 10,000-route
# reload benchmark: they must run to the end on a fresh machine (installing
# nginx, HAProxy, wrk and h2load from Debian's packages). CI's numbers are
# not compared with anything: a shared machine under a CI job is too noisy;
# BENCHMARKS.md holds the numbers from quiet runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x target/release/steer ] || cargo build --release --locked
before=$(ls benches/load/results-*.md 2>/dev/null || true)
bash benches/load/run.sh --quick --scenarios a,e,d --idle-conns 2000
bash benches/load/reload_p99.sh --rounds 1 --seconds 3 --every 1
# The quick run writes a results file: remove it (only the new one).
for f in benches/load/results-*.md; do
  grep -qxF "$f" <<<"$before" || rm -f "$f"
done
