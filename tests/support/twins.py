"""Structural twins of the production pair, built locally with random weights (no download).

The teacher twin has snowflake-arctic-embed-m-v1.5's module structure and
configuration (BERT encoder, CLS pooling, Normalize, the arctic query prompt,
a declared Matryoshka truncation); the student twin has mdbr-leaf-ir's
(MiniLM-shaped BERT, mean pooling, a ``Dense`` projection to the teacher's
width, Normalize, the same query prompt). Both are a few layers wide and a few
dozen dims, so export takes seconds; the tokenizer is the offline MiniLM's.

How a student twin comes to share the teacher's space: the teacher's
encoder is the student's encoder widened exactly (every hidden unit
duplicated, so each layer computes the same values twice and the teacher's CLS
vector is the student encoder's CLS vector repeated), and the student's
``Dense`` layer is a least-squares map from its mean-pooled vectors to the
teacher's vectors, fitted on texts that are not the ones ``tandem models
pair`` measures on. An unrelated student gets the same treatment over an
encoder with other random weights: the fitted map can match the teacher's
average direction, but not text by text.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tandem.models.sources import QUERY_INSTRUCTION, resolve_source

from tandem.data.corpus import read_corpus
from tandem.home import publish_dir, stable_hash, tandem_home

TWIN_FORMAT = 1
STUDENT_HIDDEN = 32  # MiniLM: 384
TEACHER_HIDDEN = 2 * STUDENT_HIDDEN  # BERT-base: 768; the Dense maps 32 -> 64 as LEAF's 384 -> 768
TEACHER_MATRYOSHKA = 32  # arctic-embed-m-v1.5: 256 of 768
LAYERS = 2
HEADS = 4  # the teacher has twice as many, each of the same width
INIT_RANGE = 0.2  # wide enough that random encoders give texts distinct vectors
RIDGE = 1.0
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
PROMPTS = {"query": QUERY_INSTRUCTION, "document": ""}


@dataclass(frozen=True)
class Twins:
    """Local sentence-transformers folders: the teacher twin and two student twins."""

    teacher: Path
    student: Path  # shares the teacher's space
    unrelated: Path  # does not


def sample_split(samples: Path) -> tuple[list[str], Path]:
    """Fit texts from the first half of the sample corpus; the second half (a file) to measure."""
    docs = list(read_corpus(samples / "corpus.jsonl"))
    half = len(docs) // 2
    fit = [s for d in docs[:half] for s in re.split(r"(?<=[.!?])\s+", d.text)]
    words = [d.text.split() for d in docs[:half]]
    fit += [" ".join(w[i : i + 6]) for w in words for i in range(0, max(len(w) - 6, 1), 5)]
    measure = tandem_home() / "test-twins" / f"measure-{stable_hash([d.id for d in docs])}.jsonl"
    if not measure.exists():
        measure.parent.mkdir(parents=True, exist_ok=True)
        tmp = measure.with_suffix(f".{os.getpid()}.tmp")  # concurrent sessions each write whole
        tmp.write_text(
            "".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs[half:])
        )
        tmp.replace(measure)
    return fit, measure


def build_twins(samples: Path) -> Twins:
    """Build (once per machine, cached in $TANDEM_HOME keyed by these settings) the three twins."""
    fit_texts, _ = sample_split(samples)
    key = stable_hash(
        TWIN_FORMAT, STUDENT_HIDDEN, LAYERS, HEADS, INIT_RANGE, RIDGE, TEACHER_MATRYOSHKA, fit_texts
    )
    root = tandem_home() / "test-twins" / key
    if not (root / "done").exists():
        with publish_dir(root) as tmp:
            _build(tmp, fit_texts)
            (tmp / "done").write_text("ok\n")
    return Twins(root / "twin-arctic", root / "twin-leaf", root / "twin-unrelated")


def _build(root: Path, fit_texts: list[str]) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only contend (10x slower on 2 busy cores)
    try:
        _build_all(root, fit_texts)
    finally:
        torch.set_num_threads(threads)


def _build_all(root: Path, fit_texts: list[str]) -> None:
    import torch

    base = _random_bert(STUDENT_HIDDEN, HEADS, seed=0)
    other = _random_bert(STUDENT_HIDDEN, HEADS, seed=1)
    wide = _random_bert(TEACHER_HIDDEN, 2 * HEADS, seed=0)
    with torch.no_grad():
        wide.load_state_dict(_widened(base.state_dict(), wide.state_dict()))
    teacher = _save_teacher(wide, root / "twin-arctic")
    queries, passages = fit_texts[::2], fit_texts[1::2]
    target = np.vstack(
        [teacher.encode(queries, prompt_name="query"), teacher.encode(passages)]
    )  # (n_fit, 64)
    for name, encoder in (("twin-leaf", base), ("twin-unrelated", other)):
        _save_student(encoder, root / name, queries, passages, target)


def _random_bert(hidden: int, heads: int, seed: int):  # type: ignore[no-untyped-def]
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=LAYERS,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        initializer_range=INIT_RANGE,
    )
    model = BertModel(config)
    model.eval()  # type: ignore[no-untyped-call]
    return model


def _widened(narrow: dict, wide: dict) -> dict:  # type: ignore[type-arg]
    """Weights of a network twice as wide that computes every hidden value twice.

    Input [x; x]: a linear layer W becomes 0.5 * [[W, W], [W, W]] (output
    [Wx; Wx]), biases and LayerNorm parameters repeat, embedding tables repeat
    along their width. LayerNorm over [y; y] equals [LN(y); LN(y)], and with
    twice the heads of the same width each teacher head is one student head.
    """
    import torch

    out = {}
    for name, target in wide.items():
        source = narrow[name]
        if source.shape == target.shape:
            out[name] = source.clone()
        elif source.dim() == 1:
            out[name] = source.repeat(2)
        elif "embeddings" in name:
            out[name] = source.repeat(1, 2)
        else:
            out[name] = 0.5 * source.repeat(2, 2)
        if out[name].shape != target.shape:
            raise ValueError(f"cannot widen {name}: {tuple(source.shape)} -> {tuple(target.shape)}")
    return {k: torch.as_tensor(v) for k, v in out.items()}


def _save_encoder(model, folder: Path) -> None:  # type: ignore[no-untyped-def]
    model.save_pretrained(folder / "hf")
    tokenizer = resolve_source("all-MiniLM-L6-v2").folder
    for file in TOKENIZER_FILES:
        shutil.copyfile(tokenizer / file, folder / "hf" / file)


def _save_teacher(model, folder: Path):  # type: ignore[no-untyped-def]
    """Transformer -> Pooling(CLS) -> Normalize, arctic's query prompt, no document prompt."""
    from sentence_transformers import SentenceTransformer, models  # type: ignore[attr-defined]

    _save_encoder(model, folder)
    transformer = models.Transformer(str(folder / "hf"), max_seq_length=512)
    pooling = models.Pooling(TEACHER_HIDDEN, pooling_mode="cls")
    teacher = SentenceTransformer(
        modules=[transformer, pooling, models.Normalize()], prompts=PROMPTS, device="cpu"
    )
    _save(teacher, folder, matryoshka_dims=[TEACHER_HIDDEN, TEACHER_MATRYOSHKA])
    return teacher


