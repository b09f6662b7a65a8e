"""add / delete / add-variant publish new versions; ids stay stable; only new docs are embedded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tandem.bundle.format import (
    Bundle,
    BundleError,
    current_version_dir,
    list_versions,
    open_bundle,
    root_lock,
    verify_bundle,
)
from tandem.bundle.variants import search_variant
from tandem.indexer.build import BuildError
from tandem.indexer.update import add_documents, add_variants, delete_documents
from tandem.models.embedding_cache import EmbeddingCache
from tandem.models.encoder import Encoder

from tandem.data.corpus import Doc
from tests.support.index import NEW_DOCS, HashEncoder, assert_exact_topk, exact_neighbors

EXACT = ["f32-768", "f32-256", "f32-64", "bin-768", "bin-256", "f32-768-hnsw", "bin-768-hnsw"]


def new_docs() -> list[Doc]:
    return [Doc(i, f"{title} {text}", {"topic": "new"}) for i, title, text in NEW_DOCS]


def assert_variants_exact(bundle: Bundle, names: list[str]) -> None:
    queries = np.asarray(bundle.vectors[::7], dtype=np.float32)
    stored = np.asarray(bundle.vectors)
    for name in names:
        spec = bundle.spec(name)
        index = bundle.index(name)
        assert index.ntotal == bundle.n_docs, name
        scores, ids = search_variant(spec, index, queries, k=10, ef_search=64)
        assert_exact_topk(exact_neighbors(stored, queries, spec), ids, scores, tol=1e-4)


def test_add_embeds_only_new_docs_and_keeps_old_ids(
    root_copy: Path, teacher: Encoder, tmp_path: Path
) -> None:
    old = open_bundle(root_copy)
    cache = EmbeddingCache.for_encoder(teacher, root=tmp_path / "fresh-cache")
    path = add_documents(root_copy, new_docs(), teacher, cache=cache)
    assert len(cache) == len(NEW_DOCS)  # the teacher saw the new texts and nothing else
    assert path == root_copy / "versions" / "v0002" == current_version_dir(root_copy)
    verify_bundle(path)
    with open_bundle(root_copy) as new:
        assert new.n_docs == 43 and new.manifest.build["operation"] == "add"
        assert new.manifest.build["parent"] == "v0001" and new.manifest.build["n_added"] == 3
        assert new.external_ids() == old.external_ids() + [d[0] for d in NEW_DOCS]
        np.testing.assert_array_equal(new.vectors[:40], old.vectors)
        texts = [d.text for d in new.documents([40, 41, 42])]
        fresh = teacher.encode(texts, "document")
        cos = (fresh * new.vectors[40:].astype(np.float32)).sum(1)
        assert (cos > 0.999).all()
        assert new.filter_ids({"topic": "new"}).tolist() == [40, 41, 42]
        assert_variants_exact(new, EXACT)
        for name in ("int8-768", "ivfpq-768", "int8-256-hnsw"):
            _, ids = search_variant(new.spec(name), new.index(name), fresh, k=1)
            assert ids[:, 0].tolist() == [40, 41, 42], name
    # the old version is untouched and still serves
    verify_bundle(old.path)
    assert old.n_docs == 40 and old.index("f32-768").ntotal == 40
    assert old.documents([0])[0].id == "space-0"
    old.close()


def test_add_refuses_existing_ids_unless_deduped_and_other_teachers(
    root_copy: Path, teacher: Encoder
) -> None:
    again = [Doc("space-0", "a different text for an existing id", {})]
    with pytest.raises(BuildError, match="'space-0'.*already in bundle v0001.*--dedupe"):
        add_documents(root_copy, again, teacher, use_cache=False)
    assert add_documents(root_copy, again, teacher, dedupe=True) == current_version_dir(root_copy)
    assert current_version_dir(root_copy).name == "v0001"  # nothing new: no new version
    with pytest.raises(BuildError, match="same teacher"):
        add_documents(root_copy, new_docs(), HashEncoder(768), use_cache=False)  # type: ignore[arg-type]


def test_delete_compacts_and_keeps_external_ids(root_copy: Path) -> None:
    with open_bundle(root_copy) as old:
        old_ids = old.external_ids()
        old_vectors = np.asarray(old.vectors).copy()
        old_docs = {d.id: d for d in old.documents(range(old.n_docs))}
    gone = ["music-2", "space-0", "tech-4"]
    with pytest.raises(BuildError, match="1 id\\(s\\) are not in bundle v0001: 'nope'"):
        delete_documents(root_copy, [*gone, "nope"])
    path = delete_documents(root_copy, [*gone, "nope"], missing_ok=True)
    verify_bundle(path)
    with open_bundle(root_copy) as new:
        assert new.n_docs == 37 and new.version == "v0002"
        assert new.lookup(gone).tolist() == [-1, -1, -1]
        kept = [e for e in old_ids if e not in gone]
        assert new.external_ids() == kept
        rows = [old_ids.index(e) for e in kept]
        np.testing.assert_array_equal(new.vectors, old_vectors[rows])
        assert [d for d in new.documents(range(37))] == [old_docs[e] for e in kept]
        assert new.manifest.build["n_deleted"] == 3
        assert_variants_exact(new, EXACT)
    with pytest.raises(BuildError, match="empty bundle"):
        delete_documents(root_copy, kept)


def test_add_variant_hardlinks_unchanged_files(root_copy: Path) -> None:
    parent = current_version_dir(root_copy)
    path = add_variants(root_copy, ["f32-128", "bin-128-hnsw"])
    verify_bundle(path)
    for rel in (
        "vectors.f16.npy",
        "docs.sqlite",
        "variants/f32-768.faiss",
        "variants/bin-768.faiss",
    ):
        assert (path / rel).stat().st_ino == (parent / rel).stat().st_ino, rel
    with open_bundle(path) as bundle:
        assert {"f32-128", "bin-128-hnsw"} <= set(bundle.variant_names())
        assert bundle.manifest.build["added_variants"] == ["f32-128", "bin-128-hnsw"]
        assert bundle.manifest.build["history"][0]["operation"] == "build"
        assert_variants_exact(bundle, ["f32-128", "bin-128-hnsw", "f32-768"])
    with pytest.raises(BuildError, match="already in bundle v0002"):
        add_variants(root_copy, ["f32-128"])


def test_updates_chain_and_keep_every_version(root_copy: Path, teacher: Encoder) -> None:
    add_documents(root_copy, new_docs(), teacher)
    delete_documents(root_copy, ["new-2", "cooking-1"])
    final = add_variants(root_copy, ["int8-64"])
    assert sorted(p.name for p in (root_copy / "versions").iterdir()) == [
        "v0001",
        "v0002",
        "v0003",
        "v0004",
    ]
    with open_bundle(final, verify=True) as bundle:
        assert bundle.n_docs == 41
        assert bundle.lookup(["new-1", "new-3", "new-2", "cooking-1"]).tolist()[2:] == [-1, -1]
        ops = [h["operation"] for h in bundle.manifest.build["history"]]
        assert ops == ["build", "add", "delete"]
        assert_variants_exact(bundle, ["f32-768", "bin-768-hnsw"])


def test_one_writer_per_root_and_leftovers_of_a_killed_writer_are_removed(root_copy: Path) -> None:
    with root_lock(root_copy), pytest.raises(BundleError, match="another build or update"):
        add_variants(root_copy, ["f32-32"])
    leftover = root_copy / "versions" / ".stage-killed"
    (leftover / "variants").mkdir(parents=True)
    (leftover / "variants" / "half.faiss").write_bytes(b"partial")
    assert list_versions(root_copy) == ["v0001"]  # readers never see a staging folder
    add_variants(root_copy, ["f32-32"])
    assert not leftover.exists()
    assert list_versions(root_copy) == ["v0001", "v0002"]
