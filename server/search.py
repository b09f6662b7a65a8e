"""The search service: domain types in, hits and stage timings out; no HTTP.

texts -> checks (``validation``) -> admission -> tokenize once (per-row ids
and truncation flags) -> micro-batch: one padded merge, one ONNX run, then
one search stage for the whole batch (``tandem.bundle.search.search`` per
group of requests sharing a plan, and one docstore read for every hit of the
batch) -> ``QueryResult`` per query. The service owns the student, the
batcher and the reference to the served bundle; ``swap`` replaces that
reference atomically (a batch already searching keeps its lease on the old
bundle until it finishes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from tandem.bundle.backend import BackendUnavailable
from tandem.bundle.format import BundleError, Document
from tandem.bundle.fused import FusedPlan, search_fused
from tandem.bundle.search import Ranked, SearchPlan, SearchTarget
from tandem.bundle.variants import VariantSpec, truncate_normalize
from tandem.models.card import ModelCard, Precision
from tandem.models.encoder import Encoder, EncoderError, TokenRows
from tandem.server import validation
from tandem.server.batching import MicroBatcher, StageRun
from tandem.server.domain import Embeddings, Hit, QueryResult, SearchOptions, StageTimings
from tandem.server.errors import BundleFailure, IndexUnavailable, ModeUnavailable, UnknownVariant
from tandem.server.metrics import Metrics
from tandem.server.settings import ServerSettings
from tandem.server.state import (
    LoadedBundle,
    StartupCheckError,
    load_bundle,
    load_milvus,
    resolve_student,
    resolve_version_dir,
    warm,
)

from tandem.errors import TandemError

logger = logging.getLogger(__name__)

WARMUP_TEXT = "a short warm-up query"
# Tokenizing a few short queries costs microseconds: do it on the event loop.
# Larger requests go to a thread so they never stall other requests.
INLINE_TOKENIZE_CHARS = 2048


class SearchService:
    """Student + batcher + served bundle; async methods run on the server's event loop."""

    def __init__(
        self,
        settings: ServerSettings,
        encoder: Encoder,
        loaded: LoadedBundle,
        metrics: Metrics,
        warm_queries: npt.NDArray[np.float32],
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.metrics = metrics
        self.warm_queries = warm_queries
        self._loaded = loaded
        self.batcher = MicroBatcher(
            encoder,
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_s=settings.max_wait_s,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            metrics=metrics,
            stage=_SearchStage(self),
            thread_init=self._thread_init,
            inline_lone=settings.inline_lone,
        )
        # Tokenizes requests too large to tokenize on the event loop.
        self._tokenizer_pool = ThreadPoolExecutor(1, thread_name_prefix="tandem-tokenize")
        self.started = False
        self.draining = False

    def _thread_init(self) -> None:
        # OpenMP thread counts are per calling thread: set them where searches run.
        faiss.omp_set_num_threads(self.settings.faiss_threads)

    @classmethod
    def load(cls, settings: ServerSettings, metrics: Metrics) -> SearchService:
        """Load and warm the student and the bundle (blocking: call it in a thread)."""
        faiss.omp_set_num_threads(settings.faiss_threads)  # this (loading) thread's searches
        folder = resolve_student(settings.student)
        try:
            precision: Precision = (
                settings.precision
                if settings.precision != "auto"
                else ModelCard.load(folder).serving_precision
            )
            encoder = Encoder(
                folder,
                precision,
                settings.device,
                settings.threads,
                spinning=settings.onnx_spinning,
            )
        except EncoderError as exc:
            raise StartupCheckError(f"student {settings.student!r}: {exc}") from exc
        if settings.backend == "milvus":
            loaded = load_milvus_from(settings, encoder)
        else:
            assert settings.bundle is not None  # the settings require it for faiss
            version_dir = resolve_version_dir(settings.bundle)
            verified = settings.verified_version_dir
            verify = verified is None or verified.resolve() != version_dir
            loaded = load_bundle(
                version_dir,
                encoder.card,
                settings.variant,
                allow_unaligned=settings.allow_unaligned,
                verify=verify,
                faiss_device=settings.faiss_device,
            )
        if settings.mode == "fused" and loaded.student_target is None:
            loaded.retire()
            raise StartupCheckError(
                f"--mode fused needs a student view: {loaded.fused_reason}; add one with "
                f"`tandem index add-view {settings.bundle} --student {settings.student}`"
            )
        try:
            warm_queries = encoder.encode([WARMUP_TEXT], "query")  # (1, dim); warms ONNX too
            warm(loaded, warm_queries)
        except BaseException:
            loaded.retire()
            raise
        logger.info(
            "student %s (%s, %s) ready on %s",
            encoder.name,
            encoder.precision,
            encoder.card.fingerprint[:12],
            ",".join(encoder.providers),
        )
        return cls(settings, encoder, loaded, metrics, warm_queries)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self.batcher.start()
        card = self.encoder.card
        self.metrics.model_info.labels(
            role="student",
            name=card.name,
            fingerprint=card.fingerprint[:16],
            precision=self.encoder.precision,
            provider=self.encoder.providers[0] if self.encoder.providers else "none",
        ).set(1)
        self._publish_bundle(self._loaded, None)
        self.started = True
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)
        await self.batcher.stop()
        self._tokenizer_pool.shutdown(wait=True)
        self._loaded.retire()

    @property
    def loaded(self) -> LoadedBundle:
        return self._loaded

    async def check_ready(self) -> bool:
        """Ready = loaded, warmed, not draining, and the encoder answering."""
        if not self.started or self.draining:
            return False
        if not await asyncio.to_thread(self._loaded.backend.ping):
            return False  # the remote index tier is not answering (logged by the backend)
        if not self.batcher.healthy:
            # TEI's health check: after a failed batch, probe the encoder again.
            rows = self.encoder.tokenize_rows([WARMUP_TEXT], "query")
            deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
            try:
                await self.batcher.embed(rows, deadline)
            except TandemError as exc:  # the batcher reports every failure as one
                logger.warning("readiness probe failed: %s", exc)
        return self.batcher.healthy

    def swap(self, new: LoadedBundle) -> LoadedBundle:
        """Serve ``new`` from now on; the old bundle closes when its last request is done."""
        old, self._loaded = self._loaded, new
        self._publish_bundle(new, old)
        old.retire()
        return old

    def _publish_bundle(self, new: LoadedBundle, old: LoadedBundle | None) -> None:
        m = self.metrics
        if old is not None:
            m.bundle_info.labels(**_bundle_labels(old)).set(0)
            for name in old.specs:
                m.variant_bytes.labels(variant=name, device=old.devices[name]).set(0)
        m.bundle_info.labels(**_bundle_labels(new)).set(1)
        m.bundle_docs.set(new.n_docs)
        variants = new.bundle.manifest.variants
        for name in new.specs:
            info = variants.get(name)
            m.variant_bytes.labels(variant=name, device=new.devices[name]).set(
                info.bytes if info else 0
            )

    # -- search ------------------------------------------------------------
    async def search(
        self,
        queries: list[str],
        options: SearchOptions,
        *,
        in_flight: int | None = None,
        connections: int | None = None,
    ) -> list[QueryResult]:
        """Answer each query with the same options (one item of the micro-batch for all).

        ``in_flight`` and ``connections``: the HTTP requests this process is
        answering (this one included) and the connections it holds open (None:
        unknown); a lone query may run inline (``MicroBatcher``).
        """
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        validation.check_count(len(queries), self.settings)
        texts, cut = validation.check_texts(queries, self.settings)
        validation.check_options(options, self.settings)
        if self.settings.log_queries:
            logger.info("search k=%d variant=%s queries=%r", options.k, options.variant, texts)
        plan = self.plan(self._loaded, options)  # refuse bad options before taking a slot
        if (options.mode or self.settings.mode) == "fused":
            self.fused_plan(self._loaded, plan)
        with self.batcher.admission(len(texts)):
            rows, tokenize_s = await self._tokenize(texts)
            embedded = await self.batcher.embed(
                rows, deadline, job=options, in_flight=in_flight, connections=connections
            )
        found: _Found = embedded.output
        timings = StageTimings(
            queue_s=embedded.queue_s,
            tokenize_s=tokenize_s,
            embed_s=embedded.embed_s,
            search_s=found.search_s,
            rescore_s=found.rescore_s,
            fetch_s=found.fetch_s,
            total_s=time.perf_counter() - started,
            index_s=found.index_s,
        )
        m = self.metrics
        if found.index_s is not None:
            backend = self._loaded.backend.capabilities.backend
            m.index_seconds.labels(backend=backend, variant=found.variant).observe(found.index_s)
        m.tokenize_seconds.observe(tokenize_s)
        m.search_seconds.labels(variant=found.variant).observe(found.search_s)
        if found.rescored and found.rescore_s:
            m.rescore_seconds.labels(variant=found.variant).observe(found.rescore_s)
        m.mode_seconds.labels(mode=found.mode).observe(found.search_s + found.rescore_s)
        return [
            QueryResult(
                hits,
                found.variant,
                found.rescored,
                found.stages,
                c or t,
                timings,
                found.mode,
                found.weight,
            )
            for hits, c, t in zip(found.hits, cut, rows.truncated, strict=True)
        ]

    def plan(self, loaded: LoadedBundle, options: SearchOptions) -> SearchPlan:
        """Resolve options against a bundle and the server's defaults."""
        variant = options.variant or loaded.default_variant
        spec = loaded.specs.get(variant)
        if spec is None:
            raise UnknownVariant(
                f"unknown variant {variant!r}; this server serves: {', '.join(loaded.specs)}"
            )
        rescore = options.rescore
        if rescore is None:
            mode = self.settings.rescore
            exact = spec.kind == "f32" and spec.dim == loaded.dim and not spec.hnsw
            rescore = mode == "always" or (mode == "auto" and not exact)
        return SearchPlan(
            variant=variant,
            k=options.k,
            rescore=rescore,
            oversample=options.oversample or self.settings.oversample,
            ef_search=self.settings.ef_search,
            filter=options.filter,
            filter_exact_max=self.settings.filter_exact_max,
            max_candidates=self.settings.max_candidates,
        )

    def fused_plan(self, loaded: LoadedBundle, plan: SearchPlan) -> FusedPlan:
        """The fused plan: the student view's counterpart of the variant, and ``w``."""
        target = loaded.student_target
        if target is None:
            raise ModeUnavailable(
                f'"mode": "fused" needs a student view in the bundle: {loaded.fused_reason}; '
                f"add one with `tandem index add-view {self.settings.bundle} "
                f"--student {self.settings.student}` (then reload), or use "
                '"mode": "asymmetric"'
            )
        variant = fused_student_variant(loaded.specs[plan.variant], loaded.dim, target)
        if variant is None:
            raise UnknownVariant(
                f"the student view has no counterpart of variant {plan.variant!r}; "
                f"it holds: {', '.join(target.specs)}"
            )
        weight = self.settings.fused_weight
        if weight is None:
            weight = loaded.fused_weight if loaded.fused_weight is not None else 0.5
        return FusedPlan(plan, variant, weight)

    # -- embeddings --------------------------------------------------------
    async def embed(
        self,
        texts: list[str],
        dimensions: int | None,
        *,
        in_flight: int | None = None,
        connections: int | None = None,
    ) -> Embeddings:
        """Student embeddings (n, dimensions or dim), L2-normalized, and the token count."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        validation.check_count(len(texts), self.settings, "inputs")
        validation.check_dimensions(dimensions, self.encoder.dim)
        texts, cut = validation.check_texts(texts, self.settings, "input")
        if self.settings.log_queries:
            logger.info("embeddings inputs=%r", texts)
        with self.batcher.admission(len(texts)):
            rows, tokenize_s = await self._tokenize(texts)
            self.metrics.tokenize_seconds.observe(tokenize_s)
            embedded = await self.batcher.embed(
                rows, deadline, in_flight=in_flight, connections=connections
            )
        vectors = embedded.vectors
        if dimensions is not None and dimensions < vectors.shape[1]:
            vectors = truncate_normalize(vectors, dimensions)  # (n, dimensions)
        truncated = [a or b for a, b in zip(cut, rows.truncated, strict=True)]
        return Embeddings(vectors, rows.n_tokens, truncated)

    async def _tokenize(self, texts: list[str]) -> tuple[TokenRows, float]:
        started = time.perf_counter()
        if sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
            rows = self.encoder.tokenize_rows(texts, "query")
        else:
            loop = asyncio.get_running_loop()
            rows = await loop.run_in_executor(
                self._tokenizer_pool, self.encoder.tokenize_rows, texts, "query"
            )
        validation.check_token_truncation(
            rows.truncated, self.settings, self.encoder.card.max_length
        )
        return rows, time.perf_counter() - started


@dataclass(frozen=True)
class _Found:
    """One request's share of a batch's search stage."""

    hits: list[list[Hit]]  # per query, best first
    variant: str
    rescored: bool
    stages: list[str]
    search_s: float
    rescore_s: float
    fetch_s: float
    index_s: float | None = None  # time in a remote index tier (Milvus), when there is one
    mode: str = "asymmetric"
    weight: float | None = None  # fused: w of the asymmetric cosine


class _SearchStage:
    """The batcher's stage: search every request of a batch on the bundle current now."""

    def __init__(self, service: SearchService) -> None:
        self.service = service

    def open(self) -> StageRun:
        loaded = self.service.loaded
        loaded.acquire()  # returned by the run's close(), in whatever thread it ends
        return _SearchRun(self.service, loaded)


