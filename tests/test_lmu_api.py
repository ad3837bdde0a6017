"""The LMU's interface: bad input, bidirectional wrapper, hidden-cell fast path, torch.compile, float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import contime
from contime import hidden as hidden_ops
from contime.bidirectional import reverse_padded

from autograd_graph import backward_node_names


def small_lmu(**kwargs):
    return contime.LMU(2, 1, 4, 5.0, **kwargs)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("x, error, match", [
    (torch.randn(3, 2), ValueError, "x must be 3-D"),
    (torch.randn(1, 3, 4, 2), ValueError, "x must be 3-D"),
    (torch.randn(2, 5, 3), ValueError, "input_size=2"),
    (torch.ones(2, 5, 2, dtype=torch.int64), TypeError, "x must have a floating-point dtype"),
    (torch.tensor([[[0.0, float("nan")]]]), ValueError, "x contains NaN or Inf"),
    (torch.tensor([[[float("inf"), 0.0]]]), ValueError, "x contains NaN or Inf"),
    (torch.zeros(0, 5, 2), ValueError, "x must not be empty"),
    ([[[0.0, 1.0]]], TypeError, "x must be a torch.Tensor"),
], ids=["2d", "4d", "feature-size", "int-dtype", "nan", "inf", "empty", "list"])
def test_bad_x(x, error, match):
    with pytest.raises(error, match=match):
        small_lmu()(x)


def test_value_checks_stand_aside_while_a_cuda_graph_is_captured(monkeypatch):
    """A check that reads values on the host would abort a CUDA graph's capture: can_read_values says no on a CUDA
    tensor during capture (faked here), and the LMU then skips its NaN check instead of synchronizing."""
    from contime import legendre

    class CudaLike:
        is_cuda = True
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert legendre.can_read_values(torch.zeros(1)) and legendre.can_read_values(CudaLike())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not legendre.can_read_values(CudaLike())
    assert legendre.can_read_values(torch.zeros(1))  # a CPU tensor is never part of a capture
    nan = torch.tensor([[[0.0, float("nan")]]])
    monkeypatch.setattr(contime.lmu, "can_read_values", lambda tensor: False)
    assert torch.isnan(small_lmu()(nan)[0]).any()  # no error: the check stood aside


@pytest.mark.parametrize("kwargs, match", [
    (dict(theta=0.0), "theta must be finite and > 0"),
    (dict(theta=-3.0), "theta must be finite and > 0"),
    (dict(theta=[1.0, 2.0, 3.0]), "theta must be a number or have memory_d=2 values"),
    (dict(order=0), "order must be >= 1"),
    (dict(memory_d=0), "memory_d must be >= 1"),
    (dict(input_size=0), "input_size must be >= 1"),
    (dict(discretizer="rk4"), "discretizer must be one of"),
    (dict(mode="fast"), "mode must be one of"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(input_kernel=False), r"input_size \(3\) must equal memory_d \(2\)"),
    (dict(hidden_to_memory=True), "hidden_to_memory and input_to_hidden need a hidden_cell"),
    (dict(hidden_cell=nn.RNNCell(8, 4), hidden_to_memory=True, mode="fft"), "mode='fft' is not valid"),
    (dict(hidden_cell=nn.RNNCell(8, 4), memory_to_memory=True, mode="conv"), "mode='conv' is not valid"),
    (dict(mode="final"), "mode='final' is not valid"),
    (dict(hidden_cell=nn.RNNCell(8, 4), return_sequences=False, mode="final"), "mode='final' is not valid"),
], ids=["theta-zero", "theta-negative", "theta-count", "order", "memory_d", "input_size", "discretizer",
        "mode-name", "dropout", "input-kernel-size", "hidden-to-memory-without-cell", "fft-with-feedback",
        "conv-with-feedback", "final-with-sequences", "final-with-rnn"])
def test_bad_constructor_arguments(kwargs, match):
    args = dict(input_size=3, memory_d=2, order=4, theta=5.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        contime.LMU(args.pop("input_size"), args.pop("memory_d"), args.pop("order"), args.pop("theta"), **args)


@pytest.mark.parametrize("cell, kwargs, error, match", [
    (nn.RNNCell(5, 3), {}, ValueError, r"hidden_cell takes 5 input features, but the LMU feeds it 4 "
                                         r"\(memory_d\*order=4\); input_to_hidden=True would feed it x"),
    (nn.GRUCell(4, 3), dict(input_to_hidden=True), ValueError, r"takes 4 input features, but the LMU feeds it 5"),
    (nn.Linear(7, 3), {}, ValueError, "takes 7 input features"),
    (nn.Sequential(nn.Linear(3, 3), nn.ReLU()), dict(mode="fft"), ValueError, "takes 3 input features"),
    (nn.RNNCell(5, 3), dict(hidden_to_memory=True, mode="fused"), ValueError, "takes 5 input features"),
    (nn.LSTM(4, 3), {}, TypeError, "one-step cell, got nn.LSTM, which runs whole sequences; use nn.LSTMCell"),
    (nn.GRU(4, 3), {}, TypeError, "use nn.GRUCell"),
    (nn.GRUCell(4, 0), {}, ValueError, "at least one output unit, got 0"),  # was a ZeroDivisionError in auto
], ids=["rnn-without-input-to-hidden", "gru-with-input-to-hidden", "linear", "sequential", "fused",
        "nn.LSTM", "nn.GRU", "no-units"])
def test_hidden_cell_of_the_wrong_width_or_kind_is_refused(cell, kwargs, error, match):
    """The batched modes read only the weight columns of the memory: a cell of another input width would run
    there without a word (and fail deep inside torch in the loop)."""
    with pytest.raises(error, match=match):
        contime.LMU(1, 1, 4, 5.0, cell, **kwargs)


def test_a_lazy_cell_is_left_to_its_first_call():
    lmu = contime.LMU(1, 1, 4, 5.0, nn.Sequential(nn.LazyLinear(3), nn.Tanh()), mode="recurrent")
    assert lmu(torch.randn(2, 5, 1))[0].shape == (2, 5, 3)


@pytest.mark.parametrize("name, value, match", [
    ("mode", "bogus", "mode must be one of"),
    ("mode", "fused", "mode='fused' is not valid"),  # a GRU cell
    ("fused_algorithm", "bogus", "fused_algorithm must be one of"),
    ("kernel_precision", "bogus", "kernel_precision must be one of"),
    ("conv_tol", 2.0, r"conv_tol must be in \[0, 1\)"),
    ("conv_tol", float("nan"), r"conv_tol must be in \[0, 1\)"),
    ("conv_tol", -1e-3, r"conv_tol must be in \[0, 1\)"),
], ids=["mode", "mode-for-cell", "fused-algorithm", "kernel-precision", "conv-tol-2", "conv-tol-nan",
        "conv-tol-negative"])
def test_settings_are_checked_when_changed_after_construction(name, value, match):
    lmu = contime.LMU(1, 1, 4, 5.0, nn.GRUCell(4, 3))
    before = getattr(lmu, name)
    with pytest.raises(ValueError, match=match):
        setattr(lmu, name, value)
    assert getattr(lmu, name) == before


def test_conv_tol_is_checked_at_construction():
    with pytest.raises(ValueError, match=r"conv_tol must be in \[0, 1\)"):
        contime.LMU(1, 1, 4, 5.0, mode="conv", conv_tol=1.0)


def test_an_lmu_pickled_before_the_checked_settings_loads(tmp_path):
    """mode, kernel_precision, fused_algorithm and conv_tol were plain attributes: an LMU pickled then holds them
    under their own names, and __setstate__ moves them behind the properties."""
    lmu = contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3), mode="recurrent", conv_tol=1e-6)
    state = lmu.__getstate__()
    for name in ("mode", "kernel_precision", "fused_algorithm", "conv_tol"):
        state[name] = state.pop("_" + name)  # the old layout
    old = contime.LMU.__new__(contime.LMU)
    old.__setstate__(state)
    x = torch.randn(2, 5, 1)
    assert old.mode == "recurrent" and old.conv_tol == 1e-6
    torch.testing.assert_close(old(x)[0], lmu(x)[0], atol=0, rtol=0)


def test_a_cell_of_your_own_may_keep_none_in_its_state():
    class Cell(nn.Module):
        hidden_size = 3

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4 + 3, 3)

        def forward(self, inputs, state):
            h = inputs.new_zeros(inputs.shape[0], 3) if state is None else state[0]
            return torch.tanh(self.linear(torch.cat([inputs, h], -1))), None

    lmu = contime.LMU(1, 1, 4, 5.0, Cell())
    x = torch.randn(2, 6, 1)
    _, state = lmu(x[:, :3])
    torch.testing.assert_close(lmu(x[:, 3:], state)[0], lmu(x)[0][:, 3:])
    with pytest.raises(ValueError, match=r"state.hidden\[0\] must have shape"):
        lmu(x, contime.LMUState(state.memory, (torch.zeros(2, 4), None)))


def test_an_explicit_mode_made_invalid_by_a_flag_is_refused():
    lmu = contime.LMU(1, 1, 4, 5.0, nn.Linear(4, 3), mode="final", return_sequences=False)
    lmu.return_sequences = True
    with pytest.raises(ValueError, match="mode='final' is not valid"):
        lmu(torch.randn(2, 5, 1))


def test_x_in_another_dtype_than_the_weights_is_refused():
    lmu = contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3))
    x = torch.randn(2, 5, 1)
    with pytest.raises(TypeError, match="x has dtype float64, but the layer's weights are float32"):
        lmu(x.double())
    with pytest.raises(TypeError, match="x_t has dtype bfloat16"):
        lmu.step(x[:, 0].bfloat16())
    assert lmu.double()(x.double())[0].dtype == torch.float64
    lmu.float().hidden_cell.double()  # a half-converted layer failed inside torch
    with pytest.raises(TypeError, match=r"mixed dtypes \(input_kernel float32, hidden_cell float64\)"):
        lmu(x)
    # Only theta (read in float64 anyway): any float dtype runs.
    memory_only = contime.LMU(1, 1, 4, 5.0, input_kernel=False)
    assert memory_only(x.double())[0].dtype == torch.float64


def test_order_must_be_an_int():
    with pytest.raises(TypeError, match="order must be an int"):
        contime.LMU(1, 1, 2.5, 5.0)


@pytest.mark.parametrize("lengths, error, match", [
    (torch.tensor([3]), ValueError, r"lengths must have shape \(batch,\)=\(2,\)"),
    (torch.tensor([[3, 3]]), ValueError, r"lengths must have shape"),
    (torch.tensor([3, 0]), ValueError, r"lengths must lie in \[1, time=5\]"),
    (torch.tensor([3, 6]), ValueError, r"lengths must lie in \[1, time=5\]"),
    (torch.tensor([3.0, 2.0]), TypeError, "lengths must hold integers"),
], ids=["too-few", "2d", "zero", "too-long", "float"])
def test_bad_lengths(lengths, error, match):
    with pytest.raises(error, match=match):
        small_lmu()(torch.randn(2, 5, 2), lengths=lengths)


def test_bad_state():
    lmu = contime.LMU(2, 1, 4, 5.0, nn.GRUCell(4, 3))
    x = torch.randn(2, 5, 2)
    with pytest.raises(ValueError, match=r"state.memory must have shape \(batch, memory_d\*order\)=\(2, 4\)"):
        lmu(x, contime.LMUState(torch.zeros(2, 5), None))
    with pytest.raises(ValueError, match=r"state.hidden must have shape \(batch, hidden\)=\(2, 3\)"):
        lmu(x, contime.LMUState(torch.zeros(2, 4), torch.zeros(3, 3)))
    with pytest.raises(TypeError, match="state must be an LMUState"):
        lmu(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="state.hidden must be None"):
        small_lmu()(x, contime.LMUState(torch.zeros(2, 4), torch.zeros(2, 4)))


@pytest.mark.parametrize("hidden, error, match", [
    (torch.zeros(2, 3), TypeError, r"state.hidden of an nn.LSTMCell must be a tuple \(h, c\), got Tensor"),
    ((torch.zeros(2, 3),), TypeError, "must be a tuple \\(h, c\\), got a tuple of 1"),
    ((torch.zeros(2, 3),) * 3, TypeError, "got a tuple of 3"),
    ((torch.zeros(2, 3), None), TypeError, r"state.hidden\[1\] \(c\) must be a torch.Tensor"),
    ((torch.zeros(2, 3), torch.zeros(2, 4)), ValueError, r"state.hidden\[1\] \(c\) must have shape"),
    ((torch.zeros(2, 3), torch.full((2, 3), float("nan"))), ValueError, r"\(c\) contains NaN or Inf"),
    ((torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), TypeError, "floating-point dtype, got torch.int64"),
    ((torch.zeros(2, 3, device="meta"), torch.zeros(2, 3)), ValueError, "must be on x's device cpu, got meta"),
], ids=["tensor", "1-tuple", "3-tuple", "c-none", "c-shape", "c-nan", "h-int", "h-device"])
def test_bad_lstm_state(hidden, error, match):
    lmu = contime.LMU(2, 1, 4, 5.0, nn.LSTMCell(4, 3))
    with pytest.raises(error, match=match):
        lmu(torch.randn(2, 5, 2), contime.LMUState(torch.zeros(2, 4), hidden))


@pytest.mark.parametrize("memory, hidden, error, match", [
    (torch.zeros(2, 4), (torch.zeros(2, 3),), TypeError, "must be one tensor"),
    (torch.full((2, 4), float("inf")), None, ValueError, "state.memory contains NaN or Inf"),
    (torch.zeros(2, 4, dtype=torch.int32), None, TypeError, "state.memory must have a floating-point dtype"),
    (torch.zeros(2, 4, device="meta"), None, ValueError, "state.memory must be on x's device"),
    (torch.zeros(2, 4), torch.tensor([[0.0, float("nan"), 0.0]] * 2), ValueError, "state.hidden contains NaN"),
], ids=["tuple-for-gru", "memory-inf", "memory-int", "memory-device", "hidden-nan"])
def test_bad_state_values(memory, hidden, error, match):
    lmu = contime.LMU(2, 1, 4, 5.0, nn.GRUCell(4, 3))
    for call in (lambda s: lmu(torch.randn(2, 5, 2), s), lambda s: lmu.step(torch.randn(2, 2), s)):
        with pytest.raises(error, match=match):
            call(contime.LMUState(memory, hidden))


def test_bad_step_input():
    with pytest.raises(ValueError, match=r"x_t must be 2-D \(batch, input_size\)"):
        small_lmu().step(torch.randn(2, 1, 2))


# ------------------------------------------------------------------------------------------ bidirectional
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "time-major"])
def test_bidirectional_is_forward_plus_reversed_backward(batch_first):
    forward = contime.LMU(2, 2, 4, 6.0, nn.GRUCell(8, 3), batch_first=batch_first).double()
    bi = contime.BidirectionalLMU(forward).double()
    lengths = torch.tensor([9, 4])
    x = torch.randn(2, 9, 2, dtype=torch.float64)
    x_in = x if batch_first else x.transpose(0, 1)
    y, (state_f, state_b) = bi(x_in, lengths=lengths)
    y = y if batch_first else y.transpose(0, 1)
    assert y.shape == (2, 9, 6) and bi.output_size == 6
    for b, n in enumerate(lengths.tolist()):
        seq = x[b:b + 1, :n]
        as_in = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))
        y_f, _ = bi.forward_lmu(as_in(seq))
        y_b, s_b = bi.backward_lmu(as_in(seq.flip(1)))
        torch.testing.assert_close(y[b:b + 1, :n, :3], as_in(y_f), atol=1e-12, rtol=0)
        torch.testing.assert_close(y[b:b + 1, :n, 3:], as_in(y_b).flip(1), atol=1e-12, rtol=0)
        torch.testing.assert_close(state_b.memory[b:b + 1], s_b.memory, atol=1e-12, rtol=0)
        assert torch.all(y[b, n:] == 0)
    # The backward copy has its own, freshly initialised weights.
    assert not torch.equal(bi.forward_lmu.input_kernel, bi.backward_lmu.input_kernel)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "time-major"])
def test_bidirectional_with_irregular_steps_reads_the_reversed_times(batch_first):
    forward = contime.LMU(2, 2, 4, 6.0, nn.GRUCell(8, 3), batch_first=batch_first).double()
    bi = contime.BidirectionalLMU(forward).double()
    lengths = torch.tensor([9, 5])
    x = torch.randn(2, 9, 2, dtype=torch.float64)
    times = torch.cumsum(torch.rand(2, 9, dtype=torch.float64) + 0.2, dim=1)
    dt = torch.diff(times, dim=1, prepend=torch.zeros(2, 1, dtype=torch.float64))
    as_in = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))
    y, (state_f, state_b) = bi(as_in(x), lengths=lengths, dt=as_in(dt))
    y = as_in(y)
    for b, n in enumerate(lengths.tolist()):
        seq, t = x[b:b + 1, :n], times[b:b + 1, :n]
        y_f, _ = bi.forward_lmu(as_in(seq), dt=as_in(dt[b:b + 1, :n]))
        # Reversed time: -t read backwards increases; its first gap is the original first one.
        t_rev = -t.flip(1)
        dt_rev = torch.cat([dt[b:b + 1, :1], torch.diff(t_rev, dim=1)], dim=1)
        y_b, s_b = bi.backward_lmu(as_in(seq.flip(1)), dt=as_in(dt_rev))
        torch.testing.assert_close(y[b:b + 1, :n, :3], as_in(y_f), atol=1e-12, rtol=0)
        torch.testing.assert_close(y[b:b + 1, :n, 3:], as_in(y_b).flip(1), atol=1e-12, rtol=0)
        torch.testing.assert_close(state_b.memory[b:b + 1], s_b.memory, atol=1e-12, rtol=0)


def test_reverse_padded():
    x = torch.arange(10.0).reshape(2, 5, 1)
    got = reverse_padded(x, torch.tensor([5, 3]))[..., 0]
    assert got.tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]


# ---------------------------------------------------------------------------- hidden cells and fast path
@pytest.mark.parametrize("make_cell", [
    lambda: nn.RNNCell(6, 4), lambda: nn.RNNCell(6, 4, nonlinearity="relu"), lambda: nn.RNNCell(6, 4, bias=False),
    lambda: nn.GRUCell(6, 4), lambda: nn.LSTMCell(6, 4), lambda: nn.LSTMCell(6, 4, bias=False),
], ids=["rnn-tanh", "rnn-relu", "rnn-nobias", "gru", "lstm", "lstm-nobias"])
def test_torch_cell_fast_path_equals_cell_loop(make_cell):
    cell = make_cell().double()
    inputs = torch.randn(3, 11, 6, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([11, 4, 1])
    results = []
    for fast in (True, False):
        h, state = hidden_ops.recurrent_sequence(cell, inputs, None, lengths, fast=fast)
        loss = (h * torch.linspace(-1, 1, h.numel(), dtype=h.dtype).reshape(h.shape)).sum() + \
            sum(s.sum() for s in (state if isinstance(state, tuple) else (state,)))
        grads = torch.autograd.grad(loss, [inputs] + list(cell.parameters()))
        results.append((h, state, grads))
    (h1, s1, g1), (h2, s2, g2) = results
    torch.testing.assert_close(h1, h2, atol=1e-12, rtol=0)
    torch.testing.assert_close(s1, s2, atol=1e-12, rtol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_cell_kind_and_output_size():
    assert hidden_ops.cell_kind(None) == "none"
    assert hidden_ops.cell_kind(nn.Linear(3, 2)) == "feedforward"
    assert hidden_ops.cell_kind(nn.Sequential(nn.Linear(3, 2), nn.ReLU())) == "feedforward"
    assert hidden_ops.cell_kind(nn.LSTMCell(3, 2)) == "recurrent"
    assert contime.LMU(1, 1, 3, 4.0, nn.Sequential(nn.Linear(3, 7), nn.ReLU())).output_size == 7  # dry run
    assert contime.LMU(1, 2, 3, 4.0).output_size == 6
    with pytest.raises(TypeError, match="hidden_cell must be an nn.Module"):
        contime.LMU(1, 1, 3, 4.0, hidden_cell=lambda x: x)


# --------------------------------------------------------------------------------------- compile, float32
@pytest.mark.parametrize("mode", ["fft", "recurrent"])
def test_compiled_layer_equals_eager(mode):
    torch._dynamo.reset()
    lmu = contime.LMU(2, 2, 8, 6.0, nn.RNNCell(16, 5), mode=mode, trainable_theta=True,
                      hidden_to_memory=(mode == "recurrent"))
    x = torch.randn(3, 10, 2)
    compiled = torch.compile(lmu)
    y_eager, s_eager = lmu(x)
    y_comp, s_comp = compiled(x)
    torch.testing.assert_close(y_comp, y_eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_comp.memory, s_eager.memory, atol=1e-5, rtol=1e-5)
    g_eager = torch.autograd.grad(y_eager.square().sum(), lmu.theta)[0]
    g_comp = torch.autograd.grad(y_comp.square().sum(), lmu.theta)[0]
    torch.testing.assert_close(g_comp, g_eager, atol=1e-4, rtol=1e-4)


def test_float32_fft_mode_on_the_cpu_keeps_float32_accuracy():
    """The CPU's fft mode runs the chunk scan, which raises A_bar to powers: from the float64 matrices (with
    their float32 cast: 5.4e-6 here; measured 3.8e-7 without it, this CPU)."""
    torch.manual_seed(0)
    lmu = contime.LMU(1, 1, 128, 5000.0, mode="fft", input_kernel=False)
    x = torch.randn(2, 5000, 1)
    y32, _ = lmu(x)
    y64, _ = contime.LMU(1, 1, 128, 5000.0, mode="fft", input_kernel=False).double()(x.double())
    assert float((y32.double() - y64).norm() / y64.norm()) < 1.5e-6


def test_float32_fft_memory_against_float64_at_psmnist_scale():
    """float32 FFT memory against the float64 loop at order 256, theta 784 (DESIGN: about 5e-4 relative)."""
    lmu = contime.LMU(1, 1, 256, 784.0, mode="fft", input_kernel=False)
    x = torch.randn(2, 784, 1)
    y32, _ = lmu(x)
    lmu64 = contime.LMU(1, 1, 256, 784.0, mode="fft", input_kernel=False).double()
    y64, _ = lmu64(x.double())
    rel_rms = ((y32.double() - y64).square().mean().sqrt() / y64.square().mean().sqrt()).item()
    assert rel_rms < 2e-5, rel_rms


def test_cached_system_follows_theta_changes():
    """The discretization is reused between calls, but never after theta changes."""
    lmu = contime.LMU(1, 1, 6, 5.0, input_kernel=False).double()
    x = torch.randn(2, 12, 1, dtype=torch.float64)
    first, _ = lmu(x)
    with torch.no_grad():
        lmu.theta.fill_(9.0)
    second, _ = lmu(x)
    fresh, _ = contime.LMU(1, 1, 6, 9.0, input_kernel=False).double()(x)
    torch.testing.assert_close(second, fresh, atol=1e-14, rtol=0)
    assert not torch.allclose(first, second)
    lmu.load_state_dict({"theta": torch.tensor([5.0], dtype=torch.float64)})
    third, _ = lmu(x)
    torch.testing.assert_close(third, first, atol=1e-14, rtol=0)


@pytest.mark.parametrize("trainable_theta", [True, False])
@pytest.mark.parametrize("mode", ["recurrent", "fft", "final"])
def test_training_after_inference_mode(mode, trainable_theta):
    """A call under torch.inference_mode must not leave cached tensors that a later backward cannot save
    (with a frozen theta the training call reuses what the inference call cached)."""
    lmu = contime.LMU(1, 1, 4, 5.0, nn.Linear(4, 3), mode=mode, return_sequences=(mode != "final"),
                      trainable_theta=trainable_theta)
    x = torch.randn(2, 7, 1)
    with torch.inference_mode():
        expected, _ = lmu(x)
    y, _ = lmu(x)
    y.sum().backward()
    assert lmu.input_kernel.grad is not None
    torch.testing.assert_close(y, expected)  # float32 defaults: with a gradient wanted, the fft mode may dispatch
    # to another algorithm (within rounding)


def test_inference_mode_reuses_the_discretization(monkeypatch):
    """Streaming under torch.inference_mode builds the matrices once, not at every step (it did: 4.4 ms
    against 0.09 ms per step at order 128)."""
    calls = []
    real = contime.lmu.discretize
    monkeypatch.setattr(contime.lmu, "discretize", lambda *a, **k: calls.append(1) or real(*a, **k))
    lmu = contime.LMU(1, 1, 8, 20.0, nn.RNNCell(8, 4))
    state = None
    with torch.inference_mode():
        for _ in range(5):
            _, state = lmu.step(torch.randn(3, 1), state)
    assert len(calls) == 1


def test_cache_follows_the_discretizer():
    lmu = contime.LMU(1, 1, 4, 5.0).double()
    x = torch.randn(2, 9, 1, dtype=torch.float64)
    zoh, _ = lmu(x)
    lmu.discretizer = "euler"
    euler, _ = lmu(x)
    fresh = contime.LMU(1, 1, 4, 5.0, discretizer="euler").double()
    fresh.load_state_dict(lmu.state_dict())
    torch.testing.assert_close(euler, fresh(x)[0], atol=1e-14, rtol=0)
    assert not torch.allclose(zoh, euler)


def test_double_backward_is_refused_not_wrong():
    lmu = contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3), mode="fft", return_sequences=False).double()
    x = torch.randn(2, 6, 1, dtype=torch.float64, requires_grad=True)
    y, _ = lmu(x)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


@pytest.mark.parametrize("cell_type", [nn.GRUCell, nn.LSTMCell, nn.RNNCell])
@pytest.mark.parametrize("mode", ["recurrent", "fft", "conv"])
def test_loops_split_the_sequence_once(cell_type, mode):
    """The per-step loops take their steps from one ``unbind``: indexing step t out of a (time, ...) tensor
    costs a zero gradient the size of the whole sequence at every step in the backward pass, O(time^2) (57 s
    against 1.8 s per training step for a GRUCell(212) LMU in "fft" mode at the psMNIST shape)."""
    time = 12
    lmu = contime.LMU(5, 1, 4, 6.0, cell_type(4 + 5, 3), input_to_hidden=True, mode=mode)
    x = torch.randn(3, time, 5, requires_grad=True)
    y, _ = lmu(x)
    names = backward_node_names(y)
    assert names.count("SelectBackward0") < time, names  # none per step (an RNNCell runs as one node in fft/conv)


def test_lstm_cells_run_as_torch_lstm_on_the_cpu():
    """An nn.LSTMCell over a whole sequence is one call of torch's LSTM on the CPU (without lengths); float32
    against the loop of cell calls, with and without a starting state. The float64 equality of every mode with
    the loop, gradients included, is in test_lmu_modes."""
    cell = nn.LSTMCell(6, 5)
    assert hidden_ops.uses_torch_lstm(cell, "cpu", False)
    assert not hidden_ops.uses_torch_lstm(cell, "cpu", True)  # padding: the loop masks each step
    assert not hidden_ops.uses_torch_lstm(cell, "cuda", False)  # cuDNN not timed yet
    assert not hidden_ops.uses_torch_lstm(nn.GRUCell(6, 5), "cpu", False)  # measured slower than the loop
    inputs = torch.randn(4, 30, 6, requires_grad=True)
    for state in (None, (torch.randn(4, 5), torch.randn(4, 5))):
        results = []
        for fast in (True, False):
            h, final = hidden_ops.recurrent_sequence(cell, inputs, state, None, fast=fast)
            loss = (h * torch.linspace(-1, 1, h.numel()).reshape(h.shape)).sum() + final[0].sum() + final[1].sum()
            results.append((h, final, torch.autograd.grad(loss, [inputs] + list(cell.parameters()))))
        (h1, s1, g1), (h2, s2, g2) = results
        torch.testing.assert_close(h1, h2, atol=2e-6, rtol=0)
        torch.testing.assert_close(s1, s2, atol=2e-6, rtol=0)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    lmu = contime.LMU(1, 1, 4, 6.0, nn.LSTMCell(4, 3), mode="fft")
    names = backward_node_names(lmu(torch.randn(2, 9, 1, requires_grad=True))[0])
    assert "SigmoidBackward0" not in names, names  # torch's LSTM node (oneDNN here), not a loop of cell calls


def test_pickles_without_the_system_cache():
    """The cache of discretized matrices is not part of the module's pickled state (deepcopy, torch.save, and
    aeon's check that predict leaves an estimator unchanged all pickle it)."""
    import copy
    import pickle

    lmu = contime.LMU(1, 1, 6, 9.0, nn.Linear(6, 3))
    before = pickle.dumps(lmu)
    with torch.no_grad():
        expected, _ = lmu(torch.ones(2, 5, 1))
    assert lmu._system_cache  # filled by the call
    assert pickle.dumps(lmu) == before
    twin = copy.deepcopy(lmu)
    assert twin._system_cache == {} and lmu._system_cache
    torch.testing.assert_close(twin(torch.ones(2, 5, 1))[0], expected, atol=0, rtol=0)


