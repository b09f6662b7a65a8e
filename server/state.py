"""A loaded, checked, warmed bundle, and the checks that guard loading one.

The same code runs at three moments: the CLI's preflight before the port is
bound (so a misconfiguration exits non-zero with a clear message), each
worker's startup, and every hot reload. A ``LoadedBundle`` is leased by each
request that uses it, so a swap never closes files under a running search:
the old one is retired and closes when its last lease is returned.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tandem.bundle.backend import BackendError, FaissBackend, SearchBackend
from tandem.bundle.format import (
    STUDENT_VIEW,
    Bundle,
    BundleError,
    current_version_dir,
    open_bundle,
)
from tandem.bundle.fused import FusedTarget
from tandem.bundle.placement import FaissDevice, PlacementError, place_index
from tandem.bundle.search import SearchPlan, SearchTarget
from tandem.bundle.variants import VariantError, VariantSpec, search_variant
from tandem.models.artifacts import ArtifactError, resolve_artifact
from tandem.models.card import ModelCard
from tandem.models.pairing import PairingError, check_pair
from tandem.models.sources import ModelSourceError

from tandem.errors import ConfigError

logger = logging.getLogger(__name__)


class StartupCheckError(ConfigError):
    """The configuration cannot be served; the message says what to change."""


@dataclass(eq=False)
class LoadedBundle:
    """One bundle version with the indexes of its served variants, ready to search.

    ``backend`` answers the searches: the bundle's FAISS indexes in this
    process by default, or a Milvus collection (then ``bundle`` is that
    backend too: it serves the manifest and the documents).
    """

    bundle: Bundle
    version_dir: Path
    specs: dict[str, VariantSpec]
    indexes: dict[str, Any]
    devices: dict[str, str]
    default_variant: str
    pairing: str
    backend: SearchBackend = field(default=None, repr=False)  # type: ignore[assignment]
    target: SearchTarget = field(init=False, repr=False)
    # Fused mode: the student view's target (None: not servable, ``fused_reason`` says why).
    student_target: SearchTarget | None = field(default=None, repr=False)
    student_devices: dict[str, str] = field(default_factory=dict)
    fused_weight: float | None = None
    fused_reason: str | None = None
    loaded_at: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _leases: int = 0
    _retired: bool = False
    _closed: bool = False

    def __post_init__(self) -> None:
        if self.backend is None:
            faiss_backend = FaissBackend(self.bundle, self.specs, self.indexes)
            self.backend = faiss_backend
            self.target = faiss_backend.target

    @property
    def fused_target(self) -> FusedTarget | None:
        if self.student_target is None:
            return None
        return FusedTarget(self.target, self.student_target)

    @property
    def version(self) -> str:
        return str(self.bundle.version)

    @property
    def dim(self) -> int:
        return int(self.bundle.dim)

    @property
    def n_docs(self) -> int:
        return int(self.bundle.n_docs)

    def acquire(self) -> None:
        with self._lock:
            self._leases += 1

    def release(self) -> None:
        """Return a lease; may be called from any thread (the search pool does)."""
        with self._lock:
            self._leases -= 1
            close = self._retired and self._leases == 0
        if close:
            self.close()

    def retire(self) -> None:
        """No new leases will be taken; close once the last in-flight request is done."""
        with self._lock:
            self._retired = True
            close = self._leases == 0
        if close:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.indexes.clear()
        if self.student_target is not None:
            self.student_target = None
        self.bundle.close()
        logger.info("closed bundle version %s", self.version)


def resolve_student(spec: str) -> Path:
    """The student's artifact folder; never exports (a serving image has no torch)."""
    try:
        return resolve_artifact(spec)
    except (ArtifactError, ModelSourceError) as exc:
        raise StartupCheckError(f"student {spec!r}: {exc}") from exc


