#!/usr/bin/env bash
# An optimized steer for packagers: the release build compiled again with
# profile-guided optimization (PGO) from a training run through the three
# shapes the benchmarks measure (scripts/lib/train.sh, as scripts/bolt.sh).
# The source is the same; LLVM inlines, lays out and orders branches by
# what the training ran, and compiles what it never ran for size. At
# 413b937: 21-24 % fewer instructions per request, 5-18 % less CPU
# (BENCHMARKS.md, "Profile-guided optimization").
#
#   bash scripts/pgo.sh [OUT]        OUT defaults to target/pgo/steer
#
# Needs an llvm-profdata that reads rustc's raw profiles: rustup's
# (`rustup component add llvm-tools`, rustc's own LLVM), or another named
# by LLVM_PROFDATA (for rustc 1.95, Debian's llvm-19 does:
# /usr/lib/llvm-19/bin/llvm-profdata); h2load (nghttp2-client), openssl
# and curl. Builds in target/pgo-gen (instrumented) and
# target/pgo-use (optimized), with their own flags, so the usual
# target/release stays as it is; TRAIN_REQUESTS (50000) per shape.
set -euo pipefail
# A failed build inside $(...) must stop the script, not hand on the
# binary an earlier run left.
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
OUT="${1:-target/pgo/steer}"
REQUESTS="${TRAIN_REQUESTS:-50000}"
host="$(rustc -vV | sed -n 's/^host: //p')"
if [ -n "${LLVM_PROFDATA:-}" ]; then
  PROFDATA="$(command -v "$LLVM_PROFDATA")" || { echo "pgo.sh: LLVM_PROFDATA=$LLVM_PROFDATA is not a command" >&2; exit 2; }
else
  PROFDATA="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
  [ -x "$PROFDATA" ] || { echo "pgo.sh needs $PROFDATA (rustup component add llvm-tools), or LLVM_PROFDATA" >&2; exit 2; }
fi
for tool in h2load openssl curl; do
  command -v "$tool" >/dev/null || { echo "pgo.sh needs $tool" >&2; exit 2; }
done

# shellcheck source=benches/load/one_route.sh
. benches/load/one_route.sh
# shellcheck source=scripts/lib/train.sh
. scripts/lib/train.sh

# --target: RUSTFLAGS then reach the crates that make up steer, not build
# scripts and proc macros (which would write profiles of their own while
# the build runs them, and need none). The packager's own RUSTFLAGS
# (-C target-cpu, say) come first; CARGO_ENCODED_RUSTFLAGS would replace
# them all, so it is unset.
unset CARGO_ENCODED_RUSTFLAGS
build() {  # TARGET_DIR FLAGS -> the binary's path on stdout
  CARGO_TARGET_DIR="$1" RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$2" \
    cargo build --release --locked --target "$host" >&2
  echo "$1/$host/release/steer"
}
# The upstream of the training run is the plain build: only steer's own
# profile is wanted.
[ -x target/release/steer ] || cargo build --release --locked
# The instrumented build writes its profiles into a fixed directory, so
# that it is rebuilt only when the source changes. The optimized build
# reads this run's profile from $work, a new path each run: no build made
# with another run's profile is reused, whether or not cargo tracks the
# file.
raw="$PWD/target/pgo-gen/profiles"
instrumented="$(build "$PWD/target/pgo-gen" "-Cprofile-generate=$raw")"
rm -rf "$raw"
train target/release/steer "$instrumented"
profiles=("$raw"/*.profraw)
[ -e "${profiles[0]}" ] || { echo "pgo.sh: the training run wrote no profile" >&2; exit 1; }
"$PROFDATA" merge -o "$work/steer.profdata" "${profiles[@]}"

# A profile that matches nothing is not an error: the build comes out as
# the plain one, which scripts/ci/pgo.sh's instruction count catches.
optimized="$(build "$PWD/target/pgo-use" "-Cprofile-use=$work/steer.profdata")"
mkdir -p "$(dirname "$OUT")"
cp "$optimized" "$OUT"
"$OUT" --version >/dev/null
echo "pgo.sh: $OUT ($(du -h "$OUT" | cut -f1))"
