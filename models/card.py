"""The model card: what an encoder artifact is, and a fingerprint that names it.

The fingerprint is a sha256 over everything that changes the vectors an
encoder produces: its weights, its tokenizer, pooling, normalization,
prefixes, output dimension and maximum length. Bundles record the teacher's
fingerprint and aligned students record the teacher they speak for, so a
mismatched pair is refused instead of silently returning bad results.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

CARD_FILE = "card.json"
Pooling = Literal["mean", "cls"]
Precision = Literal["fp32", "int8"]


class Alignment(BaseModel):
    """How a student was made to speak a teacher's space.

    ``upstream`` means aligned by its publisher. A built-in card declares such a
    pair by the teacher's name alone (``teacher_fingerprint`` empty); the
    fingerprint is pinned once the pair has been measured (``tandem models pair``).
    """

    teacher_name: str
    teacher_fingerprint: str
    method: Literal["adapter", "distill", "upstream"]
    n_texts: int
    heldout_cosine: dict[str, float] = Field(
        default_factory=dict, description="mean cosine to the teacher on held-out texts, by kind"
    )
    settings: dict[str, object] = Field(default_factory=dict)


class Int8Quality(BaseModel):
    """The int8 graph judged on real relevance judgments, against its own fp32 graph.

    Cosine to fp32 says the vectors are close; only nDCG@10 on judged queries
    says the rankings users see are as good. ``serving_precision`` serves int8
    only when this check passed.
    """

    dataset: str
    split: str
    n_queries: int
    ndcg_fp32: float
    ndcg_int8: float
    max_drop: float

    @property
    def drop(self) -> float:
        return self.ndcg_fp32 - self.ndcg_int8

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop


class QuantizedFile(BaseModel):
    """An int8 variant and the quality guard's verdict on it."""

    file: str
    cosine_mean: float
    cosine_min: float
    settings: dict[str, object] = Field(default_factory=dict)
    quality: Int8Quality | None = None  # nDCG@10 against fp32 (`tandem models guard`)


class NativeOutput(BaseModel):
    """An aligned student's second graph output: its own pooled vector, before the adapter.

    One forward pass gives both the teacher-space query vector and this native
    one, which searches a bundle's student view (fused scoring). Its
    ``weights_sha256`` makes ``ModelCard.native_card().fingerprint`` equal the raw
    student's fingerprint when the encoder was not retrained (a ridge adapter),
    so student views built by the raw student serve it. ``fused_weight`` is the
    label-free weight of the asymmetric cosine chosen at alignment time.
    """

    name: str
    dim: int
    weights_sha256: str
    fused_weight: float | None = None
    fused_agreement: dict[str, float] = Field(
        default_factory=dict, description="w -> top-10 agreement with the symmetric ensemble"
    )


class ModelCard(BaseModel):
    """Everything needed to run an ONNX encoder artifact and to know what it is."""

    name: str
    source: str
    dim: int
    pooling: Pooling
    normalize: bool = True
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""
    matryoshka_dims: list[int] = Field(
        default_factory=list, description="truncations the model was trained for, largest first"
    )
    weights_sha256: str
    tokenizer_sha256: str
    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    parity_min_cosine: float | None = None
    int8: QuantizedFile | None = None
    aligned_to: Alignment | None = None
    native: NativeOutput | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def fingerprint(self) -> str:
        """sha256 over the fields that change the vectors; stable across machines."""
        return fingerprint(
            weights_sha256=self.weights_sha256,
            tokenizer_sha256=self.tokenizer_sha256,
            pooling=self.pooling,
            normalize=self.normalize,
            query_prefix=self.query_prefix,
            document_prefix=self.document_prefix,
            dim=self.dim,
            max_length=self.max_length,
        )

    def native_card(self) -> ModelCard:
        """The card of the native output (the encoder itself when it has only one output)."""
        if self.native is None:
            return self
        return self.model_copy(
            update={
                "name": self.native.name,
                "dim": self.native.dim,
                "weights_sha256": self.native.weights_sha256,
                "aligned_to": None,
                "native": None,
            }
        )

    def precisions(self) -> list[Precision]:
        return ["fp32", "int8"] if self.int8 is not None else ["fp32"]

    @property
    def serving_precision(self) -> Precision:
        """What ``precision=auto`` serves: int8 once its graph kept nDCG@10 on real judgments.

        The cosine guard alone does not make int8 the default: it only admits the
        graph; the ranking check (``tandem models guard``) decides.
        """
        if self.int8 is not None and self.int8.quality is not None and self.int8.quality.passed:
            return "int8"
        return "fp32"

    def serving_reason(self) -> str:
        """Why ``serving_precision`` is what it is, in one line (for logs and reports)."""
        if self.int8 is None:
            return "no int8 graph (run `tandem models quantize`)"
        quality = self.int8.quality
        if quality is None:
            return "int8 not yet judged on relevance judgments (run `tandem models guard`)"
        verdict = "within" if quality.passed else "beyond"
        return (
            f"int8 nDCG@10 {quality.ndcg_int8:.4f} vs fp32 {quality.ndcg_fp32:.4f} on "
            f"{quality.dataset}/{quality.split} ({quality.n_queries} queries): drop "
            f"{quality.drop:+.4f}, {verdict} the {quality.max_drop} allowed"
        )

    def model_file(self, precision: Precision) -> str:
        """The ONNX file (relative to the artifact folder) run at ``precision``."""
        if precision == "int8":
            if self.int8 is None:
                raise ValueError(f"{self.name} has no int8 graph")
            return self.int8.file
        return self.onnx_file

    def save(self, folder: Path) -> None:
        data = self.model_dump(mode="json")
        data["fingerprint"] = self.fingerprint
        (folder / CARD_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ModelCard:
        path = folder / CARD_FILE
        data = json.loads(path.read_text())
        data.pop("fingerprint", None)
        return cls.model_validate(data)


def fingerprint(
    *,
    weights_sha256: str,
    tokenizer_sha256: str,
    pooling: str,
    normalize: bool,
    query_prefix: str,
    document_prefix: str,
    dim: int,
    max_length: int,
) -> str:
    payload = json.dumps(
        {
            "weights": weights_sha256,
            "tokenizer": tokenizer_sha256,
            "pooling": pooling,
            "normalize": normalize,
            "query_prefix": query_prefix,
            "document_prefix": document_prefix,
            "dim": dim,
            "max_length": max_length,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()
