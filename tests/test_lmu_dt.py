"""The time-aware LMU, ``lmu(x, dt=...)``: irregular steps against the continuous-time solution, the uniform LMU
when every step is the same, a hand-written per-sample loop, gradients, streaming, padding and bad input.

Everything in float64. Convention (contime.lmu): sample i's input is held over the interval of length dt_i that
ends at it, m_i = A_bar(dt_i) m_{i-1} + B_bar(dt_i) u_i.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.integrate
import torch
from torch import nn

import contime
from contime.hidden import hidden_of
from contime.legendre import discretize, discretize_steps, legt_matrices
from contime.ops.lmu_memory import linear_memory_varying, linear_memory_varying_naive

F64 = torch.float64
BATCH, TIME, INPUT = 3, 13, 2


def random_dt(batch: int, time: int, low: float = 0.1, high: float = 2.0, repeats: bool = True) -> torch.Tensor:
    """Irregular steps in [low, high]; with ``repeats``, a third of them drawn from a few common values, so
    that the distinct-value path (several samples sharing one discretization) is exercised."""
    dt = low + (high - low) * torch.rand(batch, time, dtype=F64)
    if repeats:
        common = torch.tensor([0.5, 1.0, 1.5], dtype=F64)
        pick = torch.rand(batch, time) < 1 / 3
        dt = torch.where(pick, common[torch.randint(0, 3, (batch, time))], dt)
    return dt


# ----------------------------------------------------------------------------- the continuous-time solution
def ode_memory(order: int, theta: float, times: np.ndarray, u: np.ndarray, m0: np.ndarray) -> np.ndarray:
    """theta dm/dt = A m + B u integrated by scipy, u_i held over (t_{i-1}, t_i], t_{-1} = 0: m at each t_i."""
    A, B = (v.numpy() for v in legt_matrices(order))
    m, start, out = m0.copy(), 0.0, []
    for t_i, u_i in zip(times, u):
        sol = scipy.integrate.solve_ivp(lambda s, y, u_i=u_i: (A @ y + B * u_i) / theta, (start, t_i), m,
                                        method="DOP853", rtol=1e-10, atol=1e-12)
        assert sol.success
        m, start = sol.y[:, -1], t_i
        out.append(m)
    return np.stack(out)


# Measured max relative errors (max |lmu - ode| / max |ode|): 1.5e-12 to 7.5e-12 over the cases below, the
# integrator's own accuracy; the bound leaves two orders of margin.
ODE_RTOL = 1e-9


@pytest.mark.parametrize("order, theta", [(6, 3.0), (8, 2.0), (12, 10.0)])
def test_memory_matches_continuous_time_solution(order, theta):
    """A memory-only LMU (memory_d 1, no input kernel) on an irregular grid, from a nonzero initial state."""
    time = 40
    dt = 0.05 + 1.4 * torch.rand(2, time, dtype=F64)  # from 0.05 (much finer than theta) to 1.45
    x = torch.randn(2, time, 1, dtype=F64)
    m0 = torch.randn(2, order, dtype=F64)
    lmu = contime.LMU(1, 1, order, theta, input_kernel=False).double()
    y, state = lmu(x, contime.LMUState(m0, None), dt=dt)
    for b in range(2):
        ref = ode_memory(order, theta, dt[b].cumsum(0).numpy(), x[b, :, 0].numpy(), m0[b].numpy())
        error = np.abs(y[b].numpy() - ref).max() / np.abs(ref).max()
        assert error < ODE_RTOL, error
    torch.testing.assert_close(state.memory, y[:, -1], atol=0, rtol=0)


def test_per_dimension_theta_matches_continuous_time_solution():
    thetas, order, time = [2.0, 7.0], 6, 30
    dt = random_dt(2, time, 0.05, 1.5)
    x = torch.randn(2, time, 2, dtype=F64)
    lmu = contime.LMU(2, 2, order, thetas, input_kernel=False).double()
    y, _ = lmu(x, dt=dt)
    for b in range(2):
        for dim, theta in enumerate(thetas):
            ref = ode_memory(order, theta, dt[b].cumsum(0).numpy(), x[b, :, dim].numpy(), np.zeros(order))
            got = y[b, :, dim * order:(dim + 1) * order].numpy()
            assert np.abs(got - ref).max() / np.abs(ref).max() < ODE_RTOL


# ----------------------------------------------------------------------------- constant steps: the uniform LMU
def rnn_cell(memory: int, extra: int = 0):
    return nn.RNNCell(memory + extra, 5)


CONFIGS = {
    "memory-only": dict(),
    "memory-only-final": dict(return_sequences=False),
    "memory-only-theta-per-dim": dict(theta=[4.0, 11.0]),
    "memory-only-euler": dict(discretizer="euler"),
    "memory-only-bilinear": dict(discretizer="bilinear", use_bias=True),
    "linear-final": dict(hidden="linear", return_sequences=False, input_to_hidden=True),
    "rnn": dict(hidden="rnn", input_to_hidden=True),
    "lstm-lengths-state": dict(hidden="lstm", lengths=True, initial_state=True),
    "time-major": dict(hidden="rnn", batch_first=False),
    "rnn-hidden-to-memory": dict(hidden="rnn", hidden_to_memory=True, memory_to_memory=True, input_to_hidden=True),
    "memory-to-memory-lengths": dict(memory_to_memory=True, lengths=True, theta=[3.0, 6.0]),
}


def build(config: dict, trainable_theta: bool = True):
    config = dict(config)
    hidden = config.pop("hidden", "none")
    lengths = config.pop("lengths", False)
    initial_state = config.pop("initial_state", False)
    theta = config.pop("theta", 7.0)
    memory_d, order = 2, 5
    hidden_in = memory_d * order + (INPUT if config.get("input_to_hidden") else 0)
    cell = {"none": None, "linear": nn.Sequential(nn.Linear(hidden_in, 5), nn.Tanh()),
            "rnn": nn.RNNCell(hidden_in, 5), "lstm": nn.LSTMCell(hidden_in, 5)}[hidden]
    lmu = contime.LMU(INPUT, memory_d, order, theta, cell, trainable_theta=trainable_theta, conv_tol=1e-14,
                      **config).double()
    x = torch.randn(BATCH, TIME, INPUT, dtype=F64)
    if not lmu.batch_first:
        x = x.transpose(0, 1).contiguous()
    state = None
    if initial_state:
        hidden_state = None
        if hidden == "lstm":
            hidden_state = (torch.randn(BATCH, 5, dtype=F64), torch.randn(BATCH, 5, dtype=F64))
        elif hidden != "none":
            hidden_state = torch.randn(BATCH, 5, dtype=F64)
        state = contime.LMUState(torch.randn(BATCH, memory_d * order, dtype=F64), hidden_state)
    return lmu, x, state, (torch.tensor([TIME, 6, 1]) if lengths else None)


def dt_like(lmu, value) -> torch.Tensor:
    shape = (BATCH, TIME) if lmu.batch_first else (TIME, BATCH)
    return torch.full(shape, value, dtype=F64)


def state_parts(state):
    hidden = state.hidden
    return [state.memory] + ([] if hidden is None else list(hidden) if isinstance(hidden, tuple) else [hidden])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unit_steps_are_bit_identical_to_no_dt(name):
    """dt == 1 everywhere takes the uniform path unchanged: the same bits in every valid mode."""
    lmu, x, state, lengths = build(CONFIGS[name])
    for mode in lmu.valid_modes():
        lmu.mode = mode
        y_ref, s_ref = lmu(x, state, lengths)
        y, s = lmu(x, state, lengths, dt=dt_like(lmu, 1.0))
        assert torch.equal(y, y_ref), mode
        for a, b in zip(state_parts(s), state_parts(s_ref)):
            assert torch.equal(a, b), mode


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("c", [0.5, 2.5])
def test_constant_steps_equal_theta_over_c(name, c):
    """dt == c everywhere is the uniform LMU with theta / c, bit for bit, in every valid mode."""
    lmu, x, state, lengths = build(CONFIGS[name])
    scaled = copy.deepcopy(lmu)
    with torch.no_grad():
        scaled.theta.copy_(lmu.theta / c)
    for mode in lmu.valid_modes():
        lmu.mode = scaled.mode = mode
        y_ref, s_ref = scaled(x, state, lengths)
        y, s = lmu(x, state, lengths, dt=dt_like(lmu, c))
        assert torch.equal(y, y_ref), mode
        for a, b in zip(state_parts(s), state_parts(s_ref)):
            assert torch.equal(a, b), mode


def test_constant_steps_reuse_no_stale_system():
    """The cached discretization is keyed by the step: successive constants c give their own theta / c."""
    lmu, x, _, _ = build(CONFIGS["memory-only"], trainable_theta=False)
    for c in [2.0, 3.0, 2.0, 1.0]:
        scaled = copy.deepcopy(lmu)
        with torch.no_grad():
            scaled.theta.copy_(lmu.theta / c)
        assert torch.equal(lmu(x, dt=dt_like(lmu, c))[0], scaled(x)[0])


@pytest.mark.parametrize("name", ["memory-only", "rnn", "rnn-hidden-to-memory", "memory-only-theta-per-dim",
                                  "lstm-lengths-state", "memory-to-memory-lengths", "time-major"])
def test_irregular_path_with_constant_steps_equals_uniform(name):
    """The per-sample path itself (forced by a dt that requires grad) agrees with the uniform LMU."""
    lmu, x, state, lengths = build(CONFIGS[name])
    y_ref, s_ref = lmu(x, state, lengths)
    dt = dt_like(lmu, 1.0).requires_grad_(True)
    y, s = lmu(x, state, lengths, dt=dt)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    for a, b in zip(state_parts(s), state_parts(s_ref)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- against a hand-written loop
def handwritten(lmu: contime.LMU, x: torch.Tensor, dt: torch.Tensor):
    """Every sample on its own: its own matrix exponential, then the cell equations of the LMU paper."""
    cell = lmu.hidden_cell
    n, dims = lmu.order, lmu.memory_d
    A, B = legt_matrices(n)
    aug = torch.zeros(n + 1, n + 1, dtype=F64)
    aug[:n, :n], aug[:n, n] = A, B
    theta = lmu.theta.expand(dims)
    outputs, memories, hiddens = [], [], []
    for b in range(x.shape[0]):
        m = torch.zeros(dims, n, dtype=F64)
        h = torch.zeros(cell.hidden_size, dtype=F64)
        ys = []
        for t in range(x.shape[1]):
            # One matrix_exp per sample, over the 2 memory dimensions (a batch of two: never a batch of one,
            # see contime.legendre._matrix_exp).
            expm = torch.linalg.matrix_exp(aug * (dt[b, t] / theta)[:, None, None])
            A_bar, B_bar = expm[:, :n, :n], expm[:, :n, n]
            u = x[b, t] @ lmu.input_kernel + h @ lmu.hidden_kernel + m.reshape(-1) @ lmu.memory_kernel + lmu.bias
            m = torch.einsum("dij,dj->di", A_bar, m) + B_bar * u[:, None]
            h = torch.tanh(cell.weight_ih @ torch.cat([m.reshape(-1), x[b, t]]) + cell.bias_ih
                           + cell.weight_hh @ h + cell.bias_hh)
            ys.append(h)
        outputs.append(torch.stack(ys))
        memories.append(m.reshape(-1))
        hiddens.append(h)
    return torch.stack(outputs), torch.stack(memories), torch.stack(hiddens)


def test_full_cell_equals_per_sample_loop_with_gradients():
    """hidden_to_memory + memory_to_memory + RNNCell, per-dimension trainable theta: outputs, final state and
    the gradients to x, every weight and theta equal a plain loop with one matrix exponential per sample."""
    dims, order = 2, 5
    lmu = contime.LMU(INPUT, dims, order, [3.0, 8.0], nn.RNNCell(dims * order + INPUT, 4), hidden_to_memory=True,
                      memory_to_memory=True, input_to_hidden=True, use_bias=True, trainable_theta=True).double()
    with torch.no_grad():
        lmu.bias.normal_()
    x = torch.randn(BATCH, TIME, INPUT, dtype=F64, requires_grad=True)
    dt = random_dt(BATCH, TIME)
    leaves = [x] + list(lmu.parameters())

    def loss_of(y, memory, hidden):
        return sum((t * torch.linspace(0.5, 1.5, t.numel(), dtype=F64).reshape(t.shape)).sum()
                   for t in (y, memory, hidden))

    y, state = lmu(x, dt=dt)
    grads = torch.autograd.grad(loss_of(y, state.memory, state.hidden), leaves)
    y_ref, m_ref, h_ref = handwritten(lmu, x, dt)
    grads_ref = torch.autograd.grad(loss_of(y_ref, m_ref, h_ref), leaves)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(state.memory, m_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(hidden_of(state.hidden), h_ref, atol=1e-12, rtol=0)
    names = ["x"] + [n for n, _ in lmu.named_parameters()]
    assert grads[names.index("theta")].abs().min() > 0  # theta's gradient is really exercised
    for name, a, b in zip(names, grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=f"gradient to {name}")


@pytest.mark.parametrize("theta", [6.0, [3.0, 9.0]])
def test_linear_memory_varying_equals_naive(theta):
    """The loop of the linear path against the reference, with an initial state and a gradient to A, B, u."""
    order, dims = 4, 2
    theta = torch.tensor(theta, dtype=F64).reshape(-1).requires_grad_(True)
    dt = random_dt(BATCH, TIME)
    A_bar, B_bar, index = discretize_steps(order, theta, dt)
    u = torch.randn(BATCH, TIME, dims, dtype=F64, requires_grad=True)
    m0 = torch.randn(BATCH, dims, order, dtype=F64)
    fast = linear_memory_varying(u, A_bar, B_bar, index, m0)
    ref = linear_memory_varying_naive(u, A_bar, B_bar, index, m0)
    torch.testing.assert_close(fast, ref, atol=1e-13, rtol=0)
    weights = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((fast * weights).sum(), (u, theta), retain_graph=True),
                    torch.autograd.grad((ref * weights).sum(), (u, theta))):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "euler", "bilinear"])
def test_discretize_steps_equals_discretize(method):
    """Each distinct step gets what discretize gives for that dt; inverse maps every entry to it."""
    theta = torch.tensor([2.0, 9.0], dtype=F64)
    dt = torch.tensor([[0.5, 1.0, 0.5], [2.0, 1.0, 0.25]], dtype=F64)
    A_bar, B_bar, inverse = discretize_steps(6, theta, dt, method)
    assert A_bar.shape == (4, 2, 6, 6) and B_bar.shape == (4, 2, 6) and inverse.shape == dt.shape
    for value, j in zip(dt.reshape(-1).tolist(), inverse.reshape(-1).tolist()):
        a, b = discretize(6, theta, value, method)
        torch.testing.assert_close(A_bar[j], a, atol=1e-14, rtol=0)
        torch.testing.assert_close(B_bar[j], b, atol=1e-14, rtol=0)


@pytest.mark.parametrize("method", ["zoh", "euler", "bilinear"])
def test_discretize_steps_gradcheck(method):
    theta = torch.tensor([2.0, 5.0], dtype=F64, requires_grad=True)
    dt = (0.3 + torch.rand(2, 3, dtype=F64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda th, d: discretize_steps(4, th, d, method)[:2], (theta, dt))
    assert torch.autograd.gradcheck(lambda th: discretize_steps(4, th, dt.detach(), method)[:2], (theta,))


@pytest.mark.parametrize("hidden_to_memory", [False, True])
def test_gradcheck_theta_and_dt(hidden_to_memory):
    """Gradients to theta (per dimension) and to every step length, through the whole layer."""
    cell = nn.RNNCell(2 * 3, 3)
    lmu = contime.LMU(1, 2, 3, [3.0, 5.0], cell, hidden_to_memory=hidden_to_memory, trainable_theta=True).double()
    x = torch.randn(2, 6, 1, dtype=F64)
    params = {n: p.detach() for n, p in lmu.named_parameters()}

    def outputs(theta, dt):
        y, state = torch.func.functional_call(lmu, {**params, "theta": theta}, (x,), {"dt": dt})
        return y, state.memory

    theta = lmu.theta.detach().clone().requires_grad_(True)
    dt = random_dt(2, 6, 0.3, 1.5).requires_grad_(True)
    assert torch.autograd.gradcheck(outputs, (theta, dt), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda th: outputs(th, dt.detach()), (theta,), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- streaming, padding, layout
@pytest.mark.parametrize("name", ["memory-only-theta-per-dim", "rnn", "rnn-hidden-to-memory", "memory-only-euler"])
def test_step_with_dt_equals_forward(name):
    lmu, x, _, _ = build(CONFIGS[name])
    dt = random_dt(BATCH, TIME)
    dt[:, 3] = 2.0  # one step the same for the whole batch (step() takes the uniform system there)
    dt[:, 5] = 1.0  # and one of unit length
    y_full, final = lmu(x, dt=dt)
    state, outputs = None, []
    for t in range(TIME):
        y_t, state = lmu.step(x[:, t], state, dt=dt[:, t])
        outputs.append(y_t)
    torch.testing.assert_close(torch.stack(outputs, 1), y_full, atol=1e-12, rtol=0)
    for a, b in zip(state_parts(state), state_parts(final)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_step_with_unit_dt_is_bit_identical():
    lmu, x, _, _ = build(CONFIGS["rnn-hidden-to-memory"])
    s_ref = s = None
    for t in range(4):
        y_ref, s_ref = lmu.step(x[:, t], s_ref)
        y, s = lmu.step(x[:, t], s, dt=torch.ones(BATCH, dtype=F64))
        assert torch.equal(y, y_ref)


@pytest.mark.parametrize("name, return_sequences", [("memory-only", True), ("rnn-hidden-to-memory", True),
                                                    ("lstm-lengths-state", False), ("linear-final", False)])
def test_padding_with_dt(name, return_sequences):
    """A padded batch with irregular steps gives, per sequence, what that sequence alone gives; dt past each
    length is ignored, even when it is not a valid step length."""
    config = {k: v for k, v in CONFIGS[name].items() if k not in ("lengths", "initial_state")}
    config["return_sequences"] = return_sequences
    lmu, x, _, _ = build(config)
    lengths = torch.tensor([TIME, 6, 1])
    dt = random_dt(BATCH, TIME)
    garbage_x, garbage_dt = x.clone(), dt.clone()
    for b, n in enumerate(lengths.tolist()):
        garbage_x[b, n:] = 1e6
        garbage_dt[b, n:] = [float("nan"), 0.0, -1.0][b % 3]
    y, state = lmu(garbage_x, lengths=lengths, dt=garbage_dt)
    for b, n in enumerate(lengths.tolist()):
        y_b, state_b = lmu(x[b:b + 1, :n], dt=dt[b:b + 1, :n])
        if return_sequences:
            torch.testing.assert_close(y[b:b + 1, :n], y_b, atol=1e-12, rtol=0)
            assert torch.all(y[b, n:] == 0)
        else:
            torch.testing.assert_close(y[b:b + 1], y_b, atol=1e-12, rtol=0)
        for a, c in zip(state_parts(state), state_parts(state_b)):
            torch.testing.assert_close(a[b:b + 1], c, atol=1e-12, rtol=0)


def test_irregular_steps_run_the_same_in_any_mode():
    """A parallel mode cannot take irregular steps: whatever ``mode`` says, the per-sample loop runs."""
    lmu, x, _, _ = build(CONFIGS["memory-only-final"])
    dt = random_dt(BATCH, TIME)
    results = []
    for mode in lmu.valid_modes():
        lmu.mode = mode
        results.append(lmu(x, dt=dt)[0])
    assert all(torch.equal(r, results[0]) for r in results[1:])


def test_time_major_dt():
    lmu, x, _, _ = build(CONFIGS["rnn"])
    major = copy.deepcopy(lmu)
    major.batch_first = False
    dt = random_dt(BATCH, TIME)
    y, s = lmu(x, dt=dt)
    y_major, s_major = major(x.transpose(0, 1), dt=dt.t())
    torch.testing.assert_close(y_major.transpose(0, 1), y, atol=1e-14, rtol=0)
    torch.testing.assert_close(s_major.memory, s.memory, atol=1e-14, rtol=0)


def test_continuing_with_the_state_and_dt():
    lmu, x, _, _ = build(CONFIGS["rnn-hidden-to-memory"])
    dt = random_dt(BATCH, TIME)
    y, s = lmu(x, dt=dt)
    y_a, s_a = lmu(x[:, :5], dt=dt[:, :5])
    y_b, s_b = lmu(x[:, 5:], s_a, dt=dt[:, 5:])
    torch.testing.assert_close(torch.cat([y_a, y_b], 1), y, atol=1e-12, rtol=0)
    torch.testing.assert_close(s_b.memory, s.memory, atol=1e-12, rtol=0)


def test_float32_follows_float64():
    lmu, x, _, _ = build(CONFIGS["rnn"])
    dt = random_dt(BATCH, TIME)
    y64, _ = lmu(x, dt=dt)
    y32, _ = lmu.float()(x.float(), dt=dt.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("dt, error, match", [
    (torch.ones(2, 6), ValueError, r"dt must have shape \(batch, time\)=\(2, 5\)"),
    (torch.ones(2), ValueError, r"dt must have shape \(batch, time\)"),
    (torch.ones(2, 5, 1), ValueError, r"dt must have shape \(batch, time\)"),
    (torch.ones(1, 5), ValueError, r"dt must have shape \(batch, time\)"),
    (torch.ones(5, 2), ValueError, r"dt must have shape \(batch, time\)"),
    (torch.tensor([[1.0, 1, 1, float("nan"), 1], [1.0] * 5]), ValueError, "dt must be finite and > 0"),
    (torch.tensor([[1.0, 1, 1, float("inf"), 1], [1.0] * 5]), ValueError, "dt must be finite and > 0"),
    (torch.tensor([[1.0, 1, 1, 0.0, 1], [1.0] * 5]), ValueError, "dt must be finite and > 0"),
    (torch.tensor([[1.0, 1, 1, -0.5, 1], [1.0] * 5]), ValueError, "dt must be finite and > 0"),
    (torch.ones(2, 5, dtype=torch.int64), TypeError, "dt must have a floating-point dtype"),
    ([[1.0] * 5] * 2, TypeError, "dt must be a torch.Tensor"),
], ids=["time", "1d", "3d", "batch", "transposed", "nan", "inf", "zero", "negative", "int", "list"])
def test_bad_dt(dt, error, match):
    lmu = contime.LMU(2, 1, 4, 5.0)
    with pytest.raises(error, match=match):
        lmu(torch.randn(2, 5, 2), dt=dt)


def test_bad_dt_time_major_and_step():
    lmu = contime.LMU(2, 1, 4, 5.0, batch_first=False)
    with pytest.raises(ValueError, match=r"dt must have shape \(time, batch\)=\(5, 2\)"):
        lmu(torch.randn(5, 2, 2), dt=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"dt must have shape \(batch,\)=\(2,\)"):
        lmu.step(torch.randn(2, 2), dt=torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"dt must have shape \(batch,\)=\(2,\)"):
        lmu.step(torch.randn(2, 2), dt=torch.tensor(1.0))
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        lmu.step(torch.randn(2, 2), dt=torch.tensor([1.0, 0.0]))
    with pytest.raises(TypeError, match="dt must have a floating-point dtype"):
        lmu.step(torch.randn(2, 2), dt=torch.ones(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        discretize_steps(4, 5.0, torch.tensor([1.0, -1.0]))