def test_lmu_made_under_inference_mode_runs_there():
    """Parameters made under inference mode have no version counter: such a call is simply not cached."""
    with torch.inference_mode():
        lmu = contime.LMU(1, 1, 4, 6.0, nn.RNNCell(4, 3))
        y, state = lmu(torch.randn(2, 9, 1))
        h, _ = lmu.step(torch.randn(2, 1), state)
    assert y.shape == (2, 9, 3) and h.shape == (2, 3)


@pytest.mark.parametrize("cell_type", [nn.RNNCell, nn.LSTMCell, nn.GRUCell])
def test_auto_calls_a_hooked_cell(cell_type):
    """A hidden cell with hooks (here old-style weight_norm, which recomputes the weight in a forward pre-hook)
    is called step by step under mode="auto": the batched modes read its weights and would skip the hooks."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # old-style weight_norm is deprecated, still in use
        cell = nn.utils.weight_norm(cell_type(4, 3), "weight_hh")
    lmu = contime.LMU(1, 1, 4, 6.0, cell)
    assert lmu.resolve_mode("cpu") == "fft" and lmu._needs_cell_calls("fft", torch.zeros(1))
    optimizer = torch.optim.SGD(lmu.parameters(), lr=0.1)
    x = torch.randn(2, 9, 1)
    for _ in range(2):  # a stale weight would fail here ("backward through the graph a second time")
        optimizer.zero_grad()
        y, _ = lmu(x)
        y.square().sum().backward()
        optimizer.step()
    lmu.mode = "recurrent"
    expected, _ = lmu(x)
    lmu.mode = "auto"
    torch.testing.assert_close(lmu(x)[0], expected, atol=0, rtol=0)


@pytest.mark.parametrize("mode, cell", [("fft", nn.RNNCell(4, 3)), ("conv", nn.GRUCell(4, 3)),
                                        ("fused", nn.RNNCell(4, 3)), ("fft", nn.Sequential(nn.Linear(4, 3)))])
def test_explicit_batched_mode_refuses_a_hooked_cell(mode, cell):
    """An explicit mode that reads the cell's weights would skip its hooks silently: it raises instead, naming
    the mode and hidden_cell; without the hook the same call runs, and the loop honours the hook."""
    lmu = contime.LMU(1, 1, 4, 6.0, cell, mode=mode)
    x = torch.randn(2, 9, 1)
    lmu(x)  # no hook yet
    calls = []
    handle = cell.register_forward_hook(lambda module, args, out: calls.append(1))
    with pytest.raises(ValueError, match=rf"mode='{mode}'.*hooks on hidden_cell.*mode='recurrent'"):
        lmu(x)
    lmu.mode = "recurrent"
    lmu(x)
    assert calls  # the loop called the cell, so its hook ran
    handle.remove()
    lmu.mode = mode
    lmu(x)


@pytest.mark.parametrize("hooked", [0, 1, None])
def test_fft_with_a_leading_linear_refuses_only_hooks_it_would_skip(hooked):
    """fft folds only the leading Linear of a Sequential and calls the rest: a hook on a later module runs there
    (no refusal); a hook on the Linear (0) or on the Sequential itself (None) would be skipped: ValueError."""
    cell = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    lmu = contime.LMU(1, 1, 4, 6.0, cell, mode="fft")
    calls = []
    (cell if hooked is None else cell[hooked]).register_forward_hook(lambda module, args, out: calls.append(1))
    x = torch.randn(2, 9, 1)
    if hooked == 1:
        lmu(x)
        assert calls
        lmu.mode = "auto"
        assert lmu._needs_cell_calls("fft", x) is False
    else:
        with pytest.raises(ValueError, match="hooks on hidden_cell"):
            lmu(x)


@pytest.mark.parametrize("cell_type", [nn.RNNCell, nn.LSTMCell, nn.GRUCell])
def test_auto_under_forward_mode_ad(cell_type):
    """torch.func.jvp through mode="auto" (the loop then) equals the loop's."""
    lmu = contime.LMU(1, 1, 4, 6.0, cell_type(4, 3)).double()
    x, tangent = torch.randn(2, 9, 1, dtype=torch.float64), torch.randn(2, 9, 1, dtype=torch.float64)
    _, auto = torch.func.jvp(lambda v: lmu(v)[0], (x,), (tangent,))
    lmu.mode = "recurrent"
    _, loop = torch.func.jvp(lambda v: lmu(v)[0], (x,), (tangent,))
    torch.testing.assert_close(auto, loop, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", [None, nn.RNNCell(4, 3), nn.GRUCell(4, 3), nn.Linear(4, 3)],
                         ids=["no-cell", "rnn", "gru", "linear"])
