"""The chunk-scan memory (contime.ops.lmu_memory.chunk_scan): plain torch products, so checked on the CPU in
float64 against the reference loop (outputs and every gradient), with both forms of the scan over chunks."""

from __future__ import annotations

import pytest
import torch

from contime.legendre import discretize, impulse_response
from contime.ops.lmu_memory import chunk_scan, linear_memory_naive
from contime.ops.lmu_memory.chunk_scan import (chunk_length, linear_memory_chunk_scan, product, scan_chunks,
                                               split_tf32)
from memory_reference import assert_equals_the_loop, explicit_toeplitz, system


@pytest.fixture(params=["direct", "doubling"])
def scan_form(request, monkeypatch):
    """Run a test with the chunk states in the direct form wherever there are two chunks or more, then by doubling
    steps."""
    direct = request.param == "direct"
    monkeypatch.setattr(chunk_scan, "direct_states", lambda blocks, n, L, rows: direct and blocks > 1)
    chunk_scan.clear_cache()
    yield request.param
    chunk_scan.clear_cache()


@pytest.mark.parametrize("batch,time,dims,order,block", [
    (3, 37, 1, 8, None),  # L = 16: three chunks, the last padded
    (4, 21, 2, 5, 4),  # several dimensions, padding
    (2, 64, 3, 6, 16),  # no padding
    (2, 10, 1, 3, 1),  # chunks of one step: ten chunks, four doubling steps
    (2, 7, 1, 3, 32),  # one chunk longer than the sequence
    (2, 50, 1, 4, 3),  # 17 chunks: a doubling step reaches past half of them
    (1, 1, 1, 4, None),  # one step
])
def test_chunk_scan_memory_equals_the_loop(scan_form, batch, time, dims, order, block):
    # Measured on this CPU (a /tmp script, every case and both scans): at most 2.6e-14 absolute.
    assert_equals_the_loop(lambda u, A, B, m0, H: linear_memory_chunk_scan(u, A, B, m0, impulse=H, block=block),
                           batch, time, dims, order)


def test_a_trained_theta_gets_the_loops_gradient(scan_form):
    """theta -> (A, B) -> H by autograd; m0's term then goes through autograd outside the node (it depends on
    A), the input's through the FFT gradient of H. Gradients of theta, u and m0."""
    theta = torch.tensor([9.0], dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 23, 1, dtype=torch.float64, requires_grad=True)
    m0 = torch.randn(3, 1, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 23, 1, 6, dtype=torch.float64)
    A, B = discretize(6, theta, 1.0, "zoh")
    got = torch.autograd.grad((linear_memory_chunk_scan(u, A, B, m0, block=5) * weight).sum(), [theta, u, m0])
    A, B = discretize(6, theta, 1.0, "zoh")
    ref = torch.autograd.grad((linear_memory_naive(u, A, B, m0) * weight).sum(), [theta, u, m0])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


def test_tf32x3_through_the_memory():
    """The tf32x3 plumbing (forward, the chunk states' products, backward): on the CPU its three products run in
    float32, so the result is float32-accurate against the float64 loop, outputs and input gradients."""
    A, B = system(16, 60)
    u = torch.randn(3, 90, 2, requires_grad=True)
    m0 = torch.randn(3, 2, 16)
    m = linear_memory_chunk_scan(u, A.float(), B.float(), m0, precision="tf32x3", block=16)
    weight = torch.randn_like(m)
    grad, = torch.autograd.grad((m * weight).sum(), u)
    u64 = u.detach().double().requires_grad_()
    ref = linear_memory_naive(u64, A, B, m0.double())
    ref_grad, = torch.autograd.grad((ref * weight.double()).sum(), u64)
    ref = ref.detach()
    # Measured on this CPU, three seeds: 3.7e-7 to 3.9e-7 (outputs), 3.3e-7 to 3.4e-7 (gradient).
    assert float((m.detach().double() - ref).norm() / ref.norm()) < 5e-6
    assert float((grad.double() - ref_grad).norm() / ref_grad.norm()) < 5e-6
    # Again, with the weights' parts kept by the operator since the first call: the same values.
    op = chunk_scan.cached_operator(A.float(), B.float(), 16, torch.float32)
    assert len(op.memo) == 2  # the forward weight's stacked parts, the backward weight's
    # and the direct form's (6 chunks): its starts, m0's and earlier-chunk matrices, kept by their scan
    assert len(op.scans[(6, True)].memo) == 3
    again = linear_memory_chunk_scan(u, A.float(), B.float(), m0, precision="tf32x3", block=16)
    torch.testing.assert_close(again, m, atol=0, rtol=0)
    torch.testing.assert_close(torch.autograd.grad((again * weight).sum(), u)[0], grad, atol=0, rtol=0)


