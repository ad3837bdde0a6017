"""The CPU peak-tensor-memory counter against allocations of known size."""

import torch

from contime.training.memory import peak_tensor_bytes


def test_peak_counts_live_tensors_once_and_forgets_freed_ones():
    def work():
        a = torch.ones(1000)  # 4,000 bytes
        b = torch.ones(2000)  # 8,000: 12,000 alive
        view = a[10:20].view(2, 5)  # a view: no new storage
        a.add_(1.0)  # in place: nothing new
        del a, view
        c = torch.ones(500)  # 2,000: 10,000 alive, below the peak
        return b.sum() + c.sum()

    result, peak = peak_tensor_bytes(work)
    assert float(result) == 2500.0
    assert peak == 12_000  # a and b together; the later sums' scalars (4 bytes each) come after a is freed


def test_pre_existing_tensors_are_not_counted_and_backward_is():
    weight = torch.randn(100, 200, requires_grad=True)  # 80,000 bytes, held before
    x = torch.randn(64, 100)

    def step():
        loss = (x @ weight).tanh().sum()  # activations 64 x 200 x 4 = 51,200 each
        loss.backward()

    _, peak = peak_tensor_bytes(step)
    # Two activations stay alive for backward, then weight.grad (80,000) joins: 131,208 measured.
    assert 51_200 + 80_000 <= peak <= 51_200 * 2 + 80_000 + 1000
    assert weight.grad is not None
