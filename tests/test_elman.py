"""The Elman recurrence (contime.ops.elman): the torch loop and the persistent Triton kernels against
nn.RNNCell stepped by hand, on outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contime.ops.elman import elman_recurrence
from contime.ops.lmu_cell import triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def arguments(time, batch, hidden, dtype, seed=0):
    """projected, weight_hh (spectral radius < 1: float32 rounding must not grow), h0; all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda *s, f=0.5: (torch.randn(*s, generator=g, dtype=torch.float64) * f).to(dtype).requires_grad_()  # noqa: E731
    return draw(time, batch, hidden), draw(hidden, hidden, f=0.9 / hidden ** 0.5), draw(batch, hidden)


def reference(projected, weight_hh, h0, valid, relu):
    """nn.RNNCell's update step by step (biases already in projected), held where valid is False."""
    act = torch.relu if relu else torch.tanh
    h, out = h0, []
    for t in range(projected.shape[0]):
        new = act(projected[t] + h @ weight_hh.t())
        h = new if valid is None else torch.where(valid[t], new, h)
        out.append(h)
    return torch.stack(out)


def outputs_and_grads(fn, args):
    hs = fn(*args)
    weights = torch.randn(hs.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(hs)
    return [hs.detach(), *torch.autograd.grad((hs * weights).sum(), args)]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_torch_loop_equals_the_cell_step_by_step(relu, padded):
    args = arguments(7, 4, 5, torch.float64)
    valid = None
    if padded:
        valid = (torch.arange(7)[:, None] < torch.tensor([7, 3, 5, 1])[None, :])[..., None]
    got = outputs_and_grads(lambda *a: elman_recurrence(*a, valid, relu=relu, backend="torch"), args)
    ref = outputs_and_grads(lambda *a: reference(*a, valid, relu), args)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)


@needs_triton
@pytest.mark.parametrize("relu", [False, True])
def test_persistent_kernels_equal_the_cell_step_by_step(relu):
    """Through Triton's interpreter: float32 kernels against the float64 reference. Batch 20 and hidden 70 cut
    the blocks of 16 sequences and of BLOCK_N columns partially."""
    args32 = arguments(9, 20, 70, torch.float32)
    args64 = [a.detach().double().requires_grad_() for a in args32]
    got = outputs_and_grads(lambda *a: elman_recurrence(*a, relu=relu, backend="triton"), args32)
    ref = outputs_and_grads(lambda *a: reference(*a, None, relu), args64)
    errors = [float((g.double() - r).norm() / r.norm()) for g, r in zip(got, ref)]
    assert max(errors) < 1e-5, errors  # float32 products: measured below 1e-6


def test_backend_choice_and_bad_arguments():
    args = arguments(3, 2, 4, torch.float32)
    valid = torch.ones(3, 2, 1, dtype=torch.bool)
    torch.testing.assert_close(elman_recurrence(*args, valid), elman_recurrence(*args, backend="torch"))
    with pytest.raises(ValueError, match="backend must be one of"):
        elman_recurrence(*args, backend="cuda")
    if triton_available():
        from contime.ops.elman.persistent import persistent_elman
        with pytest.raises(ValueError, match="valid must be None"):
            elman_recurrence(*args, valid, backend="triton")
        with pytest.raises(ValueError, match="float32"):
            elman_recurrence(*arguments(3, 2, 4, torch.float64), backend="triton")
        projected, weight, h0 = args
        with pytest.raises(ValueError, match="weight_hh is torch.float64"):
            persistent_elman(projected, weight.double(), h0)
        with pytest.raises(ValueError, match="precision must be one of"):
            persistent_elman(projected, weight, h0, precision="bf16")
        with pytest.raises(ValueError, match=r"h0 \(2, 4\).*got \(4, 4\) and \(1, 4\)"):
            persistent_elman(projected, weight, h0[:1])