def test_float32_at_a_long_window():
    """float32 operands, the operator built in float64 and cast once: relative error near float32's."""
    A, B = system(64, 300)
    u = torch.randn(6, 600, 1)
    m = linear_memory_chunk_scan(u, A.float(), B.float())
    ref = linear_memory_naive(u.double(), A, B)
    error = float((m.double() - ref).norm() / ref.norm())
    assert error < 5e-6, error  # measured 7.7e-7 to 8.3e-7 on this CPU (three seeds)


def test_tf32_split_is_exact_and_representable():
    x = torch.randn(1000) * torch.logspace(-30, 30, 1000)
    hi, lo = split_tf32(x)
    assert torch.equal(hi + lo, x)  # the split loses nothing
    assert torch.all(hi.view(torch.int32) & 0x1FFF == 0)  # hi has tf32's 10 mantissa bits only
    assert torch.all(lo.abs() <= x.abs() * 2.0 ** -11)
    assert torch.equal(split_tf32(torch.tensor([1.0, -2.5]))[0], torch.tensor([1.0, -2.5]))
    # Extremes: infinities stay (lo 0, not NaN); near float32's maximum rounding would overflow, so hi = x;
    # subnormals split exactly.
    edge = torch.tensor([float("inf"), -float("inf"), 3.4028235e38, -3.4028e38, 1e-40, -3e-42, 0.0])
    hi, lo = split_tf32(edge)
    assert torch.equal(hi + lo, edge) and torch.equal(lo[:4], torch.zeros(4))
    assert torch.isnan(split_tf32(torch.tensor([float("nan")]))[0]).all()


@pytest.mark.parametrize("x_shape,w_shape", [((50, 300), (300, 70)), ((4, 5, 30), (30, 400))])
def test_tf32x3_products_are_near_float32(x_shape, w_shape):
    """On the CPU the three products run in float32: their sum is x @ w to float32's accuracy (the dropped
    lo @ lo term is below 2^-22). Both arrangements: a large x (read once per part), a small one (one product
    with three times the inner size)."""
    x, w = torch.randn(x_shape), torch.randn(w_shape)
    exact = x.double() @ w.double()
    error = float((product(x, w, "tf32x3").double() - exact).norm() / exact.norm())
    assert error < 1e-6, error
    torch.testing.assert_close(product(x.double(), w.double(), "tf32x3"), exact)  # float64: one plain product


@pytest.mark.parametrize("reverse", [False, True])
def test_the_doubling_scan_is_the_recurrence_over_chunks(reverse, monkeypatch):
    A, B = system(5, 11)
    y = torch.randn(3, 13, 5, dtype=torch.float64)
    monkeypatch.setattr(chunk_scan, "direct_states", lambda blocks, n, L, rows: False)
    doubling = chunk_scan.scan_for(chunk_scan.build_operator(A[0], B[0], 4, torch.float64), 13, 3)
    assert doubling.starts is None and len(doubling.doubling) == 4
    step = torch.linalg.matrix_power(A[0], 4)
    expected, z = [], torch.zeros(3, 5, dtype=torch.float64)
    for q in (reversed(range(13)) if reverse else range(13)):  # the plain recurrence over chunks
        z = y[:, q] + (z @ step if reverse else z @ step.t())
        expected.append(z)
    expected = torch.stack(expected[::-1] if reverse else expected, dim=1)
    torch.testing.assert_close(scan_chunks(y, doubling, "ieee", reverse=reverse), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("with_m0", [False, True])
def test_both_forms_give_the_states_before_each_chunk(with_m0, monkeypatch):
    """s_{q-1}, the memory after step qL - 1 (m0 before the first chunk), in both forms against the loop."""
    A, B = system(5, 11)
    L, blocks = 4, 6
    u = torch.randn(3, blocks * L, 1, dtype=torch.float64)
    m0 = torch.randn(3, 1, 5, dtype=torch.float64) if with_m0 else None
    memory = linear_memory_naive(u, A, B, m0)[:, :, 0]  # (3, T, n)
    first = torch.zeros(3, 1, 5, dtype=torch.float64) if m0 is None else m0.reshape(3, 1, 5)
    expected = torch.cat([first, memory[:, L - 1:-1:L]], dim=1)  # (3, NB, n)
    op = chunk_scan.build_operator(A[0], B[0], L, torch.float64)
    for direct in (True, False):
        monkeypatch.setattr(chunk_scan, "direct_states", lambda blocks, n, L, rows: direct)
        scan = chunk_scan.scan_for(op, blocks, 3)
        assert (scan.starts is not None) == direct
        got = chunk_scan._chunk_states(u[:, :, 0].reshape(3, blocks, L), m0, op, scan, "ieee")
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)