def test_vmap_over_sequences_equals_the_batched_call(cell):
    """torch.func.vmap: the input checks stand aside (a batched tensor has no one value to read) and "auto"
    takes the loop for a cell whose weights the batched modes read; each sequence's output equals the batched
    call's."""
    lmu = contime.LMU(1, 1, 4, 6.0, cell).double()
    x = torch.randn(3, 9, 1, dtype=torch.float64)
    loops = []
    original = lmu._forward_recurrent
    lmu._forward_recurrent = lambda *args: loops.append(1) or original(*args)
    mapped = torch.func.vmap(lambda seq: lmu(seq[None])[0][0])(x)
    assert len(loops) == (0 if cell is None else 1)  # the batched modes read a cell's weights: the loop then
    torch.testing.assert_close(mapped, lmu(x)[0], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="dt cannot be given under torch.func.vmap"):
        torch.func.vmap(lambda seq: lmu(seq[None], dt=torch.ones(1, 9, dtype=torch.float64))[0][0])(x)


def test_explicit_batched_mode_under_vmap_says_what_to_use():
    lmu = contime.LMU(1, 1, 4, 6.0, nn.RNNCell(4, 3), mode="fft")
    with pytest.raises(ValueError, match="mode='fft' has no forward-mode AD or torch.func"):
        torch.func.vmap(lambda seq: lmu(seq[None])[0][0])(torch.randn(3, 9, 1))


