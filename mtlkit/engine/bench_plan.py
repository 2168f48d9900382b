"""What a benchmark is: its settings, the preset rule, the runs it consists of, its manifest.

A benchmark (``mtlkit benchmark``) trains, for every seed, one single-task reference per task
(``--arch single --tasks <task>``) and every multi-task arch, each as an ordinary run directory
``OUT/runs/<name>`` written by a ``mtlkit train`` subprocess:

- ``single-<task>-s<seed>`` for the references, ``<arch>-s<seed>`` for the archs.

Fairness: every run gets the same data, task set, backbone, input size, batch size, number of
steps, seed (per seed), precision and evaluation. These are passed explicitly on each run's
command line, so they override anything a preset says: ``--dataset --data --tasks --aux-tasks ""
--size --augment <the dataset's default> --backbone --batch-size --accum 1 --steps --seed
--amp/--no-amp --no-compile --eval-every 0`` (the one evaluation is the trainer's final one, on
the whole val split with the full metric protocol). Auxiliary-only tasks are switched off (extra
supervision would not be the same data); a preset that sets ``model.pretrained`` is refused
(other runs would start from random weights).

Preset rule (``--config-dir DIR``): an arch's *recipe* may come from a preset. The candidates
are the files ``DIR/<arch>_*.yaml``; one is used when its ``model.arch`` is the arch, its
``data.dataset`` the benchmark's dataset and its ``model.backbone`` the benchmark's backbone (the
file name, e.g. ``bfci_synthetic_tiny.yaml``, is only a filter: presets abbreviate names). No
match: the arch runs with mtlkit's defaults (as ``mtlkit train --arch <arch>``); two matches:
an error. From a preset a run keeps the model keyword arguments (``model.kwargs``) and the
optimisation recipe (optimizer, lr, weight decay, momentum, warm-up, schedule, poly power,
gradient clipping, loss weighting and loss weights), which belong to the arch as its paper or
preset defines it; everything listed under *fairness* above is overridden. The rule applies to
``single`` too (no preset for it ships in ``configs/``).

Manifest ``OUT/benchmark.json`` (written atomically): ``{"kind": "mtlkit-benchmark",
"version", "settings", "presets": {arch: {"path", "sha256"}}, "runs": [{"name", "arch", "seed",
"tasks", "reference", "dir", "preset", "argv", "command"}]}``. Re-running with the same ``--out``
and the same settings resumes; other settings (or a changed preset file) are an error. Settings
that do not change what is trained are not part of this identity: ``--jobs``, ``--workers``,
``--ckpt-every`` and the table-only ``--saliency-metric``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError, DataError, UnknownNameError

MANIFEST = "benchmark.json"
KIND = "mtlkit-benchmark"
VERSION = 1
SALIENCY_METRICS = ("maxF", "mIoU")
#: Settings that define what is trained (a manifest with other values is another benchmark).
IDENTITY = ("archs", "seeds", "steps", "dataset", "data", "tasks", "size", "backbone",
            "batch_size", "amp", "config_dir")


@dataclass
class BenchmarkSettings:
    """The options of ``mtlkit benchmark`` (``None``: the dataset's / mtlkit's default)."""

    archs: list[str]
    seeds: list[int]
    steps: int = 400
    dataset: str = "synthetic-nyud"
    data: str | None = None  # the preprocessed .h5 file (synthetic datasets: the built-in one)
    tasks: list[str] | None = None
    size: list[int] | None = None  # [H, W]
    backbone: str = "tiny"
    batch_size: int = 8
    amp: bool = False
    config_dir: str | None = None
    saliency_metric: str = "maxF"  # table only
    jobs: int = 1  # execution only
    workers: int = 0  # execution only
    ckpt_every: int | None = None  # execution only; None: about every fifth of the steps

    def identity(self) -> dict[str, Any]:
        """The settings that define the benchmark (compared against an existing manifest)."""
        return {k: getattr(self, k) for k in IDENTITY}


@dataclass
class RunSpec:
    """One run of a benchmark."""

    name: str
    arch: str
    seed: int
    tasks: list[str]  # the run's tasks (one for a reference)
    reference: bool  # a single-task reference
    dir: Path  # OUT/runs/<name>
    preset: Path | None
    argv: list[str] = field(default_factory=list)  # the exact command, python executable first

    @property
    def command(self) -> str:
        """The command as a user would type it (``mtlkit train ...``)."""
        return shlex.join(["mtlkit", *self.argv[3:]])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "seed": self.seed, "tasks": self.tasks,
                "reference": self.reference, "dir": str(self.dir),
                "preset": str(self.preset) if self.preset else None, "argv": self.argv,
                "command": self.command}


# --------------------------------------------------------------------------- parsing
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ConfigError on non-integers, negatives and duplicates."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"bad --seeds {text!r}: no seed given", "write integers, e.g. 0,1,2")
    seeds: list[int] = []
    for item in items:
        try:
            seed = int(item)
        except ValueError:
            raise ConfigError(f"bad --seeds {text!r}: {item!r} is not an integer",
                              "write integers, e.g. 0,1,2") from None
        if seed < 0:
            raise ConfigError(f"bad --seeds {text!r}: {seed} is negative",
                              "seeds are integers >= 0")
        if seed in seeds:
            raise ConfigError(f"bad --seeds {text!r}: seed {seed} is given twice",
                              "list each seed once")
        seeds.append(seed)
    return seeds


def parse_archs(text: str) -> list[str]:
    """``"baseline,tpim"`` -> ``["baseline", "tpim"]``; ConfigError on unknown names etc."""
    from mtlkit.registry import ARCHS

    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"bad --archs {text!r}: no arch given", "e.g. --archs baseline,tpim")
    archs: list[str] = []
    for a in items:
        if a == "single":
            raise ConfigError("--archs lists 'single'", "the single-task references are trained "
                              "for every task and seed anyway; leave it out")
        if a not in ARCHS:
            known = ", ".join(n for n in ARCHS.names() if n != "single")
            raise UnknownNameError(f"unknown arch {a!r} in --archs", f"choose from: {known}")
        if a in archs:
            raise ConfigError(f"bad --archs {text!r}: {a!r} is given twice", "list each arch once")
        archs.append(a)
    return archs


def default_archs() -> list[str]:
    """Every registered multi-task arch (all but ``single``)."""
    from mtlkit.registry import ARCHS

    return [a for a in ARCHS.names() if a != "single"]


# --------------------------------------------------------------------------- validation
def resolve_settings(s: BenchmarkSettings) -> BenchmarkSettings:
    """Check ``s`` and fill the dataset defaults (tasks, size) in place; ConfigError when bad."""
    from mtlkit.data import dataset_info
    from mtlkit.registry import BACKBONES

    info = dataset_info(s.dataset)  # UnknownNameError for an unknown dataset
    if not s.archs:
        raise ConfigError("no arch to benchmark", "pass --archs, e.g. baseline,tpim")
    if not s.seeds:
        raise ConfigError("no seed given", "pass --seeds, e.g. 0,1,2")
    if len(set(s.seeds)) != len(s.seeds):
        raise ConfigError(f"--seeds {s.seeds} lists a seed twice", "list each seed once")
    if s.steps < 1:
        raise ConfigError(f"--steps {s.steps} is not positive", "train at least one step")
    if s.batch_size < 1:
        raise ConfigError(f"--batch-size {s.batch_size} is not positive", "use 1 or more")
    if s.jobs < 1:
        raise ConfigError(f"--jobs {s.jobs} is not positive", "run at least one job (--jobs 1)")
    if s.workers < 0:
        raise ConfigError(f"--workers {s.workers} is negative", "use 0 or more")
    if s.ckpt_every is not None and s.ckpt_every < 1:
        raise ConfigError(f"--ckpt-every {s.ckpt_every} is not positive", "use 1 or more")
    if s.saliency_metric not in SALIENCY_METRICS:
        raise ConfigError(f"unknown --saliency-metric {s.saliency_metric!r}",
                          f"choose {' or '.join(SALIENCY_METRICS)}")
    if s.backbone not in BACKBONES and not s.backbone.startswith("timm:"):
        raise UnknownNameError(f"unknown backbone {s.backbone!r}",
                               f"choose {', '.join(BACKBONES.names())} or timm:<name>")
    if s.tasks is None:
        s.tasks = list(info["tasks"])
    if not s.tasks:
        raise ConfigError("--tasks lists no task", f"choose from {', '.join(info['tasks'])}")
    bad = [t for t in s.tasks if t not in info["tasks"]]
    if bad:
        raise ConfigError(f"dataset {s.dataset!r} has no task(s) {', '.join(bad)}",
                          f"choose from {', '.join(info['tasks'])}")
    if len(set(s.tasks)) != len(s.tasks):
        raise ConfigError(f"--tasks {','.join(s.tasks)} lists a task twice", "list each once")
    if len(s.tasks) < 2:
        raise ConfigError("a multi-task benchmark needs at least two tasks",
                          f"pass two or more of {', '.join(info['tasks'])} with --tasks")
    s.size = [int(v) for v in (s.size or info["default_size"])]
    if s.data is not None:
        p = Path(s.data)
        if not p.is_file():
            raise DataError(f"dataset file {s.data!r} not found",
                            f"create it with `mtlkit preprocess {info['preprocess']}`")
        s.data = str(p.resolve())
    elif info["preprocess"] != "synthetic":
        raise ConfigError(f"dataset {s.dataset!r} needs --data (its preprocessed .h5 file)",
                          f"create it with `mtlkit preprocess {info['preprocess']}`")
    if s.config_dir is not None:
        d = Path(s.config_dir)
        if not d.is_dir():
            raise ConfigError(f"--config-dir {s.config_dir!r} is not a directory",
                              "pass the folder of the presets, e.g. configs/")
        s.config_dir = str(d.resolve())
    return s


# --------------------------------------------------------------------------- presets
def find_preset(config_dir: str | Path | None, arch: str, dataset: str, backbone: str
                ) -> Path | None:
    """The preset of ``arch`` for ``dataset``/``backbone`` in ``config_dir`` (module docstring)."""
    from mtlkit.config import load_config

    if config_dir is None:
        return None
    matches = []
    for path in sorted(Path(config_dir).glob(f"{arch}_*.yaml")):
        cfg = load_config(path)  # ConfigError names the file when it is broken
        if (cfg.model.arch, cfg.data.dataset, cfg.model.backbone) == (arch, dataset, backbone):
            matches.append(path)
    if len(matches) > 1:
        raise ConfigError(
            f"two presets for {arch} on {dataset} with backbone {backbone}: "
            f"{matches[0].name} and {matches[1].name}",
            "keep one of them in --config-dir")
    if matches:
        cfg = load_config(matches[0])
        if cfg.model.pretrained:
            raise ConfigError(
                f"preset {matches[0].name} loads pretrained weights ({cfg.model.pretrained})",
                "the other runs of the benchmark start from random weights; "
                "remove model.pretrained from the preset or drop --config-dir")
    return matches[0] if matches else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the runs
def ckpt_period(s: BenchmarkSettings) -> int:
    """Checkpoint period of the runs: ``--ckpt-every`` or about a fifth of the steps."""
    return s.ckpt_every or max(1, -(-s.steps // 5))


def run_argv(s: BenchmarkSettings, arch: str, seed: int, tasks: list[str], out: Path,
             preset: Path | None, data: str | None) -> list[str]:
    """The ``mtlkit train`` command of one run (``python -m cli.main train ...``)."""
    from mtlkit.data import dataset_info

    h, w = s.size or dataset_info(s.dataset)["default_size"]
    argv = [sys.executable, "-m", "cli.main", "train"]
    if preset is not None:
        argv += ["--config", str(preset)]
    argv += ["--arch", arch, "--dataset", s.dataset]
    if data is not None:
        argv += ["--data", data]
    argv += ["--tasks", ",".join(tasks), "--aux-tasks", "",
             "--size", f"{h}x{w}", "--augment", dataset_info(s.dataset)["augment"],
             "--backbone", s.backbone, "--batch-size", str(s.batch_size), "--accum", "1",
             "--steps", str(s.steps), "--seed", str(seed),
             "--amp" if s.amp else "--no-amp", "--no-compile", "--no-tensorboard",
             "--eval-every", "0", "--ckpt-every", str(ckpt_period(s)),
             "--workers", str(s.workers), "--quiet", "--out", str(out)]
    return argv


def plan_runs(s: BenchmarkSettings, out: str | Path, data: str | None = None) -> list[RunSpec]:
    """Every run of the benchmark, seed by seed: the references first, then the archs.

    ``data``: the dataset file passed to every run (``s.data``, or the built-in synthetic file).
    """
    out = Path(out)
    data = data if data is not None else s.data
    assert s.tasks is not None, "resolve_settings first"
    presets = {a: find_preset(s.config_dir, a, s.dataset, s.backbone)
               for a in ["single", *s.archs]}
    runs: list[RunSpec] = []
    for seed in s.seeds:
        jobs = [("single", [t], f"single-{t}-s{seed}", True) for t in s.tasks]
        jobs += [(a, list(s.tasks), f"{a}-s{seed}", False) for a in s.archs]
        for arch, tasks, name, ref in jobs:
            d = out / "runs" / name
            runs.append(RunSpec(name, arch, seed, tasks, ref, d, presets[arch],
                                run_argv(s, arch, seed, tasks, d, presets[arch], data)))
    return runs


def display_path(p: str | Path) -> str:
    """``p`` relative to the working directory when it lies below it (for shown commands)."""
    path = Path(p)
    cwd = Path.cwd()
    if path.is_absolute() and path.is_relative_to(cwd):
        return str(path.relative_to(cwd)) or "."
    return str(p)


def benchmark_command(s: BenchmarkSettings, out: str | Path) -> str:
    """The ``mtlkit benchmark`` command that reproduces these settings (all of them explicit)."""
    argv = ["mtlkit", "benchmark", "--archs", ",".join(s.archs),
            "--seeds", ",".join(str(x) for x in s.seeds), "--steps", str(s.steps),
            "--dataset", s.dataset]
    if s.data is not None:
        argv += ["--data", display_path(s.data)]
    argv += ["--tasks", ",".join(s.tasks or []), "--backbone", s.backbone]
    if s.size:
        argv += ["--size", f"{s.size[0]}x{s.size[1]}"]
    argv += ["--batch-size", str(s.batch_size)]
    if s.amp:
        argv.append("--amp")
    if s.config_dir is not None:
        argv += ["--config-dir", display_path(s.config_dir)]
    argv += ["--saliency-metric", s.saliency_metric, "--out", display_path(out)]
    return shlex.join(argv)


# --------------------------------------------------------------------------- manifest
def manifest_path(out: str | Path) -> Path:
    return Path(out) / MANIFEST


def is_benchmark_dir(path: str | Path) -> bool:
    """True when ``path`` is a benchmark directory (holds ``benchmark.json``)."""
    return manifest_path(path).is_file()


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of a benchmark directory; DataError when missing or corrupt."""
    p = manifest_path(out)
    if not p.is_file():
        raise DataError(f"{str(out)!r} is not a benchmark directory (no {MANIFEST})",
                        "pass the --out directory of mtlkit benchmark")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{str(p)!r} is corrupt ({e.__class__.__name__})",
                        "restore it or start the benchmark in a new --out") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(
            data.get("settings"), dict) or not isinstance(data.get("runs"), list):
        raise DataError(f"{str(p)!r} is not an mtlkit benchmark manifest",
                        "pass the --out directory of mtlkit benchmark")
    return data


