"""The bad-input catalog, against a real server: each is a 4xx that says what to fix.

One ``tandem serve`` with an API key and ``--no-truncate`` (so an over-long
query is refused rather than cut and flagged ``truncated``, the default that
tests/server/test_app.py covers). After every bad request a normal search
must still answer 200, and at the end the server's own counters hold no 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import API_KEY, QUERIES, ServerProcess, running_server, scrape

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {"content-type": "application/json"}
MAX_BODY = 4 << 20  # the server's default max_body_bytes


@dataclass(frozen=True)
class Bad:
    """One bad request and what the answer must say."""

    name: str
    body: Any  # a JSON-able value, or bytes sent as they are
    status: int
    error_type: str
    says: tuple[str, ...]  # substrings of the message that tell the client what to fix
    path: str = "/search"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


CATALOG = [
    Bad("empty query", {"query": ""}, 422, "empty_query", ("query is empty",)),
    Bad("whitespace query", {"query": " \t\n\u3000 "}, 422, "empty_query", ("query is empty",)),
    Bad("blank query in a batch", {"queries": ["ok", "  "]}, 422, "empty_query",
        ("query 1 is empty",), path="/search/batch"),
    Bad("1 MB query", {"query": "ocean " * ((1 << 20) // 6)}, 422, "query_too_long",
        ("1048572 characters", "the limit is 20000")),
    Bad("invalid UTF-8", b'{"query": "caf\xe9 au lait"}', 400, "invalid_body",
        ("not valid UTF-8", "byte 14")),
    Bad("NUL byte in a query", {"query": "a\u0000b"}, 422, "invalid_request",
        ("NUL character", "position 1")),
    Bad("NUL byte in an embeddings input", {"input": ["ok", "x\u0000"]}, 422, "invalid_request",
        ("input 1 contains a NUL",), path="/v1/embeddings"),
    Bad("lone surrogate", b'{"query": "a\\ud800"}', 422, "invalid_request",
        ("lone surrogate", "position 1")),
    Bad("huge k", {"query": "x", "k": 10**12}, 422, "validation_error",
        ("k:", "less than or equal to 1000")),
    Bad("zero k", {"query": "x", "k": 0}, 422, "validation_error",
        ("k:", "greater than or equal to 1")),
    Bad("negative k", {"query": "x", "k": -5}, 422, "validation_error",
        ("k:", "greater than or equal to 1")),
    Bad("k as a string", {"query": "x", "k": "10"}, 422, "validation_error",
        ("k:", "valid integer")),
    Bad("k as a boolean", {"query": "x", "k": True}, 422, "validation_error",
        ("k:", "valid integer")),
    Bad("fractional k", {"query": "x", "k": 2.5}, 422, "validation_error",
        ("k:", "valid integer")),
    Bad("unknown variant", {"query": "x", "variant": "f32-999"}, 422, "unknown_variant",
        ("'f32-999'", "this server serves", "f32-768")),
    Bad("query is a number", {"query": 5}, 422, "validation_error",
        ("query:", "valid string")),
    Bad("query is a list", {"query": ["a"]}, 422, "validation_error",
        ("query:", "valid string")),
    Bad("queries is a string", {"queries": "abc"}, 422, "validation_error",
        ("queries:", "valid list"), path="/search/batch"),
    Bad("body is an array", [], 422, "validation_error", ("body:",)),
    Bad("input is an object", {"input": {"a": 1}}, 422, "validation_error",
        ("input",), path="/v1/embeddings"),
    Bad("missing query", {}, 422, "validation_error", ("query:", "Field required")),
    Bad("unknown field", {"query": "x", "topk": 3}, 422, "validation_error",
        ("topk:", "Extra inputs are not permitted")),
    Bad("malformed JSON", b'{"query": "x",', 422, "validation_error",
        ("invalid JSON body at position",)),
    Bad("empty body", b"", 422, "validation_error", ("Field required",)),
    Bad("no JSON content type", b'{"query": "x"}', 422, "validation_error",
        ("Content-Type: application/json",), headers={}),
    Bad("oversized batch", {"queries": ["q"] * 65}, 422, "invalid_request",
        ("65 queries", "the limit is 64"), path="/search/batch"),
    Bad("oversized embeddings batch", {"input": ["q"] * 65}, 422, "invalid_request",
        ("65 inputs", "the limit is 64"), path="/v1/embeddings"),
    Bad("empty batch", {"queries": []}, 422, "validation_error",
        ("queries:", "at least 1 item"), path="/search/batch"),
    Bad("zero dimensions", {"input": "x", "dimensions": 0}, 422, "validation_error",
        ("dimensions:", "greater than or equal to 1"), path="/v1/embeddings"),
    Bad("negative dimensions", {"input": "x", "dimensions": -3}, 422, "validation_error",
        ("dimensions:",), path="/v1/embeddings"),
    Bad("too many dimensions", {"input": "x", "dimensions": 100_000}, 422, "invalid_request",
        ("dimensions=100000", "768 dimensions"), path="/v1/embeddings"),
    Bad("zero oversample", {"query": "x", "oversample": 0}, 422, "validation_error",
        ("oversample:",)),
    Bad("filter integer beyond 64 bits", {"query": "x", "filter": {"year": 10**30}}, 422,
        "invalid_request", ("'year'", "64-bit")),
    Bad("filter NaN", b'{"query": "x", "filter": {"year": NaN}}', 422, "invalid_request",
        ("'year'", "finite")),
    Bad("filter list value", {"query": "x", "filter": {"topic": ["a"]}}, 422,
        "validation_error", ("filter.topic",)),
    Bad("filter key with a quote", {"query": "x", "filter": {'a"b': 1}}, 422,
        "invalid_request", ("unsupported metadata key",)),
    Bad("unknown encoding", {"input": "x", "encoding_format": "int8"}, 422, "validation_error",
        ("encoding_format:", "'float' or 'base64'"), path="/v1/embeddings"),
    Bad("unknown model", {"input": "x", "model": "gpt-4"}, 404, "model_not_found",
        ("'gpt-4' is not served here",), path="/v1/embeddings"),
    Bad("body over the limit", {"query": "x" * (MAX_BODY + 1)}, 413, "payload_too_large",
        (f"larger than {MAX_BODY} bytes",)),
    Bad("unknown route", None, 404, "not_found", ("Not Found",), path="/nope", method="GET"),
    Bad("wrong method", None, 405, "method_not_allowed", ("Method Not Allowed",),
        method="GET"),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, reliability_bundle: Path, student_arg: str
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("bad-input")
    args = ["--bundle", str(reliability_bundle), "--student", student_arg, "--no-truncate"]
    with running_server(tmp, args, {"TANDEM_API_KEY": API_KEY}, name="bad-input") as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


@pytest.mark.parametrize("bad", CATALOG, ids=[b.name for b in CATALOG])
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(
    client: httpx.Client, bad: Bad
) -> None:
    if isinstance(bad.body, bytes) or bad.body is None:
        content = bad.body
    else:
        content = json.dumps(bad.body).encode()
    response = client.request(bad.method, bad.path, content=content, headers=bad.headers)
    assert response.status_code == bad.status, response.text[:500]
    body = response.json()
    assert body["type"] == bad.error_type, body
    message = body["error"]
    for words in bad.says:
        assert words in message, (words, message)
    assert len(message) < 1000, "error messages never echo a whole request"
    good = client.post("/search", json={"query": QUERIES[0], "k": 3})
    assert good.status_code == 200 and len(good.json()["results"]) == 3, good.text


def test_no_bad_input_reached_a_5xx(server: ServerProcess, client: httpx.Client) -> None:
    assert client.get("/readyz").status_code == 200
    samples = scrape(server.url)
    statuses = {
        dict(labels)["status"]
        for (name, labels), value in samples.items()
        if name == "tandem_requests_total" and value
    }
    assert statuses and not [s for s in statuses if s.startswith("5")], statuses
    assert "Traceback" not in server.log.read_text(errors="replace")
