"""Every user mistake: one line, exit 2, no traceback, nothing written (issue 17, section 3).

Numbers are validated once, in the config, whether they come from an option or a YAML file;
so each range is tested through both.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mtlkit.config import RANGES, RunConfig
from mtlkit.errors import ConfigError
from tests.cli._helpers import TRAIN_ARGS, invoke, one_line_error

# option, bad value, the config key the message names
BAD_OPTIONS = [
    ("--lr", "-1", "train.lr"),
    ("--lr", "0", "train.lr"),
    ("--lr", "nan", "train.lr"),
    ("--accum", "0", "train.accum"),
    ("--workers", "-3", "data.num_workers"),
    ("--batch-size", "0", "train.batch_size"),
    ("--steps", "0", "train.steps"),
    ("--steps", "-5", "train.steps"),
    ("--ckpt-every", "-1", "train.ckpt_every"),
    ("--eval-every", "-1", "train.eval_every"),
    ("--eval-batches", "0", "train.eval_batches"),
    ("--size", "16x16", "smaller than the backbone's output stride (32)"),
    ("--size", "31x640", "smaller than the backbone's output stride (32)"),
    ("--nproc", "0", "--nproc"),
    ("--optimizer", "lion", "unknown optimizer 'lion'"),
    ("--augment", "heavy", "unknown augmentation preset 'heavy'"),
    ("--weighting", "nope", "unknown weighting 'nope'"),
    ("--model-arg", "nonsense=1", "arch 'baseline' has no option 'nonsense'"),
]


@pytest.mark.parametrize(("option", "value", "needle"), BAD_OPTIONS,
                         ids=[f"{o}={v}" for o, v, _ in BAD_OPTIONS])
def test_bad_train_option(tiny_h5: Path, tmp_path: Path, option: str, value: str,
                          needle: str) -> None:
    out = tmp_path / "run"
    res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 1, "--out", out,
                 option, value)
    one_line_error(res, needle)
    assert not out.exists()


def test_size_too_small_for_batch_norm(tiny_h5: Path, tmp_path: Path) -> None:
    res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 1, "--out", tmp_path / "r",
                 "--size", "32x32", "--batch-size", "1")
    one_line_error(res, "32x32", "batch size 1")


def test_resnet50_backbone_suggests_timm(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    res = invoke("train", "--backbone", "resnet50", "--out", tmp_path / "run")
    one_line_error(res, "unknown backbone 'resnet50'", "timm:resnet50")


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_range_is_checked_in_the_config(key: str) -> None:
    """The class: every bounded field refuses a value just outside its range."""
    section, name = key.split(".")
    cfg = RunConfig()
    current = getattr(getattr(cfg, section), name)
    bad = {"train.momentum": 1.0, "train.out": " "}.get(key)
    if bad is None:
        bad = -1 if isinstance(current, int) or current is None else -1.0
        if key in ("train.lr", "train.clip_grad"):
            bad = 0.0
        if key in ("train.steps", "train.batch_size", "train.accum", "train.log_every",
                   "train.eval_batches"):
            bad = 0
    setattr(getattr(cfg, section), name, bad)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg.validate()


# YAML values of the wrong type
BAD_YAML = [
    ("train:\n  steps: many\n", "train.steps must be an integer, got 'many'"),
    ("train:\n  batch_size: [2]\n", "train.batch_size must be an integer, got [2]"),
    ("train:\n  lr: fast\n", "train.lr must be a number"),
    ("train:\n  steps: 1.5\n", "train.steps must be an integer"),
    ("train:\n  amp: maybe\n", "train.amp must be true/false"),
    ("train:\n  seed: true\n", "train.seed must be an integer"),
    ("data:\n  size: big\n", "data.size must be a list of an integer or null"),
    ("data:\n  tasks: semseg\n", "data.tasks must be a list of a string or null"),
    ("model:\n  kwargs: 3\n", "model.kwargs must be a mapping"),
    ("model:\n  arch: 7\n", "model.arch must be a string"),
    ("train: [1, 2]\n", "train must be a mapping"),
    ("train:\n  lr: -0.1\n", "train.lr = -0.1 is out of range"),
    ("train:\n  ckpt_every: -1\n", "train.ckpt_every = -1 is out of range"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_YAML, ids=[t.split(":")[-2].split()[-1]
                                                            for t, _ in BAD_YAML])
def test_yaml_values_of_the_wrong_type_or_range(tiny_h5: Path, tmp_path: Path, text: str,
                                                needle: str) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    out = tmp_path / "run"
    res = invoke("train", "--config", cfg, "--data", tiny_h5, "--out", out, "--quiet")
    one_line_error(res, str(cfg) if "range" not in needle else "", needle)
    assert not out.exists()


def test_yaml_int_where_a_float_is_expected_is_fine() -> None:
    cfg = RunConfig.from_dict({"train": {"lr": 1, "weight_decay": 0}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(("args", "needle"), [
    (["evaluate", "--batch-size", "0"], "--batch-size 0"),
    (["evaluate", "--batch-size", "-4"], "--batch-size -4"),
    (["predict", "--limit", "0"], "--limit 0"),
    (["predict", "--limit", "-2"], "--limit -2"),
])
def test_bad_evaluate_and_predict_options(trained_run: Path, tiny_h5: Path, tmp_path: Path,
                                          args: list[str], needle: str) -> None:
    extra = ["--images", tiny_h5, "--out", tmp_path / "p"] if args[0] == "predict" else []
    res = invoke(*args, "--checkpoint", trained_run / "last.pt", *extra)
    one_line_error(res, needle)
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------- paths from anywhere
def test_package_config_paths_resolve_from_any_directory(
        tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # configs/ is not here
    res = invoke("train", "--config", "configs/tif_synthetic_tiny.yaml", "--data", tiny_h5,
                 "--size", "64x80", "--batch-size", "4", "--steps", "1", "--eval-every", "0",
                 "--out", "run", "--quiet")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "report.json").is_file()


def test_a_run_stores_absolute_data_paths_and_evaluates_from_anywhere(
        tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.chdir(tiny_h5.parent)
    out = tmp_path / "run"
    res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5.name, "--steps", 1, "--out", out)
    assert res.exit_code == 0, res.output
    stored = yaml.safe_load((out / "config.yaml").read_text())["data"]["path"]
    assert os.path.isabs(stored) and Path(stored) == tiny_h5
    monkeypatch.chdir(tmp_path)
    res = invoke("evaluate", "--checkpoint", out / "last.pt")
    assert res.exit_code == 0, res.output
