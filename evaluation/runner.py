"""Modes × variants → result rows: who embeds queries and documents, and how the index stores them.

A mode that cannot run (see ``tandem.evaluation.modes``) is a row marked "n/a" with
the reason, never a crash. Every embedding goes through the content-addressed
cache and every built index through the index cache, so a second run with the
same inputs only pays for search and the latency samples.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np
import numpy.typing as npt
from tandem.bundle.backend import SearchBackend
from tandem.bundle.format import Bundle
from tandem.bundle.search import SearchPlan, SearchTarget, search
from tandem.bundle.variants import HNSW_EF_SEARCH, VariantError, VariantSpec
from tandem.evaluation.doc_side import DocSide, untrained_truncation
from tandem.evaluation.metrics import DEPTH, evaluate, run_from_hits
from tandem.evaluation.modes import Mode, ModePlan, plan_modes
from tandem.evaluation.references import published_ndcg10
from tandem.models.embedding_cache import EmbeddingCache, encode_cached
from tandem.models.encoder import Encoder

from tandem.data.beir import EvalSet

if TYPE_CHECKING:
    from tandem.evaluation.fused_eval import WeightReport

logger = logging.getLogger(__name__)

Status = Literal["ok", "n/a"]
DEFAULT_OVERSAMPLE = (1, 2, 4, 10)
_WARMUP = 3


NOT_TRAINED = "not trained for it (the document encoder's card lists no Matryoshka dimension here)"


class BundleMismatchError(ValueError):
    """The bundle given for evaluation was not built by the teacher being evaluated."""


@dataclass(frozen=True)
class EvalConfig:
    """What to sweep. ``variants=None`` means the defaults for each document dimension."""

    variants: Sequence[str] | None = None
    oversample: Sequence[int] = DEFAULT_OVERSAMPLE
    latency_queries: int = 64
    ef_search: int | None = None
    # One FAISS thread per timed request: a server answers concurrent requests each on
    # one core, and OpenMP fan-out for a single query only adds wake-up cost (on a busy
    # 2-core machine a 5k-doc binary scan went from 0.07 ms to 24 ms with 2 threads).
    search_threads: int = 1


@dataclass
class ResultRow:
    """One (mode, variant, rescoring) measurement; metrics are None where the row is n/a."""

    dataset: str
    split: str
    mode: Mode
    query_encoder: str
    doc_encoder: str
    variant: str
    rescore: bool = False
    oversample: int | None = None
    status: Status = "ok"
    note: str = ""
    ndcg_at_10: float | None = None
    recall_at_100: float | None = None
    mrr_at_10: float | None = None
    published_ndcg_at_10: float | None = None
    encode_ms: float | None = None
    search_ms: float | None = None
    latency_ms: float | None = None
    bytes_per_doc: float | None = None
    weight: float | None = None  # fused rows: w of the asymmetric cosine
    n_queries: int = 0
    n_docs: int = 0

    @property
    def label(self) -> str:
        """Human name of the configuration, e.g. ``bin-768 → rescore ×4``."""
        return f"{self.variant} → rescore ×{self.oversample}" if self.rescore else self.variant

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class EvalResult:
    """All rows plus the facts a reader needs to trust or reproduce them."""

    rows: list[ResultRow]
    dataset: str
    split: str
    teacher: str
    students: list[str]
    config: EvalConfig
    environment: dict[str, str] = field(default_factory=dict)
    encoders: dict[str, str] = field(default_factory=dict)  # name -> what it is, one line
    weights: list[WeightReport] = field(default_factory=list)  # fused: label-free and judged w


def request_plan(
    spec: VariantSpec, k: int, oversample: int | None, ef_search: int | None
) -> SearchPlan:
    """The server's plan for a k-hit request: rescoring when an oversample is given."""
    return SearchPlan(
        variant=spec.name,
        k=k,
        rescore=oversample is not None,
        oversample=oversample or 1,
        ef_search=ef_search or HNSW_EF_SEARCH,
    )


