"""Schemathesis against the live OpenAPI schema: no server errors, every answer as declared.

Two real servers run on 127.0.0.1: one without an API key (it serves
/openapi.json, and /admin answers 403) and one with a key (no docs are served
there, so it is fuzzed with the first one's schema plus the Bearer header,
which reaches /admin/reload). Every case is checked for: no 5xx, a declared
status code, content type, headers and body schema, and invalid requests
rejected with a 4xx.

``positive_data_acceptance`` is left out on purpose: some schema-valid
requests are refused by design for reasons a static schema cannot carry (the
variants of the bundle loaded now, ``max_k``, ``max_batch_queries``, the
student's dimension, blank text), and those answers are 4xx with the
declared error body, which the other checks still validate.

CI runs ``TANDEM_FUZZ_EXAMPLES`` (default 25, about 400 cases in all)
examples per operation, generation mode and server; by hand, e.g.
``TANDEM_FUZZ_EXAMPLES=500 python -m pytest tests/reliability/test_fuzz.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode, checks

from tests.support.server import API_KEY, ServerProcess, running_server, scrape

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "25"))
AUTH = {"Authorization": f"Bearer {API_KEY}"}
EXCLUDED = [checks.positive_data_acceptance]
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository
    suppress_health_check=list(HealthCheck),
)
CASES: Counter[str] = Counter()
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/search"),
    ("POST", "/search/batch"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/info"),
    ("POST", "/admin/reload"),
]
TAKE_INPUT = {"/search", "/search/batch", "/v1/embeddings", "/admin/reload"}
# Negative cases exist only for operations with parameters or a body.
PLAN = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or path in TAKE_INPUT
]


def server_args(bundle: Path, student: str) -> list[str]:
    # A generous deadline: a slow CI machine must not turn a valid case into a 503.
    return ["--bundle", str(bundle), "--student", student, "--request-timeout-s", "60"]


@pytest.fixture(scope="module")
def open_server(
    tmp_path_factory: pytest.TempPathFactory, reliability_bundle: Path, student_arg: str
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fuzz-open")
    with running_server(tmp, server_args(reliability_bundle, student_arg), name="open") as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory, reliability_bundle: Path, student_arg: str
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fuzz-keyed")
    args = server_args(reliability_bundle, student_arg)
    with running_server(tmp, args, {"TANDEM_API_KEY": API_KEY}, name="keyed") as s:
        yield s


@pytest.fixture(scope="module")
def live_schema(open_server: ServerProcess) -> schemathesis.BaseSchema:
    """The schema the running server publishes, not one built in this process."""
    return schemathesis.openapi.from_url(f"{open_server.url}/openapi.json", timeout=30)


def test_every_operation_is_fuzzed(live_schema: schemathesis.BaseSchema) -> None:
    """A route added to the API without being added to OPERATIONS fails here."""
    served = {(op.ok().method.upper(), op.ok().path) for op in live_schema.get_all_operations()}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize("server_name", ["open", "keyed"])
@pytest.mark.parametrize(
    ("method", "path", "mode"), PLAN, ids=[f"{m} {p} {mode}" for m, p, mode in PLAN]
)
def test_every_case_is_answered_as_declared(
    live_schema: schemathesis.BaseSchema,
    open_server: ServerProcess,
    keyed_server: ServerProcess,
    method: str,
    path: str,
    server_name: str,
    mode: GenerationMode,
) -> None:
    server, headers = (open_server, {}) if server_name == "open" else (keyed_server, AUTH)
    operation = live_schema[path][method]

    # The schema comes from a server a fixture starts, and schemathesis' loader for that
    # (pytest.from_fixture) fails on pytest 9 (Node._nodeid is gone): so each operation's
    # cases are drawn with hypothesis from the operation's strategy, its Python API.
    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(mode))
    def run(case: Case) -> None:
        case.call_and_validate(
            base_url=server.url, headers=headers, timeout=60, excluded_checks=EXCLUDED
        )
        CASES[f"{server_name} {method} {path}"] += 1

    run()


@pytest.mark.parametrize("name", ["open", "keyed"])
def test_servers_counted_no_5xx_and_stay_ready(
    name: str, open_server: ServerProcess, keyed_server: ServerProcess
) -> None:
    """Whatever ran before in this module: the servers' own counters hold no 5xx."""
    server = open_server if name == "open" else keyed_server
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
    statuses: Counter[str] = Counter()
    for (metric_name, labels), value in scrape(server.url).items():
        if metric_name == "tandem_requests_total":
            statuses[dict(labels)["status"]] += int(value)
    assert not [s for s in statuses if s.startswith("5")], statuses
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log
    fuzzed = {k: v for k, v in CASES.items() if k.startswith(name)}
    print(f"{name}: {sum(fuzzed.values())} cases {dict(fuzzed)}; statuses {dict(statuses)}")
