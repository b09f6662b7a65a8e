"""Make a student speak the teacher's space: a linear adapter, folded into ONNX.

The fast path fits a linear map student-dim -> teacher-dim by ridge regression
on paired embeddings of the same texts (lambda chosen on a validation split,
quality reported on a held-out split) and appends it to the student's ONNX
graph (MatMul, Add, L2 normalize), so the served student emits teacher-space
vectors directly and nothing downstream knows an adapter exists.
The quality path, LEAF distillation, lives in ``tandem.toolchain.distill`` and starts
from this adapter.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper
from tandem.bundle.fusion_weight import WeightChoice, label_free_weight
from tandem.models.card import Alignment, ModelCard, NativeOutput
from tandem.models.embedding_cache import EmbeddingCache, encode_cached
from tandem.models.encoder import NATIVE_OUTPUT, OUTPUT_NAME, Encoder, TextKind
from tandem.models.similarity import mean_cosine

from tandem.errors import ModelError
from tandem.home import sha256_file, stable_hash

logger = logging.getLogger(__name__)

LAMBDAS = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


class AlignmentError(ModelError):
    """Alignment cannot run on these inputs."""


@dataclass
class AlignTexts:
    """Training texts, split by kind: queries are what the student will embed in production."""

    queries: list[str]
    passages: list[str]
    passage_vectors: npt.NDArray[np.float32] | None = None  # teacher vectors, e.g. from a bundle
    source: str = ""

    def key(self) -> str:
        return stable_hash(self.queries, self.passages)


def pseudo_queries(passages: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """Short query-like texts cut from passages: whole sentences and word spans.

    Students embed queries in production; LEAF and our own runs found
    query-like texts in volume matter more than passages for alignment.
    """
    rng = random.Random(seed)
    sentences = [
        s.strip() for p in passages for s in _SENTENCE_END.split(p) if 3 <= len(s.split()) <= 40
    ]
    rng.shuffle(sentences)
    out = sentences[: n // 2]
    words = [p.split() for p in passages if len(p.split()) >= 8]
    while len(out) < n and words:
        w = rng.choice(words)
        span = rng.randint(3, min(12, len(w)))
        start = rng.randint(0, len(w) - span)
        out.append(" ".join(w[start : start + span]))
    return out[:n]


@dataclass
class Adapter:
    """y = normalize(x @ weight + bias), fitted by ridge regression."""

    weight: npt.NDArray[np.float32]  # (student_dim, teacher_dim)
    bias: npt.NDArray[np.float32]  # (teacher_dim,)
    lam: float
    val_cosine: dict[float, float] = field(default_factory=dict)

    def apply(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        y: npt.NDArray[np.float32] = x @ self.weight + self.bias  # (n, teacher_dim)
        norms = np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        aligned: npt.NDArray[np.float32] = (y / norms).astype(np.float32)
        return aligned


def fit_ridge(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], lam: float) -> Adapter:
    """Closed-form ridge with an unpenalized bias (centered data)."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = (x - x_mean).astype(np.float64), (y - y_mean).astype(np.float64)
    gram = xc.T @ xc + lam * np.eye(x.shape[1])
    weight = np.linalg.solve(gram, xc.T @ yc)
    bias = y_mean - x_mean @ weight
    return Adapter(weight.astype(np.float32), bias.astype(np.float32), lam)


@dataclass
class Split:
    """Train / validation / held-out row indices, stratified by kind."""

    train: npt.NDArray[np.int64]
    val: npt.NDArray[np.int64]
    heldout: npt.NDArray[np.int64]


def split_rows(
    kinds: Sequence[TextKind], heldout: float = 0.1, val: float = 0.1, seed: int = 0
) -> Split:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "heldout": []}
    for kind in ("query", "document"):
        rows = np.array([i for i, k in enumerate(kinds) if k == kind], dtype=np.int64)
        rng.shuffle(rows)
        n_held, n_val = int(len(rows) * heldout), int(len(rows) * val)
        parts["heldout"] += rows[:n_held].tolist()
        parts["val"] += rows[n_held : n_held + n_val].tolist()
        parts["train"] += rows[n_held + n_val :].tolist()
    return Split(*(np.array(sorted(parts[p]), dtype=np.int64) for p in ("train", "val", "heldout")))


