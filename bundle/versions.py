"""A bundle root: immutable versions, the ``current`` pointer, one writer at a time.

::

    ROOT/current -> versions/v0002   symlink, replaced atomically
    ROOT/versions/v0001/             published versions (never modified)
    ROOT/versions/.stage-XXXX/       a version being written (invisible to readers)
    ROOT/.build/                     checkpoints of an interrupted build
    ROOT/.lock                       flock held by the one writer

What is *inside* a version is bundle.py's business; this module only moves
whole versions around. A staged version is fsynced and renamed into
``versions/``, then ``current`` is swapped by renaming a new symlink over the
old one, so a reader resolving ``current`` gets a complete version or the
previous complete version, never a partial one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tandem.bundle.errors import BundleError

from tandem.home import fsync_tree

logger = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
CURRENT = "current"
LOCK = ".lock"
WORK_DIR = ".build"
STAGE_PREFIX = ".stage-"
_VERSION = re.compile(r"^v(\d+)$")


def versions_dir(root: Path) -> Path:
    return Path(root) / VERSIONS_DIR


def work_dir(root: Path) -> Path:
    """Where an in-progress build keeps its checkpoints (outside any version)."""
    return Path(root) / WORK_DIR


def is_root(path: Path) -> bool:
    return (Path(path) / CURRENT).exists() or versions_dir(path).is_dir()


def list_versions(root: Path) -> list[str]:
    """Published version names, oldest first."""
    folder = versions_dir(root)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if _VERSION.match(p.name) and p.is_dir()]
    return sorted(names, key=lambda n: int(n[1:]))


def current_version_dir(root: Path) -> Path:
    """The version directory ``current`` points at, resolved (stable if it moves later)."""
    pointer = Path(root) / CURRENT
    if not pointer.exists():
        raise BundleError(
            f"no bundle published under {root} (no {CURRENT!r} pointer): "
            "run `tandem index build` first"
        )
    return pointer.resolve()


@contextlib.contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """One writer per bundle root; released by the kernel even after kill -9.

    Taking the lock also removes what a killed writer left behind.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BundleError(
                f"another build or update is running on {root}; wait for it to finish"
            ) from None
        _remove_leftovers(root)
        yield
    finally:
        os.close(fd)


def new_stage(root: Path) -> Path:
    """An empty hidden folder beside the versions, for a version being written."""
    versions_dir(root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=versions_dir(root)))


def next_version_name(root: Path) -> str:
    existing = [int(n[1:]) for n in list_versions(root)]
    return f"v{(max(existing) + 1) if existing else 1:04d}"


def publish_stage(root: Path, stage: Path, version: str) -> Path:
    """fsync the stage, rename it to ``versions/VERSION`` and point ``current`` at it.

    The caller must hold :func:`root_lock` and name the version with
    :func:`next_version_name` under that same lock.
    """
    os.chmod(stage, 0o755)
    fsync_tree(stage)
    target = versions_dir(root) / version
    os.rename(stage, target)
    _fsync_dir(versions_dir(root))
    _point_current(Path(root), version)
    return target


def discard_stage(stage: Path) -> None:
    if stage.exists():
        make_writable(stage)
        shutil.rmtree(stage, ignore_errors=True)


def make_writable(folder: Path) -> None:
    for dirpath, _dirs, files in os.walk(folder):
        os.chmod(dirpath, 0o755)
        for name in files:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o644)


def _remove_leftovers(root: Path) -> None:
    for link in root.glob(f".{CURRENT}.*.tmp"):
        link.unlink(missing_ok=True)
    folder = versions_dir(root)
    if folder.is_dir():
        for stale in folder.glob(f"{STAGE_PREFIX}*"):
            logger.info("removing unfinished staging folder %s", stale)
            discard_stage(stale)


def _point_current(root: Path, version: str) -> None:
    """Swap ``current`` atomically: a new relative symlink renamed over the old one."""
    tmp = root / f".{CURRENT}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(f"{VERSIONS_DIR}/{version}", tmp)
    os.replace(tmp, root / CURRENT)
    _fsync_dir(root)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
