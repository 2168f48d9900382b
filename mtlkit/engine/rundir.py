"""The run directory's safety: an exclusive lock, what a directory already holds, resume checks.

- :class:`RunLock`: ``fcntl.flock`` on ``RUN/.mtlkit.lock``, which holds the owner's pid, host
  and start time. A second ``mtlkit train`` into the same RUN fails at once naming the owner. A
  lock left by a dead process holds no flock (the kernel drops it with the process), so the
  next run takes it over. Under DDP only rank 0 locks (or the ``mtlkit train --nproc`` parent,
  which exports :data:`LOCK_ENV` so that its ranks do not try again).
- :func:`inspect_run`: whether RUN holds a run, of which arch, at which step, finished or not.
- :func:`resume_differences`: the settings a ``--resume`` would change; only
  :data:`MAY_CHANGE_ON_RESUME` may differ (and ``train.steps`` only upwards of the current
  step).
- :func:`clear_run`: remove the files of an old run (``--overwrite``), and only those.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlkit.errors import MtlkitError

LOCK_NAME = ".mtlkit.lock"
#: Set by ``mtlkit train --nproc N`` to the run directory it has locked for its ranks.
LOCK_ENV = "MTLKIT_RUN_LOCKED"
#: Files a run (train, evaluate, plot) writes into its directory; ``--overwrite`` removes these.
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "log.jsonl", "report.json", "eval.json",
             "eval.md", "curves.png")
RUN_GLOBS = ("events.out.tfevents.*", ".last.pt.*.tmp", ".best.pt.*.tmp", ".report.json.*.tmp",
             ".config.yaml.*.tmp")
RUN_SUBDIRS = ("panels",)
#: Files whose presence means the directory holds a run.
_MARKERS = ("config.yaml", "last.pt", "best.pt", "log.jsonl", "report.json")
#: Settings a resumed run may change (they do not change what has been trained so far).
MAY_CHANGE_ON_RESUME = frozenset({
    "train.steps", "train.eval_every", "train.ckpt_every", "train.eval_batches",
    "train.log_every", "train.tensorboard", "train.compile", "train.out", "data.num_workers",
})


class RunBusyError(MtlkitError):
    """Another process holds the run directory's lock."""


class RunExistsError(MtlkitError):
    """The run directory holds a run and neither --resume nor --overwrite was given."""


