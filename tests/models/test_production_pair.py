"""The production pair's architectures and pairing, proven offline on structural twins.

The twins (tests/support/twins.py) have the exact module structure and
configuration of snowflake-arctic-embed-m-v1.5 (CLS pooling, Normalize, the
query instruction, a Matryoshka truncation) and mdbr-leaf-ir (mean pooling,
Dense to the teacher's width, Normalize) with random weights, so the real
export, pairing, indexing and serving code runs on them without a model hub.
The built-in cards of the real pair are checked by the pairing code directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tandem.bundle.format import open_bundle
from tandem.bundle.variants import VariantSpec
from tandem.evaluation.doc_side import default_variants as eval_default_variants
from tandem.evaluation.doc_side import untrained_truncation
from tandem.indexer.build import build_bundle, default_variants
from tandem.models.artifacts import aligned_dir
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder
from tandem.models.pairing import PairingError, check_pair, local_teacher_fingerprint
from tandem.models.sources import BUILTINS, QUERY_INSTRUCTION, ModelSource
from tandem.toolchain.cli import app
from tandem.toolchain.export import PARITY_MIN_COSINE, declared_alignment, export_artifact
from typer.testing import CliRunner

from tandem.data.corpus import read_corpus
from tests.support.server import running_server
from tests.support.twins import STUDENT_HIDDEN, TEACHER_HIDDEN, Twins, build_twins, sample_split

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
ARCTIC, LEAF = "snowflake-arctic-embed-m-v1.5", "mdbr-leaf-ir"
PAIRED, FORCED = "test-twin-leaf-paired", "test-twin-unrelated-forced"
TEXTS = ["vitamin d deficiency", "How do mRNA vaccines train the immune system?", "", "a"]
runner = CliRunner()


@pytest.fixture(scope="module")
def twins() -> Twins:
    return build_twins(SAMPLES)


@pytest.fixture(scope="module")
def measure_texts() -> Path:
    return sample_split(SAMPLES)[1]


@pytest.fixture(scope="module")
def exported(twins: Twins) -> dict[str, Path]:
    """The real export path (export_artifact -> export_onnx), cached by input hash."""
    return {
        "teacher": export_artifact(str(twins.teacher)),
        "student": export_artifact(str(twins.student)),
        "unrelated": export_artifact(str(twins.unrelated)),
    }


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


@pytest.fixture(scope="module")
def paired_student(exported: dict[str, Path], measure_texts: Path) -> Path:
    code, out = _invoke(
        "pair",
        "--student",
        str(exported["student"]),
        "--teacher",
        str(exported["teacher"]),
        "--texts",
        str(measure_texts),
        "--out",
        PAIRED,
        "--pseudo-queries",
        "200",
    )
    assert code == 0, out
    return Path(aligned_dir(PAIRED))


def _builtin_card(name: str, fingerprint_seed: str) -> ModelCard:
    """The card export_onnx writes for a built-in, from its entry (no download needed)."""
    entry = BUILTINS[name]
    source = ModelSource(
        name=entry.name,
        folder=Path("/nonexistent"),
        source=f"hub:{entry.location}",
        pooling=entry.pooling,
        max_length=entry.max_length,
        query_prefix=entry.query_prefix,
        document_prefix=entry.document_prefix,
        matryoshka_dims=entry.matryoshka_dims,
        upstream_teacher=entry.upstream_teacher,
    )
    return ModelCard(
        name=source.name,
        source=source.source,
        dim=768,
        pooling=source.pooling,
        max_length=source.max_length,
        query_prefix=source.query_prefix,
        document_prefix=source.document_prefix,
        matryoshka_dims=list(source.matryoshka_dims),
        weights_sha256=fingerprint_seed * 64,
        tokenizer_sha256="0" * 64,
        aligned_to=declared_alignment(source),
    )


# ---------------------------------------------------------------- built-in cards


def test_builtin_leaf_is_declared_aligned_to_arctic_upstream() -> None:
    leaf, arctic = _builtin_card(LEAF, "a"), _builtin_card(ARCTIC, "b")
    assert leaf.aligned_to is not None and leaf.aligned_to.method == "upstream"
    assert leaf.aligned_to.teacher_name == ARCTIC and leaf.aligned_to.teacher_fingerprint == ""
    assert arctic.aligned_to is None and arctic.matryoshka_dims == [256]
    assert arctic.pooling == "cls" and arctic.query_prefix == QUERY_INSTRUCTION
    assert arctic.document_prefix == "" and leaf.query_prefix == QUERY_INSTRUCTION


@pytest.fixture()
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine where arctic was never downloaded or exported, whatever this one holds."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))


@pytest.mark.usefixtures("empty_hub_cache")
def test_serving_leaf_over_an_arctic_bundle_is_accepted_by_name_and_fingerprint() -> None:
    leaf, arctic = _builtin_card(LEAF, "a"), _builtin_card(ARCTIC, "b")
    # the teacher resolves here: the bundle must carry its fingerprint
    check_pair(leaf, ARCTIC, arctic.fingerprint, lambda name: arctic.fingerprint)
    # a serving image without the teacher: checked by name
    check_pair(leaf, ARCTIC, arctic.fingerprint, lambda name: None)
    # the default resolver never downloads or exports: here it finds no arctic
    assert local_teacher_fingerprint(ARCTIC) is None
    check_pair(leaf, ARCTIC, arctic.fingerprint)
    other = _builtin_card(ARCTIC, "c")  # same name, other weights
    with pytest.raises(PairingError, match="resolves here to fingerprint"):
        check_pair(leaf, ARCTIC, other.fingerprint, lambda name: arctic.fingerprint)
    with pytest.raises(PairingError, match="aligned by its publisher to " + ARCTIC):
        check_pair(leaf, "all-mpnet-base-v2", "f" * 64, lambda name: None)


def test_matryoshka_dims_from_the_card_set_the_default_variants() -> None:
    assert default_variants(768, [256]) == ["f32-768", "f32-256", "int8-768", "bin-768"]
    assert default_variants(768) == ["f32-768", "int8-768", "bin-768"]
    assert "f32-256" in eval_default_variants(768, [256])
    assert "f32-384" in eval_default_variants(768)  # still available without the card
    assert not untrained_truncation(VariantSpec.parse("f32-256", 768), 768, [256])
    assert untrained_truncation(VariantSpec.parse("f32-384", 768), 768, [256])
    assert not untrained_truncation(VariantSpec.parse("bin-768", 768), 768, [])


# ---------------------------------------------------------------- twins: export


def test_twin_export_records_cls_dense_prompts_and_matryoshka(
    exported: dict[str, Path],
) -> None:
    teacher, student = ModelCard.load(exported["teacher"]), ModelCard.load(exported["student"])
    assert teacher.pooling == "cls" and teacher.dim == TEACHER_HIDDEN
    assert student.pooling == "mean" and student.dim == TEACHER_HIDDEN != STUDENT_HIDDEN  # Dense
    assert teacher.matryoshka_dims == [STUDENT_HIDDEN] and student.matryoshka_dims == []
    for card in (teacher, student):
        assert card.query_prefix == QUERY_INSTRUCTION and card.document_prefix == ""
        assert card.parity_min_cosine is not None
        assert card.parity_min_cosine >= PARITY_MIN_COSINE


def test_twin_onnx_equals_sentence_transformers_with_prompts(
    twins: Twins, exported: dict[str, Path]
) -> None:
    """An independent reference: sentence-transformers' own encode_query / encode_document."""
    from sentence_transformers import SentenceTransformer

    for name in ("teacher", "student"):
        reference = SentenceTransformer(str(getattr(twins, name)), device="cpu")
        encoder = Encoder(exported[name], device="cpu")
        for kind, expected in (
            ("query", reference.encode_query(TEXTS)),
            ("document", reference.encode_document(TEXTS)),
        ):
            got = encoder.encode(TEXTS, kind)
            assert np.sum(expected * got, axis=1).min() >= PARITY_MIN_COSINE, (name, kind)
        queries, documents = encoder.encode(TEXTS, "query"), encoder.encode(TEXTS, "document")
        assert np.sum(queries * documents, axis=1).max() < 0.9999  # the prompt changes vectors


