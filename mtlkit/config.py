"""Run configuration: three dataclasses (data, model, train) and their YAML form.

A YAML file has the sections ``data``, ``model`` and ``train`` with the fields below; unknown keys
are errors (a typo must not silently fall back to a default). ``mtlkit train --config FILE``
loads one, and command-line options override it.
"""

from __future__ import annotations

import dataclasses
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
    ckpt_every: int = 200
    eval_every: int = 200
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


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}", f"known: {sorted(names)}")
    return cls(**d)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run configuration; ConfigError on a missing file or bad contents."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found", "check the --config path")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML ({e.__class__.__name__})"
        ) from e
    return RunConfig.from_dict(d, source=str(p))


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML atomically."""
    from mtlkit.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
