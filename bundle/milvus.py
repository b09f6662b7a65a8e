"""Milvus as the index tier: collection layout, name resolution, and the search backend.

A bundle pushed to Milvus (``tandem index push``) becomes one versioned
collection ``NAME_vNNNN`` with one row per document:

=========== ================== ==============================================
field       type               what
=========== ================== ==============================================
``pk``      INT64 (primary)    the bundle's internal id
``ext_id``  VARCHAR            the document id clients see
``text``    VARCHAR            the document text (cut at 65,535 bytes)
``meta``    JSON               metadata; filters become ``meta["k"] == v``
``vec``     FLOAT16_VECTOR     full-dim teacher vector: exact variant, rescoring
``bin_D``   BINARY_VECTOR      sign bits of the first D dims (``bin-D``)
``f32_D``   FLOAT_VECTOR       MRL-truncated, re-normalized (``f32-D``, D < dim)
=========== ================== ==============================================

The collection description holds the bundle's manifest, so a server checks
the teacher fingerprint and dimension against its student exactly as it does
for a bundle. Clients use ``NAME``: an alias on servers that have aliases
(every Milvus server since 2.x); where the engine lacks them (the embedded
milvus-lite 2.5) a one-row pointer collection ``NAME__pointer`` names the
live version instead. Both switch atomically: one alias call, one upsert.

Searches follow the core's rule: first pass on the variant's field, then
the candidates' full vectors fetched and scored with the float32 query here
(ties by ascending id), so the exact variants give the same ids as FAISS.
pymilvus is imported only by this module, which is imported only when the
Milvus backend is chosen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pymilvus import DataType, MilvusClient, MilvusException
from tandem.bundle.backend import BackendError, BackendUnavailable, Capabilities
from tandem.bundle.docstore import Document
from tandem.bundle.errors import BundleError, UnknownVariantError
from tandem.bundle.format import Manifest
from tandem.bundle.search import Ranked, SearchPlan, keep_top, top_order
from tandem.bundle.variants import VariantSpec, query_codes, truncate_normalize

logger = logging.getLogger(__name__)

PK, EXT_ID, TEXT, META, VEC = "pk", "ext_id", "text", "meta", "vec"
POINTER_SUFFIX = "__pointer"
TEXT_MAX_BYTES = 65_535
EXT_ID_MAX = 512
MAX_VECTOR_FIELDS = 4  # Milvus' default proxy.maxVectorFieldNum
MAX_LIMIT = 16_384  # Milvus' largest topk
GET_CHUNK = 1024  # ids per fetch: ~1.5 MiB of float16 at 768 dims, well inside one call's deadline
CONNECT_TIMEOUT_S = 10.0
LAYOUT_VERSION = 1
_VERSION = re.compile(r"^(?P<alias>.+)_v(?P<n>\d{4,})$")


class MilvusSetupError(BackendError):
    """The collection cannot be served or pushed as asked; the message says what to change."""


def field_for(spec: VariantSpec, dim: int) -> str | None:
    """The collection field a variant searches, or None when Milvus has no match for it."""
    if spec.hnsw or spec.kind in ("int8", "ivfpq"):
        return None
    if spec.kind == "bin":
        return f"bin_{spec.dim}"
    return VEC if spec.dim == dim else f"f32_{spec.dim}"


def version_name(alias: str, n: int) -> str:
    return f"{alias}_v{n:04d}"


def versions_of(client: MilvusClient, alias: str) -> list[str]:
    """``ALIAS_vNNNN`` collections, oldest first."""
    found = []
    for name in client.list_collections():
        match = _VERSION.match(name)
        if match and match["alias"] == alias:
            found.append((int(match["n"]), name))
    return [name for _n, name in sorted(found)]


def connect(uri: str, token: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> MilvusClient:
    """A client for a Milvus URI (``http://host:19530``) or a local milvus-lite ``.db`` path."""
    try:
        client = MilvusClient(uri=uri, token=token or "", timeout=timeout)
        client.list_collections(timeout=timeout)
        return client
    except (MilvusException, OSError, RuntimeError) as exc:
        raise BackendUnavailable(f"cannot reach Milvus at {uri}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return str(message).splitlines()[0][:300] if message else type(exc).__name__


def _unimplemented(exc: BaseException) -> bool:
    code = getattr(exc, "code", None)
    try:
        code_name = str(code() if callable(code) else code)
    except Exception:
        code_name = ""
    return "UNIMPLEMENTED" in (code_name + str(exc)).upper()


@contextmanager
def _quiet_pymilvus() -> Iterator[None]:
    """pymilvus logs every failed RPC at ERROR; a probe we expect to fail must not."""
    log = logging.getLogger("pymilvus")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _pointer_schema() -> Any:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(PK, DataType.INT64, is_primary=True)
    schema.add_field("collection", DataType.VARCHAR, max_length=255)
    schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one vector field
    return schema


def point_alias(client: MilvusClient, alias: str, collection: str) -> str:
    """Make ``alias`` name ``collection``; returns how ("alias" or "pointer")."""
    with _quiet_pymilvus():
        try:
            client.alter_alias(collection, alias)
            return "alias"
        except Exception as exc:
            if _unimplemented(exc):
                return _point_pointer(client, alias, collection)
        try:
            client.create_alias(collection, alias)
            return "alias"
        except Exception as exc:
            if _unimplemented(exc):
                return _point_pointer(client, alias, collection)
            raise MilvusSetupError(
                f"cannot point alias {alias} at {collection}: {_reason(exc)}"
            ) from exc


def _point_pointer(client: MilvusClient, alias: str, collection: str) -> str:
    pointer = alias + POINTER_SUFFIX
    if not client.has_collection(pointer):
        index = client.prepare_index_params()
        index.add_index("unused", index_type="FLAT", metric_type="L2")
        client.create_collection(pointer, schema=_pointer_schema(), index_params=index)
    client.upsert(pointer, [{PK: 0, "collection": collection, "unused": [0.0, 0.0]}])
    client.flush(pointer)
    return "pointer"


def resolve(client: MilvusClient, name: str) -> tuple[str, str]:
    """The collection ``name`` stands for, and how: alias, pointer, or a plain collection."""
    with _quiet_pymilvus():
        try:
            described = client.describe_alias(name)
            target = described.get("collection_name") if isinstance(described, dict) else None
            if target:
                return str(target), "alias"
        except Exception as exc:
            if not _unimplemented(exc):
                logger.debug("no alias %s: %s", name, _reason(exc))
    pointer = name + POINTER_SUFFIX
    if client.has_collection(pointer):
        rows = client.query(pointer, filter=f"{PK} == 0", output_fields=["collection"])
        if rows:
            return str(rows[0]["collection"]), "pointer"
    if client.has_collection(name):
        return name, "collection"
    raise MilvusSetupError(
        f"Milvus has no collection or alias {name!r}: push a bundle with "
        f"`tandem index push BUNDLE --milvus URI --collection {name}`"
    )


def read_manifest(client: MilvusClient, collection: str) -> tuple[Manifest, list[str]]:
    """The bundle manifest and pushed variants stored in a collection's description."""
    described = client.describe_collection(collection)
    try:
        info = json.loads(described.get("description") or "")
        if info.get("tandem_layout") != LAYOUT_VERSION:
            raise ValueError(f"layout {info.get('tandem_layout')!r}")
        return Manifest.model_validate(info["manifest"]), list(info["variants"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MilvusSetupError(
            f"collection {collection} was not pushed by this tandem (its description has no "
            f"tandem layout {LAYOUT_VERSION}: {exc}); push the bundle again"
        ) from None


def describe(manifest: Manifest, variants: Sequence[str]) -> str:
    return json.dumps(
        {
            "tandem_layout": LAYOUT_VERSION,
            "variants": list(variants),
            "manifest": manifest.model_dump(mode="json"),
        },
        separators=(",", ":"),
    )


def schema_for(manifest: Manifest, variants: Sequence[str]) -> tuple[Any, Any]:
    """(schema, index params) of a version collection holding ``variants``."""
    dim = manifest.dim
    schema = MilvusClient.create_schema(
        auto_id=False, enable_dynamic_field=False, description=describe(manifest, variants)
    )
    schema.add_field(PK, DataType.INT64, is_primary=True)
    schema.add_field(EXT_ID, DataType.VARCHAR, max_length=EXT_ID_MAX)
    schema.add_field(TEXT, DataType.VARCHAR, max_length=TEXT_MAX_BYTES)
    schema.add_field(META, DataType.JSON)
    schema.add_field(VEC, DataType.FLOAT16_VECTOR, dim=dim)
    index = MilvusClient.prepare_index_params()
    index.add_index(VEC, index_type="FLAT", metric_type="IP")
    for name in variants:
        spec = VariantSpec.parse(name, dim)
        field = field_for(spec, dim)
        if field is None or field == VEC:
            continue
        if spec.is_binary:
            schema.add_field(field, DataType.BINARY_VECTOR, dim=spec.dim)
            index.add_index(field, index_type="BIN_FLAT", metric_type="HAMMING")
        else:
            schema.add_field(field, DataType.FLOAT_VECTOR, dim=spec.dim)
            index.add_index(field, index_type="FLAT", metric_type="IP")
    return schema, index


def vector_fields(variants: Sequence[str], dim: int) -> list[str]:
    fields = {VEC}
    for name in variants:
        field = field_for(VariantSpec.parse(name, dim), dim)
        if field is not None:
            fields.add(field)
    return sorted(fields)


def rows_for(
    pks: Sequence[int],
    documents: Sequence[Document],
    vectors: npt.NDArray[Any],
    variants: Sequence[str],
    dim: int,
) -> list[dict[str, Any]]:
    """Insert rows for documents and their full-dim vectors (each variant's field derived)."""
    full = np.asarray(vectors, dtype=np.float32)  # (n, dim)
    derived: dict[str, Any] = {}
    for name in variants:
        spec = VariantSpec.parse(name, dim)
        field = field_for(spec, dim)
        if field is None or field == VEC:
            continue
        codes = query_codes(spec, full)  # packed bits (n, d/8) or truncated floats (n, d)
        derived[field] = [c.tobytes() for c in codes] if spec.is_binary else list(codes)
    half = full.astype(np.float16)
    rows = []
    for i, (pk, doc) in enumerate(zip(pks, documents, strict=True)):
        row = {
            PK: int(pk),
            EXT_ID: doc.id,
            TEXT: _cut_utf8(doc.text, TEXT_MAX_BYTES),
            META: doc.metadata or {},
            VEC: half[i],
        }
        for field, values in derived.items():
            row[field] = values[i]
        rows.append(row)
    return rows


def _cut_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


def filter_expression(equals: Mapping[str, Any]) -> str:
    """``{"year": 2020, "topic": "x"}`` -> ``meta["year"] == 2020 and meta["topic"] == "x"``."""
    clauses = []
    for key, value in equals.items():
        if isinstance(value, bool):
            literal = "true" if value else "false"
        elif isinstance(value, int | float):
            literal = repr(value)
        elif isinstance(value, str):
            literal = json.dumps(value)
        else:
            raise MilvusSetupError(f"filter value of {key!r} must be a string, number or boolean")
        clauses.append(f"{META}[{json.dumps(key)}] == {literal}")
    return " and ".join(clauses)


@dataclass
class _Timer:
    remote_s: float = 0.0


class MilvusBackend:
    """A pushed collection, searched through pymilvus; holds no index in this process."""

    def __init__(
        self, uri: str, name: str, token: str | None = None, timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.uri, self.name, self.timeout = uri, name, timeout
        self._token = token
        self._lock = threading.Lock()
        self._client = connect(uri, token, timeout)
        try:
            self.collection, self.resolved_by = resolve(self._client, name)
            self._manifest, self.variants = read_manifest(self._client, self.collection)
        except BaseException:
            _close_quietly(self._client)
            raise
        self.dim = self._manifest.dim
        self.n_docs = self._manifest.n_docs
        self.version = f"{self._manifest.version}@{self.collection}"
        self._healthy = True
        self._ensure_loaded()
        logger.info(
            "Milvus %s: %s -> %s (%s), %d docs, variants %s",
            uri,
            name,
            self.collection,
            self.resolved_by,
            self.n_docs,
            ", ".join(self.variants),
        )

    # -- what the server reads ---------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            backend="milvus", variants=tuple(self.variants), filters=True, mutable=True, remote=True
        )

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def variant_names(self) -> list[str]:
        return list(self.variants)

    def spec(self, name: str) -> VariantSpec:
        if name not in self.variants:
            raise UnknownVariantError(
                f"variant {name!r} is not in collection {self.collection}; "
                f"available: {', '.join(self.variants)}"
            )
        return VariantSpec.parse(name, self.dim)

    # -- connection ------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        with self._call("load"):
            self._client.load_collection(self.collection, timeout=self.timeout)

    @contextmanager
    def _call(self, what: str, timer: _Timer | None = None) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except MilvusException as exc:
            self._healthy = False
            raise BackendUnavailable(
                f"Milvus {what} on {self.collection} failed: {_reason(exc)}"
            ) from exc
        except (OSError, RuntimeError) as exc:
            self._healthy = False
            raise BackendUnavailable(f"Milvus {what} failed: {_reason(exc)}") from exc
        finally:
            if timer is not None:
                timer.remote_s += time.perf_counter() - started

    def ping(self) -> bool:
        """True when Milvus answers and the collection is loaded (reconnects after a loss)."""
        try:
            with _quiet_pymilvus():
                if not self._healthy:
                    with self._lock:
                        old, self._client = self._client, connect(self.uri, self._token, 2.0)
                        _close_quietly(old)
                self._follow()
                state = self._client.get_load_state(self.collection, timeout=2.0)
                loaded = "Loaded" in str(state.get("state"))
                if not loaded:
                    self._client.load_collection(self.collection, timeout=self.timeout)
                self._healthy = True
                return True
        except Exception as exc:  # any failure means "not ready"; the reason is logged
            logger.warning("Milvus %s is not answering: %s", self.uri, _reason(exc))
            self._healthy = False
            return False

    def _follow(self) -> None:
        """Serve the version the name points at now (a push moved the alias or the pointer).

        A new version from another teacher or of another dimension is refused
        (logged) and the current one keeps serving: the student was checked
        against this one.
        """
        target, how = resolve(self._client, self.name)
        if target == self.collection:
            return
        manifest, variants = read_manifest(self._client, target)
        old = self._manifest
        if (manifest.teacher_fingerprint, manifest.dim) != (old.teacher_fingerprint, old.dim):
            logger.error(
                "%s now points at %s, built by another teacher or dimension; still serving %s",
                self.name,
                target,
                self.collection,
            )
            return
        missing = [v for v in self.variants if v not in variants]
        if missing:
            logger.error(
                "%s lacks served variants %s; still serving %s", target, missing, self.collection
            )
            return
        with self._lock:
            self.collection, self.resolved_by = target, how
            self._manifest, self.n_docs = manifest, manifest.n_docs
            self.version = f"{manifest.version}@{target}"
        logger.info("following %s to %s (%s)", self.name, target, how)

    def close(self) -> None:
        _close_quietly(self._client)

    # -- search ----------------------------------------------------------------------
    def search(self, queries: npt.NDArray[np.float32], plan: SearchPlan) -> Ranked:
        """First pass in Milvus, exact rescoring here; the core's ranking rule."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        spec = self.spec(plan.variant)
        timer = _Timer()
        started = time.perf_counter()
        stages: list[str] = []
        expr = ""
        if plan.filter:
            expr = filter_expression(plan.filter)
            stages.append("filter:milvus")
            spec = VariantSpec("f32", self.dim)  # filtered searches score exactly in Milvus
        field = field_for(spec, self.dim)
        assert field is not None  # pushed variants always have a field
        exact_field = field == VEC
        rescore = plan.rescore or exact_field  # float16 scores are re-done in float32 here
        want = plan.k
        if rescore:
            want = max(plan.k, min(plan.k * plan.oversample, plan.max_candidates))
        limit = max(1, min(want, self.n_docs, MAX_LIMIT))
        if spec.is_binary:
            data: list[Any] = [c.tobytes() for c in query_codes(spec, queries)]
            metric = "HAMMING"
        elif exact_field:
            data = list(queries.astype(np.float16))
            metric = "IP"
        else:
            data = list(query_codes(spec, queries))
            metric = "IP"
        with self._call("search", timer):
            hits = self._client.search(
                self.collection,
                data=data,
                anns_field=field,
                limit=limit,
                filter=expr,
                search_params={"metric_type": metric},
                output_fields=[],
                timeout=self.timeout,
            )
        ids = np.full((len(queries), limit), -1, dtype=np.int64)
        scores = np.full((len(queries), limit), -np.inf, dtype=np.float32)
        for row, row_hits in enumerate(hits):
            for col, hit in enumerate(row_hits):
                ids[row, col] = int(hit["id"])
                distance = float(hit["distance"])
                scores[row, col] = 1.0 - 2.0 * distance / spec.dim if spec.is_binary else distance
        stages.append(f"first_pass:milvus:{spec.name}")
        search_s = time.perf_counter() - started
        if not rescore:
            out_ids, out_scores = keep_top(ids, scores, plan.k)
            return Ranked(out_ids, out_scores, stages, False, search_s, 0.0, timer.remote_s)
        started = time.perf_counter()
        # Without rescoring, the exact variant scores like FAISS' f32-D index, which holds
        # the stored vectors re-normalized; rescoring uses them as stored, as the core does.
        as_index = exact_field and not (plan.rescore or plan.filter)
        out_ids, out_scores = self._rescore(queries, ids, plan.k, timer, as_index)
        stages.append(f"rescore:f32-{self.dim}")
        return Ranked(
            out_ids,
            out_scores,
            stages,
            bool(plan.rescore or plan.filter),
            search_s,
            time.perf_counter() - started,
            timer.remote_s,
        )

    def _rescore(
        self,
        queries: npt.NDArray[np.float32],
        candidates: npt.NDArray[np.int64],
        k: int,
        timer: _Timer,
        normalized: bool = False,
    ) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.float32]]]:
        wanted = np.unique(candidates[candidates >= 0])
        stored = self._fetch_vectors(wanted, timer)  # rows in ``wanted`` order
        if normalized:
            stored = truncate_normalize(stored, self.dim)
        out_ids, out_scores = [], []
        for query, row in zip(queries, candidates, strict=True):
            cand = np.unique(row[row >= 0])
            rows = stored[np.searchsorted(wanted, cand)]
            scores = (rows @ query).astype(np.float32)
            order = top_order(scores, cand, k)
            out_ids.append(cand[order])
            out_scores.append(scores[order])
        return out_ids, out_scores

    # -- fetch -----------------------------------------------------------------------
    def _get(self, ids: Sequence[int], fields: list[str], timer: _Timer) -> dict[int, Any]:
        found: dict[int, Any] = {}
        for start in range(0, len(ids), GET_CHUNK):
            part = [int(i) for i in ids[start : start + GET_CHUNK]]
            with self._call("get", timer):
                rows = self._client.get(
                    self.collection, ids=part, output_fields=fields, timeout=self.timeout
                )
            found.update({int(r[PK]): r for r in rows})
        return found

    def _fetch_vectors(self, ids: npt.NDArray[np.int64], timer: _Timer) -> npt.NDArray[np.float32]:
        rows = self._get(ids.tolist(), [VEC], timer)
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        for i, pk in enumerate(ids.tolist()):
            row = rows.get(pk)
            if row is None:
                raise BackendError(f"document {pk} vanished from {self.collection} mid-search")
            value = row[VEC]
            raw = value[0] if isinstance(value, list) else value
            out[i] = np.frombuffer(raw, dtype=np.float16)
        return out

    def vectors(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Full-dimension vectors of internal ids, in the order asked."""
        ids = np.asarray(ids, dtype=np.int64)
        unique = np.unique(ids)
        stored = self._fetch_vectors(unique, _Timer())
        return stored[np.searchsorted(unique, ids)]

    def documents(self, ids: Sequence[int]) -> list[Document]:
        wanted = [int(i) for i in ids]
        rows = self._get(sorted(set(wanted)), [EXT_ID, TEXT, META], _Timer())
        missing = [i for i in wanted if i not in rows]
        if missing:
            raise BundleError(f"internal id(s) {missing[:5]} not in collection {self.collection}")
        return [Document(rows[i][EXT_ID], rows[i][TEXT], rows[i][META] or {}) for i in wanted]

    def filter_ids(self, equals: Mapping[str, Any]) -> npt.NDArray[np.int64]:
        with self._call("query"):
            rows = self._client.query(
                self.collection, filter=filter_expression(equals), output_fields=[PK]
            )
        return np.sort(np.array([int(r[PK]) for r in rows], dtype=np.int64))

    # -- change ----------------------------------------------------------------------
    def add(
        self, documents: Sequence[Document], vectors: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.int64]:
        """Insert new documents; their ids are a hash of the external id (stable across pods)."""
        ext = [d.id for d in documents]
        with self._call("query"):
            taken = self._client.query(
                self.collection, filter=f"{EXT_ID} in {json.dumps(ext)}", output_fields=[EXT_ID]
            )
        if taken:
            names = sorted({r[EXT_ID] for r in taken})[:5]
            raise BackendError(f"document id(s) {names} are already in {self.collection}")
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.shape != (len(documents), self.dim):
            raise BackendError(f"expected ({len(documents)}, {self.dim}) vectors, got {vecs.shape}")
        pks = [_added_pk(e) for e in ext]
        with self._call("insert"):
            self._client.insert(
                self.collection, rows_for(pks, documents, vecs, self.variants, self.dim)
            )
        return np.array(pks, dtype=np.int64)

    def delete(self, external_ids: Sequence[str]) -> int:
        """Delete documents by external id; returns how many were there."""
        with self._call("delete"):
            rows = self._client.query(
                self.collection,
                filter=f"{EXT_ID} in {json.dumps(list(external_ids))}",
                output_fields=[PK],
            )
            pks = [int(r[PK]) for r in rows]
            if pks:
                self._client.delete(self.collection, ids=pks)
        return len(pks)


def _added_pk(ext_id: str) -> int:
    """Ids of documents added in place: 2**62 + a 62-bit hash, apart from pushed row numbers."""
    digest = int.from_bytes(hashlib.sha256(ext_id.encode()).digest()[:8], "big")
    return (1 << 62) | (digest & ((1 << 62) - 1))


def _close_quietly(client: MilvusClient) -> None:
    try:
        client.close()
    except Exception as exc:  # closing a dead connection may fail in several ways
        logger.debug("closing the Milvus client: %s", exc)