def fit_adapter(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    split: Split,
    lambdas: Sequence[float] = LAMBDAS,
) -> Adapter:
    """Pick lambda on the validation rows, then refit on train + validation."""
    if len(split.train) < 10 or len(split.val) < 2:
        raise AlignmentError(
            f"too few texts to fit an adapter ({len(x)}); give at least a few hundred"
        )
    scores = {}
    for lam in lambdas:
        adapter = fit_ridge(x[split.train], y[split.train], lam)
        scores[lam] = mean_cosine(adapter.apply(x[split.val]), y[split.val])
    best = max(scores, key=lambda lam: scores[lam])
    fit_rows = np.concatenate([split.train, split.val])
    adapter = fit_ridge(x[fit_rows], y[fit_rows], best)
    adapter.val_cosine = scores
    logger.info("ridge lambda %.3g chosen (validation cosine %.4f)", best, scores[best])
    return adapter


def fold_adapter(student_onnx: Path, adapter: Adapter, out_path: Path) -> None:
    """Append MatMul + Add + L2 normalization to the student's graph; two outputs.

    ``embedding`` is the teacher-space vector (the name every runtime reads);
    ``native_embedding`` is the student's own pooled vector, computed on the
    way, so one forward pass serves both sides of fused scoring.
    """
    model = onnx.load(str(student_onnx))
    graph = model.graph
    raw = NATIVE_OUTPUT
    for node in graph.node:
        node.output[:] = [raw if o == OUTPUT_NAME else o for o in node.output]
    graph.initializer.extend(
        [
            numpy_helper.from_array(adapter.weight, "adapter_weight"),
            numpy_helper.from_array(adapter.bias, "adapter_bias"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("MatMul", [raw, "adapter_weight"], ["adapter_projected"]),
            helper.make_node("Add", ["adapter_projected", "adapter_bias"], ["adapter_shifted"]),
            helper.make_node("LpNormalization", ["adapter_shifted"], [OUTPUT_NAME], axis=-1, p=2),
        ]
    )
    out = graph.output[0]
    native = onnx.ValueInfoProto()
    native.CopyFrom(out)
    native.name = NATIVE_OUTPUT
    out.type.tensor_type.shape.dim[1].dim_value = adapter.weight.shape[1]
    graph.output.append(native)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))


@dataclass
class PairedEmbeddings:
    """Student and teacher vectors of the same texts, with each text's kind."""

    student: npt.NDArray[np.float32]
    teacher: npt.NDArray[np.float32]
    kinds: list[TextKind]


def paired_embeddings(student: Encoder, teacher: Encoder, texts: AlignTexts) -> PairedEmbeddings:
    """Embed every text with both models, through the embedding caches."""
    queries: list[TextKind] = ["query"] * len(texts.queries)
    passages: list[TextKind] = ["document"] * len(texts.passages)
    kinds = queries + passages
    s_cache = EmbeddingCache.for_encoder(student)
    t_cache = EmbeddingCache.for_encoder(teacher)
    logger.info(
        "embedding %d query-like and %d passage texts", len(texts.queries), len(texts.passages)
    )
    sq = encode_cached(student, texts.queries, "query", s_cache)
    sp = encode_cached(student, texts.passages, "document", s_cache)
    tq = encode_cached(teacher, texts.queries, "query", t_cache)
    if texts.passage_vectors is not None:
        tp = np.asarray(texts.passage_vectors, dtype=np.float32)
    else:
        tp = encode_cached(teacher, texts.passages, "document", t_cache)
    return PairedEmbeddings(np.vstack([sq, sp]), np.vstack([tq, tp]), kinds)


def heldout_report(
    pred: npt.NDArray[np.float32],
    target: npt.NDArray[np.float32],
    kinds: Sequence[TextKind],
    rows: npt.NDArray[np.int64],
) -> dict[str, float]:
    """Mean cosine to the teacher on held-out rows, for query-like and passage texts."""
    report = {}
    for kind, label in (("query", "query"), ("document", "passage")):
        sel = np.array([r for r in rows if kinds[r] == kind], dtype=np.int64)
        if len(sel):
            report[label] = mean_cosine(pred[sel], target[sel])
    report["all"] = mean_cosine(pred[rows], target[rows])
    return report


