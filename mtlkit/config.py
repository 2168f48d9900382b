"""Run configuration: three dataclasses (data, model, train) and their YAML form.

A YAML file has the sections ``data``, ``model`` and ``train`` with the fields below; unknown keys
are errors (a typo must not silently fall back to a default), and so are values of the wrong
type (``steps: many``, ``batch_size: [2]``). ``mtlkit train --config FILE`` loads one, and
command-line options override it. :meth:`RunConfig.validate` checks every number against its
range once, for the file and the options alike (see :data:`RANGES`).

A config path that does not exist relative to the working directory is looked up relative to
the mtlkit source tree, so ``--config configs/tpim_nyud_hrnet18.yaml`` works from anywhere.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtlkit.errors import ConfigError


@dataclass
class DataConfig:
    """Dataset, task set and input pipeline."""

    dataset: str = "synthetic-nyud"
    path: str | None = None
    tasks: list[str] | None = None  # None: the dataset's default task set
    aux_tasks: list[str] = field(default_factory=list)
    size: list[int] | None = None  # [H, W]; None: the dataset's default size
    augment: str | None = None  # mtlpt | pascal | atrc | none; None: the dataset's default
    num_workers: int = 0


@dataclass
class ModelConfig:
    """Architecture, backbone and architecture keyword arguments."""

    arch: str = "tpim"
    backbone: str = "tiny"
    pretrained: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation schedule, checkpointing and evaluation cadence."""

    steps: int = 400
    batch_size: int = 8
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_steps: int = 50
    schedule: str = "poly"  # poly | constant
    poly_power: float = 0.9
    clip_grad: float | None = 10.0
    amp: bool = False
    seed: int = 0
    ckpt_every: int = 200  # 0: only the final checkpoint
    eval_every: int = 200  # 0: only the final evaluation
    eval_batches: int | None = None  # limit periodic evaluation (None: whole split)
    log_every: int = 10
    weighting: str | None = None  # None: the arch's default, else "fixed"
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    accum: int = 1
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # SyncBatchNorm under DDP
    tensorboard: bool = False  # TensorBoard event files beside log.jsonl
    out: str = "runs/default"