def test_info_shows_prompts_and_matryoshka(exported: dict[str, Path]) -> None:
    code, out = _invoke("info", str(exported["teacher"]))
    assert code == 0 and "cls" in out and QUERY_INSTRUCTION.strip() in out
    assert re.search(rf"matryoshka dims\W+{STUDENT_HIDDEN}\b", out), out


def test_the_declared_teacher_is_resolved_here_without_exporting(
    exported: dict[str, Path], twins: Twins
) -> None:
    teacher = ModelCard.load(exported["teacher"])
    assert local_teacher_fingerprint(str(twins.teacher)) == teacher.fingerprint
    assert local_teacher_fingerprint("no-such-model-anywhere") is None


def test_query_prompt_reaches_the_tokenizer_for_queries_only(exported: dict[str, Path]) -> None:
    encoder = Encoder(exported["teacher"], device="cpu")
    text = "vitamin d deficiency"
    prompted = encoder.tokenizer.encode(QUERY_INSTRUCTION + text).ids
    plain = encoder.tokenizer.encode(text).ids
    assert len(prompted) > len(plain)
    assert encoder.tokenize([text], "query").input_ids[0].tolist() == prompted
    assert encoder.tokenize([text], "document").input_ids[0].tolist() == plain


# ---------------------------------------------------------------- twins: pairing


