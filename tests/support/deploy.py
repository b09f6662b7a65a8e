"""Helpers for the deploy tests: a Dockerfile reader, .dockerignore matching, tools,
and a thin Docker engine client for the container tier."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile*"))
OVERLAYS = sorted(p.parent for p in (DEPLOY / "k8s" / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(p.parent for p in (DEPLOY / "k8s" / "components").glob("*/kustomization.yaml"))
# Oldest Kubernetes minor still commonly run, and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")
# The PATH of the Debian/Ubuntu base images, which the Dockerfiles' `$PATH` extends.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tool(name: str) -> str:
    """A CLI from the dev extra: the venv's copy first (pinned by pyproject), else PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def run(
    args: list[str], cwd: Path = REPO, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self, path: str = BASE_PATH) -> dict[str, str]:
        """ENV of this stage, `$VAR` / `${VAR}` expanded as Docker does (PATH from the base)."""
        env = {"PATH": path}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
        return env

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT / CMD in exec (JSON) form; [] when absent."""
        args = self.last(keyword)
        if args is None:
            return []
        value = json.loads(args)
        assert isinstance(value, list), f"{keyword} must use the exec (JSON) form: {args}"
        return [str(v) for v in value]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # Docker drops comment lines, even inside a continuation
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    args: dict[str, str] = {}
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            arg, _, default = rest.partition("=")
            args[arg] = default
        elif keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), words[0])
            alias = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def healthcheck_command(stage: Stage) -> list[str]:
    """The HEALTHCHECK's CMD in exec form."""
    args = stage.last("HEALTHCHECK")
    assert args is not None, "no HEALTHCHECK"
    _, _, cmd = args.partition("CMD ")
    return [str(v) for v in json.loads(cmd)]


def copies(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from)."""
    found = []
    for args in stage.all("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        found.append((words[:-1], words[-1]))
    return found


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent folder decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        regex = _glob_regex(pat.strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def _glob_regex(pattern: str) -> str:
    """Go's filepath.Match plus `**` (any folders), as .dockerignore reads patterns."""
    out = []
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token in ("**", "**/"):
            out.append("(?:.*/)?" if token == "**/" else ".*")
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(token))
    return "".join(out)


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


# ------------------------------------------------------------------ metrics


def exposed_metric_names() -> set[str]:
    """Every sample name the server can expose (counters as *_total, histograms as *_bucket ...)."""
    from tandem.server.metrics import Metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return names


def referenced_metric_names(text: str) -> set[str]:
    return set(re.findall(r"\btandem_[a-z0-9_]+\b", text))


# ------------------------------------------------------------------ the image's packages


def image_distributions(root: str = "tandem") -> set[str]:
    """Distributions `pip install .` brings: tandem's requirements without its extras."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, frozenset[str]] = {}
    stack: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while stack:
        name, extras = stack.pop()
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, frozenset()) | extras
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for raw in dist.requires or []:
            req = Requirement(raw)
            envs = [{"extra": e} for e in ("", *extras)]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            stack.append((req.name, frozenset(req.extras)))
    return set(seen)


SITECUSTOMIZE = '''"""Written by tests/deploy: this interpreter sees only the image's packages."""
import sys

BLOCKED = frozenset({blocked!r})


class NotInImage:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {{name!r}} (not installed in the serving image)", name=name
            )
        return None


