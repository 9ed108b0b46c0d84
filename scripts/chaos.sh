#!/usr/bin/env bash
# Chaos under load: one of two endpoints is reset, stalled, answers garbage,
# then recovers, while GET/POST clients and an admin-API hammer run.
# Prints requests and failures per phase. Extra arguments: --seconds N
# (per phase, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked --bench chaos -- "$@"
