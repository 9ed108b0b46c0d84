#!/usr/bin/env bash
# An optimized steer for packagers: the release build with its machine code
# laid out by BOLT, LLVM's post-link optimizer, from a training run through
# the three shapes the benchmarks measure (HTTP/1.1 in and out, HTTP/2 over
# TLS to HTTP/1.1, HTTP/2 over TLS to h2c). The code is the same; BOLT
# moves the blocks that run per request next to each other and the rest
# out of the way, so a request touches fewer instruction-cache lines
# (BENCHMARKS.md, "Instruction-cache misses and atomics": 2-3.5 % less CPU per request).
#
#   bash scripts/bolt.sh [OUT]        OUT defaults to target/bolt/steer
#
# Needs llvm-bolt and merge-fdata (Debian: bolt-19; LLVM_BOLT_DIR names
# another directory), h2load (nghttp2-client), openssl and curl. Builds in
# target/bolt-build (its own flags, so the usual target/release stays as
# it is); TRAIN_REQUESTS (50000) per shape.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/bolt/steer}"
BOLT_DIR="${LLVM_BOLT_DIR:-/usr/lib/llvm-19/bin}"
REQUESTS="${TRAIN_REQUESTS:-50000}"
for tool in "$BOLT_DIR/llvm-bolt" "$BOLT_DIR/merge-fdata"; do
  [ -x "$tool" ] || { echo "bolt.sh needs $tool (apt-get install bolt-19)" >&2; exit 2; }
done
for tool in h2load openssl curl; do
  command -v "$tool" >/dev/null || { echo "bolt.sh needs $tool" >&2; exit 2; }
done

# BOLT rewrites a linked binary, and needs its relocations (--emit-relocs)
# and symbols (stripped after). v0 symbol mangling: with the legacy
# scheme's ".." separators, a function named `warmup` gets a symbol BOLT
# reads as a ".warm" fragment of another function, and it stops.
build="$PWD/target/bolt-build"
CARGO_TARGET_DIR="$build" CARGO_PROFILE_RELEASE_STRIP=none \
  RUSTFLAGS="-C link-arg=-Wl,--emit-relocs -C symbol-mangling-version=v0" \
  cargo build --release --locked
plain="$build/release/steer"

# shellcheck source=benches/load/one_route.sh
. benches/load/one_route.sh
# shellcheck source=scripts/lib/train.sh
. scripts/lib/train.sh
"$BOLT_DIR/llvm-bolt" "$plain" -instrument -o "$work/steer.inst" \
  -instrumentation-file="$work/profile" -instrumentation-file-append-pid >"$work/instrument.log" 2>&1 \
  || { cat "$work/instrument.log" >&2; exit 1; }

# Training (scripts/lib/train.sh): each run writes its profile when steer
# exits.
train "$plain" "$work/steer.inst"
profiles=("$work"/profile.*.fdata)
[ -e "${profiles[0]}" ] || { echo "bolt.sh: the training run wrote no profile" >&2; exit 1; }
"$BOLT_DIR/merge-fdata" "${profiles[@]}" >"$work/merged.fdata" 2>/dev/null

# The layout: blocks by the profile (ext-tsp), functions by call density
# (cdsort), cold blocks split out of hot functions, identical functions
# folded.
mkdir -p "$(dirname "$OUT")"
"$BOLT_DIR/llvm-bolt" "$plain" -o "$work/steer.bolt" -data="$work/merged.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
  -split-eh -icf=1 -use-gnu-stack -dyno-stats >"$work/optimize.log" 2>&1 \
  || { cat "$work/optimize.log" >&2; exit 1; }
grep -E "have non-empty execution profile|modified layout" "$work/optimize.log" || true
strip -o "$OUT" "$work/steer.bolt"
"$OUT" --version >/dev/null
echo "bolt.sh: $OUT ($(du -h "$OUT" | cut -f1))"