def test_the_direct_form_is_chosen_for_few_chunks_within_its_size():
    assert chunk_scan.direct_states(8, 256, 98, 100)  # psMNIST: 1.4 M entries against 20 M of memory; 16 <= 354
    assert not chunk_scan.direct_states(1, 256, 98, 100)  # one chunk: no state to pass
    assert not chunk_scan.direct_states(8000, 256, 125, 1)  # a million steps: doubling
    assert not chunk_scan.direct_states(64, 16, 16, 100)  # its products would cost twice the memory's own
    assert not chunk_scan.direct_states(40, 1024, 128, 100)  # 204 M entries
    assert not chunk_scan.direct_states(64, 16, 128, 16)  # 8.3 M entries, 4x the memory (measured 1.8x slower)
    assert chunk_scan.direct_states(64, 16, 128, 64)  # the same matrix for a batch of 64: as large as its memory


def test_a_scan_is_kept_per_chunk_count_and_form():
    A, B = system(8, 11)
    op = chunk_scan.build_operator(A[0], B[0], 8, torch.float64)
    direct = chunk_scan.scan_for(op, 4, 100)
    assert direct.starts is not None and chunk_scan.scan_for(op, 4, 100) is direct
    doubling = chunk_scan.scan_for(op, 4, 1)  # one row: a matrix (768 entries) larger than the memory (256)
    assert doubling.starts is None and doubling.doubling and set(op.scans) == {(4, True), (4, False)}


@pytest.fixture
def builds(monkeypatch):
    """The operators built during a test (an empty cache at its start)."""
    chunk_scan.clear_cache()
    built = []
    build = chunk_scan.build_operator
    monkeypatch.setattr(chunk_scan, "build_operator", lambda *a: built.append(a) or build(*a))
    yield built
    chunk_scan.clear_cache()


def test_the_operator_is_reused_only_for_the_same_values(builds, monkeypatch):
    A, B = system(4, 7)
    u = torch.randn(2, 20, 1, dtype=torch.float64)
    first = linear_memory_chunk_scan(u, A, B)
    linear_memory_chunk_scan(u, A.clone(), B.clone())  # new tensors, same values: a hit by value
    assert len(builds) == 1
    # The same tensors again: an identity hit, without reading the values (as on a GPU).
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "numpy", lambda self, *a, **k: pytest.fail("read the values"))
        linear_memory_chunk_scan(u, A, B)
    A.mul_(0.5)  # in place: new values under the same identity, so the operator is rebuilt
    torch.testing.assert_close(linear_memory_chunk_scan(u, A, B), linear_memory_naive(u, A, B))
    assert len(builds) == 2
    assert not torch.allclose(linear_memory_chunk_scan(u, A, B), first)


def test_one_operator_serves_every_length_with_its_chunk_length(builds):
    """The operator depends on (A, B, L) only; each chunk count gets its scan on first use (here by doubling:
    2 NB > n + L)."""
    A, B = system(4, 7)
    for time in (40, 56, 64, 40):
        u = torch.randn(2, time, 1, dtype=torch.float64)
        torch.testing.assert_close(linear_memory_chunk_scan(u, A, B, block=8), linear_memory_naive(u, A, B))
    assert len(builds) == 1
    assert sorted(chunk_scan._BY_IDENTITY[next(iter(chunk_scan._BY_IDENTITY))][2].scans) == [(5, False), (7, False),
                                                                                           (8, False)]


