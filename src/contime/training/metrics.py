"""Losses and metrics by name, or your own.

A loss is ``loss(pred, target) -> scalar Tensor``, the mean over the batch (the trainer weights batches by their
size). A metric is computed once over a whole evaluation set, from all predictions and targets, and declares
whether higher is better, which decides the best-validation checkpoint:

    Metric("mae", lambda pred, target: (pred - target).abs().mean().item(), higher_is_better=False)

Built in:
    losses   "cross_entropy": logits (B, C) or (B, ..., C), integer targets (B,) or (B, ...)
             "mse": predictions and targets of the same shape
    metrics  "accuracy" (higher is better), "mse", "rmse", "nrmse" (lower is better). NRMSE is the RMSE over the
             standard deviation of the targets (over all their elements), as in the Mackey-Glass experiments.

Shapes are checked: nothing is broadcast silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{what} needs predictions and targets of the same shape, got pred {tuple(pred.shape)} "
                         f"and target {tuple(target.shape)}")


def _check_classes(logits: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{what} needs integer class targets, got dtype {target.dtype}")
    if logits.ndim != target.ndim + 1 or logits.shape[:-1] != target.shape:
        raise ValueError(f"{what} needs logits of shape (*target.shape, classes), got pred {tuple(logits.shape)} "
                         f"and target {tuple(target.shape)}")
    # Read on the host only where that costs no GPU synchronisation; on CUDA torch's own assert stands.
    if target.device.type == "cpu" and target.numel():
        low, high = map(int, torch.aminmax(target))
        if low < 0 or high >= logits.shape[-1]:
            raise ValueError(f"{what}: the targets y must be class indices in [0, {logits.shape[-1]}) for the "
                             f"model's {logits.shape[-1]} outputs, got values from {low} to {high}")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy; ``logits`` (..., C) with classes last, ``target`` (...) of class indices."""
    _check_classes(logits, target, "cross_entropy")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1).long())


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements; shapes must match."""
    _check_same_shape(pred, target, "mse")
    return F.mse_loss(pred, target.to(pred.dtype))


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse_loss}


def resolve_loss(loss: str | LossFn) -> tuple[str, LossFn]:
    """``(name, fn)`` for a built-in name or a callable (named after its ``__name__``)."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)} or a callable, got {loss!r}")
        return loss, LOSSES[loss]
    if callable(loss):
        return getattr(loss, "__name__", type(loss).__name__), loss
    raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__}")


@dataclass(frozen=True)
class Metric:
    """A score over a whole evaluation set.

    Attributes:
        name: what it is called in results and logs (e.g. "accuracy").
        fn: ``fn(pred, target) -> float`` over all predictions and targets of the set (on the CPU).
        higher_is_better: direction, which picks the best-validation checkpoint.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float]
    higher_is_better: bool

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Metric name must be a non-empty string, got {self.name!r}")
        if not callable(self.fn):
            raise TypeError(f"Metric fn must be callable, got {type(self.fn).__name__}")
        if not isinstance(self.higher_is_better, bool):
            raise TypeError(f"Metric higher_is_better must be a bool, got {self.higher_is_better!r}")

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        value = self.fn(pred, target)
        if isinstance(value, torch.Tensor):
            value = value.item()
        return float(value)

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` strictly improves on ``best`` (None: nothing yet). NaN never improves."""
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of argmax(logits, -1) equal to the target class."""
    _check_classes(logits, target, "accuracy")
    return (logits.argmax(dim=-1) == target).double().mean().item()


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error over all elements, in float64."""
    _check_same_shape(pred, target, "mse")
    return (pred.double() - target.double()).pow(2).mean().item()


def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Root mean squared error over all elements."""
    _check_same_shape(pred, target, "rmse")
    return math.sqrt(mse(pred, target))


def nrmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """RMSE divided by the (population) standard deviation of all target elements."""
    _check_same_shape(pred, target, "nrmse")
    std = target.double().std(correction=0).item()
    if not std > 0:
        raise ValueError("nrmse needs targets that are not all equal (their standard deviation is 0)")
    return rmse(pred, target) / std


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", accuracy, True),
    "mse": Metric("mse", mse, False),
    "rmse": Metric("rmse", rmse, False),
    "nrmse": Metric("nrmse", nrmse, False),
}


def resolve_metric(metric: str | Metric) -> Metric:
    """A ``Metric`` for a built-in name or a ``Metric``; a bare callable is refused (it has no direction)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)} or a Metric, got {metric!r}")
        return METRICS[metric]
    if callable(metric):
        raise TypeError("metric must be a name or a Metric(name, fn, higher_is_better=...); a bare callable "
                        "does not say whether higher is better")
    raise TypeError(f"metric must be a name or a Metric, got {type(metric).__name__}")
