"""The memory as one FFT convolution of the input with the impulse response H_s = A_bar^s B_bar."""

from __future__ import annotations

import scipy.fft
import torch

from ...legendre import impulse_response
from .common import zero_input_response


def linear_memory_fft(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                      m0: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution m_t = sum_s H_s u_{t-s} (+ A_bar^(t+1) m0) in O(T log T). Shapes as in the package docstring."""
    batch, time, dims = u.shape
    H = impulse_response(A_bar, B_bar, time)  # (k, T, n)
    n_fft = scipy.fft.next_fast_len(2 * time - 1, real=True)  # no circular wrap-around
    U = torch.fft.rfft(u, n=n_fft, dim=1)  # (batch, F, D)
    Hf = torch.fft.rfft(H, n=n_fft, dim=1).permute(1, 0, 2)  # (F, k, n)
    m = torch.fft.irfft(U.unsqueeze(-1) * Hf, n=n_fft, dim=1)[:, :time]  # (batch, T, D, n)
    if m0 is not None:
        m = m + zero_input_response(A_bar, m0, time)
    return m
