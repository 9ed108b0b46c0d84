#!/usr/bin/env bash
# Zero-loss check: 20 s of keep-alive load against a real steer on
# loopback while routes.toml is rewritten 100 times, then across a binary
# upgrade (`steer run --upgrade`), then through the blue/green cutover
# runbook (gate, drain, stop) against h2c upstreams. Prints requests and
# failures per phase;
# exits 1 if any request failed. Extra arguments go to the load tool
# (--seconds N, --reloads N, --clients N).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked --bench reload_load -- "$@"
