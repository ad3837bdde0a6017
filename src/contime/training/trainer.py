"""The training loop: train, validate each epoch, keep the best, test it; checkpoint and resume exactly.

    config = TrainConfig(epochs=20, batch_size=100, lr=1e-3, schedule="cosine", clip_grad_norm=1.0)
    trainer = Trainer(model, config, train=(x_train, y_train), val=(x_val, y_val), test=(x_test, y_test),
                      loss="cross_entropy", metric="accuracy", run_dir=run_dir / "LMU", name="LMU")
    result = trainer.fit()          # a metrics.json record, with the per-epoch history

What ``fit`` does:
    * every epoch: the training set in an order that is a pure function of (seed, epoch); one optimizer step per
      batch (Adam/AdamW, learning rate from the schedule, optional gradient clipping); the random numbers of
      each step (dropout, ...) are seeded from (seed, epoch, step, rank), so they replay exactly after a resume;
    * at the end of every epoch: the validation metric; the checkpoint "last", which is also "best" when the
      metric improved (strictly; the direction comes from the metric);
    * every ``checkpoint_every`` optimizer steps: the checkpoint "last", mid-epoch;
    * at the end: the best-validation weights are loaded into the model (they stay there), and the test metric
      is computed from them. ``run_dir`` gets ``config.json``, ``result.json``, ``history.png`` and
      ``checkpoints/``.

Resume (``fit(resume=True)``, the default): a finished run returns its stored result; an interrupted one
continues from its "last" checkpoint: weights, optimizer, gradient scaler, schedule position, RNG states, and the
batches already done in the interrupted epoch (which are skipped). On the CPU the final weights and metrics are
bitwise those of an uninterrupted run. The configuration must be the one the run started with, up to the fields
that only change how it runs (``EXECUTION_FIELDS``: device, quiet, checkpoint_every, ...).

Under torchrun every rank runs the same script; see ``contime.training.distributed``.

``seconds_per_epoch`` counts the training steps only: not evaluation (``eval_seconds`` in the history), not
checkpoint writing.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .batches import (TensorData, as_data, batch_size_of, call_model, epoch_batches, iterate_batches, shard,
                      step_seed, to_device)
from .checkpoint import find_checkpoint, load_weights, read_checkpoint, read_json, write_checkpoint, \
    write_json_atomic
from .config import EXECUTION_FIELDS, TrainConfig, learning_rate
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed, resolve_device
from .evaluate import autocast_context, evaluate, predict
from .metrics import LossFn, Metric, resolve_loss, resolve_metric
from .plot import plot_history
from .progress import TrainProgress

CHECKPOINTS = "checkpoints"
RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
HISTORY_PNG = "history.png"


def name_has_suffix(name: str, suffix: str) -> bool:
    """Whether a parameter name ends with ``suffix`` as whole dot-separated components ("theta" matches
    "layers.0.theta", not "log_theta")."""
    return name == suffix or name.endswith("." + suffix)


def parameter_groups(named: list[tuple[str, nn.Parameter]], multipliers: dict[str, float] | None) -> list[dict]:
    """Optimizer groups: parameters whose name ends with a suffix of ``multipliers`` (whole dot-separated
    components) get a group with that ``lr_multiplier``, the rest one group with multiplier 1. A suffix that
    matches nothing is an error, so a typo cannot silently train at the wrong rate. With AdamW the group's
    decoupled weight decay (lr x decay) scales with it too."""
    multipliers = multipliers or {}
    groups = {suffix: [] for suffix in multipliers}
    rest = []
    for name, param in named:
        matches = [s for s in multipliers if name_has_suffix(name, s)]  # the longest wins
        suffix = max(matches, key=len) if matches else None
        (groups[suffix] if suffix is not None else rest).append(param)
    unmatched = [suffix for suffix, params in groups.items() if not params]
    if unmatched:
        raise ValueError(f"lr_multipliers {unmatched} match no trainable parameter name")
    out = [{"params": rest, "lr_multiplier": 1.0}] if rest else []
    return out + [{"params": params, "lr_multiplier": multipliers[suffix]} for suffix, params in groups.items()]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (``requires_grad``), each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _rng_json() -> dict[str, Any]:
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    return tensors


def _restore_rng(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    if "python" in info:
        version, keys, gauss = info["python"]
        random.setstate((version, tuple(keys), gauss))
    if "numpy" in info:
        name, keys, pos, has_gauss, gauss = info["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "rng/torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng/cuda/")),
                                       key=lambda k: int(k.rsplit("/", 1)[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class TrainState:
    """Where a run stands; everything but the tensors goes to ``trainer.json``.

    ``epoch`` is the epoch in progress (0-based; ``epochs`` when done) and ``batch`` the batches of it already
    done. ``loss_sum`` / ``samples`` / ``seconds`` are the running training totals of that epoch. Epochs in
    ``history`` and ``best_epoch`` count from 1.
    """

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0
    best_value: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "global_step": self.global_step,
                "epoch_loss_sum": self.loss_sum, "epoch_samples": self.samples, "epoch_seconds": self.seconds,
                "best_value": self.best_value, "best_epoch": self.best_epoch, "history": self.history}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainState":
        return cls(epoch=data["epoch"], batch=data["batch"], global_step=data["global_step"],
                   loss_sum=data["epoch_loss_sum"], samples=data["epoch_samples"], seconds=data["epoch_seconds"],
                   best_value=data["best_value"], best_epoch=data["best_epoch"], history=data["history"])


class Trainer:
    """Trains ``model`` with ``config`` on ``train``, picks the best epoch on ``val``, scores it on ``test``.

    Args:
        model: an ``nn.Module`` called as ``model(x)`` (``model(*x)`` for a tuple ``x``) that returns a Tensor of
            predictions (B, ...). It is moved to the configured device and trained in place.
        config: a ``TrainConfig``.
        train, val, test: ``(x, y)`` tensors or map-style Datasets of ``(x, y)`` pairs (see
            ``contime.training.batches``). ``val`` None: the last epoch counts as the best. ``test`` None: the
            result's ``value`` is None.
        loss: "cross_entropy", "mse" or ``fn(pred, target) -> scalar`` (mean over the batch).
        metric: "accuracy", "mse", "rmse", "nrmse" or a ``Metric`` (which says whether higher is better).
        run_dir: this model's folder (e.g. ``runs/psmnist/<timestamp>/LMU``): config.json, result.json,
            history.png and checkpoints/.
        name: the model's name in results and logs (default: the model's class name).
        console: a ``rich.console.Console`` for progress and logs.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train: Any, val: Any = None, test: Any = None, *,
                 loss: str | LossFn = "cross_entropy", metric: str | Metric = "accuracy",
                 run_dir: str | Path, name: str | None = None, console: Console | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if run_dir is None or not isinstance(run_dir, (str, Path)):
            raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.config = config
        self.name = name or type(model).__name__
        self.loss_name, self.loss_fn = resolve_loss(loss)
        self.metric = resolve_metric(metric)
        self.train_data = as_data(train, "train")
        self.val_data = None if val is None else as_data(val, "val")
        self.test_data = None if test is None else as_data(test, "test")
        self.run_dir = Path(run_dir)
        self.console = console or Console()

        device_type = "cuda" if config.device.startswith("cuda") or (
            config.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.dist: DistInfo = init_distributed(device_type)
        self.device = resolve_device(config.device, self.dist.local_rank, self.dist.is_distributed)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        self.model = model.to(self.device)
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no trainable parameters (requires_grad)")
        self.params = [p for _, p in named]
        optimizer_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_cls(parameter_groups(named, config.lr_multipliers), lr=config.lr,
                                       betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.autocast == "fp16")
        if self.dist.is_distributed:
            if config.batch_size < self.dist.world_size:
                raise ValueError(f"batch_size ({config.batch_size}) must be >= the number of processes "
                                 f"({self.dist.world_size}): it is the global batch, shared by the ranks")
            self.forward_module: nn.Module = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.forward_module = self.model

        n = len(self.train_data)
        self.steps_per_epoch = len(self._epoch_batches(0, n))
        if self.steps_per_epoch == 0:
            raise ValueError(f"train has {n} samples: too few for one batch (batch_size {config.batch_size}, "
                             f"drop_last {config.drop_last}, {self.dist.world_size} processes)")
        self.total_steps = config.epochs * self.steps_per_epoch

    # ------------------------------------------------------------------------------------------ public helpers
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS

    def run_config(self) -> dict[str, Any]:
        """What ``config.json`` holds: the training config, the task, and the environment."""
        from .. import __version__

        return {"name": self.name, "model_class": type(self.model).__name__,
                "params": count_parameters(self.model), "loss": self.loss_name, "metric": self.metric.name,
                "higher_is_better": self.metric.higher_is_better, "train": self.config.to_dict(),
                "n_train": len(self.train_data), "n_val": None if self.val_data is None else len(self.val_data),
                "n_test": None if self.test_data is None else len(self.test_data),
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "world_size": self.dist.world_size, "device": str(self.device),
                "contime_version": __version__, "torch_version": torch.__version__}

    def evaluate(self, data: Any, name: str = "data", callback=None) -> dict[str, Any]:
        """The trainer's metric and loss for ``data`` with the model as it is now (see ``evaluate``)."""
        return evaluate(self.model, data, self.metric, loss=self.loss_fn, batch_size=self._eval_batch_size(),
                        device=self.device, autocast=self.config.autocast, callback=callback, name=name)

    def predict(self, x: Any) -> torch.Tensor:
        """The model's outputs for ``x`` on the CPU (see ``predict``)."""
        return predict(self.model, x, batch_size=self._eval_batch_size(), device=self.device,
                       autocast=self.config.autocast)

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train (or continue, or skip a finished run) and return the result record.

        Args:
            resume: continue from ``run_dir``'s last checkpoint, or return the stored result of a finished run.
                False starts over: this run's checkpoints and result in ``run_dir`` are deleted first.

        Returns:
            ``{"model", "params", "metric", "value" (test metric of the best-validation weights), "seconds_per_epoch",
            "epochs", "best_epoch", "val_value", "test_loss", "eval_seconds_per_epoch", "steps_per_epoch",
            "world_size", "device", "history": [{"epoch", "train_loss", "val_loss", "val_value", "lr", "seconds",
            "eval_seconds", "samples", "samples_per_second", "steps"}, ...]}``.
        """
        run_config = self.run_config()
        result_path = self.run_dir / RESULT_FILE
        if resume and result_path.is_file():
            stored_config = read_json(self.run_dir / CONFIG_FILE) if (self.run_dir / CONFIG_FILE).is_file() else {}
            self._check_same_run(stored_config, self.run_dir / CONFIG_FILE)
            best = find_checkpoint(self.checkpoint_dir, "best")
            if best is not None:
                load_weights(self.model, best)
            result = read_json(result_path)
            self._log(f"{self.name}: already finished ({result['metric']} {result['value']}), nothing to do")
            return result

        if self.is_main:
            if not resume:
                shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
                for stale in (RESULT_FILE, HISTORY_PNG):
                    (self.run_dir / stale).unlink(missing_ok=True)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / CONFIG_FILE, run_config)
        barrier(self.dist)

        state = TrainState()
        last = find_checkpoint(self.checkpoint_dir, "last") if resume else None
        if last is not None:
            state = self._restore(last)

        with TrainProgress(self.name, self.config.epochs, quiet=self.config.quiet, enabled=self.is_main,
                           console=self.console) as progress:
            if last is not None:
                progress.log(f"{self.name}: resumed from {last.name} (epoch {state.epoch + 1}, batch {state.batch}"
                             f" of {self.steps_per_epoch})")
            while state.epoch < self.config.epochs and not self._out_of_time(state, progress):
                self._train_epoch(state, progress)
            barrier(self.dist)
            return self._finish(state, progress)

    # ------------------------------------------------------------------------------------------ internals
    def _log(self, message: str) -> None:
        if self.is_main:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def _out_of_time(self, state: TrainState, progress: TrainProgress) -> bool:
        """True at an epoch boundary once the epochs done used up ``time_budget`` (counted from the history,
        so a resumed run counts the epochs done before it was killed)."""
        budget = self.config.time_budget
        if budget is None or state.batch != 0 or state.epoch == 0:
            return False
        spent = sum((h.get("seconds") or 0.0) + (h.get("eval_seconds") or 0.0) for h in state.history)
        if spent < budget:
            return False
        progress.log(f"{self.name}: time budget of {budget:g} s used up after epoch {state.epoch} "
                     f"({spent:.1f} s of training and validation); stopping")
        return True

    def _eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    def _epoch_batches(self, epoch: int, n: int | None = None) -> list[torch.Tensor]:
        cfg = self.config
        return epoch_batches(len(self.train_data) if n is None else n, cfg.batch_size, cfg.seed, epoch,
                             drop_last=cfg.drop_last, max_steps=cfg.max_steps_per_epoch,
                             min_size=self.dist.world_size)

    def _fingerprint(self, run_config: dict[str, Any]) -> dict[str, Any]:
        keep = ("name", "model_class", "params", "loss", "metric", "higher_is_better", "n_train", "n_val", "n_test")
        out = {k: run_config.get(k) for k in keep}
        # A setting added after the run was written (absent from its config) compares at its default.
        train = {**TrainConfig().to_dict(), **run_config.get("train", {})}
        out["train"] = {k: v for k, v in train.items() if k not in EXECUTION_FIELDS}
        return out

    def _check_same_run(self, stored: dict[str, Any], where: Path) -> None:
        mine, theirs = self._fingerprint(self.run_config()), self._fingerprint(stored)
        if mine == theirs:
            return
        diffs = [k for k in mine if k != "train" and mine[k] != theirs.get(k)]
        diffs += [f"train.{k}" for k in mine["train"] if mine["train"][k] != theirs["train"].get(k)]
        raise ValueError(f"{where} belongs to a run with other settings ({', '.join(diffs) or 'format'}); resume it "
                         f"with the same settings, or call fit(resume=False) or use another run_dir")

    def _restore(self, folder: Path) -> TrainState:
        checkpoint = read_checkpoint(folder)
        self._check_same_run(checkpoint.config, folder / CONFIG_FILE)
        self.model.load_state_dict(checkpoint.model)
        if checkpoint.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer)
        if checkpoint.state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint.state["scaler"])
        _restore_rng(checkpoint.state.get("rng", {}), checkpoint.tensors)
        state = TrainState.from_json(checkpoint.state)
        if not self.is_main:
            state.loss_sum = 0.0  # rank 0 carries the (already summed over ranks) running loss
        return state

    def _save(self, state: TrainState, loss_sum: torch.Tensor, best: bool) -> None:
        """Write "last" (and "best") on rank 0; every rank must call it (the running loss is summed over ranks)."""
        total = all_reduce_sum(loss_sum, self.dist)
        loss_sum.copy_(total if self.is_main else torch.zeros_like(total))
        state.loss_sum = float(total.item())
        if not math.isfinite(state.loss_sum):
            raise FloatingPointError(f"{self.name}: the training loss is not finite in epoch {state.epoch + 1}; "
                                     f"no checkpoint written")
        if not self.is_main:
            return
        trainer_state = {**state.to_json(),
                         "schedule": {"name": self.config.schedule, "step": state.global_step,
                                      "total_steps": self.total_steps,
                                      "lr": learning_rate(self.config, min(state.global_step, self.total_steps - 1),
                                                          self.total_steps)},
                         "data_order": {"seed": self.config.seed, "epoch": state.epoch, "batch": state.batch,
                                        "batch_size": self.config.batch_size,
                                        "world_size": self.dist.world_size},
                         "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                         "rng": _rng_json()}
        write_checkpoint(self.checkpoint_dir, model_state=self.model.state_dict(), config=self.run_config(),
                         state=trainer_state, tensors=_rng_tensors(), optimizer_state=self.optimizer.state_dict(),
                         label=f"e{state.epoch:04d}-b{state.batch:06d}-s{state.global_step:08d}",
                         pointers=("last", "best") if best else ("last",))

    def _seed(self, seed: int) -> None:
        """Seed the CPU generator and this device's CUDA generator (``torch.manual_seed`` costs ~100 us)."""
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.default_generators[self.device.index].manual_seed(seed)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _train_epoch(self, state: TrainState, progress: TrainProgress) -> None:
        cfg, rank, world = self.config, self.dist.rank, self.dist.world_size
        batches = self._epoch_batches(state.epoch)
        shards = [shard(b, rank, world) for b in batches] if self.dist.is_distributed else batches
        data_device = self.train_data.device if isinstance(self.train_data, TensorData) else None
        if data_device is not None and data_device.type != "cpu" and shards:
            # Tensors already on the GPU: move the epoch's indices there in one copy, not one (syncing) per step.
            shards = list(torch.cat(shards).to(data_device).split([len(s) for s in shards]))
        # Running sum of (mean batch loss x batch size) on this rank, in float64 on the device (no sync per step).
        loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=self.device)
        samples = state.samples
        progress.start_epoch(state.epoch, len(batches), state.batch)
        generator = torch.Generator().manual_seed(step_seed(cfg.seed, state.epoch, 0, 1 << 20))
        items = iterate_batches(self.train_data, shards[state.batch:], num_workers=cfg.num_workers,
                                pin_memory=self.device.type == "cuda", name="train", generator=generator)
        self.forward_module.train()
        session_samples, session_start = 0, time.perf_counter()
        segment_start = session_start
        for k in range(state.batch, len(batches)):
            self._seed(step_seed(cfg.seed, state.epoch, k, rank))
            x, y = next(items)
            x, y = to_device(x, self.device), to_device(y, self.device)
            n_local, n_global = batch_size_of(y, x), len(batches[k])
            lr = learning_rate(cfg, state.global_step, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_multiplier", 1.0)
            with autocast_context(self.device, cfg.autocast):
                out = call_model(self.forward_module, x)
                loss = self.loss_fn(out, y)
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise TypeError(f"loss must return a scalar Tensor, got {type(loss).__name__} "
                                f"{tuple(getattr(loss, 'shape', ()))}")
            objective = loss
            if world > 1 and n_local * world != n_global:
                # Unequal shards: weight each rank so that DDP's average is the mean over the global batch.
                objective = loss * (n_local * world / n_global)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(objective).backward()
            if cfg.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum.add_(loss.detach(), alpha=n_local)
            samples += n_global
            session_samples += n_global
            state.batch, state.global_step = k + 1, state.global_step + 1
            progress.step(state.batch, session_samples / max(time.perf_counter() - session_start, 1e-9),
                          lambda: loss_sum.item() * world / max(samples, 1))
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0 and state.batch < len(batches):
                self._sync()
                now = time.perf_counter()
                state.seconds += now - segment_start
                state.samples = samples
                self._save(state, loss_sum, best=False)
                segment_start = time.perf_counter()
        items.close()
        self._sync()
        state.seconds += time.perf_counter() - segment_start
        state.samples = samples

        total = all_reduce_sum(loss_sum, self.dist)
        train_loss = total.item() / max(samples, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{self.name}: the training loss is {train_loss} in epoch {state.epoch + 1}")
        eval_start = time.perf_counter()
        val_loss = val_value = None
        if self.val_data is not None:
            scores = self.evaluate(self.val_data, "val", progress.eval_callback("validation"))
            val_loss, val_value = _finite_or_none(scores["loss"]), scores["value"]
            improved = self.metric.better(val_value, state.best_value)
            val_value = _finite_or_none(val_value)
        else:
            improved = True
        eval_seconds = time.perf_counter() - eval_start
        epoch = state.epoch + 1
        if improved:
            state.best_value, state.best_epoch = val_value, epoch
        state.history.append({
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_value": val_value,
            "lr": learning_rate(cfg, state.global_step - 1, self.total_steps), "seconds": state.seconds,
            "eval_seconds": eval_seconds, "samples": samples,
            "samples_per_second": samples / state.seconds if state.seconds > 0 else None, "steps": len(batches)})
        state.epoch, state.batch, state.loss_sum, state.samples, state.seconds = epoch, 0, 0.0, 0, 0.0
        self._save(state, torch.zeros((), dtype=torch.float64, device=self.device), best=improved)
        progress.end_epoch(self._epoch_line(state.history[-1], improved))

    def _epoch_line(self, h: dict[str, Any], improved: bool) -> str:
        parts = [f"{self.name} epoch {h['epoch']}/{self.config.epochs}: train_loss {h['train_loss']:.4g}"]
        if self.val_data is not None:
            parts.append(f"val_loss {h['val_loss']:.4g}" if h["val_loss"] is not None else "val_loss nan")
            value = f"{h['val_value']:.4g}" if h["val_value"] is not None else "nan"
            parts.append(f"val_{self.metric.name} {value}" + (" (best)" if improved else ""))
        parts.append(f"lr {h['lr']:.3g}")
        parts.append(f"{h['seconds']:.2f} s")
        if h["samples_per_second"]:
            parts.append(f"{h['samples_per_second']:,.0f} samples/s")
        parts.append(f"eval {h['eval_seconds']:.2f} s")
        return ", ".join(parts)

    def _finish(self, state: TrainState, progress: TrainProgress) -> dict[str, Any]:
        best = find_checkpoint(self.checkpoint_dir, "best")
        if best is None:
            raise FileNotFoundError(f"{self.checkpoint_dir} has no best checkpoint")
        load_weights(self.model, best)
        value = test_loss = None
        if self.test_data is not None:
            scores = self.evaluate(self.test_data, "test", progress.eval_callback("test"))
            value, test_loss = _finite_or_none(scores["value"]), _finite_or_none(scores["loss"])
        history = state.history
        seconds = [h["seconds"] for h in history]
        result = {"model": self.name, "params": count_parameters(self.model), "metric": self.metric.name,
                  "value": value, "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
                  "epochs": state.epoch, "epochs_planned": self.config.epochs,
                  "stopped_by_time_budget": state.epoch < self.config.epochs, "best_epoch": state.best_epoch, "val_value": state.best_value,
                  "test_loss": test_loss,
                  "eval_seconds_per_epoch": sum(h["eval_seconds"] for h in history) / len(history) if history
                  else None,
                  "steps_per_epoch": self.steps_per_epoch, "world_size": self.dist.world_size,
                  "device": str(self.device), "history": history}
        if self.is_main:
            write_json_atomic(self.run_dir / RESULT_FILE, result)
            plot_history(result, self.run_dir / HISTORY_PNG)
            shown = "n/a" if value is None else f"{value:.4g}"
            progress.log(f"{self.name}: test {self.metric.name} {shown} with the weights of epoch {state.best_epoch}"
                         + (f" (val {state.best_value:.4g})" if state.best_value is not None else "")
                         + f", {result['seconds_per_epoch']:.2f} s per epoch")
        return result
