"""Build a symlinked view of the installed ``tandem`` package for static tools.

The subpackages live in top-level folders mapped into ``tandem.*`` by
setuptools ``package-dir``. Python finds them through the editable install's
import hook, but mypy and import-linter read packages from one folder on disk
and never run that hook. This writes ``build/package-view/tandem/`` with one
symlink per mapped folder, the layout a wheel installs, so both tools see
``tandem.models``, ``tandem.server``, ... where Python does.

Usage: ``python scripts/package_view.py`` (idempotent; prints nothing).
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIEW = ROOT / "build" / "package-view"


def build_view(root: Path = ROOT, view: Path = VIEW) -> Path:
    """Recreate the view from pyproject.toml's package-dir mapping; return its root."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = config["package-dir"]
    if view.exists():
        shutil.rmtree(view)
    top = mapping.get("tandem", "tandem")
    package = view / "tandem"
    package.mkdir(parents=True)
    # The top package's own files, one link each, so mapped subpackages can sit beside them.
    for entry in sorted((root / top).iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in sorted(mapping.items()):
        if name == "tandem":
            continue
        link = view / Path(*name.split("."))
        if link.exists():
            sys.exit(f"package-view: {name} is both a folder under {top}/ and mapped to {folder}/")
        link.symlink_to(root / folder)
    return view


if __name__ == "__main__":
    build_view()
