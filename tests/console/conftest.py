"""Console fixtures: a small bundle, a real ``tandem serve``, and headless Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from tandem.indexer.build import build_bundle
from tandem.models.encoder import Encoder

from tests.console.browser import close_browser, new_browser
from tests.support.server import ServerProcess, running_server, sample_docs

CONSOLE_VARIANTS = ["bin-768", "f32-768", "int8-768", "f32-256"]


@pytest.fixture(scope="session")
def console_bundle(tmp_path_factory: pytest.TempPathFactory, teacher: Encoder) -> Path:
    """The first 40 sample documents, with a binary, an int8 and two float variants."""
    root = tmp_path_factory.mktemp("console-bundle")
    build_bundle(sample_docs(), root, teacher, CONSOLE_VARIANTS)
    return root


@pytest.fixture(scope="session")
def serve_args(console_bundle: Path, aligned_student_dir: Path) -> list[str]:
    return ["--bundle", str(console_bundle), "--student", str(aligned_student_dir)]


@pytest.fixture(scope="module")
def open_server(
    tmp_path_factory: pytest.TempPathFactory, serve_args: list[str]
) -> Iterator[ServerProcess]:
    """One worker without an API key, shared by a test module."""
    with running_server(tmp_path_factory.mktemp("console-server"), serve_args) as server:
        yield server


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests write screenshots: a temporary folder, or CONSOLE_SCREENSHOTS."""
    chosen = os.environ.get("CONSOLE_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """One browser per module; each test loads the page afresh."""
    driver = new_browser()
    try:
        yield driver
    finally:
        close_browser(driver)