def resolve_version_dir(root: Path) -> Path:
    """The version folder a bundle root's ``current`` link points to (or root itself)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise StartupCheckError(f"bundle {root} does not exist")
    if (root / "current").exists() or (root / "current").is_symlink():
        try:
            return Path(current_version_dir(root)).resolve()
        except BundleError as exc:
            raise StartupCheckError(f"bundle {root}: {exc}") from exc
    return root.resolve()


def check_student(card: ModelCard, bundle: Bundle, allow_unaligned: bool) -> str:
    """Refuse a student that cannot be searched against this bundle; say how it pairs."""
    manifest = bundle.manifest
    if card.dim != bundle.dim:
        raise StartupCheckError(
            f"student {card.name} embeds {card.dim} dims but bundle {bundle.version} holds "
            f"{bundle.dim}-dim vectors from {manifest.teacher_name}: use a student aligned to "
            "that teacher (tandem models align)"
        )
    try:
        check_pair(card, manifest.teacher_name, manifest.teacher_fingerprint)
    except PairingError as exc:
        if not allow_unaligned:
            raise StartupCheckError(str(exc)) from exc
        logger.warning("serving an unaligned student (--allow-unaligned): %s", exc)
        return "unaligned (allowed)"
    return "teacher" if card.fingerprint == manifest.teacher_fingerprint else "aligned"


def select_variants(bundle: Bundle, requested: list[str]) -> tuple[dict[str, VariantSpec], str]:
    """The served variants (all by default) and the default one (first asked, else f32 full)."""
    available = list(bundle.variant_names())
    if not available:
        raise StartupCheckError(f"bundle {bundle.version} has no variants")
    names = requested or available
    missing = [n for n in names if n not in available]
    if missing:
        raise StartupCheckError(
            f"variant(s) {', '.join(missing)} not in bundle {bundle.version}; "
            f"it has: {', '.join(available)}"
        )
    try:
        specs = {name: bundle.spec(name) for name in names}
    except VariantError as exc:
        raise StartupCheckError(f"bundle {bundle.version}: {exc}") from exc
    if requested:
        default = requested[0]
    else:
        exact = f"f32-{bundle.dim}"
        default = exact if exact in specs else names[0]
    return specs, default


def preflight(bundle_root: Path, student: str, variants: list[str], allow_unaligned: bool) -> Path:
    """Every check that can fail before binding a port; returns the verified version folder."""
    card = ModelCard.load(resolve_student(student))
    version_dir = resolve_version_dir(bundle_root)
    try:
        bundle = open_bundle(version_dir, verify=True)
    except (BundleError, OSError) as exc:
        raise StartupCheckError(f"bundle {version_dir} failed verification: {exc}") from exc
    try:
        check_student(card, bundle, allow_unaligned)
        select_variants(bundle, variants)
    finally:
        bundle.close()
    return version_dir


def load_bundle(
    version_dir: Path,
    card: ModelCard,
    variants: list[str],
    *,
    allow_unaligned: bool,
    verify: bool,
    faiss_device: FaissDevice,
) -> LoadedBundle:
    """Open, verify, check and load every served variant of one bundle version."""
    try:
        bundle = open_bundle(version_dir, verify=verify)
    except (BundleError, OSError) as exc:
        raise StartupCheckError(f"cannot load bundle {version_dir}: {exc}") from exc
    try:
        pairing = check_student(card, bundle, allow_unaligned)
        specs, default = select_variants(bundle, variants)
        indexes: dict[str, Any] = {}
        devices: dict[str, str] = {}
        for name, spec in specs.items():
            indexes[name], devices[name] = place_index(spec, bundle.index(name), faiss_device)
    except PlacementError as exc:
        bundle.close()
        raise StartupCheckError(str(exc)) from exc
    except (BundleError, VariantError) as exc:
        bundle.close()
        raise StartupCheckError(f"cannot load bundle {version_dir}: {exc}") from exc
    except BaseException:
        bundle.close()
        raise
    logger.info(
        "loaded bundle %s (%d docs, variants %s, default %s)",
        bundle.version,
        bundle.n_docs,
        ", ".join(f"{n}@{devices[n]}" for n in specs),
        default,
    )
    loaded = LoadedBundle(bundle, Path(version_dir), specs, indexes, devices, default, pairing)
    try:
        _load_student_view(loaded, card, faiss_device)
    except BaseException:
        loaded.close()
        raise
    return loaded


def _load_student_view(loaded: LoadedBundle, card: ModelCard, faiss_device: FaissDevice) -> None:
    """Load the student view's variants when the served student's native output made it."""
    bundle = loaded.bundle
    view = bundle.view(STUDENT_VIEW)
    native = card.native_card()
    if view is None:
        loaded.fused_reason = f"bundle {bundle.version} has no student view"
        return
    if view.info.fingerprint != native.fingerprint:
        loaded.fused_reason = (
            f"the student view of bundle {bundle.version} was embedded by "
            f"{view.info.encoder_name} ({view.info.fingerprint[:12]}), but the served student's "
            f"native output is {native.name} ({native.fingerprint[:12]})"
        )
        logger.warning("fused mode unavailable: %s", loaded.fused_reason)
        return
    specs: dict[str, VariantSpec] = {}
    indexes: dict[str, Any] = {}
    try:
        for name in view.variant_names():
            specs[name] = view.spec(name)
            indexes[name], loaded.student_devices[name] = place_index(
                specs[name], view.index(name), faiss_device
            )
    except PlacementError as exc:
        raise StartupCheckError(str(exc)) from exc
    except (BundleError, VariantError) as exc:
        raise StartupCheckError(f"cannot load the student view of {bundle.version}: {exc}") from exc
    loaded.student_target = SearchTarget(view.vectors, specs, indexes, bundle.filter_ids)
    loaded.fused_weight = view.info.fused_weight
    logger.info(
        "student view %s: variants %s, fused weight %s",
        view.info.encoder_name,
        ", ".join(specs),
        view.info.fused_weight,
    )


def load_milvus(
    uri: str,
    collection: str,
    token: str | None,
    card: ModelCard,
    variants: list[str],
    *,
    allow_unaligned: bool,
) -> LoadedBundle:
    """Connect to Milvus and check the collection as a bundle would be checked; no index here."""
    try:
        from tandem.bundle.milvus import MilvusBackend
    except ImportError as exc:
        raise StartupCheckError(
            f"the milvus backend needs pymilvus: pip install 'tandem[milvus]' ({exc})"
        ) from None
    try:
        backend = MilvusBackend(uri, collection, token)
    except BackendError as exc:
        raise StartupCheckError(str(exc)) from exc
    try:
        pairing = check_student(card, backend, allow_unaligned)  # type: ignore[arg-type]
        specs, default = select_variants(backend, variants)  # type: ignore[arg-type]
    except BaseException:
        backend.close()
        raise
    devices = {name: "milvus" for name in specs}
    logger.info("serving Milvus collection %s (variants %s)", backend.collection, ", ".join(specs))
    return LoadedBundle(
        backend,  # type: ignore[arg-type]
        Path(backend.collection),
        specs,
        {},
        devices,
        default,
        pairing,
        backend=backend,
    )


def preflight_milvus(
    uri: str,
    collection: str,
    token: str | None,
    student: str,
    variants: list[str],
    allow_unaligned: bool,
) -> str:
    """The Milvus checks before binding a port; returns the collection that will be served."""
    card = ModelCard.load(resolve_student(student))
    loaded = load_milvus(uri, collection, token, card, variants, allow_unaligned=allow_unaligned)
    try:
        return str(loaded.version_dir)
    finally:
        loaded.close()


def warm(loaded: LoadedBundle, queries: npt.NDArray[np.float32]) -> None:
    """Search every variant once and touch the stored vectors, so first requests are not cold."""
    k = min(10, loaded.n_docs)
    if k == 0:
        return
    if not isinstance(loaded.backend, FaissBackend):
        for name in loaded.specs:
            loaded.backend.search(queries, SearchPlan(variant=name, k=k, rescore=True))
        return
    for name, spec in loaded.specs.items():
        _scores, ids = search_variant(spec, loaded.indexes[name], queries, k, ef_search=k)
        valid = ids[ids >= 0]
        if valid.size:
            np.asarray(loaded.bundle.vectors[np.sort(valid)], dtype=np.float32)
    student = loaded.student_target
    if student is not None:
        probe = np.asarray(student.vectors[:1], dtype=np.float32)
        for name, spec in student.specs.items():
            search_variant(spec, student.indexes[name], probe, k, ef_search=k)
    loaded.bundle.documents([0])
