"""A tiny BEIR folder written per session: 20 one-sentence documents, 5 test and 2 train queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DOCS = {
    "d01": (
        "Photosynthesis",
        "Plants convert sunlight, water and carbon dioxide into glucose and oxygen.",
    ),
    "d02": ("Volcanoes", "Magma rises through the crust and erupts as lava from volcanic vents."),
    "d03": ("Insulin", "The pancreas releases insulin to lower the level of sugar in the blood."),
    "d04": (
        "Black holes",
        "A black hole is a region of spacetime where gravity prevents light from escaping.",
    ),
    "d05": ("Sourdough", "Sourdough bread is leavened by wild yeast and lactic acid bacteria."),
    "d06": ("Chess openings", "The Sicilian Defence is a chess opening that begins with 1.e4 c5."),
    "d07": ("Coral reefs", "Rising ocean temperatures cause coral bleaching on tropical reefs."),
    "d08": (
        "Vaccines",
        "Vaccines train the immune system to recognise a pathogen before infection.",
    ),
    "d09": (
        "Roman roads",
        "The Romans built paved roads across their empire to move armies quickly.",
    ),
    "d10": ("Honeybees", "Honeybees communicate the location of flowers through a waggle dance."),
    "d11": (
        "Type 2 diabetes",
        "Insulin resistance in muscle and liver is a hallmark of type 2 diabetes.",
    ),
    "d12": ("Glaciers", "Glaciers carve U-shaped valleys as they slowly flow downhill."),
    "d13": ("Espresso", "Espresso is brewed by forcing hot water through finely ground coffee."),
    "d14": ("Tides", "Ocean tides are caused mainly by the gravitational pull of the moon."),
    "d15": ("Antibiotics", "Overuse of antibiotics drives the spread of resistant bacteria."),
    "d16": ("Jazz", "Jazz originated in New Orleans and is known for improvisation and swing."),
    "d17": (
        "Neurons",
        "Neurons transmit signals to each other across synapses using neurotransmitters.",
    ),
    "d18": (
        "Solar panels",
        "Photovoltaic cells in solar panels turn sunlight directly into electricity.",
    ),
    "d19": ("Penguins", "Emperor penguins huddle together to survive the Antarctic winter."),
    "d20": ("Tectonic plates", "Earthquakes happen where tectonic plates slide past one another."),
}
TEST_QUERIES = {
    "1": "How do plants make sugar from sunlight?",
    "2": "Which hormone controls blood glucose?",
    "3": "What makes lava come out of a mountain?",
    "4": "Why are coral reefs turning white?",
    "5": "How do bees tell each other where flowers are?",
}
TEST_QRELS = {
    "1": {"d01": 1},
    "2": {"d03": 2, "d11": 1},
    "3": {"d02": 1},
    "4": {"d07": 1},
    "5": {"d10": 1},
}
TRAIN_QUERIES = {"101": "What causes the tides?", "102": "Where did jazz music begin?"}
TRAIN_QRELS = {"101": {"d14": 1}, "102": {"d16": 1}}


def write_beir(folder: Path) -> Path:
    """Write corpus.jsonl, queries.jsonl (both splits) and qrels/{test,train}.tsv."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for doc_id, (title, text) in DOCS.items():
            f.write(
                json.dumps({"_id": doc_id, "title": title, "text": text, "metadata": {}}) + "\n"
            )
    with open(folder / "queries.jsonl", "w") as f:
        for qid, text in {**TEST_QUERIES, **TRAIN_QUERIES}.items():
            f.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    for split, qrels in (("test", TEST_QRELS), ("train", TRAIN_QRELS)):
        with open(folder / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, rels in qrels.items():
                for doc_id, rel in rels.items():
                    f.write(f"{qid}\t{doc_id}\t{rel}\n")
    return folder


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny")
