"""The sequential core of the fused LMU cell, written with torch ops: the CPU twin of the Triton kernels.

Both backends fill the same buffers with the same algorithm (see ``contime.ops.lmu_cell`` for the equations);
the Triton kernels in ``core_triton`` do it in one launch that keeps everything inside the GPU, this does it
with a few matrix products per step.
"""

from __future__ import annotations

import torch


def activation_derivative(h: torch.Tensor, relu: bool) -> torch.Tensor:
    """d act / d pre-activation, written in terms of the output h = act(pre)."""
    return (h > 0).to(h.dtype) if relu else 1 - h * h


def forward_core(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, relu: bool):
    """Run the recurrence; returns (H_ext ``(T+1, B, H)``, M_ext ``(T+1, B, N)``, U ``(T, B, D)``).

    H_ext[0] = h0 and M_ext[0] = m0; H_ext[t+1], M_ext[t+1] are h_t, m_t; U[t] = u_t.
    """
    time, batch, _ = ux.shape
    H_ext = ux.new_empty(time + 1, batch, W_h.shape[0])
    M_ext = ux.new_empty(time + 1, batch, A_T.shape[0])
    U = torch.empty_like(ux)
    H_ext[0], M_ext[0] = h0, m0
    for t in range(time):
        h_prev, m_prev = H_ext[t], M_ext[t]
        # Products written straight into the step's slot of each buffer: no temporary copies.
        u = U[t]
        u.copy_(ux[t])
        if E_h is not None:
            u.addmm_(h_prev, E_h)
        if E_m is not None:
            u.addmm_(m_prev, E_m)
        m = torch.mm(m_prev, A_T, out=M_ext[t + 1]).addmm_(u, Bm)
        pre = torch.addmm(xh[t], m, W_m).addmm_(h_prev, W_h)
        if relu:
            torch.clamp_min(pre, 0, out=H_ext[t + 1])
        else:
            torch.tanh(pre, out=H_ext[t + 1])
    return H_ext, M_ext, U


def backward_core(grad_h, grad_m, H_ext, A_T, Bm, E_h, E_m, W_m, W_h, relu: bool):
    """Push the output gradients back through time.

    Args:
        grad_h: ``(T, B, H)`` d loss / d h_t from the outputs; grad_m: ``(T, B, N)`` or None, from m_t.

    Returns:
        DP ``(T, B, H)`` (pre-activation), DM ``(T, B, N)`` (total, into m_t), DU ``(T, B, D)`` (into u_t),
        and the gradients of h0 ``(B, H)`` and m0 ``(B, N)``.
    """
    time, batch, hidden = grad_h.shape
    N, D = Bm.shape[1], Bm.shape[0]
    DP = grad_h.new_empty(time, batch, hidden)
    DM = grad_h.new_empty(time, batch, N)
    DU = grad_h.new_empty(time, batch, D)
    carry_h = grad_h.new_zeros(batch, hidden)  # d loss / d h_t through step t + 1
    carry_m = grad_h.new_zeros(batch, N)
    local = activation_derivative(H_ext[1:], relu)
    W_hT, W_mT, A, BmT = W_h.t(), W_m.t(), A_T.t(), Bm.t()
    for t in range(time - 1, -1, -1):
        dp = torch.mul(grad_h[t] + carry_h, local[t], out=DP[t])
        dm = torch.addmm(carry_m if grad_m is None else carry_m + grad_m[t], dp, W_mT, out=DM[t])
        du = torch.mm(dm, BmT, out=DU[t])
        carry_h = dp @ W_hT
        carry_m = dm @ A
        if E_h is not None:
            carry_h = torch.addmm(carry_h, du, E_h.t())
        if E_m is not None:
            carry_m = torch.addmm(carry_m, du, E_m.t())
    return DP, DM, DU, carry_h, carry_m
