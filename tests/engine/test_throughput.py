"""``mtlkit profile --arch [--tune]``: whole-model rows per implementation setting, what ran."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from mtlkit.engine.throughput import (
    arch_table,
    implementations_table,
    kernels,
    profile_arch,
    settings,
)


@pytest.fixture(autouse=True)
def private_tuning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A private tuning cache, and a timer that says ``sdpa`` is faster without running
    anything (the timing itself is tested in tests/ops/test_auto.py)."""
    from mtlkit.ops import tuning

    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path / "cache"))
    tuning.reset()
    with tuning.use_timer(lambda name, run, device: {"sdpa": 1.0}.get(name, 2.0)):
        yield
    tuning.reset()


def test_kernels_switch_restores_env() -> None:
    before = os.environ.get("MTLKIT_KERNELS")
    with kernels(False):
        assert os.environ["MTLKIT_KERNELS"] == "0"
    assert os.environ.get("MTLKIT_KERNELS") == before


def test_settings_per_device() -> None:
    assert settings(torch.device("cpu")) == {"auto": {}}
    gpu = settings(torch.device("cuda"))
    assert list(gpu) == ["auto", "cuda kernels", "reference"]
    assert gpu["cuda kernels"]["bfe_attention"] == "cuda"
    assert set(gpu["reference"].values()) == {"reference"}


def test_profile_arch_rows_say_what_ran() -> None:
    seen = []
    rows = profile_arch("bfci", batch_size=1, size=(32, 40), warmup=1, repeats=1,
                        progress=lambda done, total, what: seen.append((done, total)))
    assert [r["setting"] for r in rows] == ["auto"]  # a CPU: the stock implementations
    r = rows[0]
    assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0 and r["size"] == [32, 40]
    assert seen[-1] == (4, 4)  # (warm-up + timed) x (train, inference)
    ran = {(i["op"], i["grad"]) for i in r["implementations"]}
    assert ran == {(op, g) for op in ("bfe_attention", "tpp_attention", "hdc_conv")
                   for g in (True, False)}
    assert all(i["source"].startswith("auto: ") for i in r["implementations"])
    assert {(i["op"], i["impl"]) for i in r["implementations"]} == {
        ("bfe_attention", "sdpa"), ("tpp_attention", "sdpa"), ("hdc_conv", "reference")}
    text = implementations_table(rows)
    assert "bfe_attention" in text and "shape bucket" in text
    assert arch_table(rows).splitlines()[0] == "bfci: batch 1, 32x40, cpu"


def test_profile_arch_cli_json(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    res = CliRunner().invoke(app, ["profile", "--arch", "baseline", "--batch-size", "1",
                                   "--size", "32x40", "--repeats", "1", "--warmup", "0",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "train img/s" in res.output
    if not torch.cuda.is_available():
        assert "No CUDA GPU" in res.output and "kernels need one" in res.output
        assert "calls none of the mtlkit ops" in res.output
    assert len(json.loads(out.read_text())["results"]) == len(settings(
        torch.device("cuda" if torch.cuda.is_available() else "cpu")))
    res = CliRunner().invoke(app, ["profile", "--arch", "nope"])
    assert res.exit_code == 2 and "unknown arch 'nope'" in res.output
    res = CliRunner().invoke(app, ["profile", "--tune"])
    assert res.exit_code == 2 and "--tune needs a model" in res.output


def test_a_bad_mtlkit_impl_is_one_line_and_status_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLKIT_IMPL", "bfe_attention=flash")
    res = CliRunner().invoke(app, ["profile", "--arch", "bfci", "--batch-size", "1",
                                   "--size", "32x40"])
    assert res.exit_code == 2, res.output
    assert "MTLKIT_IMPL: bfe_attention has no implementation 'flash'; choose one of " \
        "reference, sdpa, cuda, cuda_tc, auto" in res.output
    assert "Traceback" not in res.output


def test_profile_tune_cli(tmp_path: Path) -> None:
    """``--tune`` times every candidate of every op the model runs (a lone one too) and prints
    them in fixed columns, whole, although CliRunner's output is not a terminal."""
    out = tmp_path / "t.json"
    res = CliRunner().invoke(app, ["profile", "--tune", "--arch", "bfci", "--batch-size", "1",
                                   "--size", "32x40", "--json", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    header = next(line for line in lines if line.startswith("op "))
    assert header.split() == ["op", "shape", "bucket", "dtype", "grad", "candidate", "median",
                              "ms", "choice", "note"]
    tuned = json.loads(out.read_text())["tuning"]
    assert {r["op"] for r in tuned} == {"bfe_attention", "tpp_attention", "hdc_conv"}
    for r in tuned:
        assert r["source"] == "measured" and r["choice"] == min(r["times_ms"],
                                                                key=r["times_ms"].get)
        assert set(r["times_ms"]) == ({"reference"} if r["op"] == "hdc_conv"
                                      else {"reference", "sdpa"})
        assert "not a candidate" in r["notes"]["cuda"]
        row = next(line for line in lines if r["bucket"] in line and "sdpa" in line) \
            if r["op"] != "hdc_conv" else None
        if row is not None:
            assert row.split()[0] == r["op"] and "<- auto" in row
    assert "implementations that ran" in res.output
