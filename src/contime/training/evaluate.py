"""Prediction and evaluation of a model on a split, usable without a ``Trainer``.

Both run in batches, in order, with ``model.eval()`` (its previous mode is restored) under
``torch.inference_mode``. Predictions are gathered on the CPU; the metric is computed once over the whole set.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from .batches import TensorData, as_data, call_model, iterate_batches, sequential_batches, to_device
from .metrics import LossFn, Metric, resolve_loss, resolve_metric

AUTOCAST_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def autocast_context(device: torch.device, autocast: str | None):
    """``torch.autocast`` for "bf16" / "fp16" on ``device``'s type, or a null context for None."""
    if autocast is None:
        return contextlib.nullcontext()
    if autocast not in AUTOCAST_TORCH_DTYPES:
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_TORCH_DTYPES[autocast])


def _outputs(model: nn.Module, data: Any, name: str, targets: bool, batch_size: int,
             device: torch.device | str | None, autocast: str | None,
             callback: Callable[[int, int], None] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    split = as_data(data, name, targets=targets)
    device = model_device(model) if device is None else torch.device(device)
    preds: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    n, done = len(split), 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for x, y in iterate_batches(split, sequential_batches(n, batch_size), name=name):
                with autocast_context(device, autocast):
                    out = call_model(model, to_device(x, device))
                if out.is_floating_point() and out.dtype in (torch.float16, torch.bfloat16):
                    out = out.float()
                preds.append(out.cpu())
                if y is not None:
                    ys.append(y.cpu())
                done += out.shape[0] if out.ndim else 1
                if callback is not None:
                    callback(done, n)
    finally:
        model.train(was_training)
    pred = torch.cat(preds)  # outside inference mode: an ordinary tensor
    if pred.shape[0] != n:
        raise ValueError(f"{name}: the model returned {pred.shape[0]} rows for {n} samples; predictions must keep "
                         f"the batch dimension first")
    return pred, (torch.cat(ys) if ys else None)


def predict(model: nn.Module, x: Any, *, batch_size: int = 256, device: torch.device | str | None = None,
            autocast: str | None = None) -> torch.Tensor:
    """The model's outputs (N, ...) on the CPU.

    Args:
        x: the inputs: a Tensor (N, ...), a tuple of Tensors with N rows each (the model is called as
            ``model(*x)``), or a Dataset of ``(x, y)`` pairs (the targets are ignored).
        device: where the model runs and batches go; default the model's device.
        autocast: None, "bf16" or "fp16". Low-precision outputs are returned as float32.
    """
    pairs = isinstance(x, (Dataset, TensorData))
    pred, _ = _outputs(model, x, "x", pairs, batch_size, device, autocast, None)
    return pred


def evaluate(model: nn.Module, data: Any, metric: str | Metric = "accuracy", *, loss: str | LossFn | None = None,
             batch_size: int = 256, device: torch.device | str | None = None, autocast: str | None = None,
             callback: Callable[[int, int], None] | None = None, name: str = "data") -> dict[str, Any]:
    """Score ``model`` on ``data`` (``(x, y)`` or a Dataset of pairs).

    Returns:
        ``{"metric": name, "value": float, "loss": float or None, "n": samples}``; ``loss`` is computed over all
        predictions at once when a loss is given.

    Raises:
        FloatingPointError: where the model's outputs are NaN for any sample.
    """
    metric = resolve_metric(metric)
    loss_fn = None if loss is None else resolve_loss(loss)[1]
    pred, target = _outputs(model, data, name, True, batch_size, device, autocast, callback)
    # A score of NaN predictions would be a number that means nothing (Inf can be meant: a logit of -inf masks
    # a class).
    if pred.is_floating_point():
        bad = torch.isnan(pred).reshape(pred.shape[0], -1).any(dim=1)
        if bool(bad.any()):
            raise FloatingPointError(f"{name}: the model's outputs are NaN for {int(bad.sum())} of "
                                     f"{pred.shape[0]} samples (NaN in those inputs, or a diverged model)")
    value = metric(pred, target)
    loss_value = None
    if loss_fn is not None:
        with torch.no_grad():
            loss_value = float(loss_fn(pred, target).item())
    return {"metric": metric.name, "value": value, "loss": loss_value, "n": int(pred.shape[0])}
