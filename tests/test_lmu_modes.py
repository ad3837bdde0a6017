"""Every execution mode of contime.LMU equals the recurrent loop: outputs, final state and every gradient."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import contime
from contime.ops.lmu_cell import triton_available
from contime.hidden import hidden_of

BATCH, TIME, INPUT = 3, 17, 2
ATOL = 1e-8  # float64; measured differences are ~1e-15 (conv: its truncation, set by conv_tol=1e-14 below)


class CustomCell(nn.Module):
    """A recurrent cell with torch's (input, state) contract but not a torch class."""

    def __init__(self, in_features, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.inp = nn.Linear(in_features, hidden_size)
        self.rec = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x, state=None):
        if state is None:
            state = x.new_zeros(x.shape[0], self.hidden_size)
        return torch.tanh(self.inp(x) + self.rec(state))


@dataclass
class Case:
    id: str
    hidden: str = "none"  # none | linear | rnn | gru | lstm | custom
    memory_d: int = 2
    order: int = 6
    theta: object = 7.0
    kwargs: dict = field(default_factory=dict)
    lengths: bool = False
    initial_state: bool = False

    def build(self) -> contime.LMU:
        memory = self.memory_d * self.order
        hidden_in = memory + (INPUT if self.kwargs.get("input_to_hidden") else 0)
        cell = {
            "none": lambda: None,
            "linear": lambda: nn.Sequential(nn.Linear(hidden_in, 5), nn.Tanh()),
            "rnn": lambda: nn.RNNCell(hidden_in, 5),
            "gru": lambda: nn.GRUCell(hidden_in, 5),
            "lstm": lambda: nn.LSTMCell(hidden_in, 5),
            "custom": lambda: CustomCell(hidden_in, 5),
        }[self.hidden]()
        lmu = contime.LMU(INPUT, self.memory_d, self.order, self.theta, cell, trainable_theta=True,
                          conv_tol=1e-14, **self.kwargs)
        return lmu.double()


CASES = [
    Case("memory-only"),
    Case("memory-only-final", kwargs=dict(return_sequences=False)),
    Case("memory-only-no-kernel", memory_d=INPUT, kwargs=dict(input_kernel=False)),
    Case("memory-only-theta-per-dim", theta=[4.0, 11.0]),
    Case("memory-only-euler", kwargs=dict(discretizer="euler")),
    Case("memory-only-bilinear", kwargs=dict(discretizer="bilinear", use_bias=True)),
    Case("linear-seq", hidden="linear", kwargs=dict(input_to_hidden=True)),
    Case("linear-final", hidden="linear", kwargs=dict(return_sequences=False, input_to_hidden=True)),
    Case("linear-final-lengths-state", hidden="linear", kwargs=dict(return_sequences=False),
         lengths=True, initial_state=True),
    Case("rnn", hidden="rnn", kwargs=dict(input_to_hidden=True)),
    Case("rnn-last", hidden="rnn", kwargs=dict(return_sequences=False)),
    Case("gru-theta-per-dim", hidden="gru", theta=[3.0, 9.0]),
    Case("lstm-bias", hidden="lstm", kwargs=dict(use_bias=True)),
    Case("lstm-lengths-state", hidden="lstm", lengths=True, initial_state=True),
    Case("lstm-state-input", hidden="lstm", initial_state=True, kwargs=dict(input_to_hidden=True)),  # torch.lstm
    Case("custom-cell", hidden="custom", kwargs=dict(input_to_hidden=True)),
    Case("time-major", hidden="rnn", kwargs=dict(batch_first=False)),
    Case("time-major-final", hidden="linear", kwargs=dict(batch_first=False, return_sequences=False)),
    Case("memory-only-lengths-state", lengths=True, initial_state=True, theta=[5.0, 2.5]),
    # Configurations where the memory depends on its past outputs: only the loop is valid, and it is
    # held against streaming with step() below.
    Case("rnn-hidden-to-memory", hidden="rnn", kwargs=dict(hidden_to_memory=True, input_to_hidden=True)),
    Case("lstm-memory-to-memory", hidden="lstm", kwargs=dict(memory_to_memory=True, hidden_to_memory=True)),
    Case("linear-hidden-to-memory", hidden="linear", kwargs=dict(hidden_to_memory=True)),
    Case("memory-to-memory-only", kwargs=dict(memory_to_memory=True, use_bias=True)),
    Case("rnn-both-to-memory-per-dim-state", hidden="rnn", theta=[3.0, 8.0], initial_state=True,
         kwargs=dict(hidden_to_memory=True, memory_to_memory=True, use_bias=True)),
    Case("rnn-hidden-to-memory-time-major-last", hidden="rnn",
         kwargs=dict(hidden_to_memory=True, batch_first=False, return_sequences=False, discretizer="euler")),
]


