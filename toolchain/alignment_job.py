"""Run an alignment end to end: gather texts, fit or distill, publish, cache by inputs.

Results live in ``$TANDEM_HOME/aligned/.store/<inputs-hash>`` and the name the
user chose is a symlink to it, swapped atomically. Running the same alignment
again returns the stored one in seconds; changing any input builds a new one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
from tandem.models.artifacts import aligned_dir
from tandem.models.card import Alignment, ModelCard, NativeOutput
from tandem.models.encoder import Encoder
from tandem.toolchain.align import (
    Adapter,
    AlignTexts,
    align_adapter,
    heldout_report,
    heldout_weight,
    native_with_weight,
    paired_embeddings,
    pseudo_queries,
    split_rows,
    write_aligned_artifact,
)
from tandem.toolchain.distill import DistillConfig

from tandem.home import publish_dir, sha256_file, stable_hash

logger = logging.getLogger(__name__)

Method = Literal["adapter", "distill"]
ALIGN_FORMAT = 2  # 2: aligned graphs also output the native vector


def gather_texts(path: Path, n_pseudo: int = 8000, seed: int = 0) -> AlignTexts:
    """Training texts from a BEIR folder, a corpus file, or an index bundle.

    Queries: the dataset's *train* queries (never test) plus pseudo-queries cut
    from passages. From a bundle, passages come with their teacher vectors, so
    the teacher never embeds them twice.
    """
    from tandem.data.corpus import read_corpus

    path = Path(path)
    train_queries: list[str] = []
    vectors = None
    if (path / "manifest.json").exists() or (path / "current").exists():
        from tandem.bundle.format import open_bundle

        bundle = open_bundle(path)
        docs = bundle.documents(range(bundle.n_docs))
        passages = [d.text for d in docs]
        vectors = np.asarray(bundle.vectors, dtype=np.float32)
    else:
        passages = [doc.text for doc in read_corpus(path, skip_bad=True)]
        if (path / "qrels" / "train.tsv").exists():
            from tandem.data.beir import load_eval_set

            train_queries = load_eval_set(path, "train").query_texts
    queries = train_queries + pseudo_queries(passages, n_pseudo, seed)
    return AlignTexts(queries, passages, vectors, source=f"{path.name}:{len(passages)} passages")


def _publish_named(name: str, key: str, build: Callable[[Path], ModelCard]) -> Path:
    """Build into the keyed store unless present, then point ``name`` at it atomically."""
    store = aligned_dir(".store") / key
    if not (store / "card.json").exists():
        with publish_dir(store) as tmp:
            build(tmp)
    link = aligned_dir(name)
    tmp_link = link.with_name(f".{name}.link")
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(Path(".store") / key, tmp_link)
    os.replace(tmp_link, link)
    return link


def run_alignment(
    student_dir: Path,
    teacher_dir: Path,
    texts: AlignTexts,
    method: Method,
    out_name: str,
    distill_config: DistillConfig | None = None,
    quantize: bool = True,
) -> Path:
    """Align and publish; returns the aligned artifact folder (cached by inputs)."""
    student_card, teacher_card = ModelCard.load(student_dir), ModelCard.load(teacher_dir)
    adapter_key = stable_hash(
        ALIGN_FORMAT, "adapter", student_card.fingerprint, teacher_card.fingerprint, texts.key()
    )
    adapter_name = out_name if method == "adapter" else f"{out_name}-adapter"
    adapter_path = _publish_named(
        adapter_name,
        adapter_key,
        lambda tmp: align_adapter(student_dir, teacher_dir, texts, tmp, adapter_name),
    )
    if method == "adapter":
        _maybe_quantize(adapter_path, quantize)
        return adapter_path
    config = distill_config or DistillConfig()
    key = stable_hash(ALIGN_FORMAT, "distill", adapter_key, asdict(config))
    path = _publish_named(
        out_name,
        key,
        lambda tmp: _distill_into(
            tmp, student_dir, teacher_dir, adapter_path, texts, config, key, out_name
        ),
    )
    _maybe_quantize(path, quantize)
    return path


def _maybe_quantize(path: Path, quantize: bool) -> None:
    from tandem.toolchain.quantize import QuantizationRefused, quantize_best

    card = ModelCard.load(path)
    if not quantize or card.int8 is not None:
        return
    try:
        quantize_best(path.resolve())
    except QuantizationRefused as exc:
        logger.warning("%s", exc)


def _distill_into(
    out_dir: Path,
    student_dir: Path,
    teacher_dir: Path,
    adapter_dir: Path,
    texts: AlignTexts,
    config: DistillConfig,
    key: str,
    out_name: str,
) -> ModelCard:
    from tandem.models.sources import resolve_source
    from tandem.toolchain.distill import build_student, distill, export_two_outputs
    from tandem.toolchain.export import check_parity

    student = Encoder(student_dir, device="cpu")
    teacher = Encoder(teacher_dir, device="cpu")
    pairs = paired_embeddings(student, teacher, texts)
    split = split_rows(pairs.kinds, seed=config.seed)
    rows = np.concatenate([split.train, split.val])
    all_texts = texts.queries + texts.passages
    # The student trains on what it will see: each text with its kind's prompt.
    prompted = student.prefixed(texts.queries, "query") + student.prefixed(
        texts.passages, "document"
    )
    saved = np.load(adapter_dir / "adapter.npz")
    adapter = Adapter(saved["weight"], saved["bias"], lam=0.0)
    source = resolve_source(_source_spec(student.card))
    module = build_student(source, adapter)
    work = aligned_dir(".work") / key
    work.mkdir(parents=True, exist_ok=True)
    logger.info("distilling on %d texts (%d held out)", len(rows), len(split.heldout))
    stats = distill(
        module,
        student.folder / student.card.tokenizer_file,
        [prompted[i] for i in rows],
        pairs.teacher[rows],
        config,
        work,
        on_step=_log_step,
    )
    onnx_path = out_dir / "model.distilled.onnx"
    module.to("cpu")
    export_two_outputs(module, onnx_path)
    alignment = Alignment(
        teacher_name=teacher.name,
        teacher_fingerprint=teacher.card.fingerprint,
        method="distill",
        n_texts=len(rows),
        settings={
            "out_name": out_name,
            "student": student.name,
            "student_fingerprint": student.card.fingerprint,
            "n_queries": len(texts.queries),
            "n_passages": len(texts.passages),
            "texts": texts.source,
            **asdict(config),
            **stats,
        },
    )
    # The encoder was retrained: its native vector is a new encoder, named and fingerprinted
    # apart from the raw student (a student view built by the raw student does not serve it).
    native = NativeOutput(
        name=f"{out_name}-native",
        dim=student.dim,
        weights_sha256=stable_hash("native", sha256_file(onnx_path)),
    )
    card = write_aligned_artifact(student, teacher, onnx_path, out_dir, alignment, native)
    onnx_path.unlink()
    card.parity_min_cosine = min(
        check_parity(module, Encoder(out_dir, device="cpu")),
        check_parity(
            module.encoder,  # type: ignore[arg-type]  # torch types submodules as Tensor | Module
            Encoder(out_dir, device="cpu", output="native"),
        ),
    )
    aligned = Encoder(out_dir, device="cpu")
    aligned_native = Encoder(out_dir, device="cpu", output="native")
    held = split.heldout
    pred = np.zeros_like(pairs.teacher)
    held_q = [i for i in held if pairs.kinds[i] == "query"]
    held_p = [i for i in held if pairs.kinds[i] == "document"]
    pred[held_q] = aligned.encode([all_texts[i] for i in held_q], "query")
    pred[held_p] = aligned.encode([all_texts[i] for i in held_p], "document")
    native_q = aligned_native.encode([all_texts[i] for i in held_q], "query")
    native_docs = aligned_native.encode(texts.passages, "document")
    choice = heldout_weight(pairs, split, pred[held_q], native_q, native_docs)
    card.native = native_with_weight(native, choice)
    card.aligned_to = alignment.model_copy(
        update={"heldout_cosine": heldout_report(pred, pairs.teacher, pairs.kinds, held)}
    )
    card.save(out_dir)
    logger.info("distilled student held-out cosine: %s", card.aligned_to.heldout_cosine)
    return card


def _source_spec(card: ModelCard) -> str:
    """The spec that resolves the student's original weights (for training)."""
    if card.source.startswith("local:"):
        return card.source.removeprefix("local:")
    if card.source.startswith("hub:"):
        return card.source.removeprefix("hub:")
    return card.name


