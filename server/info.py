"""The /info document: enough to tell what a worker serves and how, without a shell."""

from __future__ import annotations

import os
from typing import Any

import faiss
from tandem.bundle.placement import faiss_gpus
from tandem.server.search import SearchService


def fused_info(service: SearchService) -> dict[str, Any]:
    """The search modes: the default, and the fused weight and student view when available."""
    loaded = service.loaded
    views = []
    for name, view in loaded.bundle.views.items():
        views.append(
            {
                "name": name,
                "encoder": view.info.encoder_name,
                "fingerprint": view.info.fingerprint,
                "dim": view.dim,
                "variants": [
                    {
                        "name": view.qualified(v),
                        "bytes": info.bytes,
                        "device": loaded.student_devices.get(v),
                    }
                    for v, info in view.info.variants.items()
                ],
                "fused_weight": view.info.fused_weight,
                "fused_weight_source": view.info.fused_weight_source,
            }
        )
    weight = service.settings.fused_weight
    if weight is None:
        weight = loaded.fused_weight
    return {
        "default_mode": service.settings.mode,
        "modes": ["asymmetric"] + (["fused"] if loaded.student_target is not None else []),
        "fused_weight": weight if loaded.student_target is not None else None,
        "fused_unavailable": loaded.fused_reason,
        "views": views,
    }


def describe(service: SearchService) -> dict[str, Any]:
    """What /info shows: the bundle and variants served, the student, devices, batching."""
    loaded = service.loaded
    manifest = loaded.bundle.manifest
    card = service.encoder.card
    variants = []
    for name, spec in loaded.specs.items():
        vinfo = manifest.variants.get(name)
        variants.append(
            {
                "name": name,
                "kind": spec.kind,
                "dim": spec.dim,
                "hnsw": spec.hnsw,
                "bytes": vinfo.bytes if vinfo else None,
                "ntotal": vinfo.ntotal if vinfo else None,
                # what a document costs in this variant's index (the size trade-off)
                "bytes_per_doc": round(vinfo.bytes / vinfo.ntotal, 2)
                if vinfo and vinfo.ntotal
                else None,
                "device": loaded.devices[name],
            }
        )
    devices = set(loaded.devices.values())
    return {
        "search": fused_info(service),
        "bundle": {
            "root": str(service.settings.bundle),
            "version_dir": str(loaded.version_dir),
            "version": loaded.version,
            "n_docs": loaded.n_docs,
            "dim": loaded.dim,
            "vectors_dtype": manifest.vectors_dtype,
            "created_at": manifest.created_at,
            "loaded_at": loaded.loaded_at,
            "teacher": {
                "name": manifest.teacher_name,
                "fingerprint": manifest.teacher_fingerprint,
            },
            "variants": variants,
            "default_variant": loaded.default_variant,
        },
        "student": {
            "name": card.name,
            "fingerprint": card.fingerprint,
            "dim": card.dim,
            "max_length": card.max_length,
            "precision": service.encoder.precision,
            "providers": service.encoder.providers,
            "pairing": loaded.pairing,
            "aligned_to": card.aligned_to.model_dump(mode="json") if card.aligned_to else None,
        },
        "faiss": {
            "version": getattr(faiss, "__version__", "unknown"),
            "gpus": faiss_gpus(),
            "device": devices.pop() if len(devices) == 1 else "mixed",
        },
        "batching": {
            "max_batch_size": service.settings.max_batch_size,
            "max_batch_tokens": service.settings.max_batch_tokens,
            "max_wait_ms": service.settings.max_wait_ms,
            "max_queue": service.settings.max_queue,
            "in_flight": service.batcher.admitted,
            "healthy": service.batcher.healthy,
            "last_error": service.batcher.last_error,
        },
        "pid": os.getpid(),
    }
