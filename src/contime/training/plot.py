"""A PNG of a training history: losses per epoch, and the validation metric with the best epoch marked."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


def plot_history(history: list[dict[str, Any]] | dict[str, Any], path: str | os.PathLike, *,
                 metric: str | None = None, title: str | None = None) -> Path:
    """Plot ``history`` (a ``Trainer.fit`` result, or its ``"history"`` list) to ``path`` (PNG, matplotlib Agg).

    Left: training loss (and validation loss when present) per epoch, log scale when all are positive.
    Right: the validation metric per epoch, the best epoch circled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_epoch = None
    if isinstance(history, dict):
        metric = metric or history.get("metric")
        title = title or history.get("model")
        best_epoch = history.get("best_epoch")
        history = history.get("history")
    if not isinstance(history, list) or not history:
        raise ValueError("history must be a non-empty list of epoch records (or a fit result holding one)")
    metric = metric or "metric"

    def series(key: str) -> tuple[list[int], list[float]]:
        pairs = [(h["epoch"], h[key]) for h in history
                 if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    epochs, train_loss = series("train_loss")
    ax_loss.plot(epochs, train_loss, marker="o", label="train")
    val_epochs, val_loss = series("val_loss")
    if val_loss:
        ax_loss.plot(val_epochs, val_loss, marker="o", label="validation")
    if train_loss + val_loss and min(train_loss + val_loss) > 0:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend()

    metric_epochs, values = series("val_value")
    if values:
        ax_metric.plot(metric_epochs, values, marker="o", color="C2")
        if best_epoch in metric_epochs:
            best_value = values[metric_epochs.index(best_epoch)]
            ax_metric.plot([best_epoch], [best_value], marker="o", markersize=14, fillstyle="none", color="C3",
                           label=f"best: epoch {best_epoch}")
            ax_metric.legend()
    else:
        ax_metric.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax_metric.transAxes)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(f"validation {metric}")
    ax_metric.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
