"""The ONNX Runtime encoder used by the indexer and the server.

Three stages, as infinity splits them: tokenize (``tokenizers``, no
transformers import), forward (one ONNX run per batch; pooling and L2
normalization are inside the graph), and batching by tokens (texts sorted by
length and packed under a padded-token budget, so short queries never pay for
a long passage's padding).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tandem.models.card import ModelCard, Precision
from tokenizers import Encoding, Tokenizer

from tandem.errors import ModelError

logger = logging.getLogger(__name__)

TextKind = Literal["query", "document"]
Device = Literal["auto", "cpu", "cuda"]
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
NATIVE_OUTPUT = "native_embedding"  # an aligned student's own pooled vector (fused scoring)
Output = Literal["embedding", "native"]


class EncoderError(ModelError):
    """The encoder artifact is missing, broken, or failed to run."""


@dataclass(frozen=True)
class TokenBatch:
    """Token ids padded to the longest text of the batch."""

    input_ids: npt.NDArray[np.int64]  # (n, seq)
    attention_mask: npt.NDArray[np.int64]  # (n, seq)
    n_truncated: int

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)


@dataclass(frozen=True)
class TokenRows:
    """One request's texts tokenized once, unpadded: a row of ids per text.

    The micro-batcher pads the rows of every request in a batch in one merge
    (``Encoder.pad_rows``), so nothing is padded twice.
    """

    ids: list[npt.NDArray[np.int64]]  # one (length,) array per text
    truncated: list[bool]  # per text: cut at the model's max length

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def longest(self) -> int:
        return max((len(r) for r in self.ids), default=0)

    @property
    def n_tokens(self) -> int:
        return sum(len(r) for r in self.ids)


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch: int) -> list[list[int]]:
    """Group indices into length-sorted batches whose padded cost stays under the budget.

    Padded cost is longest × count (TEI's rule). A text longer than the budget
    still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # ascending order: the newcomer is the longest
        if current and (len(current) >= max_batch or longest * (len(current) + 1) > token_budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _providers(device: Device) -> list[str]:
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise EncoderError("device 'cuda' asked for, but onnxruntime has no CUDAExecutionProvider")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Encoder:
    """An exported encoder artifact (card.json, tokenizer.json, model[.int8].onnx), ready to run."""

    def __init__(
        self,
        folder: Path,
        precision: Precision = "fp32",
        device: Device = "auto",
        threads: int | None = None,
        output: Output = "embedding",
        *,
        spinning: bool = True,
    ) -> None:
        """``output="native"`` runs an aligned student as its own native encoder.

        Its card is then the native output's (name, dim, fingerprint), so caches,
        bundles and evaluations see a plain encoder; a one-output model is its
        own native encoder.
        """
        folder = Path(folder)
        if not (folder / "card.json").exists():
            raise EncoderError(f"{folder} is not an encoder artifact (no card.json)")
        self.folder = folder
        self.full_card = ModelCard.load(folder)
        self.output_name = OUTPUT_NAME
        self.card = self.full_card
        if output == "native":
            self.card = self.full_card.native_card()
            if self.full_card.native is not None:
                self.output_name = NATIVE_OUTPUT
        self.precision: Precision = precision
        if precision == "int8":
            if self.card.int8 is None:
                raise EncoderError(
                    f"{self.card.name} has no accepted int8 variant: run `tandem models quantize`"
                )
            model_file = folder / self.card.int8.file
        else:
            model_file = folder / self.card.onnx_file
        self.model_file = model_file
        self.session = _session(model_file, device, threads, spinning)
        self.providers: list[str] = self.session.get_providers()
        # Dynamic int8 quantizes activations with one range per run: a query's
        # vector would move with its batch mates (cosine down to 0.988 measured).
        # One text per run keeps every vector a function of its own text alone.
        self.row_by_row = precision == "int8"
        self.lanes = 1
        if self.row_by_row and self.providers[0] == "CPUExecutionProvider":
            # Rows of a batch run in parallel, one core each, on a one-thread
            # session: a short text splits badly across cores (measured: int8
            # rows at 690/s per core alone, 970/s on two cores in one session).
            self.lanes = threads or _usable_cores()
        self._narrow = _session(model_file, device, 1, spinning) if self.lanes > 1 else None
        self._lane_pool = (
            ThreadPoolExecutor(self.lanes - 1, thread_name_prefix="tandem-lane")
            if self.lanes > 1
            else None
        )
        self.tokenizer = Tokenizer.from_file(str(folder / self.card.tokenizer_file))
        self.pad_id = _pad_id(self.tokenizer)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.card.max_length)

    @property
    def dim(self) -> int:
        return self.card.dim

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def native_card(self) -> ModelCard:
        """The card of the native vector ``forward_both`` returns second."""
        return self.full_card.native_card()

    def prefixed(self, texts: Sequence[str], kind: TextKind) -> list[str]:
        prefix = self.card.query_prefix if kind == "query" else self.card.document_prefix
        return [prefix + t for t in texts] if prefix else list(texts)

    def tokenize(self, texts: Sequence[str], kind: TextKind = "query") -> TokenBatch:
        """Tokenize, truncate at the model's max length, and pad to the longest text."""
        return self._pad(self.tokenizer.encode_batch(self.prefixed(texts, kind)))

    def tokenize_rows(self, texts: Sequence[str], kind: TextKind = "query") -> TokenRows:
        """Tokenize once into unpadded rows, with a truncation flag per text.

        Text by text in the calling thread: ``encode_batch`` hands even one text
        to the tokenizers' thread pool, whose wake-up under a busy ONNX run cost
        a third of the server's event-loop time (py-spy, 32 concurrent clients).
        """
        encodings = [self.tokenizer.encode(text) for text in self.prefixed(texts, kind)]
        return TokenRows(
            [np.asarray(e.ids, dtype=np.int64) for e in encodings],
            [bool(e.overflowing) for e in encodings],
        )

    def pad_rows(self, rows: Sequence[npt.NDArray[np.int64]]) -> TokenBatch:
        """Pad rows (of any number of requests) to the longest, in one allocation."""
        seq = max((len(r) for r in rows), default=1) or 1
        ids = np.full((len(rows), seq), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), seq), dtype=np.int64)
        for row, r in enumerate(rows):
            ids[row, : len(r)] = r
            mask[row, : len(r)] = 1
        return TokenBatch(ids, mask, 0)

    def _pad(self, encodings: Sequence[Encoding]) -> TokenBatch:
        seq = max((len(e.ids) for e in encodings), default=1) or 1
        ids = np.full((len(encodings), seq), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), seq), dtype=np.int64)
        n_truncated = 0
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
            n_truncated += bool(enc.overflowing)
        return TokenBatch(ids, mask, n_truncated)

    def forward(self, batch: TokenBatch) -> npt.NDArray[np.float32]:
        """One ONNX run; returns L2-normalized embeddings (n, dim)."""
        if batch.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        (out,) = self._run([self.output_name], batch)
        return out

    def forward_both(
        self, batch: TokenBatch
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One ONNX run, two vectors: (main output (n, dim), native output (n, native dim)).

        For an aligned student these are the teacher-space and the student's own
        vector; a one-output model returns its vector twice.
        """
        if batch.size == 0:
            empty = np.zeros((0, self.dim), dtype=np.float32)
            return empty, np.zeros((0, self.native_card.dim), dtype=np.float32)
        if self.full_card.native is None:
            (out,) = self._run([OUTPUT_NAME], batch)
            return out, out
        main, native = self._run([OUTPUT_NAME, NATIVE_OUTPUT], batch)
        return main, native

    def _run(self, names: list[str], batch: TokenBatch) -> list[npt.NDArray[np.float32]]:
        if self.row_by_row and batch.size > 1:
            return self._run_rows(names, batch)
        return self._run_session(self.session, names, batch.input_ids, batch.attention_mask)

    def _run_rows(self, names: list[str], batch: TokenBatch) -> list[npt.NDArray[np.float32]]:
        """Each row alone, unpadded; rows spread over the lanes (this thread is one)."""
        lengths = batch.attention_mask.sum(axis=1).tolist()
        session = self._narrow or self.session
        outs: list[list[npt.NDArray[np.float32]] | None] = [None] * batch.size
        cursor = iter(range(batch.size))
        lock = threading.Lock()

        def lane() -> None:
            while True:
                with lock:
                    row = next(cursor, None)
                if row is None:
                    return
                n = lengths[row]
                outs[row] = self._run_session(
                    session,
                    names,
                    batch.input_ids[row : row + 1, :n],
                    batch.attention_mask[row : row + 1, :n],
                )

        helpers = (
            [self._lane_pool.submit(lane) for _ in range(self.lanes - 1)] if self._lane_pool else []
        )
        lane()
        for helper in helpers:
            helper.result()
        return [np.vstack([out[o] for out in outs if out is not None]) for o in range(len(names))]

    def _run_session(
        self,
        session: ort.InferenceSession,
        names: list[str],
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64],
    ) -> list[npt.NDArray[np.float32]]:
        try:
            outs = session.run(names, {"input_ids": input_ids, "attention_mask": attention_mask})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EncoderError(f"{self.card.name}: ONNX run failed: {exc}") from exc
        return [np.asarray(out, dtype=np.float32) for out in outs]

    def encode(
        self,
        texts: Sequence[str],
        kind: TextKind = "document",
        token_budget: int = 16384,
        max_batch: int = 128,
        on_batch: Callable[[int], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Embed texts in length-sorted batches; rows come back in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(self.prefixed(texts, kind))
        lengths = [len(e.ids) for e in encodings]
        for batch_ids in plan_batches(lengths, token_budget, max_batch):
            batch = self._pad([encodings[i] for i in batch_ids])
            out[batch_ids] = self.forward(batch)
            if on_batch is not None:
                on_batch(len(batch_ids))
        return out


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _session(
    model_file: Path, device: Device, threads: int | None, spinning: bool
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if spinning:
        # Spin between the parallel sections of a run (waking a sleeping thread
        # costs each section), but stop when the run returns: left alone, idle
        # threads spin on for milliseconds and burn a core between requests
        # (measured: 4.4 vs 2.5 ms CPU per int8 query arriving every 2 ms, for
        # p50 1.11 vs 1.19 ms; without spinning, 1.8 ms).
        options.add_session_config_entry("session.force_spinning_stop", "1")
    else:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(model_file), sess_options=options, providers=_providers(device)
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise EncoderError(f"cannot load {model_file}: {exc}") from exc


def _pad_id(tokenizer: Tokenizer) -> int:
    padding = tokenizer.padding
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0
