"""The training loop: data, model, losses, weighting, optimiser, schedule, checkpoints, evaluation.

One function, :func:`train`, takes a resolved :class:`~mtlkit.config.RunConfig` and writes the run
directory of DESIGN.md (``config.yaml``, ``last.pt``, ``best.pt``, ``log.jsonl``, ``report.json``).

Loss of a step (DESIGN data flow): for every task, its loss on ``final`` plus ``aux_weight`` times
its loss on every deep-supervision output that predicts it; the weighting combines the per-task
losses; an arch's ``extra_losses`` (e.g. the MT-CP coherence loss) are added.

Exact resume: checkpoints hold model, optimiser, scheduler, scaler, weighting state, RNG states
and the step; the data order is a function of the step (:mod:`mtlkit.engine.sampling`). A CPU run
interrupted and resumed ends with bit-identical weights to an uninterrupted one.

Safety (:mod:`mtlkit.engine.rundir`): every check runs before anything is written into the run
directory: the configuration's values (:meth:`RunConfig.validate`), the output location, what
the directory already holds (a run needs ``resume`` or ``overwrite``), the data file against
the configuration (:func:`mtlkit.data.check.check_data` in :func:`build_parts`: the whole file,
remembered), and on resume the settings that may not change. Then rank 0 locks the directory
for the whole run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlkit.config import RunConfig, dump_config
from mtlkit.engine import distributed as dist_utils
from mtlkit.engine import rundir
from mtlkit.engine.evaluator import (
    _autocast,
    compute_metrics,
    make_eval_loader,
    run_evaluation,
    to_device,
)
from mtlkit.engine.resources import ForwardTimer, peak_memory
from mtlkit.engine.sampling import EpochBatchSampler, SeededDataset
from mtlkit.errors import CheckpointError, ConfigError
from mtlkit.tasks import TaskSpec, get_task
from mtlkit.utils import (
    append_text,
    atomic_torch_save,
    atomic_write_json,
    check_writable,
    rng_state,
    seed_everything,
    set_rng_state,
)
from mtlkit.weighting import Weighting, build_weighting


@dataclass
class RunParts:
    """Everything built from a config: datasets, task specs, model."""

    cfg: RunConfig
    train_set: Any
    val_set: Any
    tasks: list[str]
    aux_tasks: list[str]
    specs: dict[str, TaskSpec]
    model: nn.Module
    size: tuple[int, int]


def resolve_config(cfg: RunConfig) -> RunConfig:
    """Validate ``cfg`` and fill dataset defaults (task set, size, augmentation) in place."""
    from mtlkit.data import dataset_info

    cfg.validate()
    info = dataset_info(cfg.data.dataset)
    if cfg.data.tasks is None:
        cfg.data.tasks = list(info["tasks"])
    if cfg.data.size is None:
        cfg.data.size = list(info["default_size"])
    if cfg.data.augment is None:
        cfg.data.augment = info.get("augment", "mtlpt")
    bad = [t for t in cfg.data.tasks + cfg.data.aux_tasks if t not in info["tasks"]]
    if bad:
        raise ConfigError(
            f"dataset {cfg.data.dataset!r} has no task(s) {bad}",
            f"choose from {list(info['tasks'])}",
        )
    if not cfg.data.tasks:
        raise ConfigError("no tasks selected", "pass at least one task")
    cfg.validate()  # the filled-in size against the backbone stride
    return cfg


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Make the data and pretrained-weights paths absolute (in place), so that the run's
    ``config.yaml`` and checkpoints work from any working directory."""
    if cfg.data.path is not None:
        cfg.data.path = str(Path(cfg.data.path).expanduser().absolute())
    if cfg.model.pretrained is not None:
        cfg.model.pretrained = str(Path(cfg.model.pretrained).expanduser().absolute())
    return cfg


def check_run_dir(cfg: RunConfig, *, resume: bool, overwrite: bool,
                  probe_lock: bool = True) -> rundir.RunState:
    """The output location is writable, not in use by another process (``probe_lock``), and
    what it holds fits ``resume`` / ``overwrite``."""
    out = Path(cfg.train.out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other",
                          "pass --resume to continue the run or --overwrite to start again")
    check_writable(out, kind="folder")
    if probe_lock and os.environ.get(rundir.LOCK_ENV) != str(out.absolute()):
        rundir.check_not_busy(out)
    state = rundir.inspect_run(out)
    if resume and not state.has_checkpoint:
        if state.holds_run:
            raise CheckpointError(f"{str(out)!r} has no last.pt to resume from (the run "
                                  "stopped before its first checkpoint)",
                                  "start it again with --overwrite")
        raise CheckpointError(f"{str(out)!r} holds no run to resume",
                              "start a new run without --resume (or pass the run's --out)")
    if not resume and state.holds_run and not overwrite:
        raise rundir.RunExistsError(f"{out} already holds {state.describe()}",
                                    "use --resume to continue or --overwrite to start again")
    return state


