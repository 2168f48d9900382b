"""RunConfig YAML round trip and strict keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlkit.config import RunConfig, dump_config, load_config
from mtlkit.errors import ConfigError


def test_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig()
    cfg.model.arch = "mtinet"
    cfg.data.aux_tasks = ["normals"]
    cfg.model.kwargs = {"channels": 32}
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  stpes: 3\n")
    with pytest.raises(ConfigError, match="stpes"):
        load_config(p)
    p.write_text("trian:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(p)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_override_ignores_none() -> None:
    cfg = RunConfig()
    cfg.override("train", steps=7, lr=None)
    assert cfg.train.steps == 7 and cfg.train.lr == RunConfig().train.lr
    with pytest.raises(ConfigError):
        cfg.override("train", nope=1)


@pytest.mark.parametrize("path", sorted(Path("configs").glob("*.yaml")) or [None])
def test_shipped_presets_load(path: Path | None) -> None:
    if path is None:
        pytest.skip("no presets")
    cfg = load_config(path)
    from mtlkit.registry import ARCHS

    assert cfg.model.arch in ARCHS