@needs_triton
def test_persistent_kernels_take_strided_inputs_and_frozen_weights():
    """A strided (time-major view of batch-first) input and a weight without requires_grad: same outputs and
    input gradients as the torch loop."""
    projected, weight, h0 = [a.detach() for a in arguments(5, 17, 20, torch.float32)]
    results = []
    for backend in ("triton", "torch"):
        x = projected.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # (T, B, H) view of (B, T, H)
        assert not x.is_contiguous()
        hs = elman_recurrence(x, weight, h0, backend=backend)
        results.append([hs, *torch.autograd.grad(hs.square().sum(), [x])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lmu_with_a_relu_rnn_cell_runs_in_the_parallel_modes():
    """Regression: the torch loop passed out= to torch.relu, which takes none, so an LMU with
    nn.RNNCell(nonlinearity="relu") failed in every mode that runs the cell over precomputed inputs."""
    import contime
    torch.manual_seed(0)
    lmu = contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3, nonlinearity="relu")).double()
    x = torch.randn(2, 6, 1, dtype=torch.float64)
    results = {}
    for mode in ("recurrent", "fft", "conv"):
        lmu.mode = mode
        y = lmu(x)[0]
        weights = [p for p in lmu.parameters() if p.requires_grad]
        results[mode] = [y, *torch.autograd.grad(y.square().sum(), weights)]
    for mode in ("fft", "conv"):
        for got, ref in zip(results[mode], results["recurrent"]):
            torch.testing.assert_close(got, ref)


def test_bench_switches_the_elman_backend_only_inside_its_path():
    """The lmu-fft-elman path's settings route the Elman recurrence to the kernels on CUDA and restore the choice
    after; off CUDA the path is skipped."""
    from contime.bench import PathUnavailable, build_case
    from contime.bench.paths import QUICK_SHAPE, persistent_elman_on_cuda
    from contime.ops.elman import manual
    before = manual.CUDA_BACKEND
    with persistent_elman_on_cuda():
        assert manual.CUDA_BACKEND == "triton"
    assert manual.CUDA_BACKEND == before
    with pytest.raises(PathUnavailable, match="CUDA"):
        build_case("lmu-fft-elman", QUICK_SHAPE, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_tanh_is_within_two_ulp_of_torch(dtype):
    """The forward's in-place tanh (numpy's on the CPU) against torch.tanh over a wide range: within 2 ulp of the
    result (measured: 1.37 ulp at most over 5e7 float32 samples), and the block it returns is the block given."""
    from contime.ops.recurrence import in_place_activation
    x = (torch.randn(64, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
         * torch.logspace(-3, 1, 300, dtype=torch.float64)).to(dtype)
    block = x.clone()
    assert in_place_activation(block, relu=False)(block) is block
    expected = torch.tanh(x)
    ulp = torch.finfo(dtype).eps * expected.abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((block - expected).abs() <= 2 * ulp).all()
    assert not torch.equal(block, x)  # it was applied in place


def test_in_place_tanh_of_another_dtype_under_autocast():
    """A product that autocast made in bfloat16 gets torch's tanh (numpy has no bfloat16)."""
    from contime.ops.recurrence import in_place_activation
    x = torch.randn(4, 5)
    block = x.to(torch.bfloat16)
    torch.testing.assert_close(in_place_activation(x, relu=False)(block), torch.tanh(x.to(torch.bfloat16)))


@pytest.mark.parametrize("padded", [False, True])
def test_torch_loop_in_float32_against_float64(padded):
    """float32 (numpy's tanh on the CPU) against the float64 cell steps: relative error of outputs and gradients
    (measured: 2.8e-7 at most)."""
    args32 = arguments(30, 9, 40, torch.float32)
    args64 = [a.detach().double().requires_grad_() for a in args32]
    valid = (torch.arange(30)[:, None] < torch.arange(22, 31)[None, :])[..., None] if padded else None
    got = outputs_and_grads(lambda *a: elman_recurrence(*a, valid, backend="torch"), args32)
    ref = outputs_and_grads(lambda *a: reference(*a, valid, False), args64)
    errors = [float((g.double() - r).norm() / r.norm()) for g, r in zip(got, ref)]
    assert max(errors) < 1e-6, errors
