"""LEAF distillation: train the student (+ a projection) to reproduce the teacher.

Recipe (LEAF, arXiv 2509.12539): the teacher is a black box that supplies
target vectors; the loss is the squared L2 distance between the student's and
the teacher's L2-normalized embeddings; no labels, no hard negatives; small
batches; AdamW with linear decay. We start from the ridge adapter so step 0 is
already the fast path's quality, give the projection a higher learning rate
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
from tokenizers import Tokenizer

from models.align import Adapter
from models.sources import ModelSource

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Training settings; the defaults fit in under an hour on 2 CPU cores."""

    epochs: float = 1.0
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

    from models.export import pooled_module

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
    warmup = max(1, int(total_steps * config.warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(texts)], dtype=np.int64)
    tokenizer.enable_padding(pad_id=pad_id)
    batches = length_bucketed_batches(
        lengths, config.batch_size, math.ceil(config.epochs), config.seed
    )
    step = 0
    ckpt = work_dir / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        logger.info("resuming distillation at step %d/%d", step, total_steps)

    target_t = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    started = time.monotonic()
    losses: list[float] = []
    while step < total_steps:
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
        scheduler.step()
        step += 1
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, total_steps, losses[-1])
        out_of_time = (
            config.max_minutes is not None
            and (time.monotonic() - started) / 60 > config.max_minutes
        )
        if step % config.checkpoint_every == 0 or step == total_steps or out_of_time:
            _save_checkpoint(ckpt, module, optimizer, scheduler, step)
        if out_of_time:
            logger.warning(
                "distillation stopped by its time budget at step %d/%d", step, total_steps
            )
            break
    module.eval()
    tail = losses[-50:] or [float("nan")]
    return {
        "steps": float(step),
        "total_steps": float(total_steps),
        "final_loss": float(np.mean(tail)),
        "minutes": (time.monotonic() - started) / 60,
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


def _save_checkpoint(path: Path, module, optimizer, scheduler, step: int) -> None:  # type: ignore[no-untyped-def]
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
        },
        tmp,
    )
    os.replace(tmp, path)


def config_dict(config: DistillConfig) -> dict[str, object]:
    return asdict(config)
