"""The Triton Toeplitz memory (contime.ops.lmu_memory.toeplitz) against the reference loop, through Triton's
interpreter on the CPU; and the dispatch that picks it on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import contime
from contime.legendre import discretize, impulse_response
from contime.ops.lmu_memory import dispatch, linear_memory_fft, linear_memory_naive, projected_memory_fft
from contime.ops.lmu_cell import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def system(order, theta):
    return discretize(order, torch.tensor([float(theta)], dtype=torch.float64), 1.0, "zoh")


def relative(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.mark.parametrize("forward_kernel", ["rows", "columns"])
@pytest.mark.parametrize("batch,time,dims,order", [(3, 37, 1, 8), (70, 21, 2, 40), (5, 150, 3, 33)])
def test_toeplitz_memory_equals_the_loop(batch, time, dims, order, forward_kernel):
    """Shapes cut every tile partially: rows over 64, steps over 4, 64 and 128, channels over 32 and 128,
    sources over 32."""
    from contime.ops.lmu_memory.toeplitz import linear_memory_toeplitz
    A64, B64 = system(order, time / 2)
    u = torch.randn(batch, time, dims, requires_grad=True)
    H = impulse_response(A64, B64, time).float().requires_grad_()
    m0 = torch.randn(batch, dims, order, requires_grad=True)
    m = linear_memory_toeplitz(u, A64.float(), B64.float(), m0, impulse=H, forward_kernel=forward_kernel)
    weight = torch.randn_like(m)
    grads = torch.autograd.grad((m * weight).sum(), [u, H, m0])

    u64, m064 = u.detach().double().requires_grad_(), m0.detach().double().requires_grad_()
    ref = linear_memory_naive(u64, A64, B64, m064)
    ref_grads = torch.autograd.grad((ref * weight.double()).sum(), [u64, m064])
    H64 = H.detach().double().requires_grad_()  # d/dH through the FFT path, which is exact in float64
    ref_H = torch.autograd.grad((linear_memory_fft(u64.detach(), A64, B64, impulse=H64) * weight.double()).sum(),
                                H64)[0]
    errors = [relative(m, ref), relative(grads[0], ref_grads[0]), relative(grads[1], ref_H),
              relative(grads[2], ref_grads[1])]
    assert max(errors) < 1e-5, errors  # float32, "ieee" products: measured below 1e-6


def test_toeplitz_refuses_bad_input():
    from contime.ops.lmu_memory.toeplitz import causal_toeplitz, linear_memory_toeplitz
    with pytest.raises(ValueError, match="precision"):
        causal_toeplitz(torch.randn(2, 5, 1), torch.randn(5, 3), precision="bf16")
    with pytest.raises(ValueError, match="kernel"):
        causal_toeplitz(torch.randn(2, 5, 1), torch.randn(4, 3))
    with pytest.raises(ValueError, match="forward_kernel"):
        causal_toeplitz(torch.randn(2, 5, 1), torch.randn(5, 3), forward_kernel="diagonal")
    with pytest.raises(ValueError, match="float32"):
        causal_toeplitz(torch.randn(2, 5, 1, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64))
    A, B = discretize(4, torch.tensor([3.0, 5.0], dtype=torch.float64), 1.0, "zoh")
    with pytest.raises(ValueError, match="shared A_bar"):
        linear_memory_toeplitz(torch.randn(2, 5, 2), A.float(), B.float())


def test_dispatch_takes_the_chunk_scan_on_the_cpu(monkeypatch):
    """Off CUDA: the chunk scan for one shared A_bar, the FFT for one theta per dimension."""
    from contime.ops.lmu_memory import chunk_scan, fft
    calls = []
    monkeypatch.setattr(dispatch, "linear_memory_chunk_scan", lambda *a, **k: calls.append("chunk")
                        or chunk_scan.linear_memory_chunk_scan(*a, **k))
    monkeypatch.setattr(dispatch, "linear_memory_fft", lambda *a, **k: calls.append("fft")
                        or fft.linear_memory_fft(*a, **k))
    A, B = system(4, 5)
    u = torch.randn(2, 9, 1)
    assert not dispatch.use_triton_memory(u, A.float())
    torch.testing.assert_close(dispatch.memory_all_steps(u, A.float(), B.float(), None, None),
                               linear_memory_fft(u, A.float(), B.float()))
    A2, B2 = discretize(4, torch.tensor([3.0, 5.0], dtype=torch.float64), 1.0, "zoh")
    u2 = torch.randn(2, 9, 2)
    torch.testing.assert_close(dispatch.memory_all_steps(u2, A2.float(), B2.float(), None, None),
                               linear_memory_fft(u2, A2.float(), B2.float()))
    theta = torch.tensor([5.0], requires_grad=True)  # a trained theta: each new A_bar would be a new operator
    A3, B3 = discretize(4, theta, 1.0, "zoh")
    dispatch.memory_all_steps(u, A3, B3, None, None)
    assert calls == ["chunk", "fft", "fft"]


def test_cpu_projection_by_chunks_equals_the_fft(monkeypatch):
    """A small order against the outputs: the CPU forms m by chunk scan and projects it; outputs and the
    gradients of u, W and m0 equal the projected FFT's in float64."""
    calls = []
    chunk = dispatch.linear_memory_chunk_scan
    monkeypatch.setattr(dispatch, "linear_memory_chunk_scan", lambda *a, **k: calls.append(1) or chunk(*a, **k))
    A, B = system(6, 20)
    u = torch.randn(3, 40, 1, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 1, 6, dtype=torch.float64, requires_grad=True)
    m0 = torch.randn(3, 1, 6, dtype=torch.float64, requires_grad=True)
    assert dispatch.projects_by_chunks(u, A, B, weight, m0, None)
    got = dispatch.causal_projection(u, A, B, weight, m0, None)
    ref = projected_memory_fft(u, A, B, weight, m0)
    probe = torch.randn_like(ref)
    grads = torch.autograd.grad((got * probe).sum(), [u, weight, m0])
    ref_grads = torch.autograd.grad((ref * probe).sum(), [u, weight, m0])
    assert calls == [1]
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_cpu_projection_keeps_the_fft_for_a_large_order():
    """The psMNIST shape (order 256, 212 outputs, 784 steps: score 64) and several memory dimensions keep the FFT;
    order 64 with the same outputs (score 11) takes the chunk scan."""
    A = torch.zeros(1, 256, 256)
    B = torch.zeros(1, 256)
    u = torch.zeros(2, 784, 1)
    assert not dispatch.projects_by_chunks(u, A, B, torch.zeros(212, 1, 256), None, None)
    assert not dispatch.projects_by_chunks(torch.zeros(2, 784, 2), A[:, :64, :64], B[:, :64],
                                           torch.zeros(212, 2, 64), None, None)
    assert dispatch.projects_by_chunks(u, A[:, :64, :64], B[:, :64], torch.zeros(212, 1, 64), None, None)