class _SearchRun:
    def __init__(self, service: SearchService, loaded: LoadedBundle) -> None:
        self.service = service
        self.loaded = loaded

    def close(self) -> None:
        self.loaded.release()

    def __call__(
        self,
        jobs: Sequence[Any],
        vectors: Sequence[npt.NDArray[np.float32]],
        native: Sequence[npt.NDArray[np.float32]],
    ) -> list[Any]:
        """Group the batch's requests by plan: one core search per group, one docstore read."""
        outputs: list[Any] = [None] * len(jobs)
        groups: dict[str, list[int]] = {}
        plans: dict[int, SearchPlan] = {}
        fused: dict[int, FusedPlan] = {}
        for j, options in enumerate(jobs):
            if options is None:
                continue
            try:
                plan = self.service.plan(self.loaded, options)
                if (options.mode or self.service.settings.mode) == "fused":
                    fused[j] = self.service.fused_plan(self.loaded, plan)
            except TandemError as exc:  # the variant (or view) left with a swapped bundle
                outputs[j] = exc
                continue
            plans[j] = plan
            groups.setdefault(repr(fused.get(j, plan)), []).append(j)
        ranked: dict[int, tuple[Ranked, int, int]] = {}  # job -> (group result, first row, rows)
        for members in groups.values():
            try:
                queries = np.vstack([vectors[j] for j in members])
                target = self.loaded.fused_target
                if members[0] in fused and target is not None:
                    natives = np.vstack([native[j] for j in members])
                    result = search_fused(target, queries, natives, fused[members[0]])
                else:
                    result = self.loaded.backend.search(queries, plans[members[0]])
            except BackendUnavailable as exc:
                self.service.metrics.rejected.labels(reason="index_unavailable").inc()
                unavailable = IndexUnavailable(
                    f"the index tier is unavailable: {exc}",
                    retry_after_s=self.service.settings.retry_after_s,
                )
                for j in members:
                    outputs[j] = unavailable
                continue
            except (BundleError, KeyError, RuntimeError, ValueError) as exc:
                failure = BundleFailure(f"search failed on bundle {self.loaded.version}: {exc}")
                for j in members:
                    outputs[j] = failure
                continue
            row = 0
            for j in members:
                ranked[j] = (result, row, len(vectors[j]))
                row += len(vectors[j])
        started = time.perf_counter()
        try:
            docs = self._documents(ranked)
        except BundleError as exc:
            failure = BundleFailure(f"reading documents of bundle {self.loaded.version}: {exc}")
            return [failure if j in ranked else out for j, out in enumerate(outputs)]
        fetch_s = time.perf_counter() - started
        for j, (result, first, n) in ranked.items():
            asked: SearchOptions = jobs[j]
            hits = [
                _hits(result.ids[q], result.scores[q], docs, asked) for q in range(first, first + n)
            ]
            outputs[j] = _Found(
                hits,
                plans[j].variant,
                result.rescored,
                result.stages,
                result.search_s,
                result.rescore_s,
                fetch_s,
                result.remote_s if self.loaded.backend.capabilities.remote else None,
                "fused" if j in fused else "asymmetric",
                fused[j].weight if j in fused else None,
            )
        return outputs

    def _documents(self, ranked: dict[int, tuple[Ranked, int, int]]) -> dict[int, Document]:
        """Every hit of the batch in one docstore read (ids ascending, no repeats)."""
        wanted: set[int] = set()
        for _j, (result, first, n) in ranked.items():
            for q in range(first, first + n):
                wanted.update(result.ids[q].tolist())
        if not wanted:
            return {}
        iids = sorted(wanted)
        return dict(zip(iids, self.loaded.bundle.documents(iids), strict=True))


