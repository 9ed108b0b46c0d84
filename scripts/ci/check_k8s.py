#!/usr/bin/env python3
"""Check rendered Kubernetes manifests for steer (output of `kubectl kustomize`).

Usage: python3 scripts/ci/check_k8s.py RENDERED.yaml...

Each file must hold one steer installation: a Deployment (3 replicas, spread
across zones and nodes: softly, so that it runs on a single-zone cluster,
except in the multi-zone overlay, whose zone spread is hard; its image set by
kustomize's `images:`, the one place for it), /ready and /healthz probes on
the admin port, a
non-root read-only container, a termination grace period that covers
shutdown_delay + drain_timeout, the route table's ConfigMap mounted as the
directory /etc/steer without subPath), the ConfigMap with routes.toml, a
Service, a PodDisruptionBudget and a HorizontalPodAutoscaler that select or
target it, and a NetworkPolicy that admits the client ports from anywhere but
the admin port only from listed sources. Prints one summary line per file;
on any failure prints every problem and exits 1.
"""

from __future__ import annotations

import re
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - deploy.sh installs it
    sys.exit("check_k8s: PyYAML is missing; run `pip install pyyaml`")

try:
    import tomllib
except ImportError:  # Python < 3.11: fall back to the default timings
    tomllib = None

CONFIG_DIR = "/etc/steer"
CONFIG_KEY = "routes.toml"
ADMIN_PORT = 9901
# steer's defaults for [proxy] shutdown_delay and drain_timeout, in seconds.
DEFAULT_SHUTDOWN_DELAY = 5.0
DEFAULT_DRAIN_TIMEOUT = 30.0
MIN_GRACE = DEFAULT_SHUTDOWN_DELAY + DEFAULT_DRAIN_TIMEOUT


class Problems:
    def __init__(self, file: str):
        self.file = file
        self.list: list[str] = []

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.list.append(message)
        return ok


def duration_seconds(text: str) -> float | None:
    """steer's duration syntax: a number and one of ms, s, m, h."""
    m = re.fullmatch(r"\s*([0-9.]+)(ms|s|m|h)\s*", str(text))
    if not m:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    try:
        return float(m.group(1)) * scale
    except ValueError:
        return None


