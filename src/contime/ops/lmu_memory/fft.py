"""The memory as one FFT convolution of the input with the impulse response H_s = A_bar^s B_bar."""

from __future__ import annotations

import torch

from ...legendre import impulse_response
from .common import zero_input_response


def fft_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: a size the FFT handles fast (plain Python, so torch.compile traces it)."""
    best = 1 << max(n - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < n:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


def linear_memory_fft(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                      m0: torch.Tensor | None = None, *,
                      impulse: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution m_t = sum_s H_s u_{t-s} (+ A_bar^(t+1) m0) in O(T log T). Shapes as in the package docstring."""
    batch, time, dims = u.shape
    H = impulse_response(A_bar, B_bar, time) if impulse is None else impulse  # (k, T, n)
    n_fft = fft_length(2 * time - 1)  # no circular wrap-around
    U = torch.fft.rfft(u, n=n_fft, dim=1)  # (batch, F, D)
    Hf = torch.fft.rfft(H, n=n_fft, dim=1).permute(1, 0, 2)  # (F, k, n)
    m = torch.fft.irfft(U.unsqueeze(-1) * Hf, n=n_fft, dim=1)[:, :time]  # (batch, T, D, n)
    if m0 is not None:
        m = m + zero_input_response(A_bar, m0, time)
    return m
