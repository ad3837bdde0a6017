"""The GRU recurrence (contime.ops.gru) against nn.GRUCell stepped by hand, on outputs and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contime.ops.gru import gru_recurrence


def reference(projected, weight_hh, bias_hh, h0, valid):
    """nn.GRUCell's update step by step, from the precomputed input projection (b_ih included)."""
    hidden = h0.shape[1]
    h, out = h0, []
    for t in range(projected.shape[0]):
        x_r, x_z, x_n = projected[t].split(hidden, dim=1)
        g_r, g_z, g_n = nn.functional.linear(h, weight_hh, bias_hh).split(hidden, dim=1)
        r, z = torch.sigmoid(x_r + g_r), torch.sigmoid(x_z + g_z)
        n = torch.tanh(x_n + r * g_n)
        new = (1 - z) * n + z * h
        h = new if valid is None else torch.where(valid[t], new, h)
        out.append(h)
    return torch.stack(out)


def arguments(time, batch, hidden, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    draw = lambda *s, f=0.5: (torch.randn(*s, generator=g, dtype=torch.float64) * f).to(dtype).requires_grad_()  # noqa: E731
    args = [draw(time, batch, 3 * hidden), draw(3 * hidden, hidden, f=0.9 / hidden ** 0.5),
            draw(3 * hidden) if bias else None, draw(batch, hidden)]
    return args


def outputs_and_grads(fn, args):
    hs = fn(*args)
    weights = torch.randn(hs.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(hs)
    inputs = [a for a in args if a is not None]
    return [hs.detach(), *torch.autograd.grad((hs * weights).sum(), inputs)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("time", [1, 7])
def test_equals_the_cell_step_by_step(bias, padded, time):
    args = arguments(time, 4, 5, torch.float64, bias)
    valid = None
    if padded:
        valid = (torch.arange(time)[:, None] < torch.tensor([time, 3, 5, 1])[None, :])[..., None]
    got = outputs_and_grads(lambda *a: gru_recurrence(*a, valid), args)
    ref = outputs_and_grads(lambda *a: reference(*a, valid), args)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)


def test_equals_torch_gru_cell_in_float32():
    """Against nn.GRUCell itself, float32: the same function up to rounding (measured 9.2e-8 relative)."""
    torch.manual_seed(0)
    cell = nn.GRUCell(6, 8)
    x = torch.randn(11, 3, 6)
    h0 = torch.randn(3, 8)
    h, expected = h0, []
    for t in range(11):
        h = cell(x[t], h)
        expected.append(h)
    expected = torch.stack(expected)
    projected = nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
    with torch.no_grad():
        got = gru_recurrence(projected, cell.weight_hh, cell.bias_hh, h0)
        error = float((got - expected).norm() / expected.norm())
    assert error < 1e-6


def test_no_double_backward():
    args = arguments(3, 2, 4, torch.float64)
    out = gru_recurrence(*args)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(torch.autograd.grad(out.sum(), args[1], create_graph=True)[0].sum(), args[1])
