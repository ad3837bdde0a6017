"""References shared by the tests of the Toeplitz-product memories (block GEMM, chunk scan): plain float64 ops,
differentiable to any order."""

from __future__ import annotations

import torch

from contime.legendre import discretize, impulse_response
from contime.ops.lmu_memory import linear_memory_naive


def system(order, theta, dtype=torch.float64):
    """The LegT system (zoh, dt = 1): A_bar ``(1, n, n)``, B_bar ``(1, n)``."""
    A, B = discretize(order, torch.tensor([float(theta)], dtype=torch.float64), 1.0, "zoh")
    return A.to(dtype), B.to(dtype)


def explicit_toeplitz(u: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """sum_{j <= t} H_{t-j} u_j as one einsum over the explicit (t, j) Toeplitz tensor: u ``(B, T, D)``, H
    ``(1, T, n)`` -> ``(B, T, D, n)``."""
    time = u.shape[1]
    lags = torch.arange(time)[:, None] - torch.arange(time)[None, :]  # [t, j]: lag t - j
    toeplitz = torch.where((lags >= 0)[..., None], H[0][lags.clamp(min=0)], 0.0)  # (t, j, n)
    return torch.einsum("tjn,bjd->btdn", toeplitz, u)


def assert_equals_the_loop(memory, batch: int, time: int, dims: int, order: int) -> None:
    """``memory(u, A_bar, B_bar, m0, H) -> m`` in float64 against the loop: m (contiguous) and the gradients of
    u and m0; H's gradient against the explicit Toeplitz product's."""
    A, B = system(order, time / 2)
    u = torch.randn(batch, time, dims, dtype=torch.float64, requires_grad=True)
    H = impulse_response(A, B, time).requires_grad_()
    m0 = torch.randn(batch, dims, order, dtype=torch.float64, requires_grad=True)
    m = memory(u, A, B, m0, H)
    weight = torch.randn_like(m)
    grads = torch.autograd.grad((m * weight).sum(), [u, H, m0])

    u_ref, m0_ref = u.detach().clone().requires_grad_(), m0.detach().clone().requires_grad_()
    ref = linear_memory_naive(u_ref, A, B, m0_ref)
    ref_grads = torch.autograd.grad((ref * weight).sum(), [u_ref, m0_ref])
    H_ref = H.detach().clone().requires_grad_()
    ref_H, = torch.autograd.grad((explicit_toeplitz(u.detach(), H_ref) * weight).sum(), H_ref)
    assert m.shape == ref.shape and m.is_contiguous()
    torch.testing.assert_close(m, ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grads[0], ref_grads[0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grads[1], ref_H, atol=1e-11, rtol=1e-10)
    torch.testing.assert_close(grads[2], ref_grads[1], atol=1e-12, rtol=1e-10)
