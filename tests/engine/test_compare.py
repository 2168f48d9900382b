"""``mtlkit compare``: runs x main metrics with delta_m against single-task runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from mtlkit.engine.compare import compare_runs, comparison_markdown, load_run
from mtlkit.errors import ConfigError, DataError

runner = CliRunner()


def _run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _report(run: Path, tasks: list[str], metrics: dict, arch: str = "baseline") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "report.json").write_text(json.dumps(
        {"arch": arch, "backbone": "tiny", "dataset": "nyud", "tasks": tasks, "steps": 10,
         "params": 1, "images_per_s": 1.0, "metrics": metrics}))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return {
        "mt": _report(tmp_path / "mt", ["semseg", "depth"], {
            "semseg": {"mIoU": 44.0, "pixel_acc": 70.0, "per_class_IoU": [40.0, None]},
            "depth": {"rmse": 0.55, "abs_rel": 0.2}}),
        "mt3": _report(tmp_path / "mt3", ["semseg", "depth", "normals"], {
            "semseg": {"mIoU": 42.0}, "depth": {"rmse": 0.45}, "normals": {"mean": 20.0}},
            arch="mti_net"),
        "st_seg": _report(tmp_path / "st_seg", ["semseg"], {"semseg": {"mIoU": 40.0}}, "single"),
        "st_depth": _report(tmp_path / "st_depth", ["depth"], {"depth": {"rmse": 0.5}}, "single"),
    }


def test_delta_m_by_hand(runs: dict[str, Path]) -> None:
    cmp = compare_runs([runs["mt"], runs["mt3"]], [runs["st_seg"], runs["st_depth"]])
    assert cmp.tasks == ["semseg", "depth", "normals"]
    mt, mt3 = cmp.rows[0], cmp.rows[1]
    # ((44 - 40) / 40 - (0.55 - 0.5) / 0.5) / 2 * 100 = (0.1 - 0.1) / 2 * 100 = 0
    assert mt.delta_m == pytest.approx(0.0, abs=1e-9)
    assert mt.delta_tasks == ["semseg", "depth"]
    # ((42 - 40) / 40 - (0.45 - 0.5) / 0.5) / 2 * 100 = (0.05 + 0.1) / 2 * 100 = 7.5;
    # normals has no single-task reference: left out, and the notes say so
    assert mt3.delta_m == pytest.approx(7.5)
    assert mt3.delta_tasks == ["semseg", "depth"]
    assert any("mt3" in n and "normals" in n and "no single-task reference" in n
               for n in cmp.notes)
    assert not any(n.startswith("mt:") for n in cmp.notes)
    # the references are rows too, marked as such
    assert [r.reference for r in cmp.rows] == [False, False, True, True]
    assert mt3.values == {"semseg": 42.0, "depth": 0.45, "normals": 20.0}
    assert mt.values["normals"] is None


def test_markdown_table(runs: dict[str, Path]) -> None:
    md = comparison_markdown(compare_runs([runs["mt3"]], [runs["st_seg"], runs["st_depth"]]))
    lines = md.splitlines()
    assert lines[0] == ("| run | arch | semseg mIoU (%) | depth rmse (m) | normals mean (deg) "
                        "| delta_m (%) |")
    assert lines[1] == "|---|---|---:|---:|---:|---:|"
    assert lines[2] == "| mt3 | mti_net | 42.00 | 0.4500 | 20.00 | +7.50 |"
    assert lines[3] == "| st_seg (single-task) | single | 40.00 | - | - | ref |"
    assert "- mt3: delta_m leaves out normals (no single-task reference)" in lines


def test_no_references_no_delta_column(runs: dict[str, Path]) -> None:
    cmp = compare_runs([runs["mt"]])
    assert not cmp.has_delta and cmp.rows[0].delta_m is None
    assert "delta_m" not in comparison_markdown(cmp).splitlines()[0]


def test_cli_compare_markdown_file(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    res = _run("compare", runs["mt"], runs["mt3"], "--single-task", runs["st_seg"],
               "--single-task", runs["st_depth"], "--markdown", out)
    assert res.exit_code == 0, res.output
    assert "delta_m" in res.output and "mt3" in res.output
    md = out.read_text()
    assert "| mt | baseline | 44.00 | 0.5500 | - | +0.00 |" in md
    assert "+7.50" in md
    assert not list(tmp_path.glob(".table.md.*"))  # atomic write left no temporary file


def test_cli_compare_markdown_stdout_and_comma_list(runs: dict[str, Path]) -> None:
    res = _run("compare", runs["mt"], "--single-task", f"{runs['st_seg']},{runs['st_depth']}",
               "--markdown", "-")
    assert res.exit_code == 0, res.output
    assert "| mt | baseline | 44.00 | 0.5500 | +0.00 |" in res.output


def test_cli_compare_prints_one_table(runs: dict[str, Path]) -> None:
    res = _run("compare", runs["mt"], runs["mt3"], "--single-task",
               f"{runs['st_seg']},{runs['st_depth']}")
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.output.splitlines() if "│" in ln and " mt3 " in ln]
    assert len(rows) == 1  # one row per run: the table is not printed twice
    assert "|---" not in res.output  # no markdown copy after the table
    row = next(line for line in res.output.splitlines() if " mt3 " in line)
    assert "42.00" in row and "0.4500" in row and "+7.50" in row


@pytest.mark.parametrize("kind", ["missing_dir", "no_report", "corrupt", "no_metrics"])
def test_cli_missing_or_corrupt_report(runs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad"
    if kind != "missing_dir":
        bad.mkdir()
    if kind == "corrupt":
        (bad / "report.json").write_text('{"metrics": {"semseg": ')
    elif kind == "no_metrics":
        (bad / "report.json").write_text('{"arch": "baseline"}')
    res = _run("compare", runs["mt"], bad)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and "bad" in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_bad_references(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not exactly one"):
        compare_runs([runs["mt"]], [runs["mt"]])
    dup = _report(tmp_path / "st_seg2", ["semseg"], {"semseg": {"mIoU": 41.0}}, "single")
    with pytest.raises(ConfigError, match="two single-task references"):
        compare_runs([runs["mt"]], [runs["st_seg"], dup])
    empty = _report(tmp_path / "st_empty", ["depth"], {"depth": {"rmse": None}}, "single")
    with pytest.raises(DataError, match="no depth.rmse"):
        compare_runs([runs["mt"]], [empty])


def test_newer_val_eval_json_wins(runs: dict[str, Path]) -> None:
    run = runs["mt"]
    ev = run / "eval.json"
    ev.write_text(json.dumps({"checkpoint": "last.pt", "split": "val", "step": 10,
                              "metrics": {"semseg": {"mIoU": 48.0}, "depth": {"rmse": 0.5}}}))
    t = (run / "report.json").stat().st_mtime
    os.utime(ev, (t + 10, t + 10))
    r = load_run(run)
    assert r.source == ev and r.metrics["semseg"]["mIoU"] == 48.0
    # an evaluation on another split does not replace the report
    ev.write_text(ev.read_text().replace('"val"', '"train"'))
    os.utime(ev, (t + 10, t + 10))
    assert load_run(run).source == run / "report.json"
    # an older eval.json does not either
    ev.write_text(ev.read_text().replace('"train"', '"val"'))
    os.utime(ev, (t - 10, t - 10))
    assert load_run(run).source == run / "report.json"


def test_saliency_metric_choice(tmp_path: Path) -> None:
    mt = _report(tmp_path / "mt", ["semseg", "saliency"], {
        "semseg": {"mIoU": 44.0}, "saliency": {"maxF": 84.0, "mIoU": 57.0}})
    st = _report(tmp_path / "st", ["saliency"], {"saliency": {"maxF": 80.0, "mIoU": 60.0}},
                 "single")
    # default maxF (ATRC / InvPT): (84 - 80) / 80 = +5 %
    cmp = compare_runs([mt], [st])
    assert cmp.saliency_metric == "maxF" and cmp.rows[0].values["saliency"] == 84.0
    assert cmp.rows[0].delta_m == pytest.approx(5.0)
    md = comparison_markdown(cmp)
    assert "saliency maxF (%)" in md.splitlines()[0]
    assert any("saliency scored by maxF" in n for n in cmp.notes)
    # mIoU (MTI-Net / MTL-PT): (57 - 60) / 60 = -5 %
    cmp = compare_runs([mt], [st], saliency_metric="mIoU")
    assert cmp.main_metrics["saliency"] == "mIoU" and cmp.rows[0].values["saliency"] == 57.0
    assert cmp.rows[0].delta_m == pytest.approx(-5.0)
    md = comparison_markdown(cmp)
    assert "saliency mIoU (%)" in md.splitlines()[0]
    assert "saliency scored by mIoU (MTI-Net / MTL-PT)" in md
    # no saliency compared: no note about it
    seg = _report(tmp_path / "seg", ["semseg"], {"semseg": {"mIoU": 44.0}})
    assert not any("saliency" in n for n in compare_runs([seg]).notes)
    with pytest.raises(ConfigError, match="saliency metric"):
        compare_runs([mt], [st], saliency_metric="iou")
    # a reference evaluated before mIoU existed: a clear error
    old = _report(tmp_path / "old", ["saliency"], {"saliency": {"maxF": 80.0}}, "single")
    with pytest.raises(DataError, match="no saliency.mIoU"):
        compare_runs([mt], [old], saliency_metric="mIoU")


def test_cli_compare_saliency_metric(tmp_path: Path) -> None:
    mt = _report(tmp_path / "mt", ["saliency"], {"saliency": {"maxF": 84.0, "mIoU": 57.0}})
    st = _report(tmp_path / "st", ["saliency"], {"saliency": {"maxF": 80.0, "mIoU": 60.0}},
                 "single")
    res = _run("compare", mt, "--single-task", st, "--saliency-metric", "mIoU", "--markdown", "-")
    assert res.exit_code == 0, res.output
    assert "| mt | baseline | 57.00 | -5.00 |" in res.output
    assert "saliency scored by mIoU" in res.output
    res = _run("compare", mt, "--single-task", st, "--markdown", "-")
    assert "| mt | baseline | 84.00 | +5.00 |" in res.output
    res = _run("compare", mt, "--single-task", st, "--saliency-metric", "mIoU")  # the table
    assert res.exit_code == 0 and "saliency scored by mIoU" in " ".join(res.output.split())
    res = _run("compare", mt, "--single-task", st, "--saliency-metric", "F1")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "maxF, mIoU" in res.output