def test_the_cache_is_bounded_and_forgets_freed_tensors(builds):
    systems = [system(4, 7 + i) for i in range(chunk_scan.CACHE_SIZE + 2)]
    u = torch.randn(2, 20, 1, dtype=torch.float64)
    for A, B in systems:
        linear_memory_chunk_scan(u, A, B)
    assert len(chunk_scan._BY_IDENTITY) == len(chunk_scan._BY_VALUE) == chunk_scan.CACHE_SIZE
    del systems, A, B
    assert len(chunk_scan._BY_IDENTITY) == 0  # each entry goes with its tensors


def test_inference_mode_tensors(builds):
    """Inference tensors have no version counter: the cache goes by value for them (one build for two calls)."""
    with torch.inference_mode():
        A, B = system(4, 7)
        u = torch.randn(2, 20, 1, dtype=torch.float64)
        torch.testing.assert_close(linear_memory_chunk_scan(u, A, B), linear_memory_naive(u, A, B))
        linear_memory_chunk_scan(u, A, B)
    assert len(builds) == 1


def test_autocast_keeps_the_products_in_float32():
    """Forward and backward under autocast (bfloat16): float32 results and gradients."""
    A, B = system(8, 20, torch.float32)
    u = torch.randn(4, 40, 1, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = linear_memory_chunk_scan(u, A, B)
        assert m.dtype == torch.float32
        m.sum().backward()
    assert u.grad.dtype == torch.float32
    u64 = u.detach().double().requires_grad_()
    ref = linear_memory_naive(u64, A.double(), B.double())
    ref_grad, = torch.autograd.grad(ref.sum(), u64)
    ref = ref.detach()
    assert float((m.detach().double() - ref).norm() / ref.norm()) < 1e-5
    assert float((u.grad.double() - ref_grad).norm() / ref_grad.norm()) < 1e-5


def test_strided_inputs_and_a_broadcast_gradient():
    A, B = system(5, 9)
    for dims in (1, 2):
        u = torch.randn(dims, 67, 3, dtype=torch.float64).transpose(0, 2)  # (3, 67, dims), not contiguous
        out = linear_memory_chunk_scan(u, A, B, block=16)
        assert out.is_contiguous() and out.shape == (3, 67, dims, 5)
        torch.testing.assert_close(out, linear_memory_naive(u, A, B))
    u = torch.randn(3, 67, 1, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(linear_memory_chunk_scan(u, A, B, block=16).sum(), u)  # an expanded gradient
    u_ref = u.detach().clone().requires_grad_()
    ref_grad, = torch.autograd.grad(linear_memory_naive(u_ref, A, B).sum(), u_ref)
    torch.testing.assert_close(grad, ref_grad, atol=1e-12, rtol=1e-10)


def test_any_layout_of_input_and_gradient_without_padding():
    """No padded steps (nothing is copied on the way in): a transposed u and a gradient laid out as the FFT's
    output (time innermost) still give the loop's values."""
    A, B = system(5, 9)
    u = torch.randn(1, 64, 3, dtype=torch.float64).transpose(0, 2).requires_grad_()  # (3, 64, 1)
    m = linear_memory_chunk_scan(u, A, B, block=16)
    grad = torch.randn(3, 5, 1, 64, dtype=torch.float64).permute(0, 3, 2, 1)  # (3, 64, 1, 5), strided
    got, = torch.autograd.grad(m, u, grad)
    u_ref = u.detach().clone().requires_grad_()
    ref = linear_memory_naive(u_ref, A, B)
    ref_grad, = torch.autograd.grad(ref, u_ref, grad)
    torch.testing.assert_close(m, ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(got, ref_grad, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("given_impulse", [True, False])
def test_second_derivatives_equal_the_loops(scan_form, given_impulse):
    """create_graph=True (a gradient penalty): the backward then runs as a graph, through the FFT, so second
    derivatives with respect to the input's source, the impulse response and m0 are the loop's. Without an
    impulse response given, the node has none and rebuilds it from A and B for this."""
    A, B = system(5, 9)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 23, 1, dtype=torch.float64)
    H = impulse_response(A, B, 23).requires_grad_()
    m0 = torch.randn(2, 1, 5, dtype=torch.float64, requires_grad=True)

    def penalty_grads(memory):
        u = x * scale
        m = memory(u, m0)
        g, = torch.autograd.grad((m ** 2).sum(), u, create_graph=True)
        return torch.autograd.grad((g ** 2).sum() + (m ** 2).sum(), [scale, m0] + ([H] if given_impulse else []))

    def toeplitz_reference(u, m0):
        """sum_j H_{t-j} u_j with H itself as the leaf (plain ops), plus m0's response from the loop."""
        return explicit_toeplitz(u, H) + linear_memory_naive(torch.zeros_like(u), A, B, m0)

    got = penalty_grads(lambda u, m0: linear_memory_chunk_scan(u, A, B, m0, impulse=H if given_impulse else None,
                                                                block=4))
    ref = penalty_grads(toeplitz_reference)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_lmu_fft_mode_under_forward_ad_and_torch_func():
    """The CPU's fft mode leaves the chunk scan (no jvp rule) for the FFT under forward-mode AD and torch.func;
    the op itself says so."""
    import torch.autograd.forward_ad as fwAD
    from torch.func import jacrev

    import contime
    lmu = contime.LMU(1, 1, 8, 6.0, mode="fft", input_kernel=False).double()
    x, v = torch.randn(2, 10, 1, dtype=torch.float64), torch.randn(2, 10, 1, dtype=torch.float64)
    results = {}
    for mode in ("fft", "recurrent"):
        lmu.mode = mode
        with fwAD.dual_level():
            tangent = fwAD.unpack_dual(lmu(fwAD.make_dual(x, v))[0]).tangent
        results[mode] = (tangent, jacrev(lambda x: lmu(x)[0])(x))
    for a, b in zip(results["fft"], results["recurrent"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    A, B = system(4, 7)
    with fwAD.dual_level(), pytest.raises(ValueError, match="forward-mode AD"):
        linear_memory_chunk_scan(fwAD.make_dual(x, v), A, B)


def test_chunk_length():
    """About T / 8 within [16, 128], a divisor of T nearby where there is one (no padded steps)."""
    assert chunk_length(784) == 98 and chunk_length(10) == 10 and chunk_length(100) == 20
    assert chunk_length(2000) == 125 and chunk_length(100_000) == 125 and chunk_length(4096) == 128
    assert chunk_length(1009) == 127 and chunk_length(37) == 16  # no divisor nearby: the last chunk is padded


def test_bad_arguments_are_named():
    A, B = system(4, 5)
    u = torch.randn(2, 5, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="precision"):
        linear_memory_chunk_scan(u, A, B, precision="bf16")
    with pytest.raises(ValueError, match="u must be"):
        linear_memory_chunk_scan(u[0], A, B)
    with pytest.raises(ValueError, match="at least one step"):
        linear_memory_chunk_scan(u[:, :0], A, B)
    with pytest.raises(ValueError, match="block"):
        linear_memory_chunk_scan(u, A, B, block=0)
    with pytest.raises(ValueError, match="block"):
        linear_memory_chunk_scan(u, A, B, block=8.0)
    with pytest.raises(ValueError, match="m0"):
        linear_memory_chunk_scan(u, A, B, torch.zeros(2, 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="m0"):
        linear_memory_chunk_scan(u, A, B, torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="impulse"):
        linear_memory_chunk_scan(u, A, B, impulse=impulse_response(A, B, 4))
    with pytest.raises(ValueError, match="impulse"):
        linear_memory_chunk_scan(u, A, B, impulse=impulse_response(A, B, 5).float())
    A2, B2 = discretize(4, torch.tensor([3.0, 5.0], dtype=torch.float64), 1.0, "zoh")
    with pytest.raises(ValueError, match="shared A_bar"):
        linear_memory_chunk_scan(torch.randn(2, 5, 2, dtype=torch.float64), A2, B2)