def make_inputs(case: Case, lmu: contime.LMU):
    x = torch.randn(BATCH, TIME, INPUT, dtype=torch.float64)
    if not lmu.batch_first:
        x = x.transpose(0, 1).contiguous()
    x.requires_grad_(True)
    lengths = torch.tensor([TIME, 5, 1]) if case.lengths else None
    state = None
    if case.initial_state:
        memory = torch.randn(BATCH, lmu.memory_d * lmu.order, dtype=torch.float64, requires_grad=True)
        hidden = None
        if case.hidden == "lstm":
            hidden = tuple(torch.randn(BATCH, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
        elif case.hidden != "none":
            hidden = torch.randn(BATCH, 5, dtype=torch.float64, requires_grad=True)
        state = contime.LMUState(memory, hidden)
    return x, state, lengths


def flat_state(state):
    hidden = state.hidden
    parts = [state.memory] + ([] if hidden is None else list(hidden) if isinstance(hidden, tuple) else [hidden])
    return parts


def run_mode(lmu, mode, x, state, lengths):
    lmu.mode = mode
    lmu.zero_grad()
    y, final = lmu(x, state, lengths)
    # A loss touching every output and every piece of the final state, with distinct weights.
    loss = sum((t * torch.linspace(0.5, 1.5, t.numel(), dtype=t.dtype).reshape(t.shape)).sum()
               for t in [y] + flat_state(final))
    leaves = [x] + [p for p in lmu.parameters() if p.requires_grad]
    if state is not None:
        leaves += [t for t in flat_state(state)]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return y, flat_state(final), grads


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_mode_equals_recurrent(case):
    lmu = case.build()
    x, state, lengths = make_inputs(case, lmu)
    ref_y, ref_state, ref_grads = run_mode(lmu, "recurrent", x, state, lengths)
    theta_index = 1 + [n for n, p in lmu.named_parameters() if p.requires_grad].index("theta")
    assert ref_grads[theta_index].abs().max() > 0  # d(loss)/d(theta) is really exercised
    others = [m for m in lmu.valid_modes() if m != "recurrent"]
    for mode in others:
        y, final, grads = run_mode(lmu, mode, x, state, lengths)
        assert y.shape == ref_y.shape, mode
        torch.testing.assert_close(y, ref_y, atol=ATOL, rtol=0, msg=f"{mode}: output")
        for a, b in zip(final, ref_state):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"{mode}: final state")
        for a, b in zip(grads, ref_grads):
            assert (a is None) == (b is None), mode
            if a is not None:
                torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"{mode}: gradient")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_streaming_step_equals_forward(case):
    """step() one sample at a time reproduces forward() (in its default mode) and its final state."""
    if case.lengths:
        pytest.skip("step() streams one sample for every sequence; padding does not apply")
    lmu = case.build()
    x, state, _ = make_inputs(case, lmu)
    x = x.detach()
    y_full, final = lmu(x, state)
    xs = x if lmu.batch_first else x.transpose(0, 1)
    outputs = []
    for t in range(TIME):
        y_t, state = lmu.step(xs[:, t], state)
        outputs.append(y_t)
    y_steps = torch.stack(outputs, dim=1)
    expected = y_full if not lmu.return_sequences else (y_full if lmu.batch_first else y_full.transpose(0, 1))
    got = y_steps if lmu.return_sequences else y_steps[:, -1]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    for a, b in zip(flat_state(state), flat_state(final)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_memory_layout_matches_reference_loop():
    """Without a hidden cell, y is the memory, flattened with index dim*order + k."""
    from contime.ops.lmu_memory import linear_memory_naive

    lmu = contime.LMU(INPUT, 3, 5, [4.0, 6.0, 8.0], mode="recurrent").double()
    x = torch.randn(BATCH, TIME, INPUT, dtype=torch.float64)
    y, _ = lmu(x)
    A_bar, B_bar = lmu.discretized(torch.float64)
    m = linear_memory_naive(x @ lmu.input_kernel, A_bar, B_bar)  # (batch, time, dim, order)
    torch.testing.assert_close(y, m.reshape(BATCH, TIME, 15), atol=1e-12, rtol=0)
    assert torch.allclose(y[..., 1 * 5 + 2], m[..., 1, 2])


def test_theta_per_dimension_equals_separate_memories():
    lmu = contime.LMU(2, 2, 4, [3.0, 12.0], input_kernel=False).double()
    x = torch.randn(BATCH, TIME, 2, dtype=torch.float64)
    y, _ = lmu(x)
    for dim, theta in enumerate([3.0, 12.0]):
        single = contime.LMU(1, 1, 4, theta, input_kernel=False).double()
        y_single, _ = single(x[..., dim:dim + 1])
        torch.testing.assert_close(y[..., dim * 4:(dim + 1) * 4], y_single, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["recurrent", "fft", "conv"])
def test_continuing_with_the_state_equals_one_call(mode):
    lmu = contime.LMU(INPUT, 2, 6, 7.0, nn.GRUCell(12, 4), mode=mode).double()
    x = torch.randn(BATCH, TIME, INPUT, dtype=torch.float64)
    y_full, s_full = lmu(x)
    y_a, s_a = lmu(x[:, :9])
    y_b, s_b = lmu(x[:, 9:], s_a)
    torch.testing.assert_close(torch.cat([y_a, y_b], 1), y_full, atol=1e-10, rtol=0)
    torch.testing.assert_close(s_b.memory, s_full.memory, atol=1e-10, rtol=0)
    torch.testing.assert_close(s_b.hidden, s_full.hidden, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["recurrent", "fft", "conv", "final"])
def test_padding_never_reaches_state_or_output(mode):
    """A padded batch gives, for each sequence, what that sequence alone gives; the padding is ignored."""
    lmu = contime.LMU(INPUT, 2, 6, 7.0, nn.Linear(12, 4), mode=mode, return_sequences=(mode != "final")).double()
    lengths = torch.tensor([TIME, 6, 1])
    x = torch.randn(BATCH, TIME, INPUT, dtype=torch.float64)
    garbage = x.clone()
    for b, n in enumerate(lengths.tolist()):
        garbage[b, n:] = 1e6  # padding values must not leak anywhere
    y, state = lmu(garbage, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        y_b, state_b = lmu(x[b:b + 1, :n])
        if lmu.return_sequences:
            torch.testing.assert_close(y[b:b + 1, :n], y_b, atol=1e-10, rtol=0)
            assert torch.all(y[b, n:] == 0)
        else:
            torch.testing.assert_close(y[b:b + 1], y_b, atol=1e-10, rtol=0)
        torch.testing.assert_close(state.memory[b:b + 1], state_b.memory, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["recurrent", "fft", "final"])
def test_dropout_masks_are_shared_between_modes(mode):
    """In training, the same seed gives the same dropout masks and so the same result in every mode."""
    lmu = contime.LMU(INPUT, 2, 6, 7.0, nn.Linear(12, 4), dropout=0.5, return_sequences=False).double().train()
    x = torch.randn(BATCH, TIME, INPUT, dtype=torch.float64)
    lmu.mode = "recurrent"
    torch.manual_seed(5)
    ref, _ = lmu(x)
    lmu.mode = mode
    torch.manual_seed(5)
    got, _ = lmu(x)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    torch.manual_seed(6)
    other, _ = lmu(x)
    assert not torch.allclose(other, ref)  # a different mask really changes the output
    lmu.eval()
    a, _ = lmu(x)
    b, _ = lmu(x)
    assert torch.equal(a, b)  # no dropout at evaluation


@pytest.mark.parametrize("mode", ["recurrent", "fft", "conv", "final"])
def test_gradcheck_theta(mode):
    lmu = contime.LMU(1, 2, 4, [3.0, 5.0], nn.Linear(8, 3), trainable_theta=True, mode=mode,
                      conv_tol=1e-16, return_sequences=(mode != "final")).double()
    x = torch.randn(2, 9, 1, dtype=torch.float64)
    params = {n: p.detach() for n, p in lmu.named_parameters()}

    def output_of_theta(theta):
        y, state = torch.func.functional_call(lmu, {**params, "theta": theta}, (x,))
        return y, state.memory

    theta = lmu.theta.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(output_of_theta, (theta,), eps=1e-6, atol=1e-7)


def test_hidden_to_memory_rnn_matches_handwritten_loop():
    """The full recurrence, written out by hand from the paper's equations."""
    cell = nn.RNNCell(2 * 6 + INPUT, 5)
    lmu = contime.LMU(INPUT, 2, 6, 7.0, cell, hidden_to_memory=True, memory_to_memory=True,
                      input_to_hidden=True, use_bias=True).double()
    with torch.no_grad():
        lmu.bias.normal_()
    x = torch.randn(BATCH, TIME, INPUT, dtype=torch.float64)
    y, state = lmu(x)
    A_bar, B_bar = contime.discretize(6, torch.tensor([7.0], dtype=torch.float64))
    m = torch.zeros(BATCH, 2, 6, dtype=torch.float64)
    h = torch.zeros(BATCH, 5, dtype=torch.float64)
    for t in range(TIME):
        u = x[:, t] @ lmu.input_kernel + h @ lmu.hidden_kernel + m.reshape(BATCH, -1) @ lmu.memory_kernel + lmu.bias
        m = torch.einsum("nk,bdk->bdn", A_bar[0], m) + u[..., None] * B_bar[0]
        h = torch.tanh(torch.cat([m.reshape(BATCH, -1), x[:, t]], -1) @ cell.weight_ih.T + cell.bias_ih
                       + h @ cell.weight_hh.T + cell.bias_hh)
        torch.testing.assert_close(y[:, t], h, atol=1e-12, rtol=0)
    torch.testing.assert_close(state.memory, m.reshape(BATCH, -1), atol=1e-12, rtol=0)
    torch.testing.assert_close(hidden_of(state.hidden), h, atol=1e-12, rtol=0)


def test_auto_picks_the_fastest_valid_mode():
    assert contime.LMU(1, 1, 4, 5.0).resolve_mode() == "fft"
    assert contime.LMU(1, 1, 4, 5.0, return_sequences=False).resolve_mode() == "final"
    with_rnn = contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3), return_sequences=False)
    assert with_rnn.resolve_mode("cuda") == ("fused" if triton_available() else "fft")
    assert with_rnn.resolve_mode("cpu") == "fft"  # measured faster than the loop on the CPU for an RNNCell
    # GRU cells: "fft" up to CPU_FFT_MAX_GATES gate units, where it was measured faster on the CPU; LSTM cells
    # always (torch's own LSTM).
    small_gru, large_gru = nn.GRUCell(5, 128), nn.GRUCell(5, 212)
    assert contime.LMU(1, 1, 4, 5.0, small_gru, input_to_hidden=True).resolve_mode("cpu") == "fft"
    assert contime.LMU(1, 1, 4, 5.0, large_gru, input_to_hidden=True).resolve_mode("cpu") == "recurrent"
    assert contime.LMU(1, 1, 4, 5.0, large_gru, input_to_hidden=True).resolve_mode("cuda") == "fft"
    assert contime.LMU(1, 1, 4, 5.0, nn.LSTMCell(5, 212), input_to_hidden=True).resolve_mode("cpu") == "fft"
    # Padded calls: torch's LSTM takes no lengths, so a large LSTM cell is held to the GRU cells' limit.
    large_lstm = contime.LMU(1, 1, 4, 5.0, nn.LSTMCell(5, 212), input_to_hidden=True)
    small_lstm = contime.LMU(1, 1, 4, 5.0, nn.LSTMCell(5, 64), input_to_hidden=True)
    assert large_lstm.resolve_mode("cpu", padded=True) == "recurrent"
    assert small_lstm.resolve_mode("cpu", padded=True) == "fft"
    assert large_lstm.resolve_mode("cuda", padded=True) == "fft"
    # The fused cell: one autograd node; on this CPU its torch twin ran 2.6x faster than the loop (Mackey-Glass).
    assert contime.LMU(1, 1, 4, 5.0, nn.RNNCell(4, 3), hidden_to_memory=True).resolve_mode() == "fused"
    assert contime.LMU(1, 1, 4, 5.0, nn.GRUCell(4, 3), hidden_to_memory=True).resolve_mode() == "recurrent"


