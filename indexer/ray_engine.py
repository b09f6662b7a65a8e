"""Teacher embedding on Ray Data: shards of the staged corpus through an actor pool.

The builder stages the corpus as usual (ids checked, documents numbered in
``docs.sqlite``); this engine then embeds it in shards of ``shard_size``
consecutive internal ids. The Ray dataset holds one small row per pending
shard; ``map_batches`` sends each to an actor of a pool (one teacher per
actor, the CUDA provider when the actor has a GPU), which reads the shard's
texts from the staged docstore, embeds them and writes
``shard-NNNNN.parquet`` (id, float16 vector; see embeddings.py) atomically.
The builder assembles the bundle from those files exactly as it does for
``--from-embeddings``.

Resuming skips every shard already on disk. An actor that dies is restarted
and its shard retried up to ``retries`` times; after that the build fails,
naming the shards left, and nothing is published. The work folder (and the
teacher export) must be on storage every Ray node mounts: a local folder on
one machine, a shared volume on a cluster (deploy/k8s/components/ray-indexing).

Ray is imported only when this engine runs: the base install does not need it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from tandem.bundle.docstore import DocReader
from tandem.indexer.embeddings import ShardsManifest, shard_rows, write_shard
from tandem.models.encoder import Device, Encoder

logger = logging.getLogger(__name__)

SHARDS_DIR = "embeddings"
DEFAULT_SHARD_SIZE = 1024  # docs per shard: the unit of retry and of resume
DEFAULT_RETRIES = 2
FAULT_MARKER = ".fault-{shard}-{attempt}"


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


@dataclass(frozen=True)
class InjectedFault:
    """Kill the actor process when it starts ``shard``, ``times`` times (fault tests)."""

    shard: int
    times: int = 1


@dataclass(frozen=True)
class RayEngine:
    """How to run the teacher on Ray: where, how many actors, what each holds."""

    teacher_dir: Path
    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    shard_size: int = DEFAULT_SHARD_SIZE
    retries: int = DEFAULT_RETRIES
    batch_tokens: int = 16384
    max_batch: int = 128
    precision: Literal["fp32", "int8"] = "fp32"
    fault: InjectedFault | None = None

    def __post_init__(self) -> None:
        if self.actors < 1 or self.shard_size < 1 or self.retries < 0:
            raise ValueError("actors and shard size must be positive, retries non-negative")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError("cpus per actor must be positive, gpus per actor non-negative")

    def identity(self) -> dict[str, Any]:
        """What changes the work folder's layout (a resume must keep it)."""
        return {"engine": "ray", "shard_size": self.shard_size}

    def embed(self, work: Path, n_docs: int, docs: Path, teacher: Encoder, progress: Any) -> Path:
        """Write every missing shard under ``work/embeddings``; returns that folder."""
        import ray
        import ray.data

        out = work / SHARDS_DIR
        ShardsManifest(teacher.card.name, teacher.card.fingerprint, teacher.dim).write(out)
        n_shards = math.ceil(n_docs / self.shard_size)
        pending = [s for s in range(n_shards) if not self._done(out, s, n_docs)]
        progress.phase("embedding (ray)", total=n_docs, done=n_docs - self._rows(pending, n_docs))
        if not pending:
            return out
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError...
                where = self.address or "a local Ray instance"
                raise RuntimeError(f"cannot start or reach Ray at {where}: {exc}") from exc
        ray.data.DataContext.get_current().enable_progress_bars = False
        logger.info(
            "embedding %d shard(s) of %d docs on Ray (%d actor(s), %g GPU each)",
            len(pending),
            self.shard_size,
            self.actors,
            self.gpus_per_actor,
        )
        items = [
            {
                "shard": s,
                "start": s * self.shard_size,
                "stop": min(n_docs, (s + 1) * self.shard_size),
            }
            for s in pending
        ]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        embedded = dataset.map_batches(
            ShardEmbedder,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_cpus=self.cpus_per_actor,
            num_gpus=self.gpus_per_actor,
            max_restarts=self.retries,
            max_task_retries=self.retries,
            fn_constructor_kwargs={
                "teacher_dir": str(self.teacher_dir),
                "fingerprint": teacher.card.fingerprint,
                "precision": self.precision,
                "use_gpu": self.gpus_per_actor > 0,
                "threads": max(1, int(self.cpus_per_actor)),
                "docs": str(docs),
                "out": str(out),
                "batch_tokens": self.batch_tokens,
                "max_batch": self.max_batch,
                "fault": self.fault,
            },
        )
        try:
            for row in embedded.iter_rows():
                progress.advance(int(row["rows"]))
        except Exception as exc:
            left = [s for s in pending if not self._done(out, s, n_docs)]
            raise RayEmbeddingError(left, exc) from exc
        finally:
            if started_here:
                ray.shutdown()
        left = [s for s in pending if not self._done(out, s, n_docs)]
        if left:
            raise RayEmbeddingError(left, None)
        return out

    def _rows(self, shards: list[int], n_docs: int) -> int:
        return sum(min(n_docs, (s + 1) * self.shard_size) - s * self.shard_size for s in shards)

    def _done(self, out: Path, shard: int, n_docs: int) -> bool:
        path = out / shard_name(shard)
        return path.exists() and shard_rows(path) == self._rows([shard], n_docs)


