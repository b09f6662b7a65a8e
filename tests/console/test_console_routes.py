"""The console's routes in the ASGI app: on by default, off with the setting, self-contained.

These requests never reach the search service, so the app runs without its
lifespan (nothing is loaded); the browser tests cover the page against a real
server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tandem.server.app import create_app
from tandem.server.settings import ServerSettings

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


async def client_for(**overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    settings = ServerSettings(bundle=Path("/unused"), student="unused", **overrides)
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        yield client


@pytest.fixture()
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for():
        yield c


async def test_page_and_assets_are_served(client: httpx.AsyncClient) -> None:
    pages = [await client.get(path) for path in ("/", "/console")]
    for page in pages:
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert pages[0].text == pages[1].text
    # every asset the page names is served from the package, nothing from elsewhere
    assets = re.findall(r'(?:href|src)="([^"]+)"', pages[0].text)
    local = [a for a in assets if not a.startswith("#")]
    assert {"docs", "metrics"} <= set(local)
    files = [a for a in local if a.startswith("console/assets/")]
    assert len(files) >= 3
    for asset in files:
        answer = await client.get("/" + asset)
        assert answer.status_code == 200, asset
        assert answer.content
    assert (
        (await client.get("/console/assets/console.js"))
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )
    assert (await client.get("/console/")).status_code in (200, 307)
    assert not re.search(r"https?://", pages[0].text), "the page must work offline"


async def test_the_page_is_open_when_a_key_is_set() -> None:
    """The page holds no data; what it shows comes from routes that check the key."""
    async for client in client_for(api_key="k-123"):
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/info")).status_code == 401


async def test_no_console_serves_nothing() -> None:
    async for client in client_for(console=False):
        for path in ("/", "/console", "/console/assets/console.js"):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["type"]  # the API's error body, not a page


async def test_console_routes_stay_out_of_the_api_schema(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/" not in schema["paths"] and "/console" not in schema["paths"]


def test_console_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_CONSOLE", "false")
    assert ServerSettings(bundle=Path("/b"), student="s").console is False
    monkeypatch.delenv("TANDEM_CONSOLE")
    assert ServerSettings(bundle=Path("/b"), student="s").console is True


@pytest.mark.slow
def test_a_wheel_carries_the_page(tmp_path: Path) -> None:
    """Built from a copy of the sources, as a release would be: the page and assets are in it."""
    repo = Path(__file__).resolve().parents[2]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    layout = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in set(layout["package-dir"].values()):
        shutil.copytree(
            repo / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(source), "-w", str(tmp_path / "dist")],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("tandem-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "assets/console.js", "assets/console.css", "assets/icon.svg"):
        assert f"tandem/server/console/{name}" in names, name
