"""The fused LMU cell (contime.ops.lmu_cell): both backends against the autograd-differentiated loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import contime
from contime.ops.lmu_cell import lmu_cell_naive, lmu_cell_sequence, resolve_backend, triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def make_arguments(time=6, batch=5, D=2, n=6, hidden=9, hidden_to_memory=True, memory_to_memory=True,
                   dtype=torch.float64, scale=0.3):
    """Random inputs and weights of the fused cell (never zeros), all requiring grad."""
    N = D * n

    def draw(*shape):
        return (torch.randn(*shape, dtype=dtype) * scale).requires_grad_()
    return [draw(time, batch, D), draw(time, batch, hidden), draw(N, N), draw(D, N),
            draw(hidden, D) if hidden_to_memory else None, draw(N, D) if memory_to_memory else None,
            draw(N, hidden), draw(hidden, hidden), draw(batch, N), draw(batch, hidden)]


def outputs_and_gradients(fn, args, relu, seed=1):
    hs, ms = fn(*args, relu=relu)
    generator = torch.Generator().manual_seed(seed)
    # Drawn in float64 whatever the dtype, so a float32 run and its float64 reference see the same loss.
    weights = [torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t) for t in (hs, ms)]
    loss = (hs * weights[0]).sum() + (ms * weights[1]).sum()
    grads = torch.autograd.grad(loss, [a for a in args if a is not None])
    return [hs.detach(), ms.detach(), *grads]


def relative_errors(got, ref):
    return [float((g.double() - r.double()).norm() / r.double().norm()) for g, r in zip(got, ref)]


CONFIGS = [
    dict(hidden_to_memory=True, memory_to_memory=True, relu=False),
    dict(hidden_to_memory=False, memory_to_memory=False, relu=True),
    dict(hidden_to_memory=True, memory_to_memory=False, relu=False),
    dict(hidden_to_memory=False, memory_to_memory=True, relu=False),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_torch_backend_equals_the_loop_in_float64(config):
    config = dict(config)
    relu = config.pop("relu")
    args = make_arguments(**config)
    got = outputs_and_gradients(lambda *a, relu: lmu_cell_sequence(*a, relu=relu, backend="torch"), args, relu)
    ref = outputs_and_gradients(lmu_cell_naive, args, relu)
    for name, g, r in zip(["hs", "ms", "ux", "xh", "A_T", "Bm", "E_h", "E_m", "W_m", "W_h", "m0", "h0"],
                          got, [*ref]):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10, msg=name)  # measured: ~1e-14


@needs_triton
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("style", ["resident", "chunked"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_triton_kernels_equal_the_loop(config, style, D, monkeypatch):
    """Through Triton's interpreter on the CPU (see conftest.py), both kernel styles. The shapes cut every
    block partially: batch 20 over programs of 16, N = 40 and H = 70 over chunks of 16 to 64 and 128. With
    D = 1 the products with E_h, E_m and Bm are broadcasts (``core_triton._mm``); with D = 2, padded products."""
    from contime.ops.lmu_cell import core_triton
    monkeypatch.setattr(core_triton, "DEFAULT_STYLE", style)
    config = dict(config)
    relu = config.pop("relu")
    args32 = make_arguments(time=5, batch=20, D=D, n=40 // D, hidden=70, dtype=torch.float32, **config)
    got = outputs_and_gradients(lambda *a, relu: lmu_cell_sequence(*a, relu=relu, backend="triton"), args32,
                                relu)
    args64 = [a if a is None else a.detach().cpu().double().requires_grad_() for a in args32]
    ref = outputs_and_gradients(lmu_cell_naive, args64, relu)
    errors = relative_errors(got, ref)
    # float32 with "ieee" products: measured below 1e-6 relative; 1e-5 leaves room for other summation orders.
    assert max(errors) < 1e-5, errors
    assert all(torch.isfinite(g).all() for g in got)


@needs_triton
@pytest.mark.parametrize("style", ["resident", "chunked"])
@pytest.mark.parametrize("time", [1, 3])
def test_triton_kernels_with_a_loss_on_h_only(time, style, monkeypatch):
    """No gradient flows into the memory outputs (the kernels' HAS_GM=False branch), over one step and
    three."""
    from contime.ops.lmu_cell import core_triton
    monkeypatch.setattr(core_triton, "DEFAULT_STYLE", style)
    args32 = make_arguments(time=time, batch=18, D=1, n=12, hidden=20, dtype=torch.float32)
    args64 = [a.detach().double().requires_grad_() for a in args32]

    def run(fn, args):
        hs, _ = fn(*args, relu=False)
        weights = torch.randn(hs.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(hs)
        grads = torch.autograd.grad((hs * weights).sum(), args)
        return [hs.detach(), *grads]
    got = run(lambda *a, relu: lmu_cell_sequence(*a, relu=relu, backend="triton"), args32)
    ref = run(lmu_cell_naive, args64)
    errors = relative_errors(got, ref)
    assert max(errors) < 1e-5, errors  # measured below 1e-6, as above


@needs_triton
def test_mixed_precision_keeps_the_memory_products_in_tf32x3(monkeypatch):
    """"mixed": the kernels get tf32 for the hidden cell's products and tf32x3 for the memory's; the Toeplitz
    memory (no recurrence) runs it as tf32. The interpreter computes every product in float32, so the GPU check
    (benchmarks/gpu_kernel_check.py) measures the error; here, what reaches the launch."""
    from contime.ops.lmu_cell import core_triton
    from contime.ops.lmu_memory.dispatch import toeplitz_precision
    assert core_triton.product_precisions("mixed") == {"PRECISION": "tf32", "MEMORY_PRECISION": "tf32x3"}
    for precision in ("ieee", "tf32x3", "tf32"):
        assert core_triton.product_precisions(precision) == {"PRECISION": precision, "MEMORY_PRECISION": precision}
        assert toeplitz_precision(precision) == precision
    assert toeplitz_precision("mixed") == "tf32"
    # Tensor-core products make the resident kernels spill: "auto" then takes the chunked ones.
    assert core_triton.wants_resident("auto", core_triton.product_precisions("ieee"))
    for precision in ("mixed", "tf32x3", "tf32"):
        assert not core_triton.wants_resident("auto", core_triton.product_precisions(precision))
        assert core_triton.wants_resident("resident", core_triton.product_precisions(precision))
    assert not core_triton.wants_resident("chunked", core_triton.product_precisions("ieee"))
    launches = []
    launch = core_triton._launch
    monkeypatch.setattr(core_triton, "_launch", lambda *a, **kw: launches.append(kw) or launch(*a, **kw))
    args32 = make_arguments(time=3, batch=4, D=1, n=5, hidden=6, dtype=torch.float32)
    args64 = [a.detach().double().requires_grad_() for a in args32]
    got = outputs_and_gradients(lambda *a, relu: lmu_cell_sequence(*a, relu=relu, backend="triton",
                                                                   precision="mixed"), args32, False)
    assert [(kw["PRECISION"], kw["MEMORY_PRECISION"]) for kw in launches] == [("tf32", "tf32x3")] * 2
    assert max(relative_errors(got, outputs_and_gradients(lmu_cell_naive, args64, False))) < 1e-5
    assert contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3), kernel_precision="mixed").kernel_precision == "mixed"


def test_lmu_fused_mode_trains_theta_like_the_loop():
    """The LMU's "fused" mode passes the gradient of theta through the block-diagonal state matrix."""
    lmu = contime.LMU(2, 3, 5, [4.0, 6.0, 9.0], nn.RNNCell(15, 7, nonlinearity="relu"), hidden_to_memory=True,
                      memory_to_memory=True, trainable_theta=True).double()
    x = torch.randn(4, 12, 2, dtype=torch.float64)
    results = {}
    for mode in ("recurrent", "fused"):
        lmu.mode = mode
        lmu.zero_grad()
        y, state = lmu(x)
        (y.square().sum() + state.memory.sum()).backward()
        results[mode] = [y.detach(), state.memory.detach()] + [p.grad.clone() for p in lmu.parameters()]
    for a, b in zip(results["fused"], results["recurrent"]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert results["fused"][2].abs().max() > 0  # theta's gradient is really exercised


def test_fused_mode_refuses_what_it_cannot_compute():
    lmu = contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3), hidden_to_memory=True, mode="fused")
    with pytest.raises(ValueError, match="lengths"):
        lmu(torch.randn(2, 5, 1), lengths=torch.tensor([5, 3]))
    lmu.mode = "auto"  # auto falls back to the loop for a padded batch
    y, _ = lmu(torch.randn(2, 5, 1), lengths=torch.tensor([5, 3]))
    assert y.shape == (2, 5, 3)
    with pytest.raises(ValueError, match="mode='fused' is not valid"):
        contime.LMU(1, 1, 4, 5.0, nn.GRUCell(4, 3), hidden_to_memory=True, mode="fused")
    with pytest.raises(ValueError, match="kernel_precision"):
        contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3), kernel_precision="fp8")


