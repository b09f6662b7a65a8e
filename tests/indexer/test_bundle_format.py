"""A bundle built by the real teacher: exact search, documents, manifest, checksums."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt
import pytest
from tandem.bundle.format import (
    FORMAT_VERSION,
    Bundle,
    BundleError,
    UnknownVariantError,
    current_version_dir,
    open_bundle,
    verify_bundle,
)
from tandem.bundle.variants import VariantError, VariantSpec, search_variant
from tandem.models.embedding_cache import EmbeddingCache
from tandem.models.encoder import Encoder

from tests.support.index import (
    ALL_VARIANTS,
    QUERIES,
    assert_exact_topk,
    corpus_rows,
    exact_neighbors,
    recall_at_k,
)

EXACT = ["f32-768", "f32-256", "f32-64", "bin-768", "bin-256"]
GRAPH = ["f32-768-hnsw", "f32-256-hnsw", "bin-768-hnsw"]


def test_manifest_describes_the_bundle(bundle: Bundle, teacher: Encoder) -> None:
    m = bundle.manifest
    assert m.format_version == FORMAT_VERSION
    assert (m.n_docs, m.dim, m.vectors_dtype, m.normalized) == (40, 768, "f16", True)
    assert m.teacher_name == "all-mpnet-base-v2"
    assert m.teacher_fingerprint == teacher.card.fingerprint == m.teacher_card["fingerprint"]
    assert sorted(m.variants) == sorted(ALL_VARIANTS)
    assert set(m.files) == {"vectors.f16.npy", "docs.sqlite"} | {
        v.file for v in m.variants.values()
    }
    assert all(len(h) == 64 for h in m.files.values())
    assert all(v.ntotal == 40 and v.bytes > 0 for v in m.variants.values())
    assert m.variants["bin-768"].bytes < m.variants["int8-768"].bytes < m.variants["f32-768"].bytes
    assert m.variants["f32-768-hnsw"].params["M"] == 32
    assert m.build["operation"] == "build" and m.build["settings"]["checkpoint_every"] == 16
    assert bundle.version == "v0001" and bundle.path.name == "v0001"


def test_stored_vectors_are_the_teachers_unit_vectors(bundle: Bundle, teacher: Encoder) -> None:
    assert isinstance(bundle.vectors, np.memmap) and bundle.vectors.dtype == np.float16
    assert bundle.vectors.shape == (40, 768)
    texts = [d.text for d in bundle.documents(range(40))]
    fresh = teacher.encode(texts[:6], "document")
    stored = np.asarray(bundle.vectors[:6], dtype=np.float32)
    cos = (fresh * stored).sum(1) / np.linalg.norm(stored, axis=1)
    assert (cos > 0.9999).all()
    np.testing.assert_allclose(np.linalg.norm(bundle.vectors, axis=1), 1.0, atol=2e-3)


def test_documents_keep_external_ids_text_and_metadata(bundle: Bundle) -> None:
    rows = corpus_rows()
    docs = bundle.documents([5, 0, 39])
    assert [d.id for d in docs] == [rows[5]["id"], rows[0]["id"], rows[39]["id"]]
    assert docs[1].text == f"{rows[0]['title']} {rows[0]['text']}"
    assert docs[1].metadata == {**rows[0]["metadata"], "title": rows[0]["title"]}  # type: ignore[dict-item]
    assert bundle.lookup(["music-2", "nope"]).tolist() == [12, -1]
    assert bundle.external_ids() == [r["id"] for r in rows]
    with pytest.raises(BundleError, match="not in the bundle"):
        bundle.documents([40])


def test_filter_ids_matches_metadata(bundle: Bundle) -> None:
    music = bundle.filter_ids({"topic": "music"})
    assert music.tolist() == list(range(10, 15))
    assert bundle.filter_ids({"topic": "music", "even": True}).tolist() == [10, 12, 14]
    assert bundle.filter_ids({"rank": 4, "topic": "tech"}).tolist() == [39]
    assert bundle.filter_ids({"topic": "nothing"}).size == 0


@pytest.mark.parametrize("name", EXACT + GRAPH)
def test_search_returns_exact_neighbors_of_the_stored_vectors(
    bundle: Bundle, query_vectors: npt.NDArray[np.float32], name: str
) -> None:
    spec = bundle.spec(name)
    index = bundle.index(name)
    scores, ids = search_variant(spec, index, query_vectors, k=10, ef_search=64)
    truth = exact_neighbors(np.asarray(bundle.vectors), query_vectors, spec)
    assert_exact_topk(truth, ids, scores, tol=1e-4)


def test_queries_find_their_topic(bundle: Bundle, query_vectors: npt.NDArray[np.float32]) -> None:
    """End to end sanity: each query's best f32 hit is the sentence it paraphrases."""
    spec = bundle.spec("f32-768")
    _, ids = search_variant(spec, bundle.index("f32-768"), query_vectors, k=1)
    found = [d.id for d in bundle.documents(ids[:, 0].tolist())]
    assert found == ["space-1", "cooking-0", "music-0", "health-2", "history-2"], QUERIES