@dataclass
class RunConfig:
    """The full resolved configuration of a run (what ``config.yaml`` holds)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping with data/model/train sections")
        unknown = set(d) - {"data", "model", "train"}
        if unknown:
            raise ConfigError(
                f"{source}: unknown section(s) {sorted(unknown)}", "use data, model and train"
            )
        return cls(
            data=_build(DataConfig, d.get("data") or {}, f"{source}: data"),
            model=_build(ModelConfig, d.get("model") or {}, f"{source}: model"),
            train=_build(TrainConfig, d.get("train") or {}, f"{source}: train"),
        )

    def override(self, section: str, **values: Any) -> None:
        """Set the non-None ``values`` on a section (command-line options win over the file)."""
        obj = getattr(self, section)
        for k, v in values.items():
            if v is not None:
                if not hasattr(obj, k):
                    raise ConfigError(f"unknown {section} option {k!r}")
                setattr(obj, k, v)

    def validate(self) -> RunConfig:
        """Check every value against its type and range; ConfigError naming the first bad one.

        Names (arch, backbone, dataset, weighting, optimizer, ...) are checked here too, so a
        bad run fails before anything is built or written. Returns ``self``.
        """
        for section in ("data", "model", "train"):
            obj = getattr(self, section)
            for f in dataclasses.fields(obj):
                _check_type(getattr(obj, f.name), _hints(type(obj))[f.name],
                            f"{section}.{f.name}")
        for key, (ok, what) in RANGES.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value is not None and not ok(value):
                raise ConfigError(f"{key} = {value!r} is out of range", f"it must be {what}")
        _check_names(self)
        _check_size(self)
        return self


def _positive_int(v: Any) -> bool:
    return v >= 1


#: ``"section.field": (predicate, "what it must be")`` for every bounded number.
RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.num_workers": (lambda v: v >= 0, ">= 0 (0 loads data in the main process)"),
    "train.steps": (_positive_int, ">= 1"),
    "train.batch_size": (_positive_int, ">= 1"),
    "train.lr": (lambda v: math.isfinite(v) and v > 0, "a number > 0"),
    "train.weight_decay": (lambda v: math.isfinite(v) and v >= 0, ">= 0"),
    "train.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "train.poly_power": (lambda v: math.isfinite(v) and v >= 0, ">= 0"),
    "train.clip_grad": (lambda v: math.isfinite(v) and v > 0, "> 0 (or null for no clipping)"),
    "train.ckpt_every": (lambda v: v >= 0, ">= 0 (0: only the final checkpoint)"),
    "train.eval_every": (lambda v: v >= 0, ">= 0 (0: only the final evaluation)"),
    "train.eval_batches": (_positive_int, ">= 1 (or null for the whole split)"),
    "train.log_every": (_positive_int, ">= 1"),
    "train.accum": (_positive_int, ">= 1"),
    "train.out": (lambda v: bool(v.strip()), "a non-empty path"),
}

#: Output stride of every backbone: the coarsest feature map is H/32 x W/32.
BACKBONE_STRIDE = 32
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("poly", "constant")


def _check_names(cfg: RunConfig) -> None:
    from mtlkit.data import dataset_info
    from mtlkit.data.transforms import PRESETS
    from mtlkit.errors import UnknownNameError
    from mtlkit.registry import ARCHS, BACKBONES, WEIGHTINGS

    dataset_info(cfg.data.dataset)
    if cfg.data.augment is not None and cfg.data.augment not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {cfg.data.augment!r}",
                          f"choose one of: {', '.join(PRESETS)}")
    ARCHS.get(cfg.model.arch)
    bb = cfg.model.backbone
    if bb.startswith("timm:"):
        if not bb[5:]:
            raise ConfigError("backbone 'timm:' names no model", "write timm:<name>, "
                              "e.g. timm:hrnet_w18")
    elif bb not in BACKBONES:
        fix = f"choose one of: {', '.join(BACKBONES.names())}, or timm:<name>"
        if _is_timm_model(bb):
            fix = f"timm models are named with a prefix: use --backbone timm:{bb}"
        raise UnknownNameError(f"unknown backbone {bb!r}", fix)
    if cfg.train.weighting is not None:
        WEIGHTINGS.get(cfg.train.weighting)
    if cfg.train.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.train.optimizer!r}",
                          f"choose one of: {', '.join(OPTIMIZERS)}")
    if cfg.train.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg.train.schedule!r}",
                          f"choose one of: {', '.join(SCHEDULES)}")
    for task, w in cfg.train.loss_weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) \
                or w < 0:
            raise ConfigError(f"train.loss_weights.{task} = {w!r} is out of range",
                              "it must be a number >= 0")
    if cfg.data.tasks is not None and not cfg.data.tasks:
        raise ConfigError("no tasks selected", "pass at least one task (or none for the "
                          "dataset's default set)")


def _is_timm_model(name: str) -> bool:
    """Whether timm knows a model ``name`` (False when timm is not installed)."""
    try:
        import timm
    except ImportError:
        return False
    try:
        return bool(timm.list_models(name)) or timm.is_model(name)
    except Exception:  # noqa: BLE001 - a suggestion only
        return False


def _check_size(cfg: RunConfig) -> None:
    """The input size must be at least the backbone stride (32) on each side, and the coarsest
    feature map of one batch must hold more than one value per channel (BatchNorm)."""
    size = cfg.data.size
    if size is None:
        return
    if len(size) != 2:
        raise ConfigError(f"data.size = {size!r} is not [H, W]", "write the size as HxW")
    h, w = size
    s = BACKBONE_STRIDE
    if h < s or w < s:
        raise ConfigError(f"input size {h}x{w} is smaller than the backbone's output stride "
                          f"({s}) on one side", f"use a size of at least {s}x{s}")
    cells = math.ceil(h / s) * math.ceil(w / s) * cfg.train.batch_size
    if cells < 2:
        raise ConfigError(f"input size {h}x{w} with batch size {cfg.train.batch_size} leaves a "
                          f"single value per channel in the backbone's 1/{s} feature map, which "
                          "BatchNorm cannot normalise in training",
                          f"use a larger size (e.g. {s}x{2 * s}) or a batch size >= 2")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            type(None): "null", Any: "anything"}.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as YAML loads it) is of the annotated type ``tp``."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(tp)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, item)
                                               for k, v in value.items())
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _check_type(value: Any, tp: Any, where: str) -> None:
    if not _matches(value, tp):
        shown = repr(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {shown}",
                          "fix the value in the config file or on the command line")


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}", f"known: {sorted(names)}")
    hints = _hints(cls)
    for k, v in d.items():
        _check_type(v, hints[k], f"{where}.{k}")
    d = {k: (float(v) if hints[k] in (float, float | None) and isinstance(v, int) else v)
         for k, v in d.items()}
    return cls(**d)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run configuration; ConfigError on a missing file or bad contents."""
    p = resolve_config_path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(path)!r} not found", "check the --config path")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML ({e.__class__.__name__})"
        ) from e
    return RunConfig.from_dict(d, source=str(p))


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself when it exists, else the same relative path inside the mtlkit source tree
    (``configs/...`` of the checkout or of the installed package), else ``path`` unchanged."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    here = Path(__file__).resolve().parent
    for root in (here.parent, here):
        if (root / p).is_file():
            return root / p
    return p


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML atomically."""
    from mtlkit.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