def labels_match(selector: dict | None, labels: dict | None) -> bool:
    selector = selector or {}
    labels = labels or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_number(port, container: dict):
    """A probe port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def check_probe(p: Problems, container: dict, kind: str, path: str) -> None:
    probe = container.get(kind)
    if not p.check(isinstance(probe, dict), f"Deployment container has no {kind}"):
        return
    get = probe.get("httpGet") or {}
    p.check(
        get.get("path") == path,
        f"{kind} must be GET {path}; got {get.get('path')!r}",
    )
    p.check(
        port_number(get.get("port"), container) == ADMIN_PORT,
        f"{kind} must use the admin port {ADMIN_PORT}; got {get.get('port')!r}",
    )


def security(pod_spec: dict, container: dict, key: str):
    """A securityContext field: the container's, else the pod's."""
    c = container.get("securityContext") or {}
    if key in c:
        return c[key]
    return (pod_spec.get("securityContext") or {}).get(key)


def check_file(path: str) -> tuple[list[str], str]:
    p = Problems(path)
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
    except (OSError, yaml.YAMLError) as e:
        return [f"cannot read YAML: {e}"], ""
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d.get("kind", "?"), []).append(d)

    deployments = by_kind.get("Deployment", [])
    if not p.check(len(deployments) == 1, f"expected 1 Deployment, found {len(deployments)}"):
        return p.list, ""
    dep = deployments[0]
    dep_name = dep["metadata"]["name"]
    spec = dep.get("spec") or {}
    template = spec.get("template") or {}
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    pod = template.get("spec") or {}

    p.check(spec.get("replicas") == 3, f"Deployment replicas must be 3; got {spec.get('replicas')!r}")
    p.check(
        labels_match((spec.get("selector") or {}).get("matchLabels"), pod_labels),
        "Deployment selector does not match its pod template labels",
    )
    tsc = pod.get("topologySpreadConstraints") or []
    keys = {c.get("topologyKey") for c in tsc}
    p.check(bool(tsc), "Deployment has no topologySpreadConstraints")
    for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
        p.check(key in keys, f"topologySpreadConstraints do not spread across {key}")
    for c in tsc:
        p.check(
            labels_match((c.get("labelSelector") or {}).get("matchLabels"), pod_labels),
            f"topologySpreadConstraint on {c.get('topologyKey')} does not select the pods",
        )
    hard_zones = "multi-zone" in path
    zone = next((c for c in tsc if c.get("topologyKey") == "topology.kubernetes.io/zone"), {})
    want = "DoNotSchedule" if hard_zones else "ScheduleAnyway"
    p.check(
        zone.get("whenUnsatisfiable") == want,
        f"the zone spread must be {want} here (hard only in the multi-zone overlay, so "
        f"that the base runs on a single-zone cluster); got {zone.get('whenUnsatisfiable')!r}",
    )

    containers = pod.get("containers") or []
    if not p.check(len(containers) >= 1, "Deployment has no containers"):
        return p.list, ""
    container = next((c for c in containers if c.get("name") == "steer"), containers[0])
    image = str(container.get("image", ""))
    p.check(
        "/" in image and ":" in image.rsplit("/", 1)[-1],
        f"the image must come from kustomization.yaml's `images:` (REGISTRY/steer:TAG); got {image!r}",
    )
    check_probe(p, container, "readinessProbe", "/ready")
    check_probe(p, container, "livenessProbe", "/healthz")
    p.check(security(pod, container, "runAsNonRoot") is True, "runAsNonRoot must be true")
    p.check(
        (container.get("securityContext") or {}).get("readOnlyRootFilesystem") is True,
        "readOnlyRootFilesystem must be true",
    )
    p.check(
        (container.get("securityContext") or {}).get("allowPrivilegeEscalation") is False,
        "allowPrivilegeEscalation must be false",
    )
    drop = ((container.get("securityContext") or {}).get("capabilities") or {}).get("drop") or []
    p.check("ALL" in drop, "capabilities must drop ALL")

    # The route table: a ConfigMap volume at /etc/steer, as a directory.
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    mounts = [m for m in container.get("volumeMounts") or [] if m.get("mountPath") == CONFIG_DIR]
    cm_name = None
    if p.check(len(mounts) == 1, f"nothing (or more than one volume) is mounted at {CONFIG_DIR}"):
        mount = mounts[0]
        p.check(
            "subPath" not in mount and "subPathExpr" not in mount,
            f"the volume at {CONFIG_DIR} must be mounted as a directory, without subPath "
            "(a subPath mount never sees ConfigMap updates, so steer would never reload)",
        )
        volume = volumes.get(mount.get("name")) or {}
        cm_name = (volume.get("configMap") or {}).get("name")
        p.check(cm_name is not None, f"the volume at {CONFIG_DIR} is not a ConfigMap")
    env = {e.get("name"): e.get("value") for e in container.get("env") or []}
    p.check(
        env.get("STEER_CONFIG") == f"{CONFIG_DIR}/{CONFIG_KEY}",
        f"env STEER_CONFIG must be {CONFIG_DIR}/{CONFIG_KEY}; got {env.get('STEER_CONFIG')!r}",
    )

    configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    routes_text = None
    if cm_name is not None and p.check(
        cm_name in configmaps, f"ConfigMap {cm_name!r} (mounted at {CONFIG_DIR}) is not in the file"
    ):
        routes_text = (configmaps[cm_name].get("data") or {}).get(CONFIG_KEY)
        p.check(bool(routes_text), f"ConfigMap {cm_name!r} holds no {CONFIG_KEY}")

    # The grace period must cover steer's own shutdown sequence.
    needed, timing = MIN_GRACE, "defaults"
    if routes_text and tomllib is not None:
        try:
            proxy = tomllib.loads(routes_text).get("proxy") or {}
        except tomllib.TOMLDecodeError as e:
            p.check(False, f"{CONFIG_KEY} in ConfigMap {cm_name!r} is not TOML: {e}")
            proxy = {}
        delay = duration_seconds(proxy.get("shutdown_delay", "5s"))
        drain = duration_seconds(proxy.get("drain_timeout", "30s"))
        if p.check(
            delay is not None and drain is not None,
            f"{CONFIG_KEY}: cannot read [proxy] shutdown_delay / drain_timeout",
        ):
            needed = delay + drain
            timing = f"shutdown_delay {delay:g}s + drain_timeout {drain:g}s"
    grace = pod.get("terminationGracePeriodSeconds", 30)
    p.check(
        isinstance(grace, int) and grace >= needed,
        f"terminationGracePeriodSeconds {grace} is less than {needed:g} ({timing})",
    )

    services = by_kind.get("Service", [])
    svc = next((s for s in services if labels_match((s.get("spec") or {}).get("selector"), pod_labels)), None)
    if p.check(svc is not None, "no Service selects the Deployment's pods"):
        for port in (svc.get("spec") or {}).get("ports") or []:
            p.check(
                port_number(port.get("targetPort"), container) != ADMIN_PORT,
                f"Service {svc['metadata']['name']!r} exposes the admin port",
            )

    pdbs = by_kind.get("PodDisruptionBudget", [])
    pdb = next(
        (b for b in pdbs if labels_match(((b.get("spec") or {}).get("selector") or {}).get("matchLabels"), pod_labels)),
        None,
    )
    p.check(pdb is not None, "no PodDisruptionBudget selects the Deployment's pods")

    netpols = [
        n for n in by_kind.get("NetworkPolicy", [])
        if labels_match(((n.get("spec") or {}).get("podSelector") or {}).get("matchLabels"), pod_labels)
    ]
    if p.check(len(netpols) == 1, f"expected 1 NetworkPolicy selecting the pods, found {len(netpols)}"):
        rules = (netpols[0].get("spec") or {}).get("ingress") or []
        admin_open = False
        client_open = False
        for rule in rules:
            ports = {port_number(x.get("port"), container) for x in rule.get("ports") or []}
            sources = rule.get("from") or []
            if ADMIN_PORT in ports and not sources:
                admin_open = True
            if 8080 in ports and not sources:
                client_open = True
        p.check(not admin_open, "the NetworkPolicy admits the admin port from anywhere")
        p.check(client_open, "the NetworkPolicy does not admit the client port 8080 from anywhere")
        p.check(
            any(ADMIN_PORT in {port_number(x.get("port"), container) for x in r.get("ports") or []} for r in rules),
            "the NetworkPolicy admits the admin port from nowhere (probes and Prometheus need it)",
        )

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    hpa = next(
        (h for h in hpas if ((h.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == dep_name),
        None,
    )
    hpa_range = ""
    if p.check(hpa is not None, f"no HorizontalPodAutoscaler targets Deployment {dep_name!r}"):
        p.check(
            hpa.get("apiVersion") == "autoscaling/v2",
            f"HorizontalPodAutoscaler must be autoscaling/v2; got {hpa.get('apiVersion')}",
        )
        hs = hpa.get("spec") or {}
        hpa_range = f"{hs.get('minReplicas')}..{hs.get('maxReplicas')}"

    summary = (
        f"Deployment {dep_name} ({spec.get('replicas')} replicas, zone spread "
        f"{zone.get('whenUnsatisfiable')}, image {image}, grace {grace}s >= {needed:g}s), "
        f"ConfigMap {cm_name} at {CONFIG_DIR}, Service {svc['metadata']['name'] if svc else '-'}, "
        f"PodDisruptionBudget {pdb['metadata']['name'] if pdb else '-'}, "
        f"HorizontalPodAutoscaler {hpa_range or '-'}, NetworkPolicy {netpols[0]['metadata']['name'] if netpols else '-'}"
    )
    return p.list, summary


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    failed = False
    for path in argv:
        problems, summary = check_file(path)
        if problems:
            failed = True
            for message in problems:
                print(f"check_k8s: {path}: {message}", file=sys.stderr)
            print(f"{path}: FAILED ({len(problems)} problem(s))")
        else:
            print(f"{path}: ok: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