@pytest.mark.parametrize(
    ("name", "min_recall"), [("int8-768", 0.9), ("int8-256-hnsw", 0.8), ("ivfpq-768", 0.5)]
)
def test_quantized_variants_find_most_exact_neighbors(
    bundle: Bundle, query_vectors: npt.NDArray[np.float32], name: str, min_recall: float
) -> None:
    spec = bundle.spec(name)
    scores, ids = search_variant(spec, bundle.index(name), query_vectors, k=10)
    truth = exact_neighbors(np.asarray(bundle.vectors), query_vectors, VariantSpec("f32", spec.dim))
    assert recall_at_k(truth, ids) >= min_recall
    if spec.kind == "int8":
        rows = np.arange(len(ids))[:, None]
        np.testing.assert_allclose(scores, truth[rows, ids], atol=0.02)


def test_truncated_variant_renormalizes(bundle: Bundle) -> None:
    """f32-64 scores of a document against itself are 1: prefixes were re-normalized."""
    spec = bundle.spec("f32-64")
    own = np.asarray(bundle.vectors[:8], dtype=np.float32)
    scores, ids = search_variant(spec, bundle.index("f32-64"), own, k=1)
    assert ids[:, 0].tolist() == list(range(8))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    raw_norms = np.linalg.norm(own[:, :64], axis=1)
    assert (raw_norms < 0.6).all()  # without re-normalization they would score far below 1


def test_unknown_variant_is_a_client_error_naming_the_choices(bundle: Bundle) -> None:
    with pytest.raises(UnknownVariantError, match="available: .*f32-768") as info:
        bundle.index("f32-128")
    assert isinstance(info.value, BundleError) and isinstance(info.value, VariantError)


def test_index_is_loaded_once_and_shared_between_threads(bundle: Bundle) -> None:
    with ThreadPoolExecutor(8) as pool:
        indexes = list(pool.map(lambda _: bundle.index("bin-768"), range(16)))
        docs = list(pool.map(lambda i: bundle.documents([i % 40, 39 - i % 40]), range(64)))
    assert all(ix is indexes[0] for ix in indexes)
    ext = bundle.external_ids()
    for i, (a, b) in enumerate(docs):
        assert (a.id, b.id) == (ext[i % 40], ext[39 - i % 40])


def test_root_pointer_and_version_dir_open_the_same_bundle(session_root: Path) -> None:
    assert (session_root / "current").is_symlink()
    version = current_version_dir(session_root)
    assert version == session_root / "versions" / "v0001"
    with open_bundle(version, verify=True) as direct:
        assert direct.path == version and direct.n_docs == 40
    with pytest.raises(BundleError, match="neither a bundle root nor a bundle version"):
        open_bundle(session_root / "versions")
    with pytest.raises(BundleError, match="no bundle published"):
        current_version_dir(session_root.parent)


def _flip_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_catches_a_flipped_byte_in_every_file(session_root: Path, tmp_path: Path) -> None:
    version = current_version_dir(session_root)
    verify_bundle(version)
    files = sorted(p.relative_to(version) for p in version.rglob("*") if p.is_file())
    assert len(files) == len(ALL_VARIANTS) + 4  # + vectors, docs, manifest and its checksum
    for rel in files:
        copy = tmp_path / rel.as_posix().replace("/", "_")
        shutil.copytree(version, copy)
        _flip_byte(copy / rel)
        with pytest.raises(BundleError) as info:
            verify_bundle(copy)
        named = "manifest.json" if rel.name == "manifest.sha256" else rel.as_posix()
        assert named in str(info.value), (rel, str(info.value))
        shutil.rmtree(copy)


def test_open_checks_format_version_and_shapes(session_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "v"
    shutil.copytree(current_version_dir(session_root), copy)
    for p in copy.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    manifest = json.loads((copy / "manifest.json").read_text())

    def rewrite(data: dict) -> None:
        import hashlib

        payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        (copy / "manifest.json").write_bytes(payload)
        (copy / "manifest.sha256").write_text(hashlib.sha256(payload).hexdigest() + "\n")

    rewrite({**manifest, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(BundleError, match="upgrade tandem"):
        open_bundle(copy)
    rewrite({**manifest, "n_docs": 41})
    with pytest.raises(BundleError, match=r"holds \(40, 768\)"):
        open_bundle(copy)
    rewrite(manifest)
    (copy / "variants" / "bin-768.faiss").unlink()
    with pytest.raises(BundleError, match="missing variants/bin-768.faiss"):
        open_bundle(copy)


def test_cache_holds_every_document_vector(bundle: Bundle, teacher: Encoder) -> None:
    """The embedding cache is the checkpoint store: every stored row is in it, unchanged."""
    from tandem.models.embedding_cache import text_key

    cache = EmbeddingCache.for_encoder(teacher)
    texts = [d.text for d in bundle.documents(range(bundle.n_docs))]
    found = cache.get_many([text_key(t, "document") for t in texts])
    assert len(found) == bundle.n_docs
    cached = np.stack([found[text_key(t, "document")] for t in texts])
    np.testing.assert_array_equal(cached.astype(np.float16), bundle.vectors)


def test_flat_and_graph_variants_are_memory_mapped_not_copied(bundle: Bundle) -> None:
    """Several server workers share these pages instead of each holding a copy."""
    assert not bundle.index("f32-768").codes.is_owned
    assert not bundle.index("int8-768").codes.is_owned
    assert not bundle.index("bin-768").xb.is_owned
    storage = faiss.downcast_index(bundle.index("f32-256-hnsw").storage)
    assert not storage.codes.is_owned
    binary_storage = faiss.downcast_IndexBinary(bundle.index("bin-768-hnsw").storage)
    assert not binary_storage.xb.is_owned
