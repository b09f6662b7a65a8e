"""``tandem search``: the CLI over TandemClient, against a live server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tandem.cli import app
from tandem.client import TandemClient
from tests.support.server import API_KEY, QUERIES, ServerProcess

pytestmark = pytest.mark.slow


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["search", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_prints_the_hits_as_a_table(server: ServerProcess) -> None:
    code, out, _ = run(QUERIES[3], "--url", server.url, "--k", "3", "--api-key", API_KEY)
    assert code == 0, out
    with TandemClient(server.url, api_key=API_KEY) as client:
        expected = client.search(QUERIES[3], k=3)
    assert "3 results" in out and expected.variant in out
    for hit in expected.results:
        assert hit.id in out and f"{hit.score:.4f}" in out


def test_json_output_with_filter_and_env_key(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_API_KEY", API_KEY)
    monkeypatch.setenv("TANDEM_URL", server.url)
    code, out, _ = run(QUERIES[0], "-k", "4", "--filter", "topic=climate", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert len(data["results"]) == 4
    assert all(hit["metadata"]["topic"] == "climate" for hit in data["results"])


def test_json_on_stdout_is_only_json_in_a_real_process(server: ServerProcess) -> None:
    env = {**os.environ, "TANDEM_API_KEY": API_KEY}
    command = [sys.executable, "-m", "tandem", "search", QUERIES[2], "--url", server.url]
    done = subprocess.run(
        [*command, "--k", "2", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["results"]) == 2


def test_server_errors_are_one_line_and_exit_1(server: ServerProcess) -> None:
    code, out, err = run("q", "--url", server.url, "--api-key", API_KEY, "--variant", "nope")
    assert code == 1
    assert "unknown_variant" in err and "nope" in err
    code, _, err = run("q", "--url", server.url, "--api-key", "wrong")
    assert code == 1 and "401 unauthorized" in err
