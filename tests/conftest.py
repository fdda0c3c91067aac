"""Shared fixtures: offline hub, locations of the optional real data."""

import os
from pathlib import Path

import pytest

# Tests never reach a model hub: a hub id must come from a local directory or fail clearly.
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def ravdess_root() -> Path:
    """The RAVDESS FLAC copy beside the repository (CI has it); skip where it is absent."""
    root = SHARED_DATA / "ravdess"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    return root