def test_projection_through_the_toeplitz_kernel(monkeypatch):
    """The folded projection W m_t, computed as a Toeplitz product with W H_s, equals the FFT path."""
    monkeypatch.setattr(dispatch, "use_triton_memory", lambda *args, **kwargs: True)
    A64, B64 = system(12, 20)
    A, B = A64.float(), B64.float()
    u = torch.randn(4, 30, 1)
    weight = torch.randn(7, 1, 12)
    m0 = torch.randn(4, 1, 12)
    got = dispatch.causal_projection(u, A, B, weight, m0, None)
    ref = projected_memory_fft(u.double(), A64, B64, weight.double(), m0.double())
    assert relative(got, ref) < 1e-5


def test_lmu_fft_mode_with_the_kernel_equals_the_loop(monkeypatch):
    """The LMU's fft mode as CUDA runs it (the dispatch forced on): memory-only and RNN-cell layers."""
    monkeypatch.setattr(dispatch, "use_triton_memory", lambda *args, **kwargs: True)
    for cell in (None, nn.RNNCell(10 + 1, 6)):
        lmu = contime.LMU(1, 1, 10, 15.0, cell, input_to_hidden=cell is not None, mode="fft")
        x = torch.randn(3, 25, 1, requires_grad=True)
        outputs = {}
        for mode in ("fft", "recurrent"):
            lmu.mode = mode
            lmu.zero_grad()
            y, state = lmu(x)
            loss = (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum() + state.memory.sum()
            grads = torch.autograd.grad(loss, [x] + [p for p in lmu.parameters() if p.requires_grad])
            outputs[mode] = [y, state.memory, *grads]
        errors = [relative(a, b) for a, b in zip(outputs["fft"], outputs["recurrent"])]
        assert max(errors) < 1e-5, errors


def test_convolutions_run_outside_autocast():
    """Under autocast the memory is computed in float32 (cuFFT and the kernels take no bfloat16)."""
    A, B = system(6, 9)
    u = torch.randn(2, 15, 1)
    ref = dispatch.memory_all_steps(u, A.float(), B.float(), None, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dispatch.memory_all_steps(u.bfloat16(), A.float(), B.float(), None, None)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, dispatch.memory_all_steps(u.bfloat16().float(), A.float(), B.float(), None,
                                                                None))
    assert relative(got, ref) < 1e-2  # only the input's rounding to bfloat16
