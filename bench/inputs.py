"""What every section measures on: query texts, the corpus, the bundles and the models.

A full run uses the SciFact bundle and its test queries; ``--quick`` builds a
bundle of the 160 sample documents (their teacher vectors come from the
embedding cache the tests and ``tandem demo`` fill) so it needs nothing but
the offline models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tandem.bundle.format import Bundle, open_bundle
from tandem.indexer.build import build_bundle
from tandem.models.artifacts import find_artifact, resolve_artifact
from tandem.models.encoder import Encoder
from tandem.models.sources import resolve_source
from tandem.toolchain.export import export_artifact

from tandem.data.corpus import Doc, read_corpus
from tandem.data.fetch import data_dir, is_beir_folder

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
TEACHER = "all-mpnet-base-v2"
BASE_STUDENT = "all-MiniLM-L6-v2"
QUICK_STUDENTS = ("test-sample-student", "demo-student")
SAMPLE_PSEUDO_QUERIES = 800  # as tests/conftest.py and `tandem demo`: the alignment is shared


def scifact_dir() -> Path:
    """SciFact where `tandem data fetch scifact` puts it, else ../shared/data by the checkout."""
    fetched = data_dir() / "scifact"
    return fetched if is_beir_folder(fetched) else REPO.parent / "shared" / "data" / "scifact"


@dataclass(frozen=True)
class Models:
    """Artifact folders of the encoders and the sentence-transformers folder of the base student."""

    teacher: Path
    student: Path  # aligned to the teacher: what `tandem serve` queries with
    base_student: Path  # the unaligned 384-d student (ONNX), for the symmetric peers
    base_student_st: Path  # its sentence-transformers folder: the naive and infinity peers load it


def read_queries(path: Path) -> list[str]:
    """Query texts of a JSONL file, or of a BEIR folder's test split when it has one."""
    path = Path(path)
    if path.is_dir():
        test = path / "qrels" / "test.tsv"
        wanted: set[str] | None = None
        if test.exists():
            lines = test.read_text().splitlines()[1:]
            wanted = {line.split("\t")[0] for line in lines if line.strip()}
        rows = [json.loads(line) for line in (path / "queries.jsonl").open()]
        return [r["text"] for r in rows if wanted is None or str(r["_id"]) in wanted]
    rows = [json.loads(line) for line in path.open()]
    return [r.get("text") or r["query"] for r in rows]


def resolve_models(student: str | None, quick: bool) -> Models:
    """The models of a run; ``--quick`` without ``--student`` uses (or makes) the test student."""
    teacher = export_artifact(TEACHER)
    base = export_artifact(BASE_STUDENT)
    if student is not None:
        aligned = resolve_artifact(student)
    else:
        found = [p for p in map(find_artifact, QUICK_STUDENTS if quick else ()) if p]
        if found:
            aligned = found[0]
        else:
            from tandem.toolchain.alignment_job import gather_texts, run_alignment

            texts = gather_texts(SAMPLES / "corpus.jsonl", SAMPLE_PSEUDO_QUERIES)
            aligned = run_alignment(base, teacher, texts, "adapter", QUICK_STUDENTS[0])
    return Models(teacher, aligned, base, resolve_source(BASE_STUDENT).folder)


def bundle_docs(bundle: Bundle) -> list[Doc]:
    """A bundle's documents in internal-id order, as the indexer takes them."""
    return [Doc(d.id, d.text, d.metadata) for d in bundle.documents(range(bundle.n_docs))]


def sample_bundle(teacher: Encoder, root: Path, variants: list[str]) -> Path:
    """The 160 sample documents indexed by the teacher (vectors from the embedding cache)."""
    build_bundle(read_corpus(SAMPLES / "corpus.jsonl"), root, teacher, variants)
    return root


def symmetric_bundle(docs: list[Doc], base_student: Encoder, root: Path) -> Path:
    """The same documents embedded by the unaligned 384-d student: what a naive setup searches.

    The ONNX export matches sentence-transformers to cosine >= 0.9999, so the
    naive server and tandem search the same vectors.
    """
    build_bundle(docs, root, base_student, [f"f32-{base_student.dim}"])
    return root


def export_for_naive(bundle_root: Path, folder: Path) -> tuple[Path, Path]:
    """The documents (JSONL) and float32 vectors (.npy) of a bundle, for the naive server."""
    folder.mkdir(parents=True, exist_ok=True)
    docs_path, vectors_path = folder / "docs.jsonl", folder / "vectors.npy"
    with open_bundle(bundle_root) as bundle:
        with docs_path.open("w") as out:
            for doc in bundle.documents(range(bundle.n_docs)):
                out.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
        np.save(vectors_path, np.asarray(bundle.vectors, dtype=np.float32))
    return docs_path, vectors_path


@dataclass
class Workspace:
    """One run's inputs, built once and shared by the sections that need them."""

    quick: bool
    models: Models
    bundle: Path  # teacher-indexed bundle the aligned student is served against
    queries: list[str]
    work: Path  # scratch folder of this run (bundles, logs, exports)
    _symmetric: Path | None = None

    def symmetric(self) -> Path:
        """The same documents as ``bundle``, embedded by the unaligned student (built once)."""
        if self._symmetric is None:
            with open_bundle(self.bundle) as bundle:
                docs = bundle_docs(bundle)
            base = Encoder(self.models.base_student, device="cpu")
            self._symmetric = symmetric_bundle(docs, base, self.work / "symmetric-bundle")
        return self._symmetric
