"""Dynamic int8 ONNX variants, accepted only if they keep the fp32 vectors.

Naive dynamic quantization of every MatMul hurts transformer encoders badly
(measured here: mpnet drops to cosine 0.75 with its fp32 self) because the
attention score products (activation × activation) and the embedding gathers
are quantized with per-tensor ranges computed on the fly. We quantize only the
weight MatMuls, per output channel, and keep the attention products and
gathers in fp32. The result is compared with fp32 on varied texts; below the
guard's threshold it is refused and nothing is written to the card.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from tandem.models.card import ModelCard, QuantizedFile
from tandem.models.encoder import Encoder
from tandem.toolchain.export import PARITY_TEXTS

from tandem.errors import ModelError

logger = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
DEFAULT_MIN_MEAN_COSINE = 0.99
DEFAULT_MIN_COSINE = 0.95  # the worst single text (near-empty strings, emoji) may drift more


class QuantizationRefused(ModelError):
    """The int8 model drifted too far from fp32 and was not accepted."""


@dataclass(frozen=True)
class QuantConfig:
    """Which parts of the graph to quantize, and how."""

    per_channel: bool = True
    weights_only: bool = True  # skip MatMuls whose inputs are both activations
    op_types: tuple[str, ...] = ("MatMul",)
    exclude_ffn_down: bool = False  # keep FFN down-projections (outlier-heavy inputs) in fp32
    exclude_ffn_up: bool = False
    extra_exclude: tuple[str, ...] = field(default=())

    @classmethod
    def naive(cls) -> QuantConfig:
        """Everything quantizable, per tensor: the baseline that drifts."""
        return cls(per_channel=False, weights_only=False, op_types=("MatMul", "Gather", "Gemm"))


def _activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes with no constant input: attention scores and context products."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and not any(i in constants for i in n.input)
    ]


def _ffn_matmuls(model: onnx.ModelProto, down: bool) -> list[str]:
    """MatMuls with a 2-D weight that shrinks (down) or widens (up) the hidden size."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        for name in node.input:
            dims = shapes.get(name)
            if dims is not None and len(dims) == 2 and dims[0] != dims[1]:
                if (dims[0] > dims[1]) == down:
                    found.append(node.name)
    return found


def quantize_int8(
    folder: Path,
    config: QuantConfig | None = None,
    min_mean_cosine: float = DEFAULT_MIN_MEAN_COSINE,
    min_cosine: float = DEFAULT_MIN_COSINE,
    texts: list[str] | None = None,
) -> ModelCard:
    """Write model.int8.onnx next to model.onnx if it passes the guard; update the card."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    config = config or QuantConfig()
    card = ModelCard.load(folder)
    fp32_path = folder / card.onnx_file
    model = onnx.load(str(fp32_path), load_external_data=False)
    exclude = list(config.extra_exclude)
    if config.weights_only:
        exclude += _activation_matmuls(model)
    if config.exclude_ffn_down:
        exclude += _ffn_matmuls(model, down=True)
    if config.exclude_ffn_up:
        exclude += _ffn_matmuls(model, down=False)
    with tempfile.TemporaryDirectory(dir=folder) as tmp, _quiet_root_logger():
        candidate = Path(tmp) / INT8_FILE
        quantize_dynamic(
            str(fp32_path),
            str(candidate),
            weight_type=QuantType.QInt8,
            per_channel=config.per_channel,
            op_types_to_quantize=list(config.op_types),
            nodes_to_exclude=exclude,
        )
        mean, worst = _compare(folder, candidate, texts or PARITY_TEXTS)
        logger.info("%s int8: cosine mean %.4f min %.4f", card.name, mean, worst)
        if mean < min_mean_cosine or worst < min_cosine:
            raise QuantizationRefused(
                f"{card.name}: int8 model drifts from fp32 (cosine mean {mean:.4f}, min "
                f"{worst:.4f}; the guard needs mean >= {min_mean_cosine} and min >= "
                f"{min_cosine}); not accepted"
            )
        candidate.replace(folder / INT8_FILE)
    card.int8 = QuantizedFile(
        file=INT8_FILE,
        cosine_mean=mean,
        cosine_min=worst,
        settings={
            **asdict(config),
            "min_mean_cosine": min_mean_cosine,
            "min_cosine": min_cosine,
            "excluded_nodes": len(exclude),
        },
    )
    card.save(folder)
    return card


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs every tensor (and a hint) on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _compare(folder: Path, int8_path: Path, texts: list[str]) -> tuple[float, float]:
    fp32 = Encoder(folder, device="cpu")
    ref = fp32.encode(texts, kind="document")
    int8 = Encoder(folder, device="cpu")
    int8.session = _session(int8_path)
    got = int8.encode(texts, kind="document")
    cos = np.sum(ref * got, axis=1) / np.maximum(np.linalg.norm(got, axis=1), 1e-12)
    return float(cos.mean()), float(cos.min())


def _session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


LADDER: tuple[tuple[str, QuantConfig], ...] = (
    ("all weight MatMuls", QuantConfig()),
    ("FFN down-projections kept fp32", QuantConfig(exclude_ffn_down=True)),
    ("attention projections only", QuantConfig(exclude_ffn_down=True, exclude_ffn_up=True)),
)


def quantize_best(
    folder: Path,
    min_mean_cosine: float = DEFAULT_MIN_MEAN_COSINE,
    min_cosine: float = DEFAULT_MIN_COSINE,
) -> tuple[ModelCard, list[str]]:
    """Try the ladder from most to least quantized; keep the first the guard accepts.

    Returns the card and one line per attempt; raises QuantizationRefused if none passes.
    """
    attempts: list[str] = []
    for label, config in LADDER:
        try:
            card = quantize_int8(folder, config, min_mean_cosine, min_cosine)
        except QuantizationRefused as exc:
            attempts.append(f"refused ({label}): {exc}")
            continue
        assert card.int8 is not None  # set by quantize_int8 on success
        attempts.append(
            f"accepted ({label}): cosine mean {card.int8.cosine_mean:.4f}, "
            f"min {card.int8.cosine_min:.4f}"
        )
        card.int8.settings["ladder_step"] = label
        card.save(folder)
        return card, attempts
    raise QuantizationRefused("; ".join(attempts))
