"""The convolution algorithm of the fused LMU cell (contime.ops.lmu_cell.convolution) against the loop that
carries the memory as a state (lmu_cell_naive), on outputs, memory states and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import contime
from contime.ops.lmu_cell import lmu_cell_convolution, lmu_cell_naive, triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
NAMES = ["hs", "ms", "ux", "xh", "A_T", "Bm", "E_h", "W_m", "W_h", "h0"]


def make_arguments(time, batch, n, hidden, hidden_to_memory, dtype, scale=0.3):
    """ux, xh, A_T, Bm, E_h, W_m, W_h, h0: random (never zero), requiring grad. The square matrices are scaled
    to a spectral radius below 1, so that neither the memory nor h grows over the steps (a growing recurrence
    would amplify float32 rounding itself)."""
    generator = torch.Generator().manual_seed(0)

    def draw(*shape, factor=scale):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * factor).to(dtype).requires_grad_()
    return [draw(time, batch, 1), draw(time, batch, hidden), draw(n, n, factor=0.9 / n ** 0.5), draw(1, n),
            draw(hidden, 1, factor=hidden ** -0.5) if hidden_to_memory else None, draw(n, hidden, factor=n ** -0.5),
            draw(hidden, hidden, factor=0.9 / hidden ** 0.5), draw(batch, hidden)]


def impulse(A_T, Bm, time):
    """H_j = Bm A_T^j, (time, n), step by step (differentiable)."""
    rows = [Bm[0]]
    for _ in range(time - 1):
        rows.append(rows[-1] @ A_T)
    return torch.stack(rows)


def run_convolution(args, relu, backend, precision="ieee"):
    """hs and every memory state, from the convolution algorithm; ms from its inputs us (a plain sum)."""
    ux, xh, A_T, Bm, E_h, W_m, W_h, h0 = args
    time = ux.shape[0]
    H = impulse(A_T.double(), Bm.double(), time).to(ux.dtype)
    hs, us = lmu_cell_convolution(ux, xh, H, E_h, W_m, W_h, h0, relu=relu, backend=backend, precision=precision)
    ms = torch.stack([us[:t + 1, :, 0].t() @ H[:t + 1].flip(0) for t in range(time)])
    return hs, ms


def run_naive(args, relu):
    ux, xh, A_T, Bm, E_h, W_m, W_h, h0 = args
    m0 = torch.zeros(ux.shape[1], A_T.shape[0], dtype=ux.dtype)
    return lmu_cell_naive(ux, xh, A_T, Bm, E_h, None, W_m, W_h, m0, h0, relu=relu)


def outputs_and_gradients(run, args):
    hs, ms = run(args)
    generator = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t) for t in (hs, ms)]
    loss = (hs * weights[0]).sum() + (ms * weights[1]).sum()
    leaves = [a for a in args if a is not None]
    return [hs.detach(), ms.detach(), *torch.autograd.grad(loss, leaves)]


def errors_against_the_loop(time, batch, n, hidden, hidden_to_memory, relu, backend):
    args32 = make_arguments(time, batch, n, hidden, hidden_to_memory, torch.float32)
    args64 = [a if a is None else a.detach().double().requires_grad_() for a in args32]
    dtype_args = args32 if backend == "triton" else args64
    got = outputs_and_gradients(lambda a: run_convolution(a, relu, backend), dtype_args)
    ref = outputs_and_gradients(lambda a: run_naive(a, relu), args64)
    names = [name for name, a in zip(NAMES, [1, 1, *args64]) if a is not None]
    return {name: float((g.double() - r).norm() / r.norm()) for name, g, r in zip(names, got, ref)}


@pytest.mark.parametrize("hidden_to_memory", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_torch_backend_equals_the_state_loop_in_float64(hidden_to_memory, relu):
    errors = errors_against_the_loop(7, 3, 5, 6, hidden_to_memory, relu, "torch")
    assert max(errors.values()) < 1e-12, errors  # measured ~1e-15


@needs_triton
@pytest.mark.parametrize("hidden_to_memory", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_triton_kernels_equal_the_state_loop(hidden_to_memory, relu):
    """Through Triton's interpreter (see conftest.py). 37 steps cross several chunks of BLOCK_S earlier steps;
    batch 20 and hidden 70 cut the blocks of 16 sequences and of BLOCK_N columns partially."""
    errors = errors_against_the_loop(37, 20, 12, 70, hidden_to_memory, relu, "triton")
    assert max(errors.values()) < 1e-5, errors  # float32 products: measured below 1e-6


@needs_triton
def test_triton_kernels_over_one_step_and_without_a_memory_loss():
    """T = 1 (no earlier step: the convolution loops never run), and a loss on h alone (no gradient from the
    memory's states: the kernels' HAS_GU=False branch)."""
    for time in (1, 2):
        args32 = make_arguments(time, 17, 4, 20, True, torch.float32)
        args64 = [a.detach().double().requires_grad_() for a in args32]

        def loss_on_h(run, args):
            hs, _ = run(args)
            grads = torch.autograd.grad(hs.square().sum(), args, allow_unused=True)
            # With one step, A_T never reaches h (m_0 = u_0 Bm): no gradient here, zeros from the loop.
            return [hs.detach(), *(torch.zeros_like(a) if g is None else g for g, a in zip(grads, args))]
        got = loss_on_h(lambda a: run_convolution(a, False, "triton"), args32)
        ref = loss_on_h(lambda a: run_naive(a, False), args64)
        for name, g, r in zip(["hs", *NAMES[2:]], got, ref):
            if time == 1 and name == "A_T":
                assert not g.any() and not r.any()
            else:
                assert float((g.double() - r).norm() / r.norm()) < 1e-5, name


def test_bad_arguments_are_named():
    args = make_arguments(3, 2, 4, 5, True, torch.float64)
    ux, xh, A_T, Bm, E_h, W_m, W_h, h0 = args
    H = impulse(A_T, Bm, 3)
    with pytest.raises(ValueError, match="one memory input"):
        lmu_cell_convolution(ux.expand(3, 2, 2), xh, H, E_h, W_m, W_h, h0)
    with pytest.raises(ValueError, match="H must have shape"):
        lmu_cell_convolution(ux, xh, H[:2], E_h, W_m, W_h, h0)
    with pytest.raises(ValueError, match="E_h must have shape"):
        lmu_cell_convolution(ux, xh, H, E_h.t(), W_m, W_h, h0)
    with pytest.raises(ValueError, match="precision"):
        lmu_cell_convolution(ux, xh, H, E_h, W_m, W_h, h0, precision="fp8")
    with pytest.raises(ValueError, match="W_h is torch.float32"):
        lmu_cell_convolution(ux, xh, H, E_h, W_m, W_h.float(), h0)


@pytest.mark.parametrize("hidden_to_memory,relu,with_state", [(True, False, False), (False, True, False),
                                                              (True, False, True)])
def test_lmu_fused_convolution_equals_the_recurrent_mode(hidden_to_memory, relu, with_state):
    """LMU(fused_algorithm="convolution") in the "fused" mode against the "recurrent" mode, float64: outputs,
    final state and the gradients of every parameter (theta trained: through H and the discretization) and of
    a given initial state (m0 enters through its zero-input response)."""
    torch.manual_seed(0)
    cell = nn.RNNCell(8 + (0 if hidden_to_memory else 1), 6, nonlinearity="relu" if relu else "tanh")
    lmu = contime.LMU(1, 1, 8, 20.0, cell, hidden_to_memory=hidden_to_memory, input_to_hidden=not hidden_to_memory,
                      trainable_theta=True).double()
    x = torch.randn(3, 30, 1, dtype=torch.float64)
    state = None
    if with_state:
        _, state = lmu(torch.randn(3, 5, 1, dtype=torch.float64))
        state = contime.LMUState(state.memory.detach().requires_grad_(), state.hidden.detach().requires_grad_())
    results = {}
    for mode, algorithm in (("recurrent", "state"), ("fused", "convolution")):
        lmu.mode, lmu.fused_algorithm = mode, algorithm
        y, final = lmu(x, state)
        loss = y.square().sum() + final.memory.sin().sum() + final.hidden.sum()
        leaves = [p for p in lmu.parameters() if p.requires_grad] + ([*state] if with_state else [])
        results[algorithm] = [y, final.memory, final.hidden, *torch.autograd.grad(loss, leaves)]
    for got, ref in zip(results["convolution"], results["state"]):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)  # measured ~2e-15 relative
    assert results["convolution"][3].abs().max() > 0  # theta's gradient is really exercised


def test_lmu_refuses_the_convolution_algorithm_where_it_does_not_apply():
    with pytest.raises(ValueError, match="fused_algorithm must be one of"):
        contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3), fused_algorithm="fft")
    with pytest.raises(ValueError, match="memory_d == 1"):
        contime.LMU(2, 2, 4, 5.0, nn.RNNCell(8, 3), fused_algorithm="convolution")
    with pytest.raises(ValueError, match="memory_to_memory"):
        contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3), memory_to_memory=True, fused_algorithm="convolution")


@needs_triton
def test_backward_reads_only_the_partial_sums_of_running_members(monkeypatch):
    """On a GPU the sum buffer has a row per possible member (MEMBERS, a power of two), more than the SPLIT that
    run, and the autotuner's trial runs may leave other rows filled. Here rows beyond the one member the
    interpreter runs hold garbage: the gradients must not change."""
    from contime.ops.lmu_cell import convolution_triton

    def with_garbage(members, time, batch, like):
        sums = like.new_zeros(4, time, batch)
        sums[1:] = 1e3
        return sums
    monkeypatch.setattr(convolution_triton, "partial_sums", with_garbage)
    errors = errors_against_the_loop(9, 18, 6, 20, True, False, "triton")
    assert max(errors.values()) < 1e-5, errors


@needs_triton
def test_triton_backend_takes_strided_weights_and_runs_under_autocast():
    """A transposed (strided) E_h gives the same gradients as a contiguous one; under autocast K stays in the
    cell's dtype (float32), as the kernels need."""
    args = make_arguments(6, 17, 5, 20, True, torch.float32)
    ux, xh, A_T, Bm, E_h, W_m, W_h, h0 = [a.detach() for a in args]
    H = impulse(A_T.double(), Bm.double(), 6).float()
    results = []
    for strided in (False, True):
        leaves = [t.clone().requires_grad_() for t in (ux, xh, W_m, W_h, h0)]
        wide = torch.cat([E_h, torch.zeros_like(E_h)], 1).requires_grad_()  # (H, 2)
        eh = wide[:, :1] if strided else wide[:, :1].contiguous()  # the view has strides (2, 1)
        assert eh.is_contiguous() != strided
        hs, us = lmu_cell_convolution(leaves[0], leaves[1], H, eh, *leaves[2:], backend="triton")
        results.append([hs, *torch.autograd.grad(hs.square().sum() + us.sum(), [*leaves, wide])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hs_autocast, _ = lmu_cell_convolution(ux, xh, H, E_h, W_m, W_h, h0, backend="triton")
    assert hs_autocast.dtype == torch.float32
    torch.testing.assert_close(hs_autocast, results[0][0].detach(), rtol=1e-6, atol=1e-7)


@needs_triton
def test_lmu_runs_the_convolution_kernels_in_float32(monkeypatch):
    """The LMU's float32 path through the Triton kernels (interpreter), against the recurrent mode in float64:
    outputs, final state, and the gradients of theta and the weights."""
    import contime.ops.lmu_cell as lmu_cell
    monkeypatch.setattr(lmu_cell, "resolve_backend", lambda backend, device, dtype=None: "triton")
    torch.manual_seed(0)
    lmu64 = contime.LMU(1, 1, 12, 25.0, nn.RNNCell(12, 20), hidden_to_memory=True, trainable_theta=True).double()
    lmu32 = contime.LMU(1, 1, 12, 25.0, nn.RNNCell(12, 20), hidden_to_memory=True, trainable_theta=True,
                        mode="fused", fused_algorithm="convolution")
    lmu32.load_state_dict({k: v.float() for k, v in lmu64.state_dict().items()})
    lmu64.mode = "recurrent"
    x = torch.randn(17, 24, 1, dtype=torch.float64)
    results = []
    for lmu, inputs in ((lmu32, x.float()), (lmu64, x)):
        y, state = lmu(inputs)
        loss = y.square().sum() + state.memory.sum()
        results.append([y.detach(), state.memory.detach(), *torch.autograd.grad(loss, list(lmu.parameters()))])
    errors = [float((a.double() - b).norm() / b.norm()) for a, b in zip(*results)]
    assert max(errors) < 1e-5, errors


def test_lmu_takes_the_state_algorithm_beyond_the_convolution_limit(monkeypatch):
    """Past MAX_TIME steps the O(T^2) convolution gives way to the state algorithm, which computes the same."""
    from contime.ops.lmu_cell import convolution
    import contime.lmu as lmu_module
    lmu = contime.LMU(1, 1, 4, 10.0, nn.RNNCell(4, 3), hidden_to_memory=True, mode="fused",
                      fused_algorithm="convolution").double()
    monkeypatch.setattr(convolution, "MAX_TIME", 8)
    calls = []
    original = lmu_module.lmu_cell_convolution
    monkeypatch.setattr(lmu_module, "lmu_cell_convolution", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(2, 9, 1, dtype=torch.float64)
    y_long, _ = lmu(x)
    assert calls == []
    y_short, _ = lmu(x[:, :8])
    assert calls == [1]
    lmu.mode = "recurrent"
    torch.testing.assert_close(y_long, lmu(x)[0])
    torch.testing.assert_close(y_short, lmu(x[:, :8])[0])
