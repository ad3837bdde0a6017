"""Sequence classifiers and regressors for irregular series, all called as ``model(values, times, mask)``.

The Rough Transformer's baselines, and the LMU in its uniform and time-aware forms:

    TransformerBaseline  the same pre-LN encoder as the Rough Transformer, with one token per sample
                         (attention over L points instead of K windows)
    GRUBaseline          a GRU over the valid samples, each with its time gap as an extra input
    NeuralCDEBaseline    a Neural CDE (torchcde) driven by the linear interpolation of (tau, x)
    LMUBaseline          an LMU over the valid samples; ``time_aware=True`` advances its memory by the real
                         time gaps (``LMU(x, dt=...)``), ``False`` treats the samples as equally spaced

Shapes: values ``(batch, L, C)`` (NaN where mask is False), times ``(batch, L)``, mask ``(batch, L)`` bool
-> ``(batch, out_features)``. Times are normalised per series to tau in [0, 1], as in ``contime.signatures``.
"""

from __future__ import annotations

import torch
from torch import nn

from .lmu import LMU
from .rough_transformer import TokenEncoder
from .signatures import check_series, compress_valid, relative_times


def pack_valid(values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each series' valid points moved to the front, in order, with tau in [0, 1].

    Returns values ``(batch, L', C)`` (zeros past each length), tau ``(batch, L')`` (the last tau repeated past
    each length) and lengths ``(batch,)``, where L' is the longest count of valid points.
    """
    mask = check_series(values, times, mask)
    lengths = mask.sum(dim=1)
    longest = int(lengths.max())
    x, order = compress_valid(values, mask)
    x, order = x[:, :longest], order[:, :longest]
    valid = torch.arange(longest, device=mask.device)[None, :] < lengths[:, None]
    x = torch.where(valid[..., None], x, torch.zeros_like(x))
    t = torch.gather(relative_times(times, mask, values.dtype), 1, order)
    last = torch.gather(t, 1, (lengths - 1)[:, None])
    t = torch.where(valid, t, last)
    span = (last[:, 0] - t[:, 0]).clamp(min=torch.finfo(t.dtype).tiny)
    tau = (t - t[:, :1]) / span[:, None]
    return x, tau, lengths


class TransformerBaseline(nn.Module):
    """A vanilla Transformer on the raw samples: each valid point is a token, its time its position code."""

    def __init__(self, in_channels: int, out_features: int, **encoder_kwargs):
        super().__init__()
        self.encoder = TokenEncoder(in_channels, out_features, normalize_input=False, **encoder_kwargs)

    def forward(self, values, times, mask=None):
        x, tau, lengths = pack_valid(values, times, mask)
        token_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        return self.encoder(x, tau, token_mask)


class GRUBaseline(nn.Module):
    """A GRU over the valid samples; input step i is (x_i, tau_i - tau_{i-1}); its output at the last valid
    sample is read."""

    def __init__(self, in_channels: int, out_features: int, hidden_size: int = 64, num_layers: int = 1):
        super().__init__()
        self.gru = nn.GRU(in_channels + 1, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, out_features)

    def forward(self, values, times, mask=None):
        x, tau, lengths = pack_valid(values, times, mask)
        gaps = torch.diff(tau, dim=1, prepend=tau[:, :1])
        # Padded steps come after each series' end, so the output at its last valid step is untouched by them.
        out, _ = self.gru(torch.cat([x, gaps[..., None]], dim=-1))  # (batch, L', hidden)
        return self.head(out[torch.arange(out.shape[0], device=out.device), lengths - 1])


class _CDEField(nn.Module):
    """f_theta(z): ``(batch, hidden)`` -> ``(batch, hidden, channels)``, the CDE's matrix-valued field."""

    def __init__(self, channels: int, hidden_size: int, width: int):
        super().__init__()
        self.channels, self.hidden_size = channels, hidden_size
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.ReLU(), nn.Linear(width, hidden_size * channels),
                                 nn.Tanh())

    def forward(self, t, z):
        return self.net(z).view(z.shape[0], self.hidden_size, self.channels)