def test_bad_arguments_are_named():
    args = make_arguments()
    bad = list(args)
    bad[2] = torch.randn(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="A_T"):
        lmu_cell_sequence(*bad)
    bad = list(args)
    bad[9] = torch.randn(5, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="h0"):
        lmu_cell_sequence(*bad)
    with pytest.raises(ValueError, match="precision"):
        lmu_cell_sequence(*args, precision="fp16")
    with pytest.raises(ValueError, match="backend"):
        lmu_cell_sequence(*args, backend="cuda")


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    if not triton_available():
        with pytest.raises(RuntimeError, match="triton"):
            resolve_backend("triton", torch.device("cpu"))
        return
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_backend("triton", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


def test_no_double_backward():
    args = make_arguments()
    hs, _ = lmu_cell_sequence(*args, backend="torch")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(hs.sum(), args[0], create_graph=True)


def test_outputs_can_be_modified_in_place():
    """The fused mode returns tensors of its own, not views of its buffers: in-place ops work as in the loop."""
    lmu = contime.LMU(1, 1, 8, 10.0, nn.RNNCell(8, 5), hidden_to_memory=True, mode="fused")
    y, state = lmu(torch.randn(3, 6, 1))
    y.relu_()
    state.memory.mul_(2)
    (y.sum() + state.memory.sum()).backward()
    assert lmu.hidden_cell.weight_hh.grad.abs().sum() > 0


def test_group_sizes_respect_an_mps_share_of_the_sms(monkeypatch):
    """The members of a group wait for each other at a barrier, so the launch never asks for more programs than
    the SMs this process may hold at once: under MPS with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, that share."""
    from types import SimpleNamespace

    from contime.ops.lmu_cell import core_triton
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))
    monkeypatch.setattr(core_triton, "interpreting", lambda: False)
    cuda = torch.device("cuda")
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)
    assert core_triton.available_sms(cuda) == 132
    assert core_triton._group_size(100, 256, 16, cuda) == 16  # 7 groups of 16 members: 112 programs
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25")
    assert core_triton.available_sms(cuda) == 33
    assert core_triton._group_size(100, 256, 16, cuda) == 4  # 7 groups of 4: 28 programs <= 33
    widths = core_triton._resident_widths(100, 256, 212, cuda)
    assert widths and all(7 * -(-256 // n) <= 33 for n in widths), widths
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "not a number")
    assert core_triton.available_sms(cuda) == 132
