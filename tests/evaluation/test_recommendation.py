"""The recommendation rule and the Pareto front, against hand-made rows."""

from __future__ import annotations

from tandem.evaluation.report import pareto_front, recommend
from tandem.evaluation.runner import ResultRow


def _row(
    variant: str, ndcg: float, size: float, latency: float, rescore: bool = False
) -> ResultRow:
    return ResultRow(
        dataset="d", split="test", mode="asymmetric", query_encoder="s", doc_encoder="t",
        variant=variant, rescore=rescore, oversample=4 if rescore else None,
        ndcg_at_10=ndcg, recall_at_100=ndcg, mrr_at_10=ndcg,
        bytes_per_doc=size, latency_ms=latency,
    )  # fmt: skip


def test_recommendation_is_the_smallest_variant_within_tolerance() -> None:
    rows = [
        _row("f32-768", 0.650, 3072, 5.0),
        _row("int8-768", 0.648, 768, 4.0),
        _row("bin-768", 0.600, 96, 3.0),
        _row("bin-768", 0.645, 96, 3.5, rescore=True),
        _row("f32-192", 0.630, 768, 3.0),
    ]
    rec = recommend(rows, tolerance=0.01)
    assert rec is not None and rec.row is rows[3] and rec.reference is rows[0]
    assert recommend(rows, tolerance=0.003).row is rows[1]  # type: ignore[union-attr]
    front = pareto_front(rows, lambda r: r.bytes_per_doc or 0.0)
    assert [r.label for r in front] == ["bin-768 → rescore ×4", "int8-768", "f32-768"]
