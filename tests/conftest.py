"""Shared fixtures: a tiny synthetic HDF5 file built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` when no GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``$MTLKIT_CACHE`` in a temporary folder for the whole session: the ops' ``auto`` policy
    caches its measured choices there (mtlkit.ops.tuning), never in the user's cache."""
    old = os.environ.get("MTLKIT_CACHE")
    os.environ["MTLKIT_CACHE"] = str(tmp_path_factory.mktemp("mtlkit-cache"))
    yield
    if old is None:
        os.environ.pop("MTLKIT_CACHE", None)
    else:
        os.environ["MTLKIT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic dataset with 24 train / 8 val images of 64x80 (all six tasks)."""
    from mtlkit.data.synthetic import build_synthetic_h5

    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    build_synthetic_h5(path, train=24, val=8, size=(64, 80), seed=0, progress=False)
    return path
