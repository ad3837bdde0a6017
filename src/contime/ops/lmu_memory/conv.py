"""The memory as a direct causal convolution with a truncated impulse response."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...legendre import impulse_response
from .common import expand_dims, zero_input_response


def truncation_length(H: torch.Tensor, tol: float) -> int:
    """Smallest L such that |H_s| <= tol * max|H| for every s >= L (within the computed horizon)."""
    size = H.detach().abs().amax(dim=(0, 2))
    above = torch.nonzero(size > tol * size.max()).flatten()
    return int(above[-1]) + 1 if above.numel() else 1


def linear_memory_conv(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                       m0: torch.Tensor | None = None, tol: float = 1e-10, *,
                       impulse: torch.Tensor | None = None) -> torch.Tensor:
    """m_t = sum_{s < L} H_s u_{t-s} (+ A_bar^(t+1) m0), with L cut where H falls below ``tol`` of its peak.

    Shapes as in the package docstring. Exact (up to rounding) when L reaches the sequence length.
    """
    batch, time, dims = u.shape
    n = A_bar.shape[-1]
    H = impulse_response(A_bar, B_bar, time) if impulse is None else impulse  # (k, T, n)
    length = truncation_length(H, tol)
    H = expand_dims(H[:, :length], dims)  # (D, L, n)
    # conv1d correlates: out_t = sum_j w_j x_{t-L+1+j}, so the kernel is H reversed in time.
    weight = H.flip(1).permute(0, 2, 1).reshape(dims * n, 1, length)
    padded = F.pad(u.transpose(1, 2), (length - 1, 0))  # (batch, D, T + L - 1)
    m = F.conv1d(padded, weight, groups=dims)  # (batch, D*n, T)
    m = m.reshape(batch, dims, n, time).permute(0, 3, 1, 2)
    if m0 is not None:
        m = m + zero_input_response(A_bar, m0, time)
    return m
