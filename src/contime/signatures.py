"""Multi-view path signatures of irregularly sampled series (the Rough Transformer's input layer).

A series is given as values ``(batch, length, channels)`` at times ``(batch, length)``, with a boolean mask
``(batch, length)`` of the points that exist (dropped or padded points are False; their values may be NaN).

The path. Each series becomes the piecewise-linear path through (tau_i, x_i), where tau is the time channel,
normalised the same way in every code path: ``tau = (t - start) / (end - start)``, with [start, end] the
series' own first and last valid times, or a fixed ``time_range`` shared by all series.

The tokens. The span is cut at K + 1 grid times g_0 < ... < g_K, equally spaced. Token k (1..K) describes the
path up to g_k through one or more views:
    "global"  the signature over [g_0, g_k]            (the whole past)
    "local"   the signature over [g_{k-1}, g_k]        (the last window)
    widths    ``local_widths=(w, ...)``: over [g_{k-w}, g_k] (g clamped at g_0), wider local windows
The views of a token are concatenated. Window edges lie exactly at the grid times: the path's value there is
interpolated and inserted as a point, so the windows tile the path and Chen's identity holds exactly.

The work. Every local window of every series is one path of a single batched pysiglib call (windows with fewer
points are padded by repeating their last point, which adds nothing to a signature). The global and wide views
are then products of local signatures (Chen's identity), built by a parallel prefix scan in log2(K) batched
``sig_combine`` calls; no signature is ever streamed point by point. Log-signatures, when asked for, are taken
of the finished signatures. Everything is differentiable through pysiglib's autograd functions, and runs on the
device of the values (with a pysiglib wheel built without CUDA, as PyPI's is, the signature calls themselves
run on the CPU and their results return to the GPU).

    univariate=False   one path of dimension 1 + channels          feature size grows like channels^depth
    univariate=True    one path (tau, x_c) per channel, concatenated  feature size grows linearly in channels
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import warnings

import torch

import pysiglib.torch_api as siglib

# pysiglib copies view-based gradients in its backward passes and warns once; autograd hands it such views by
# design, so the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message="Detected a non-contiguous or view-based array", category=UserWarning)

VIEWS = ("global", "local")
LOG_SIG_METHOD = 1  # pysiglib's Lyndon-basis projection (needs prepare_log_sig once per (dimension, depth))


def _siglib(fn, *tensors: torch.Tensor, **kwargs) -> torch.Tensor:
    """Call pysiglib's ``fn`` on ``tensors``; a wheel built without CUDA computes CUDA tensors on the CPU and
    returns the result to their device (the copies are differentiable, so gradients still flow)."""
    # pysiglib copies any view or strided tensor before use (and warns); copying here is the same work, silently.
    tensors = tuple(t if t._base is None and t.is_contiguous() else t.clone(memory_format=torch.contiguous_format)
                    for t in tensors)
    device = tensors[0].device
    if device.type == "cuda" and not siglib.BUILT_WITH_CUDA:
        return fn(*(t.cpu() for t in tensors), **kwargs).to(device)
    return fn(*tensors, **kwargs)


@dataclass(frozen=True)
class SignatureConfig:
    """What a token holds.

    Args:
        depth: truncation level of the signatures (>= 1).
        n_windows: K, the number of tokens (grid intervals) per series.
        views: any non-empty combination of "global" and "local".
        local_widths: extra local views, each over the last w grid intervals (w >= 2).
        univariate: one signature per channel of the path (tau, x_c), concatenated, instead of one of the whole.
        log_signature: log-signatures (Lyndon basis) instead of signatures.
        include_time: put the normalised time tau in the path (the signature then sees the sampling of time;
            without it, it is invariant to any reparametrisation of time).
        time_range: a fixed (start, end) for every series' normalisation and grid; None uses each series' own
            first and last valid times.
        basepoint: start every path at the origin of the value channels (a jump from x = 0 to the first sample
            at the first time), so the signatures also see the series' level, not only its changes.
    """

    depth: int = 3
    n_windows: int = 32
    views: tuple[str, ...] = ("global", "local")
    local_widths: tuple[int, ...] = ()
    univariate: bool = False
    log_signature: bool = False
    include_time: bool = True
    time_range: tuple[float, float] | None = None
    basepoint: bool = False

    def __post_init__(self):
        for name in ("depth", "n_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.views, str):
            raise TypeError(f"views must be a tuple, got {self.views!r}; e.g. views=({self.views!r},)")
        views = tuple(self.views)
        if not views or any(v not in VIEWS for v in views) or len(set(views)) != len(views):
            raise ValueError(f"views must be a non-empty combination of {VIEWS} without repeats, got {self.views!r}")
        if isinstance(self.local_widths, int):
            raise TypeError(f"local_widths must be a tuple of ints, got {self.local_widths!r}; "
                            f"e.g. local_widths=({self.local_widths},)")
        widths = tuple(self.local_widths)
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 2 for w in widths):
            raise ValueError(f"local_widths must be ints >= 2, got {self.local_widths!r}")
        if self.time_range is not None:
            if len(tuple(self.time_range)) != 2:
                raise ValueError(f"time_range must be (start, end), got {self.time_range!r}")
            start, end = (float(v) for v in self.time_range)
            if not (math.isfinite(start) and math.isfinite(end) and end > start):
                raise ValueError(f"time_range must be (start, end), finite, with end > start, got "
                                 f"{self.time_range!r}")
        object.__setattr__(self, "views", views)
        object.__setattr__(self, "local_widths", widths)

    def path_dimension(self, channels: int) -> int:
        """Dimension of each path that is signed."""
        return (1 if self.univariate else channels) + int(self.include_time)

    def view_size(self, channels: int) -> int:
        """Features of one view of one token."""
        dim = self.path_dimension(channels)
        size = (siglib.log_sig_length(dim, self.depth) if self.log_signature
                else siglib.sig_length(dim, self.depth))
        return size * (channels if self.univariate else 1)

    def feature_size(self, channels: int) -> int:
        """Features per token: the views' sizes summed."""
        return self.view_size(channels) * (len(self.views) + len(self.local_widths))


