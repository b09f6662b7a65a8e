"""Milvus as the index tier: push, alias switch-over, FAISS-equal search, serving, faults.

Engine: the embedded milvus-lite 2.5 (a ``.db`` file, or its binary serving
that file on 127.0.0.1 when a test needs to lose and regain the server).
milvus-lite has no aliases, so the pointer-collection fallback is what runs
here; with ``TANDEM_TEST_MILVUS_URI`` set, the push/search tests also run
against that server (where the alias path runs).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pymilvus import DataType, MilvusClient
from tandem.bundle.backend import BackendUnavailable, FaissBackend
from tandem.bundle.format import Bundle, open_bundle
from tandem.bundle.milvus import MilvusBackend, MilvusSetupError, versions_of
from tandem.bundle.search import SearchPlan
from tandem.indexer.build import build_bundle
from tandem.indexer.push import push_bundle
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder
from tandem.server.state import StartupCheckError, load_milvus

from tests.support.index import HashEncoder
from tests.support.milvus import external_uri, free_port, lite_server
from tests.support.server import (
    API_KEY,
    QUERIES,
    running_server,
    sample_docs,
    serve_command,
)

pytestmark = pytest.mark.slow

PUSHED = ["f32-768", "f32-256", "bin-768"]  # the flat kinds Milvus holds; int8/hnsw stay FAISS


@pytest.fixture(scope="module", params=["lite"] + (["external"] if external_uri() else []))
def milvus_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The embedded engine always; a Milvus server too where TANDEM_TEST_MILVUS_URI names one."""
    if request.param == "external":
        return str(external_uri())
    return str(tmp_path_factory.mktemp("milvus") / "lite.db")


@pytest.fixture(scope="module")
def pushed(milvus_uri: str, bundle_root: Path) -> Iterator[MilvusBackend]:
    name = f"t{int(time.time() * 1000) % 10**8}"
    result = push_bundle(bundle_root, milvus_uri, name, keep=2)
    assert sorted(result.variants) == sorted(PUSHED)
    backend = MilvusBackend(milvus_uri, name)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def faiss_backend(bundle_root: Path) -> Iterator[FaissBackend]:
    bundle = open_bundle(bundle_root)
    specs = {name: bundle.spec(name) for name in PUSHED}
    yield FaissBackend(bundle, specs, {name: bundle.index(name) for name in PUSHED})
    bundle.close()


def test_push_creates_versions_and_switches_the_name_atomically(
    bundle_root: Path, tmp_path: Path, query_encoder: Encoder
) -> None:
    db = str(tmp_path / "lite.db")
    first = push_bundle(bundle_root, db, "docs", keep=1)
    assert (first.collection, first.dropped) == ("docs_v0001", [])
    assert first.switched_by == "pointer"  # milvus-lite 2.5 answers UNIMPLEMENTED to aliases
    backend = MilvusBackend(db, "docs")
    assert (backend.collection, backend.resolved_by) == ("docs_v0001", "pointer")
    backend.close()

    second = push_bundle(bundle_root, db, "docs", keep=1)
    assert (second.collection, second.dropped) == ("docs_v0002", ["docs_v0001"])
    backend = MilvusBackend(db, "docs")
    try:
        assert backend.collection == "docs_v0002"
        with open_bundle(bundle_root) as bundle:
            assert backend.manifest.teacher_fingerprint == bundle.manifest.teacher_fingerprint
            assert backend.n_docs == bundle.n_docs and backend.dim == bundle.dim
        client = MilvusClient(db)
        assert versions_of(client, "docs") == ["docs_v0002"]
        client.close()
    finally:
        backend.close()


def test_push_refuses_what_milvus_cannot_hold(bundle_root: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "lite.db")
    with pytest.raises(MilvusSetupError, match="int8-768 has no Milvus field"):
        push_bundle(bundle_root, db, "docs", variants=["f32-768", "int8-768"])
    with pytest.raises(MilvusSetupError, match="not ending in _vNNNN"):
        push_bundle(bundle_root, db, "docs_v0003")
    with pytest.raises(BackendUnavailable, match="cannot reach Milvus"):
        push_bundle(bundle_root, f"http://127.0.0.1:{free_port()}", "docs")


