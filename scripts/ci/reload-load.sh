#!/usr/bin/env bash
# CI's short version of scripts/reload-load.sh: 5 s, 25 reloads, then an upgrade.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/reload-load.sh --seconds 5 --reloads 25 --clients 8
