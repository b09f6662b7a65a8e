"""The container tier: the CPU image built from deploy/docker/Dockerfile and run.

What only a Docker engine shows: the image builds (every COPY source, pip
resolution on the base image), holds no torch, transformers or test/build tools,
and runs as deploy/README.md says (read-only root, /tmp tmpfs, uid 10001, data
mounted read-only) until its own HEALTHCHECK says healthy; `docker stop` drains;
refusals exit with one clear line; a new bundle version is picked up with no
failed request; Debian's Prometheus scrapes it with deploy/prometheus/prometheus.yml
and the dashboard's queries return series.

Without an engine (a laptop) the tier skips, saying how to enable it; .ci/run
starts one and sets TANDEM_REQUIRE_DOCKER=1, so CI never skips it. The base image
is deploy/docker/local-base (no image registry needed), or TANDEM_PYTHON_IMAGE.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tandem.indexer.build import build_bundle
from tandem.models.encoder import Encoder

from tandem.data.corpus import read_corpus
from tests.support.deploy import (
    DEPLOY,
    ENGINE_HINT,
    FACTS,
    REPO,
    Container,
    Docker,
    find_docker,
    python_base_image,
    remove_test_containers,
    start_container,
)
from tests.support.server import free_port

pytestmark = pytest.mark.slow

API_KEY = "container-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
VARIANTS = ["f32-768", "int8-768"]  # int8 is rescored: the dashboard's rescore panels
IMAGE = "tandem-test:cpu"
# Distributions the serving image must not hold (tandem's export, eval and dev extras
# bring them); checked together with whatever else those extras name.
FORBIDDEN = {"torch", "transformers", "sentence-transformers", "pytest", "ruff", "mypy"}
BUILD_TOOLS = ("gcc", "cc", "g++", "make", "ld", "git")
QUERY = "how do vaccines protect against disease"
# Four batch requests of this many ~100-token queries: in flight together for a second or
# two on a small CPU, well inside the 10 s request deadline.
BURST_QUERIES = 16


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    found, why = find_docker()
    if found is None:
        if os.environ.get("TANDEM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"container tier required but {why}")
        pytest.skip(f"container tier: {why}; {ENGINE_HINT}")
    remove_test_containers(found)  # left by an interrupted run
    started = time.monotonic()
    yield found
    remove_test_containers(found)
    FACTS["tier wall time"] = (
        f"{time.monotonic() - started:.0f} s (engine found to last container removed)"
    )


@pytest.fixture(scope="module")
def image(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CPU image, built once per run of this tier from the repository's Dockerfile."""
    base = python_base_image(docker, tmp_path_factory.mktemp("local-base"))
    started = time.monotonic()
    docker.run(
        "build",
        "--file",
        str(DEPLOY / "docker" / "Dockerfile"),
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--tag",
        IMAGE,
        str(REPO),
        timeout=1200,
    )
    size = int(docker.run("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    FACTS["CPU image build"] = f"{time.monotonic() - started:.0f} s (BuildKit cache kept)"
    FACTS["CPU image size"] = f"{size / 1e6:.0f} MB ({IMAGE}, base {base})"
    return IMAGE


def _readable(path: Path) -> Path:
    """chmod -R a+rX: the container's user (10001) is not the one who wrote the files."""
    for item in [path, *path.rglob("*")]:
        if not item.is_symlink():
            mode = item.stat().st_mode
            item.chmod(mode | 0o444 | (0o111 if item.is_dir() else 0))
    return path


@dataclass(frozen=True)
class Data:
    bundle: Path  # a bundle root (current -> versions/v0001), 20 documents
    student: Path  # `cp -rL` of the student aligned to the bundle's teacher
    raw_student: Path  # the student before alignment: it does not fit the bundle


@pytest.fixture(scope="module")
def data(
    tmp_path_factory: pytest.TempPathFactory,
    teacher: Encoder,
    aligned_student_dir: Path,
    student_dir: Path,
) -> Data:
    root = tmp_path_factory.mktemp("container-data")
    build_bundle(_docs(20), root / "bundle", teacher, VARIANTS)
    shutil.copytree(aligned_student_dir, root / "student", symlinks=False)
    shutil.copytree(student_dir, root / "raw-student", symlinks=False)
    _readable(root)
    return Data(root / "bundle", root / "student", root / "raw-student")


def _docs(n: int) -> list[Any]:
    return list(islice(read_corpus(REPO / "samples" / "corpus.jsonl"), n))


def _mounts(bundle: Path, student: Path) -> dict[Path, str]:
    return {bundle: "/data/bundle", student: "/models/student"}


def _healthy(container: Container) -> float:
    """Seconds until the image's own HEALTHCHECK reports healthy (within its start period)."""
    config = json.loads(
        container.docker.run(
            "inspect", "--format", "{{json .Config.Healthcheck}}", container.id
        ).stdout
    )
    start_period = config["StartPeriod"] / 1e9
    interval = config["Interval"] / 1e9
    started = time.monotonic()
    while time.monotonic() - started < start_period + interval:
        state = container.state()
        health = state.get("Health") or {}
        assert isinstance(health, dict)
        if health.get("Status") == "healthy":
            return time.monotonic() - started
        if state["Status"] != "running":
            pytest.fail(f"container {state['Status']}:\n{container.logs()[-4000:]}")
        time.sleep(1)
    pytest.fail(f"not healthy after the {start_period:.0f} s start period:\n{container.logs()}")


def _answers(url: str, timeout: float = 120) -> None:
    """Wait until /healthz answers on the published port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no /healthz on {url} after {timeout} s")


@pytest.fixture(scope="module")
def serving(docker: Docker, image: str, data: Data) -> Iterator[Container]:
    """The long-lived container: API key, watching `current`, a small admission limit."""
    container = start_container(
        docker,
        image,
        _mounts(data.bundle, data.student),
        {"TANDEM_API_KEY": API_KEY, "TANDEM_WATCH_CURRENT": "true", "TANDEM_MAX_QUEUE": "16"},
    )
    try:
        FACTS["healthy after"] = f"{_healthy(container):.0f} s (HEALTHCHECK interval 15 s)"
        yield container
    finally:
        container.remove()


# ------------------------------------------------------------------ the image


def test_image_holds_no_torch_and_no_build_or_test_tools(docker: Docker, image: str) -> None:
    listing = docker.run(
        "run",
        "--rm",
        "--read-only",
        "--entrypoint",
        "python",
        image,
        "-c",
        "import importlib.metadata as m, json, shutil, sys;"
        "print(json.dumps({'dists': sorted(d.metadata['Name'].lower() for d in m.distributions()),"
        f"'tools': [t for t in {list(BUILD_TOOLS)!r} if shutil.which(t)]}}))",
    )
    found = json.loads(listing.stdout)
    dists = {re.sub(r"[-_.]+", "-", name) for name in found["dists"]}
    # pip and setuptools come with the image's venv (an extra may pin setuptools too).
    extras = _extra_distributions() - _base_distributions() - {"pip", "setuptools", "wheel"}
    assert "tandem" in dists and "onnxruntime" in dists and "faiss-cpu" in dists
    assert not dists & (FORBIDDEN | extras), f"not for the serving image: {dists & extras}"
    assert found["tools"] == [], f"build tools in the image: {found['tools']}"
    size = int(docker.run("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"\nCPU image size: {size / 1e6:.0f} MB")


def _extra_distributions() -> set[str]:
    """Every distribution named by tandem's optional extras (export, eval, dev, ...)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = set()
    for requirements in project["optional-dependencies"].values():
        for requirement in requirements:
            names.add(re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement)[0].lower()))
    return names


