"""Structural checks of deploy/ that need a YAML parser; tests/deploy.rs runs them.

    check.py compose deploy/compose.yaml
        Every service has an image or a build whose context and Dockerfile exist, every
        bind mount's source exists, every named volume is declared, every depends_on names
        a service. (The compose-spec schema check is check-jsonschema's, run beside it.)
    check.py k8s base|redis RENDERED.yaml NATIVE_OUT.yaml
        The output of `kubectl kustomize` holds exactly the expected kinds; the custom
        resources (ServiceMonitor, PrometheusRule) parse, name the right kinds and point
        at the Service's port, and the PrometheusRule carries exactly the groups of
        deploy/prometheus/rules/podscore.yml; the Deployment's probes, security context
        and settings are the documented ones. Writes the built-in kinds alone to
        NATIVE_OUT.yaml for kubernetes-validate, whose schemas do not cover CRDs.
    check.py write-prometheusrule
        Regenerates deploy/k8s/base/prometheusrule.yaml from the rules file.

Exits non-zero with one line per problem.
"""

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/podscore.yml"
PROMETHEUS_RULE = ROOT / "deploy/k8s/base/prometheusrule.yaml"
APP_LABEL = {"app.kubernetes.io/name": "podscore"}
MONITORING = "monitoring.coreos.com/v1"

BASE_KINDS = {
    ("apps/v1", "Deployment", "podscore"),
    ("v1", "Service", "podscore"),
    ("v1", "ConfigMap", "podscore-settings"),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "podscore"),
    ("policy/v1", "PodDisruptionBudget", "podscore"),
    (MONITORING, "ServiceMonitor", "podscore"),
    (MONITORING, "PrometheusRule", "podscore"),
}
REDIS_KINDS = BASE_KINDS | {
    ("apps/v1", "Deployment", "podscore-redis"),
    ("v1", "Service", "podscore-redis"),
    ("batch/v1", "Job", "podscore-features-load"),
}


class Problems:
    def __init__(self):
        self.lines = []

    def check(self, ok, message):
        if not ok:
            self.lines.append(message)

    def exit(self, summary):
        if self.lines:
            for line in self.lines:
                print(f"error: {line}", file=sys.stderr)
            sys.exit(1)
        print(summary)


def prometheus_rule_document():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        "apiVersion": MONITORING,
        "kind": "PrometheusRule",
        "metadata": {"name": "podscore", "labels": dict(APP_LABEL)},
        "spec": {"groups": groups},
    }