@pytest.mark.parametrize("rescore", [False, True])
@pytest.mark.parametrize("variant", PUSHED)
def test_milvus_ranks_like_faiss(
    pushed: MilvusBackend,
    faiss_backend: FaissBackend,
    query_encoder: Encoder,
    variant: str,
    rescore: bool,
) -> None:
    queries = query_encoder.encode(QUERIES, "query")
    plan = SearchPlan(variant=variant, k=10, rescore=rescore)
    got = pushed.search(queries, plan)
    want = faiss_backend.search(queries, plan)
    for got_ids, want_ids, got_scores, want_scores in zip(
        got.ids, want.ids, got.scores, want.scores, strict=True
    ):
        if variant.startswith("bin") and not rescore:
            # Hamming ties are cut in engine order: the scores per rank are what must agree.
            np.testing.assert_allclose(got_scores, want_scores, atol=1e-6)
        else:
            assert got_ids.tolist() == want_ids.tolist()
            np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    assert got.remote_s > 0 and any(s.startswith("first_pass:milvus") for s in got.stages)


@pytest.mark.parametrize("variant", PUSHED)
def test_filters_become_milvus_expressions_with_the_same_hits(
    pushed: MilvusBackend, faiss_backend: FaissBackend, query_encoder: Encoder, variant: str
) -> None:
    queries = query_encoder.encode(QUERIES, "query")
    for flt in ({"topic": "health"}, {"topic": "space", "year": 1969}, {"topic": "none"}):
        plan = SearchPlan(variant=variant, k=5, rescore=True, filter=flt)
        got, want = pushed.search(queries, plan), faiss_backend.search(queries, plan)
        assert [r.tolist() for r in got.ids] == [r.tolist() for r in want.ids], flt
    assert pushed.filter_ids({"topic": "health"}).tolist() == (
        faiss_backend.bundle.filter_ids({"topic": "health"}).tolist()
    )


def test_documents_and_vectors_come_back_as_stored(
    pushed: MilvusBackend, faiss_backend: FaissBackend
) -> None:
    bundle: Bundle = faiss_backend.bundle
    ids = np.array([5, 0, 17, 5], dtype=np.int64)
    assert pushed.documents(ids.tolist()) == bundle.documents(ids.tolist())
    np.testing.assert_array_equal(pushed.vectors(ids), faiss_backend.vectors(ids))


def test_add_and_delete_change_the_served_collection(
    bundle_root: Path, tmp_path: Path, teacher: Encoder
) -> None:
    db = str(tmp_path / "lite.db")
    push_bundle(bundle_root, db, "docs")
    backend = MilvusBackend(db, "docs")
    try:
        from tandem.bundle.docstore import Document

        doc = Document("new-1", "Octopuses have three hearts and blue blood.", {"topic": "nature"})
        vector = teacher.encode([doc.text], "document")
        (pk,) = backend.add([doc], vector).tolist()
        query = teacher.encode(["how many hearts does an octopus have"], "query")
        hit = backend.search(query, SearchPlan(variant="bin-768", k=1, rescore=True))
        assert hit.ids[0].tolist() == [pk]
        assert backend.documents([pk])[0] == doc
        with pytest.raises(Exception, match="already in"):
            backend.add([doc], vector)
        assert backend.delete(["new-1"]) == 1
        hit = backend.search(query, SearchPlan(variant="f32-768", k=1, rescore=True))
        assert hit.ids[0].tolist() != [pk]
    finally:
        backend.close()


def test_collections_that_do_not_fit_the_student_are_refused(
    bundle_root: Path, tmp_path: Path, student_dir: Path, query_encoder_dir: Path
) -> None:
    db = str(tmp_path / "lite.db")
    push_bundle(bundle_root, db, "docs")
    raw_student = ModelCard.load(student_dir)  # 384 dims, not aligned to the 768-d teacher
    with pytest.raises(StartupCheckError, match="384 dims"):
        load_milvus(db, "docs", None, raw_student, [], allow_unaligned=False)
    # 768 dims, but the collection's vectors come from another teacher: refused on the
    # fingerprint, as a bundle would be.
    build_bundle(sample_docs(12), tmp_path / "other", HashEncoder(768), ["f32-768"])  # type: ignore[arg-type]
    push_bundle(tmp_path / "other", db, "other_teacher")
    aligned = ModelCard.load(query_encoder_dir)  # aligned to all-mpnet-base-v2
    with pytest.raises(StartupCheckError, match="synthetic-hash"):
        load_milvus(db, "other_teacher", None, aligned, [], allow_unaligned=False)
    with pytest.raises(StartupCheckError, match="no collection or alias 'other'"):
        load_milvus(db, "other", None, raw_student, [], allow_unaligned=False)
    client = MilvusClient(db)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    client.create_collection("foreign", schema=schema)
    client.close()
    with pytest.raises(StartupCheckError, match="not pushed by this tandem"):
        load_milvus(db, "foreign", None, raw_student, [], allow_unaligned=False)


