"""The raw anchor runs with tokenizers, onnxruntime, FAISS and numpy only."""

from __future__ import annotations

import ast
from pathlib import Path

import faiss
import numpy as np
from tandem.models.card import ModelCard

from bench import raw_anchor

ALLOWED = {"__future__", "time", "collections", "pathlib", "typing"}
ALLOWED |= {"faiss", "numpy", "onnxruntime", "tokenizers"}


def test_no_tandem_code_on_the_anchor_path() -> None:
    tree = ast.parse(Path(raw_anchor.__file__).read_text())
    modules = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert modules <= ALLOWED, modules - ALLOWED


def test_the_loop_searches_and_measures(aligned_student_dir: Path) -> None:
    card = ModelCard.load(aligned_student_dir)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, card.dim)).astype(np.float32)
    common = {
        "tokenizer_file": aligned_student_dir / card.tokenizer_file,
        "max_length": card.max_length,
        "queries": ["what causes tides", "glacier retreat", "vaccines and smallpox"],
        "k": 5,
        "n_single": 5,
        "n_batched": 16,
    }
    model = aligned_student_dir / card.onnx_file
    row = raw_anchor.run(model_file=model, vectors=vectors, **common)  # type: ignore[arg-type]
    assert row["search"] and row["model"] == card.onnx_file
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["qps_best"] >= max(row["qps_batch_8"], row["qps_batch_32"]) > 0
    embed_only = raw_anchor.run(model_file=model, vectors=None, **common)  # type: ignore[arg-type]
    assert not embed_only["search"]


def test_the_loop_searches_on_one_thread_and_restores_the_setting(
    aligned_student_dir: Path,
) -> None:
    card = ModelCard.load(aligned_student_dir)
    vectors = np.random.default_rng(0).standard_normal((20, card.dim)).astype(np.float32)
    seen: list[int] = []
    search = faiss.IndexFlatIP.search

    def recording(self: faiss.IndexFlatIP, *args: object, **kwargs: object) -> object:
        seen.append(faiss.omp_get_max_threads())
        return search(self, *args, **kwargs)

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    faiss.IndexFlatIP.search = recording  # observe FAISS itself; the anchor is not changed
    try:
        raw_anchor.run(
            model_file=aligned_student_dir / card.onnx_file,
            tokenizer_file=aligned_student_dir / card.tokenizer_file,
            max_length=card.max_length,
            vectors=vectors,
            queries=["what causes tides", "glacier retreat"],
            k=3,
            n_single=2,
            n_batched=8,
        )
    finally:
        faiss.IndexFlatIP.search = search
        after = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(before)
    assert seen and set(seen) == {1}
    assert after == 3