def build_parts(cfg: RunConfig, *, need_train: bool = True, check: bool = True,
                progress: bool = False, console: Any = None) -> RunParts:
    """Datasets, task specs and model of a (resolved) config.

    ``check``: check the data file against the config before building the model
    (:func:`mtlkit.data.check.check_data`, the splits used; remembered per file).
    """
    from mtlkit.data import build_dataset, dataset_info
    from mtlkit.models import create_model
    from mtlkit.models.backbones import input_size_hint

    cfg = resolve_config(cfg)
    d = cfg.data
    size = (int(d.size[0]), int(d.size[1]))
    all_tasks = list(d.tasks) + [t for t in d.aux_tasks if t not in d.tasks]
    train_set = None
    if need_train:
        train_set = build_dataset(
            d.dataset,
            path=d.path,
            split="train",
            tasks=all_tasks,
            size=size,
            train=True,
            augment=d.augment,
        )
    val_set = build_dataset(
        d.dataset,
        path=d.path,
        split="val",
        tasks=all_tasks,
        size=size,
        train=False,
        augment=d.augment,
    )
    ref = val_set
    if check and getattr(val_set, "path", None) is not None:
        from mtlkit.data.check import check_data

        check_data(val_set.path, d.dataset, all_tasks, ("train", "val") if need_train else ("val",),
                   progress=progress, console=console)
    info = dataset_info(d.dataset)
    specs = {
        t: get_task(t, ref.num_classes.get(t), edge_max_dist=info.get("edge_max_dist", 0.011))
        for t in all_tasks
    }
    kwargs = dict(cfg.model.kwargs)
    if d.aux_tasks:
        kwargs["aux_tasks"] = list(d.aux_tasks)
    with input_size_hint(size):  # ViT / Swin backbones are built for the input size
        try:
            model = create_model(
                cfg.model.arch,
                {t: specs[t].out_channels for t in all_tasks},
                backbone=cfg.model.backbone,
                pretrained=cfg.model.pretrained,
                **kwargs,
            )
        except TypeError as e:
            if "unexpected keyword argument" not in str(e):
                raise
            bad = str(e).split("unexpected keyword argument")[-1].strip()
            raise ConfigError(f"arch {cfg.model.arch!r} has no option {bad}",
                              "check the --model-arg / model.kwargs names") from None
    return RunParts(cfg, train_set, val_set, list(d.tasks), list(d.aux_tasks), specs, model, size)


def compute_losses(
    out: dict[str, Any], batch: dict[str, Any], specs: dict[str, TaskSpec], aux_weight: float
) -> dict[str, Tensor]:
    """Per-task loss: final output plus ``aux_weight`` x every deep-supervision output."""
    losses: dict[str, Tensor] = {}
    for t, pred in out["final"].items():
        losses[t] = specs[t].loss(pred, batch[t])
    for aux in out.get("aux", []):
        for t, pred in aux.items():
            loss = aux_weight * specs[t].loss(pred, batch[t])
            losses[t] = losses[t] + loss if t in losses else loss
    return losses


