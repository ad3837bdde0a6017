"""The Mackey-Glass chaotic time series and the LMU paper's 15-step-ahead prediction task.

The delay differential equation is

    dx/dt = beta * x(t - tau) / (1 + x(t - tau) ** n) - gamma * x(t)

with beta = 0.2, gamma = 0.1, n = 10 and tau = 17 (mild chaos), sampled every dt = 1.

Integrator: explicit Euler with step ``h = dt / substeps`` (10 substeps per sample), the scheme of the
published LMU experiment. The delay tau is a whole number ``L = tau / h`` of substeps (170), so the
delayed value needs no interpolation: it is read from a ring buffer holding the last L substep values,

    x[k + 1] = x[k] + h * (beta * x[k - L] / (1 + x[k - L] ** n) - gamma * x[k]),

where x[k] is x(k h). The initial history x[-L], ..., x[0] (L + 1 values on [-tau, 0]) is drawn per series
uniformly in [1.1, 1.3] (1.2 +- 0.1, as published) from a seeded ``torch.Generator``; the first ``burn_in``
samples are dropped, so the series start on the attractor. The samples are then squashed by
``tanh(x - 1)`` and mean-centred (one global mean over all series and steps, as published). The
integration runs in float64 with numpy, vectorised over the series (one Python loop over substeps).

Two differences from the published generator (a ``collections.deque`` version of the same Euler scheme):
its delayed value lagged L - 1 substeps instead of L, and x[0] was 1.2 rather than random. Neither matters
after the burn-in: the task is statistically the same, but the numbers are not.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .delay import _check_int, _check_positive


class MackeyGlassTask(NamedTuple):
    """Train and test parts of the prediction task, each an ``(inputs, targets)`` pair."""

    train: tuple[torch.Tensor, torch.Tensor]  # (n_train, T - horizon, 1) each
    test: tuple[torch.Tensor, torch.Tensor]  # (n_test, T - horizon, 1) each


def _delay_substeps(tau: float, dt: float, substeps: int) -> int:
    lag = tau * substeps / dt
    lag_int = round(lag)
    if lag_int < 1 or abs(lag - lag_int) > 1e-9 * max(1.0, lag):
        raise ValueError(f"tau / (dt / substeps) must be a whole number >= 1 of substeps, got "
                         f"tau={tau:g}, dt={dt:g}, substeps={substeps}: {lag:g}")
    return lag_int


def integrate_mackey_glass(history, n_steps: int, *, tau: float = 17.0, beta: float = 0.2, gamma: float = 0.1,
                           n: float = 10.0, dt: float = 1.0, substeps: int = 10) -> torch.Tensor:
    """Integrate the Mackey-Glass equation from given histories (Euler, see the module docstring).

    Args:
        history: ``(S, L + 1)`` initial values x(-tau), x(-tau + h), ..., x(0) of S series at the substep
            spacing ``h = dt / substeps``, ``L = tau / h``; a tensor or numpy array, used in float64.
        n_steps: samples to return per series, N >= 1.
        tau, beta, gamma, n: the equation's delay and parameters (tau / h must be a whole number).
        dt: sampling step; substeps: Euler steps per sample.

    Returns:
        ``(S, N)`` float64 tensor, the raw x(dt), x(2 dt), ..., x(N dt) (no transform, no burn-in dropped).

    Raises:
        ValueError: a bad argument, named in the message.
    """
    n_steps = _check_int("n_steps", n_steps, 1)
    substeps = _check_int("substeps", substeps, 1)
    tau, beta, gamma, n, dt = (_check_positive(name, value) for name, value in
                               (("tau", tau), ("beta", beta), ("gamma", gamma), ("n", n), ("dt", dt)))
    lag = _delay_substeps(tau, dt, substeps)
    history = torch.as_tensor(history).detach().cpu().to(torch.float64).numpy()
    if history.ndim != 2 or history.shape[1] != lag + 1 or history.shape[0] < 1:
        raise ValueError(f"history must have shape (S, L + 1) = (S, {lag + 1}) for tau={tau:g}, dt={dt:g}, "
                         f"substeps={substeps}, got {history.shape}")
    if not np.isfinite(history).all():
        raise ValueError("history must be finite")

    h = dt / substeps
    ring = np.ascontiguousarray(history[:, :lag].T)  # (L, S): slot k % L holds x[k - L] at substep k
    x = history[:, lag].copy()  # (S,) x[0]
    out = np.empty((n_steps, history.shape[0]))  # (N, S)
    slot = 0
    for step in range(n_steps):
        for _ in range(substeps):
            delayed = ring[slot]  # (S,) x[k - L], a view
            drive = beta * delayed / (1.0 + delayed ** n)  # computed before the slot is overwritten
            ring[slot] = x  # x[k] becomes x[(k + L) - L]
            x = x + h * (drive - gamma * x)
            slot = slot + 1 if slot + 1 < lag else 0
        out[step] = x
    return torch.from_numpy(np.ascontiguousarray(out.T))  # (S, N)


def mackey_glass(n_series: int = 128, n_steps: int = 5000, tau: float = 17.0, seed: int = 0, *,
                 beta: float = 0.2, gamma: float = 0.1, n: float = 10.0, dt: float = 1.0, substeps: int = 10,
                 burn_in: int = 100, history=None, center: bool = True,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mackey-Glass series, squashed by ``tanh(x - 1)`` and mean-centred, as in the LMU paper.

    Args:
        n_series: number of independent series S >= 1, each from its own random initial history.
        n_steps: samples per series T >= 1, every ``dt`` after the burn-in.
        tau: the delay (17: mild chaos, 30: stronger chaos); ``tau / (dt / substeps)`` must be whole.
        seed: seeds the private ``torch.Generator`` that draws the initial histories uniformly in [1.1, 1.3]
            (the global RNG is untouched).
        beta, gamma, n: the equation's parameters (0.2, 0.1, 10).
        dt: sampling step; substeps: Euler substeps per sample (10).
        burn_in: samples integrated and dropped before the T kept ones (100, as published).
        history: optional ``(S, tau * substeps / dt + 1)`` initial history replacing the random one (then
            ``seed`` is unused).
        center: subtract the global mean over all series and steps (after the tanh).
        dtype: ``torch.float32`` or ``torch.float64`` for the result (computed in float64 either way).

    Returns:
        ``(n_series, n_steps)`` tensor of ``tanh(x - 1)`` (minus its mean when ``center``), roughly in
        [-0.5, 0.4] with standard deviation about 0.2 for tau = 17.

    Raises:
        ValueError: a bad argument, named in the message.
    """
    n_series = _check_int("n_series", n_series, 1)
    n_steps = _check_int("n_steps", n_steps, 1)
    burn_in = _check_int("burn_in", burn_in, 0)
    substeps = _check_int("substeps", substeps, 1)
    tau, dt = _check_positive("tau", tau), _check_positive("dt", dt)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if not isinstance(center, bool):
        raise ValueError(f"center must be a bool, got {center!r}")
    lag = _delay_substeps(tau, dt, substeps)
    if history is None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
        generator = torch.Generator().manual_seed(seed)
        history = 1.1 + 0.2 * torch.rand(n_series, lag + 1, dtype=torch.float64, generator=generator)
    else:
        history = torch.as_tensor(history)
        if history.shape[:1] != (n_series,):
            raise ValueError(f"history must have n_series = {n_series} rows, got shape {tuple(history.shape)}")
    x = integrate_mackey_glass(history, burn_in + n_steps, tau=tau, beta=beta, gamma=gamma, n=n, dt=dt,
                               substeps=substeps)[:, burn_in:]  # (S, T) float64
    x = torch.tanh(x - 1.0)
    if center:
        x = x - x.mean()
    return x.to(dtype)