def _log_step(step: int, total: int, loss: float) -> None:
    if step % 50 == 0 or step == total:
        logger.info("distill step %d/%d loss %.4f", step, total, loss)


def run_pair(
    student_dir: Path, teacher_dir: Path, texts: AlignTexts, out_name: str, force: bool = False
) -> Path:
    """Measure a publisher-aligned pair and publish the student as ``out_name`` if it holds.

    The measurement runs every time (through the embedding caches, so a repeat
    costs seconds) and a refusal publishes nothing, even when an earlier
    forced declaration of the same inputs is stored.
    """
    from tandem.toolchain.upstream_pair import (
        PairRefused,
        measure_pair,
        pair_key,
        write_paired_artifact,
    )

    student = Encoder(student_dir, device="cpu")
    teacher = Encoder(teacher_dir, device="cpu")
    measured = measure_pair(student, teacher, texts)
    problems = measured.problems()
    if problems and not force:
        raise PairRefused(
            f"{student.name} does not share {teacher.name}'s space on {measured.n_texts} texts "
            f"({texts.source}): {'; '.join(problems)}. Nothing was declared; align it with "
            "`tandem models align` instead, or pass --force if you know better"
        )
    if problems:
        logger.warning("declaring %s despite: %s (--force)", out_name, "; ".join(problems))
    return _publish_named(
        out_name,
        pair_key(student.card, teacher.card, texts),
        lambda tmp: write_paired_artifact(
            student, teacher, measured, texts, tmp, out_name, bool(problems)
        ),
    )
