"""Security: the API key, admin routes, path traversal, log hygiene, request size limits.

Two real servers on 127.0.0.1: ``keyed`` has an API key and logs at debug
(the most verbose level, uvicorn's access log included); ``open`` has no key
and ``--log-queries``. The constant-time comparison is observed in-process,
on the real app, by wrapping ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from tandem.bundle.format import BundleError, open_bundle, verify_bundle
from tandem.server.app import create_app
from tandem.server.settings import ServerSettings
from typer.testing import CliRunner

from tandem.cli import app as tandem_app
from tests.support.server import (
    API_KEY,
    QUERIES,
    ServerProcess,
    free_port,
    metric,
    running_server,
    scrape,
)

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/search", {"query": "x"}),
    ("POST", "/search/batch", {"queries": ["x"]}),
    ("POST", "/v1/embeddings", {"input": "x"}),
    ("GET", "/v1/models", None),
    ("GET", "/info", None),
    ("POST", "/admin/reload", None),
]
WRONG_HEADERS = {
    "missing": {},
    "wrong key": {"Authorization": "Bearer not-the-key"},
    "prefix of the key": {"Authorization": f"Bearer {API_KEY[:-1]}"},
    "key plus a character": {"Authorization": f"Bearer {API_KEY}x"},
    "scheme without a key": {"Authorization": "Bearer"},
    "key without a scheme": {"Authorization": API_KEY},
    "basic scheme": {"Authorization": f"Basic {API_KEY}"},
    "key in another header": {"X-API-Key": API_KEY},
}


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, reliability_bundle: Path, student_arg: str
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("keyed")
    args = ["--bundle", str(reliability_bundle), "--student", student_arg, "--log-level", "debug"]
    with running_server(tmp, args, {"TANDEM_API_KEY": API_KEY}, name="keyed") as proc:
        yield proc


@pytest.fixture(scope="module")
def open_server(
    tmp_path_factory: pytest.TempPathFactory, reliability_bundle: Path, student_arg: str
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("open")
    args = ["--bundle", str(reliability_bundle), "--student", student_arg, "--log-queries"]
    with running_server(tmp, args, name="open") as proc:
        yield proc


# ------------------------------------------------------------------ API key


@pytest.mark.parametrize("headers", WRONG_HEADERS.values(), ids=WRONG_HEADERS.keys())
def test_every_api_route_refuses_a_missing_or_wrong_key(
    keyed: ServerProcess, headers: dict[str, str]
) -> None:
    for method, path, body in ROUTES:
        response = httpx.request(method, keyed.url + path, json=body, headers=headers, timeout=30)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert API_KEY not in response.text


def test_the_right_key_opens_every_route_and_probes_need_none(keyed: ServerProcess) -> None:
    for method, path, body in ROUTES:
        response = httpx.request(method, keyed.url + path, json=body, headers=AUTH, timeout=30)
        assert response.status_code in (200, 202), (path, response.text)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(keyed.url + path, timeout=30).status_code == 200
    for path in ("/docs", "/redoc", "/openapi.json"):  # no API description behind a key
        assert httpx.get(keyed.url + path, headers=AUTH, timeout=30).status_code == 404


def test_the_key_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, reliability_bundle: Path, student_arg: str
) -> None:
    """Every Bearer token is checked by hmac.compare_digest, whatever it looks like."""
    seen: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    settings = ServerSettings(
        bundle=reliability_bundle, student=student_arg, api_key=API_KEY, faiss_device="cpu"
    )
    tokens = ["x", API_KEY[:1], API_KEY[:-1], API_KEY + "x", "y" * len(API_KEY), API_KEY]
    with TestClient(create_app(settings)) as client:
        for token in tokens:
            response = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == (200 if token == API_KEY else 401)
    assert [a for a, _ in seen] == [t.encode() for t in tokens]
    assert all(b == API_KEY.encode() for _, b in seen)


# ------------------------------------------------------------------ admin


def test_admin_routes_are_off_without_a_key(open_server: ServerProcess) -> None:
    for params in ({}, {"wait": "true", "force": "true"}):
        for headers in ({}, AUTH):
            response = httpx.post(
                f"{open_server.url}/admin/reload", params=params, headers=headers, timeout=30
            )
            assert response.status_code == 403, response.text
            assert response.json()["type"] == "admin_disabled"
            assert "TANDEM_API_KEY" in response.json()["error"]
    info = httpx.get(f"{open_server.url}/info", timeout=30).json()
    assert info["reload"]["reloads"] == 0 and info["reload"]["last_attempt_at"] is None
    samples = scrape(open_server.url)
    for outcome in ("swapped", "unchanged", "failed"):
        assert metric(samples, "tandem_reloads_total", outcome=outcome) == 0


# ------------------------------------------------------------------ path traversal

TRAVERSALS = [
    "../../etc/passwd",
    "/etc/passwd",
    "f32-768/../../../../etc/passwd",
    "variants/f32-768.faiss",
    "../v0001/variants/f32-768",
    "..",
    "f32-768\u0000",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_variant_and_model_names_are_names_not_paths(keyed: ServerProcess, name: str) -> None:
    search = httpx.post(
        f"{keyed.url}/search", json={"query": "x", "variant": name}, headers=AUTH, timeout=30
    )
    assert search.status_code == 422 and search.json()["type"] == "unknown_variant"
    assert "this server serves: bin-768, f32-256, f32-768" in search.json()["error"]
    embed = httpx.post(
        f"{keyed.url}/v1/embeddings", json={"input": "x", "model": name}, headers=AUTH, timeout=30
    )
    assert embed.status_code == 404 and embed.json()["type"] == "model_not_found"
    for response in (search, embed):
        assert "root:" not in response.text


def raw_get(url: str, target: str) -> int:
    """Status of a GET sent byte for byte (HTTP clients normalize ``..`` away)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "target",
    ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/docs/../../etc/passwd", "//etc/passwd"],
)
def test_url_paths_reach_no_file(keyed: ServerProcess, target: str) -> None:
    assert raw_get(keyed.url, target) == 404


