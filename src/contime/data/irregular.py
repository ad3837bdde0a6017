"""Irregularly sampled datasets: values, times and a mask of the points that exist, and random point dropping.

An ``IrregularData`` holds N series padded to a common length L:

    values  (N, L, C)  float; NaN where mask is False
    times   (N, L)     float, strictly increasing over each series' valid points
    mask    (N, L)     bool, True where a point exists
    targets (N,)       int64 class labels, or (N, T) float regression targets
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class IrregularData:
    values: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self):
        n, length = self.times.shape
        if self.values.shape[:2] != (n, length) or self.mask.shape != (n, length):
            raise ValueError(f"values {tuple(self.values.shape)}, times {tuple(self.times.shape)} and mask "
                             f"{tuple(self.mask.shape)} must share (N, L)")
        if self.targets.shape[0] != n:
            raise ValueError(f"targets must have N={n} rows, got {tuple(self.targets.shape)}")

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def channels(self) -> int:
        return int(self.values.shape[2])

    def subset(self, index: torch.Tensor) -> "IrregularData":
        return IrregularData(self.values[index], self.times[index], self.mask[index], self.targets[index])

    def with_mask(self, mask: torch.Tensor) -> "IrregularData":
        """The same series with only the points of ``mask`` (values elsewhere set to NaN)."""
        values = self.values.masked_fill(~mask[..., None], float("nan"))
        return IrregularData(values, self.times, mask, self.targets)

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, times, mask), the models' three inputs."""
        return self.values, self.times, self.mask


def drop_mask(mask: torch.Tensor, rate: float, generator: torch.Generator | None = None,
              keep_at_least: int = 2) -> torch.Tensor:
    """Drop each existing point with probability ``rate``: a new mask ``(N, L)`` within ``mask``.

    Every series keeps at least ``keep_at_least`` of its points (or all of them if it has fewer): when a draw
    leaves fewer, its lowest-scoring dropped points are restored, so no series becomes empty.
    """
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"drop rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return mask.clone()
    scores = torch.rand(mask.shape, generator=generator, device=mask.device if generator is None else "cpu")
    scores = scores.to(mask.device)
    keep = mask & (scores >= rate)
    need = torch.minimum(mask.sum(1), torch.tensor(keep_at_least, device=mask.device))
    short = keep.sum(1) < need
    if bool(short.any()):
        # The `need` existing points with the highest scores are kept in the short rows.
        ranked = torch.where(mask, scores, torch.full_like(scores, -1.0))
        order = ranked.argsort(dim=1, descending=True)
        top = torch.zeros_like(mask)
        top.scatter_(1, order, torch.arange(mask.shape[1], device=mask.device).expand_as(order) < need[:, None])
        keep = torch.where(short[:, None], keep | (top & mask), keep)
    return keep