def build_optimizer(cfg: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    raise ConfigError(f"unknown optimizer {t.optimizer!r}", "choose adamw, adam or sgd")


def lr_factor(step: int, cfg: RunConfig) -> float:
    """Linear warm-up then poly decay ``(1 - step/steps)^power`` (or constant)."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    if t.schedule != "poly":
        raise ConfigError(f"unknown schedule {t.schedule!r}", "choose poly or constant")
    return max(0.0, 1.0 - step / max(1, t.steps)) ** t.poly_power


def _score(
    results: dict[str, dict[str, Any]], ref: dict[str, dict[str, Any]], specs: dict[str, TaskSpec]
) -> float:
    """Model-selection score: delta_m (%) of ``results`` against the first evaluation ``ref``."""
    total, n = 0.0, 0
    for t, vals in results.items():
        m, r = vals.get(specs[t].main_metric), ref[t].get(specs[t].main_metric)
        if m is None or r is None or r == 0:
            continue
        sign = 1.0 if specs[t].main_higher_is_better else -1.0
        total += sign * (m - r) / abs(r)
        n += 1
    return 100.0 * total / max(n, 1)


class Trainer:
    """Holds the state of one run; :meth:`fit` runs it to ``cfg.train.steps``."""

    def __init__(
        self, cfg: RunConfig, *, resume: bool = False, progress: bool = True, console: Any = None,
        single_task: list[str] | None = None, saliency_metric: str = "maxF",
        overwrite: bool = False,
    ) -> None:
        from mtlkit.metrics.delta_m import main_metrics

        self.main_metrics = main_metrics(saliency_metric)  # delta_m's metric per task
        self.ctx = dist_utils.init()
        self.cfg = cfg
        self.out = Path(cfg.train.out)
        self.progress = progress and self.ctx.is_main
        self.console = console
        self.lock: rundir.RunLock | None = None
        resolve_config(absolute_paths(cfg))
        if self.ctx.is_main:
            check_run_dir(cfg, resume=resume, overwrite=overwrite)
        self.references = _single_task_references(single_task, self.main_metrics)
        seed_everything(cfg.train.seed)
        self.parts = build_parts(cfg, progress=self.progress, console=console)
        self._check_batches()
        self.device = self.ctx.device
        model = self.parts.model
        if cfg.train.sync_bn and self.ctx.distributed:
            if self.device.type != "cuda":  # torch's SyncBatchNorm runs on GPUs only
                raise ConfigError(
                    "--sync-bn needs GPUs (SyncBatchNorm has no CPU kernel)",
                    "drop --sync-bn on CPU: BatchNorm then uses per-rank batches",
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        self.specs = self.parts.specs
        self.aux_weight = float(getattr(self.model, "aux_weight", 1.0))
        base = {t: s.weight for t, s in self.specs.items()}
        base.update(cfg.train.loss_weights)
        wname = cfg.train.weighting or getattr(self.model, "default_weighting", "fixed")
        cfg.train.weighting = wname
        self.weighting: Weighting = build_weighting(
            wname, list(self.specs), base, loss_weights=cfg.train.loss_weights,
            **cfg.train.weighting_kwargs
        ).to(self.device)
        self.weighting.set_steps_per_epoch(
            EpochBatchSampler.batches_per_epoch(
                len(self.parts.train_set), cfg.train.batch_size, self.ctx.world
            )
            // cfg.train.accum
        )
        params = list(self.model.parameters()) + list(self.weighting.parameters())
        self.optimizer = build_optimizer(cfg, params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 autocast needs no scaling
        self.ddp_model = dist_utils.wrap_model(self.model, self.ctx)
        if cfg.train.compile:
            self.ddp_model = torch.compile(self.ddp_model)
        self.tb = None
        self.step = 0
        self.best_score: float | None = None
        self.ref_metrics: dict[str, Any] | None = None
        self.last_metrics: dict[str, Any] | None = None
        self.images_per_s = 0.0
        self.infer_images_per_s: float | None = None  # forwards of the latest evaluation
        if resume:
            self._load(self.out / "last.pt")
        #: resumed at (or past) its last step: nothing to train, the report stands
        self.finished = resume and self.step >= cfg.train.steps
        if self.ctx.is_main:
            self._commit(resume=resume, overwrite=overwrite)

    def _check_batches(self) -> None:
        """The training split holds at least one global batch (before anything is written)."""
        t = self.cfg.train
        n = len(self.parts.train_set)
        if EpochBatchSampler.batches_per_epoch(n, t.batch_size, self.ctx.world) == 0:
            raise ConfigError(
                f"the training split has {n} samples, fewer than one global batch of "
                f"{t.batch_size * self.ctx.world}",
                "lower --batch-size",
            )

    def _commit(self, *, resume: bool, overwrite: bool) -> None:
        """Every check has passed: lock the run directory (unless the ``--nproc`` parent holds
        it), re-check what it holds under the lock, then start the run (rank 0 only)."""
        locked_by_parent = os.environ.get(rundir.LOCK_ENV) == str(self.out.absolute())
        if not locked_by_parent:
            self.lock = rundir.RunLock(self.out).acquire()
        try:
            state = check_run_dir(self.cfg, resume=resume, overwrite=overwrite,
                                  probe_lock=False)
            if overwrite and state.holds_run:
                rundir.clear_run(self.out)
            if not self.finished:
                dump_config(self.cfg, self.out / "config.yaml")
        except BaseException:
            self.close(remove_created=True)
            raise

    def close(self, *, remove_created: bool = False) -> None:
        """Release the run directory's lock (rank 0); idempotent."""
        if self.tb is not None:
            try:
                self.tb.close()
            except Exception:  # noqa: BLE001 - event files are best effort
                pass
            self.tb = None
        if self.lock is not None:
            self.lock.release(remove_created=remove_created)
            self.lock = None

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "arch": self.cfg.model.arch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "weighting": self.weighting.checkpoint_state(),
            "step": self.step,
            "config": self.cfg.to_dict(),
            "rng": rng_state(),
            "best_score": self.best_score,
            "ref_metrics": self.ref_metrics,
            "metrics": self.last_metrics,
            "images_per_s": self.images_per_s,
        }

    def save(self, name: str) -> None:
        if self.ctx.is_main:
            atomic_torch_save(self.state(), self.out / name)

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("arch") != self.cfg.model.arch:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is of arch {state.get('arch')!r}, "
                f"not {self.cfg.model.arch!r}",
                "resume with the same --arch or start a new --out directory",
            )
        self._check_resume_config(path, state)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match the model ({str(e).splitlines()[0]})",
                "resume with the same configuration",
            ) from e
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.weighting.load_checkpoint_state(state["weighting"])
        self.step = int(state["step"])
        self.best_score = state.get("best_score")
        self.ref_metrics = state.get("ref_metrics")
        self.last_metrics = state.get("metrics")
        self.images_per_s = float(state.get("images_per_s") or 0.0)
        set_rng_state(state["rng"])

    def _check_resume_config(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a resume that would change the run; report the settings that may change."""
        old = state.get("config")
        if not isinstance(old, dict):
            return
        refused, allowed = rundir.resume_differences(old, self.cfg.to_dict(),
                                                     int(state.get("step", 0)))
        if refused:
            raise ConfigError(
                f"--resume would change the run in {str(self.out)!r}: " + "; ".join(refused),
                "resume with the run's settings (only --steps upwards, --eval-every, "
                "--ckpt-every, --eval-batches, --workers, --tensorboard, --compile may change), "
                "or train into a new --out")
        if allowed and self.ctx.is_main and self.console is not None:
            self.console.print("resuming with changed settings (written to config.yaml): "
                               + "; ".join(allowed), highlight=False)

    # ----------------------------------------------------------------- logging
    def log(self, record: dict[str, Any]) -> None:
        """Append a record to ``log.jsonl`` (rank 0), mirrored to TensorBoard when enabled."""
        if not self.ctx.is_main:
            return
        append_text(self.out / "log.jsonl", json.dumps(record) + "\n")
        if self.cfg.train.tensorboard:
            self._tensorboard(record)

    def _tensorboard(self, record: dict[str, Any]) -> None:
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.out))
        step = record["step"]
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(f"train/{k}", v, step)
        for task, vals in (record.get("metrics") or {}).items():
            for k, v in vals.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"val/{task}/{k}", v, step)
        self.tb.flush()

    # ----------------------------------------------------------------- evaluation
    def evaluate(
        self, max_batches: int | None = None, fast: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Evaluate on the val split (sharded across ranks, accumulators reduced)."""
        val = self.parts.val_set
        final_specs = {t: self.specs[t] for t in self.parts.tasks}
        shard = dist_utils.shard_dataset(val, self.ctx)
        dist_utils.broadcast_buffers(self.model, self.ctx)  # every rank evaluates rank 0's model
        if max_batches is not None:  # a global budget: each rank takes its share
            max_batches = math.ceil(max_batches / self.ctx.world)
        with torch.random.fork_rng(devices=[]):
            loader = make_eval_loader(shard, self.cfg.train.batch_size, self.cfg.data.num_workers)
        with ForwardTimer(self.model) as timer:
            metrics = run_evaluation(
                self.model,
                loader,
                final_specs,
                self.device,
                amp=self.cfg.train.amp,
                max_batches=max_batches,
                fast=fast,
            )
        rate = dist_utils.average_floats({"r": timer.images_per_s or 0.0}, self.ctx)["r"]
        self.infer_images_per_s = rate * self.ctx.world or None  # summed over the processes
        metrics = dist_utils.reduce_metrics(metrics, self.ctx)
        return compute_metrics(metrics)

    def _periodic_eval(self, final: bool) -> None:
        results = self.evaluate(None if final else self.cfg.train.eval_batches, fast=not final)
        self.last_metrics = results
        if self.ref_metrics is None:
            self.ref_metrics = results
        score = _score(results, self.ref_metrics, self.specs)
        self.log({"step": self.step, "metrics": results, "score": score})
        if self.best_score is None or score > self.best_score:
            self.best_score = score
            self.save("best.pt")

    # ----------------------------------------------------------------- training
    def train_step(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over ``accum`` micro-batches; returns loss values for logging."""
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for i, batch in enumerate(batches):
            # DDP: accumulate locally, all-reduce once in the last micro-batch's backward
            with dist_utils.no_sync(self.ddp_model, skip=i < len(batches) - 1):
                self._micro_step(batch, len(batches), logs)
        dist_utils.all_reduce_grads(self.weighting.parameters(), self.ctx)
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"loss became {logs['loss']} at step {self.step}")
        if self.cfg.train.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return logs

    def _micro_step(self, batch: dict[str, Any], n: int, logs: dict[str, float]) -> None:
        """Forward, loss and backward of one micro-batch (of ``n``); adds to ``logs``."""
        batch = to_device(batch, self.device)
        with _autocast(self.device, self.cfg.train.amp):
            out = self.ddp_model(batch["image"])
        losses = compute_losses(out, batch, self.specs, self.aux_weight)
        shared = getattr(self.model, "shared_parameters", None)
        total = self.weighting.combine(
            losses, step=self.step, shared_params=list(shared()) if callable(shared) else None
        )
        for name, extra in out.get("extra_losses", {}).items():
            total = total + extra
            logs[f"loss_{name}"] = logs.get(f"loss_{name}", 0.0) + float(extra.detach()) / n
        (total / n).backward()
        logs["loss"] = logs.get("loss", 0.0) + float(total.detach()) / n
        for t, v in losses.items():
            logs[f"loss_{t}"] = logs.get(f"loss_{t}", 0.0) + float(v.detach()) / n

    def _loader(self, epoch: int, start: int) -> DataLoader:
        from mtlkit.data import collate

        t = self.cfg.train
        sampler = EpochBatchSampler(
            len(self.parts.train_set),
            t.batch_size,
            t.seed,
            epoch,
            start,
            self.ctx.rank,
            self.ctx.world,
        )
        with torch.random.fork_rng(devices=[]):
            return DataLoader(
                SeededDataset(self.parts.train_set),
                batch_sampler=sampler,
                num_workers=self.cfg.data.num_workers,
                collate_fn=collate,
                persistent_workers=False,
            )

    def batches(self):
        """Infinite stream of micro-batches starting at the current step."""
        t = self.cfg.train
        per_epoch = EpochBatchSampler.batches_per_epoch(
            len(self.parts.train_set), t.batch_size, self.ctx.world
        )
        micro = self.step * t.accum
        while True:
            epoch, start = divmod(micro, per_epoch)
            with torch.random.fork_rng(devices=[]):
                it = iter(self._loader(epoch, start))
            for batch in it:
                micro += 1
                yield batch

    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.train.steps``, evaluating and checkpointing; returns the report."""
        from mtlkit.engine.progress import TrainProgress

        t = self.cfg.train
        if self.finished:
            return self._finished_report()
        stream = self.batches()
        window_t, window_n = time.perf_counter(), 0
        with TrainProgress(t.steps, self.step, enabled=self.progress, console=self.console) as bar:
            while self.step < t.steps:
                batches = [next(stream) for _ in range(t.accum)]
                logs = self.train_step(batches)
                window_n += t.batch_size * t.accum * self.ctx.world
                if self.step % t.log_every == 0 or self.step == t.steps:
                    logs = dist_utils.average_floats(logs, self.ctx)  # whole global batch
                    now = time.perf_counter()
                    self.images_per_s = window_n / max(now - window_t, 1e-9)
                    window_t, window_n = now, 0
                    self.log(
                        {
                            "step": self.step,
                            **logs,
                            "lr": self.scheduler.get_last_lr()[0],
                            "images_per_s": self.images_per_s,
                            "weights": self.weighting.weights(),
                        }
                    )
                bar.update(self.step, logs["loss"], self.images_per_s)
                final = self.step == t.steps
                if (t.eval_every and self.step % t.eval_every == 0) or final:
                    bar.note("evaluating")
                    self._periodic_eval(final)
                if (t.ckpt_every and self.step % t.ckpt_every == 0) or final:
                    self.save("last.pt")
        if self.last_metrics is None:
            self.last_metrics = self.evaluate()
        report = self.report()
        if self.ctx.is_main:
            atomic_write_json(self.out / "report.json", report)
        return report

    def _finished_report(self) -> dict[str, Any]:
        """A resumed run that already reached ``steps``: say so and keep its report.json."""
        if self.ctx.is_main and self.console is not None:
            self.console.print(f"{self.out} is already finished at step {self.step} of "
                               f"{self.cfg.train.steps}: nothing to train (raise --steps to "
                               "train longer)", highlight=False)
        path = self.out / "report.json"
        try:
            report = json.loads(path.read_text())
            if isinstance(report, dict) and isinstance(report.get("metrics"), dict):
                return report
        except (OSError, ValueError):
            pass
        if self.last_metrics is None:  # killed between the last checkpoint and the report
            self.last_metrics = self.evaluate()
        report = self.report()
        if self.ctx.is_main:
            atomic_write_json(path, report)
        return report

    def report(self) -> dict[str, Any]:
        from mtlkit.models.factory import count_params

        peak_mib, peak_kind = peak_memory(self.device)
        return {
            "arch": self.cfg.model.arch,
            "backbone": self.cfg.model.backbone,
            "dataset": self.cfg.data.dataset,
            "tasks": self.parts.tasks,
            "aux_tasks": self.parts.aux_tasks,
            "steps": self.step,
            "params": count_params(self.model),
            "images_per_s": self.images_per_s,
            "infer_images_per_s": self.infer_images_per_s,  # mtlkit.engine.resources
            "peak_memory_mib": peak_mib,
            "peak_memory_kind": peak_kind,
            "weighting": self.cfg.train.weighting,
            "metrics": self.last_metrics,
            **self._delta_m(),
        }

    def _delta_m(self) -> dict[str, Any]:
        """``{"delta_m": %}`` (MTI-Net eq. 2) against the single-task references, if given."""
        from mtlkit.metrics.delta_m import delta_m

        use = [t for t in self.parts.tasks if t in self.references]
        if not use or not self.last_metrics:
            return {}
        value = delta_m({t: self.last_metrics[t] for t in use},
                        {t: self.references[t] for t in use}, main_metrics=self.main_metrics)
        return {"delta_m": value, "delta_m_tasks": use,
                "delta_m_metrics": {t: self.main_metrics[t] for t in use},
                "saliency_metric": self.main_metrics["saliency"]}


def _single_task_references(runs: list[str] | None, main: dict[str, str] | None = None
                            ) -> dict[str, dict[str, float]]:
    """Main metrics of single-task runs (``--single-task RUN``), read before training starts."""
    if not runs:
        return {}
    from mtlkit.engine.compare import load_run, single_task_references

    return single_task_references([load_run(r) for r in runs], main)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by the trainer; CheckpointError when missing or corrupt."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {str(p)!r} not found",
            "pass the path of a last.pt/best.pt written by mtlkit train",
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt or not a torch file ({e.__class__.__name__})",
            "use another checkpoint",
        ) from e
    if not isinstance(state, dict) or not {"model", "config", "step"} <= set(state):
        raise CheckpointError(
            f"{str(p)!r} is not an mtlkit checkpoint",
            "pass a last.pt/best.pt written by mtlkit train",
        )
    return state


def train(
    cfg: RunConfig, *, resume: bool = False, progress: bool = True, console: Any = None,
    single_task: list[str] | None = None, saliency_metric: str = "maxF",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a model as configured; writes the run directory and returns ``report.json``'s dict.

    ``resume``: continue the run in ``cfg.train.out`` from its ``last.pt``; ``overwrite``: remove
    the run that directory holds and start again (without either, a directory holding a run is
    an error). ``single_task``: run directories of single-task models; the report then holds
    ``delta_m`` (with ``delta_m_metrics`` and ``saliency_metric``: saliency's main metric,
    ``maxF`` or ``mIoU``, see :func:`mtlkit.metrics.delta_m.main_metrics`).
    """
    trainer = Trainer(cfg, resume=resume, progress=progress, console=console,
                      single_task=single_task, saliency_metric=saliency_metric,
                      overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()
        dist_utils.cleanup(trainer.ctx)
