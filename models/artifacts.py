"""Find or build the ONNX artifact for a model spec, cached by the hash of its inputs.

An artifact is a folder with ``card.json``, ``tokenizer.json``, ``model.onnx``
and, once quantized, ``model.int8.onnx``. Specs resolve in this order: an
artifact folder; an aligned student by name (``$TANDEM_HOME/aligned/NAME``);
anything ``tandem.models.sources`` resolves, once exported into the cache.
Finding is all this module does: exporting needs torch and lives in
``tandem.toolchain.export`` (``tandem models export SPEC``), so serving and
indexing never import it.
"""

from __future__ import annotations

from pathlib import Path

from tandem.models.card import CARD_FILE
from tandem.models.sources import ModelSource, resolve_source

from tandem.errors import ModelError
from tandem.home import sha256_file, stable_hash, tandem_home

EXPORT_FORMAT = 1  # bump when the exported graph changes, so caches are rebuilt


class ArtifactError(ModelError):
    """No artifact exists for a spec and none can be built here."""


class ArtifactNotExported(ArtifactError):
    """The spec resolves to a model whose ONNX export is not in the cache yet."""

    def __init__(self, spec: str, source: ModelSource, target: Path) -> None:
        super().__init__(
            f"{spec!r} has not been exported to ONNX yet: run `tandem models export {spec}`"
        )
        self.spec = spec
        self.source = source
        self.target = target  # where the export belongs


def aligned_dir(name: str) -> Path:
    return tandem_home() / "aligned" / name


def find_artifact(spec: str) -> Path | None:
    """The artifact folder for spec if one exists already; never exports."""
    path = Path(spec).expanduser()
    if (path / CARD_FILE).exists():
        return path
    if "/" not in spec and (aligned_dir(spec) / CARD_FILE).exists():
        return aligned_dir(spec)
    return None


def find_exported(spec: str) -> Path | None:
    """The artifact for spec if it was exported here already; never exports or downloads."""
    found = find_artifact(spec)
    if found is not None:
        return found
    target = export_dir(resolve_source(spec, offline=True))
    return target if (target / CARD_FILE).exists() else None


def export_dir(source: ModelSource) -> Path:
    key = stable_hash(
        EXPORT_FORMAT,
        source.name,
        [(p.name, p.stat().st_size, sha256_file(p)) for p in _weight_files(source.folder)],
        sha256_file(source.folder / "tokenizer.json"),
        source.pooling,
        source.max_length,
        source.query_prefix,
        source.document_prefix,
        *_declarations(source),
    )
    return tandem_home() / "onnx" / f"{source.name}-{key}"


def resolve_artifact(spec: str) -> Path:
    """The artifact folder for spec; raises ArtifactNotExported naming the export command."""
    found = find_artifact(spec)
    if found is not None:
        return found
    source = resolve_source(spec)
    target = export_dir(source)
    if (target / CARD_FILE).exists():
        return target
    raise ArtifactNotExported(spec, source, target)


def _declarations(source: ModelSource) -> list[object]:
    """Card facts that do not change the vectors; in the key only when set, so old caches hold."""
    extra: list[object] = []
    if source.matryoshka_dims:
        extra.append(("matryoshka", list(source.matryoshka_dims)))
    if source.upstream_teacher:
        extra.append(("upstream", source.upstream_teacher))
    return extra


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors")) or sorted(folder.rglob("pytorch_model*.bin"))
