"""Only the last memory state, as one product with the time-reversed impulse response."""

from __future__ import annotations

import torch

from ...legendre import impulse_response
from .common import apply_state_matrix


def linear_memory_final(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                        m0: torch.Tensor | None = None, lengths: torch.Tensor | None = None, *,
                        impulse: torch.Tensor | None = None) -> torch.Tensor:
    """m at the last valid step: sum_s H_s u_{len-1-s} (+ A_bar^len m0).

    Args:
        u, A_bar, B_bar, m0: as in the package docstring.
        lengths: ``(batch,)`` valid steps per sequence, in [1, time]; None means all ``time``.

    Returns:
        ``(batch, D, n)``.
    """
    batch, time, dims = u.shape
    H = impulse_response(A_bar, B_bar, time) if impulse is None else impulse  # (k, T, n)
    if lengths is None:
        reversed_u = u.flip(1)
    else:
        # reversed_u[b, s] = u[b, len_b - 1 - s] for s < len_b, else 0: each sequence ends at its own length.
        s = torch.arange(time, device=u.device)
        index = lengths[:, None] - 1 - s[None, :]
        valid = index >= 0
        reversed_u = torch.gather(u, 1, index.clamp(min=0)[..., None].expand(-1, -1, dims))
        reversed_u = reversed_u * valid[..., None].to(u.dtype)
    if H.shape[0] == 1:
        m = torch.einsum("btd,tn->bdn", reversed_u, H[0])
    else:
        m = torch.einsum("btd,dtn->bdn", reversed_u, H)
    if m0 is not None:
        m = m + _advance(A_bar, m0, lengths if lengths is not None else torch.full_like(m0[:, 0, 0], time,
                                                                                       dtype=torch.long))
    return m


def _advance(A_bar: torch.Tensor, m0: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """A_bar^steps_b m0_b for each sequence b, by binary powers: log2(max steps) products, O(batch) memory.

    Args:
        A_bar: ``(k, n, n)``; m0: ``(batch, D, n)``; steps: ``(batch,)`` integers >= 0.

    Returns:
        ``(batch, D, n)`` in m0's dtype (computed in float64, like ``zero_input_response``).
    """
    state = m0.to(torch.float64)
    power = A_bar.to(torch.float64)  # A_bar^(2^bit)
    remaining = steps.clone()
    while bool((remaining > 0).any()):
        take = (remaining % 2 == 1)[:, None, None]
        state = torch.where(take, apply_state_matrix(power, state), state)
        remaining = remaining // 2
        power = power @ power
    return state.to(m0.dtype)
