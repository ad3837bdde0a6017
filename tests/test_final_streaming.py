"""The streaming final state (``linear_memory_final_chunked``) against the naive loop: outputs, gradients,
per-sequence lengths, the initial state, shared and per-dimension theta; its peak memory does not grow with
the length; ``linear_memory_final`` and the LMU's "final" mode stream long sequences."""

from __future__ import annotations

import pytest
import torch

import contime
from contime.legendre import discretize, impulse_response
from contime.ops.lmu_memory import linear_memory_final, linear_memory_final_chunked, linear_memory_naive
from contime.ops.lmu_memory.common import apply_state_matrix
from contime.ops.lmu_memory.final import FINAL_CHUNK
from contime.training.memory import peak_tensor_bytes

from autograd_graph import backward_node_names

ORDER = 7
# (time, chunk): not a multiple, a multiple, time < chunk, time == chunk, one step per chunk, several chunks.
SHAPES = [(50, 7), (56, 8), (5, 16), (16, 16), (33, 1), (200, 64)]
# Largest errors measured over these cases (float64): outputs 8.9e-16, gradients 3.6e-15.
ATOL, GRAD_ATOL = 1e-14, 1e-13


def problem(time, dims, per_dim_theta, with_m0, with_lengths, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    thetas = torch.linspace(4.0, 15.0, dims if per_dim_theta else 1, dtype=torch.float64).requires_grad_(True)
    u = torch.randn(batch, time, dims, dtype=torch.float64, generator=generator).requires_grad_(True)
    m0 = torch.randn(batch, dims, ORDER, dtype=torch.float64, generator=generator).requires_grad_(True) \
        if with_m0 else None
    # Sequences ending in different chunks: the full length, about half, and one step.
    lengths = torch.tensor([time, max(1, time // 2 + 1), 1][:batch]) if with_lengths else None
    return thetas, u, m0, lengths


def reference_last(u, A_bar, B_bar, m0, lengths):
    """The naive loop's state at each sequence's last valid step, ``(batch, D, n)``."""
    states = linear_memory_naive(u, A_bar, B_bar, m0)  # (batch, time, D, n)
    if lengths is None:
        return states[:, -1]
    return states[torch.arange(u.shape[0]), lengths - 1]


def grads(out, leaves):
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return torch.autograd.grad((out * weights).sum(), [x for x in leaves if x is not None], retain_graph=True)


CASES = [(1, False, False, False), (3, False, True, False), (3, True, False, True), (2, True, True, True),
         (1, False, True, True)]
IDS = ["D1", "D3-m0", "D3-theta-per-dim-lengths", "D2-theta-per-dim-m0-lengths", "D1-m0-lengths"]


@pytest.mark.parametrize("dims, per_dim_theta, with_m0, with_lengths", CASES, ids=IDS)
@pytest.mark.parametrize("time, chunk", SHAPES, ids=[f"T{t}-C{c}" for t, c in SHAPES])
def test_chunked_equals_naive(time, chunk, dims, per_dim_theta, with_m0, with_lengths):
    """Outputs and gradients to u, m0 and theta (through H and A_bar^C) match the loop."""
    thetas, u, m0, lengths = problem(time, dims, per_dim_theta, with_m0, with_lengths)
    A_bar, B_bar = discretize(ORDER, thetas)
    reference = reference_last(u, A_bar, B_bar, m0, lengths)
    got = linear_memory_final_chunked(u, A_bar, B_bar, m0, lengths, chunk=chunk)
    assert got.shape == (3, dims, ORDER) and got.dtype == torch.float64
    torch.testing.assert_close(got, reference, atol=ATOL, rtol=0)
    leaves = [u, thetas, m0]
    for a, b in zip(grads(got, leaves), grads(reference, leaves)):
        torch.testing.assert_close(a, b, atol=GRAD_ATOL, rtol=0)


@pytest.mark.parametrize("per_dim_theta", [False, True], ids=["shared", "per-dim"])
def test_chunked_gradients_to_the_matrices(per_dim_theta):
    """A_bar and B_bar as leaves of their own (not through theta)."""
    thetas, u, m0, lengths = problem(45, 2, per_dim_theta, True, True)
    A_bar, B_bar = (t.detach().clone().requires_grad_(True) for t in discretize(ORDER, thetas.detach()))
    reference = reference_last(u, A_bar, B_bar, m0, lengths)
    got = linear_memory_final_chunked(u, A_bar, B_bar, m0, lengths, chunk=8)
    torch.testing.assert_close(got, reference, atol=ATOL, rtol=0)
    leaves = [u, A_bar, B_bar, m0]
    for a, b in zip(grads(got, leaves), grads(reference, leaves)):
        torch.testing.assert_close(a, b, atol=GRAD_ATOL, rtol=0)


def test_final_streams_longer_sequences_and_uses_a_given_impulse():
    """linear_memory_final streams when time > chunk (same result as the chunked call and the one-product
    path), and the chunked path reads only the first C steps of a longer given impulse response."""
    thetas, u, m0, lengths = problem(70, 2, True, True, True)
    A_bar, B_bar = discretize(ORDER, thetas.detach())
    u, m0 = u.detach(), m0.detach()
    whole = linear_memory_final(u, A_bar, B_bar, m0, lengths, chunk=None)
    streamed = linear_memory_final(u, A_bar, B_bar, m0, lengths, chunk=16)
    torch.testing.assert_close(streamed, linear_memory_final_chunked(u, A_bar, B_bar, m0, lengths, chunk=16),
                               atol=0, rtol=0)
    torch.testing.assert_close(streamed, whole, atol=ATOL, rtol=0)
    H = impulse_response(A_bar, B_bar, 70)
    torch.testing.assert_close(linear_memory_final(u, A_bar, B_bar, m0, lengths, impulse=H, chunk=16), whole,
                               atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="impulse"):
        linear_memory_final_chunked(u, A_bar, B_bar, m0, lengths, chunk=16, impulse=H[:, :10])
    with pytest.raises(ValueError, match="chunk"):
        linear_memory_final_chunked(u, A_bar, B_bar, m0, lengths, chunk=0)


def _loop_last(u, A_bar, B_bar, m0):
    m = m0
    for t in range(u.shape[1]):
        m = apply_state_matrix(A_bar, m) + u[:, t, :, None] * B_bar
    return m


def test_float32_streaming_no_worse_than_the_float32_loop():
    """float32 against the float64 result, T = 10,000 (3 chunks of the default size), order 64, with m0.
    Measured: loop 1.8e-6; stream with H built in float64 and cast (as the LMU passes it) 1.5e-7, with the H
    it builds itself from the float32 A_bar 1.4e-6 (one product over the whole length: 5.2e-7)."""
    A64, B64 = discretize(64, 784.0)
    generator = torch.Generator().manual_seed(1)
    u = torch.randn(2, 10_000, 1, dtype=torch.float64, generator=generator)
    m0 = torch.randn(2, 1, 64, dtype=torch.float64, generator=generator)
    reference = linear_memory_final(u, A64, B64, m0, chunk=None)
    A32, B32, u32, m32 = A64.float(), B64.float(), u.float(), m0.float()
    loop_error = (_loop_last(u32, A32, B32, m32).double() - reference).abs().max().item()
    given = linear_memory_final(u32, A32, B32, m32, impulse=impulse_response(A64, B64, FINAL_CHUNK).float())
    own = linear_memory_final(u32, A32, B32, m32)
    assert given.dtype == own.dtype == torch.float32
    assert (given.double() - reference).abs().max().item() <= loop_error
    assert (own.double() - reference).abs().max().item() <= 1.2 * loop_error


def test_peak_memory_does_not_grow_with_length():
    """Under no_grad, chunk 1024, batch 1, order 32: the tensors the call creates peak at the same size for
    20,000 and 80,000 steps (measured: 540,672 bytes both, 574,225 with m0 and lengths), while the one-product
    path's grow with the length (16.8 MB and 67 MB). u is made before the measured call, so its own
    160 kB / 640 kB are not counted; only what the call allocates is."""
    A_bar, B_bar = discretize(32, 1000.0)
    peaks, peaks_lengths, peaks_whole = [], [], []
    for time in (20_000, 80_000):
        u = torch.randn(1, time, 1, dtype=torch.float64)
        m0 = torch.randn(1, 1, 32, dtype=torch.float64)
        lengths = torch.tensor([time - 17])
        with torch.no_grad():
            peaks.append(peak_tensor_bytes(lambda: linear_memory_final_chunked(u, A_bar, B_bar, chunk=1024))[1])
            peaks_lengths.append(peak_tensor_bytes(
                lambda: linear_memory_final_chunked(u, A_bar, B_bar, m0, lengths, chunk=1024))[1])
            peaks_whole.append(peak_tensor_bytes(lambda: linear_memory_final(u, A_bar, B_bar, chunk=None))[1])
    # Margin 4 kB: a few (batch, D, n) float64 states; the chunk-sized work is the same at every length.
    assert abs(peaks[1] - peaks[0]) <= 4096, peaks
    assert abs(peaks_lengths[1] - peaks_lengths[0]) <= 4096, peaks_lengths
    # Bounded by the chunk, not the length: H for 1024 steps (262 kB in float64) and its doubling work.
    assert max(peaks + peaks_lengths) < 1 << 20
    assert peaks_whole[1] > 3 * peaks_whole[0]  # the full impulse response grows linearly


def test_lmu_final_mode_streams_long_sequences():
    """The LMU's "final" mode for time > FINAL_CHUNK equals the recurrent loop (output, state, gradients to
    x and every parameter, trainable per-dimension theta included; measured <= 2.5e-15 apart), and asks _system
    for H of one chunk, not of the whole length."""
    time = FINAL_CHUNK + 300
    torch.manual_seed(0)
    lmu = contime.LMU(2, 2, 4, torch.tensor([300.0, 500.0]), torch.nn.Linear(10, 3), mode="final",
                      return_sequences=False, input_to_hidden=True, trainable_theta=True).double()
    x = torch.randn(2, time, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([time, time - 1000])  # ending in different chunks
    state = contime.LMUState(torch.randn(2, 8, dtype=torch.float64), None)
    leaves = [x] + list(lmu.parameters())
    outputs = {}
    for mode in ("final", "recurrent"):
        lmu.mode = mode
        y, final = lmu(x, state, lengths)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum() + final.memory.sum()
        outputs[mode] = (y, final.memory) + torch.autograd.grad(loss, leaves)
    for a, b in zip(outputs["final"], outputs["recurrent"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    with torch.no_grad():  # cached here (no gradient to theta wanted): the cache shows what was built
        lmu.mode = "final"
        lmu._system_cache.clear()
        lmu(x.detach(), None, lengths)
    (_, _, H), = lmu._system_cache.values()
    assert H.shape == (2, FINAL_CHUNK, 4)


def test_lmu_final_mode_streams_from_float64_matrices():
    """In float32, the streamed final state powers the float64 A_bar: measured 4.6e-7 relative error against
    float64 (order 64, theta 8,000, 20,000 steps), where powering the float32 cast gave 1.6e-5."""
    torch.manual_seed(0)
    x = torch.randn(2, 20000, 1, dtype=torch.float64)
    m0 = torch.randn(2, 64, dtype=torch.float64)
    layer = contime.LMU(1, 1, 64, 8000.0, None, input_kernel=False, return_sequences=False, mode="final")
    ref, _ = layer.double()(x, contime.LMUState(m0, None))
    y, _ = layer.float()(x.float(), contime.LMUState(m0.float(), None))
    assert float((y.double() - ref).norm() / ref.norm()) < 2e-6


@pytest.mark.parametrize("with_lengths", [False, True])
def test_chunks_are_split_once_under_grad(with_lengths):
    """With a gradient to u, the chunks come from one split: one slice or gather per chunk would write a zero
    gradient the size of u per chunk in the backward pass (O(time^2 / chunk))."""
    A_bar, B_bar = discretize(4, 50.0)
    u = torch.randn(2, 100, 1, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([100, 61]) if with_lengths else None
    m = linear_memory_final_chunked(u, A_bar, B_bar, lengths=lengths, chunk=8)
    names = backward_node_names(m)
    per_chunk = [n for n in names if n in ("SliceBackward0", "GatherBackward0", "SelectBackward0")]
    assert len(per_chunk) <= 1, names  # at most the one gather of the whole sequence
    assert "SplitWithSizesBackward0" in names or "SplitBackward0" in names, names
