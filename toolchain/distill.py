"""LEAF distillation: train the student (+ a projection) to reproduce the teacher.

Recipe (LEAF, arXiv 2509.12539): the teacher is a black box that supplies
target vectors; the loss is the squared L2 distance between the student's and
the teacher's L2-normalized embeddings; no labels, no hard negatives; small
batches; AdamW with linear decay (over the steps, or over the time budget
when that runs out first, so a run on a slow machine still ends annealed).
We start from the ridge adapter so step 0 is already the fast path's
quality, give the projection a higher learning rate
than the transformer, and weight the mix towards short query-like texts,
because queries are all the student embeds in production.
Checkpoints are written atomically every N steps; a stopped run resumes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from tandem.models.sources import ModelSource
from tandem.toolchain.align import Adapter
from tokenizers import Tokenizer

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Training settings; the defaults end within 50 min on 2 CPU cores (annealed by time).

    On a GPU the same defaults finish both epochs in minutes; raise ``epochs``
    (and the pseudo-queries) there rather than the batch size: LEAF trains
    with small batches.
    """

    epochs: float = 2.0
    batch_size: int = 32
    max_length: int = 128
    lr: float = 1e-4
    projection_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    max_minutes: float | None = 50.0
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_student(source: ModelSource, adapter: Adapter) -> torch.nn.Module:
    """normalize(projection(normalize(student(x)))), projection initialised from the adapter."""
    import torch
    from tandem.toolchain.export import pooled_module

    class ProjectedStudent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = pooled_module(source)
            d_in, d_out = adapter.weight.shape
            self.projection = torch.nn.Linear(d_in, d_out)
            with torch.no_grad():
                self.projection.weight.copy_(torch.from_numpy(adapter.weight.T.copy()))
                self.projection.bias.copy_(torch.from_numpy(adapter.bias.copy()))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            pooled = self.encoder(input_ids, attention_mask)
            return torch.nn.functional.normalize(self.projection(pooled), p=2.0, dim=-1)

    return ProjectedStudent()


def export_two_outputs(module: torch.nn.Module, onnx_path: Path) -> None:
    """Export a ProjectedStudent with both outputs: teacher-space and its own pooled vector.

    The native vector is computed on the way to the projection, so fused
    scoring gets it from the same forward pass.
    """
    import torch
    from tandem.models.encoder import INPUT_NAMES, NATIVE_OUTPUT, OUTPUT_NAME
    from tandem.toolchain.export import OPSET, _dummy_inputs

    class BothOutputs(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            pooled: torch.Tensor = self.inner.encoder(input_ids, attention_mask)  # type: ignore[operator]
            projected: torch.Tensor = self.inner.projection(pooled)  # type: ignore[operator]
            return torch.nn.functional.normalize(projected, p=2.0, dim=-1), pooled

    wrapper = BothOutputs(module).eval()
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            _dummy_inputs(),
            str(onnx_path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME, NATIVE_OUTPUT],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
                NATIVE_OUTPUT: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def distill(
    module: torch.nn.Module,
    tokenizer_file: Path,
    texts: list[str],
    targets: npt.NDArray[np.float32],
    config: DistillConfig,
    work_dir: Path,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, float]:
    """Train ``module`` in place on (text, teacher vector) pairs; resumes from work_dir."""
    import torch

    device = _device(config.device)
    torch.manual_seed(config.seed)
    module.to(device).train()
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(config.max_length)
    pad_id = tokenizer.token_to_id("[PAD]") or tokenizer.token_to_id("<pad>") or 0

    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    total_steps = max(1, int(steps_per_epoch * config.epochs))
    head = [p for n, p in module.named_parameters() if n.startswith("projection.")]
    body = [p for n, p in module.named_parameters() if not n.startswith("projection.")]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": config.lr}, {"params": head, "lr": config.projection_lr}],
        weight_decay=config.weight_decay,
    )
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(texts)], dtype=np.int64)
    tokenizer.enable_padding(pad_id=pad_id)
    batches = length_bucketed_batches(
        lengths, config.batch_size, math.ceil(config.epochs), config.seed
    )
    step, spent = 0, 0.0  # spent: training minutes of earlier runs of this job
    ckpt = work_dir / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, spent = int(state["step"]), float(state.get("minutes", 0.0))
        logger.info("resuming distillation at step %d/%d", step, total_steps)

    target_t = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    started = time.monotonic()
    losses: list[float] = []

    def minutes() -> float:
        return spent + (time.monotonic() - started) / 60

    progress = training_progress(step, total_steps, minutes(), config.max_minutes)
    while progress < 1.0:
        factor = lr_factor(progress, config.warmup_fraction)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        rows = batches[step]
        encodings = tokenizer.encode_batch([texts[i] for i in rows])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long, device=device)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long, device=device)
        out = module(ids, mask)
        loss = ((out - target_t[rows].to(device)) ** 2).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, total_steps, losses[-1])
        progress = training_progress(step, total_steps, minutes(), config.max_minutes)
        if step % config.checkpoint_every == 0 or progress >= 1.0:
            _save_checkpoint(ckpt, module, optimizer, step, minutes())
    if step < total_steps:
        logger.warning(
            "the time budget (%.0f min) ended the schedule at step %d/%d",
            config.max_minutes,
            step,
            total_steps,
        )
    module.eval()
    tail = losses[-50:] or [float("nan")]
    return {
        "steps": float(step),
        "total_steps": float(total_steps),
        "final_loss": float(np.mean(tail)),
        "minutes": minutes(),
    }


def length_bucketed_batches(
    lengths: npt.NDArray[np.int64], batch_size: int, epochs: int, seed: int, window: int = 64
) -> list[npt.NDArray[np.int64]]:
    """Shuffled batches of texts of similar length, ``epochs`` passes over every row.

    A batch is padded to its longest text, so one 128-token passage in a batch
    of 8-token queries makes the whole batch cost as much as passages. Sorting
    by length inside random windows of ``window`` batches keeps batches
    homogeneous (several times fewer padded tokens on query-heavy mixes) while
    the order of batches stays random. Deterministic in ``seed``, so a resumed
    run replays the same batches.
    """
    rng = np.random.default_rng(seed)
    batches: list[npt.NDArray[np.int64]] = []
    span = batch_size * window
    for _ in range(epochs):
        perm = rng.permutation(len(lengths))
        epoch: list[npt.NDArray[np.int64]] = []
        for start in range(0, len(perm), span):
            chunk = perm[start : start + span]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            epoch += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        batches += [epoch[i] for i in rng.permutation(len(epoch))]
    return batches


def training_progress(
    step: int, total_steps: int, minutes: float, max_minutes: float | None
) -> float:
    """How far through the schedule a run is: by steps, or by time if that is further.

    Following the time budget too means a run cut short by a slow or busy
    machine still warms up, decays to zero and ends annealed, instead of
    stopping at a high learning rate part-way through a step schedule.
    """
    by_steps = step / total_steps
    if max_minutes is None:
        return by_steps
    return max(by_steps, minutes / max_minutes)


def lr_factor(progress: float, warmup_fraction: float) -> float:
    """Linear warm-up over the first ``warmup_fraction``, then linear decay to zero."""
    if progress < warmup_fraction:
        return max(progress / warmup_fraction, 0.01)
    return max(0.0, (1.0 - progress) / (1.0 - warmup_fraction))


def _save_checkpoint(path: Path, module, optimizer, step: int, minutes: float) -> None:  # type: ignore[no-untyped-def]
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "minutes": minutes,
        },
        tmp,
    )
    os.replace(tmp, path)


def config_dict(config: DistillConfig) -> dict[str, object]:
    return asdict(config)
