"""The index bundle format: the only module that knows file names inside a bundle.

One bundle version (a directory under ``ROOT/versions/``, see versions.py)::

    manifest.json       format, teacher card, dims, variants, sha256 of every file
    manifest.sha256     sha256 of manifest.json itself
    vectors.f16.npy     full-dim teacher vectors (or .f32), row i = internal id i
    docs.sqlite         internal id <-> external id, text, metadata
    variants/NAME.faiss one FAISS index per variant
    views/VIEW/vectors.f16.npy, views/VIEW/variants/NAME.faiss
                        optional second document spaces (the ``student`` view:
                        the same rows embedded by the raw student, for fused scoring)

A version is written into a hidden staging folder beside the others, made
read-only, fsynced and renamed into place; only then does ``current`` move
(new symlink + ``os.replace``). A reader therefore sees a complete old
version or a complete new one, never a half-written one, and a server that
opened the old version keeps valid files (versions are never modified, and
files unchanged between versions are hardlinks). Loading checks the manifest,
its format version, dims and file presence before anything is opened; full
checksums are verified on request (``verify_bundle``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, ValidationError
from tandem.bundle.docstore import DocReader, Document, FilterValue
from tandem.bundle.errors import BundleError, UnknownVariantError
from tandem.bundle.variants import VariantSpec, read_index
from tandem.bundle.vectorfile import VectorFile, create_npy
from tandem.bundle.versions import (
    current_version_dir,
    discard_stage,
    is_root,
    list_versions,
    new_stage,
    next_version_name,
    publish_stage,
    root_lock,
    versions_dir,
    work_dir,
)

from tandem.home import sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "BundleStage",
    "Document",
    "Manifest",
    "UnknownVariantError",
    "VariantInfo",
    "ViewInfo",
    "BundleView",
    "VectorSpace",
    "STUDENT_VIEW",
    "current_version_dir",
    "list_versions",
    "open_bundle",
    "open_root",
    "root_lock",
    "verify_bundle",
    "versions_dir",
    "work_dir",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"
DOCS = "docs.sqlite"
VARIANTS_DIR = "variants"
VIEWS_DIR = "views"
STUDENT_VIEW = "student"
VectorsDtype = Literal["f16", "f32"]
NUMPY_DTYPES: dict[str, type[np.floating[Any]]] = {"f16": np.float16, "f32": np.float32}


class VariantInfo(BaseModel):
    """One variant as built: its file, size and the FAISS parameters a reader may need."""

    name: str
    file: str
    bytes: int
    ntotal: int
    build_seconds: float
    params: dict[str, Any] = Field(default_factory=dict)


class ViewInfo(BaseModel):
    """A second document space over the same rows: vectors and variants of another encoder.

    Row i of a view is document i of the bundle, always: every operation that
    writes a version (build, add, delete) writes every view with it. The view
    is bound to its encoder's fingerprint; ``fused_weight`` is the serving
    weight of the asymmetric cosine in fused scoring (chosen without labels
    at alignment time, or given), ``spec`` how the writer loads the encoder again.
    """

    encoder_name: str
    fingerprint: str
    spec: str
    card: dict[str, Any]
    dim: int
    normalized: bool
    vectors_dtype: VectorsDtype
    vectors: str
    variants: dict[str, VariantInfo]
    fused_weight: float | None = None
    fused_weight_source: str = ""
    build: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    """Everything a reader checks before opening a version, and how the version was made.

    ``files`` lists every file but ``manifest.json`` (whose own sha256 is in
    ``manifest.sha256``); ``build`` records the operation (build, add, delete,
    add-variant), its parent version, settings, corpus statistics and history.
    """

    format_version: int
    version: str
    teacher_name: str
    teacher_fingerprint: str
    teacher_card: dict[str, Any]
    students: list[str] = Field(default_factory=list)
    dim: int
    normalized: bool
    n_docs: int
    vectors_dtype: VectorsDtype
    variants: dict[str, VariantInfo]
    files: dict[str, str]  # relative path -> sha256, every file but manifest.json/.sha256
    build: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    views: dict[str, ViewInfo] = Field(default_factory=dict)


def vectors_file(dtype: VectorsDtype) -> str:
    return f"vectors.{dtype}.npy"


def variant_file(name: str) -> str:
    return f"{VARIANTS_DIR}/{name}.faiss"


def view_vectors_file(view: str, dtype: VectorsDtype) -> str:
    return f"{VIEWS_DIR}/{view}/{vectors_file(dtype)}"


def view_variant_file(view: str, name: str) -> str:
    return f"{VIEWS_DIR}/{view}/{variant_file(name)}"


# ---------------------------------------------------------------- writing


class BundleStage:
    """A version being written: files go in a hidden folder, ``publish`` makes it live.

    Use as a context manager; an exception (or kill) leaves nothing visible, and
    the next writer on the root removes the leftover folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = new_stage(self.root)
        (self.dir / VARIANTS_DIR).mkdir()
        self._known: dict[str, str] = {}  # relpath -> sha256 for files linked from a version
        self.published: Path | None = None

    def __enter__(self) -> BundleStage:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.published is None:
            self.discard()

    def vectors_path(self, dtype: VectorsDtype) -> Path:
        return self.dir / vectors_file(dtype)

    def docs_path(self) -> Path:
        return self.dir / DOCS

    def variant_path(self, name: str) -> Path:
        return self.dir / variant_file(name)

    def view_vectors_path(self, view: str, dtype: VectorsDtype) -> Path:
        path = self.dir / view_vectors_file(view, dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def view_variant_path(self, view: str, name: str) -> Path:
        path = self.dir / view_variant_file(view, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def link_views(self, parent: Bundle) -> dict[str, ViewInfo]:
        """Hardlink every view of the parent unchanged (checksums reused); their infos."""
        sums = parent.manifest.files
        for info in parent.manifest.views.values():
            for rel in [info.vectors] + [v.file for v in info.variants.values()]:
                dest = self.dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.adopt(parent.path / rel, dest, sums[rel])
        return dict(parent.manifest.views)

    def relpath(self, path: Path) -> str:
        return path.relative_to(self.dir).as_posix()

    def adopt(self, src: Path, dest: Path, sha256: str | None = None) -> None:
        """Hardlink ``src`` into the stage (copy across file systems); it never changes again."""
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)
        if sha256 is not None:
            self._known[self.relpath(dest)] = sha256

    def link_unchanged(self, parent: Bundle, variants: Sequence[str]) -> None:
        """Hardlink the parent's vectors, docs and the named variants (checksums reused)."""
        sums = parent.manifest.files
        self.adopt(
            parent.vectors_file,
            self.vectors_path(parent.manifest.vectors_dtype),
            sums[vectors_file(parent.manifest.vectors_dtype)],
        )
        self.adopt(parent.docs_file, self.docs_path(), sums[DOCS])
        for name in variants:
            rel = variant_file(name)
            self.adopt(parent.path / rel, self.dir / rel, sums[rel])

    def variant_info(
        self,
        name: str,
        ntotal: int,
        build_seconds: float,
        params: dict[str, Any],
        view: str | None = None,
    ) -> VariantInfo:
        path = self.variant_path(name) if view is None else self.view_variant_path(view, name)
        return VariantInfo(
            name=name,
            file=self.relpath(path),
            bytes=path.stat().st_size,
            ntotal=ntotal,
            build_seconds=round(build_seconds, 3),
            params=params,
        )

    def publish(
        self,
        *,
        teacher_name: str,
        teacher_fingerprint: str,
        teacher_card: dict[str, Any],
        dim: int,
        normalized: bool,
        n_docs: int,
        vectors_dtype: VectorsDtype,
        variants: dict[str, VariantInfo],
        build: dict[str, Any],
        students: Sequence[str] = (),
        views: dict[str, ViewInfo] | None = None,
    ) -> Path:
        """Checksum, write the manifest, fsync, rename into ``versions/`` and move ``current``.

        The caller must hold :func:`root_lock`.
        """
        files = {}
        for path in sorted(p for p in self.dir.rglob("*") if p.is_file()):
            rel = self.relpath(path)
            files[rel] = self._known.get(rel) or sha256_file(path)
        views = views or {}
        expected = {vectors_file(vectors_dtype), DOCS} | {v.file for v in variants.values()}
        for view in views.values():
            expected |= {view.vectors} | {v.file for v in view.variants.values()}
        if set(files) != expected:
            raise BundleError(
                f"internal error: staged files {sorted(files)} do not match "
                f"the manifest {sorted(expected)}"
            )
        version = next_version_name(self.root)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            version=version,
            teacher_name=teacher_name,
            teacher_fingerprint=teacher_fingerprint,
            teacher_card=teacher_card,
            students=list(students),
            dim=dim,
            normalized=normalized,
            n_docs=n_docs,
            vectors_dtype=vectors_dtype,
            variants=variants,
            files=files,
            build=build,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            views=views,
        )
        payload = (
            json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
        ).encode()
        (self.dir / MANIFEST).write_bytes(payload)
        (self.dir / MANIFEST_SUM).write_text(hashlib.sha256(payload).hexdigest() + "\n")
        for path in self.dir.rglob("*"):
            if path.is_file():
                os.chmod(path, 0o444)  # versions are immutable; hardlinks share this inode
        target = publish_stage(self.root, self.dir, version)
        self.published = target
        logger.info("published %s (%d docs, variants %s)", target, n_docs, ", ".join(variants))
        return target

    def discard(self) -> None:
        discard_stage(self.dir)