def write_prometheus_rule():
    def block_strings(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    yaml.SafeDumper.add_representer(str, block_strings)
    header = (
        "# Generated from deploy/prometheus/rules/podscore.yml by\n"
        "# `.venv/bin/python tests/deploy/check.py write-prometheusrule`; tests/deploy.rs fails when\n"
        "# the two differ. Edit the rules file, then regenerate.\n"
    )
    body = yaml.safe_dump(prometheus_rule_document(), sort_keys=False, width=1000)
    PROMETHEUS_RULE.write_text(header + body)
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")


def check_compose(path):
    problems = Problems()
    path = pathlib.Path(path).resolve()
    compose = yaml.safe_load(path.read_text())
    base = path.parent
    services = compose.get("services") or {}
    declared_volumes = set((compose.get("volumes") or {}).keys())
    mounts = 0
    problems.check(services, f"{path.name}: no services")
    for name, service in services.items():
        build = service.get("build")
        problems.check("image" in service or build, f"service {name}: neither image nor build")
        if build:
            context = base / (build if isinstance(build, str) else build.get("context", "."))
            problems.check(context.is_dir(), f"service {name}: build context {context} is missing")
            if isinstance(build, dict) and "dockerfile" in build:
                dockerfile = context / build["dockerfile"]
                problems.check(dockerfile.is_file(), f"service {name}: Dockerfile {dockerfile} is missing")
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                mounts += 1
                problems.check((base / source).exists(), f"service {name}: mounted {source} does not exist")
            else:
                problems.check(source in declared_volumes, f"service {name}: volume {source} is not declared")
        depends = service.get("depends_on") or []
        for dependency in depends if isinstance(depends, list) else depends.keys():
            problems.check(dependency in services, f"service {name}: depends_on names no service {dependency}")
    problems.exit(f"compose: {len(services)} services, {mounts} bind mounts present")


def by_kind(documents, kind, name):
    for document in documents:
        if document.get("kind") == kind and document["metadata"]["name"] == name:
            return document
    return None


def check_k8s(variant, rendered_path, native_out):
    problems = Problems()
    documents = [d for d in yaml.safe_load_all(pathlib.Path(rendered_path).read_text()) if d]
    found = set()
    for document in documents:
        name = document["metadata"]["name"]
        # configMapGenerator appends a hash of the contents to the name.
        if document["kind"] == "ConfigMap" and name.startswith("podscore-settings-"):
            name = "podscore-settings"
        found.add((document["apiVersion"], document["kind"], name))
    expected = REDIS_KINDS if variant == "redis" else BASE_KINDS
    problems.check(found == expected, f"{variant}: kinds {sorted(found ^ expected)} differ from the expected set")

    service = by_kind(documents, "Service", "podscore") or {}
    service_ports = {port["name"] for port in service.get("spec", {}).get("ports", [])}
    monitor = by_kind(documents, "ServiceMonitor", "podscore") or {}
    selector = monitor.get("spec", {}).get("selector", {}).get("matchLabels", {})
    problems.check(
        selector and all(service.get("metadata", {}).get("labels", {}).get(k) == v for k, v in selector.items()),
        "ServiceMonitor selects no podscore Service",
    )
    for endpoint in monitor.get("spec", {}).get("endpoints", []):
        problems.check(endpoint.get("port") in service_ports, f"ServiceMonitor port {endpoint.get('port')} is not a Service port")
        problems.check(endpoint.get("path") == "/metrics", "ServiceMonitor does not scrape /metrics")
    rule = by_kind(documents, "PrometheusRule", "podscore") or {}
    problems.check(
        rule.get("spec") == prometheus_rule_document()["spec"],
        "PrometheusRule groups differ from deploy/prometheus/rules/podscore.yml: "
        "run `.venv/bin/python tests/deploy/check.py write-prometheusrule`",
    )

    deployment = by_kind(documents, "Deployment", "podscore") or {}
    pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
    container = (pod.get("containers") or [{}])[0]
    probe_paths = {
        probe: container.get(probe, {}).get("httpGet", {}).get("path")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    problems.check(
        probe_paths == {"startupProbe": "/readyz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"},
        f"Deployment probes {probe_paths}",
    )
    security = container.get("securityContext", {})
    problems.check(pod.get("securityContext", {}).get("runAsNonRoot") is True, "pod not runAsNonRoot")
    problems.check(security.get("readOnlyRootFilesystem") is True, "root filesystem not read-only")
    problems.check(security.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    problems.check(0 < pre_stop < grace, f"preStop {pre_stop} s not below the grace period {grace} s")
    problems.check("requests" in container.get("resources", {}), "no resource requests")

    config_maps = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("podscore-settings")]
    referenced = [s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s]
    problems.check(
        len(config_maps) == 1 and referenced == [config_maps[0]["metadata"]["name"]],
        "the Deployment does not read the generated settings ConfigMap",
    )
    settings = config_maps[0].get("data", {}) if config_maps else {}
    if variant == "redis":
        redis_service = by_kind(documents, "Service", "podscore-redis") or {}
        url = settings.get("PODSCORE_REDIS", "")
        problems.check(url.startswith("redis://podscore-redis:"), f"PODSCORE_REDIS is {url!r}, not the overlay's Redis")
        redis_port = (redis_service.get("spec", {}).get("ports") or [{}])[0].get("port")
        problems.check(url.endswith(f":{redis_port}"), f"PODSCORE_REDIS {url!r} is not the Service's port {redis_port}")
        job = by_kind(documents, "Job", "podscore-features-load") or {}
        job_container = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0]
        problems.check(job_container.get("image") == container.get("image"), "the loader Job runs another image")
    else:
        problems.check("PODSCORE_REDIS" not in settings, "the base sets PODSCORE_REDIS")

    native = [d for d in documents if d["apiVersion"] != MONITORING]
    pathlib.Path(native_out).write_text(yaml.safe_dump_all(native, sort_keys=False))
    problems.exit(f"k8s {variant}: {len(documents)} resources, {len(documents) - len(native)} custom")


def main():
    command, *rest = sys.argv[1:] or ["help"]
    if command == "compose" and len(rest) == 1:
        check_compose(rest[0])
    elif command == "k8s" and len(rest) == 3 and rest[0] in ("base", "redis"):
        check_k8s(*rest)
    elif command == "write-prometheusrule" and not rest:
        write_prometheus_rule()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
