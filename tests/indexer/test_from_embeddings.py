"""`--from-embeddings`: a bundle assembled from Parquet shards another job wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tandem.bundle.format import Bundle, open_bundle
from tandem.indexer.build import BuildError, ShardFolder, build_bundle
from tandem.indexer.embeddings import ShardsManifest, write_shard
from tandem.models.encoder import Encoder

from tandem.data.corpus import read_corpus

VARIANTS = ["f32-768", "bin-768"]


def shards_of(bundle: Bundle, folder: Path, teacher: Encoder, parts: int = 3) -> Path:
    """The bundle's vectors as shards in a scrambled order, as a foreign job might write them."""
    ShardsManifest(teacher.card.name, teacher.card.fingerprint, teacher.dim).write(folder)
    ids = bundle.external_ids()
    order = np.random.default_rng(7).permutation(len(ids))
    for n, rows in enumerate(np.array_split(order, parts)):
        write_shard(folder / f"part-{n}.parquet", [ids[i] for i in rows], bundle.vectors[rows])
    return folder


def test_a_bundle_from_foreign_shards_equals_the_teacher_build(
    bundle: Bundle, corpus_file: Path, teacher: Encoder, tmp_path: Path
) -> None:
    shards = shards_of(bundle, tmp_path / "shards", teacher)
    built = build_bundle(
        read_corpus(corpus_file), tmp_path / "root", teacher, VARIANTS, engine=ShardFolder(shards)
    )
    with open_bundle(built, verify=True) as got:
        assert got.external_ids() == bundle.external_ids()
        np.testing.assert_array_equal(np.asarray(got.vectors), np.asarray(bundle.vectors))
        assert got.manifest.build["settings"]["embedding"]["engine"] == "shards"


def test_float32_list_vectors_are_accepted(
    bundle: Bundle, corpus_file: Path, teacher: Encoder, tmp_path: Path
) -> None:
    folder = tmp_path / "shards"
    ShardsManifest(teacher.card.name, teacher.card.fingerprint, teacher.dim).write(folder)
    vectors = np.asarray(bundle.vectors, dtype=np.float32)
    table = pa.table(
        {"id": bundle.external_ids(), "vector": [list(map(float, v)) for v in vectors]}
    )
    pq.write_table(table, folder / "all.parquet")
    built = build_bundle(
        read_corpus(corpus_file), tmp_path / "root", teacher, VARIANTS, engine=ShardFolder(folder)
    )
    with open_bundle(built) as got:
        np.testing.assert_array_equal(np.asarray(got.vectors), np.asarray(bundle.vectors))


def broken(kind: str, bundle: Bundle, folder: Path, teacher: Encoder) -> None:
    ids = bundle.external_ids()
    vectors = np.asarray(bundle.vectors, dtype=np.float32)
    fingerprint = "0" * 64 if kind == "teacher" else teacher.card.fingerprint
    dim = 384 if kind == "dim" else teacher.dim
    if kind != "manifest":
        ShardsManifest(teacher.card.name, fingerprint, dim).write(folder)
    else:
        folder.mkdir(parents=True)
    if kind == "missing":
        ids, vectors = ids[:-1], vectors[:-1]
    elif kind == "unknown":
        ids = [*ids[:-1], "no-such-doc"]
    elif kind == "twice":
        ids, vectors = [*ids, ids[0]], np.vstack([vectors, vectors[:1]])
    elif kind == "norm":
        vectors = vectors * 2
    elif kind == "columns":
        pq.write_table(pa.table({"doc": ids}), folder / "x.parquet")
        return
    write_shard(folder / "x.parquet", ids, vectors)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("manifest", "has no embeddings.json"),
        ("teacher", "were embedded by"),
        ("dim", "hold 384-dim vectors"),
        ("missing", "1 document\\(s\\) have no vector"),
        ("unknown", "'no-such-doc'\\] are not in the corpus"),
        ("twice", "have more than one vector"),
        ("norm", "not unit length"),
        ("columns", "shards need 'id'"),
    ],
)
def test_bad_shards_are_refused_and_nothing_is_published(
    kind: str, message: str, bundle: Bundle, corpus_file: Path, teacher: Encoder, tmp_path: Path
) -> None:
    folder = tmp_path / "shards"
    broken(kind, bundle, folder, teacher)
    root = tmp_path / "root"
    with pytest.raises(BuildError, match=message):
        build_bundle(read_corpus(corpus_file), root, teacher, VARIANTS, engine=ShardFolder(folder))
    assert not (root / "current").exists()


def test_cli_from_embeddings(
    bundle: Bundle, corpus_file: Path, teacher: Encoder, tmp_path: Path
) -> None:
    shards = shards_of(bundle, tmp_path / "shards", teacher)
    root = tmp_path / "root"
    command = [
        sys.executable, "-c", "from tandem.cli import app; app()", "index", "build",
        str(corpus_file), "--out", str(root), "--variants", ",".join(VARIANTS),
        "--from-embeddings", str(shards),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with open_bundle(root) as got:
        np.testing.assert_array_equal(np.asarray(got.vectors), np.asarray(bundle.vectors))
    (shards / "embeddings.json").write_text(json.dumps({"format": 1}))
    done = subprocess.run([*command[:-4], "--out", str(tmp_path / "r2"), "--from-embeddings",
                           str(shards)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1
    assert "embeddings.json is malformed" in done.stderr
