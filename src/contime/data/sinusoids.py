"""The Rough Transformer's synthetic sinusoid classification tasks (Moreno-Pino et al., 2024, published code).

Class c of ``n_classes`` has frequency f = 10 + 4c. A series samples, at t = linspace(0, 1, L),

    x(t) = 0.5 sin(2 pi f t + phi) + 0.1 eps + s (linspace(-1/2, 1/2, L))^2 + 0.2 sin(4 pi f t) + 0.1 sin(8 pi f t)

with phi ~ U(0, 2 pi) per series, eps ~ N(0, 1) per point and s = +-1 per series. The "long" variant replaces
the series after index 250 by the same form at f / 5, without the trend, with extra noise (0.2 eps): the class
must then be read from the first 250 points or from the slow part.
"""

from __future__ import annotations

import math

import torch

from .delay import _check_int
from .irregular import IrregularData

LONG_SWITCH = 250


def _wave(f: torch.Tensor, t: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """0.5 sin(2 pi f t + phi) + 0.2 sin(4 pi f t) + 0.1 sin(8 pi f t): f, phase (N, 1), t (L,) -> (N, L)."""
    return (0.5 * torch.sin(2 * math.pi * f * t + phase) + 0.2 * torch.sin(4 * math.pi * f * t)
            + 0.1 * torch.sin(8 * math.pi * f * t))


def sinusoid_classification(n_per_class: int, length: int, *, n_classes: int = 100, long: bool = False,
                            seed: int = 0, dtype: torch.dtype = torch.float32) -> IrregularData:
    """``n_per_class * n_classes`` series of ``length`` points, classes interleaved (series i has class
    i % n_classes): values (N, L, 1), times (N, L) = linspace(0, 1, L), all points valid, labels (N,)."""
    n_per_class, n_classes = _check_int("n_per_class", n_per_class, 1), _check_int("n_classes", n_classes, 1)
    length, seed = _check_int("length", length, 2), _check_int("seed", seed, 0)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if length < 2 or (long and length <= LONG_SWITCH + 1):
        need = LONG_SWITCH + 2 if long else 2
        raise ValueError(f"length must be >= {need}{' for the long variant' if long else ''}, got {length}")
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * n_classes
    labels = torch.arange(n) % n_classes
    f = (10.0 + 4.0 * labels.double())[:, None]
    t = torch.linspace(0.0, 1.0, length, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, 1, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0).double()
    noise = torch.randn(n, length, generator=g, dtype=torch.float64)
    trend = torch.linspace(-0.5, 0.5, length, dtype=torch.float64) ** 2
    x = _wave(f, t, phase) + 0.1 * noise + sign * trend
    if long:
        extra = torch.randn(n, length, generator=g, dtype=torch.float64)
        slow = _wave(f / 5, t, phase) + 0.1 * noise + 0.2 * extra
        x[:, LONG_SWITCH + 1:] = slow[:, LONG_SWITCH + 1:]
    values = x[..., None].to(dtype)
    times = t.to(dtype).expand(n, length).clone()
    return IrregularData(values, times, torch.ones(n, length, dtype=torch.bool), labels)