def create_vectors(path: Path, n: int, dim: int, dtype: VectorsDtype) -> VectorFile:
    """A writable (n, dim) vectors file, filled row range by row range (never mapped)."""
    create_npy(path, n, dim, NUMPY_DTYPES[dtype])
    return VectorFile(path, writable=True)


# ---------------------------------------------------------------- reading


def _version_dir(path: Path) -> Path:
    path = Path(path)
    if (path / MANIFEST).exists():
        return path
    if is_root(path):
        return current_version_dir(path)
    raise BundleError(f"{path} is neither a bundle root nor a bundle version (no {MANIFEST})")


def _read_manifest(folder: Path, check_sum: bool = True) -> Manifest:
    try:
        payload = (folder / MANIFEST).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {folder / MANIFEST}: {exc}") from exc
    if check_sum:
        try:
            recorded = (folder / MANIFEST_SUM).read_text().strip()
        except OSError as exc:
            raise BundleError(
                f"{folder / MANIFEST_SUM} is missing: the bundle is incomplete"
            ) from exc
        if hashlib.sha256(payload).hexdigest() != recorded:
            raise BundleError(
                f"{folder / MANIFEST} does not match {MANIFEST_SUM}: the manifest is corrupt; "
                "rebuild or restore this bundle version"
            )
    try:
        raw = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{folder / MANIFEST} is not valid JSON: {exc}") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        hint = (
            "upgrade tandem"
            if isinstance(version, int) and version > FORMAT_VERSION
            else "rebuild it"
        )
        raise BundleError(
            f"{folder} has bundle format {version!r}, "
            f"this tandem reads format {FORMAT_VERSION}: {hint}"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{folder / MANIFEST} is malformed: {exc}") from exc
    _check_paths(folder, manifest)
    return manifest


def _check_paths(folder: Path, manifest: Manifest) -> None:
    """Refuse a manifest naming a file outside its version folder (``..``, absolute paths)."""
    named = list(manifest.files) + [info.file for info in manifest.variants.values()]
    for view in manifest.views.values():
        named += [view.vectors] + [info.file for info in view.variants.values()]
    for rel in named:
        path = PurePosixPath(rel)
        if not rel or path.is_absolute() or ".." in path.parts:
            raise BundleError(
                f"{folder / MANIFEST} names {rel!r}, a path outside the bundle: "
                "refusing to open it; rebuild or restore this bundle version"
            )


def verify_bundle(path: Path) -> None:
    """Check every file's sha256 against the manifest; raises BundleError naming the bad files."""
    folder = _version_dir(path)
    manifest = _read_manifest(folder)
    problems: list[str] = []
    for rel, expected in sorted(manifest.files.items()):
        file = folder / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(file) != expected:
            problems.append(f"{rel}: checksum mismatch")
    listed = set(manifest.files) | {MANIFEST, MANIFEST_SUM}
    for file in folder.rglob("*"):
        if file.is_file() and file.relative_to(folder).as_posix() not in listed:
            problems.append(f"{file.relative_to(folder).as_posix()}: not in the manifest")
    if problems:
        raise BundleError(
            f"bundle {folder} failed verification: "
            + "; ".join(problems)
            + " — rebuild or restore this version"
        )


def load_index(spec: VariantSpec, path: Path, n_docs: int, label: str) -> Any:
    """A variant's FAISS index (memory-mapped where possible), checked against its bundle."""
    try:
        index = read_index(spec, path, mmap=True)
    except RuntimeError as exc:
        raise BundleError(f"cannot load {label}: {exc}") from exc
    if index.ntotal != n_docs or index.d != spec.dim:
        raise BundleError(
            f"{label} holds {index.ntotal} vectors of dim {index.d}, "
            f"expected {n_docs} of dim {spec.dim}: the bundle is corrupt"
        )
    return index


class VectorSpace:
    """A document space: full-dimension vectors (memory-mapped) and their variant indexes.

    The bundle's teacher space and each view (e.g. the student's) are one each;
    indexes are loaded once, on first use, and shared between threads.
    """

    def __init__(
        self,
        path: Path,
        vectors_file: Path,
        dim: int,
        n_docs: int,
        dtype: VectorsDtype,
        variants: Mapping[str, VariantInfo],
        described: str,
    ) -> None:
        self.path = Path(path)
        self.vectors_file = vectors_file
        self.dim = dim
        self.n_docs = n_docs
        self._variants = variants
        self._described = described  # "bundle v0001", "the student view": for messages
        try:
            self.vectors: np.ndarray[Any, Any] = np.load(vectors_file, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot map {vectors_file}: {exc}") from exc
        expected = NUMPY_DTYPES[dtype]
        if self.vectors.shape != (n_docs, dim) or self.vectors.dtype != expected:
            raise BundleError(
                f"{vectors_file} holds {self.vectors.shape} {self.vectors.dtype}, the manifest "
                f"says ({n_docs}, {dim}) {np.dtype(expected)}: {described} is out of step with "
                "the documents; the bundle is corrupt"
            )
        self._indexes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def variant_names(self) -> list[str]:
        return list(self._variants)

    def variant_path(self, name: str) -> Path:
        return self.path / self._variants[name].file

    def vector_rows(self) -> VectorFile:
        """The vectors as a row reader that never maps the file (for builders scanning it)."""
        return VectorFile(self.vectors_file)

    def spec(self, name: str) -> VariantSpec:
        if name not in self._variants:
            raise UnknownVariantError(
                f"variant {name!r} is not in {self._described}; "
                f"available: {', '.join(self.variant_names())}"
            )
        return VariantSpec.parse(name, self.dim)

    def index(self, name: str) -> Any:
        """The FAISS index of a variant, loaded once (memory-mapped where possible)."""
        spec = self.spec(name)
        with self._lock:
            index = self._indexes.get(name)
            if index is None:
                index = load_index(spec, self.variant_path(name), self.n_docs, self.label(name))
                self._indexes[name] = index
            return index

    def label(self, name: str) -> str:
        """How a variant is named in messages."""
        return f"variant {name} of {self.path}"

    def close(self) -> None:
        with self._lock:
            self._indexes.clear()


class Bundle(VectorSpace):
    """A published bundle version, opened read-only; safe to share between threads."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        path = Path(path)
        self.manifest = manifest
        self.version = manifest.version
        _check_files(path, manifest)
        super().__init__(
            path,
            path / vectors_file(manifest.vectors_dtype),
            manifest.dim,
            manifest.n_docs,
            manifest.vectors_dtype,
            manifest.variants,
            f"bundle {manifest.version}",
        )
        try:
            self._docs = DocReader(self.docs_file)
            n = self._docs.count()
        except Exception as exc:  # sqlite3 raises several unrelated types for a bad file
            raise BundleError(f"cannot read {self.docs_file}: {exc}") from exc
        if n != self.n_docs:
            raise BundleError(
                f"{self.docs_file} has {n} documents, the manifest says {self.n_docs}"
            )
        self.views = {
            name: BundleView(self.path, name, info, self.n_docs)
            for name, info in manifest.views.items()
        }

    def view(self, name: str = STUDENT_VIEW) -> BundleView | None:
        """A second document space of this version, or None when it has none."""
        return self.views.get(name)

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Bundle({self.path}, {self.n_docs} docs, variants={self.variant_names()})"

    @property
    def docs_file(self) -> Path:
        return self.path / DOCS

    def documents(self, internal_ids: Sequence[int]) -> list[Document]:
        try:
            return self._docs.get(internal_ids)
        except KeyError as exc:
            raise BundleError(str(exc.args[0])) from None

    def lookup(self, external_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Internal ids of external ids, -1 where unknown."""
        return self._docs.lookup(external_ids)

    def external_ids(self) -> list[str]:
        """External ids in internal-id order."""
        return [ext for _iid, ext in self._docs.ext_ids()]

    def filter_ids(self, equals: dict[str, FilterValue]) -> npt.NDArray[np.int64]:
        try:
            return self._docs.filter(equals)
        except ValueError as exc:
            raise BundleError(str(exc)) from None

    def sizes(self) -> dict[str, int]:
        """Bytes on disk: vectors, docs, manifest, and each variant under its name."""
        sizes = {
            "vectors": self.vectors_file.stat().st_size,
            "docs": self.docs_file.stat().st_size,
            "manifest": (self.path / MANIFEST).stat().st_size
            + (self.path / MANIFEST_SUM).stat().st_size,
        }
        sizes.update({name: info.bytes for name, info in self.manifest.variants.items()})
        for view in self.views.values():
            sizes[f"{view.name}-vectors"] = view.vectors_file.stat().st_size
            sizes.update({view.qualified(n): i.bytes for n, i in view.info.variants.items()})
        return sizes

    def close(self) -> None:
        super().close()
        for view in self.views.values():
            view.close()
        self._docs.close()


class BundleView(VectorSpace):
    """One view of a bundle version: its vectors (memory-mapped) and its variant indexes."""

    def __init__(self, folder: Path, name: str, info: ViewInfo, n_docs: int) -> None:
        self.name = name
        self.info = info
        folder = Path(folder)
        super().__init__(
            folder,
            folder / info.vectors,
            info.dim,
            n_docs,
            info.vectors_dtype,
            info.variants,
            f"the {name} view",
        )

    def qualified(self, variant: str) -> str:
        """The variant's name with its view, e.g. ``student-bin-384``."""
        return f"{self.name}-{variant}"

    def label(self, name: str) -> str:
        return self.qualified(name)


def _check_files(path: Path, manifest: Manifest) -> None:
    missing = [rel for rel in manifest.files if not (path / rel).is_file()]
    if missing:
        raise BundleError(f"bundle {path} is missing {', '.join(missing)}: restore or rebuild it")


def open_root(root: Path) -> Bundle:
    """Open the current version of a bundle root (what updates derive from)."""
    root = Path(root)
    if (root / MANIFEST).exists() and not is_root(root):
        raise BundleError(
            f"{root} is one bundle version; pass its bundle root ({root.parent.parent})"
        )
    folder = current_version_dir(root)
    return Bundle(folder, _read_manifest(folder))


def open_bundle(path: Path, verify: bool = False) -> Bundle:
    """Open a bundle root (following ``current``) or one version directory.

    The manifest (and its own checksum), format version, dims and file
    presence are checked before anything is mapped; ``verify`` also checks
    the sha256 of every file, which reads the whole bundle.
    """
    folder = _version_dir(path)
    if verify:
        verify_bundle(folder)
    manifest = _read_manifest(folder)
    return Bundle(folder, manifest)
