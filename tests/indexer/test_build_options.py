"""build_bundle options on a synthetic encoder: dtypes, duplicates, defaults, early errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tandem.bundle.format import open_bundle, verify_bundle
from tandem.bundle.variants import VariantError
from tandem.indexer.build import BuildError, build_bundle, default_variants

from tandem.data.corpus import Doc
from tests.support.index import HashEncoder


def docs(n: int) -> list[Doc]:
    return [Doc(f"d{i}", f"document {i}", {"i": i}) for i in range(n)]


def test_f32_vectors_store_the_encoder_output_exactly(tmp_path: Path) -> None:
    encoder = HashEncoder(48)
    path = build_bundle(
        docs(20), tmp_path, encoder, ["f32-48"], vectors_dtype="f32", use_cache=False
    )
    verify_bundle(path)
    with open_bundle(path) as bundle:
        assert (path / "vectors.f32.npy").exists() and bundle.vectors.dtype == np.float32
        expected = encoder.encode([d.text for d in docs(20)])
        np.testing.assert_array_equal(bundle.vectors, expected)
        assert bundle.manifest.vectors_dtype == "f32"


def test_default_variants_are_exact_int8_and_binary_at_full_dim(tmp_path: Path) -> None:
    path = build_bundle(docs(10), tmp_path, HashEncoder(64), use_cache=False)
    with open_bundle(path) as bundle:
        assert sorted(bundle.variant_names()) == sorted(default_variants(64))
        assert default_variants(64) == ["f32-64", "int8-64", "bin-64"]


def test_sequences_of_pairs_and_mappings_are_accepted(tmp_path: Path) -> None:
    items = [("a", "first text"), {"id": "b", "text": "second", "metadata": {"k": 1}}]
    path = build_bundle(items, tmp_path, HashEncoder(16), ["f32-16"], use_cache=False)
    with open_bundle(path) as bundle:
        assert bundle.external_ids() == ["a", "b"]
        assert bundle.filter_ids({"k": 1}).tolist() == [1]


def test_duplicate_ids_fail_unless_deduped(tmp_path: Path) -> None:
    dup = [*docs(3), Doc("d1", "another text", {})]
    with pytest.raises(BuildError, match="duplicate id 'd1'.*--dedupe"):
        build_bundle(dup, tmp_path / "a", HashEncoder(16), ["f32-16"], use_cache=False)
    assert not (tmp_path / "a" / ".build").exists()
    path = build_bundle(
        dup, tmp_path / "b", HashEncoder(16), ["f32-16"], use_cache=False, dedupe=True
    )
    with open_bundle(path) as bundle:
        assert bundle.external_ids() == ["d0", "d1", "d2"]
        assert bundle.documents([1])[0].text == "document 1"
        assert bundle.manifest.build["corpus"]["stats"]["n_duplicates"] == 1


def test_empty_corpus_and_bad_variants_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no documents"):
        build_bundle([], tmp_path / "a", HashEncoder(16), ["f32-16"], use_cache=False)
    with pytest.raises(VariantError, match="teacher has 16"):
        build_bundle(docs(3), tmp_path / "b", HashEncoder(16), ["f32-32"], use_cache=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(BuildError, match="f16 or f32"):
        build_bundle(docs(3), tmp_path / "c", HashEncoder(16), ["f32-16"], vectors_dtype="f64")  # type: ignore[arg-type]
