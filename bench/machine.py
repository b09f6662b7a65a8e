"""What the numbers were measured on: machine, versions, load, the command and the date.

Ratios are only comparable between runs on the same machine with the same
versions, so the report starts with all of it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "onnxruntime",
    "faiss-cpu",
    "numpy",
    "tokenizers",
    "fastapi",
    "uvicorn",
    "torch",
    "sentence-transformers",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3  # type: ignore[return-value]


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def command_output(args: list[str], timeout_s: float = 10.0) -> str | None:
    """A command's stripped stdout, or None when it cannot run or fails."""
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout.strip()


def git_commit() -> str:
    out = command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = command_output(["git", "-C", str(REPO), "status", "--porcelain"])
    if out is None or dirty is None:
        return "unknown"
    return out + (" (with uncommitted changes)" if dirty else "")


def describe(argv: list[str]) -> dict[str, Any]:
    """The header facts, taken at the start of a run."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench " + shlex.join(argv),
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "executable": sys.executable,
        "commit": git_commit(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "load_before": load_average(),
    }