def load_milvus_from(settings: ServerSettings, encoder: Encoder) -> LoadedBundle:
    """The Milvus collection the settings name, checked against the student."""
    return load_milvus(
        *settings.milvus_target(),
        encoder.card,
        settings.variant,
        allow_unaligned=settings.allow_unaligned,
    )


@dataclass(frozen=True)
class Found:
    """The core's ranking plus the documents of its hits, per query."""

    ranked: Ranked
    hits: list[list[tuple[Document, float]]]


def with_documents(loaded: LoadedBundle, ranked: Ranked) -> Found:
    """The documents of every hit of a group of queries, read in one docstore query."""
    wanted = sorted({int(i) for row in ranked.ids for i in row})
    docs = dict(zip(wanted, loaded.bundle.documents(wanted), strict=True)) if wanted else {}
    hits = [
        [(docs[i], s) for i, s in zip(row_ids.tolist(), row_scores.tolist(), strict=True)]
        for row_ids, row_scores in zip(ranked.ids, ranked.scores, strict=True)
    ]
    return Found(ranked, hits)


def _hits(
    ids: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    docs: dict[int, Document],
    options: SearchOptions,
) -> list[Hit]:
    text = "text" in options.fields
    metadata = "metadata" in options.fields
    out = []
    for iid, score in zip(ids.tolist(), scores.tolist(), strict=True):
        doc = docs[iid]
        out.append(
            Hit(
                doc.id,
                score,
                doc.text if text else None,
                doc.metadata if metadata else None,
            )
        )
    return out


def fused_student_variant(spec: VariantSpec, teacher_dim: int, view: SearchTarget) -> str | None:
    """The student view's variant paired with a teacher variant: same kind, dims scaled.

    Falls back to the view's variant of the same kind at its full dimension
    (then to its exact float variant), so every served variant has a pair.
    """
    dim = max(1, round(spec.dim * view.dim / teacher_dim))
    suffix = "-hnsw" if spec.hnsw else ""
    for name in (f"{spec.kind}-{dim}{suffix}", f"{spec.kind}-{view.dim}", f"f32-{view.dim}"):
        if name in view.specs:
            return name
    return None


def _bundle_labels(loaded: LoadedBundle) -> dict[str, str]:
    return {
        "version": loaded.version,
        "teacher": loaded.bundle.manifest.teacher_name,
        "variants": ",".join(loaded.specs),
    }