def test_pair_declares_the_student_that_shares_the_space(
    paired_student: Path, exported: dict[str, Path]
) -> None:
    card = ModelCard.load(paired_student)
    teacher = ModelCard.load(exported["teacher"])
    original = ModelCard.load(exported["student"])
    assert card.name == PAIRED and card.fingerprint == original.fingerprint  # same vectors
    aligned = card.aligned_to
    assert aligned is not None and aligned.method == "upstream"
    assert aligned.teacher_name == teacher.name
    assert aligned.teacher_fingerprint == teacher.fingerprint  # pinned by the measurement
    assert set(aligned.heldout_cosine) == {"query", "passage", "all"}
    assert aligned.heldout_cosine["all"] >= 0.5
    assert float(aligned.settings["own_text_rate"]) >= 0.9
    assert aligned.settings["forced"] is False
    check_pair(card, teacher.name, teacher.fingerprint)
    with pytest.raises(PairingError):
        check_pair(card, teacher.name, "e" * 64)
    code, out = _invoke("info", PAIRED)
    assert code == 0 and "upstream" in out and "own text beats another" in out


def test_pair_refuses_an_unrelated_student_unless_forced(
    exported: dict[str, Path], measure_texts: Path
) -> None:
    args = [
        "pair",
        "--student",
        str(exported["unrelated"]),
        "--teacher",
        str(exported["teacher"]),
        "--texts",
        str(measure_texts),
        "--out",
        FORCED,
        "--pseudo-queries",
        "200",
    ]
    link = aligned_dir(FORCED)
    if link.is_symlink():
        link.unlink()
    code, out = _invoke(*args)
    assert code == 2 and "does not share" in out and "Nothing was declared" in out
    assert not link.exists()
    code, out = _invoke(*args, "--force")
    assert code == 0, out
    aligned = ModelCard.load(link).aligned_to
    assert aligned is not None and aligned.settings["forced"] is True
    assert float(aligned.settings["own_text_rate"]) < 0.9


# ---------------------------------------------------------------- twins: index and serve


@pytest.fixture(scope="module")
def twin_bundle(
    tmp_path_factory: pytest.TempPathFactory, exported: dict[str, Path], measure_texts: Path
) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("twin-bundle")
    build_bundle(read_corpus(measure_texts), root, Encoder(exported["teacher"], device="cpu"))
    yield root


def test_bundle_holds_document_vectors_without_the_query_prompt(
    twin_bundle: Path, twins: Twins
) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(twins.teacher), device="cpu")
    with open_bundle(twin_bundle) as bundle:
        assert f"f32-{STUDENT_HIDDEN}" in bundle.variant_names()  # Matryoshka default
        texts = [d.text for d in bundle.documents(range(8))]
        stored = np.asarray(bundle.vectors[:8], dtype=np.float32)
    np.testing.assert_allclose(stored, reference.encode_document(texts), atol=2e-3)
    prompted = reference.encode_query(texts)
    assert np.abs(stored - prompted).max() > 1e-2


