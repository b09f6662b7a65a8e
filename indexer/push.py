"""Bundle -> Milvus: a new versioned collection, then an atomic switch of the client name.

``tandem index push BUNDLE --milvus URI --collection NAME`` writes the
bundle's current version into ``NAME_vNNNN`` (the next free number): ids,
text and metadata, the full-dimension float16 vectors, and one field per
pushed variant (see tandem.bundle.milvus for the layout). Only when every row
is in, flushed, indexed and loaded does ``NAME`` move to it (an alias, or the
pointer row where the engine has no aliases), so clients see the old version
or the new one, never half of one, just as with the bundle's ``current``
link. Versions older than the newest ``keep`` are dropped afterwards (never
the live one); a push that fails drops its own half-written collection.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tandem.bundle.backend import BackendError
from tandem.bundle.format import open_bundle
from tandem.bundle.milvus import (
    MAX_VECTOR_FIELDS,
    MilvusSetupError,
    connect,
    field_for,
    point_alias,
    resolve,
    rows_for,
    schema_for,
    vector_fields,
    version_name,
    versions_of,
)
from tandem.bundle.variants import VariantSpec

logger = logging.getLogger(__name__)

PUSH_BATCH = 512  # rows per insert call (~1 MiB of float16 at 768 dims)
DEFAULT_KEEP = 2


@dataclass(frozen=True)
class Pushed:
    """What a push did: the collection written, how the name points at it, what was dropped."""

    collection: str
    alias: str
    switched_by: str
    variants: list[str]
    n_docs: int
    dropped: list[str]


def pushable_variants(names: list[str], dim: int) -> list[str]:
    """The bundle variants Milvus can hold (flat float and binary), in the bundle's order."""
    return [n for n in names if field_for(VariantSpec.parse(n, dim), dim) is not None]


def push_bundle(
    bundle_path: Path,
    uri: str,
    alias: str,
    *,
    token: str | None = None,
    variants: list[str] | None = None,
    keep: int = DEFAULT_KEEP,
) -> Pushed:
    """Push a bundle version to Milvus and switch ``alias`` to it; see the module doc."""
    if keep < 1:
        raise MilvusSetupError("--keep must be at least 1 (the live version)")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", alias) or re.search(r"_v\d{4,}$", alias):
        raise MilvusSetupError(
            f"collection name {alias!r}: use letters, digits and underscores, not ending in _vNNNN"
        )
    with open_bundle(bundle_path) as bundle:
        manifest = bundle.manifest
        dim = manifest.dim
        available = bundle.variant_names()
        chosen = variants or pushable_variants(available, dim)
        for name in chosen:
            if name not in available:
                raise MilvusSetupError(
                    f"variant {name} is not in bundle {bundle.version}: "
                    f"it has {', '.join(available)}"
                )
            if field_for(VariantSpec.parse(name, dim), dim) is None:
                raise MilvusSetupError(
                    f"variant {name} has no Milvus field (flat f32-D and bin-D variants push; "
                    "int8, ivfpq and -hnsw are FAISS structures)"
                )
        if not chosen:
            raise MilvusSetupError(
                f"bundle {bundle.version} has no variant Milvus can hold (f32-D, bin-D): "
                "add one with `tandem index add-variant`"
            )
        if len(vector_fields(chosen, dim)) > MAX_VECTOR_FIELDS:
            raise MilvusSetupError(
                f"variants {', '.join(chosen)} need {len(vector_fields(chosen, dim))} vector "
                f"fields; Milvus allows {MAX_VECTOR_FIELDS} per collection (the full float16 "
                f"vectors take one): choose fewer with --variants"
            )
        client = connect(uri, token)
        try:
            existing = versions_of(client, alias)
            last = int(existing[-1].rsplit("_v", 1)[1]) if existing else 0
            collection = version_name(alias, last + 1)
            schema, index = schema_for(manifest, chosen)
            client.create_collection(collection, schema=schema, index_params=index)
            try:
                for start in range(0, bundle.n_docs, PUSH_BATCH):
                    stop = min(bundle.n_docs, start + PUSH_BATCH)
                    pks = list(range(start, stop))
                    docs = bundle.documents(pks)
                    vectors = bundle.vectors[start:stop]
                    client.insert(collection, rows_for(pks, docs, vectors, chosen, dim))
                client.flush(collection)
                client.load_collection(collection)
                counted = client.query(collection, filter="", output_fields=["count(*)"])
                n = int(counted[0]["count(*)"])
                if n != bundle.n_docs:
                    raise MilvusSetupError(f"{collection} holds {n} rows, expected {bundle.n_docs}")
                how = point_alias(client, alias, collection)
            except BaseException:
                client.drop_collection(collection)
                raise
            live, _how = resolve(client, alias)
            dropped = [c for c in versions_of(client, alias)[:-keep] if c != live]
            for old in dropped:
                client.drop_collection(old)
            logger.info("pushed %s to %s as %s (%s)", bundle.version, uri, collection, how)
            return Pushed(collection, alias, how, chosen, bundle.n_docs, dropped)
        except BackendError:
            raise
        except Exception as exc:  # pymilvus raises MilvusException and grpc errors
            raise MilvusSetupError(f"push to Milvus at {uri} failed: {exc}") from exc
        finally:
            client.close()
