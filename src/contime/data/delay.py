"""Band-limited white noise, the input of the delay (capacity) experiments.

The signal is a random Fourier series: every frequency ``f_k = k / (n_steps * dt)`` with
``0 < f_k <= max_freq`` gets a complex coefficient whose real and imaginary parts are independent
standard normals (a flat expected power spectrum up to ``max_freq``); every other frequency, the mean
(f = 0) included, gets zero. The inverse real FFT turns the coefficients into ``n_steps`` samples, so the
discrete spectrum of each sequence has no energy above ``max_freq`` (up to rounding), and each
sequence is periodic with period ``n_steps * dt``. Each sequence is then scaled to unit RMS.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int (numpy's integers too) if it is one >= ``minimum``; else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def band_limited_noise(n_sequences: int, n_steps: int, dt: float, max_freq: float, *,
                       seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """White noise band-limited to ``max_freq``, sampled every ``dt``, with unit RMS per sequence.

    Args:
        n_sequences: number of independent sequences S >= 1.
        n_steps: samples per sequence N >= 2.
        dt: sampling step, in seconds (or any unit; ``max_freq`` is in its inverse).
        max_freq: highest frequency kept, e.g. 10.0 for 10 Hz. Must lie between the lowest nonzero
            frequency of the series, ``1 / (n_steps * dt)``, and below the Nyquist frequency ``1 / (2 dt)``.
        seed: an int seed for a private generator (reproducible, leaves the global RNG alone).
        generator: a ``torch.Generator`` to draw from instead; give at most one of seed and generator.
            With neither, the global RNG is used.

    Returns:
        ``(n_sequences, n_steps)`` float64 tensor on the CPU; row s is u_s(k * dt), k = 0 .. N - 1,
        with mean exactly 0 (no f = 0 term) and ``sqrt(mean(u_s ** 2)) == 1``.

    Raises:
        ValueError: a bad argument, named in the message.
    """
    n_sequences = _check_int("n_sequences", n_sequences, 1)
    n_steps = _check_int("n_steps", n_steps, 2)
    dt = _check_positive("dt", dt)
    max_freq = _check_positive("max_freq", max_freq)
    lowest, nyquist = 1.0 / (n_steps * dt), 0.5 / dt
    if max_freq < lowest:
        raise ValueError(f"max_freq must be >= the lowest nonzero frequency 1/(n_steps*dt) = {lowest:g}, "
                         f"got {max_freq:g}: no frequency would be kept")
    if max_freq >= nyquist:
        raise ValueError(f"max_freq must be below the Nyquist frequency 1/(2*dt) = {nyquist:g}, got {max_freq:g}")
    if seed is not None and generator is not None:
        raise ValueError("give at most one of seed and generator, got both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
        generator = torch.Generator().manual_seed(seed)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    freqs = torch.fft.rfftfreq(n_steps, d=dt, dtype=torch.float64)  # (F,), F = N // 2 + 1
    keep = (freqs > 0) & (freqs <= max_freq)  # (F,)
    n_keep = int(keep.sum())
    # Draw only the kept coefficients, so the values do not depend on how many are dropped.
    parts = torch.randn(n_sequences, n_keep, 2, dtype=torch.float64, generator=generator)  # (S, K, 2)
    coefficients = torch.zeros(n_sequences, freqs.numel(), dtype=torch.complex128)  # (S, F)
    coefficients[:, keep] = torch.view_as_complex(parts)
    u = torch.fft.irfft(coefficients, n=n_steps, dim=1)  # (S, N)
    return u / u.pow(2).mean(dim=1, keepdim=True).sqrt()