def settings_from_manifest(data: dict[str, Any]) -> BenchmarkSettings:
    """The settings recorded in a manifest."""
    names = {f.name for f in dataclasses.fields(BenchmarkSettings)}
    return BenchmarkSettings(**{k: v for k, v in data["settings"].items() if k in names})


def build_manifest(s: BenchmarkSettings, runs: list[RunSpec], out: str | Path) -> dict[str, Any]:
    presets = {r.arch: {"path": str(r.preset), "sha256": _sha256(r.preset)}
               for r in runs if r.preset is not None}
    return {"kind": KIND, "version": VERSION, "out": str(out), "settings": dataclasses.asdict(s),
            "command": benchmark_command(s, out), "presets": presets,
            "runs": [r.to_dict() for r in runs]}


def check_manifest(existing: dict[str, Any], new: dict[str, Any], out: str | Path) -> None:
    """ConfigError when ``existing`` (on disk) describes another benchmark than ``new``."""
    old_s, new_s = existing["settings"], new["settings"]
    diff = [f"{k} {old_s.get(k)!r} -> {new_s.get(k)!r}" for k in IDENTITY
            if old_s.get(k) != new_s.get(k)]
    old_p, new_p = existing.get("presets") or {}, new.get("presets") or {}
    for arch in sorted(set(old_p) | set(new_p)):
        if (old_p.get(arch) or {}).get("sha256") != (new_p.get(arch) or {}).get("sha256"):
            diff.append(f"preset of {arch} changed")
    if diff:
        raise ConfigError(
            f"{str(out)!r} holds another benchmark ({'; '.join(diff)})",
            "pass a new --out, or the same settings to resume it")