@pytest.mark.parametrize("cell_type", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
@pytest.mark.parametrize("mode", ["auto", "fft", "conv", "fused"])
def test_cpu_autocast_with_backward_inside_it(cell_type, mode):
    """Under CPU autocast (bfloat16), a call, a second call from its state, and the backward pass inside the
    autocast region run in every mode (the one-node recurrences and the fused cell once failed there on mixed
    dtypes); outputs stay within bfloat16 rounding of the float32 call (measured 8.7e-3 at most)."""
    if mode == "fused" and cell_type is not nn.RNNCell:
        pytest.skip("fused takes an nn.RNNCell")
    torch.manual_seed(0)
    lmu = contime.LMU(3, 2, 4, 5.0, cell_type(4 * 2 + 3, 6), input_to_hidden=True, mode=mode)
    x = torch.randn(2, 7, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = lmu(x)
        y2, _ = lmu(x, state)
        (y.float().sum() + y2.float().sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lmu.parameters() if p.requires_grad)
    with torch.no_grad():
        expected, _ = lmu(x)
    assert (y.float() - expected).abs().max() < 0.03


def test_lstm_state_stays_float32_under_cpu_autocast():
    """torch.lstm is on CPU autocast's bfloat16 list; the cell's own dtype is kept, as the loop keeps it, so the
    state can start a later call without autocast."""
    lmu = contime.LMU(1, 1, 4, 6.0, nn.LSTMCell(4, 3), mode="fft")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = lmu(torch.randn(2, 9, 1))
    assert all(part.dtype == torch.float32 for part in state.hidden)
    y, _ = lmu(torch.randn(2, 9, 1), state)
    assert y.dtype == torch.float32


def test_padded_call_of_a_large_lstm_takes_the_loop(monkeypatch):
    """mode="auto" with lengths on the CPU: an LSTM cell beyond CPU_FFT_MAX_GATES takes the loop (torch's LSTM
    takes no lengths, and the folded loop was measured slower there); without lengths, fft."""
    lmu = contime.LMU(1, 1, 4, 6.0, nn.LSTMCell(4, 200))
    recurrent_calls = []
    original = contime.LMU._forward_recurrent
    monkeypatch.setattr(lmu, "_forward_recurrent",
                        lambda *args, **kwargs: recurrent_calls.append(1) or original(lmu, *args, **kwargs))
    x = torch.randn(2, 7, 1)
    lmu(x)
    assert recurrent_calls == []
    lmu(x, lengths=torch.tensor([7, 3]))
    assert recurrent_calls == [1]