def test_serve_refuses_to_start_when_milvus_is_unreachable(
    tmp_path: Path, query_encoder_dir: Path
) -> None:
    import subprocess

    uri = f"http://127.0.0.1:{free_port()}"
    args = ["--backend", "milvus", "--milvus-uri", uri, "--collection", "docs"]
    done = subprocess.run(
        serve_command(*args, "--student", str(query_encoder_dir)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert f"cannot reach Milvus at {uri}" in done.stdout + done.stderr


def test_serving_from_milvus_matches_faiss_and_survives_losing_milvus(
    bundle_root: Path,
    tmp_path: Path,
    query_encoder_dir: Path,
    query_encoder: Encoder,
    faiss_backend: FaissBackend,
) -> None:
    with lite_server(tmp_path / "served.db") as milvus:
        push_bundle(bundle_root, milvus.uri, "docs")
        args = [
            "--backend", "milvus", "--milvus-uri", milvus.uri, "--collection", "docs",
            "--student", str(query_encoder_dir), "--retry-after-s", "2",
        ]  # fmt: skip
        with (
            running_server(tmp_path, args, {"TANDEM_API_KEY": API_KEY}) as server,
            httpx.Client(
                base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {API_KEY}"}
            ) as client,
        ):
            queries = query_encoder.encode(QUERIES, "query")
            for variant in PUSHED:
                want = faiss_backend.search(queries, SearchPlan(variant, 10, rescore=True))
                bundle = faiss_backend.bundle
                for query, want_ids in zip(QUERIES, want.ids, strict=True):
                    body = {"query": query, "k": 10, "variant": variant, "rescore": True}
                    answer = client.post("/search", json=body)
                    assert answer.status_code == 200, answer.text
                    data = answer.json()
                    expected = [d.id for d in bundle.documents(want_ids.tolist())]
                    assert [h["id"] for h in data["results"]] == expected
                    assert data["timings_ms"]["index"] > 0
            metrics = client.get("/metrics").text
            assert 'tandem_index_remote_duration_seconds_count{backend="milvus"' in metrics

            milvus.kill()  # Milvus is lost mid-run
            lost = client.post("/search", json={"query": QUERIES[0], "k": 3})
            assert lost.status_code == 503, lost.text
            assert lost.headers["Retry-After"] == "2"
            assert lost.json()["type"] == "index_unavailable"
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200

            milvus.start()  # ... and comes back: the server recovers by itself
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, server.logs()
                time.sleep(0.5)
            again = client.post("/search", json={"query": QUERIES[0], "k": 3})
            assert again.status_code == 200, again.text

            # A new push moves the name; serving pods follow it without a restart
            # (at the next readiness probe, or now through /admin/reload).
            assert push_bundle(bundle_root, milvus.uri, "docs").collection == "docs_v0002"
            admin = {"Authorization": f"Bearer {API_KEY}"}
            reload = client.post("/admin/reload?wait=true", headers=admin)
            assert reload.status_code == 200, reload.text
            assert reload.json()["status"] == "swapped"
            assert reload.json()["version"].endswith("@docs_v0002")
            assert client.get("/readyz").json()["version"].endswith("@docs_v0002")
            moved = client.post("/search", json={"query": QUERIES[0], "k": 3})
            assert [h["id"] for h in moved.json()["results"]] == [
                h["id"] for h in again.json()["results"]
            ]


def test_index_push_cli(bundle_root: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    def push(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", "from tandem.cli import app; app()", "index", "push"]
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)

    db = str(tmp_path / "lite.db")
    done = push(str(bundle_root), "--milvus", db, "--collection", "docs", "--keep", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pushed 40 docs to docs_v0001" in done.stdout and "(pointer)" in done.stdout
    done = push(str(bundle_root), "--milvus", db, "--collection", "docs", "--keep", "1")
    assert "docs_v0002" in done.stdout and "dropped docs_v0001" in done.stdout
    unreachable = f"http://127.0.0.1:{free_port()}"
    done = push(str(bundle_root), "--milvus", unreachable)
    assert done.returncode == 1
    assert f"cannot reach Milvus at {unreachable}" in done.stderr