def rank(
    spec: VariantSpec,
    index: Any,
    docs: DocSide,
    queries: npt.NDArray[np.float32],
    k: int,
    oversample: int | None,
    ef_search: int | None = None,
    table: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """(n, k) scores and internal ids, -1 padded: the search core, as the server runs it."""
    target = SearchTarget(docs.vectors, {spec.name: spec}, {spec.name: index}, None, table)
    return search(target, queries, request_plan(spec, k, oversample, ef_search)).padded(k)


class Evaluator:
    """Runs the plans over one evaluation set, sharing embeddings and indexes between modes."""

    def __init__(
        self,
        eval_set: EvalSet,
        config: EvalConfig,
        bundle: Bundle | None = None,
        backend: SearchBackend | None = None,
    ) -> None:
        self.eval_set = eval_set
        self.config = config
        self.bundle = bundle
        self.backend = backend  # searches the bundle's side there (Milvus) instead of FAISS
        self._doc_sides: dict[str, DocSide] = {}
        self._queries: dict[str, npt.NDArray[np.float32]] = {}
        self._encode_ms: dict[str, float] = {}
        n_sample = min(config.latency_queries, len(eval_set.queries))
        self._sample = np.arange(n_sample)  # the first queries in id order: stable across runs
        self.extra_sides: dict[str, DocSide] = {}  # e.g. the student side of fused rows

    def run(
        self, plans: Sequence[ModePlan], on_row: Callable[[ResultRow], None] | None = None
    ) -> list[ResultRow]:
        rows: list[ResultRow] = []
        for plan in plans:
            for row in self._run_plan(plan):
                rows.append(row)
                if on_row is not None:
                    on_row(row)
        return rows

    def _base_row(self, plan: ModePlan, variant: str) -> ResultRow:
        return ResultRow(
            dataset=self.eval_set.name,
            split=self.eval_set.split,
            mode=plan.mode,
            query_encoder=plan.query_encoder.name,
            doc_encoder=plan.doc_encoder.name,
            variant=variant,
            n_queries=len(self.eval_set.queries),
            n_docs=self._doc_count(plan.doc_encoder),
        )

    def _doc_count(self, encoder: Encoder) -> int:
        side = self._doc_sides.get(encoder.card.fingerprint)
        return side.n_docs if side is not None else len(self.eval_set.corpus)

    def _run_plan(self, plan: ModePlan) -> list[ResultRow]:
        if plan.reason is not None:
            row = self._base_row(plan, "-")
            row.status, row.note = "n/a", plan.reason
            logger.info("%s: not applicable: %s", plan.mode, plan.reason)
            return [row]
        if plan.mode == "fused":
            from tandem.evaluation.fused_eval import run_fused

            return run_fused(self, plan)
        docs = self.doc_side(plan.doc_encoder)
        queries = self.query_vectors(plan.query_encoder)
        encode_ms = self.encode_ms(plan.query_encoder)
        table = docs.exact_scores(plan.query_encoder.card.fingerprint, queries)
        names = self.config.variants or docs.variant_names()
        rows: list[ResultRow] = []
        for name in names:
            try:
                spec = VariantSpec.parse(name, docs.dim)
            except VariantError as exc:
                row = self._base_row(plan, name)
                row.status, row.note = "n/a", str(exc)
                rows.append(row)
                continue
            if self._remote(docs, spec) is False:
                row = self._base_row(plan, name)
                row.status, row.note = "n/a", "not in the Milvus collection (FAISS-only variant)"
                rows.append(row)
                continue
            index, bytes_per_doc = docs.index(spec)
            settings: list[int | None] = [None]
            if _first_pass_is_lossy(spec, docs.dim):
                settings += list(self.config.oversample)
            for oversample in settings:
                row = self._base_row(plan, spec.name)
                row.rescore, row.oversample = oversample is not None, oversample
                row.bytes_per_doc = bytes_per_doc
                row.encode_ms = encode_ms
                if untrained_truncation(spec, docs.dim, plan.doc_encoder.card.matryoshka_dims):
                    row.note = NOT_TRAINED
                self._measure(row, spec, index, docs, queries, table)
                row.latency_ms = row.encode_ms + (row.search_ms or 0.0)
                if plan.query_encoder is plan.doc_encoder and spec.name == f"f32-{docs.dim}":
                    row.published_ndcg_at_10 = self._published(plan.doc_encoder)
                rows.append(row)
                logger.info(
                    "%s %s: nDCG@10 %.4f R@100 %.4f",
                    plan.mode,
                    row.label,
                    row.ndcg_at_10,
                    row.recall_at_100,
                )
        return rows

    def _remote(self, docs: DocSide, spec: VariantSpec) -> bool | None:
        """True: search this in the backend; False: the backend lacks it; None: no backend here."""
        if self.backend is None or docs.bundle is None:
            return None
        return spec.name in self.backend.capabilities.variants

    def _rank(
        self,
        spec: VariantSpec,
        index: Any,
        docs: DocSide,
        queries: npt.NDArray[np.float32],
        k: int,
        oversample: int | None,
        table: npt.NDArray[np.float32] | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if self.backend is not None and self._remote(docs, spec):
            plan = request_plan(spec, k, oversample, self.config.ef_search)
            return self.backend.search(queries, plan).padded(k)
        return rank(spec, index, docs, queries, k, oversample, self.config.ef_search, table)

    def _published(self, encoder: Encoder) -> float | None:
        found = published_ndcg10(self.eval_set.name, encoder.name, self.eval_set.split)
        return found[0] if found else None

    def _measure(
        self,
        row: ResultRow,
        spec: VariantSpec,
        index: Any,
        docs: DocSide,
        queries: npt.NDArray[np.float32],
        table: npt.NDArray[np.float32] | None,
    ) -> None:
        """Metrics at the depth each needs (k=10 requests for @10 metrics), then search time."""
        qids, doc_ids = self.eval_set.query_ids, docs.doc_ids
        qrels = self.eval_set.qrels
        values: dict[str, float] = {}
        for depth in sorted(set(DEPTH.values())):
            names = [name for name, d in DEPTH.items() if d == depth]
            _, ids = self._rank(spec, index, docs, queries, depth, row.oversample, table)
            values.update(evaluate(qrels, run_from_hits(qids, ids, doc_ids), names))
        row.ndcg_at_10, row.recall_at_100, row.mrr_at_10 = (
            values["ndcg@10"],
            values["recall@100"],
            values["mrr@10"],
        )
        row.search_ms = self._time_search(spec, index, docs, queries, row.oversample)

    def _time_search(
        self,
        spec: VariantSpec,
        index: Any,
        docs: DocSide,
        queries: npt.NDArray[np.float32],
        oversample: int | None,
    ) -> float:
        """Median ms of one-query k=10 requests, as online traffic arrives (no batching)."""
        times: list[float] = []
        target = SearchTarget(docs.vectors, {spec.name: spec}, {spec.name: index})
        plan = request_plan(spec, 10, oversample, self.config.ef_search)
        backend = self.backend if self._remote(docs, spec) else None
        with faiss_threads(self.config.search_threads):
            for n, i in enumerate(self._sample):
                query = queries[i : i + 1]
                start = time.perf_counter()
                if backend is not None:
                    backend.search(query, plan)
                else:
                    search(target, query, plan)
                if n >= _WARMUP or len(self._sample) <= _WARMUP:
                    times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times) if times else 0.0

    def doc_side(self, encoder: Encoder) -> DocSide:
        """The corpus embedded by this encoder: the bundle's vectors, or the embedding cache."""
        key = encoder.card.fingerprint
        if key not in self._doc_sides:
            bundle = self.bundle
            if bundle is not None and bundle.manifest.teacher_fingerprint == key:
                side = DocSide(encoder, bundle.vectors, bundle.external_ids(), bundle)
                _check_coverage(side.doc_ids, self.eval_set.corpus.ids, str(bundle.path))
            else:
                corpus = self.eval_set.corpus
                vectors = _encode_logged(encoder, corpus.texts, "document")
                side = DocSide(encoder, vectors, corpus.ids)
            self._doc_sides[key] = side
        return self._doc_sides[key]

    def query_vectors(self, encoder: Encoder) -> npt.NDArray[np.float32]:
        key = encoder.card.fingerprint
        if key not in self._queries:
            self._queries[key] = _encode_logged(encoder, self.eval_set.query_texts, "query")
        return self._queries[key]

    def encode_ms(self, encoder: Encoder) -> float:
        """Median ms to embed one query alone (batch of one, no cache): what a request pays."""
        key = encoder.card.fingerprint
        if key not in self._encode_ms:
            texts = self.eval_set.query_texts
            sample = [texts[i] for i in self._sample]
            for text in sample[:_WARMUP]:
                encoder.encode([text], "query")
            times: list[float] = []
            for text in sample:
                start = time.perf_counter()
                encoder.encode([text], "query")
                times.append((time.perf_counter() - start) * 1000)
            self._encode_ms[key] = statistics.median(times) if times else 0.0
            logger.info(
                "%s: %.2f ms per query (median of %d)",
                encoder.name,
                self._encode_ms[key],
                len(times),
            )
        return self._encode_ms[key]


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run a block with n OpenMP threads in FAISS, restoring the previous setting."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _check_coverage(bundle_ids: Sequence[str], corpus_ids: Sequence[str], where: str) -> None:
    """A bundle over another corpus would make every number meaningless: say so loudly."""
    missing = len(set(corpus_ids) - set(bundle_ids))
    extra = len(set(bundle_ids) - set(corpus_ids))
    if missing or extra:
        logger.warning(
            "bundle %s differs from the dataset corpus: %d dataset docs missing, %d extra docs",
            where,
            missing,
            extra,
        )


def _first_pass_is_lossy(spec: VariantSpec, full_dim: int) -> bool:
    """Rescoring changes results only when first-pass scores are not full-dim float products."""
    return spec.kind != "f32" or spec.dim < full_dim


def _encode_logged(
    encoder: Encoder, texts: Sequence[str], kind: Literal["query", "document"]
) -> npt.NDArray[np.float32]:
    cache = EmbeddingCache.for_encoder(encoder)
    done = [0]
    step = max(len(texts) // 20, 256)
    next_log = [step]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] >= next_log[0]:
            logger.info("%s: %d/%d %s texts embedded", encoder.name, done[0], len(texts), kind)
            next_log[0] = done[0] + step

    start = time.perf_counter()
    try:
        vectors = encode_cached(encoder, texts, kind, cache, on_progress=progress)
    finally:
        cache.close()
    logger.info(
        "%s: %d %s vectors in %.1f s", encoder.name, len(texts), kind, time.perf_counter() - start
    )
    return vectors


def describe_encoder(encoder: Encoder) -> str:
    """One line a reader needs to know which model produced a number."""
    card = encoder.card
    text = (
        f"{card.dim}-d, {card.pooling} pooling, max {card.max_length} tokens, {encoder.precision}, "
        f"fingerprint {card.fingerprint[:12]}"
    )
    aligned = card.aligned_to
    if aligned is not None:
        cosines = ", ".join(f"{k} {v:.3f}" for k, v in sorted(aligned.heldout_cosine.items()))
        text += (
            f"; aligned to {aligned.teacher_name} by {aligned.method} on {aligned.n_texts} texts"
            + (f", held-out cosine to the teacher: {cosines}" if cosines else "")
        )
    return text


def _processor() -> str:
    """The CPU model: platform.processor() is empty on most Linux systems."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, str]:
    """Where the timings were taken; latency numbers mean little without it."""
    return {
        "machine": platform.machine(),
        "processor": _processor(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "platform": platform.platform(terse=True),
    }


def run_evaluation(
    eval_set: EvalSet,
    teacher: Encoder,
    students: Sequence[Encoder],
    config: EvalConfig,
    bundle: Bundle | None = None,
    on_row: Callable[[ResultRow], None] | None = None,
    backend: SearchBackend | None = None,
    judged: EvalSet | None = None,
) -> EvalResult:
    """Evaluate every applicable mode × variant × rescoring setting on one split.

    With a bundle, teacher documents come from it (vectors, ids, variant files);
    its teacher must be ``teacher``, which is checked by fingerprint. With a
    ``backend`` (Milvus, pushed from that bundle), the bundle side's searches
    go there instead of FAISS, so both tiers are scored by the same qrels.
    ``judged`` (another split, e.g. train) is only used to report the fused
    weight its judgments would pick, beside the label-free one.
    """
    if bundle is not None and bundle.manifest.teacher_fingerprint != teacher.card.fingerprint:
        raise BundleMismatchError(
            f"bundle {bundle.path} was built by {bundle.manifest.teacher_name} "
            f"(fingerprint {bundle.manifest.teacher_fingerprint[:12]}), not by {teacher.name} "
            f"(fingerprint {teacher.card.fingerprint[:12]})"
        )
    plans = plan_modes(teacher, students)
    if backend is not None:
        if bundle is None:
            raise BundleMismatchError("--backend milvus needs --bundle: the bundle that was pushed")
        if backend.manifest.teacher_fingerprint != bundle.manifest.teacher_fingerprint:
            raise BundleMismatchError(
                "the Milvus collection was pushed from another teacher's bundle "
                f"({backend.manifest.teacher_fingerprint[:12]})"
            )
        if backend.manifest.n_docs != bundle.n_docs:
            raise BundleMismatchError(
                f"the Milvus collection holds {backend.manifest.n_docs} docs, "
                f"the bundle {bundle.n_docs}: push this bundle version"
            )
    evaluator = Evaluator(eval_set, config, bundle, backend)
    rows = evaluator.run(plans, on_row)
    from tandem.evaluation.fused_eval import weight_report

    weights = [
        weight_report(evaluator, plan.query_encoder, teacher, judged)
        for plan in plans
        if plan.mode == "fused" and plan.reason is None
    ]
    return EvalResult(
        rows=rows,
        dataset=eval_set.name,
        split=eval_set.split,
        teacher=teacher.name,
        students=[s.name for s in students],
        config=config,
        environment=environment(),
        encoders={e.name: describe_encoder(e) for e in (teacher, *students)},
        weights=weights,
    )