def test_fft_mode_folds_a_leading_linear_layer(monkeypatch):
    """With a feedforward hidden part that starts with nn.Linear, "fft" never forms the memory of every step:
    the layer's weight goes into the convolution. The fold is observable: no call builds that memory."""
    import contime.lmu as lmu_module
    calls = []
    monkeypatch.setattr(lmu_module, "memory_all_steps", lambda *a, **k: calls.append(1))
    for cell in (nn.Linear(2 * 6 + INPUT, 4), nn.Sequential(nn.Linear(2 * 6 + INPUT, 4), nn.Tanh(), nn.Linear(4, 3))):
        lmu = contime.LMU(INPUT, 2, 6, 7.0, cell, input_to_hidden=True, trainable_theta=True).double()
        x = torch.randn(BATCH, TIME, INPUT, dtype=torch.float64, requires_grad=True)
        ref_y, ref_state, ref_grads = run_mode(lmu, "recurrent", x, None, None)
        y, final, grads = run_mode(lmu, "fft", x, None, None)
        torch.testing.assert_close(y, ref_y, atol=ATOL, rtol=0)
        for a, b in zip(final, ref_state):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=0)
    assert not calls


def test_auto_keeps_large_feedback_layers_in_the_loop_on_the_cpu():
    """The fused torch twin beat the loop on the CPU only for small layers (measured; see resolve_mode)."""
    small = contime.LMU(1, 1, 64, 5.0, nn.RNNCell(64, 64), hidden_to_memory=True)
    large = contime.LMU(1, 1, 256, 5.0, nn.RNNCell(256, 212), hidden_to_memory=True)
    assert small.resolve_mode("cpu") == "fused" and large.resolve_mode("cpu") == "recurrent"
    assert large.resolve_mode("cuda") == ("fused" if triton_available() else "recurrent")
