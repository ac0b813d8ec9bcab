"""Shared test constants: where the real MedMNIST files live (skip tests that need them if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist"
HAS_MEDMNIST = DATA_ROOT.is_dir() and any(DATA_ROOT.glob("*.npz"))
needs_medmnist = pytest.mark.skipif(not HAS_MEDMNIST, reason=f"MedMNIST files not found in {DATA_ROOT}")


@pytest.fixture
def medmnist_root() -> Path:
    """The shared MedMNIST data root; skips the test when it holds no .npz files."""
    if not HAS_MEDMNIST:
        pytest.skip(f"MedMNIST files not found in {DATA_ROOT}")
    return DATA_ROOT


@pytest.fixture(autouse=True, scope="session")
def _source_cache(tmp_path_factory):
    """Pretrained sources are cached per test session, never in the user's ~/.cache."""
    import os

    os.environ["MEDTRANSFER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
