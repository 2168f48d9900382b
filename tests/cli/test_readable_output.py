"""Output a person can read (issue 17, section 5): units, one number format, no truncation in
logs, progress in logs, a fast ``mtlkit list`` with papers by name, help with defaults."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import typer

from cli.main import app
from mtlkit.engine.report import (
    PERCENT_FROM_FRACTION,
    metric_rows,
    metric_unit,
    metrics_markdown,
    scalar_items,
)
from mtlkit.tasks import TASK_NAMES, get_task
from tests.cli._helpers import TRAIN_ARGS, copy_run, invoke

_VALUE = re.compile(r"^-?\d+\.\d{3}$|^n/a$")


def _all_metric_names() -> dict[str, list[str]]:
    """Every scalar metric each task's accumulator reports."""
    out = {}
    for t in TASK_NAMES:
        spec = get_task(t, 9 if t == "semseg" else (7 if t == "parts" else None))
        out[t] = [k for k, _ in scalar_items(spec.make_metric().compute())]
    return out


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_metric_row_has_a_unit(task: str) -> None:
    for metric in _all_metric_names()[task]:
        assert metric_unit(task, metric), (task, metric)


def test_units_as_the_papers_print_them() -> None:
    metrics = {"depth": {"rmse": 0.5366, "delta1": 0.8632, "abs_rel": 0.14},
               "normals": {"mean": 20.27, "rmse": 27.1, "within_11_25": 33.3},
               "semseg": {"mIoU": 45.96, "per_class_IoU": [1.0, 2.0]}}
    rows = {(t, label): v for t, label, v in metric_rows(metrics)}
    assert rows[("depth", "rmse (m)")] == "0.537"
    assert rows[("depth", "delta1 (%)")] == "86.320"  # stored as a fraction, shown in %
    assert rows[("normals", "rmse (deg)")] == "27.100"
    assert rows[("normals", "mean (deg)")] == "20.270"
    assert rows[("semseg", "mIoU (%)")] == "45.960"
    assert all(_VALUE.match(v) for v in rows.values())  # one number format for the column
    assert "delta1" in PERCENT_FROM_FRACTION
    md = metrics_markdown(metrics)
    assert "| depth | delta1 (%) | 86.320 |" in md


def test_train_output_in_a_log_is_whole(tiny_h5: Path, tmp_path: Path) -> None:
    """Piped (CliRunner is not a terminal): progress lines, and a table that is not cut."""
    args = [a for a in TRAIN_ARGS if a != "--quiet"]
    res = invoke("train", *args, "--data", tiny_h5, "--steps", 2, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "train: 2/2 (100%)" in res.output  # a progress line a log keeps
    assert "…" not in res.output
    rows = [ln for ln in res.output.splitlines() if "│" in ln]
    units = [ln for ln in rows if re.search(r"\((%|m|deg|ln|ratio|threshold)\)", ln)]
    assert len(units) == len(rows) >= 15  # every metric row with its unit
    for ln in rows:
        assert _VALUE.match(ln.split("│")[-2].strip()), ln


def test_evaluate_shows_progress_in_logs(trained_run: Path, tmp_path: Path) -> None:
    run = copy_run(trained_run, tmp_path / "run")  # evaluate writes eval.json next to last.pt
    res = invoke("evaluate", "--checkpoint", run / "last.pt", "--batch-size", 2)
    assert res.exit_code == 0, res.output
    assert re.search(r"evaluate val: 4/4 \(100%\)", res.output), res.output


# --------------------------------------------------------------------------------- list
def test_list_is_lazy_and_remembers_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    import mtlkit.models.factory as factory

    calls = {"gflops": 0}

    def no_flops(*a, **k):
        raise AssertionError("mtlkit list counted FLOPs without --flops")

    monkeypatch.setattr(factory, "count_gflops", no_flops)
    res = invoke("list", "--size", "64x96")
    assert res.exit_code == 0, res.output
    assert "mtlkit list --flops" in " ".join(res.output.split())

    def one_gflop(*a, **k):
        calls["gflops"] += 1
        return 1.0

    monkeypatch.setattr(factory, "count_gflops", one_gflop)
    res = invoke("list", "--size", "64x96", "--flops")
    assert res.exit_code == 0, res.output
    n = calls["gflops"]
    assert n >= 8

    def no_build(*a, **k):
        raise AssertionError("mtlkit list built a model although its counts are remembered")

    monkeypatch.setattr(factory, "create_model", no_build)
    res = invoke("list", "--size", "64x96")
    assert res.exit_code == 0, res.output
    assert calls["gflops"] == n
    row = next(ln for ln in res.output.splitlines() if ln.startswith("│ tpim "))
    assert "1.00" in row


def test_list_names_papers_and_is_not_cut_when_piped() -> None:
    res = invoke("list")
    assert res.exit_code == 0, res.output
    assert not re.search(r"paper \d{3}|papers/\d{3}", res.output)
    assert "MTI-Net: Multi-Scale Task Interaction Networks" in res.output
    assert "Task Pair Interaction Module with Iterative Fusion Block" in res.output
    assert "…" not in res.output
    # each description on one line of its row
    assert "TPIM: intermediate predictions + N^2 Cross-task Interaction Blocks with IFB" \
        in res.output


# --------------------------------------------------------------------------------- help
def _commands() -> list[list[str]]:
    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        out += [[name, sub] for sub in subs] if subs else [[name]]
    return out


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_help_has_no_raw_rst(command: list[str]) -> None:
    res = invoke(*command, "--help")
    assert res.exit_code == 0, res.output
    for marker in ("``", ":func:", ":class:", ":mod:", ":meth:", ":data:"):
        assert marker not in res.output, (marker, res.output)


def test_train_help_shows_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    res = invoke("train", "--help")
    text = " ".join(res.output.split())
    for default in ("[default: 400]", "[default: 8]", "[default: 0.002]", "[default: tpim]",
                    "[default: synthetic-nyud]", "[default: 200]", "[default: adamw]"):
        assert default in text, default
    cmd = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    for p in cmd.params:  # the class: every option says what it defaults to
        if p.name != "help":
            assert p.default is not None or isinstance(p.show_default, str), p.name


def test_value_format_is_finite_for_nan() -> None:
    rows = metric_rows({"edge": {"odsF": None, "odsT": math.nan}})
    assert rows[0][2] == "n/a"


def test_defaults_shown_in_help_do_not_override_a_config_file(
        tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Options left at their (shown) defaults keep the --config values; given ones win."""
    import json
    import subprocess

    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  arch: baseline\n  kwargs: {channels: 8}\n"
                   "data:\n  size: [64, 80]\n"
                   "train:\n  steps: 3\n  batch_size: 4\n  eval_every: 0\n  lr: 0.001\n")
    out = tmp_path / "run"
    res = invoke("train", "--config", cfg, "--data", tiny_h5, "--out", out, "--quiet",
                 "--lr", "0.003")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["arch"] == "baseline" and report["steps"] == 3
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 4 and saved["train"]["lr"] == 0.003
    # the --nproc relaunch passes on the given options only
    calls: list[list[str]] = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(subprocess, "call", lambda cmd, env=None: calls.append(cmd) or 0)
    res = invoke("train", "--config", cfg, "--data", tiny_h5, "--out", tmp_path / "ddp",
                 "--nproc", 2, "--seed", 3)
    assert res.exit_code == 0, res.output
    args = calls[0][calls[0].index("train") + 1:]
    assert "--seed" in args and "--config" in args
    for default in ("--steps", "--lr", "--batch-size", "--arch", "--no-amp"):
        assert default not in args, default
