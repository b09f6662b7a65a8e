"""The search service: the only thing routes talk to.

query text -> checks -> admission -> tokenize -> micro-batched student
embedding -> funnel (first pass, optional rescoring) on the bundle current at
that moment -> response. The service owns the student, the batcher, the
search thread pool and the reference to the served bundle; ``swap`` replaces
that reference atomically (requests already searching keep their lease on
the old bundle until they finish).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt
from tandem.bundle.format import BundleError, Document
from tandem.bundle.fused import FusedPlan, search_fused
from tandem.bundle.search import Ranked, SearchPlan, SearchTarget, search
from tandem.bundle.variants import VariantSpec, truncate_normalize
from tandem.models.encoder import Encoder, EncoderError, TokenBatch
from tandem.server.batching import Embedded, MicroBatcher, merge_token_batches
from tandem.server.errors import (
    BundleFailure,
    DeadlineExceeded,
    EmptyQuery,
    InvalidRequest,
    ModeUnavailable,
    QueryTooLong,
    ServerError,
    UnknownVariant,
)
from tandem.server.metrics import Metrics
from tandem.server.schemas import FilterValue, Hit, SearchOptions, SearchResponse, Timings
from tandem.server.settings import ServerSettings
from tandem.server.state import (
    LoadedBundle,
    StartupCheckError,
    load_bundle,
    resolve_student,
    resolve_version_dir,
    warm,
)

logger = logging.getLogger(__name__)

WARMUP_TEXT = "a short warm-up query"
# Tokenizing a few short queries costs microseconds: do it on the event loop.
# Larger requests go to a thread so they never stall other requests.
INLINE_TOKENIZE_CHARS = 2048
# SQLite compares metadata as 64-bit integers; larger ones cannot be bound.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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
        )
        # OpenMP thread counts are per calling thread: set them in each search thread.
        self._pool = ThreadPoolExecutor(
            settings.search_threads,
            thread_name_prefix="tandem-search",
            initializer=faiss.omp_set_num_threads,
            initargs=(settings.faiss_threads,),
        )
        self.started = False
        self.draining = False

    @classmethod
    def load(cls, settings: ServerSettings, metrics: Metrics) -> SearchService:
        """Load and warm the student and the bundle (blocking: call it in a thread)."""
        faiss.omp_set_num_threads(settings.faiss_threads)  # this (loading) thread's searches
        try:
            encoder = Encoder(
                resolve_student(settings.student),
                settings.precision,
                settings.device,
                settings.threads,
            )
        except EncoderError as exc:
            raise StartupCheckError(f"student {settings.student!r}: {exc}") from exc
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
            settings.precision,
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
            precision=self.settings.precision,
            provider=self.encoder.providers[0] if self.encoder.providers else "none",
        ).set(1)
        self._publish_bundle(self._loaded, None)
        self.started = True
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)
        await self.batcher.stop()
        self._pool.shutdown(wait=True)
        self._loaded.retire()

    @property
    def loaded(self) -> LoadedBundle:
        return self._loaded

    async def check_ready(self) -> bool:
        """Ready = loaded, warmed, not draining, and the encoder answering."""
        if not self.started or self.draining:
            return False
        if not self.batcher.healthy:
            # TEI's health check: after a failed batch, probe the encoder again.
            tokens = self.encoder.tokenize([WARMUP_TEXT], "query")
            deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
            try:
                await self.batcher.embed(tokens, deadline)
            except ServerError as exc:  # the batcher reports every failure as one
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
    async def search(self, queries: list[str], options: SearchOptions) -> list[SearchResponse]:
        """Answer each query with the same options (one item of the micro-batch for all)."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_s
        if len(queries) > self.settings.max_batch_queries:
            raise InvalidRequest(
                f"{len(queries)} queries in one request; the limit is "
                f"{self.settings.max_batch_queries}"
            )
        texts, cut = self._check_texts(queries)
        if self.settings.log_queries:
            logger.info("search k=%d variant=%s queries=%r", options.k, options.variant, texts)
        mode = options.mode or self.settings.mode
        plan = self._plan(self._loaded, options)  # refuse bad options before taking a slot
        if mode == "fused":
            self._fused_plan(self._loaded, plan)
        with self.batcher.admission(len(texts)):
            tokens, truncated, tokenize_s = await self._tokenize(texts)
            embedded = await self.batcher.embed(tokens, deadline)
            loaded = self._loaded  # the bundle current now, after any swap
            plan = self._plan(loaded, options)
            fused = self._fused_plan(loaded, plan) if mode == "fused" else None
            result = await self._run_funnel(
                loaded, embedded.vectors, plan, deadline, fused, embedded.native
            )
        total_s = time.perf_counter() - started
        return self._responses(
            plan,
            options,
            result,
            embedded,
            tokenize_s,
            total_s,
            [a or b for a, b in zip(cut, truncated, strict=True)],
            fused,
        )

    def _plan(self, loaded: LoadedBundle, options: SearchOptions) -> SearchPlan:
        variant = options.variant or loaded.default_variant
        spec = loaded.specs.get(variant)
        if spec is None:
            raise UnknownVariant(
                f"unknown variant {variant!r}; this server serves: {', '.join(loaded.specs)}"
            )
        if options.k > self.settings.max_k:
            raise InvalidRequest(
                f"k={options.k} is above this server's max_k={self.settings.max_k}"
            )
        if options.filter:
            _check_filter(options.filter)
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

    def _fused_plan(self, loaded: LoadedBundle, plan: SearchPlan) -> FusedPlan:
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

    async def _run_funnel(
        self,
        loaded: LoadedBundle,
        queries: npt.NDArray[np.float32],
        plan: SearchPlan,
        deadline: float,
        fused: FusedPlan | None = None,
        native: npt.NDArray[np.float32] | None = None,
    ) -> Found:
        loaded.acquire()

        def job() -> Found:
            # The lease is returned by the thread itself: if the request is
            # cancelled meanwhile, the bundle still cannot close under it.
            try:
                target = loaded.fused_target
                if fused is not None and target is not None and native is not None:
                    return with_documents(loaded, search_fused(target, queries, native, fused))
                return with_documents(loaded, search(loaded.target, queries, plan))
            finally:
                loaded.release()

        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, job)
        except BaseException:
            loaded.release()
            raise
        try:
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            self.metrics.rejected.labels(reason="deadline").inc()
            raise DeadlineExceeded(
                "deadline exceeded during search",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None
        except (BundleError, KeyError, RuntimeError) as exc:
            raise BundleFailure(f"search failed on bundle {loaded.version}: {exc}") from exc

    def _responses(
        self,
        plan: SearchPlan,
        options: SearchOptions,
        result: Found,
        embedded: Embedded,
        tokenize_s: float,
        total_s: float,
        truncated: list[bool],
        fused: FusedPlan | None = None,
    ) -> list[SearchResponse]:
        m = self.metrics
        m.tokenize_seconds.observe(tokenize_s)
        ranked = result.ranked
        mode = "fused" if fused is not None else "asymmetric"
        m.search_seconds.labels(variant=plan.variant).observe(ranked.search_s)
        if ranked.rescored and ranked.rescore_s:
            m.rescore_seconds.labels(variant=plan.variant).observe(ranked.rescore_s)
        m.mode_seconds.labels(mode=mode).observe(ranked.search_s + ranked.rescore_s)
        timings = Timings(
            queue=embedded.queue_s * 1e3,
            tokenize=tokenize_s * 1e3,
            embed=embedded.embed_s * 1e3,
            search=ranked.search_s * 1e3,
            rescore=ranked.rescore_s * 1e3,
            total=total_s * 1e3,
        )
        out = []
        for hits, cut in zip(result.hits, truncated, strict=True):
            results = [
                Hit(
                    id=doc.id,
                    score=score,
                    text=doc.text if options.include_text else None,
                    metadata=doc.metadata if options.include_metadata else None,
                )
                for doc, score in hits
            ]
            out.append(
                SearchResponse(
                    results=results,
                    mode=mode,
                    weight=fused.weight if fused is not None else None,
                    variant=plan.variant,
                    rescored=ranked.rescored,
                    stages=ranked.stages,
                    timings_ms=timings,
                    truncated=cut,
                )
            )
        return out

    # -- embeddings --------------------------------------------------------
    async def embed(
        self, texts: list[str], dimensions: int | None
    ) -> tuple[npt.NDArray[np.float32], int]:
        """Student embeddings (n, dimensions or dim), L2-normalized; and the token count."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        if not texts:
            raise InvalidRequest("input is empty")
        if len(texts) > self.settings.max_batch_queries:
            raise InvalidRequest(
                f"{len(texts)} inputs in one request; "
                f"the limit is {self.settings.max_batch_queries}"
            )
        if dimensions is not None and dimensions > self.encoder.dim:
            raise InvalidRequest(
                f"dimensions={dimensions} is above the model's {self.encoder.dim} dimensions"
            )
        texts, _cut = self._check_texts(texts, "input")
        if self.settings.log_queries:
            logger.info("embeddings inputs=%r", texts)
        with self.batcher.admission(len(texts)):
            tokens, _truncated, tokenize_s = await self._tokenize(texts)
            self.metrics.tokenize_seconds.observe(tokenize_s)
            embedded = await self.batcher.embed(tokens, deadline)
        vectors = embedded.vectors
        if dimensions is not None and dimensions < vectors.shape[1]:
            vectors = truncate_normalize(vectors, dimensions)  # (n, dimensions)
        return vectors, int(tokens.attention_mask.sum())

    # -- shared input handling ----------------------------------------------
    def _check_texts(self, texts: list[str], noun: str = "query") -> tuple[list[str], list[bool]]:
        """Refuse empty or unencodable texts; cut (or refuse) texts past max_input_chars."""
        limit = self.settings.max_input_chars
        out, cut = [], []
        for i, text in enumerate(texts):
            where = f"{noun} {i}" if len(texts) > 1 else noun
            if not text.strip():
                raise EmptyQuery(f"{where} is empty")
            if problem := _text_problem(text):
                raise InvalidRequest(f"{where} {problem}")
            if len(text) > limit:
                if not self.settings.truncate:
                    raise QueryTooLong(f"{where} has {len(text)} characters; the limit is {limit}")
                text = text[:limit]
            out.append(text)
            cut.append(len(text) < len(texts[i]))
        return out, cut

    async def _tokenize(self, texts: list[str]) -> tuple[TokenBatch, list[bool], float]:
        if sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
            tokens, truncated, seconds = self._tokenize_sync(texts)
        else:
            loop = asyncio.get_running_loop()
            tokens, truncated, seconds = await loop.run_in_executor(
                self._pool, self._tokenize_sync, texts
            )
        if any(truncated) and not self.settings.truncate:
            first = truncated.index(True)
            raise QueryTooLong(
                f"query {first} is longer than the encoder's {self.encoder.card.max_length} tokens"
            )
        return tokens, truncated, seconds

    def _tokenize_sync(self, texts: list[str]) -> tuple[TokenBatch, list[bool], float]:
        started = time.perf_counter()
        # One text at a time: the encoder reports truncation per batch, we need it per query.
        parts = [self.encoder.tokenize([t], "query") for t in texts]
        merged = merge_token_batches(parts, self.encoder.pad_id)
        return merged, [p.n_truncated > 0 for p in parts], time.perf_counter() - started


@dataclass(frozen=True)
class Found:
    """The core's ranking plus the documents of its hits, per query."""

    ranked: Ranked
    hits: list[list[tuple[Document, float]]]


def with_documents(loaded: LoadedBundle, ranked: Ranked) -> Found:
    """Fetch the documents of every hit of a group of queries in one docstore read."""
    flat = [int(i) for row in ranked.ids for i in row]
    docs = loaded.bundle.documents(flat) if flat else []
    hits: list[list[tuple[Document, float]]] = []
    pos = 0
    for row_ids, row_scores in zip(ranked.ids, ranked.scores, strict=True):
        n = len(row_ids)
        hits.append(list(zip(docs[pos : pos + n], (float(x) for x in row_scores), strict=True)))
        pos += n
    return Found(ranked, hits)


def _text_problem(text: str) -> str | None:
    """Why a text cannot be searched, or None: NUL characters and lone surrogates.

    A lone surrogate (``"\\ud800"`` is valid JSON) cannot be encoded to UTF-8, so
    neither the tokenizer nor SQLite accepts it; a NUL is almost always binary
    data sent by mistake. Both are refused with the position to fix.
    """
    nul = text.find("\x00")
    if nul >= 0:
        return f"contains a NUL character (\\u0000) at position {nul}; remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"contains a lone surrogate ({text[exc.start]!r}) at position {exc.start}; "
            "send valid Unicode text"
        )
    return None


def _check_filter(equals: dict[str, FilterValue]) -> None:
    """Refuse filters SQLite cannot evaluate, naming the key to fix."""
    for key, value in equals.items():
        if not key or '"' in key or _text_problem(key):
            raise InvalidRequest(
                f"unsupported metadata key {key!r} in filter: "
                "use non-empty text without double quotes, NUL or lone surrogates"
            )
        if isinstance(value, str) and (problem := _text_problem(value)):
            raise InvalidRequest(f"filter value of {key!r} {problem}")
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise InvalidRequest(f"filter value of {key!r} is outside the 64-bit integer range")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"filter value of {key!r} must be a finite number")


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
