"""`"mode": "fused"` end to end on a real server: ranking, /info, metrics, hot swap, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tandem.bundle.format import STUDENT_VIEW, open_bundle
from tandem.indexer.build import build_bundle
from tandem.indexer.update import add_documents
from tandem.indexer.views import StudentSide, student_side
from tandem.models.encoder import Encoder

from tandem.data.corpus import Doc
from tests.support.server import API_KEY, QUERIES, ServerProcess, running_server, sample_docs

VARIANTS = ["f32-768", "bin-768"]
STUDENT_VARIANTS = ["f32-384", "bin-384"]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def side(aligned_student_dir: Path) -> StudentSide:
    return student_side("test-sample-student", aligned_student_dir)


@pytest.fixture(scope="module")
def fused_root(
    tmp_path_factory: pytest.TempPathFactory, teacher: Encoder, side: StudentSide
) -> Path:
    root = tmp_path_factory.mktemp("fused") / "bundle"
    build_bundle(sample_docs(30), root, teacher, VARIANTS, student=side,
                 student_variants=STUDENT_VARIANTS)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def fused_server(
    tmp_path_factory: pytest.TempPathFactory, fused_root: Path, aligned_student_dir: Path
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fused-server")
    args = ["--bundle", str(fused_root), "--student", str(aligned_student_dir),
            "--mode", "fused"]  # fmt: skip
    with running_server(tmp, args, {"TANDEM_API_KEY": API_KEY}) as proc:
        yield proc


def _reference(root: Path, query: str, aligned: Encoder, k: int) -> tuple[list[str], np.ndarray]:
    """Brute-force ``w·asym + (1−w)·student`` over every document, in numpy."""
    with open_bundle(root) as bundle:
        view = bundle.view(STUDENT_VIEW)
        assert view is not None and view.info.fused_weight is not None
        w = view.info.fused_weight
        teacher_docs = np.asarray(bundle.vectors, dtype=np.float32)
        student_docs = np.asarray(view.vectors, dtype=np.float32)
        ids = bundle.external_ids()
    batch = aligned.tokenize([query], "query")
    asym_q, native_q = aligned.forward_both(batch)
    scores = w * (asym_q @ teacher_docs.T)[0] + (1 - w) * (native_q @ student_docs.T)[0]
    order = np.lexsort((np.arange(len(ids)), -scores))[:k]
    return [ids[i] for i in order], scores[order]


def test_fused_search_ranks_as_the_brute_force_reference(
    fused_server: ServerProcess, fused_root: Path, query_encoder: Encoder
) -> None:
    with httpx.Client(base_url=fused_server.url, headers=HEADERS, timeout=30) as client:
        for query in QUERIES:
            # oversample 10 x k 5 = 50 candidates per view: the whole 30-document corpus.
            for variant in VARIANTS:
                body = {"query": query, "k": 5, "variant": variant, "oversample": 10}
                got = client.post("/search", json=body)
                assert got.status_code == 200, got.text
                data = got.json()
                assert data["mode"] == "fused"  # the server's default
                want_ids, want_scores = _reference(fused_root, query, query_encoder, 5)
                assert [h["id"] for h in data["results"]] == want_ids
                np.testing.assert_allclose(
                    [h["score"] for h in data["results"]], want_scores, atol=2e-3
                )
                assert data["stages"][-1].startswith("rescore:fused w=")
            plain = client.post("/search", json={"query": query, "k": 5, "mode": "asymmetric"})
            assert plain.status_code == 200 and plain.json()["mode"] == "asymmetric"
            assert "weight" not in plain.json()

        info = client.get("/info").json()["search"]
        assert info["default_mode"] == "fused" and "fused" in info["modes"]
        view = info["views"][0]
        assert view["name"] == STUDENT_VIEW and view["dim"] == 384
        assert {v["name"] for v in view["variants"]} == {"student-f32-384", "student-bin-384"}
        assert info["fused_weight"] == view["fused_weight"]
        metrics = client.get("/metrics").text
        assert 'tandem_search_mode_duration_seconds_count{mode="fused"}' in metrics
        assert 'tandem_search_mode_duration_seconds_count{mode="asymmetric"}' in metrics


def test_fused_survives_a_hot_swap_with_new_documents(
    fused_server: ServerProcess,
    fused_root: Path,
    teacher: Encoder,
    side: StudentSide,
    query_encoder: Encoder,
) -> None:
    new = [Doc("swap-1", "Penicillin was discovered when mould killed bacteria on a plate.")]
    add_documents(fused_root, new, teacher, student=side)
    with httpx.Client(base_url=fused_server.url, headers=HEADERS, timeout=60) as client:
        swapped = client.post("/admin/reload", params={"wait": "true"})
        assert swapped.status_code == 200 and swapped.json()["status"] == "swapped", swapped.text
        query = "who noticed that mould could kill germs"
        got = client.post("/search", json={"query": query, "k": 3, "oversample": 20}).json()
        want_ids, _ = _reference(fused_root, query, query_encoder, 3)
        assert [h["id"] for h in got["results"]] == want_ids
        assert "swap-1" in want_ids


def test_fused_on_a_bundle_without_a_student_view_names_the_command(
    client: httpx.Client, bundle_root: Path
) -> None:
    got = client.post("/search", json={"query": "vaccines", "mode": "fused"})
    assert got.status_code == 422
    body = got.json()
    assert body["type"] == "mode_unavailable"
    assert "tandem index add-view" in body["error"] and str(bundle_root) in body["error"]
    assert "no student view" in body["error"]
    bad = client.post("/search", json={"query": "vaccines", "mode": "hybrid"})
    assert bad.status_code == 422  # not a mode
    assert client.post("/search", json={"query": "vaccines"}).status_code == 200  # still serving
