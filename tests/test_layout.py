"""contime.ops.layout.time_major: the blocked copy into the time-major layout against transpose + contiguous."""

from __future__ import annotations

import pytest
import torch

from contime.ops import layout
from contime.ops.layout import time_major


@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 4, 2), (9, 1, 6)])
@pytest.mark.parametrize("time_last", [False, True])
def test_equals_transpose_and_is_a_fresh_tensor(shape, time_last, monkeypatch):
    """Values as x.transpose(0, 1), contiguous, in new memory (in-place updates must not reach x); blocks of 2
    rows, so that the last block is partial for an odd batch."""
    monkeypatch.setattr(layout, "BLOCK_BYTES", 2 * shape[1] * shape[2] * 8)
    batch, time, features = shape
    x = (torch.randn(batch, features, time + 3, dtype=torch.float64)[..., :time].transpose(1, 2) if time_last
         else torch.randn(shape, dtype=torch.float64))
    out = time_major(x)
    assert out.shape == (time, batch, features) and out.is_contiguous()
    assert torch.equal(out, x.transpose(0, 1))
    before = x.clone()
    out.add_(1.0)
    assert torch.equal(x, before)


def test_gradient_is_the_transposed_output_gradient():
    x = torch.randn(4, 6, 3, dtype=torch.float64).transpose(1, 2).requires_grad_()  # (4, 3, 6) viewed
    torch.autograd.gradcheck(time_major, (x,))
    weights = torch.randn(3, 4, 6, dtype=torch.float64)
    (grad,) = torch.autograd.grad((time_major(x) * weights).sum(), x)
    assert torch.equal(grad, weights.transpose(0, 1))


def test_rows_per_block_keeps_a_block_near_the_byte_budget():
    assert layout._rows_per_block(784, 212, 4) == 1  # one psMNIST row is 665 KB
    assert layout._rows_per_block(10, 10, 4) == layout.BLOCK_BYTES // 400
    assert layout._rows_per_block(10 ** 6, 10 ** 3, 8) == 1


def test_bad_shape_is_named():
    with pytest.raises(ValueError, match=r"x must be \(batch, time, features\)"):
        time_major(torch.zeros(3, 4))


def test_one_copy_off_the_cpu():
    """Off the CPU each block would be a kernel launch: one copy of the whole batch (meta tensors stand in)."""
    assert layout._rows_per_copy(torch.empty(100, 784, 212, device="meta")) == 100
    assert layout._rows_per_copy(torch.empty(100, 784, 212)) == 1
    out = time_major(torch.empty(3, 4, 5, device="meta"))
    assert out.shape == (4, 3, 5) and out.device.type == "meta"
