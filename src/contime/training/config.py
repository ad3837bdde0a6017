"""The training configuration and the learning-rate schedule.

``TrainConfig`` is a frozen dataclass, checked on construction: a bad value (a wrong type included) raises
``ValueError`` naming the field, so a command line can turn every config error into a usage error. It is written
to ``config.json`` beside every checkpoint; ``TrainConfig.from_dict`` reads it back.

The learning rate is a pure function of the optimizer step (``learning_rate``), so the schedule needs no state
beyond the step count and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
AUTOCAST_DTYPES = ("bf16", "fp16")

# Fields that change how a run is executed or shown, not what it computes: a run may resume with other values.
EXECUTION_FIELDS = ("quiet", "device", "checkpoint_every", "eval_batch_size", "num_workers")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model.

    Attributes:
        epochs: passes over the training set (>= 1).
        batch_size: samples per optimizer step, over all processes: under torchrun each of the W ranks takes
            its contiguous share (``batch_size / W`` when it divides) of every global batch.
        lr: peak learning rate (> 0).
        optimizer: "adam" or "adamw" (decoupled weight decay).
        weight_decay: L2 penalty ("adam") or decoupled decay ("adamw"), >= 0.
        betas: Adam's (beta1, beta2), each in [0, 1).
        eps: Adam's epsilon (> 0).
        schedule: "constant" or "cosine" (from ``lr`` down to ``lr * min_lr_ratio`` at the last step).
        warmup_steps: optimizer steps of linear warm-up from ``lr / warmup_steps`` to ``lr`` (0: none).
        min_lr_ratio: floor of the cosine schedule as a fraction of ``lr``, in [0, 1].
        clip_grad_norm: clip the global gradient 2-norm to this value (> 0), or None.
        seed: seeds the data order (a pure function of seed and epoch) and the random numbers of each step.
        checkpoint_every: write the "last" checkpoint every this many optimizer steps (0: only at epoch ends,
            which always write one).
        quiet: no progress bars; one line per epoch, for logs.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        max_steps_per_epoch: cap on the optimizer steps of an epoch (quick runs), or None for the whole set.
        eval_batch_size: samples per forward pass in evaluation; None: ``batch_size``.
        drop_last: drop the final, smaller batch of each epoch.
        autocast: None, "bf16" or "fp16": run forward passes under ``torch.autocast`` with that dtype ("fp16"
            adds a gradient scaler).
        num_workers: DataLoader worker processes for a ``Dataset`` (tensors are indexed directly).
        time_budget: seconds of training and validation after which no new epoch starts (the epoch under way
            finishes; the result records the epochs done), or None.
        lr_multipliers: ``{name suffix: factor}``: parameters whose name ends with a suffix (whole dot-separated
            components, e.g. "theta") train at ``factor`` times the scheduled learning rate, in their own
            optimizer group; None: one group.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    clip_grad_norm: float | None = None
    seed: int = 0
    checkpoint_every: int = 200
    quiet: bool = False
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    eval_batch_size: int | None = None
    drop_last: bool = False
    autocast: str | None = None
    num_workers: int = 0
    time_budget: float | None = None
    lr_multipliers: dict[str, float] | None = field(default=None, hash=False)

    def __post_init__(self):
        def need_int(name: str, low: int, allow_none: bool = False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not _is_int(value):
                kind = "an int" + (" or None" if allow_none else "")
                raise ValueError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")

        def need_bool(name: str):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

        def need_choice(name: str, choices: tuple[str, ...], allow_none: bool = False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if value not in choices:
                extra = " or None" if allow_none else ""
                raise ValueError(f"{name} must be one of {list(choices)}{extra}, got {value!r}")

        def need_number(name: str, allow_none: bool = False) -> float | None:
            value = getattr(self, name)
            if value is None and allow_none:
                return None
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return float(value)

        need_int("epochs", 1)
        need_int("batch_size", 1)
        if need_number("lr") <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        need_choice("optimizer", OPTIMIZERS)
        if need_number("weight_decay") < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(
                _is_number(b) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if need_number("eps") <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        need_choice("schedule", SCHEDULES)
        need_int("warmup_steps", 0)
        ratio = need_number("min_lr_ratio")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        clip = need_number("clip_grad_norm", allow_none=True)
        if clip is not None and clip <= 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm!r}")
        need_int("seed", 0)
        need_int("checkpoint_every", 0)
        need_bool("quiet")
        device = self.device
        if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or (
                device.startswith("cuda:") and device[5:].isdigit())):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        need_int("max_steps_per_epoch", 1, allow_none=True)
        need_int("eval_batch_size", 1, allow_none=True)
        need_bool("drop_last")
        need_choice("autocast", AUTOCAST_DTYPES, allow_none=True)
        need_int("num_workers", 0)
        if self.time_budget is not None and not (_is_number(self.time_budget) and self.time_budget >= 0):
            raise ValueError(f"time_budget must be a number >= 0 or None, got {self.time_budget!r}")
        multipliers = self.lr_multipliers
        if multipliers is not None:
            if not isinstance(multipliers, dict) or not all(
                    isinstance(k, str) and k and _is_number(v) and math.isfinite(v) and v > 0
                    for k, v in multipliers.items()):
                raise ValueError(f"lr_multipliers must map name suffixes to positive numbers, got {multipliers!r}")
            object.__setattr__(self, "lr_multipliers", {k: float(v) for k, v in multipliers.items()} or None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``betas`` as a list)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        kwargs = dict(data)
        if "betas" in kwargs and isinstance(kwargs["betas"], list):
            kwargs["betas"] = tuple(kwargs["betas"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a run of ``total_steps`` steps.

    Warm-up (if any) rises linearly over the first ``warmup_steps`` steps to ``config.lr``; "cosine" then
    decays along half a cosine to ``config.lr * min_lr_ratio`` at the last step; "constant" stays at ``lr``.
    """
    if not _is_int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if not _is_int(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    lr = config.lr
    if step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return lr
    decay_steps = total_steps - config.warmup_steps
    if decay_steps <= 1:
        return lr
    progress = min(1.0, (step - config.warmup_steps) / (decay_steps - 1))
    floor = lr * config.min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
