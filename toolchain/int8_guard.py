"""The int8 ranking guard: nDCG@10 of the int8 student against its fp32 self, on real qrels.

``tandem models quantize`` admits an int8 graph when its vectors stay close
to fp32 (cosine). Closeness is not quality: a small drift can reorder the
top ten. This guard embeds a BEIR split's judged queries with both graphs,
ranks the teacher's document vectors (an index bundle built by the teacher
the student is aligned to) exactly, and scores nDCG@10 with ir-measures. The
verdict is written to the card; ``precision=auto`` serves int8 only when the
drop is within ``max_drop``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tandem.bundle.format import Bundle, open_bundle
from tandem.bundle.search import SearchPlan, SearchTarget, search
from tandem.bundle.variants import VariantSpec, build_index
from tandem.evaluation.metrics import evaluate, run_from_hits
from tandem.models.card import Int8Quality, ModelCard
from tandem.models.encoder import Encoder
from tandem.models.pairing import check_pair
from tandem.toolchain.quantize import LADDER, QuantizationRefused, quantize_int8

from tandem.data.beir import load_eval_set
from tandem.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 0.005
K = 10


class GuardError(ModelError):
    """The guard cannot run: no int8 graph, or a bundle of another teacher."""


def exact_search(bundle: Bundle) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.int64]]:
    """Exact search of the bundle's full-dimension vectors through the server's search core."""
    spec = VariantSpec.parse(f"f32-{bundle.dim}", bundle.dim)
    if spec.name in bundle.variant_names():
        index = bundle.index(spec.name)
    else:
        index = build_index(spec, bundle.vectors)
    target = SearchTarget(bundle.vectors, {spec.name: spec}, {spec.name: index})
    plan = SearchPlan(variant=spec.name, k=K, rescore=False)

    def ids(queries: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        return search(target, queries, plan).padded(K)[1]  # (n, K) internal ids, -1 padded

    return ids


def guard_int8(
    student: Path,
    dataset: Path,
    bundle_path: Path,
    split: str = "test",
    max_drop: float = DEFAULT_MAX_DROP,
) -> Int8Quality:
    """Measure nDCG@10 at fp32 and int8, record the verdict in the student's card, return it."""
    card = ModelCard.load(student)
    if card.int8 is None:
        raise GuardError(f"{card.name} has no int8 graph: run `tandem models quantize` first")
    eval_set = load_eval_set(dataset, split)
    with open_bundle(bundle_path) as bundle:
        manifest = bundle.manifest
        check_pair(card, manifest.teacher_name, manifest.teacher_fingerprint)
        doc_ids = bundle.external_ids()
        ranked = exact_search(bundle)
        texts = eval_set.query_texts
        ndcg: dict[str, float] = {}
        for precision in ("fp32", "int8"):
            encoder = Encoder(student, precision=precision, device="cpu")
            queries = encoder.encode(texts, kind="query")
            ids = ranked(queries)
            run = run_from_hits(eval_set.query_ids, ids, doc_ids)
            ndcg[precision] = evaluate(eval_set.qrels, run, ["ndcg@10"])["ndcg@10"]
            logger.info("%s %s: nDCG@10 %.4f", card.name, precision, ndcg[precision])
    quality = Int8Quality(
        dataset=eval_set.name,
        split=split,
        n_queries=len(texts),
        ndcg_fp32=ndcg["fp32"],
        ndcg_int8=ndcg["int8"],
        max_drop=max_drop,
    )
    card.int8.quality = quality
    card.save(student)
    logger.info("%s: %s", card.name, card.serving_reason())
    return quality


def guard_ladder(
    student: Path,
    dataset: Path,
    bundle_path: Path,
    split: str = "test",
    max_drop: float = DEFAULT_MAX_DROP,
) -> tuple[Int8Quality | None, list[str]]:
    """Quantize down the ladder (most quantized first) until a graph keeps nDCG@10.

    Returns the passing verdict (None if no step passed; the last judged graph
    then stays on disk with its failing verdict, and fp32 stays the default)
    and one line per step.
    """
    lines: list[str] = []
    for label, config in LADDER:
        try:
            quantize_int8(student, config)
        except QuantizationRefused as exc:
            lines.append(f"{label}: refused by the cosine guard ({exc})")
            continue
        quality = guard_int8(student, dataset, bundle_path, split, max_drop)
        verdict = "passed" if quality.passed else "failed"
        lines.append(
            f"{label}: nDCG@10 {quality.ndcg_int8:.4f} vs fp32 {quality.ndcg_fp32:.4f} "
            f"(drop {quality.drop:+.4f}) {verdict}"
        )
        if quality.passed:
            card = ModelCard.load(student)
            assert card.int8 is not None  # written by quantize_int8 above
            card.int8.settings["ladder_step"] = label
            card.save(student)
            return quality, lines
    return None, lines
