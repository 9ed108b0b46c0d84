#!/usr/bin/env bash
# The README promises Rust 1.88 (`rust-version` in Cargo.toml). This
# machine has one toolchain, so check what would stop an older one: a
# locked dependency (normal, build or dev) that declares a newer
# rust-version, which cargo refuses to build. clippy's incompatible_msrv
# lint (warn by default, an error in CI) checks steer's own use of std
# against the same version.
set -euo pipefail
cd "$(dirname "$0")/../.."
meta="$(mktemp)"
trap 'rm -f "$meta"' EXIT
cargo metadata --locked --format-version 1 >"$meta"
python3 - "$meta" <<'PY'
import json, sys

meta = json.load(open(sys.argv[1]))
# "1.88" and "1.88.0" are the same version.
version = lambda v: tuple((list(map(int, v.split("."))) + [0, 0])[:3])
ours = next(p for p in meta["packages"] if p["id"] in meta["workspace_members"])
floor = ours.get("rust_version")
if not floor:
    sys.exit("Cargo.toml declares no rust-version, which README promises")
newer = [
    f'{p["name"]} {p["version"]} needs Rust {p["rust_version"]}'
    for p in meta["packages"]
    if p.get("rust_version") and version(p["rust_version"]) > version(floor)
]
if newer:
    sys.exit(f"Cargo.lock needs more than rust-version {floor}:\n  " + "\n  ".join(newer))
print(f"every locked dependency builds with Rust {floor}")
PY
