"""Reference: a plain Python loop over time."""

from __future__ import annotations

import torch

from .common import apply_state_matrix


def linear_memory_naive(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                        m0: torch.Tensor | None = None) -> torch.Tensor:
    """m_t = A_bar m_{t-1} + B_bar u_t, one step at a time. Shapes as in the package docstring."""
    batch, _, dims = u.shape
    n = A_bar.shape[-1]
    m = u.new_zeros(batch, dims, n) if m0 is None else m0
    states = []
    for u_t in u.unbind(1):  # unbind: per-step indexing has an O(time^2) backward
        m = apply_state_matrix(A_bar, m) + u_t[:, :, None] * B_bar
        states.append(m)
    return torch.stack(states, dim=1)
