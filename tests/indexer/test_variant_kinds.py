"""Variant specs, truncation, and every index kind against a numpy reference (no model)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from tandem.bundle.variants import (
    VariantError,
    VariantSpec,
    build_index,
    parse_variants,
    query_codes,
    read_index,
    search_variant,
    truncate_normalize,
    write_index,
)
from tandem.bundle.vectorfile import VectorFile, create_npy

from tests.support.index import assert_exact_topk, exact_neighbors, recall_at_k

DIM = 64


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((600, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def queries(vectors: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(8)
    q = vectors[:20] + 0.3 * rng.standard_normal((20, DIM)).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "kind", "dim", "hnsw"),
    [
        ("f32-768", "f32", 768, False),
        ("f32-64-hnsw", "f32", 64, True),
        ("int8-256", "int8", 256, False),
        ("bin-768-hnsw", "bin", 768, True),
        ("ivfpq-768", "ivfpq", 768, False),
        (" BIN-512 ", "bin", 512, False),
    ],
)
def test_parse_round_trips(name: str, kind: str, dim: int, hnsw: bool) -> None:
    spec = VariantSpec.parse(name, 768)
    assert (spec.kind, spec.dim, spec.hnsw) == (kind, dim, hnsw)
    assert VariantSpec.parse(spec.name, 768) == spec
    assert spec.is_binary == (kind == "bin")


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("f32-1024", "teacher has 768"),
        ("f16-768", "unknown variant kind"),
        ("bin-100", "multiple of 8"),
        ("ivfpq-768-hnsw", "no -hnsw form"),
        ("f32", "cannot parse"),
        ("f32-0", "0 dims"),
    ],
)
def test_parse_rejects_with_a_useful_message(name: str, needle: str) -> None:
    with pytest.raises(VariantError, match=needle) as info:
        VariantSpec.parse(name, 768)
    assert "f32-768" in str(info.value) or "multiple of 8" in str(info.value)


def test_parse_variants_splits_commas_and_refuses_duplicates() -> None:
    specs = parse_variants(["f32-768,bin-768", "int8-256"], 768)
    assert [s.name for s in specs] == ["f32-768", "bin-768", "int8-256"]
    with pytest.raises(VariantError, match="twice"):
        parse_variants(["f32-768", "F32-768"], 768)


def test_truncate_normalize_keeps_prefix_direction_at_unit_length() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 32)).astype(np.float16)
    x[3] = 0
    out = truncate_normalize(x, 8)
    assert out.shape == (50, 8) and out.dtype == np.float32
    norms = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(np.delete(norms, 3), 1.0, atol=1e-6)
    assert not out[3].any()
    prefix = x[:, :8].astype(np.float32)
    cos = (out * prefix).sum(1) / np.maximum(np.linalg.norm(prefix, axis=1), 1e-12)
    np.testing.assert_allclose(np.delete(cos, 3), 1.0, atol=1e-6)


def test_query_codes_shapes() -> None:
    q = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    codes = query_codes(VariantSpec("bin", 64), q)
    assert codes.dtype == np.uint8 and codes.shape == (3, 8)
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1).astype(bool), q > 0)
    floats = query_codes(VariantSpec("f32", 16), q)
    assert floats.shape == (3, 16) and floats.dtype == np.float32


@pytest.mark.parametrize(
    "name", ["f32-64", "f32-16", "bin-64", "bin-32", "f32-64-hnsw", "bin-64-hnsw"]
)
def test_exact_kinds_match_numpy(name: str, vectors: np.ndarray, queries: np.ndarray) -> None:
    spec = VariantSpec.parse(name, DIM)
    index = build_index(spec, vectors, chunk=128)  # several chunks
    assert index.ntotal == len(vectors)
    scores, ids = search_variant(spec, index, queries, k=10, ef_search=600)
    truth = exact_neighbors(vectors, queries, spec)
    assert_exact_topk(truth, ids, scores, tol=1e-5)


@pytest.mark.parametrize(
    ("name", "min_recall"), [("int8-64", 0.9), ("int8-64-hnsw", 0.9), ("ivfpq-64", 0.3)]
)
def test_approximate_kinds_find_most_neighbors(
    name: str, min_recall: float, vectors: np.ndarray, queries: np.ndarray
) -> None:
    spec = VariantSpec.parse(name, DIM)
    index = build_index(spec, vectors, chunk=100)
    scores, ids = search_variant(spec, index, queries, k=10, ef_search=600)
    truth = exact_neighbors(vectors, queries, VariantSpec("f32", DIM))
    assert recall_at_k(truth, ids) >= min_recall
    assert (ids >= 0).all()
    assert np.isfinite(scores).all()


def test_int8_training_from_streamed_ranges_equals_training_on_everything(
    vectors: np.ndarray,
) -> None:
    index = build_index(VariantSpec("int8", 32), vectors, chunk=50)
    reference = faiss.IndexScalarQuantizer(
        32, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    reference.train(truncate_normalize(vectors, 32))
    np.testing.assert_array_equal(
        faiss.vector_to_array(index.sq.trained), faiss.vector_to_array(reference.sq.trained)
    )


def test_fewer_vectors_than_k_pads_with_minus_one(vectors: np.ndarray) -> None:
    for name in ("f32-64", "bin-64", "f32-64-hnsw"):
        spec = VariantSpec.parse(name, DIM)
        index = build_index(spec, vectors[:5])
        scores, ids = search_variant(spec, index, vectors[:2], k=8)
        assert ids.shape == (2, 8) and (ids[:, 5:] == -1).all() and (ids[:, :5] >= 0).all()
        assert np.isneginf(scores[:, 5:]).all() and np.isfinite(scores[:, :5]).all()


def test_float16_memmap_and_vector_file_build_the_same_index(
    vectors: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "v.npy"
    create_npy(path, len(vectors), DIM, np.float16)
    with VectorFile(path, writable=True) as vf:
        rows = np.random.default_rng(3).permutation(len(vectors))
        vf.write_rows(rows, vectors[rows])
    mapped = np.load(path, mmap_mode="r")
    assert mapped.dtype == np.float16
    np.testing.assert_array_equal(mapped, vectors.astype(np.float16))
    spec = VariantSpec("f32", 48)
    with VectorFile(path) as vf:
        from_file = build_index(spec, vf, chunk=64)
    from_map = build_index(spec, mapped, chunk=1000)
    np.testing.assert_array_equal(
        faiss.rev_swig_ptr(from_file.get_xb(), from_file.ntotal * 48),
        faiss.rev_swig_ptr(from_map.get_xb(), from_map.ntotal * 48),
    )


@pytest.mark.parametrize(
    "name", ["f32-64", "int8-64", "bin-64", "f32-64-hnsw", "bin-64-hnsw", "ivfpq-64"]
)
def test_written_index_loads_memory_mapped_with_the_same_results(
    name: str, vectors: np.ndarray, queries: np.ndarray, tmp_path: Path
) -> None:
    spec = VariantSpec.parse(name, DIM)
    index = build_index(spec, vectors)
    write_index(spec, index, tmp_path / "x.faiss")
    loaded = read_index(spec, tmp_path / "x.faiss", mmap=True)
    before = search_variant(spec, index, queries, k=5)
    after = search_variant(spec, loaded, queries, k=5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)


def test_zero_vectors_cannot_make_an_index() -> None:
    with pytest.raises(VariantError, match="zero vectors"):
        build_index(VariantSpec("f32", 8), np.zeros((0, 8), dtype=np.float32))
