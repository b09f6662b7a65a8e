"""Deployment artifacts, checked as far as a machine without Docker or a cluster can.

- Dockerfiles: hadolint (no finding at warning or above unless .hadolint.yaml
  ignores it with a reason), and the contract the manifests rely on (non-root
  user, tini entry command, HEALTHCHECK, what the build context sends).
- Kubernetes: every overlay (and each overlay with each component) renders with
  ``kubectl kustomize``; every object passes the Kubernetes JSON schema (strict:
  unknown fields fail) for the oldest and newest supported minor; the CRD-based
  ServiceMonitor, which has no built-in schema, gets the fields that matter asserted.
- yamllint on deploy/ and on the rendered manifests; compose, Prometheus and
  Grafana files cross-checked; every tandem_* name they use exists in server/metrics.py.
- The image's exact entry command runs as a plain process with the image's
  environment against a small bundle: probes, /search and the HEALTHCHECK answer,
  and SIGTERM drains an in-flight request before a clean exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import promql_parser
import pytest
import yaml
from tandem.indexer.build import build_bundle
from tandem.models.encoder import Encoder
from tandem.server.settings import ServerSettings

from tandem.data.corpus import read_corpus
from tests.support.deploy import (
    COMPONENTS,
    DEPLOY,
    DOCKERFILES,
    K8S_VERSIONS,
    OVERLAYS,
    REPO,
    copies,
    dockerignore_patterns,
    dockerignored,
    exposed_metric_names,
    healthcheck_command,
    parse_dockerfile,
    referenced_metric_names,
    run,
    tool,
    write_image_site,
)

API_KEY = "deploy-test-key"
POD_LABELS = {"app.kubernetes.io/name": "tandem", "app.kubernetes.io/component": "server"}

# ------------------------------------------------------------------ Dockerfiles


@pytest.mark.parametrize(
    "dockerfile",
    [*DOCKERFILES, DEPLOY / "docker" / "local-base" / "Dockerfile"],
    ids=lambda p: str(p.relative_to(DEPLOY / "docker")),
)
def test_hadolint(dockerfile: Path) -> None:
    result = run([tool("hadolint"), "--config", ".hadolint.yaml", "-f", "json", str(dockerfile)])
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, json.dumps(serious, indent=1)
    assert result.returncode == 0, result.stderr


def test_hadolint_ignores_have_reasons() -> None:
    lines = (REPO / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*(DL|SC)\d+", line):
            assert lines[i - 1].strip().startswith("#"), f"no reason given above {line.strip()}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_contract(dockerfile: Path) -> None:
    stages = parse_dockerfile(dockerfile)
    runtime = stages[-1]
    assert len(stages) >= 2 and runtime.name == "runtime", "multi-stage, runtime last"
    text = dockerfile.read_text()
    assert "find_spec('torch') is not None" in text, "the build must prove torch is absent"
    assert "tandem serve --help" in text, "the build must prove the CLI imports"
    user = runtime.last("USER") or ""
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"numeric non-root USER, got {user!r}"
    assert runtime.exec_form("ENTRYPOINT")[:2] == ["/usr/bin/tini", "--"]
    assert "tini" in " ".join(runtime.all("RUN")), "tini must be installed in the runtime stage"
    assert runtime.exec_form("ENTRYPOINT")[2:] + runtime.exec_form("CMD") == ["tandem", "serve"]
    env = runtime.env()
    assert env["TANDEM_BUNDLE"] == "/data/bundle" and env["TANDEM_STUDENT"] == "/models/student"
    assert env["HOME"].startswith("/tmp") and env["TANDEM_HOME"].startswith("/tmp")
    assert runtime.last("EXPOSE") == env["TANDEM_PORT"]
    assert healthcheck_command(runtime) == ["python", "/opt/tandem/healthcheck.py"]
    _assert_known_settings(env)
    patterns = dockerignore_patterns()
    for stage in stages:
        for sources, _ in copies(stage):
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: missing"
                assert not dockerignored(source, patterns), f"COPY {source}: in .dockerignore"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = dockerignore_patterns()
    for path in (".git/HEAD", ".venv/bin/python", "bundles/current", "tests/conftest.py"):
        assert dockerignored(path, patterns), path
    for path in ("server/app.py", "pyproject.toml", "deploy/docker/healthcheck.py"):
        assert not dockerignored(path, patterns), path


# ------------------------------------------------------------------ Kubernetes


def _targets() -> list[tuple[str, Path, Path | None]]:
    found: list[tuple[str, Path, Path | None]] = [(o.name, o, None) for o in OVERLAYS]
    found += [(f"{o.name}+{c.name}", o, c) for o in OVERLAYS for c in COMPONENTS]
    return found


TARGETS = _targets()


@dataclass(frozen=True)
class Rendered:
    path: Path
    docs: list[dict[str, Any]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Each target rendered once by `kubectl kustomize` (components via a temp kustomization)."""
    out: dict[str, Rendered] = {}
    folder_for_output = tmp_path_factory.mktemp("rendered")
    for name, overlay, component in TARGETS:
        folder = overlay
        if component is not None:
            folder = tmp_path_factory.mktemp("kustomize")
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize refuses absolute paths; relative ones may leave the root.
                "resources": [os.path.relpath(overlay, folder)],
                "components": [os.path.relpath(component, folder)],
            }
            (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        result = run([tool("kubectl"), "kustomize", str(folder)])
        assert result.returncode == 0, f"kustomize {name}:\n{result.stderr}"
        path = folder_for_output / f"{name}.yaml"
        path.write_text(result.stdout)
        out[name] = Rendered(path, [doc for doc in yaml.safe_load_all(result.stdout) if doc])
    return out


def test_overlays_exist() -> None:
    assert {o.name for o in OVERLAYS} == {"cpu", "gpu"}


@pytest.mark.parametrize("target", [t[0] for t in TARGETS])
def test_rendered_objects_are_schema_valid(target: str, rendered: dict[str, Rendered]) -> None:
    checked: dict[str, int] = {}
    docs = rendered[target].docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # CRDs: no built-in schema
            if doc["kind"] == "ServiceMonitor":
                _assert_service_monitor(doc, docs)
            else:
                _assert_prometheus_rule(doc)
            checked[doc["kind"]] = checked.get(doc["kind"], 0) + 1
            continue
        if doc["apiVersion"].startswith("ray.io/"):
            _assert_ray_job(doc, docs)  # KubeRay's CRD: its pod templates are checked below
            checked[doc["kind"]] = checked.get(doc["kind"], 0) + 1
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{target}: {doc['kind']} {where}: {exc.message} (k8s {version})")
        checked[doc["kind"]] = checked.get(doc["kind"], 0) + 1
    expected = {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert expected <= set(checked), f"{target}: missing {expected - set(checked)}"


@pytest.mark.parametrize("target", [t[0] for t in TARGETS])
def test_rendered_yamllint(target: str, rendered: dict[str, Rendered]) -> None:
    path = str(rendered[target].path)
    result = run(
        [sys.executable, "-m", "yamllint", "-c", "deploy/.yamllint", "-f", "parsable", path]
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", [t[0] for t in TARGETS])
def test_rendered_deployment_contract(target: str, rendered: dict[str, Rendered]) -> None:
    docs = rendered[target].docs
    by_kind = {d["kind"]: d for d in docs}
    deployment, service, hpa, pdb = (
        by_kind[k]
        for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
    )
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert POD_LABELS.items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The image's entry command runs as is (test_entry_command checks it).
    assert "command" not in container and "args" not in container
    assert container["image"] != "tandem", "the overlay must set the image"
    # Probes on the routes the entry-command test hits.
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "time to load + warm"
    # Hardened: non-root, read-only root, nothing to escalate, writable /tmp only.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["enableServiceLinks"] is False, "service links would set TANDEM_PORT=tcp://..."
    assert spec["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/data/bundle"]["readOnly"] and mounts["/models/student"]["readOnly"]
    for init in spec.get("initContainers", []):
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        assert init["securityContext"]["allowPrivilegeEscalation"] is False
    # Guaranteed-style resources and topology spread.
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    assert resources["requests"]["cpu"] == resources["limits"].get("cpu"), "requests = limits"
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    # Configuration: every generated name the pod refers to exists, every TANDEM_*
    # key is a real setting (pydantic-settings ignores unknown ones silently).
    names = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    env: dict[str, str] = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env.update(names[("ConfigMap", source["configMapRef"]["name"])]["data"])
        else:  # the Secret: key names only (values are base64 there; "" here)
            env.update(names[("Secret", source["secretRef"]["name"])]["data"])
    _assert_known_settings(env)
    assert env["TANDEM_PORT"] == str(container["ports"][0]["containerPort"])
    for init in spec.get("initContainers", []):
        for item in init.get("env", []):
            ref = item.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                assert item["name"] in names[("ConfigMap", ref["name"])]["data"]
    if "persistentVolumeClaim" in volumes["data"]:
        claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
        assert ("PersistentVolumeClaim", claim) in names
    # Service, PDB, HPA point at this Deployment's pods.
    assert service["spec"]["selector"] == POD_LABELS
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert pdb["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # A drain may take maxUnavailable pods; the HPA's floor keeps one serving.
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom, "the HPA needs a custom metric (queue depth or latency)"
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert set(custom) <= served, f"HPA metrics {custom} not served by the adapter ({served})"


def _assert_service_monitor(monitor: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """ServiceMonitor (monitoring.coreos.com/v1): the fields that decide whether scraping works."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    services = [d for d in docs if d["kind"] == "Service"]
    selected = [
        s
        for s in services
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert len(selected) == 1, "the ServiceMonitor must select the tandem Service"
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


def _assert_prometheus_rule(rule: dict[str, Any]) -> None:
    """PrometheusRule (monitoring.coreos.com/v1): the operator's schema, as far as used.

    Its groups are checked by promtool in test_alerts.py.
    """
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert set(rule) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        for item in group["rules"]:
            assert set(item) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert isinstance(item["expr"], str)
            if "for" in item:
                _seconds(item["for"])


def _assert_ray_job(job: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """RayJob (ray.io/v1): pod templates valid as Kubernetes pods, a build command that parses."""
    import shlex

    import typer.main
    from tandem.indexer.cli import app as index_app

    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    cluster = spec["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["workerGroupSpecs"]]
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for template in templates:
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        for version in K8S_VERSIONS:
            kubernetes_validate.validate({**pod_template, "template": template}, version, True)
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for volume in template["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:  # the bundle volume the servers read
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    gpus = [
        g for g in cluster["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]  # fmt: skip
    assert gpus, "teacher workers get GPUs"
    words = shlex.split(spec["entrypoint"])
    assert words[:3] == ["tandem", "index", "build"]
    build = typer.main.get_command(index_app).commands["build"]  # type: ignore[attr-defined]
    options = {opt for param in build.params for opt in param.opts}
    flags = [w for w in words[3:] if w.startswith("--")]
    assert set(flags) <= options, f"unknown flags {set(flags) - options}"
    assert {"--engine", "--resume", "--gpus-per-actor"} <= set(flags)
    assert words[words.index("--engine") + 1] == "ray"


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, f"not a Prometheus duration: {duration}"
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _assert_known_settings(env: dict[str, str]) -> None:
    """Every TANDEM_* variable is a ServerSettings field, and together they validate."""
    fields = {f"TANDEM_{name.upper()}": name for name in ServerSettings.model_fields}
    unknown = sorted(k for k in env if k.startswith("TANDEM_") and k not in fields)
    assert unknown in ([], ["TANDEM_HOME"]), f"not server settings: {unknown}"
    values = {fields[k]: v for k, v in env.items() if k in fields}
    ServerSettings.model_validate(values)  # these values only, not this process's env


# ------------------------------------------------------------------ YAML, compose, monitoring


def test_yamllint_deploy() -> None:
    result = run(
        [sys.executable, "-m", "yamllint", "-c", "deploy/.yamllint", "-f", "parsable", "deploy"]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wires_tandem_prometheus_grafana() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"tandem", "prometheus", "grafana"}
    tandem = services["tandem"]
    assert (DEPLOY / tandem["build"]["context"] / tandem["build"]["dockerfile"]).is_file()
    assert tandem["read_only"] is True and "/tmp" in tandem["tmpfs"]
    assert int(tandem["stop_grace_period"].rstrip("s")) >= 15
    targets = {v.rsplit(":", 2)[1] for v in tandem["volumes"]}
    assert {"/data/bundle", "/models/student"} <= targets
    assert all(v.endswith(":ro") for v in tandem["volumes"])
    # The container's environment: the image's ENV, then compose's (with ${VAR:-default}).
    environment = parse_dockerfile(DEPLOY / "docker" / "Dockerfile")[-1].env()
    for key, value in tandem["environment"].items():
        environment[key] = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
    _assert_known_settings(environment)
    mounts: dict[str, str] = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name}: {source} is missing"
                mounts[target] = source
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["tandem:8080"]
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tandem.yaml").read_text())[
        "providers"
    ]
    assert mounts[provider["options"]["path"] + "/tandem.json"] == "./grafana/tandem.json"


def test_dashboard_covers_the_issue() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "tandem.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    text = "\n".join(exprs)
    assert "sum by (route) (rate(tandem_requests_total" in text  # QPS
    for quantile in ("0.5", "0.95", "0.99"):
        for stage in ("queue", "tokenize", "embed", "search", "rescore", "request"):
            assert f"histogram_quantile({quantile}, sum by (le) (rate(tandem_{stage}_" in text
    for needle in (
        "tandem_batch_size_bucket",
        "tandem_queue_depth",
        'status="429"',
        'status=~"5.."',
        'status=~"4.."',
        "tandem_bundle_info",
    ):
        assert needle in text, needle
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{panel['title']} is wider than the grid"
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_promql_parses() -> None:
    """Every query in the dashboard and the adapter rules is valid PromQL."""
    grafana = {"$__rate_interval": "1m", "$__range": "1h"}
    dashboard = json.loads((DEPLOY / "grafana" / "tandem.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [
        v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    for rule in adapter["rules"]["custom"]:
        queries.append(rule["seriesQuery"])
        queries.append(
            rule["metricsQuery"]
            .replace("<<.Series>>", "tandem_x")
            .replace("<<.LabelMatchers>>", 'pod="p"')
            .replace("<<.GroupBy>>", "pod")
        )
    assert len(queries) > 20
    for query in queries:
        text = query
        for name, value in grafana.items():
            text = text.replace(name, value)
        text = re.sub(r"\$\w+", ".*", text)  # dashboard variables ($instance, $route, ...)
        if text.startswith("label_values("):
            text = text[len("label_values(") : text.rindex(",")]
        try:
            promql_parser.parse(text)
        except ValueError as exc:
            pytest.fail(f"invalid PromQL: {query}\n{exc}")


def test_monitoring_uses_real_metric_names() -> None:
    exposed = exposed_metric_names()
    files = [
        DEPLOY / "grafana" / "tandem.json",
        DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml",
        *sorted((DEPLOY / "k8s").rglob("hpa*.yaml")),
    ]
    for path in files:
        names = referenced_metric_names(path.read_text())
        assert names, f"{path} names no tandem metric"
        # The adapter's `name.as` and the HPA's metric name are adapter-side names.
        names -= {"tandem_search_latency_p95_seconds"}
        assert names <= exposed, f"{path.relative_to(REPO)}: unknown {sorted(names - exposed)}"


# ------------------------------------------------------------------ the entry command


@pytest.fixture(scope="module")
def image_data(
    tmp_path_factory: pytest.TempPathFactory, teacher: Encoder, aligned_student_dir: Path
) -> Path:
    """What the image expects mounted: data/bundle (a bundle root) and data/student (a copy).

    The student is copied the way README "Deploy" says (`cp -rL`: the aligned name
    is a symlink into the store), which also proves the copy is self-contained.
    """
    data = tmp_path_factory.mktemp("image-data")
    docs = list(islice(read_corpus(REPO / "samples" / "corpus.jsonl"), 20))
    build_bundle(docs, data / "bundle", teacher, ["f32-768"])
    shutil.copytree(aligned_student_dir, data / "student", symlinks=False)
    return data


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _image_argv_and_env(
    dockerfile: Path, data: Path, home: Path
) -> tuple[list[str], dict[str, str]]:
    """The runtime stage's ENTRYPOINT + CMD and ENV, mapped from image paths to this checkout.

    /opt/tandem/bin (the image's venv) is this interpreter's bin folder. tini is
    used when this machine has it (Debian package `tini`), else dropped: it only
    forwards signals and reaps, and it is never PID 1 here anyway.
    """
    runtime = parse_dockerfile(dockerfile)[-1]
    argv = runtime.exec_form("ENTRYPOINT") + runtime.exec_form("CMD")
    if not Path(argv[0]).exists():
        argv = argv[2:]
    env = runtime.env()
    env["PATH"] = env["PATH"].replace("/opt/tandem/bin", str(Path(sys.executable).parent))
    # The mounts and the writable /tmp live in this test's folders; bind loopback only.
    env.update(
        TANDEM_BUNDLE=str(data / "bundle"),
        TANDEM_STUDENT=str(data / "student"),
        TANDEM_HOST="127.0.0.1",
        TANDEM_PORT=str(_free_port()),
        TANDEM_API_KEY=API_KEY,
        HOME=str(home),
        TANDEM_HOME=str(home / "tandem"),
        TMPDIR=str(home),
        # tini is not PID 1 here; as a subreaper it still reaps orphans as it would be.
        TINI_SUBREAPER="1",
        # Only the packages `pip install .` puts in the image are importable.
        PYTHONPATH=os.pathsep.join(
            [str(write_image_site(home / "image-site")), os.environ.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep),
    )
    return argv, env


@contextlib.contextmanager
def _started(
    argv: list[str], env: dict[str, str], log: Path, cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: tini and its child
            proc.wait(timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"entry command exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"no /healthz after {timeout}s:\n{log.read_text()[-4000:]}")


def _gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("workers", [1, 2])
def test_entry_command(image_data: Path, tmp_path: Path, workers: int) -> None:
    """Two workers add uvicorn's supervisor and Prometheus multiprocess files in TMPDIR."""
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    argv, env = _image_argv_and_env(dockerfile, image_data, tmp_path)
    env["TANDEM_WORKERS"] = str(workers)
    assert argv[-2:] == ["tandem", "serve"]
    url = f"http://127.0.0.1:{env['TANDEM_PORT']}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    log = tmp_path / "serve.log"
    before = sorted(p.relative_to(image_data) for p in image_data.rglob("*"))
    workdir = tmp_path / "workdir"  # the image's / : read-only, so nothing may land here
    workdir.mkdir()
    with _started(argv, env, log, workdir) as proc:
        _wait_ready(proc, url, log)
        assert httpx.get(f"{url}/readyz", timeout=10).json()["status"] == "ready"
        # The image's HEALTHCHECK, as Docker runs it.
        check = healthcheck_command(parse_dockerfile(dockerfile)[-1])
        check = [
            c.replace("/opt/tandem/healthcheck.py", str(DEPLOY / "docker" / "healthcheck.py"))
            for c in check
        ]
        assert subprocess.run(check, env=env, timeout=30).returncode == 0
        body = {"query": "how do vaccines protect against disease", "k": 3}
        assert httpx.post(f"{url}/search", json=body, timeout=30).status_code == 401
        response = httpx.post(f"{url}/search", json=body, headers=auth, timeout=30)
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 3
        metrics = httpx.get(f"{url}/metrics", timeout=10).text  # no key needed, like probes
        assert 'tandem_requests_total{route="/search",status="200"} 1.0' in metrics

        # SIGTERM with a request in flight (64 queries of ~80 tokens: a fraction of a
        # second of student time): it is answered before the process ends.
        query = " ".join(["the immune response to vaccination in older adults"] * 10)
        batch = {"queries": [query] * 64, "k": 5}
        answer: dict[str, httpx.Response] = {}

        def send() -> None:
            with httpx.Client(headers=auth, timeout=60) as client:
                answer["response"] = client.post(f"{url}/search/batch", json=batch)

        sender = threading.Thread(target=send)
        sender.start()
        seen_in_flight = 0.0
        deadline = time.monotonic() + 30
        while not seen_in_flight and sender.is_alive() and time.monotonic() < deadline:
            seen_in_flight = _gauge(url, "tandem_in_flight")
        proc.send_signal(signal.SIGTERM)  # to tini (or tandem), as `docker stop` does
        sender.join(timeout=60)
        status = proc.wait(timeout=60)
    logs = log.read_text()
    assert seen_in_flight >= 1, "the batch finished before SIGTERM: the drain was not exercised"
    assert answer["response"].status_code == 200, answer["response"].text
    assert len(answer["response"].json()["results"]) == 64
    # A clean stop: uvicorn drains, runs the app's shutdown, then re-raises SIGTERM
    # on itself so the exit status says why it stopped (tini passes on 128 + 15).
    assert status in (0, 128 + signal.SIGTERM, -signal.SIGTERM), logs[-4000:]
    assert "Application shutdown complete" in logs and "Traceback" not in logs, logs[-4000:]
    after = sorted(p.relative_to(image_data) for p in image_data.rglob("*"))
    assert after == before, "the server wrote into its read-only mounts"
    assert not any(workdir.iterdir()), "the server wrote into its working directory"


def test_gpu_image_runs_the_same_entry_command() -> None:
    """Dockerfile.gpu cannot run here; its entry command is the one tested above."""
    cpu, gpu = (
        parse_dockerfile(DEPLOY / "docker" / n)[-1] for n in ("Dockerfile", "Dockerfile.gpu")
    )
    assert gpu.exec_form("ENTRYPOINT") == cpu.exec_form("ENTRYPOINT")
    assert healthcheck_command(gpu) == healthcheck_command(cpu)
    assert {k: v for k, v in gpu.env().items() if k in cpu.env()} == cpu.env()
    assert gpu.env()["TANDEM_DEVICE"] == "cuda"