sys.meta_path.insert(0, NotInImage)
'''


def write_image_site(folder: Path) -> Path:
    """A sitecustomize that hides every installed module the image would not have.

    The dev venv holds torch, the eval and dev extras; the image holds only
    tandem's base requirements. Put the returned folder on PYTHONPATH and an
    import of anything else fails as it would in the container.
    """
    from importlib import metadata

    from packaging.utils import canonicalize_name

    wanted = image_distributions()
    blocked = sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if not any(canonicalize_name(d) in wanted for d in dists)
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=blocked))
    return folder


# ------------------------------------------------------------------ Docker engine

ENGINE_HINT = (
    "install a Docker engine and start it (Debian: `apt-get install docker.io debootstrap`, "
    "then `dockerd &`), as .ci/run does; TANDEM_REQUIRE_DOCKER=1 turns this skip into a failure"
)
TEST_LABEL = "tandem.test=containers"  # every container the tier starts, for cleanup
# Measurements printed at the end of the session (tests/deploy/conftest.py).
FACTS: dict[str, str] = {}


@dataclass(frozen=True)
class Docker:
    """A Docker client able to build with BuildKit, talking to a running engine."""

    client: str

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        result = subprocess.run(
            [self.client, *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args[:3])} ... exited {result.returncode}:\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
        return result


def _builds_with_buildkit(client: str) -> bool:
    """BuildKit comes from the buildx plugin, or is built into clients before 23.0."""
    probe = subprocess.run([client, "buildx", "version"], capture_output=True, timeout=30)
    if probe.returncode == 0:
        return True
    version = subprocess.run([client, "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"version (\d+)\.", version.stdout)
    return match is not None and int(match.group(1)) < 23


def find_docker() -> tuple[Docker | None, str]:
    """The first client (TANDEM_DOCKER, docker on PATH, /usr/bin/docker) that can build
    and reaches an engine; else None and why not."""
    explicit = os.environ.get("TANDEM_DOCKER")
    candidates = [explicit] if explicit else [shutil.which("docker"), "/usr/bin/docker"]
    why = "no docker client found"
    for client in dict.fromkeys(c for c in candidates if c and Path(c).exists()):
        info = subprocess.run([client, "info"], capture_output=True, text=True, timeout=30)
        if info.returncode != 0:
            said = [s.strip() for s in (info.stderr + info.stdout).splitlines() if s.strip()] or [
                "no output"
            ]
            reason = next((s for s in said if "connect" in s.lower()), said[-1])
            why = f"{client}: no engine answers ({reason[:200]})"
            continue
        if not _builds_with_buildkit(client):
            why = f"{client}: no BuildKit (install the buildx plugin)"
            continue
        return Docker(client), ""
    return None, why


def machine_ca_bundle() -> Path:
    """The CA bundle pip uses on this machine (PIP_CERT, pip's `cert`, or the system's)."""
    for candidate in (os.environ.get("PIP_CERT"), _pip_settings().get("cert")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    import ssl

    cafile = ssl.get_default_verify_paths().cafile
    return Path(cafile or "/etc/ssl/certs/ca-certificates.crt")


def _pip_settings() -> dict[str, str]:
    """pip's effective settings here (files and PIP_* variables), by option name."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    )
    settings: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        settings[key.rpartition(".")[2]] = value.strip().strip("'\"")
    return settings


def container_pip_conf(cert: str = "/etc/ssl/certs/ca-certificates.crt") -> str:
    """This machine's pip configuration as an image needs it: the indexes it reaches over
    the network (local folders and files are left out: the image cannot see them) and
    the CA bundle at its path in the image."""
    settings = _pip_settings()
    lines = ["[global]", f"cert = {cert}"]
    for key in ("index-url", "extra-index-url", "trusted-host", "timeout", "retries", "proxy"):
        value = settings.get(key) or settings.get(f"default-{key}")
        if not value:
            continue
        kept = [v for v in value.split() if not v.startswith(("file:", "/"))]
        if kept:
            lines.append(f"{key} = {' '.join(kept)}")
    return "\n".join(lines) + "\n"


def python_base_image(docker: Docker, workdir: Path) -> str:
    """The image passed as PYTHON_IMAGE: TANDEM_PYTHON_IMAGE, or the local base image
    (deploy/docker/local-base/build.sh: reused while the CA bundle, the pip
    configuration and the recipe are unchanged, else built, ~2-4 min)."""
    explicit = os.environ.get("TANDEM_PYTHON_IMAGE")
    if explicit:
        return explicit
    if shutil.which("debootstrap") is None:
        pytest.fail(
            "debootstrap is needed to build the local base image (apt-get install debootstrap), "
            "or set TANDEM_PYTHON_IMAGE to a Python 3.11 image your engine has "
            "(python:3.11-slim-bookworm)"
        )
    pip_conf = workdir / "pip.conf"
    pip_conf.write_text(container_pip_conf())
    started = time.monotonic()
    result = run(
        [
            "bash",
            str(DEPLOY / "docker" / "local-base" / "build.sh"),
            "--docker",
            docker.client,
            "--ca-bundle",
            str(machine_ca_bundle()),
            "--pip-conf",
            str(pip_conf),
        ],
        timeout=1200,
    )
    assert result.returncode == 0, f"local base image:\n{result.stderr[-4000:]}"
    tag = result.stdout.strip().splitlines()[-1]
    built = "building" in result.stderr
    FACTS["base image"] = (
        f"{tag} ({'built' if built else 'cached'}, {time.monotonic() - started:.0f} s)"
    )
    return tag


@dataclass
class Container:
    """One container started by the tier (detached, removed by the test that made it)."""

    docker: Docker
    id: str

    def url(self, port: int = 8080) -> str:
        """http://127.0.0.1:PORT of a port published to loopback."""
        published = self.docker.run("port", self.id, f"{port}/tcp").stdout.split()[0]
        return f"http://{published}"

    def state(self) -> dict[str, object]:
        out = self.docker.run("inspect", "--format", "{{json .State}}", self.id).stdout
        state: dict[str, object] = json.loads(out)
        return state

    def logs(self) -> str:
        result = self.docker.run("logs", self.id, check=False)
        return result.stdout + result.stderr

    def wait_exit(self, timeout: float) -> int:
        """The exit status once the container stops by itself within ``timeout``."""
        return int(self.docker.run("wait", self.id, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        self.docker.run("rm", "--force", "--volumes", self.id, check=False)


def start_container(
    docker: Docker,
    image: str,
    mounts: dict[Path, str],
    env: dict[str, str] | None = None,
) -> Container:
    """`docker run` as deploy/README.md says: read-only root with a /tmp tmpfs, the image's
    own user, data mounted read-only; port 8080 published to 127.0.0.1 only."""
    args = ["run", "--detach", "--label", TEST_LABEL, "--read-only", "--tmpfs", "/tmp"]
    args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    args += ["--publish", "127.0.0.1::8080"]
    for source, target in mounts.items():
        args += ["--volume", f"{source}:{target}:ro"]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    return Container(docker, docker.run(*args, image).stdout.strip())


def remove_test_containers(docker: Docker) -> None:
    listed = docker.run("ps", "--all", "--quiet", "--filter", f"label={TEST_LABEL}").stdout
    if listed.split():
        docker.run("rm", "--force", "--volumes", *listed.split(), check=False)
