"""Metric plumbing against answers worked out by hand, and the split discipline of the loader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from tandem.evaluation.metrics import evaluate, per_query, run_from_hits

from tandem.data.beir import DatasetError, load_eval_set

QRELS = {"q1": {"a": 2, "b": 1}, "q2": {"x": 1}}


def test_perfect_ranking_scores_one() -> None:
    run = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"x": 1.0, "y": 0.5}}
    assert evaluate(QRELS, run) == pytest.approx({"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0})


def test_reversed_graded_ranking_matches_hand_computation() -> None:
    run = {"q1": {"c": 3.0, "b": 2.0, "a": 1.0}}  # relevant docs at ranks 3 (gain 2) and 2 (gain 1)
    dcg = 1 / math.log2(2 + 1) + 2 / math.log2(3 + 1)
    ideal = 2 / math.log2(1 + 1) + 1 / math.log2(2 + 1)
    values = per_query(QRELS, run)
    assert values["ndcg@10"]["q1"] == pytest.approx(dcg / ideal)  # 0.6199...
    assert values["mrr@10"]["q1"] == pytest.approx(1 / 2)
    assert values["recall@100"]["q1"] == pytest.approx(1.0)


def test_query_missing_from_run_counts_as_zero() -> None:
    run = {"q1": {"a": 3.0, "b": 2.0}}  # nothing for q2
    result = evaluate(QRELS, run)
    assert result["ndcg@10"] == pytest.approx(0.5)
    assert result["mrr@10"] == pytest.approx(0.5)


def test_cutoff_ignores_hits_below_rank_ten() -> None:
    run = {"q2": {f"n{i}": 100.0 - i for i in range(10)} | {"x": 1.0}}  # x at rank 11
    result = evaluate({"q2": {"x": 1}}, run)
    assert result["ndcg@10"] == 0.0 and result["mrr@10"] == 0.0
    assert result["recall@100"] == 1.0


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(QRELS, {}, ["p@5"])


def test_run_from_hits_judges_the_served_order_and_drops_padding() -> None:
    ids = np.array([[2, 0, -1]], dtype=np.int64)
    assert run_from_hits(["q1"], ids, ["a", "b", "c"]) == {"q1": {"c": 2.0, "a": 1.0}}


def test_tied_scores_are_judged_in_served_order_not_by_doc_id() -> None:
    # Served order z, a (tied scores, e.g. equal Hamming distance); only z is relevant.
    # pytrec_eval on raw tied scores would put "z" after "a" (doc id order) and give RR 0.5.
    run = run_from_hits(["q"], np.array([[1, 0]]), ["a", "z"])
    assert evaluate({"q": {"z": 1}}, run)["mrr@10"] == 1.0


def test_only_the_requested_split_is_loaded(tiny_beir: Path) -> None:
    test = load_eval_set(tiny_beir, "test")
    train = load_eval_set(tiny_beir, "train")
    assert test.query_ids == ["1", "2", "3", "4", "5"]
    assert set(train.query_ids) == {"101", "102"}
    assert set(test.qrels) == set(test.query_ids)
    assert len(test.corpus) == 20
    assert test.corpus.texts[0].startswith("Photosynthesis Plants convert")  # title + " " + text


def test_missing_split_names_the_available_ones(tiny_beir: Path) -> None:
    with pytest.raises(DatasetError, match="available: \\['test', 'train'\\]"):
        load_eval_set(tiny_beir, "dev")