def test_reload_takes_no_path_from_the_request(keyed: ServerProcess) -> None:
    before = httpx.get(f"{keyed.url}/info", headers=AUTH, timeout=30).json()["bundle"]
    response = httpx.post(
        f"{keyed.url}/admin/reload",
        params={"wait": "true", "bundle": "/etc", "path": "../../../etc"},
        json={"bundle": "/etc", "version_dir": "/tmp"},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 200 and response.json()["status"] == "unchanged"
    after = httpx.get(f"{keyed.url}/info", headers=AUTH, timeout=30).json()["bundle"]
    assert (after["root"], after["version_dir"]) == (before["root"], before["version_dir"])


def write_manifest(version: Path, manifest: dict[str, Any]) -> None:
    """Rewrite manifest.json with a matching manifest.sha256 (a forged, self-consistent one)."""
    payload = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (version / "manifest.json").write_bytes(payload)
    (version / "manifest.sha256").write_text(hashlib.sha256(payload).hexdigest() + "\n")


@pytest.mark.parametrize(
    "escape", ["../../../../../../etc/hostname", "/etc/hostname", "variants/../../outside.faiss"]
)
def test_a_manifest_naming_files_outside_the_bundle_is_refused(
    tmp_path: Path, reliability_bundle: Path, student_arg: str, escape: str
) -> None:
    version = tmp_path / "v0001"
    shutil.copytree((reliability_bundle / "current").resolve(), version)
    for path in [version, *version.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    (tmp_path / "outside.faiss").write_bytes((version / "variants" / "bin-768.faiss").read_bytes())
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["variants"]["bin-768"]["file"] = escape
    manifest["files"][escape] = manifest["files"].pop("variants/bin-768.faiss")
    write_manifest(version, manifest)

    for check in (open_bundle, verify_bundle):
        with pytest.raises(BundleError, match="a path outside the bundle"):
            check(version)
    result = CliRunner().invoke(
        tandem_app,
        ["serve", "--bundle", str(version), "--student", student_arg, "--port", str(free_port())],
    )
    assert result.exit_code == 2 and "a path outside the bundle" in result.output


def test_cli_variant_names_are_not_paths(tmp_path: Path, reliability_bundle: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(reliability_bundle, root, symlinks=True)
    result = CliRunner().invoke(tandem_app, ["index", "add-variant", str(root), "../../x-768"])
    assert result.exit_code == 1 and "cannot parse variant" in result.output
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v0001"]


# ------------------------------------------------------------------ logs

CANARY_QUERY = "canary query about a private matter 7f3a"
CANARY_INPUT = "canary embeddings input 9c1e"
WRONG_KEY = "canary-wrong-key-5b2d"


def send_canaries(url: str, headers: dict[str, str]) -> None:
    """Searches, embeddings, refusals and failed logins that carry recognizable texts."""
    posts: list[tuple[str, dict[str, Any], int]] = [
        ("/search", {"query": CANARY_QUERY, "k": 3}, 200),
        ("/search/batch", {"queries": [CANARY_QUERY, QUERIES[0]]}, 200),
        ("/v1/embeddings", {"input": [CANARY_INPUT]}, 200),
        ("/search", {"query": CANARY_QUERY, "variant": "nope"}, 422),
        ("/search", {"query": CANARY_QUERY, "topk": 1}, 422),
    ]
    for path, body, status in posts:
        assert httpx.post(url + path, json=body, headers=headers, timeout=30).status_code == status
    wrong = {"Authorization": f"Bearer {WRONG_KEY}"}
    httpx.post(f"{url}/search", json={"query": CANARY_QUERY}, headers=wrong, timeout=30)


def test_logs_hold_no_key_and_no_query_text_by_default(keyed: ServerProcess) -> None:
    send_canaries(keyed.url, AUTH)
    log = keyed.log.read_text(errors="replace")
    assert '"api_key": "**********"' in log, "the effective settings are logged, redacted"
    assert "POST /search" in log, "debug logging (the access log) was on"
    for secret in (API_KEY, WRONG_KEY, CANARY_QUERY, CANARY_INPUT, "private matter"):
        assert secret not in log, secret


def test_query_texts_are_logged_only_when_enabled(open_server: ServerProcess) -> None:
    send_canaries(open_server.url, {})
    log = open_server.log.read_text(errors="replace")
    assert '"log_queries": true' in log
    assert CANARY_QUERY in log and CANARY_INPUT in log
    assert WRONG_KEY not in log


# ------------------------------------------------------------------ size limits


def test_request_size_limits(keyed: ServerProcess) -> None:
    limit = 4 << 20  # the default max_body_bytes
    big = b'{"query": "' + b"x" * limit + b'"}'
    response = httpx.post(
        f"{keyed.url}/search", content=big, headers=AUTH | {"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["type"] == "payload_too_large"
    assert f"larger than {limit} bytes" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"query": "'
        for _ in range(4):
            yield b"y" * (1 << 20)
        yield b"y" * 1024 + b'"}'  # the limit is crossed by the last chunk, so all was sent

    response = httpx.post(
        f"{keyed.url}/search",
        content=chunks(),
        headers=AUTH | {"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413 and response.json()["type"] == "payload_too_large"
    # Headers are bounded by uvicorn's HTTP parser: it drops the connection (or answers 4xx).
    try:
        response = httpx.get(f"{keyed.url}/healthz", headers={"X-Big": "z" * (1 << 20)}, timeout=30)
        assert 400 <= response.status_code < 500
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
        pass
    ok = httpx.post(f"{keyed.url}/search", json={"query": QUERIES[1]}, headers=AUTH, timeout=30)
    assert ok.status_code == 200
