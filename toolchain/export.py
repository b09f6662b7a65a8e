"""Export a sentence-transformers / Hugging Face model to ONNX, with a parity check.

Pooling and L2 normalization are part of the graph, so every runtime (the
indexer, the server, a user's own ORT code) gets the same vectors with no
post-processing. An export is accepted only if its vectors match the torch
reference (cosine >= 0.9999) on varied texts run through the runtime
tokenizer; otherwise nothing is published. torch is imported here and in
alignment only, never by serving or indexing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from tandem.models.artifacts import ArtifactError, ArtifactNotExported, resolve_artifact
from tandem.models.card import Alignment, ModelCard
from tandem.models.encoder import INPUT_NAMES, OUTPUT_NAME, Encoder, TokenBatch
from tandem.models.sources import ModelSource

from tandem.errors import ModelError
from tandem.home import publish_dir, sha256_file

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PARITY_MIN_COSINE = 0.9999
OPSET = 17

# Varied on purpose: short, long (truncated), non-ASCII, code, numbers, near-empty.
PARITY_TEXTS: list[str] = [
    "",
    " ",
    "a",
    "?",
    "vitamin d",
    "What causes myocardial infarction in young adults?",
    "how do transformers handle long documents",
    "Ärzte empfehlen täglich Bewegung für die Herzgesundheit.",
    "Les vaccins à ARNm induisent une réponse immunitaire robuste.",
    "東京は日本の首都です。",
    "Здоровье сердца зависит от образа жизни.",
    "🙂 emojis 🚀 in text 🧬",
    "def f(x):\n    return x ** 2  # square",
    "SELECT id, title FROM docs WHERE score > 0.5 ORDER BY score DESC;",
    "3.14159 2.71828 1.41421 0 -1 1e-9 42",
    "COVID-19 SARS-CoV-2 ACE2 TMPRSS2 IL-6",
    "The quick brown fox jumps over the lazy dog.",
    "Aspirin reduces the risk of cardiovascular events but increases bleeding risk.",
    "Mitochondrial dysfunction is implicated in neurodegenerative disease.",
    "UPPERCASE SHOUTING TEXT WITH NO PUNCTUATION",
    "tabs\tand\nnewlines\r\nmixed   spacing",
    "https://example.org/path?query=1&b=2",
    "p53 mutations are found in roughly half of human cancers.",
    "Is dietary fat intake associated with breast cancer risk?",
    "Zinc supplementation shortens the duration of the common cold.",
    "The gut microbiome influences host metabolism through short-chain fatty acids.",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "word " * 20,
    ("Long abstract sentence about randomized controlled trials in oncology. " * 40).strip(),
    ("Genome-wide association studies identified loci for type 2 diabetes. " * 60).strip(),
    "The Higgs boson was observed at the Large Hadron Collider in 2012.",
    "¿Dónde está la biblioteca? Está cerca de la plaza.",
    "α-synuclein aggregation β-amyloid plaques γ-secretase",
    "0",
    "Patients (n=1,204) were followed for a median of 5.2 years [IQR 3.1-7.4].",
    "hello world",
    "No.",
    "In conclusion, further research is needed.",
    "sleep deprivation impairs memory consolidation",
    "Graphene exhibits exceptional electrical conductivity at room temperature.",
]


class ExportError(ModelError):
    """The export failed or did not pass the parity check."""


def export_artifact(spec: str) -> Path:
    """The artifact folder for spec, exporting it once (cached by input hash) if missing."""
    try:
        return resolve_artifact(spec)
    except ArtifactNotExported as not_exported:
        source, target = not_exported.source, not_exported.target
    missing = [m for m in ("torch", "transformers", "sentence_transformers") if not find_spec(m)]
    if missing:
        raise ArtifactError(
            f"exporting {spec!r} to ONNX needs {', '.join(missing)}: "
            "run scripts/install.sh --export (or pip install 'tandem[export]')"
        )
    logger.info("exporting %s to ONNX into %s", source.name, target)
    with publish_dir(target) as tmp:
        export_onnx(source, tmp)
    return target


def export_onnx(source: ModelSource, dest: Path) -> ModelCard:
    """Export ``source`` into ``dest`` (model.onnx, tokenizer.json, card.json) and verify it.

    The card records what the graph cannot: the query and document prompts,
    the Matryoshka dimensions, and a pair its publisher declares (``upstream``).
    """
    _refuse_excluded_prompts(source)
    module = pooled_module(source)
    dim = export_module(module, dest / "model.onnx")
    shutil.copyfile(source.folder / "tokenizer.json", dest / "tokenizer.json")
    card = ModelCard(
        name=source.name,
        source=source.source,
        dim=dim,
        pooling=source.pooling,
        normalize=True,
        max_length=source.max_length,
        query_prefix=source.query_prefix,
        document_prefix=source.document_prefix,
        matryoshka_dims=[d for d in source.matryoshka_dims if d < dim],
        weights_sha256=weights_sha256(source.folder),
        tokenizer_sha256=sha256_file(source.folder / "tokenizer.json"),
        aligned_to=declared_alignment(source),
    )
    card.save(dest)
    card.parity_min_cosine = check_parity(module, Encoder(dest, device="cpu"))
    card.save(dest)
    return card


def declared_alignment(source: ModelSource) -> Alignment | None:
    """The pair a publisher declares for this model, by the teacher's name (pinned later)."""
    if not source.upstream_teacher:
        return None
    return Alignment(
        teacher_name=source.upstream_teacher,
        teacher_fingerprint="",
        method="upstream",
        n_texts=0,
        settings={"declared_by": f"built-in card of {source.name}", "source": source.source},
    )


