"""Helpers for indexer tests: a small corpus, exact neighbours, a synthetic encoder.

The corpus is 40 one-sentence documents so the real teacher embeds it in a
couple of seconds (and never again: vectors live in the shared embedding
cache). ``HashEncoder`` produces deterministic random unit vectors from a
hash of each text; it feeds scale tests through the real write path without
a model, as the design allows for synthetic 100k-document builds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tandem.bundle.variants import VariantSpec, truncate_normalize
from tandem.models.card import ModelCard

ALL_VARIANTS = [
    "f32-768",
    "f32-256",
    "f32-64",
    "int8-768",
    "bin-768",
    "bin-256",
    "f32-768-hnsw",
    "f32-256-hnsw",
    "int8-256-hnsw",
    "bin-768-hnsw",
    "ivfpq-768",
]
TOPICS = {
    "space": [
        "The Moon orbits the Earth roughly once every twenty-seven days.",
        "Jupiter is the largest planet in the solar system.",
        "A light-year measures the distance light travels in one year.",
        "The Hubble telescope has photographed galaxies billions of years old.",
        "Mars has the tallest volcano known, Olympus Mons.",
    ],
    "cooking": [
        "Bread dough rises because yeast produces carbon dioxide.",
        "Searing meat browns its surface through the Maillard reaction.",
        "Salt draws moisture out of vegetables before they are pickled.",
        "Risotto needs stock added slowly while the rice is stirred.",
        "Whipped egg whites hold air and make a souffle rise.",
    ],
    "music": [
        "A violin has four strings tuned in perfect fifths.",
        "Beethoven kept composing after he lost his hearing.",
        "Jazz musicians often improvise over a chord progression.",
        "A metronome helps a pianist keep a steady tempo.",
        "The pipe organ produces sound by forcing air through pipes.",
    ],
    "health": [
        "Regular exercise lowers the risk of heart disease.",
        "Vaccines train the immune system to recognise a pathogen.",
        "Adults need about seven to nine hours of sleep each night.",
        "Vitamin D is produced in the skin after exposure to sunlight.",
        "Insulin lets cells take up glucose from the blood.",
    ],
    "sport": [
        "A marathon covers a little more than forty-two kilometres.",
        "In chess, castling moves the king and a rook at once.",
        "Tennis players score points as fifteen, thirty and forty.",
        "Cyclists ride in a peloton to save energy against the wind.",
        "A football team fields eleven players at a time.",
    ],
    "history": [
        "The printing press spread books across Europe in the fifteenth century.",
        "The Roman aqueducts carried water into cities over long distances.",
        "The Berlin Wall fell in November 1989.",
        "Ancient Egyptians built pyramids as tombs for their pharaohs.",
        "The Silk Road linked traders from China to the Mediterranean.",
    ],
    "nature": [
        "Bees pollinate flowers while collecting nectar.",
        "Glaciers carve valleys as they slowly move downhill.",
        "Owls hunt at night using their excellent hearing.",
        "Coral reefs are built by colonies of tiny animals.",
        "Rainforests hold more than half of the world's plant species.",
    ],
    "tech": [
        "A compiler translates source code into machine instructions.",
        "Solid-state drives store data in flash memory without moving parts.",
        "Public-key cryptography uses a pair of related keys.",
        "A router forwards packets between computer networks.",
        "Databases use indexes to find rows without scanning every one.",
    ],
}
QUERIES = [
    "how big is the largest planet",
    "why does bread rise",
    "how many strings does a violin have",
    "how much sleep do adults need",
    "when did the berlin wall fall",
]
NEW_DOCS = [
    ("new-1", "Pulsars", "A pulsar is a rotating neutron star that emits beams of radiation."),
    ("new-2", "Espresso", "Espresso is brewed by forcing hot water through finely ground coffee."),
    ("new-3", "Drums", "A drummer keeps time for the rest of the band."),
]


def corpus_rows() -> list[dict[str, object]]:
    """40 documents: id, title, text, metadata {topic, rank}."""
    rows: list[dict[str, object]] = []
    for topic, sentences in TOPICS.items():
        for rank, sentence in enumerate(sentences):
            rows.append(
                {
                    "id": f"{topic}-{rank}",
                    "title": topic.capitalize(),
                    "text": sentence,
                    "metadata": {"topic": topic, "rank": rank, "even": rank % 2 == 0},
                }
            )
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def exact_neighbors(
    stored: npt.NDArray[np.floating], queries: npt.NDArray[np.float32], spec: VariantSpec
) -> npt.NDArray[np.float32]:
    """Similarity of every query to every stored vector as the variant defines it (n_q, n_docs)."""
    docs = truncate_normalize(stored, spec.dim)
    q = truncate_normalize(queries, spec.dim)
    if spec.is_binary:
        hamming = ((q[:, None, :] > 0) != (docs[None, :, :] > 0)).sum(axis=2)
        return (1.0 - 2.0 * hamming / spec.dim).astype(np.float32)
    return (q @ docs.T).astype(np.float32)  # (n_queries, n_docs)


def assert_exact_topk(
    true_scores: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32] | None = None,
    tol: float = 1e-4,
) -> None:
    """Tie-tolerant: the returned ids' true scores are the true top-k scores."""
    k = ids.shape[1]
    for row, (truth, got) in enumerate(zip(true_scores, ids, strict=True)):
        assert (got >= 0).all(), f"query {row}: padding in {got}"
        assert len(set(got.tolist())) == k, f"query {row}: repeated ids {got}"
        expected = np.sort(truth)[::-1][:k]
        np.testing.assert_allclose(np.sort(truth[got])[::-1], expected, atol=tol, err_msg=f"q{row}")
        if scores is not None:
            np.testing.assert_allclose(scores[row], truth[got], atol=tol, err_msg=f"q{row}")


def recall_at_k(true_scores: npt.NDArray[np.float32], ids: npt.NDArray[np.int64]) -> float:
    k = ids.shape[1]
    top = np.argsort(-true_scores, axis=1)[:, :k]
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top, ids, strict=True)]
    return float(np.mean(hits)) / k


class HashEncoder:
    """Deterministic random unit vectors keyed by text: the build path with no model."""

    def __init__(self, dim: int = 768) -> None:
        self.dim = dim
        self.precision = "fp32"
        self.card = ModelCard(
            name="synthetic-hash",
            source="tests",
            dim=dim,
            pooling="mean",
            max_length=64,
            weights_sha256="0" * 64,
            tokenizer_sha256="0" * 64,
        )

    def encode(
        self,
        texts: Sequence[str],
        kind: str = "document",
        token_budget: int = 0,
        max_batch: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(f"{kind}\0{text}".encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        if on_batch is not None:
            on_batch(len(texts))
        return out
