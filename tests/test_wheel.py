"""The wheel installs one name, ``tandem``, with every module of the mapped folders in it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)]
    if find_spec("setuptools") is not None:
        command.insert(4, "--no-build-isolation")  # build offline with the installed setuptools
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("tandem-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


@pytest.mark.slow
def test_only_tandem_and_its_dist_info_are_top_level(wheel_names: list[str]) -> None:
    tops = {name.split("/", 1)[0] for name in wheel_names}
    dist_info = [t for t in tops if t.startswith("tandem-") and t.endswith(".dist-info")]
    assert len(dist_info) == 1
    assert tops == {"tandem", *dist_info}
    for module in ("server/app.py", "bundle/format.py", "toolchain/export.py", "data/fetch.py"):
        assert f"tandem/{module}" in wheel_names


@pytest.mark.slow
def test_every_module_of_the_mapped_folders_is_packaged(wheel_names: list[str]) -> None:
    """A subpackage missing from [tool.setuptools] packages would silently drop out."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    expected = set()
    for package, folder in config["package-dir"].items():
        prefix = package.replace(".", "/")
        for path in (REPO / folder).rglob("*.py"):
            relative = path.relative_to(REPO / folder)
            if "__pycache__" not in relative.parts:
                expected.add(f"{prefix}/{relative.as_posix()}")
    packaged = {name for name in wheel_names if name.endswith(".py")}
    assert expected - packaged == set()
    assert packaged - expected == set()
