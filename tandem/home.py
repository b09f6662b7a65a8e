"""Where derived artifacts live, and how they are published without races.

Everything tandem derives (unzipped models, ONNX exports, quantized and aligned
students) sits under ``$TANDEM_HOME`` (default ``~/.cache/tandem``) in folders
keyed by a hash of their inputs, so a second run finds them in seconds.
Folders are built in a temporary sibling and renamed into place: a reader sees
either nothing or a complete folder, and two concurrent builders cannot
corrupt each other (the loser discards its copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def tandem_home() -> Path:
    """The cache root; read when called, never at import time."""
    return Path(os.environ.get("TANDEM_HOME", Path.home() / ".cache" / "tandem")).expanduser()


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short sha256 of JSON-serialisable parts, stable across runs and machines."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:length]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_tree(root: Path) -> None:
    """Flush every file and directory below root to disk before it is published."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def publish_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it is fsynced and renamed to ``target``.

    If ``target`` appeared meanwhile (a concurrent builder won), the temporary
    copy is discarded and the existing folder is kept. On error nothing is
    published.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
