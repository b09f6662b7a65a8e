"""The index backend protocol: what the server and evaluation need from an index tier.

A backend holds a bundle's documents and vectors somewhere and answers the
search core's questions about them: search a group of queries with a plan,
fetch full-dimension vectors and documents by internal id, add and delete
documents where the tier allows it. Two implementations exist:

* :class:`FaissBackend` (here): a bundle version opened in this process,
  searched by :func:`tandem.bundle.search.search`. Immutable: new documents
  go through ``tandem index add``, which publishes a new version.
* ``MilvusBackend`` (tandem.bundle.milvus, imported only when chosen): a
  collection in an external (or embedded) Milvus, pushed from a bundle.

Both rank with the same rule (exact rescoring of the first pass's candidates
with the full vectors, ties by ascending id), so a query gets the same ids
from either for the exact variants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from tandem.bundle.docstore import Document
from tandem.bundle.format import Bundle, Manifest
from tandem.bundle.search import Ranked, SearchPlan, SearchTarget, search
from tandem.bundle.variants import VariantSpec


class BackendError(Exception):
    """The index tier refused or failed an operation; the message says what to do."""


class BackendUnavailable(BackendError):
    """The index tier cannot be reached right now (retry later; readiness is false)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, so callers refuse early instead of failing late."""

    backend: str  # "faiss" or "milvus"
    variants: tuple[str, ...]  # searchable variants
    filters: bool  # metadata equality filters
    mutable: bool  # add/delete change the served index in place
    remote: bool  # searches cross the network (their time is its own stage)


@runtime_checkable
class SearchBackend(Protocol):
    """One served index, whatever holds it."""

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def manifest(self) -> Manifest: ...

    def search(self, queries: npt.NDArray[np.float32], plan: SearchPlan) -> Ranked: ...

    def vectors(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...

    def documents(self, ids: Sequence[int]) -> list[Document]: ...

    def add(
        self, documents: Sequence[Document], vectors: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.int64]: ...

    def delete(self, external_ids: Sequence[str]) -> int: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class FaissBackend:
    """A bundle version in this process: its served variants' FAISS indexes and vectors."""

    def __init__(
        self, bundle: Bundle, specs: Mapping[str, VariantSpec], indexes: Mapping[str, Any]
    ) -> None:
        self.bundle = bundle
        self.target = SearchTarget(bundle.vectors, specs, indexes, filter_ids=bundle.filter_ids)
        self._capabilities = Capabilities(
            backend="faiss", variants=tuple(specs), filters=True, mutable=False, remote=False
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def search(self, queries: npt.NDArray[np.float32], plan: SearchPlan) -> Ranked:
        return search(self.target, queries, plan)

    def vectors(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return np.asarray(self.bundle.vectors[np.asarray(ids)], dtype=np.float32)

    def documents(self, ids: Sequence[int]) -> list[Document]:
        return self.bundle.documents(ids)

    def add(
        self, documents: Sequence[Document], vectors: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.int64]:
        raise BackendError(
            "bundle versions are immutable: add documents with `tandem index add`, "
            "which publishes a new version the server swaps to"
        )

    def delete(self, external_ids: Sequence[str]) -> int:
        raise BackendError(
            "bundle versions are immutable: delete documents with `tandem index delete`, "
            "which publishes a new version the server swaps to"
        )

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        self.bundle.close()
