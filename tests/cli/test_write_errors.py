"""Full disks and read-only locations: one line, exit 2, nothing half-written (issue 17, sec. 3).

Every command that writes (train, preprocess, predict, evaluate, plot, compare) is run against
each way a write can fail:

- ``EFBIG`` (a full disk, as far as the writer can tell): a small ``RLIMIT_FSIZE`` in a
  subprocess, with ``SIGXFSZ`` ignored so that the write fails instead of killing the process;
  the limit lets the small files through and stops the large one (checkpoint, HDF5 file, ...);
- ``EACCES``: an output folder without write permission. Root ignores permission bits, so when
  the tests run as root the subprocess runs without the capabilities that let it
  (``setpriv --bounding-set -dac_override,-dac_read_search``; skipped without setpriv);
- ``EROFS``: a read-only bind mount in a private mount namespace (``unshare -m``; root only,
  skipped elsewhere);
- ``ENOTDIR``: an output path below a regular file (in-process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli._helpers import TRAIN_ARGS, invoke, one_line_error

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["train", "preprocess", "predict", "evaluate", "plot", "compare"]

_JOBS_SCRIPT = r"""
import json, resource, signal, sys
from typer.testing import CliRunner
from cli.main import app

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
out = []
for job in json.loads(sys.argv[1]):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if job.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], hard))
    try:
        r = CliRunner().invoke(app, job["args"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    exc = r.exception if r.exception and not isinstance(r.exception, SystemExit) else None
    out.append({"code": r.exit_code, "output": r.output, "exception": repr(exc) if exc else None})
print("JOBS-RESULT " + json.dumps(out))
"""


@pytest.fixture
def workspace(tiny_h5: Path, trained_run: Path, tmp_path: Path) -> Iterator[Path]:
    """Data, a trained run, a cache, and ``out/`` where every command writes."""
    base = tmp_path
    shutil.copy(tiny_h5, base / "tiny.h5")
    shutil.copytree(trained_run, base / "out" / "run")
    for name in ("cache", "home"):
        (base / name).mkdir()
    yield base
    for p in [base, *base.rglob("*")]:  # undo read-only folders, for pytest's cleanup
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


def _jobs(base: Path, out: Path, limits: bool) -> dict[str, dict]:
    """One failing invocation per command, writing below ``out``; ``limits``: with the file
    size limit that lets the small files of each command through but not its large one."""
    run = out / "run"
    jobs = {
        "train": (["train", *TRAIN_ARGS, "--data", base / "tiny.h5", "--steps", 2,
                   "--ckpt-every", 1, "--out", out / "new"], 200_000),
        "preprocess": (["preprocess", "synthetic", "--out", out / "syn.h5", "--train", 6,
                        "--val", 2, "--size", "64x80"], 50_000),
        "predict": (["predict", "--checkpoint", run / "last.pt", "--images", base / "tiny.h5",
                     "--out", out / "panels", "--limit", 2], 1_000),
        "evaluate": (["evaluate", "--checkpoint", run / "last.pt"], 1_000),
        "plot": (["plot", run], 1_000),
        "compare": (["compare", run, "--markdown", out / "table.md"], 10),
    }
    return {k: {"args": [str(a) for a in args], "fsize": size if limits else None}
            for k, (args, size) in jobs.items()}


# what each command must not leave behind
_ABSENT = {"train": ["new/last.pt"], "preprocess": ["syn.h5"], "predict": ["panels/00000.png"],
           "evaluate": ["run/eval.json", "run/eval.md"], "plot": ["run/curves.png"],
           "compare": ["table.md"]}


def _run_jobs(jobs: dict[str, dict], base: Path, *,
              wrap: list[str] | None = None) -> dict[str, dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        MTLKIT_CACHE=str(base / "cache"), MPLCONFIGDIR=str(base / "home"),
        HOME=str(base / "home"), OMP_NUM_THREADS="1", COLUMNS="200")
    cmd = [*(wrap or []), sys.executable, "-c", _JOBS_SCRIPT, json.dumps(list(jobs.values()))]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=base)
    line = next((x for x in res.stdout.splitlines() if x.startswith("JOBS-RESULT ")), None)
    if line is None:
        if wrap:
            pytest.skip(f"cannot run the checkout this way here: {res.stderr.strip()[-300:]}")
        raise AssertionError(res.stdout + res.stderr)
    return dict(zip(jobs, json.loads(line[len("JOBS-RESULT "):]), strict=True))


def _assert_clean_failures(results: dict[str, dict], out: Path, needle: str) -> None:
    for name, r in results.items():
        assert r["exception"] is None, (name, r)
        text = r["output"]
        assert r["code"] == 2, (name, text)
        assert "Traceback" not in text, (name, text)
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], (name, text)
        assert str(out) in errors[0], (name, text)  # the path
        for rel in _ABSENT[name]:
            assert not (out / rel).exists(), (name, rel)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_full_disk(workspace: Path) -> None:
    out = workspace / "out"
    results = _run_jobs(_jobs(workspace, out, limits=True), workspace)
    _assert_clean_failures(results, out, "EFBIG")
    # train failed at its first checkpoint: the run's small files are whole
    new = out / "new"
    assert (new / "config.yaml").read_text().startswith("data:")
    log = new / "log.jsonl"
    assert not log.exists() or all(json.loads(x) for x in log.read_text().splitlines())
    assert not (new / ".mtlkit.lock").exists()


def test_folder_without_write_permission(workspace: Path) -> None:
    out = workspace / "out"
    jobs = _jobs(workspace, out, limits=False)
    for p in [out, *out.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    wrap = None
    if os.geteuid() == 0:  # root writes anywhere, unless it lacks CAP_DAC_OVERRIDE
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permission bits cannot be tested")
        wrap = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    results = _run_jobs(jobs, workspace, wrap=wrap)
    _assert_clean_failures(results, out, "EACCES")


def test_read_only_file_system(workspace: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only bind mount needs root and unshare")
    out = workspace / "out"
    mount = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && '
             'exec "$@"')
    results = _run_jobs(_jobs(workspace, out, limits=False), workspace,
                        wrap=["unshare", "-m", "sh", "-c", mount, "sh", str(out)])
    _assert_clean_failures(results, out, "EROFS")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "evaluate"])
def test_output_below_a_file(workspace: Path, command: str) -> None:
    """ENOTDIR: the output path goes through a regular file (evaluate writes beside its
    checkpoint, which cannot be below a file)."""
    blocker = workspace / "out" / "file"
    blocker.write_text("not a folder")
    job = _jobs(workspace, blocker, limits=False)[command]
    args = [a.replace(str(blocker / "run"), str(workspace / "out" / "run")) for a in job["args"]]
    if command == "plot":
        args += ["--out", str(blocker / "curves.png")]
    res = invoke(*args)
    one_line_error(res, str(blocker), "not a folder")
    assert blocker.read_text() == "not a folder"
