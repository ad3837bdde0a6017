"""Each linear-memory fast path against the naive loop: outputs and gradients, float64 and float32."""

from __future__ import annotations

import pytest
import scipy.fft
import torch

from contime.legendre import discretize
from contime.ops.lmu_memory import (linear_memory_conv, linear_memory_fft, linear_memory_final,
                                    linear_memory_naive, projected_memory_fft)
from contime.ops.lmu_memory.fft import fft_length


def problem(dims, per_dim_theta, with_m0, dtype=torch.float64, time=23, order=7):
    thetas = torch.linspace(4.0, 15.0, dims if per_dim_theta else 1, dtype=torch.float64).requires_grad_(True)
    u = torch.randn(3, time, dims, dtype=dtype, requires_grad=True)
    m0 = torch.randn(3, dims, order, dtype=dtype, requires_grad=True) if with_m0 else None
    weight = torch.randn(5, dims, order, dtype=dtype, requires_grad=True)
    return thetas, u, m0, weight


CASES = [(1, False, False), (3, False, True), (3, True, False), (2, True, True)]
IDS = ["D1", "D3-m0", "D3-theta-per-dim", "D2-theta-per-dim-m0"]


def grads(out, leaves):
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return torch.autograd.grad((out * weights).sum(), [x for x in leaves if x is not None], retain_graph=True)


@pytest.mark.parametrize("dims, per_dim_theta, with_m0", CASES, ids=IDS)
@pytest.mark.parametrize("path", ["fft", "conv", "final", "projected"])
def test_fast_path_equals_naive(path, dims, per_dim_theta, with_m0):
    thetas, u, m0, weight = problem(dims, per_dim_theta, with_m0)
    A_bar, B_bar = discretize(7, thetas)
    reference = linear_memory_naive(u, A_bar, B_bar, m0)  # (batch, time, D, n)
    leaves = [u, thetas, m0]
    if path == "fft":
        got = linear_memory_fft(u, A_bar, B_bar, m0)
    elif path == "conv":
        got = linear_memory_conv(u, A_bar, B_bar, m0, tol=0.0)
    elif path == "final":
        got, reference = linear_memory_final(u, A_bar, B_bar, m0), reference[:, -1]
    else:
        got = projected_memory_fft(u, A_bar, B_bar, weight, m0)
        reference = torch.einsum("btdn,gdn->btg", reference, weight)
        leaves.append(weight)
    torch.testing.assert_close(got, reference, atol=1e-12, rtol=0)
    for a, b in zip(grads(got, leaves), grads(reference, leaves)):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


def test_projected_fft_float32_error_is_small():
    """float32 against the float64 loop, relative RMS (measured ~1e-7 at this size)."""
    thetas, u, _, weight = problem(2, True, False, time=200, order=32)
    A64, B64 = discretize(32, thetas.detach())
    reference = torch.einsum("btdn,gdn->btg", linear_memory_naive(u.detach(), A64, B64), weight.detach())
    got = projected_memory_fft(u.detach().float(), A64.float(), B64.float(), weight.detach().float())
    rel = ((got.double() - reference).square().mean().sqrt() / reference.square().mean().sqrt()).item()
    assert rel < 1e-5, rel


@pytest.mark.parametrize("n", [1, 2, 7, 97, 1567, 4999, 100_001])
def test_fft_length_is_the_next_5_smooth_size(n):
    got = fft_length(n)
    assert got >= n and got == scipy.fft.next_fast_len(n, real=True)


@pytest.mark.parametrize("path", ["fft", "final"])
def test_float32_initial_state_response_no_worse_than_the_loop(path):
    """With a given state, float32 fast paths stay as accurate as the float32 loop (measured at T = 4096,
    order 64: fft 1.5e-5, final 6.3e-6, loop 1.8e-5; before the float64 powers fft was 3.1e-5)."""
    A64, B64 = discretize(64, 784.0)
    u = torch.randn(2, 4096, 1, dtype=torch.float64)
    m0 = torch.randn(2, 1, 64, dtype=torch.float64)
    reference = linear_memory_naive(u, A64, B64, m0)
    A32, B32, u32, m32 = A64.float(), B64.float(), u.float(), m0.float()
    loop_error = (linear_memory_naive(u32, A32, B32, m32).double() - reference).abs().max()
    if path == "fft":
        error = (linear_memory_fft(u32, A32, B32, m32).double() - reference).abs().max()
    else:
        error = (linear_memory_final(u32, A32, B32, m32).double() - reference[:, -1]).abs().max()
    assert error <= 1.2 * loop_error, (error.item(), loop_error.item())
