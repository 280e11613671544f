"""Shared fixtures: where the real data sets are, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def datasets_dir() -> Path:
    """The shared real data sets: $LIFELONG_REC_DATASETS, else ../shared/datasets."""
    return Path(os.environ.get("LIFELONG_REC_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets() -> Path:
    folder = datasets_dir()
    if not (folder / "ml-100k" / "u.data").is_file():
        pytest.skip(f"real data sets not found at {folder} (set LIFELONG_REC_DATASETS)")
    return folder