# ------------------------------------------------------------------------------------- lock
class RunLock:
    """An exclusive, non-blocking lock on a run directory (see the module docstring).

    ``acquire()`` creates the directory (and remembers which folders it created, so that
    ``release(remove_created=True)`` leaves no trace of a run that never started).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        import fcntl

        from mtlkit.utils import os_errors

        with os_errors(self.folder):
            missing = []
            p = self.folder.absolute()
            while not p.exists():
                missing.append(p)
                p = p.parent
            self.folder.mkdir(parents=True, exist_ok=True)
            self._created = missing  # deepest first
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    owner = _read_owner(fd)
                    os.close(fd)
                    self._remove_created()
                    raise RunBusyError(
                        f"run directory {str(self.folder)!r} is in use by another mtlkit "
                        f"process ({owner})",
                        "wait for it to finish, or train into another --out") from None
                # the file may have been removed (and recreated) by its previous owner between
                # our open and our flock: then we locked an orphan inode; start again
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            owner = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
            self._fd = fd
        return self

    def release(self, *, remove_created: bool = False) -> None:
        """Unlock and remove the lock file; ``remove_created``: also remove the (empty)
        folders that :meth:`acquire` created."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it (see acquire)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if remove_created:
            self._remove_created()

    def _remove_created(self) -> None:
        for p in self._created:
            try:
                p.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_not_busy(folder: str | Path) -> None:
    """RunBusyError when another process holds ``folder``'s lock (probes, creates nothing)."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or unreadable: acquire() will tell)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(
                f"run directory {str(folder)!r} is in use by another mtlkit process "
                f"({_read_owner(fd)})", "wait for it to finish, or train into another --out"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_owner(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        text = f"pid {info['pid']} on host {info['host']}"
        if info.get("started"):
            text += f", since {info['started']}"
        return text
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


# ------------------------------------------------------------------------------- inspection
@dataclass
class RunState:
    """What a run directory holds."""

    path: Path
    holds_run: bool
    arch: str | None = None
    step: int = 0
    steps: int | None = None  # the configured total
    has_checkpoint: bool = False
    finished: bool = False  # report.json exists and the checkpoint reached the total

    def describe(self) -> str:
        return f"a run of {self.arch or 'an unknown arch'} at step {self.step}"


def inspect_run(out: str | Path) -> RunState:
    """Read (cheaply) what ``out`` holds; never raises for a missing or foreign directory."""
    p = Path(out)
    if not p.is_dir() or not any((p / m).exists() for m in _MARKERS):
        return RunState(p, holds_run=False)
    state = RunState(p, holds_run=True, has_checkpoint=(p / "last.pt").is_file())
    cfg = _read_yaml(p / "config.yaml")
    ckpt = _peek_checkpoint(p / "last.pt") if state.has_checkpoint else None
    conf = (ckpt or {}).get("config") or cfg or {}
    state.arch = (ckpt or {}).get("arch") or (conf.get("model") or {}).get("arch")
    steps = (conf.get("train") or {}).get("steps")
    state.steps = steps if isinstance(steps, int) else None
    if ckpt is not None:
        state.step = int(ckpt.get("step", 0))
    else:
        state.step = _last_logged_step(p / "log.jsonl")
    state.finished = (p / "report.json").is_file() and state.steps is not None \
        and state.has_checkpoint and state.step >= state.steps
    return state


def _read_yaml(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return d if isinstance(d, dict) else None


def _peek_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint's small entries without reading its tensors (memory-mapped load)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - corrupt: the resume path reports it properly
        return None
    if not isinstance(state, dict):
        return None
    return {k: state.get(k) for k in ("arch", "step", "config")}


def _last_logged_step(path: Path) -> int:
    step = 0
    try:
        for line in path.read_text(errors="replace").splitlines():
            try:
                step = max(step, int(json.loads(line).get("step", 0)))
            except (ValueError, AttributeError, TypeError):
                continue
    except OSError:
        pass
    return step


# ----------------------------------------------------------------------------------- resume
def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and prefix == "":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _same_path(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def resume_differences(old: dict[str, Any], new: dict[str, Any], step: int
                       ) -> tuple[list[str], list[str]]:
    """``(refused, allowed)``: the settings in which ``new`` differs from the run's ``old``
    configuration, each as ``"key old -> new"``. ``refused`` ones change the run; ``allowed``
    ones are in :data:`MAY_CHANGE_ON_RESUME` (``train.steps`` only when not below ``step``)."""
    a, b = _flatten(old), _flatten(new)
    refused, allowed = [], []
    for key in sorted(set(a) | set(b), key=lambda k: (k.split(".")[0] != "model", k)):
        va, vb = a.get(key), b.get(key)
        if key in ("data.path", "model.pretrained", "train.out"):
            if _same_path(va, vb):
                continue
        elif va == vb:
            continue
        text = f"{key} {va!r} -> {vb!r}"
        if key == "train.steps" and isinstance(vb, int) and vb < step:
            refused.append(f"{text} (below the run's current step {step})")
        elif key in MAY_CHANGE_ON_RESUME:
            allowed.append(text)
        else:
            refused.append(text)
    return refused, allowed


# -------------------------------------------------------------------------------- overwrite
def clear_run(out: str | Path) -> list[Path]:
    """Remove the files of the run in ``out`` (:data:`RUN_FILES`, TensorBoard events, stale
    temporary files, ``panels/``); other files are left alone. Returns what was removed."""
    import shutil

    from mtlkit.utils import os_errors

    p = Path(out)
    removed = []
    victims = [p / n for n in RUN_FILES] + [q for g in RUN_GLOBS for q in p.glob(g)]
    # the checkpoint first: a run interrupted here no longer looks resumable
    victims.sort(key=lambda q: q.name != "last.pt")
    for q in victims:
        if q.is_file() or q.is_symlink():
            with os_errors(q, "remove"):
                q.unlink()
            removed.append(q)
    for name in RUN_SUBDIRS:
        q = p / name
        if q.is_dir() and not q.is_symlink():
            with os_errors(q, "remove"):
                shutil.rmtree(q)
            removed.append(q)
    return removed
