"""Prints what the container tier measured (image size, build and wall times)."""

from __future__ import annotations

import pytest

from tests.support.deploy import FACTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FACTS:
        terminalreporter.section("container tier")
        for name, value in FACTS.items():
            terminalreporter.write_line(f"{name}: {value}")
