"""A run directory is never silently corrupted or lost (issue 17, section 1).

Each test drives the real ``mtlkit train`` / ``mtlkit preprocess`` commands on tiny data.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from tests.cli._helpers import TRAIN_ARGS, copy_run, invoke, one_line_error


def _snapshot(run: Path) -> dict[str, bytes]:
    """The bytes of every file of a run directory."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------- lock
def _hold_lock(out: Path, pid: int = 4242, host: str = "otherhost") -> int:
    """Hold ``out``'s lock as another ``mtlkit train`` would (independent of mtlkit's code)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".mtlkit.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": pid, "host": host, "started": "today"}).encode())
    return fd


@pytest.mark.parametrize("holds_run", [False, True])
def test_second_train_into_a_locked_directory_exits_2_naming_the_owner(
        tiny_h5: Path, trained_run: Path, tmp_path: Path, holds_run: bool) -> None:
    out = copy_run(trained_run, tmp_path / "run") if holds_run else tmp_path / "run"
    fd = _hold_lock(out)
    try:
        before = _snapshot(out)
        for extra in ([], ["--resume"], ["--overwrite"]):
            if extra == ["--resume"] and not holds_run:
                continue
            res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 3, "--out", out,
                         *extra)
            one_line_error(res, "in use", "pid 4242", "otherhost")
            assert _snapshot(out) == before
    finally:
        os.close(fd)


def test_stale_lock_of_a_dead_process_is_taken_over(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    # a lock file left by a process that died: nobody holds the flock any more
    (out / ".mtlkit.lock").write_text(json.dumps({"pid": 999999, "host": socket.gethostname()}))
    res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 1, "--out", out)
    assert res.exit_code == 0, res.output
    assert (out / "report.json").is_file()
    assert not (out / ".mtlkit.lock").exists()  # released at the end


def test_nproc_parent_checks_the_lock_before_launching(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fd = _hold_lock(out)
    try:
        res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 1, "--out", out,
                     "--nproc", 2)
        one_line_error(res, "in use", "pid 4242")
    finally:
        os.close(fd)


# ------------------------------------------------------------------------- existing runs
def test_existing_run_without_resume_exits_2_and_keeps_the_run(
        tiny_h5: Path, trained_run: Path, tmp_path: Path) -> None:
    out = copy_run(trained_run, tmp_path / "run")
    before = _snapshot(out)
    res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 2, "--out", out)
    one_line_error(res, f"{out} already holds a run of baseline at step 2",
                   "use --resume to continue or --overwrite to start again")
    assert _snapshot(out) == before


def test_overwrite_starts_again_and_keeps_foreign_files(
        tiny_h5: Path, trained_run: Path, tmp_path: Path) -> None:
    out = copy_run(trained_run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    (out / "eval.json").write_text("{}")  # an old evaluation of the old run
    res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 1, "--out", out,
                 "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "report.json").read_text())["steps"] == 1
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1]  # the old run's are gone
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "eval.json").exists()


def test_overwrite_removes_nothing_when_a_check_fails(
        tiny_h5: Path, trained_run: Path, tmp_path: Path) -> None:
    out = copy_run(trained_run, tmp_path / "run")
    before = _snapshot(out)
    res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 1, "--out", out,
                 "--overwrite", "--lr", "-1")
    one_line_error(res, "train.lr")
    assert _snapshot(out) == before


def test_resume_and_overwrite_exclude_each_other(trained_run: Path, tmp_path: Path) -> None:
    out = copy_run(trained_run, tmp_path / "run")
    one_line_error(invoke("train", "--out", out, "--resume", "--overwrite"), "exclude")


@pytest.mark.parametrize("holds", ["nothing", "config_only"])
def test_resume_without_a_checkpoint_exits_2(tmp_path: Path, holds: str) -> None:
    out = tmp_path / "run"
    if holds == "config_only":  # a run killed before its first checkpoint
        out.mkdir()
        (out / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    res = invoke("train", "--out", out, "--resume")
    one_line_error(res, str(out))


# ------------------------------------------------------------------------------ resuming
@pytest.mark.parametrize(
    ("options", "keys"),
    [
        (["--batch-size", "2"], ["train.batch_size"]),
        (["--lr", "0.1", "--accum", "2"], ["train.lr", "train.accum"]),
        (["--tasks", "semseg,depth"], ["data.tasks"]),
        (["--size", "64x96"], ["data.size"]),
        (["--seed", "7"], ["train.seed"]),
        (["--weighting", "uncertainty"], ["train.weighting"]),
        (["--model-arg", "channels=16"], ["model.kwargs"]),
        (["--steps", "1"], ["train.steps", "below the run's current step 2"]),
        (["--data", "OTHER"], ["data.path"]),
    ],
)
def test_resume_that_changes_the_run_lists_each_key(
        trained_run: Path, tmp_path: Path, tiny_h5: Path, options: list[str],
        keys: list[str]) -> None:
    out = copy_run(trained_run, tmp_path / "run")
    if "OTHER" in options:
        other = tmp_path / "other.h5"
        other.write_bytes(tiny_h5.read_bytes())
        options = [str(other) if o == "OTHER" else o for o in options]
    before = _snapshot(out)
    res = invoke("train", "--out", out, "--resume", "--quiet", *options)
    one_line_error(res, "--resume would change the run", *keys)
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    ("options", "key", "value"),
    [
        (["--steps", "3"], "steps", 3),
        (["--steps", "3", "--eval-every", "1"], "eval_every", 1),
        (["--steps", "3", "--ckpt-every", "1"], "ckpt_every", 1),
        (["--steps", "3", "--eval-batches", "1"], "eval_batches", 1),
        (["--steps", "3", "--tensorboard"], "tensorboard", True),
    ],
)
def test_resume_may_change_schedule_settings(
        trained_run: Path, tmp_path: Path, options: list[str], key: str, value: object) -> None:
    out = copy_run(trained_run, tmp_path / "run")
    res = invoke("train", "--out", out, "--resume", "--quiet", *options)
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((out / "config.yaml").read_text())["train"][key] == value
    assert json.loads((out / "report.json").read_text())["steps"] == 3


def test_resuming_a_finished_run_says_so_and_keeps_the_report(
        trained_run: Path, tmp_path: Path) -> None:
    out = copy_run(trained_run, tmp_path / "run")
    before = _snapshot(out)
    res = invoke("train", "--out", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert "already finished at step 2" in " ".join(res.output.split())
    assert _snapshot(out) == before  # report.json not rewritten (no zero images/s)
    assert json.loads((out / "report.json").read_text())["images_per_s"] > 0


# ---------------------------------------------------------------------- nothing written
@pytest.mark.parametrize(
    "options",
    [
        ["--lr", "-1"],
        ["--steps", "0"],
        ["--size", "16x16"],
        ["--dataset", "nyud"],  # the synthetic file is not NYUD
        ["--tasks", "semseg,parts"],
        ["--batch-size", "64"],  # more than the 24 training images
        ["--model-arg", "nonsense=1"],
    ],
)
def test_a_run_that_fails_a_check_writes_nothing(
        tiny_h5: Path, tmp_path: Path, options: list[str]) -> None:
    out = tmp_path / "deep" / "run"
    res = invoke("train", *TRAIN_ARGS, "--data", tiny_h5, "--steps", 1, "--out", out, *options)
    one_line_error(res)
    assert not (tmp_path / "deep").exists()


# ------------------------------------------------------------------------------ preprocess
def test_preprocess_onto_an_existing_file_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "syn.h5"
    out.write_bytes(b"precious")
    args = ["preprocess", "synthetic", "--out", out, "--train", 2, "--val", 1, "--size", "32x40"]
    one_line_error(invoke(*args), str(out), "--overwrite")
    assert out.read_bytes() == b"precious"
    res = invoke(*args, "--overwrite")
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))
