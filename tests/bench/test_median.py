"""How the benchmark folds interleaved rounds into one report: medians, leaf by leaf."""

from __future__ import annotations

from bench.query_path import median_of


def test_numbers_are_medians_and_everything_else_comes_from_the_first_round() -> None:
    rounds = [
        {"model": "a.onnx", "p50_ms": 1.0, "levels": [{"concurrency": 1, "qps": 10.0}], "ok": True},
        {"model": "a.onnx", "p50_ms": 3.0, "levels": [{"concurrency": 1, "qps": 30.0}], "ok": True},
        {
            "model": "a.onnx",
            "p50_ms": 2.5,
            "levels": [{"concurrency": 1, "qps": 20.0}],
            "ok": False,
        },
    ]
    assert median_of(rounds) == {
        "model": "a.onnx",
        "p50_ms": 2.5,
        "levels": [{"concurrency": 1, "qps": 20.0}],
        "ok": True,
    }


def test_a_key_missing_from_a_round_keeps_the_first_rounds_value() -> None:
    assert median_of([{"x": 1.0, "extra": 5.0}, {"x": 3.0}]) == {"x": 2.0, "extra": 5.0}
