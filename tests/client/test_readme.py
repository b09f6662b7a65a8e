"""The README's "Use it from your application" examples, run verbatim against a live server.

Each example is a ```python block preceded by ``<!-- example: NAME -->``. It
runs in a fresh interpreter, outside the repository, with only TANDEM_URL and
TANDEM_API_KEY pointing it at the test server, as an application would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.client import TandemClient
from tests.support.server import API_KEY, REPO, ServerProcess, sample_docs

pytestmark = pytest.mark.slow
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\n```python\n(.*?)```", re.DOTALL)
RETRIEVERS = ["client", "langchain", "llamaindex", "haystack"]


def readme_examples() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    return {name: code for name, code in EXAMPLE.findall(text)}


def run_example(code: str, server: ServerProcess, cwd: Path) -> list[str]:
    env = {
        **os.environ,
        "TANDEM_URL": server.url,
        "TANDEM_API_KEY": API_KEY,
        "HAYSTACK_TELEMETRY_ENABLED": "False",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_the_section_has_every_example() -> None:
    assert set(readme_examples()) == {*RETRIEVERS, "openai"}


@pytest.mark.parametrize("name", RETRIEVERS)
def test_retrieval_example_prints_three_corpus_documents(
    name: str, server: ServerProcess, tmp_path: Path
) -> None:
    lines = run_example(readme_examples()[name], server, tmp_path)
    docs = {doc.id: doc for doc in sample_docs()}
    assert len(lines) == 3, lines
    for line in lines:
        ids = [word for word in line.split() if word in docs]
        assert len(ids) == 1, line
        doc = docs[ids[0]]
        assert doc.text in line
        if name == "client":  # the example filters on topic
            assert doc.metadata["topic"] == "climate"


def test_openai_example_prints_the_student_dimension(server: ServerProcess, tmp_path: Path) -> None:
    lines = run_example(readme_examples()["openai"], server, tmp_path)
    with TandemClient(server.url, api_key=API_KEY) as client:
        dim = client.info()["student"]["dim"]
    assert lines == [str(dim)]
