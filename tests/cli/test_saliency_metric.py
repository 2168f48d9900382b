"""``mtlkit train --single-task ... --saliency-metric maxF|mIoU``: delta_m's saliency measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def _run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _common(h5: Path) -> list[object]:
    return ["--dataset", "synthetic-pascal", "--data", h5, "--size", "64x80", "--steps", 1,
            "--batch-size", 4, "--eval-every", 0, "--quiet", "--model-arg", "channels=8"]


def test_train_delta_m_with_saliency_miou(tiny_h5: Path, tmp_path: Path) -> None:
    res = _run("train", "--arch", "single", "--tasks", "saliency", "--out", tmp_path / "st",
               *_common(tiny_h5))
    assert res.exit_code == 0, res.output
    st = json.loads((tmp_path / "st" / "report.json").read_text())
    assert {"maxF", "mIoU"} <= set(st["metrics"]["saliency"])  # both measures, in %
    res = _run("train", "--arch", "baseline", "--tasks", "semseg,saliency", "--out",
               tmp_path / "mt", "--single-task", tmp_path / "st", "--saliency-metric", "mIoU",
               *_common(tiny_h5))
    assert res.exit_code == 0, res.output
    mt = json.loads((tmp_path / "mt" / "report.json").read_text())
    assert mt["saliency_metric"] == "mIoU"
    assert mt["delta_m_metrics"] == {"saliency": "mIoU"}  # semseg has no reference
    m, s = mt["metrics"]["saliency"]["mIoU"], st["metrics"]["saliency"]["mIoU"]
    assert mt["delta_m"] == pytest.approx(100 * (m - s) / s)
    assert "saliency mIoU" in res.output


def test_bad_saliency_metric_is_one_line_and_writes_nothing(tiny_h5: Path, tmp_path: Path
                                                            ) -> None:
    res = _run("train", "--arch", "baseline", "--tasks", "semseg,saliency", "--out",
               tmp_path / "x", "--saliency-metric", "maxf", *_common(tiny_h5))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert "saliency metric" in res.output and "maxF, mIoU" in res.output
    assert not (tmp_path / "x").exists()