class NeuralCDEBaseline(nn.Module):
    """A Neural CDE (Kidger et al. 2020) through torchcde: dz = f(z) dX, X the linear interpolation of
    (tau, x) over the valid samples (held constant after each series' end), z_0 from X(0), read at the end.

    Solved with RK4 at one step per sample, so its cost grows with the number of samples.
    """

    def __init__(self, in_channels: int, out_features: int, hidden_size: int = 32, width: int = 64,
                 method: str = "rk4"):
        super().__init__()
        channels = in_channels + 1
        self.initial = nn.Linear(channels, hidden_size)
        self.field = _CDEField(channels, hidden_size, width)
        self.head = nn.Linear(hidden_size, out_features)
        self.method = method

    def forward(self, values, times, mask=None):
        import torchcde  # optional at import time: only this baseline needs it

        x, tau, lengths = pack_valid(values, times, mask)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        last = torch.gather(x, 1, (lengths - 1)[:, None, None].expand(-1, 1, x.shape[2]))
        x = torch.where(valid[..., None], x, last)  # constant after the end: dX = 0 there
        path = torch.cat([tau[..., None], x], dim=-1)  # (batch, L', 1 + C)
        # One more copy of the end: RK4's last stage at a knot reads the next segment's slope, which must then be
        # zero for every series, so that a series gives the same result alone as in any batch.
        path = torch.cat([path, path[:, -1:]], dim=1)
        coeffs = torchcde.linear_interpolation_coeffs(path)
        spline = torchcde.LinearInterpolation(coeffs)
        z0 = self.initial(spline.evaluate(spline.interval[0]))
        z = torchcde.cdeint(X=spline, func=self.field, z0=z0, t=spline.interval, method=self.method,
                            options={"step_size": 1.0})
        return self.head(z[:, -1])


class LMUBaseline(nn.Module):
    """An LMU over the valid samples and a linear head on its output at each series' last valid sample.

    Uniform (``time_aware=False``): the samples are taken as equally spaced steps; theta is in steps.
    Time-aware: the memory advances by the real gaps, dt_i = tau_i - tau_{i-1}, and theta is in units of tau
    (1.0 = the whole series). The first step takes the first gap (a one-point series: dt = 1, the whole window).
    ``hidden="gru"`` puts a GRU cell over [memory, x] (the stronger choice, measured on BasicMotions by the
    estimators: 0.925 against 0.75); ``"feedforward"`` a tanh layer on the final memory alone (much faster: the
    memory then has a closed form at the last step).
    """

    def __init__(self, in_channels: int, out_features: int, *, order: int = 32, memory_d: int = 4,
                 hidden_size: int = 64, theta: float = 1.0, time_aware: bool = True, hidden: str = "gru"):
        super().__init__()
        if hidden not in ("gru", "feedforward"):
            raise ValueError(f"hidden must be 'gru' or 'feedforward', got {hidden!r}")
        self.time_aware = bool(time_aware)
        if hidden == "gru":
            cell = nn.GRUCell(memory_d * order + in_channels, hidden_size)
            self.lmu = LMU(in_channels, memory_d=memory_d, order=order, theta=theta, hidden_cell=cell,
                           input_to_hidden=True, return_sequences=False)
        else:
            cell = nn.Sequential(nn.Linear(memory_d * order, hidden_size), nn.Tanh())
            self.lmu = LMU(in_channels, memory_d=memory_d, order=order, theta=theta, hidden_cell=cell,
                           return_sequences=False)
        self.head = nn.Linear(hidden_size, out_features)

    def forward(self, values, times, mask=None):
        x, tau, lengths = pack_valid(values, times, mask)
        if not self.time_aware:
            y, _ = self.lmu(x, lengths=lengths)
            return self.head(y)
        gaps = torch.diff(tau, dim=1)
        first = gaps[:, :1] if gaps.shape[1] else torch.ones_like(tau[:, :1])
        dt = torch.cat([first, gaps], dim=1)
        # Zero gaps occur only past a series' end (tau is held there; check_series refuses repeated times), or
        # as the first gap of a one-point series: those become 1. Steps past the end are masked by lengths.
        dt = torch.where(dt > 0, dt, torch.ones_like(dt))
        y, _ = self.lmu(x, lengths=lengths, dt=dt)
        return self.head(y)