def _base_distributions() -> set[str]:
    from tests.support.deploy import image_distributions

    return {re.sub(r"[-_.]+", "-", d) for d in image_distributions()}


# ------------------------------------------------------------------ serving


def test_runs_read_only_as_10001_and_answers(docker: Docker, serving: Container) -> None:
    config = json.loads(docker.run("inspect", "--format", "{{json .}}", serving.id).stdout)
    assert config["HostConfig"]["ReadonlyRootfs"] is True
    ids = docker.run(
        "exec", serving.id, "python", "-c", "import os; print(os.getuid(), os.getgid())"
    )
    assert ids.stdout.split() == ["10001", "10001"]
    # Nothing outside /tmp is writable, not even the user's own files.
    probe = docker.run("exec", serving.id, "sh", "-c", "touch /opt/tandem/x", check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr
    bindings = config["NetworkSettings"]["Ports"]["8080/tcp"]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, bindings

    url = serving.url()
    body = {"query": QUERY, "k": 3}
    assert httpx.post(f"{url}/search", json=body, timeout=30).status_code == 401
    response = httpx.post(f"{url}/search", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 3
    embedded = httpx.post(f"{url}/v1/embeddings", json={"input": [QUERY]}, headers=AUTH, timeout=30)
    assert embedded.status_code == 200, embedded.text
    assert len(embedded.json()["data"][0]["embedding"]) == 768  # the teacher's space
    assert httpx.get(f"{url}/readyz", timeout=10).json()["status"] == "ready"
    metrics = httpx.get(f"{url}/metrics", timeout=10)  # no key: Prometheus scrapes it
    assert metrics.status_code == 200
    assert 'tandem_requests_total{route="/search",status="200"}' in metrics.text
    assert "tandem_ready 1.0" in metrics.text


# ------------------------------------------------------------------ Prometheus


@pytest.fixture(scope="module")
def prometheus(serving: Container, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus with deploy/prometheus/prometheus.yml, aimed at the container."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: apt-get install prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [serving.url().removeprefix("http://")]}]
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(folder / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (folder / "prometheus.log").read_text()[-4000:]
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", (promql, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _dashboard_queries() -> list[str]:
    """The dashboard's PromQL with Grafana's variables as a live dashboard fills them."""
    dashboard = json.loads((DEPLOY / "grafana" / "tandem.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    out = []
    for query in queries:
        text = query.replace("$__rate_interval", "1m").replace("$__range", "1h")
        out.append(re.sub(r"\$\w+", ".*", text))
    return out


def _traffic(url: str) -> None:
    """Searches (default and rescored variant), embeddings, a batch, a 401, a 422, a 429."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        for i in range(5):
            assert client.post("/search", json={"query": f"{QUERY} {i}", "k": 3}).status_code == 200
            rescored = client.post(
                "/search", json={"query": QUERY, "k": 3, "variant": "int8-768", "rescore": True}
            )
            assert rescored.status_code == 200 and rescored.json()["rescored"], rescored.text
            assert client.post("/v1/embeddings", json={"input": QUERY}).status_code == 200
            assert client.post("/search/batch", json={"queries": [QUERY] * 4}).status_code == 200
            assert client.post("/search", json={"k": 3}).status_code == 422
            # TANDEM_MAX_QUEUE=16: 17 queries at once are refused (429, "overloaded").
            assert client.post("/search/batch", json={"queries": [QUERY] * 17}).status_code == 429
        assert httpx.post(f"{url}/search", json={"query": QUERY}, timeout=30).status_code == 401


# ------------------------------------------------------------------ hot swap (scraped)


def test_hot_swap_with_no_failed_request(
    serving: Container, data: Data, teacher: Encoder, prometheus: str
) -> None:
    """Prometheus (started first) scrapes through the swap; the next test reads it."""
    url = serving.url()
    before = httpx.get(f"{url}/readyz", timeout=10).json()["version"]
    outcomes: list[int | str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
            while not stop.is_set():
                try:
                    outcomes.append(
                        client.post("/search", json={"query": QUERY, "k": 5}).status_code
                    )
                except httpx.HTTPError as exc:
                    outcomes.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        published = build_bundle(_docs(30), data.bundle, teacher, VARIANTS)
        deadline = time.monotonic() + 90
        version = before
        while version == before and time.monotonic() < deadline:
            version = httpx.get(f"{url}/readyz", timeout=10).json()["version"]
            time.sleep(0.5)
        time.sleep(1)  # traffic on the new version too
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert version == published.name != before, serving.logs()[-4000:]
    failed = [o for o in outcomes if o != 200]
    assert outcomes and not failed, f"{len(failed)} of {len(outcomes)} failed: {failed[:5]}"
    hits = httpx.post(f"{url}/search", json={"query": QUERY, "k": 30}, headers=AUTH, timeout=30)
    assert len(hits.json()["results"]) == 30  # the new version's 30 documents
    logs = serving.logs()
    assert "Traceback" not in logs and f"-> {published.name}" in logs, logs[-4000:]


def test_prometheus_scrapes_the_container(serving: Container, prometheus: str) -> None:
    url = serving.url()
    # Traffic spread over a few scrapes (5 s apart), so rates see increases.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        _traffic(url)
        up = _query(prometheus, 'up{job="tandem"}')
        if up and up[0]["value"][1] == "1" and _query(prometheus, "tandem_ready"):
            break
        time.sleep(2)
    assert [s["value"][1] for s in _query(prometheus, 'up{job="tandem"}')] == ["1"]
    # Queries that need a 5xx or a failed ONNX run cannot get data from healthy traffic.
    expected_empty = re.compile(r'status=~"5\.\."|tandem_batch_failures_total')
    queries = [q for q in _dashboard_queries() if not expected_empty.search(q)]
    assert len(queries) > 25
    missing: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _traffic(url)
        missing = [q for q in queries if not _query(prometheus, q)]
        if not missing:
            break
        time.sleep(5)
    assert not missing, "dashboard queries without series:\n" + "\n".join(missing)
    # The alert rules load and evaluate against the live series. The traffic above
    # is 5 429s in 31 requests: the overload alert goes pending (it fires only after
    # 15 minutes); every other alert stays inactive.
    expected = {"TandemSustainedOverload": "pending"}
    active: dict[str, str] = {}
    rules: list[dict[str, Any]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        _traffic(url)
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        active = {r["name"]: r["state"] for r in rules if r["state"] != "inactive"}
        if active == expected:
            break
        time.sleep(3)
    assert len(rules) == 8 and all(r["health"] == "ok" for r in rules), rules
    assert active == expected
    # The swap the previous test made is visible to Prometheus too.
    served = _query(prometheus, "tandem_bundle_info == 1")
    assert [s["metric"]["version"] for s in served] == ["v0002"], served


# ------------------------------------------------------------------ docker stop


def test_docker_stop_answers_every_accepted_request(docker: Docker, image: str, data: Data) -> None:
    # A 20 s request deadline (drain: 21 s, inside `docker stop -t 30`) leaves room for a
    # CPU shared with other work; the default 10 s one could answer the burst with 503s.
    env = {"TANDEM_API_KEY": API_KEY, "TANDEM_REQUEST_TIMEOUT_S": "20"}
    container = start_container(docker, image, _mounts(data.bundle, data.student), env)
    try:
        url = container.url()
        _answers(url)
        query = " ".join(["the immune response to vaccination in older adults"] * 10)
        batch = {"queries": [query] * BURST_QUERIES, "k": 5}
        answers: list[httpx.Response | str] = []
        together = threading.Barrier(4)

        def send() -> None:
            together.wait()  # the four requests leave at once
            try:
                answers.append(
                    httpx.post(f"{url}/search/batch", json=batch, headers=AUTH, timeout=120)
                )
            except httpx.HTTPError as exc:
                answers.append(repr(exc))

        senders = [threading.Thread(target=send) for _ in range(4)]
        for sender in senders:
            sender.start()
        admitted = 0.0
        deadline = time.monotonic() + 30
        while admitted < 4 * BURST_QUERIES and time.monotonic() < deadline and not answers:
            text = httpx.get(f"{url}/metrics", timeout=5).text
            match = re.search(r"^tandem_in_flight (\S+)$", text, re.MULTILINE)
            admitted = float(match.group(1)) if match else 0.0
        assert admitted == 4 * BURST_QUERIES, (
            "the burst was not all admitted before it was answered"
        )
        stopped = time.monotonic()
        docker.run("stop", "--time", "30", container.id, timeout=60)
        stop_seconds = time.monotonic() - stopped
        for sender in senders:
            sender.join(timeout=60)
        state = container.state()
        logs = container.logs()
    finally:
        container.remove()
    statuses = [a.status_code if isinstance(a, httpx.Response) else a for a in answers]
    bodies = [a.text[:300] if isinstance(a, httpx.Response) else a for a in answers]
    assert statuses == [200] * 4, bodies
    assert all(
        len(a.json()["results"]) == BURST_QUERIES for a in answers if isinstance(a, httpx.Response)
    )
    # Exited by itself after draining (143: SIGTERM re-raised), not killed at the timeout.
    assert state["ExitCode"] in (0, 128 + signal.SIGTERM) and not state["OOMKilled"], state
    assert stop_seconds < 30, f"docker stop took {stop_seconds:.0f} s: killed, not drained"
    assert "Application shutdown complete" in logs and "Traceback" not in logs, logs[-4000:]
    FACTS[f"docker stop with {4 * BURST_QUERIES} queries in flight"] = f"{stop_seconds:.1f} s"


# ------------------------------------------------------------------ refusals


def _unreadable_copy(data: Data) -> Path:
    copy = data.bundle.parent / "unreadable-bundle"
    if not copy.exists():
        shutil.copytree(data.bundle, copy, symlinks=True)
        for item in [copy, *copy.rglob("*")]:
            if not item.is_symlink():
                item.chmod(0o700 if item.is_dir() else 0o600)  # root's only
    return copy


REFUSALS = {
    # case: (mounts, a fragment the one error line must carry)
    "student-does-not-fit": ("raw_student", "align"),
    "missing-bundle-mount": ("no_bundle", "/data/bundle"),
    "unreadable-bundle": ("unreadable", "/data/bundle"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_exit_non_zero_with_one_clear_line(
    docker: Docker, image: str, data: Data, case: str
) -> None:
    kind, fragment = REFUSALS[case]
    if kind == "raw_student":
        mounts = _mounts(data.bundle, data.raw_student)
    elif kind == "no_bundle":
        mounts = {data.student: "/models/student"}
    else:
        mounts = _mounts(_unreadable_copy(data), data.student)
    container = start_container(docker, image, mounts)
    try:
        status = container.wait_exit(timeout=120)
        logs = container.logs()
    finally:
        container.remove()
    assert status != 0, logs
    assert "Traceback" not in logs, logs
    lines = [line for line in logs.splitlines() if line.strip()]
    errors = [line for line in lines if fragment in line]
    assert len(errors) == 1, f"expected one line naming {fragment!r}:\n{logs}"
    FACTS[f"refusal, {case}"] = f"exit {status}: {errors[0].strip()[:160]}"
    assert "Uvicorn running" not in logs