class RayEmbeddingError(RuntimeError):
    """Ray could not embed every shard; names them (finished shards are kept for --resume)."""

    def __init__(self, shards: list[int], cause: BaseException | None) -> None:
        self.shards = shards
        named = ", ".join(shard_name(s) for s in shards[:5]) + (" ..." if len(shards) > 5 else "")
        reason = f": {_first_line(cause)}" if cause is not None else ""
        super().__init__(
            f"Ray embedding failed; {len(shards)} shard(s) not written ({named}){reason}. "
            "Finished shards are kept: rerun with --resume"
        )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


class ShardEmbedder:
    """One Ray actor: a teacher loaded once, embedding whole shards into Parquet files."""

    def __init__(
        self,
        teacher_dir: str,
        fingerprint: str,
        precision: Literal["fp32", "int8"],
        use_gpu: bool,
        threads: int,
        docs: str,
        out: str,
        batch_tokens: int,
        max_batch: int,
        fault: InjectedFault | None,
    ) -> None:
        device: Device = "cuda" if use_gpu else "cpu"
        self.encoder = Encoder(Path(teacher_dir), precision, device, threads)
        if self.encoder.card.fingerprint != fingerprint:
            raise RuntimeError(
                f"the teacher at {teacher_dir} on this node is "
                f"{self.encoder.card.fingerprint[:12]}, the build uses {fingerprint[:12]}: "
                "mount the same model export on every node"
            )
        self.docs = DocReader(Path(docs))
        self.out = Path(out)
        self.batch_tokens = batch_tokens
        self.max_batch = max_batch
        self.fault = fault

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        rows, seconds = [], []
        for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"], strict=True):
            self._maybe_fail(int(shard))
            started = time.perf_counter()
            documents = self.docs.get(list(range(int(start), int(stop))))
            vectors = self.encoder.encode(
                [d.text for d in documents],
                "document",
                token_budget=self.batch_tokens,
                max_batch=self.max_batch,
            )
            if not np.isfinite(vectors).all():
                raise RuntimeError(f"the teacher produced non-finite vectors in shard {shard}")
            write_shard(self.out / shard_name(int(shard)), [d.id for d in documents], vectors)
            rows.append(len(documents))
            seconds.append(time.perf_counter() - started)
        return {"shard": batch["shard"], "rows": np.array(rows), "seconds": np.array(seconds)}

    def _maybe_fail(self, shard: int) -> None:
        if self.fault is None or self.fault.shard != shard:
            return
        for attempt in range(self.fault.times):
            marker = self.out / FAULT_MARKER.format(shard=shard, attempt=attempt)
            if not marker.exists():
                marker.touch()
                logger.warning("injected fault: killing the actor at shard %d", shard)
                os._exit(1)