def test_served_search_embeds_queries_with_the_prompt(
    tmp_path: Path, twin_bundle: Path, paired_student: Path, twins: Twins
) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(twins.student), device="cpu")
    text = "how do vaccines protect against disease"
    expected = reference.encode_query([text])[0]
    unprompted = reference.encode_document([text])[0]
    args = ["--bundle", str(twin_bundle), "--student", PAIRED]
    with running_server(tmp_path, args) as server, httpx.Client(base_url=server.url) as client:
        body = client.post("/v1/embeddings", json={"input": text}, timeout=30).json()
        served = np.array(body["data"][0]["embedding"], dtype=np.float32)
        assert float(served @ expected) >= PARITY_MIN_COSINE
        assert float(served @ unprompted) < 0.9999
        tokens = Encoder(paired_student).tokenizer.encode(QUERY_INSTRUCTION + text).ids
        assert body["usage"]["prompt_tokens"] == len(tokens)
        request = {"query": text, "k": 5, "variant": f"f32-{TEACHER_HIDDEN}"}
        hits = client.post("/search", json=request, timeout=30).json()["results"]
    with open_bundle(twin_bundle) as bundle:
        vectors = np.asarray(bundle.vectors, dtype=np.float32)
        scores = vectors @ expected  # (n_docs,)
        ids = bundle.lookup([hit["id"] for hit in hits])
    np.testing.assert_allclose([hit["score"] for hit in hits], scores[ids], atol=2e-4)
    assert np.all(scores[ids] >= np.sort(scores)[-5] - 2e-4)  # the true top 5, ties aside


# ---------------------------------------------------------------- twins: evaluation


def _write_beir(folder: Path, corpus: Path) -> Path:
    """A BEIR folder over the measured half of the sample corpus, with three judged queries."""
    import json

    (folder / "qrels").mkdir(parents=True)
    docs = list(read_corpus(corpus))
    with open(folder / "corpus.jsonl", "w") as f:
        for doc in docs:
            f.write(json.dumps({"_id": doc.id, "title": "", "text": doc.text}) + "\n")
    judged = {str(i): docs[i * 7] for i in range(3)}
    with open(folder / "queries.jsonl", "w") as f:
        for qid, doc in judged.items():
            f.write(json.dumps({"_id": qid, "text": " ".join(doc.text.split()[:8])}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{qid}\t{doc.id}\t1\n" for qid, doc in judged.items())
    return folder


def test_eval_runs_the_pair_and_marks_untrained_truncations(
    tmp_path: Path, exported: dict[str, Path], paired_student: Path, measure_texts: Path
) -> None:
    import csv

    import typer
    from tandem.evaluation.cli import eval_command
    from tandem.evaluation.runner import NOT_TRAINED

    dataset = _write_beir(tmp_path / "twin-beir", measure_texts)
    out = tmp_path / "report"
    eval_app = typer.Typer()
    eval_app.command()(eval_command)
    args = ["--dataset", str(dataset), "--teacher", str(exported["teacher"])]
    args += ["--student", PAIRED, "--oversample", "2", "--latency-queries", "2"]
    args += ["--out", str(out)]
    result = runner.invoke(eval_app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    note = {(r["mode"], r["variant"]): r["note"] for r in rows if r["status"] == "ok"}
    full, trained, halved = f"f32-{TEACHER_HIDDEN}", f"f32-{STUDENT_HIDDEN}", "f32-16"
    assert note[("teacher-symmetric", trained)] == ""  # the teacher's card lists 32
    assert note[("teacher-symmetric", halved)] == NOT_TRAINED
    assert note[("asymmetric", trained)] == "" and note[("asymmetric", full)] == ""
    assert note[("student-symmetric", trained)] == NOT_TRAINED  # the student lists none
    assert "(not trained for it)" in (out / "report.md").read_text()


def test_server_startup_check_accepts_a_declared_pair_by_the_bundle_teacher_name(
    twin_bundle: Path, exported: dict[str, Path]
) -> None:
    """The serve-time check (server.state) on a card declared upstream, as the built-ins are."""
    from tandem.models.card import Alignment
    from tandem.server.state import StartupCheckError, check_student

    card = ModelCard.load(exported["student"])
    declared = Alignment(
        teacher_name="twin-arctic", teacher_fingerprint="", method="upstream", n_texts=0
    )
    with open_bundle(twin_bundle) as bundle:
        with pytest.raises(StartupCheckError, match="not aligned"):
            check_student(card, bundle, allow_unaligned=False)
        assert (
            check_student(card.model_copy(update={"aligned_to": declared}), bundle, False)
            == "aligned"
        )
        other = declared.model_copy(update={"teacher_name": "another-teacher"})
        with pytest.raises(StartupCheckError, match="aligned by its publisher to another-teacher"):
            check_student(card.model_copy(update={"aligned_to": other}), bundle, False)
