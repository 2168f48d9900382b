"""Running the runs of a benchmark: resume states, concurrent ``mtlkit train`` subprocesses.

State of a run directory ``OUT/runs/<name>`` when the benchmark (re)starts (:func:`run_state`):

- ``done``: ``report.json`` is readable and its ``steps`` equal the target: not run again;
- ``resume``: ``last.pt`` exists: the run continues with ``mtlkit train ... --resume``
  (exact resume, DESIGN.md; a run killed after its last checkpoint only writes its report);
- ``fresh``: neither (a run killed before its first checkpoint, or never started): a leftover
  directory is removed (only directories inside ``OUT/runs``) and the run starts from scratch, so
  ``mtlkit train`` never meets an existing run without ``--resume``.

Processes (:func:`execute`): ``--jobs K`` runs at most K subprocesses at once, each in a slot:

- on the CPU each slot gets ``T = max(1, cores // K)`` threads (``OMP_NUM_THREADS`` and
  ``MKL_NUM_THREADS``, read by torch at start-up; cores = the CPUs this process may use), so
  K x T <= cores;
- on CUDA slot i gets the i-th visible GPU alone (``CUDA_VISIBLE_DEVICES``); K may not exceed the
  number of visible GPUs.

Each run's output goes to ``OUT/logs/<name>.log`` (appended; outside the run directory, so a
log never makes a directory look like a started run). A failing run does not stop the others;
:func:`execute` returns the failures and the caller reports them with their log paths. Every
launch is appended to ``OUT/launches.jsonl`` (run, mode, threads, GPU, jobs, exit status,
seconds),
which the table uses to state how throughput was measured (concurrent runs share the memory
bandwidth and caches, so images/s measured with ``--jobs 2`` is lower than alone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlkit.engine.bench_plan import RunSpec
from mtlkit.errors import ConfigError

LOGS = "logs"
LAUNCHES = "launches.jsonl"


def read_report(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/report.json`` as a dict, or None when missing or unreadable."""
    try:
        data = json.loads((run_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_state(run: RunSpec, steps: int) -> str:
    """``"done"``, ``"resume"`` or ``"fresh"`` (module docstring)."""
    report = read_report(run.dir)
    if report is not None and report.get("steps") == steps and isinstance(
            report.get("metrics"), dict):
        return "done"
    if (run.dir / "last.pt").is_file():
        return "resume"
    return "fresh"


def clear_partial(run: RunSpec, out: Path) -> None:
    """Remove a leftover run directory without a checkpoint (only inside ``out/runs``)."""
    d = run.dir
    if not d.exists():
        return
    runs_root = (out / "runs").resolve()
    if d.resolve().parent != runs_root or d.is_symlink():
        raise ConfigError(f"refusing to remove {str(d)!r}: not a run directory of {str(out)!r}",
                          "remove it yourself or use another --out")
    shutil.rmtree(d)


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """Ids of the CUDA devices the runs may use ([] on a CPU machine or with MTLKIT_DEVICE=cpu)."""
    if os.environ.get("MTLKIT_DEVICE", "") == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        ids = [x.strip() for x in env.split(",") if x.strip()]
        return ids[: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class Slot:
    """Where one concurrent run executes: its environment additions."""

    index: int
    threads: int
    gpu: str | None = None

    def env(self) -> dict[str, str]:
        e = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpu is not None:
            e["CUDA_VISIBLE_DEVICES"] = self.gpu
        return e


def make_slots(jobs: int, gpus: list[str] | None = None, cores: int | None = None) -> list[Slot]:
    """``jobs`` slots: one GPU each on CUDA, else ``cores // jobs`` threads each (>= 1)."""
    gpus = visible_gpus() if gpus is None else gpus
    cores = cpu_count() if cores is None else cores
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} is not positive", "run at least one job (--jobs 1)")
    if gpus:
        if jobs > len(gpus):
            raise ConfigError(f"--jobs {jobs} but only {len(gpus)} GPU(s) visible",
                              f"use --jobs {len(gpus)} or fewer (one GPU per run)")
        threads = max(1, cores // jobs)
        return [Slot(i, threads, gpus[i]) for i in range(jobs)]
    if jobs > cores:
        raise ConfigError(f"--jobs {jobs} exceeds the {cores} CPU core(s) available",
                          f"use --jobs {cores} or fewer")
    return [Slot(i, cores // jobs) for i in range(jobs)]


def subprocess_env(slot: Slot) -> dict[str, str]:
    """The environment of a run: ours, PYTHONPATH with the root of ``cli``, the slot's limits."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding cli/ and mtlkit/
    env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH")) if x)
    env.update(slot.env())
    return env


@dataclass
class Outcome:
    """How one launched run ended."""

    run: RunSpec
    mode: str  # fresh | resume
    returncode: int
    seconds: float
    log: Path
    ok: bool
    reason: str = ""  # why it failed


@dataclass
class _Running:
    run: RunSpec
    mode: str
    slot: Slot
    proc: Any
    log: Any
    start: float = field(default_factory=time.perf_counter)


def last_line(path: Path) -> str:
    """The last non-empty line of a log (for the failure message), '' when none."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


Launcher = Callable[[list[str], dict[str, str], Any], Any]


def _popen(argv: list[str], env: dict[str, str], log: Any) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def execute(pending: list[tuple[RunSpec, str]], slots: list[Slot], out: Path, steps: int, *,
            echo: Callable[[str], None] = print, launcher: Launcher | None = None,
            poll_s: float = 0.2) -> list[Outcome]:
    """Run ``(run, mode)`` pairs on ``slots``; returns every outcome (successful or not).

    ``launcher(argv, env, log_file) -> process`` (``subprocess.Popen`` by default; tests pass
    fakes) must return an object with ``poll()``, ``wait()``, ``terminate()``, ``kill()``.
    On an exception (Ctrl-C) the running subprocesses are terminated; their checkpoints stay,
    and the next invocation resumes them.
    """
    launch = launcher or _popen
    logs = out / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    queue = list(pending)
    free = list(slots)
    running: list[_Running] = []
    outcomes: list[Outcome] = []
    total, launched = len(queue), 0
    try:
        while queue or running:
            while queue and free:
                run, mode = queue.pop(0)
                slot = free.pop(0)
                argv = run.argv + (["--resume"] if mode == "resume" else [])
                log = open(logs / f"{run.name}.log", "a")  # noqa: SIM115 - closed on exit
                log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {mode}: "
                          f"{' '.join(argv)}\n")
                log.flush()
                if mode == "fresh":
                    clear_partial(run, out)
                proc = launch(argv, subprocess_env(slot), log)
                running.append(_Running(run, mode, slot, proc, log))
                launched += 1
                echo(f"[{launched}/{total}] {mode} {run.name}"
                     + (f" (GPU {slot.gpu})" if slot.gpu is not None else
                        f" ({slot.threads} thread{'s' if slot.threads > 1 else ''})"))
            time.sleep(poll_s if running else 0)
            for r in list(running):
                rc = r.proc.poll()
                if rc is None:
                    continue
                running.remove(r)
                free.append(r.slot)
                r.log.close()
                outcomes.append(_finish(r, rc, out, steps, len(slots), echo))
    except BaseException:
        for r in running:
            r.proc.terminate()
        for r in running:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.proc.kill()
            r.log.close()
        raise
    return outcomes


def _finish(r: _Running, rc: int, out: Path, steps: int, jobs: int,
            echo: Callable[[str], None]) -> Outcome:
    seconds = time.perf_counter() - r.start
    log = out / LOGS / f"{r.run.name}.log"
    ok, reason = rc == 0, ""
    if ok and run_state(r.run, steps) != "done":
        ok, reason = False, f"exited 0 but wrote no report.json with {steps} steps"
    elif not ok:
        reason = f"exit status {rc}" + (f": {last_line(log)}" if last_line(log) else "")
    record = {"run": r.run.name, "mode": r.mode, "threads": r.slot.threads, "gpu": r.slot.gpu,
              "jobs": jobs, "returncode": rc, "ok": ok, "seconds": round(seconds, 3),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(out / LAUNCHES, "a") as f:
        f.write(json.dumps(record) + "\n")
    echo(f"{'finished' if ok else 'FAILED'} {r.run.name} in {seconds:.0f} s"
         + ("" if ok else f" ({reason}); log: {log}"))
    return Outcome(r.run, r.mode, rc, seconds, log, ok, reason)


def read_launches(out: Path) -> list[dict[str, Any]]:
    """The records of ``OUT/launches.jsonl`` (a torn last line is skipped)."""
    p = out / LAUNCHES
    if not p.is_file():
        return []
    records = []
    for line in p.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
