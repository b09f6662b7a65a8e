"""Published nDCG@10 numbers printed beside ours, so a broken pipeline shows at a glance.

Keyed by dataset folder name and the model's short name (the part after the
hub organisation). Sources: MTEB leaderboard results (title + text template,
pytrec_eval), Anserini for BM25; see the dataset's README.
"""

from __future__ import annotations

from typing import Final

# dataset -> model short name -> (nDCG@10 on the test split, source)
PUBLISHED_NDCG10: Final[dict[str, dict[str, tuple[float, str]]]] = {
    "scifact": {
        "all-mpnet-base-v2": (0.6557, "MTEB"),
        "all-MiniLM-L6-v2": (0.6451, "MTEB"),
        "snowflake-arctic-embed-m-v1.5": (0.7184, "MTEB"),
        "mdbr-leaf-ir": (0.7056, "MTEB"),
        "bm25": (0.6789, "Anserini flat"),
    },
}

# How far ours may sit from a published number before the report flags it.
TOLERANCE: Final = 0.01


def published_ndcg10(
    dataset: str, model_name: str, split: str = "test"
) -> tuple[float, str] | None:
    """(value, source) when a published test-split number exists for this pair."""
    if split != "test":
        return None
    short = model_name.rsplit("/", 1)[-1]
    by_model = PUBLISHED_NDCG10.get(dataset.lower(), {})
    return by_model.get(short) or by_model.get(short.lower())