def _save_student(  # type: ignore[no-untyped-def]
    model,
    folder: Path,
    queries: list[str],
    passages: list[str],
    target: npt.NDArray[np.float32],
) -> None:
    """Transformer -> Pooling(mean) -> Dense(32 -> 64, fitted) -> Normalize, the same prompts."""
    import torch
    from sentence_transformers import SentenceTransformer, models  # type: ignore[attr-defined]

    _save_encoder(model, folder)
    transformer = models.Transformer(str(folder / "hf"), max_seq_length=512)
    pooling = models.Pooling(STUDENT_HIDDEN, pooling_mode="mean")
    pooled = SentenceTransformer(modules=[transformer, pooling], prompts=PROMPTS, device="cpu")
    x = np.vstack([pooled.encode(queries, prompt_name="query"), pooled.encode(passages)])
    weight, bias = _least_squares(x, target)
    dense = models.Dense(
        STUDENT_HIDDEN, TEACHER_HIDDEN, bias=True, activation_function=torch.nn.Identity()
    )
    with torch.no_grad():
        dense.linear.weight.copy_(torch.from_numpy(weight.T))
        dense.linear.bias.copy_(torch.from_numpy(bias))
    student = SentenceTransformer(
        modules=[transformer, pooling, dense, models.Normalize()], prompts=PROMPTS, device="cpu"
    )
    _save(student, folder)


def _least_squares(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], ridge: float = RIDGE
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """y ~ x @ weight + bias by ridge regression; returns weight (in, out) and bias (out,).

    The ridge keeps the weights moderate: the pooled vectors of a random encoder
    are nearly collinear, and a plain fit cancels huge terms, which would turn
    float rounding into visible differences between torch and ONNX Runtime.
    """
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    x_mean, y_mean = x64.mean(0), y64.mean(0)
    xc, yc = x64 - x_mean, y64 - y_mean
    weight = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ yc)
    bias = y_mean - x_mean @ weight
    return weight.astype(np.float32), bias.astype(np.float32)


def _save(model, folder: Path, matryoshka_dims: list[int] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Save as a sentence-transformers folder, then drop the encoder's scratch copy."""
    model.save(str(folder / "st"))
    shutil.rmtree(folder / "hf")
    for item in (folder / "st").iterdir():
        item.rename(folder / item.name)
    (folder / "st").rmdir()
    if matryoshka_dims:
        config = folder / "config_sentence_transformers.json"
        data = json.loads(config.read_text())
        data["matryoshka_dims"] = matryoshka_dims
        config.write_text(json.dumps(data, indent=2) + "\n")
