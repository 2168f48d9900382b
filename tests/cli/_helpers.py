"""Helpers of the CLI tests: the tiny training options, CliRunner calls, error assertions."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

#: A baseline run small enough to train in a second or two on a CPU.
TRAIN_ARGS = ["--arch", "baseline", "--dataset", "synthetic-nyud", "--size", "64x80",
              "--batch-size", "4", "--eval-every", "0", "--model-arg", "channels=8", "--quiet",
              "--seed", "0"]


def invoke(*args: object):
    """Run ``mtlkit ARGS`` in-process; bugs propagate (catch_exceptions=False)."""
    from cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(res, *needles: str) -> str:
    """Assert exit status 2, one ``error:`` line without a traceback holding ``needles``."""
    text = res.output
    assert res.exit_code == 2, text
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, text
    for n in needles:
        assert n in errors[0], (n, text)
    return errors[0]




def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest
