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


@pytest.fixture
def native_bf16():
    """Skip where the CPU has no native bf16: gmptl refuses bf16 there (``gmptl.utils.check_precision``)."""
    from gmptl.utils import cpu_has_bf16
    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
