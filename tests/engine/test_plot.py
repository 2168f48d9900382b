"""``mtlkit plot``: RUN/curves.png from RUN/log.jsonl; eval.md figure embedding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from mtlkit.engine.plot import plot_run, read_log
from mtlkit.engine.report import write_eval_files
from mtlkit.errors import DataError

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def _log(run: Path, truncated: bool = False) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    recs = []
    for step in range(1, 21):
        recs.append({"step": step, "loss": 3.0 / step, "loss_semseg": 2.0 / step,
                     "loss_depth": 1.0 / step, "lr": 1e-3, "images_per_s": 10.0,
                     "weights": {"semseg": 1.0, "depth": 1.0}})
        if step % 5 == 0:
            recs.append({"step": step, "score": 0.0, "metrics": {
                "semseg": {"mIoU": 10.0 + step, "per_class_IoU": [1.0, None]},
                "depth": {"rmse": 1.0 / step}, "edge": {"odsF": None}}})
    text = "\n".join(json.dumps(r) for r in recs) + "\n"
    if truncated:
        text += '{"step": 21, "loss": 0.'
    (run / "log.jsonl").write_text(text)
    return run


def test_read_log_splits_and_dedupes(tmp_path: Path) -> None:
    run = _log(tmp_path / "r", truncated=True)
    # a resumed run repeats steps: the later record wins
    with open(run / "log.jsonl") as f:
        text = f.read()
    (run / "log.jsonl").write_text(text.rsplit("\n", 1)[0] + "\n"
                                   + json.dumps({"step": 3, "loss": 9.0}) + "\n")
    train, evals = read_log(run / "log.jsonl")
    assert [r["step"] for r in train] == list(range(1, 21))
    assert train[2]["loss"] == 9.0
    assert [r["step"] for r in evals] == [5, 10, 15, 20]


def test_plot_writes_png(tmp_path: Path) -> None:
    run = _log(tmp_path / "r", truncated=True)
    path = plot_run(run)
    assert path == run / "curves.png"
    assert path.read_bytes()[:8] == PNG
    img = np.asarray(Image.open(path).convert("L"))
    # 3 panels (loss, semseg mIoU, depth rmse; edge has no finite value) side by side
    assert img.shape[1] > img.shape[0] * 2
    assert img.std() > 10  # something was drawn
    assert not list(run.glob(".curves.png.*"))


def test_cli_plot(tmp_path: Path) -> None:
    run = _log(tmp_path / "r")
    res = runner.invoke(app, ["plot", str(run)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (run / "curves.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("content", [None, "", "not json\n"])
def test_cli_plot_bad_log(tmp_path: Path, content: str | None) -> None:
    run = tmp_path / "r"
    run.mkdir()
    if content is not None:
        (run / "log.jsonl").write_text(content)
    res = runner.invoke(app, ["plot", str(run)], catch_exceptions=False)
    assert res.exit_code == 2, res.output
    assert "log.jsonl" in res.output and "Traceback" not in res.output
    with pytest.raises(DataError):
        plot_run(run)


def test_eval_md_embeds_figures(tmp_path: Path) -> None:
    result = {"checkpoint": "r/last.pt", "split": "val", "step": 3, "arch": "baseline",
              "dataset": "nyud", "metrics": {"edge": {"odsF": 50.0}},
              "pr_curves": {"edge": {"thresholds": [0.5], "precision": [0.5], "recall": [0.5],
                                     "F": [0.5]}}}
    write_eval_files(tmp_path, result, {"Training curves": ["curves.png"],
                                        "Predictions": ["panels/00000.png"], "Empty": []})
    md = (tmp_path / "eval.md").read_text()
    assert "![curves](curves.png)" in md and "![00000](panels/00000.png)" in md
    assert "Empty" not in md
    assert json.loads((tmp_path / "eval.json").read_text())["pr_curves"]["edge"]["F"] == [0.5]
    write_eval_files(tmp_path, result)  # without images: the table only, as before
    assert "![" not in (tmp_path / "eval.md").read_text()
