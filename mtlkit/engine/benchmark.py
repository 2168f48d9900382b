"""``mtlkit benchmark``: a fair, multi-seed comparison of architectures in one command.

:func:`run_benchmark` trains the single-task references (one per task and seed) and every arch
for every seed with identical data, backbone, input size, batch size, steps and evaluation
(:mod:`mtlkit.engine.bench_plan`: the settings, the preset rule and what is overridden), as
ordinary run directories ``OUT/runs/<name>`` written by ``mtlkit train`` subprocesses, at most
``--jobs`` at a time (:mod:`mtlkit.engine.bench_runner`: resume states, threads and GPUs per
process, logs). When every run has finished it writes ``OUT/table.json``, ``OUT/table.md`` and
``OUT/table.png`` (:mod:`mtlkit.engine.bench_table`: mean +- std over seeds, delta_m per seed
with its t interval, params, GFLOPs, images/s, peak memory).

Layout of ``OUT``::

    benchmark.json     manifest: settings, presets (with hashes), every run's exact command
    runs/<name>/       run directories (config.yaml, last.pt, log.jsonl, report.json, ...)
    logs/<name>.log    each run's output (appended across resumes)
    launches.jsonl     one record per launched run (mode, threads/GPU, exit status, seconds)
    table.json, table.md, table.png

Re-running the same command resumes: finished runs are kept, runs with a checkpoint continue
with ``--resume``, runs killed before their first checkpoint start again. ``OUT`` holding another
benchmark (other settings), or a folder that is not a benchmark, is an error; so is a second
``mtlkit benchmark`` on the same ``OUT`` while one runs (a lock on ``OUT/.benchmark.lock``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mtlkit.engine.bench_plan import (
    BenchmarkSettings,
    RunSpec,
    build_manifest,
    check_manifest,
    is_benchmark_dir,
    manifest_path,
    parse_archs,
    parse_seeds,
    plan_runs,
    read_manifest,
    resolve_settings,
)
from mtlkit.engine.bench_runner import Launcher, Outcome, execute, make_slots, run_state
from mtlkit.engine.bench_table import build_table, write_table
from mtlkit.errors import ConfigError
from mtlkit.utils import atomic_write_json

__all__ = ["BenchmarkResult", "BenchmarkSettings", "is_benchmark_dir", "parse_archs",
           "parse_seeds", "run_benchmark"]

LOCK = ".benchmark.lock"


@dataclass
class BenchmarkResult:
    """What one invocation did."""

    out: Path
    runs: list[RunSpec]
    skipped: list[str] = field(default_factory=list)  # finished before this invocation
    outcomes: list[Outcome] = field(default_factory=list)  # the runs launched now
    tables: list[Path] = field(default_factory=list)  # written when every run has finished

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


@contextlib.contextmanager
def benchmark_lock(out: Path) -> Iterator[None]:
    """Hold ``OUT/.benchmark.lock`` exclusively; ConfigError when another benchmark holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(out / LOCK, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another mtlkit benchmark is running in {str(out)!r}",
                              "wait for it to finish or stop it first") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _data_file(s: BenchmarkSettings, echo: Callable[[str], None]) -> str | None:
    """The dataset file every run reads: ``--data``, or the built-in synthetic file."""
    if s.data is not None:
        return s.data
    from mtlkit.data.synthetic import default_synthetic_path, ensure_synthetic

    if not default_synthetic_path().exists():
        echo("building the synthetic dataset once (shared by every run)")
    return str(ensure_synthetic())


def _check_out(out: Path) -> None:
    """ConfigError when ``out`` is a file, or a non-empty folder that is not a benchmark."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file", "pass a directory for the benchmark")
    if out.is_dir() and not manifest_path(out).exists() and any(
            p.name != LOCK for p in out.iterdir()):
        raise ConfigError(f"--out {str(out)!r} is a non-empty folder that is not a benchmark",
                          "pass a new or empty directory")


def run_benchmark(settings: BenchmarkSettings, out: str | Path, *,
                  echo: Callable[[str], None] = print, launcher: Launcher | None = None
                  ) -> BenchmarkResult:
    """Run (or resume) the benchmark ``settings`` in ``out``; write the tables when complete.

    User errors (bad settings, ``out`` holding another benchmark) raise :class:`ConfigError`
    before anything is written. Failed runs are in ``result.failures`` (the others still run);
    the tables are written only when every run has finished.
    """
    out = Path(out)
    s = resolve_settings(settings)
    slots = make_slots(s.jobs)
    _check_out(out)
    if manifest_path(out).exists():
        read_manifest(out)  # corrupt -> DataError before any work
    data = _data_file(s, echo)
    runs = plan_runs(s, out, data)
    manifest = build_manifest(s, runs, out)
    if manifest_path(out).exists():
        check_manifest(read_manifest(out), manifest, out)
    out.mkdir(parents=True, exist_ok=True)
    with benchmark_lock(out):
        if manifest_path(out).exists():  # re-read under the lock
            check_manifest(read_manifest(out), manifest, out)
        atomic_write_json(manifest_path(out), manifest)
        states = [(r, run_state(r, s.steps)) for r in runs]
        pending = [(r, st) for r, st in states if st != "done"]
        skipped = [r.name for r, st in states if st == "done"]
        n_resume = sum(st == "resume" for _, st in pending)
        echo(f"benchmark {out}: {len(runs)} runs ({len(skipped)} finished, {n_resume} to "
             f"resume, {len(pending) - n_resume} to start); {len(slots)} at a time")
        result = BenchmarkResult(out, runs, skipped)
        result.outcomes = execute(pending, slots, out, s.steps, echo=echo, launcher=launcher)
        if result.failures:
            return result
        table = build_table(out, s.saliency_metric)
        result.tables = write_table(out, table)
    return result
