#!/usr/bin/env bash
# CI's short zero-window attack: 2 HTTP/2 clients with no flow-control
# window, 100 streams each to a 1 MB answer, against a steer limited to 300
# descriptors with send_timeout 2s. The tool exits 1 unless other clients
# and the admin API were answered within 1 s throughout and the
# descriptors came back. Bounded: the tool gives up 12 s into the attack.
set -euo pipefail
cd "$(dirname "$0")/../.."
timeout 900 cargo bench --locked --bench zero_window -- --attackers 2 --streams 100 --fds 300 --send-timeout 2