# ----------------------------------------------------------------------------------------------- input checks
def check_series(values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Validate an irregular batch and return its mask ``(batch, length)`` (all True when None).

    Raises ValueError or TypeError naming the argument: wrong shapes, an empty series, times that do not
    increase over a series' valid points, NaN or Inf at a valid point (masked points may hold anything).
    """
    if not torch.is_tensor(values) or not torch.is_floating_point(values):
        raise TypeError(f"values must be a floating-point torch.Tensor, got "
                        f"{values.dtype if torch.is_tensor(values) else type(values).__name__}")
    if values.ndim != 3:
        raise ValueError(f"values must be 3-D (batch, length, channels), got shape {tuple(values.shape)}")
    if not torch.is_tensor(times) or not torch.is_floating_point(times):
        raise TypeError(f"times must be a floating-point torch.Tensor, got "
                        f"{times.dtype if torch.is_tensor(times) else type(times).__name__}")
    if times.shape != values.shape[:2]:
        raise ValueError(f"times must have shape (batch, length)={tuple(values.shape[:2])} to match values, "
                         f"got {tuple(times.shape)}")
    if values.shape[0] == 0 or values.shape[1] == 0 or values.shape[2] == 0:
        raise ValueError(f"values must not be empty, got shape {tuple(values.shape)}")
    if mask is None:
        mask = torch.ones(times.shape, dtype=torch.bool, device=times.device)
    else:
        if not torch.is_tensor(mask) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool torch.Tensor, got "
                            f"{mask.dtype if torch.is_tensor(mask) else type(mask).__name__}")
        if mask.shape != times.shape:
            raise ValueError(f"mask must have shape (batch, length)={tuple(times.shape)}, got {tuple(mask.shape)}")
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        raise ValueError(f"every series needs at least one valid point; series {empty.nonzero()[:, 0].tolist()} "
                         "of the batch have none (empty series)")
    if not bool(torch.isfinite(values[mask]).all()):
        raise ValueError("values contain NaN or Inf at valid (mask=True) points")
    if not bool(torch.isfinite(times[mask]).all()):
        raise ValueError("times contain NaN or Inf at valid (mask=True) points")
    bad = _not_increasing(times, mask)
    if bool(bad.any()):
        raise ValueError(f"times must be strictly increasing over the valid points of each series; series "
                         f"{bad.nonzero()[:, 0].tolist()} are not")
    return mask


def _not_increasing(times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` bool: the series whose valid times are not strictly increasing (wherever they sit in the row)."""
    sorted_times, _ = compress_valid(times, mask)
    gaps = sorted_times[:, 1:] - sorted_times[:, :-1]
    both_valid = torch.arange(1, times.shape[1], device=times.device)[None, :] < mask.sum(1, keepdim=True)
    return (both_valid & ~(gaps > 0)).any(dim=1)


def relative_times(times: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype,
                   start: float | None = None) -> torch.Tensor:
    """Times measured from each series' first valid time (or from ``start``), computed in the times' own dtype,
    then cast to ``dtype``: ``(batch, length)``.

    Subtracting first keeps the gaps: float64 epoch timestamps (about 1.7e9 s) cast straight to float32 would
    collapse onto one value. Raises ValueError if the gaps still vanish in ``dtype``.
    """
    if start is None:
        origin = torch.where(mask, times, torch.finfo(times.dtype).max).amin(dim=1, keepdim=True)
    else:
        origin = times.new_full((times.shape[0], 1), float(start))
    relative = torch.where(mask, times - origin, torch.zeros_like(times)).to(dtype)
    bad = _not_increasing(relative, mask)
    if bool(bad.any()):
        raise ValueError(f"times of series {bad.nonzero()[:, 0].tolist()} are too close together for {dtype} "
                         f"(the values' dtype), even measured from each series' start; use float64 values")
    return relative


def compress_valid(tensor: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid entries to the front, keeping their order: ``(batch, length, ...)``.

    Returns the compressed tensor and the gather index ``(batch, length)``; entries past a row's count are
    copies of other entries (callers mask them).
    """
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # valid first, order kept
    index = order.reshape(order.shape + (1,) * (tensor.ndim - 2)).expand_as(tensor)
    return torch.gather(tensor, 1, index), order


# ------------------------------------------------------------------------------------------------- the path
def grid_times(times: torch.Tensor, mask: torch.Tensor, n_windows: int,
               time_range: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid ``(batch, K + 1)`` and each series' normalisation (start, span) ``(batch, 2)``.

    The grid spans [start, end]: each series' own first and last valid times, or ``time_range``. A series with
    a single point has span 1 (its path is constant, so every signature of it is zero).
    """
    if time_range is None:
        big = torch.finfo(times.dtype).max
        start = torch.where(mask, times, big).amin(dim=1)
        end = torch.where(mask, times, -big).amax(dim=1)
    else:
        start = times.new_full(times.shape[:1], float(time_range[0]))
        end = times.new_full(times.shape[:1], float(time_range[1]))
    span = torch.where(end > start, end - start, torch.ones_like(start))
    fractions = torch.linspace(0.0, 1.0, n_windows + 1, dtype=times.dtype, device=times.device)
    # A single-point series gets a grid collapsed on its one time: its path is constant.
    grid = start[:, None] + torch.where(end > start, span, torch.zeros_like(span))[:, None] * fractions
    grid[:, -1] = torch.where(end > start, end, start)  # exact end, free of rounding
    return grid, torch.stack([start, span], dim=1)


def _interpolate(t: torch.Tensor, x: torch.Tensor, count: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear value of the path through (t, x) at times ``at``; constant outside the samples.

    t ``(batch, L)`` compressed and increasing up to ``count`` ``(batch,)``; x ``(batch, L, C)``;
    at ``(batch, Q)`` -> ``(batch, Q, C)``.
    """
    last = (count - 1)[:, None]
    right = torch.searchsorted(t.contiguous(), at.contiguous(), right=True).clamp(max=last)  # first sample > at
    left = (right - 1).clamp(min=0)
    right = torch.where(right > left, right, left)
    t_left, t_right = torch.gather(t, 1, left), torch.gather(t, 1, right)
    gap = t_right - t_left
    weight = torch.where(gap > 0, ((at - t_left) / torch.where(gap > 0, gap, torch.ones_like(gap))).clamp(0, 1),
                         torch.zeros_like(gap))
    channels = x.shape[-1]
    x_left = torch.gather(x, 1, left[..., None].expand(-1, -1, channels))
    x_right = torch.gather(x, 1, right[..., None].expand(-1, -1, channels))
    return x_left + weight[..., None] * (x_right - x_left)


def window_paths(values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor, n_windows: int,
                 time_range: tuple[float, float] | None = None, include_time: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The path cut at the grid: ``(batch, K, P, 1 + channels)`` (tau first), and the token times
    ``(batch, K)``: tau at each window's end, g_1 .. g_K.

    Window k holds the interpolated point at g_k, the valid samples strictly inside (g_k, g_{k+1}), and the
    interpolated point at g_{k+1}, then repeats that last point up to P, the largest count in the batch.
    Without ``include_time`` the tau channel is left out.
    """
    sorted_times, order = compress_valid(times, mask)
    count = mask.sum(dim=1)  # (batch,)
    big = torch.finfo(times.dtype).max
    positions = torch.arange(times.shape[1], device=times.device)
    valid_sorted = positions[None, :] < count[:, None]
    t = torch.where(valid_sorted, sorted_times, big)  # invalid tail past every grid time, for searchsorted
    x = torch.gather(values, 1, order[..., None].expand_as(values))
    x = torch.where(valid_sorted[..., None], x, torch.zeros_like(x))  # NaN at masked points must not propagate

    grid, norm = grid_times(times, mask, n_windows, time_range)
    edge_values = _interpolate(t, x, count, grid)  # (batch, K + 1, C)
    # Samples strictly inside each window: indices [first, stop) of the compressed series.
    first = torch.searchsorted(t.contiguous(), grid[:, :-1].contiguous(), right=True)  # (batch, K)
    stop = torch.searchsorted(t.contiguous(), grid[:, 1:].contiguous(), right=False)
    inside = (stop - first).clamp(min=0)
    points = int(inside.max()) + 2 if inside.numel() else 2
    j = torch.arange(points, device=times.device)  # point j of a window
    sample = (first[..., None] + j - 1).clamp(0, times.shape[1] - 1)  # (batch, K, P)
    is_sample = (j >= 1) & (j <= inside[..., None])
    is_left = j == 0
    batch, channels = values.shape[0], values.shape[2]
    flat = sample.reshape(batch, -1)
    sample_x = torch.gather(x, 1, flat[..., None].expand(-1, -1, channels)).reshape(batch, n_windows, points, channels)
    sample_t = torch.gather(t, 1, flat).reshape(batch, n_windows, points)
    left_x, right_x = edge_values[:, :-1, None, :], edge_values[:, 1:, None, :]
    left_t, right_t = grid[:, :-1, None], grid[:, 1:, None]
    path_x = torch.where(is_sample[..., None], sample_x, torch.where(is_left[..., None], left_x, right_x))
    path_t = torch.where(is_sample, sample_t, torch.where(is_left, left_t, right_t))
    token_times = (grid[:, 1:] - norm[:, :1]) / norm[:, 1:]
    if not include_time:
        return path_x, token_times
    tau = (path_t - norm[:, 0, None, None]) / norm[:, 1, None, None]
    return torch.cat([tau[..., None], path_x], dim=-1), token_times


# ------------------------------------------------------------------------------------------- signatures
def _prefix_products(sigs: torch.Tensor, dimension: int, depth: int) -> torch.Tensor:
    """Inclusive prefix products (Chen) along dim 1: ``(N, K, S)`` -> ``(N, K, S)``, out[k] = s_0 ... s_k.

    Hillis-Steele scan: log2(K) rounds, each one batched ``sig_combine``.
    """
    offset = 1
    while offset < sigs.shape[1]:
        n, k, size = sigs.shape
        earlier = sigs[:, :-offset].reshape(-1, size).contiguous()
        later = sigs[:, offset:].reshape(-1, size).contiguous()
        combined = _siglib(siglib.sig_combine, earlier, later, dimension=dimension, degree=depth)
        combined = combined.reshape(n, k - offset, size)
        sigs = torch.cat([sigs[:, :offset], combined], dim=1)
        offset *= 2
    return sigs


def _window_products(sigs: torch.Tensor, width: int, dimension: int, depth: int) -> torch.Tensor:
    """Products of the last ``width`` consecutive signatures along dim 1 (fewer at the start), ``(N, K, S)``."""
    out = sigs
    for back in range(1, min(width, sigs.shape[1])):
        n, k, size = sigs.shape
        earlier = sigs[:, : k - back].reshape(-1, size).contiguous()  # s_{k-back} in front of the product so far
        so_far = out[:, back:].reshape(-1, size).contiguous()
        combined = _siglib(siglib.sig_combine, earlier, so_far, dimension=dimension, degree=depth)
        combined = combined.reshape(n, k - back, size)
        out = torch.cat([out[:, :back], combined], dim=1)
    return out


def _prepare_log_signature(dimension: int, depth: int) -> None:
    siglib.prepare_log_sig(dimension, depth, LOG_SIG_METHOD)


def signature_features(values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None = None,
                       config: SignatureConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens of an irregular batch: features ``(batch, K, F)`` and token times ``(batch, K)`` in [0, 1].

    Args:
        values: ``(batch, length, channels)``; NaN allowed where mask is False.
        times: ``(batch, length)``, strictly increasing over each series' valid points.
        mask: ``(batch, length)`` bool, True at the points that exist; None means all.
        config: a ``SignatureConfig`` (default: depth 3, 32 windows, global + local).

    F is ``config.feature_size(channels)``: the views in the order of ``config.views``, then one per
    ``config.local_widths``. Token k's time is tau(g_k), the normalised end of its window.
    Differentiable with respect to values; computed on values' device, in values' dtype.
    """
    config = SignatureConfig() if config is None else config
    if not isinstance(config, SignatureConfig):
        raise TypeError(f"config must be a SignatureConfig, got {type(config).__name__}")
    mask = check_series(values, times, mask)
    time_range = None
    if config.time_range is not None:
        start, end = config.time_range
        outside = mask & ((times < start) | (times > end))
        if bool(outside.any()):
            raise ValueError(f"times of valid points must lie inside time_range={config.time_range}; series "
                             f"{outside.any(1).nonzero()[:, 0].tolist()} have points outside")
        time_range = (0.0, end - start)
    # From here on, times count from the series' start (or the range's), in the values' dtype.
    times = relative_times(times, mask, values.dtype, None if config.time_range is None else config.time_range[0])
    paths, token_times = window_paths(values, times, mask, config.n_windows, time_range, config.include_time)
    batch, windows, points, _ = paths.shape
    if config.univariate:  # (batch, K, P, C, [tau +] 1) -> one path per channel
        x = paths[..., int(config.include_time):]
        parts = [x[..., None]]
        if config.include_time:
            parts.insert(0, paths[..., :1, None].expand(-1, -1, -1, x.shape[-1], -1))
        paths = torch.cat(parts, dim=-1).permute(0, 3, 1, 2, 4)  # (batch, C, K, P, d)
        groups = x.shape[-1]
    else:
        paths = paths[:, None]  # (batch, 1, K, P, d)
        groups = 1
    dimension = paths.shape[-1]
    local = _siglib(siglib.sig, paths.reshape(-1, points, dimension).contiguous(), degree=config.depth)  # one call
    local = local.reshape(batch * groups, windows, -1)
    if config.basepoint:  # the jump from the origin to the first point goes in front of the first window
        first = paths[:, :, 0, 0, :].reshape(-1, dimension)  # (batch * groups, d)
        lead = int(config.include_time)
        origin = torch.cat([first[:, :lead], torch.zeros_like(first[:, lead:])], dim=1)
        jump = _siglib(siglib.sig, torch.stack([origin, first], dim=1).contiguous(), degree=config.depth)
        opened = _siglib(siglib.sig_combine, jump, local[:, 0].contiguous(), dimension=dimension, degree=config.depth)
        local = torch.cat([opened[:, None], local[:, 1:]], dim=1)
    views = {"local": local}
    if "global" in config.views:
        views["global"] = _prefix_products(local, dimension, config.depth)
    chosen = [views[v] for v in config.views]
    chosen += [_window_products(local, w, dimension, config.depth) for w in config.local_widths]
    features = torch.stack(chosen, dim=2)  # (batch * groups, K, views, S)
    if config.log_signature:
        _prepare_log_signature(dimension, config.depth)
        size = features.shape[-1]
        features = _siglib(siglib.sig_to_log_sig, features.reshape(-1, size).contiguous(), dimension=dimension,
                           degree=config.depth, method=LOG_SIG_METHOD).reshape(*features.shape[:-1], -1)
    # Per token: views outermost, then channel groups, then the signature terms.
    features = features.reshape(batch, groups, windows, features.shape[2], -1).permute(0, 2, 3, 1, 4)
    return features.reshape(batch, windows, -1), token_times


@torch.no_grad()
def precompute_features(values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None = None,
                        config: SignatureConfig | None = None, batch_size: int = 256
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``signature_features`` for a whole dataset, computed once without gradients, in chunks of
    ``batch_size`` series (offline mode): ``(N, K, F)`` features and ``(N, K)`` token times."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if torch.is_tensor(values) and values.ndim >= 1 and values.shape[0] == 0:
        raise ValueError(f"values must hold at least one series, got shape {tuple(values.shape)}")
    if mask is None:
        mask = torch.ones(times.shape, dtype=torch.bool, device=times.device)
    chunks = [signature_features(values[i:i + batch_size], times[i:i + batch_size], mask[i:i + batch_size], config)
              for i in range(0, values.shape[0], batch_size)]
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
