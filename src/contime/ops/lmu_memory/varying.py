"""The memory with a different step length at every sample (irregularly sampled series).

Each sequence b advances by its own matrices at each step t:

    m_t = A_bar[index[b, t]] m_{t-1} + B_bar[index[b, t]] u_t

where A_bar ``(U, k, n, n)`` and B_bar ``(U, k, n)`` hold the U distinct discretizations (from
``contime.legendre.discretize_steps``) and index ``(batch, time)`` picks one per sample. The system is no
longer time-invariant, so there is no impulse response to convolve with: the paths here are loops over time
with a batched matrix-vector product per step.

Shapes, as in the package docstring otherwise:
    u:      (batch, time, D)
    A_bar:  (U, k, n, n), k = 1 (shared) or k = D (one theta per dimension)
    B_bar:  (U, k, n)
    index:  (batch, time) long, in [0, U)
    m0:     (batch, D, n) or None
"""

from __future__ import annotations

import torch


def apply_step_matrices(A_t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """A_t[b] @ m[b] per sequence and memory dimension.

    Args:
        A_t: ``(batch, k, n, n)`` with k = 1 or D.
        m: ``(batch, D, n)``.

    Returns:
        ``(batch, D, n)``.
    """
    if A_t.shape[1] == 1:  # one matrix per sequence, shared by its D dimensions: one bmm
        return torch.bmm(m, A_t[:, 0].transpose(1, 2))
    return (A_t @ m.unsqueeze(-1)).squeeze(-1)


class StepMatrices:
    """The matrices of every step, looked up from the U distinct ones: ``steps[t]`` -> A_t ``(batch, k, n, n)``,
    B_t ``(batch, k, n)``.

    With few distinct steps (U <= batch) or no gradient to A_bar, A_t is gathered when step t asks for it:
    a gather of the whole sequence would write a (time, batch, k, n, n) tensor, most of the cost of a short
    loop. Otherwise (many distinct steps and a gradient wanted) it is gathered once for all steps, since the
    backward pass of a per-step gather would allocate a U-sized zero gradient at every step; the split by
    ``unbind`` then costs one stack in the backward pass, not one full-size zero tensor per step.

    Args:
        A_bar: ``(U, k, n, n)``; B_bar: ``(U, k, n)``; index: ``(batch, time)`` long.
    """

    def __init__(self, A_bar: torch.Tensor, B_bar: torch.Tensor, index: torch.Tensor):
        batch, time = index.shape
        self.length = time
        self.index = index.t().contiguous()  # (time, batch): step t's indices are contiguous
        self.B_steps = B_bar[self.index].unbind(0)  # small: time x (batch, k, n)
        self.lazy = A_bar.shape[0] <= batch or not (A_bar.requires_grad and torch.is_grad_enabled())
        self.A_bar = A_bar
        if not self.lazy:
            self.A_steps = A_bar.index_select(0, self.index.reshape(-1)).view(time, batch, *A_bar.shape[1:]).unbind(0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        A_t = self.A_bar.index_select(0, self.index[t]) if self.lazy else self.A_steps[t]
        return A_t, self.B_steps[t]


def linear_memory_varying(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, index: torch.Tensor,
                          m0: torch.Tensor | None = None) -> torch.Tensor:
    """m_t = A_t m_{t-1} + B_t u_t with per-sample matrices (see ``StepMatrices``); the input terms
    B_t u_t for all steps at once, so the loop holds one batched matrix-vector product and one add.

    Returns:
        ``(batch, time, D, n)``.
    """
    batch, time, dims = u.shape
    n = A_bar.shape[-1]
    steps = StepMatrices(A_bar, B_bar, index)
    drive = (B_bar[index] * u.unsqueeze(-1)).unbind(1)  # time x (batch, D, n)
    m = u.new_zeros(batch, dims, n) if m0 is None else m0
    states = []
    for t in range(time):
        m = apply_step_matrices(steps[t][0], m) + drive[t]
        states.append(m)
    return torch.stack(states, dim=1)


def linear_memory_varying_naive(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, index: torch.Tensor,
                                m0: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: per step, look up each sequence's matrices and apply them with einsum.

    Returns:
        ``(batch, time, D, n)``.
    """
    batch, time, dims = u.shape
    n = A_bar.shape[-1]
    m = u.new_zeros(batch, dims, n) if m0 is None else m0
    states = []
    for t, u_t in enumerate(u.unbind(1)):  # unbind: per-step indexing has an O(time^2) backward
        A_t = A_bar[index[:, t]].expand(batch, dims, n, n)  # (batch, D, n, n)
        B_t = B_bar[index[:, t]].expand(batch, dims, n)
        m = torch.einsum("bdij,bdj->bdi", A_t, m) + B_t * u_t[:, :, None]
        states.append(m)
    return torch.stack(states, dim=1)