def _refuse_excluded_prompts(source: ModelSource) -> None:
    """A pooling that leaves prompt tokens out is not in the graph: refuse, never mis-embed."""
    pool_cfg = source.folder / "1_Pooling" / "config.json"
    prompted = source.query_prefix or source.document_prefix
    if source.pooling != "mean" or not prompted or not pool_cfg.exists():
        return
    if json.loads(pool_cfg.read_text()).get("include_prompt", True) is False:
        raise ExportError(
            f"{source.name}: its pooling excludes prompt tokens (include_prompt: false), which "
            "the exported graph does not reproduce; export it without prompts or as a plain "
            "transformers folder"
        )


def export_module(module: torch.nn.Module, onnx_path: Path) -> int:
    """Trace ``module(input_ids, attention_mask) -> embedding`` to ONNX; returns its dim."""
    import torch

    module.eval()  # the wrapper too: torch.onnx.export restores its training flag
    with torch.no_grad():
        dim = int(module(*_dummy_inputs()).shape[-1])
        torch.onnx.export(
            module,
            _dummy_inputs(),
            str(onnx_path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return dim


def check_parity(module: torch.nn.Module, encoder: Encoder) -> float:
    """Min cosine between ONNX and torch on PARITY_TEXTS; raise below the threshold."""
    import torch

    cosines: list[float] = []
    module.eval()
    for start in range(0, len(PARITY_TEXTS), 8):
        batch: TokenBatch = encoder.tokenize(PARITY_TEXTS[start : start + 8], kind="document")
        with torch.no_grad():
            ref = module(
                torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
            ).numpy()
        got = encoder.forward(batch)
        cosines.extend(_cosine_rows(ref, got).tolist())
    worst = float(min(cosines))
    logger.info("%s: ONNX parity min cosine %.6f", encoder.name, worst)
    if worst < PARITY_MIN_COSINE:
        raise ExportError(
            f"{encoder.name}: ONNX export diverges from torch (min cosine {worst:.6f} "
            f"< {PARITY_MIN_COSINE}); the export was not published"
        )
    return worst


def _cosine_rows(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cosines: npt.NDArray[np.float32] = np.sum(a * b, axis=1)
    return cosines


def _dummy_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    ids = torch.tensor([[0, 100, 200, 300, 2], [0, 150, 2, 1, 1]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)
    return ids, mask


def weights_sha256(folder: Path) -> str:
    """sha256 over the weight files of a model folder (names and contents)."""
    digest = hashlib.sha256()
    weights = sorted(folder.rglob("*.safetensors")) or sorted(folder.rglob("pytorch_model*.bin"))
    if not weights:
        raise ExportError(f"{folder} holds no weights (*.safetensors or pytorch_model*.bin)")
    for path in weights:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def pooled_module(source: ModelSource) -> torch.nn.Module:
    """A torch module (input_ids, attention_mask) -> L2-normalized sentence embedding."""
    import torch

    class SentenceTransformerPooled(torch.nn.Module):
        """The sentence-transformers pipeline (transformer, pooling, dense…) + normalize."""

        def __init__(self, folder: Path) -> None:
            super().__init__()
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(str(folder), device="cpu")

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            out = self.model(features)["sentence_embedding"]
            return torch.nn.functional.normalize(out, p=2.0, dim=-1)

    class TransformerPooled(torch.nn.Module):
        """A plain transformers encoder with the pooling named by the spec."""

        def __init__(self, folder: Path, pooling: str) -> None:
            super().__init__()
            from transformers import AutoModel

            self.model = AutoModel.from_pretrained(str(folder))
            self.pooling = pooling

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)

    if (source.folder / "modules.json").exists():
        return SentenceTransformerPooled(source.folder)
    return TransformerPooled(source.folder, source.pooling)