def mackey_glass_task(n_series: int = 128, n_steps: int = 5000, horizon: int = 15, tau: float = 17.0,
                      seed: int = 0, **kwargs) -> MackeyGlassTask:
    """The LMU paper's Mackey-Glass task: predict the series ``horizon`` steps into the future.

    Input step t is x[t] and its target is x[t + horizon], for t = 0 .. T - horizon - 1, so a causal model
    must forecast. Note: the published code swapped the two (inputs x[t + 15], targets x[t]), so its models
    predicted the past, a bug its authors confirmed; this is the corrected task.

    The first ``n_series // 2`` series are the training set and the rest the test set (50 / 50).

    Args:
        n_series: total number of series, >= 2 (128 in the paper).
        n_steps: length T of each generated series (5000 in the paper), > horizon.
        horizon: how many steps ahead to predict (15).
        tau, seed: as in ``mackey_glass``.
        **kwargs: passed on to ``mackey_glass`` (beta, gamma, n, dt, substeps, burn_in, history, center, dtype).

    Returns:
        ``MackeyGlassTask(train=(x, y), test=(x, y))``, each tensor ``(n, T - horizon, 1)`` with
        ``y[:, t] == series[:, t + horizon]`` and ``x[:, t] == series[:, t]``.

    Raises:
        ValueError: a bad argument, named in the message.
    """
    n_series = _check_int("n_series", n_series, 2)
    n_steps = _check_int("n_steps", n_steps, 2)
    horizon = _check_int("horizon", horizon, 1)
    if horizon >= n_steps:
        raise ValueError(f"horizon must be < n_steps = {n_steps}, got {horizon}")
    series = mackey_glass(n_series, n_steps, tau, seed, **kwargs).unsqueeze(-1)  # (S, T, 1)
    inputs, targets = series[:, :-horizon], series[:, horizon:]  # (S, T - horizon, 1) each
    n_train = n_series // 2
    return MackeyGlassTask((inputs[:n_train], targets[:n_train]), (inputs[n_train:], targets[n_train:]))

