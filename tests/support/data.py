"""Real BEIR datasets for the tests that read one; a fresh clone has none, so those tests skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.data.fetch import data_dir, is_beir_folder

REPO = Path(__file__).resolve().parents[2]


def dataset_candidates(name: str) -> list[Path]:
    """Where a dataset may be: where `tandem data fetch` puts it, then ../shared/data beside
    the checkout (the development machines keep their datasets there)."""
    return [data_dir() / name, REPO.parent / "shared" / "data" / name]


def beir_dataset(name: str) -> Path:
    """The folder of a real BEIR dataset, or skip saying how to fetch it."""
    for candidate in dataset_candidates(name):
        if is_beir_folder(candidate):
            return candidate
    pytest.skip(
        f"needs the BEIR dataset {name!r}, which a fresh clone does not have: run "
        f"`tandem data fetch {name}` (or point TANDEM_DATA at a folder holding {name}/)"
    )
