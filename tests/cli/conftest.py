"""Fixtures of the CLI tests: a tiny trained run, an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli._helpers import TRAIN_ARGS, invoke


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> Path:
    """The data-check and list caches of these tests live in one session folder."""
    root = tmp_path_factory.getbasetemp() / "mtlkit-cache"
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("MTLKIT_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def trained_run(tiny_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run (last.pt, config.yaml, log.jsonl, report.json); copy before
    changing it (``tests.cli._helpers.copy_run``)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cache = tmp_path_factory.getbasetemp() / "mtlkit-cache"
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTLKIT_CACHE", str(cache))
        res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 2, "--out", out)
    assert res.exit_code == 0, res.output
    return out
