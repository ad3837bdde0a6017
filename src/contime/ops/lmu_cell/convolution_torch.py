"""The convolution algorithm of the LMU cell (``convolution``) in torch ops: the CPU twin of its Triton kernels."""

from __future__ import annotations

import torch

from .core_torch import activation_derivative


def forward_core(ux, xh, K, E_h, W_h, h0, relu: bool):
    """The recurrence in torch ops; returns H_ext ``(T+1, B, H)`` (H_ext[0] = h0) and U ``(T, B, 1)``."""
    time, batch, _ = ux.shape
    H_ext = ux.new_empty(time + 1, batch, W_h.shape[0])
    U = torch.empty_like(ux)
    H_ext[0] = h0
    activation = torch.relu if relu else torch.tanh
    K_reversed = K.flip(0)  # K_reversed[time - 1 - j] = K_j: K_t ... K_0 is one slice
    for t in range(time):
        U[t] = ux[t] if E_h is None else torch.addmm(ux[t], H_ext[t], E_h)
        # sum_{s<=t} u_s K_{t-s}: the inputs so far against the kernel read backwards.
        fed_back = U[:t + 1, :, 0].t() @ K_reversed[time - 1 - t:]
        H_ext[t + 1] = activation(torch.addmm(xh[t] + fed_back, H_ext[t], W_h))
    return H_ext, U


def backward_core(grad_h, grad_u, H_ext, K, E_h, W_h, relu: bool):
    """Push the gradients back through time in torch ops.

    Args:
        grad_h: ``(T, B, H)``; grad_u: ``(T, B, 1)`` or None (from the memory's outputs).

    Returns:
        DP ``(T, B, H)``, DU ``(T, B, 1)`` and the gradient of h0 ``(B, H)``.
    """
    time, batch, hidden = grad_h.shape
    DP = grad_h.new_empty(time, batch, hidden)
    DU = grad_h.new_empty(time, batch, 1)
    local = activation_derivative(H_ext[1:], relu)
    carry = grad_h.new_zeros(batch, hidden)  # d loss / d h_t through step t + 1
    K_reversed = K.flip(0)
    # sums[s] collects dp_t . K_{t-s} from every step t >= s: each dp_t is pushed into all earlier inputs'
    # sums as it is found (a matrix product), and sums[t] is complete once step t is.
    sums = grad_h.new_zeros(time, batch)
    for t in range(time - 1, -1, -1):
        dp = torch.mul(grad_h[t] + carry, local[t], out=DP[t])
        sums[:t + 1].addmm_(K_reversed[time - 1 - t:], dp.t())
        DU[t] = sums[t, :, None] if grad_u is None else sums[t, :, None] + grad_u[t]
        carry = dp @ W_h.t()
        if E_h is not None:
            carry = torch.addmm(carry, DU[t], E_h.t())
    return DP, DU, carry
