"""Fetch a public BEIR dataset: download its zip, verify the checksum, unpack it atomically.

Evaluation and some tests need a real BEIR folder (``corpus.jsonl``,
``queries.jsonl``, ``qrels/``), which a fresh clone does not carry. BEIR
publishes one zip per dataset with its md5 (the table in BEIR's README); that
md5 is checked for the datasets listed here, plus a sha256 where one is
pinned. Any other archive (a mirror, a private dataset) needs ``--sha256``.
Nothing is published unless the checksum matches: the archive is streamed
into a temporary file beside the target, unpacked into a temporary folder and
renamed into place, so an interrupted or rejected fetch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

from tandem.errors import DataError
from tandem.home import publish_dir, tandem_home

logger = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"

# md5 of each public zip as BEIR's README publishes it.
BEIR_MD5: dict[str, str] = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}
# sha256 of the same zips where it is pinned (scifact.zip: 2,816,079 bytes).
BEIR_SHA256: dict[str, str] = {
    "scifact": "536e14446a0ba56ed1398ab1055f39fe852686ecad24a6306c80c490fa8e0165",
}

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REQUIRED_FILES = ("corpus.jsonl", "queries.jsonl")
CHUNK = 1 << 20


class FetchError(DataError):
    """A dataset could not be fetched, verified or unpacked; nothing was published."""


def data_dir() -> Path:
    """Where datasets live: ``$TANDEM_DATA``, else ``$TANDEM_HOME/data``."""
    configured = os.environ.get("TANDEM_DATA")
    return Path(configured).expanduser() if configured else tandem_home() / "data"


def is_beir_folder(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED_FILES)


def fetch_dataset(
    name: str, to: Path | None = None, url: str | None = None, sha256: str | None = None
) -> Path:
    """The folder of dataset ``name`` under ``to`` (default :func:`data_dir`), fetched if absent.

    ``url`` defaults to BEIR's public zip (``file://`` URLs work too);
    ``sha256`` is required for names without a pinned checksum.
    """
    if not NAME.match(name):
        raise FetchError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-'")
    target = (to if to is not None else data_dir()).expanduser() / name
    if target.exists():
        if is_beir_folder(target):
            return target
        raise FetchError(f"{target} exists but is not a BEIR dataset: remove it and fetch again")
    expected = _expected_digests(name, sha256)
    source = url or BEIR_URL.format(name=name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{name}.", suffix=".zip.part"
    ) as archive:
        logger.debug("downloading %s into %s", source, archive.name)
        digests = _download(source, archive)
        for algorithm, want in expected.items():
            if digests[algorithm] != want:
                raise FetchError(
                    f"{source}: {algorithm} is {digests[algorithm]}, expected {want}; "
                    "the download is corrupt or not this dataset, and nothing was unpacked"
                )
        with publish_dir(target) as stage:
            _unpack(Path(archive.name), stage, source)
            missing = [f for f in REQUIRED_FILES if not (stage / f).is_file()]
            if missing:
                raise FetchError(f"{source} is not a BEIR dataset: no {', '.join(missing)}")
    return target


def _expected_digests(name: str, sha256: str | None) -> dict[str, str]:
    expected: dict[str, str] = {}
    if name in BEIR_MD5:
        expected["md5"] = BEIR_MD5[name]
    pinned = sha256 or BEIR_SHA256.get(name)
    if pinned:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", pinned):
            raise FetchError(f"--sha256 must be 64 hex digits, got {pinned!r}")
        expected["sha256"] = pinned.lower()
    if not expected:
        known = ", ".join(sorted(BEIR_MD5))
        raise FetchError(
            f"no published checksum for {name!r} (known: {known}); "
            "pass --sha256 with the archive's sha256"
        )
    return expected


def _download(url: str, out: IO[bytes]) -> dict[str, str]:
    """Stream ``url`` into ``out``; md5 and sha256 of what was written."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (http, https, file)
            while chunk := response.read(CHUNK):
                md5.update(chunk)
                sha.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchError(
            f"cannot download {url}: {exc}; without network access, download the zip "
            "elsewhere and pass --url file:///path/to/NAME.zip"
        ) from exc
    out.flush()
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def _unpack(archive: Path, stage: Path, source: str) -> None:
    """Extract into ``stage``, dropping the single top folder BEIR zips wrap around the files."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [i for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
            tops = {m.filename.split("/", 1)[0] for m in members}
            wrapped = len(tops) == 1 and all("/" in m.filename for m in members)
            prefix = f"{tops.pop()}/" if wrapped else ""
            for member in members:
                relative = member.filename[len(prefix) :]
                if not relative:
                    continue
                member.filename = relative
                zf.extract(member, stage)  # zipfile drops absolute and '..' path parts
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{source} is not a zip archive: {exc}") from exc
