"""Where each served variant's FAISS index lives: GPU 0 when asked or available, else the CPU."""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

import faiss
from tandem.bundle.variants import VariantSpec

logger = logging.getLogger(__name__)

FaissDevice = Literal["auto", "cpu", "cuda"]


class PlacementError(RuntimeError):
    """The asked device cannot hold the indexes (``cuda`` without a GPU FAISS)."""


_gpu_resources: Any = None
_gpu_lock = threading.Lock()


def faiss_gpus() -> int:
    """GPUs visible to this FAISS build (0 for faiss-cpu)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def place_index(spec: VariantSpec, index: Any, want: FaissDevice) -> tuple[Any, str]:
    """Move an index to GPU 0 when asked or available and FAISS has a GPU form of it.

    ``cuda`` fails only when FAISS sees no GPU at all; variants without a GPU
    form (HNSW graphs, plain scalar quantizers) stay on the CPU either way, and
    /info says where each one lives.
    """
    if want == "cpu":
        return index, "cpu"
    if faiss_gpus() == 0:
        if want == "cuda":
            raise PlacementError("faiss_device=cuda, but this FAISS build sees no GPU")
        return index, "cpu"
    if spec.hnsw:
        return index, "cpu"  # GPU FAISS has no HNSW; the graph stays on the CPU
    global _gpu_resources
    with _gpu_lock:
        if _gpu_resources is None:
            _gpu_resources = faiss.StandardGpuResources()
        resources = _gpu_resources
    try:
        if spec.is_binary:
            return faiss.GpuIndexBinaryFlat(resources, index), "cuda"
        return faiss.index_cpu_to_gpu(resources, 0, index), "cuda"
    except RuntimeError as exc:  # FAISS reports index types without a GPU form this way
        logger.warning("variant %s stays on the CPU (no GPU form): %s", spec.name, exc)
        return index, "cpu"