def write_aligned_artifact(
    student: Encoder,
    teacher: Encoder,
    onnx_file: Path,
    out_dir: Path,
    alignment: Alignment,
    native: NativeOutput | None = None,
) -> ModelCard:
    """Publish an aligned student: ONNX graph, the student's tokenizer, and its card.

    ``native`` describes the graph's second output (default: the unchanged
    student's own vector, so its fingerprint is the raw student's).
    """
    shutil.copyfile(onnx_file, out_dir / "model.onnx")
    shutil.copyfile(student.folder / student.card.tokenizer_file, out_dir / "tokenizer.json")
    if native is None:
        native = NativeOutput(
            name=student.name, dim=student.dim, weights_sha256=student.card.weights_sha256
        )
    card = student.card.model_copy(
        update={
            "name": alignment.settings.get("out_name", f"{student.name}-aligned"),
            "source": f"aligned:{student.card.fingerprint[:12]}->{teacher.card.fingerprint[:12]}",
            "dim": teacher.dim,
            "weights_sha256": sha256_file(out_dir / "model.onnx"),
            "tokenizer_sha256": sha256_file(out_dir / "tokenizer.json"),
            "onnx_file": "model.onnx",
            "tokenizer_file": "tokenizer.json",
            "int8": None,
            "parity_min_cosine": None,
            "aligned_to": alignment,
            "native": native,
        }
    )
    card.save(out_dir)
    return card


def heldout_weight(
    pairs: PairedEmbeddings,
    split: Split,
    aligned_queries: npt.NDArray[np.float32],
    native_queries: npt.NDArray[np.float32],
    native_docs: npt.NDArray[np.float32],
) -> WeightChoice:
    """The label-free fused weight on the held-out query-like texts (see fusion_weight).

    ``aligned_queries``/``native_queries`` are the aligned student's two outputs
    for the held-out queries; documents are every passage of the alignment set.
    """
    held = np.array([r for r in split.heldout if pairs.kinds[r] == "query"], dtype=np.int64)
    docs = np.array([i for i, k in enumerate(pairs.kinds) if k == "document"], dtype=np.int64)
    choice = label_free_weight(
        aligned_queries, native_queries, pairs.teacher[held], pairs.teacher[docs], native_docs
    )
    logger.info(
        "label-free fused weight w=%.1f (ensemble top-10 agreement %s)",
        choice.weight,
        ", ".join(f"{w:.1f}:{a:.3f}" for w, a in choice.agreement.items()),
    )
    return choice


def native_with_weight(native: NativeOutput, choice: WeightChoice) -> NativeOutput:
    return native.model_copy(
        update={
            "fused_weight": choice.weight,
            "fused_agreement": {f"{w:.1f}": round(a, 4) for w, a in choice.agreement.items()},
        }
    )


def align_adapter(
    student_dir: Path,
    teacher_dir: Path,
    texts: AlignTexts,
    out_dir: Path,
    out_name: str,
    seed: int = 0,
) -> ModelCard:
    """Fit, fold and publish an adapter-aligned student into ``out_dir`` (already a temp dir)."""
    student = Encoder(student_dir, device="cpu")
    teacher = Encoder(teacher_dir, device="cpu")
    pairs = paired_embeddings(student, teacher, texts)
    split = split_rows(pairs.kinds, seed=seed)
    adapter = fit_adapter(pairs.student, pairs.teacher, split)
    heldout = heldout_report(
        adapter.apply(pairs.student), pairs.teacher, pairs.kinds, split.heldout
    )
    logger.info("adapter held-out cosine: %s", heldout)
    folded = out_dir / "model.adapter.onnx"
    fold_adapter(student.folder / student.card.onnx_file, adapter, folded)
    np.savez(out_dir / "adapter.npz", weight=adapter.weight, bias=adapter.bias)
    held_q = np.array([r for r in split.heldout if pairs.kinds[r] == "query"], dtype=np.int64)
    docs = np.array([i for i, k in enumerate(pairs.kinds) if k == "document"], dtype=np.int64)
    choice = heldout_weight(
        pairs,
        split,
        adapter.apply(pairs.student[held_q]),
        pairs.student[held_q],
        pairs.student[docs],
    )
    native = native_with_weight(
        NativeOutput(
            name=student.name, dim=student.dim, weights_sha256=student.card.weights_sha256
        ),
        choice,
    )
    alignment = Alignment(
        teacher_name=teacher.name,
        teacher_fingerprint=teacher.card.fingerprint,
        method="adapter",
        n_texts=len(pairs.kinds),
        heldout_cosine=heldout,
        settings={
            "out_name": out_name,
            "student": student.name,
            "student_fingerprint": student.card.fingerprint,
            "lambda": adapter.lam,
            "n_queries": len(texts.queries),
            "n_passages": len(texts.passages),
            "texts": texts.source,
            "seed": seed,
        },
    )
    card = write_aligned_artifact(student, teacher, folded, out_dir, alignment, native)
    folded.unlink()
    return card
