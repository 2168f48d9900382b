"""``mtlkit profile --arch``: whole-model throughput rows with kernels on and off."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from mtlkit.engine.throughput import kernels, profile_arch


def test_kernels_switch_restores_env() -> None:
    before = os.environ.get("MTLKIT_KERNELS")
    with kernels(False):
        assert os.environ["MTLKIT_KERNELS"] == "0"
    assert os.environ.get("MTLKIT_KERNELS") == before


def test_profile_arch_rows() -> None:
    rows = profile_arch("baseline", batch_size=1, size=(32, 40), warmup=0, repeats=1)
    assert [r["kernels"] for r in rows] == ["on", "off (reference)"]
    for r in rows:
        assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
        assert r["size"] == [32, 40]


def test_profile_arch_cli_json(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    res = CliRunner().invoke(app, ["profile", "--arch", "baseline", "--batch-size", "1",
                                   "--size", "32x40", "--repeats", "1", "--warmup", "0",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "train img/s" in res.output
    assert len(json.loads(out.read_text())["results"]) == 2
    res = CliRunner().invoke(app, ["profile", "--arch", "nope"])
    assert res.exit_code == 2 and "unknown arch 'nope'" in res.output
