"""Tests of contime.legendre against independent references.

References used (none of them reuse the code under test):
  * the LMU paper's closed-form A, B (plain Python double loop);
  * scipy.signal.cont2discrete for the discretizations;
  * plain Python loops for the impulse response / power sequence;
  * the closed form of the [d-1/d] Pade approximant of exp(-x) (itself cross-checked against
    scipy.interpolate.pade) for the transfer function of memory + readout;
  * the explicit shifted-Legendre polynomial sum for the readout matrix;
  * a time-domain simulation (plain numpy loop) of the discretized memory on a band-limited signal.

Tolerances are set from measured errors (listed next to each one) with a modest margin.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.interpolate
import torch
from scipy.signal import cont2discrete

from contime import legendre
from contime.legendre import (
    DISCRETIZERS,
    discretize,
    impulse_response,
    impulse_response_length,
    legendre_readout,
    legt_matrices,
    power_sequence,
)


# ----------------------------------------------------------------------------- helpers


def paper_A_B(order: int) -> tuple[list[list[float]], list[float]]:
    """A_ij = (2i+1) * (-1 if i < j else (-1)^(i-j+1)),  B_i = (2i+1) * (-1)^i  (LMU paper)."""
    A = [[0.0] * order for _ in range(order)]
    for i in range(order):
        for j in range(order):
            A[i][j] = (2 * i + 1) * (-1.0 if i < j else (-1.0) ** (i - j + 1))
    B = [(2 * i + 1) * (-1.0) ** i for i in range(order)]
    return A, B


def pade_exp_neg(d: int, x):
    """[d-1/d] Pade approximant of exp(-x), from the closed-form coefficients (p = d-1, q = d)."""
    p, q = d - 1, d
    f = math.factorial
    num = sum(f(p + q - k) * f(p) / (f(p + q) * f(k) * f(p - k)) * (-x) ** k for k in range(p + 1))
    den = sum(f(p + q - k) * f(q) / (f(p + q) * f(k) * f(q - k)) * x ** k for k in range(q + 1))
    return num / den


def transfer(order: int, theta: float, C: np.ndarray, s: complex) -> complex:
    """C (sI - A/theta)^-1 B/theta, from the paper's A, B (complex128)."""
    A, B = (np.array(m, dtype=np.complex128) for m in paper_A_B(order))
    return complex(C @ np.linalg.solve(s * np.eye(order) - A / theta, B / theta))


def scipy_discretize(order: int, theta: float, dt: float, method: str):
    A, B = (np.array(m) for m in paper_A_B(order))
    kwargs = {"zoh": {"method": "zoh"}, "euler": {"method": "gbt", "alpha": 0.0},
              "bilinear": {"method": "bilinear"}}[method]
    ad, bd, _, _, _ = cont2discrete((A / theta, B[:, None] / theta, np.eye(order), np.zeros((order, 1))),
                                    dt, **kwargs)
    return ad, bd[:, 0]


def loop_powers(A_bar: np.ndarray, v: np.ndarray, length: int) -> np.ndarray:
    """[A^0 v, A^1 v, ..., A^(length-1) v] by repeated multiplication (one matrix)."""
    out = [v]
    for _ in range(length - 1):
        out.append(A_bar @ out[-1])
    return np.stack(out)


# ----------------------------------------------------------------------------- legt_matrices


@pytest.mark.parametrize("order", [1, 2, 3, 5, 8, 13])
def test_legt_matrices_match_paper(order):
    A, B = legt_matrices(order)
    assert A.dtype == torch.float64 and B.dtype == torch.float64
    assert A.shape == (order, order) and B.shape == (order,)
    A_ref, B_ref = paper_A_B(order)
    # Integers times signs: exact equality.
    assert A.tolist() == A_ref
    assert B.tolist() == B_ref


@pytest.mark.parametrize("order", [0, -1, 2.5])
def test_legt_matrices_bad_order(order):
    with pytest.raises(ValueError, match="order"):
        legt_matrices(order)


# ----------------------------------------------------------------------------- discretize

# torch.linalg.matrix_exp (torch 2.13) is inaccurate for a batch of ONE matrix with 1-norm in about
# [0.004, 0.05] (pytorch/pytorch#196592; measured up to 8.2e-11 here). discretize works around it; the
# grid below includes such cases (order 1, theta 25, dt 1: norm 0.04; order 4, theta 0.37, dt 1e-3;
# order 4, theta 25, dt 0.05) and holds them to 1e-12 like the rest.


def _discretize_cases():
    for method in DISCRETIZERS:
        for order in (1, 4, 12, 64):
            for theta in (0.37, 25.0):
                for dt in (1e-3, 0.05, 1.0):
                                    yield pytest.param(method, order, theta, dt,
                                       id=f"{method}-d{order}-theta{theta:g}-dt{dt:g}")


@pytest.mark.parametrize("method", DISCRETIZERS)
def test_discretize_after_inference_mode_still_differentiates(method):
    """discretize keeps the LegT matrices of each (order, device, dtype) after the first call; one made under
    inference mode must not turn later calls' matrices into inference tensors, which cannot be saved for a
    backward pass."""
    with torch.inference_mode():
        discretize(7, torch.tensor([3.0], dtype=torch.float64), 1.0, method)
    theta = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    A_bar, B_bar = discretize(7, theta, 1.0, method)
    (A_bar.sum() + B_bar.sum()).backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    A, B = legt_matrices(7)
    kept_A, kept_B = legendre._legt_on(7, torch.device("cpu"), torch.float64)
    assert torch.equal(kept_A, A) and torch.equal(kept_B, B) and not kept_A.is_inference()
    assert legendre._legt_on(7, torch.device("cpu"), torch.float64)[0] is kept_A


def test_discretize_under_fake_tensors_does_not_fill_the_cache():
    """A first call under FakeTensorMode (as torch.export's non-strict tracing makes) must not leave stand-ins in
    the cache: a later real call gets real matrices, equal to the uncached ones (the review's script found a
    1.18 error there before)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    legendre._legt_cached.cache_clear()
    with FakeTensorMode():
        A_fake, _ = discretize(6, torch.tensor([5.0], dtype=torch.float64))
    assert isinstance(A_fake, FakeTensor)
    A_bar, B_bar = discretize(6, torch.tensor([5.0], dtype=torch.float64))
    assert not isinstance(A_bar, FakeTensor)
    A, B = legt_matrices(6)
    kept_A, _ = legendre._legt_on(6, torch.device("cpu"), torch.float64)
    assert not isinstance(kept_A, FakeTensor) and torch.equal(kept_A, A)


@pytest.mark.parametrize("order", [[3], 2.0, True])
def test_discretize_bad_order_is_named(order):
    with pytest.raises(ValueError, match="order must be an integer >= 1"):
        discretize(order, 3.0)


@pytest.mark.parametrize("method,order,theta,dt", list(_discretize_cases()))
def test_discretize_matches_scipy(method, order, theta, dt):
    A_bar, B_bar = discretize(order, theta, dt, method)
    assert A_bar.shape == (1, order, order) and B_bar.shape == (1, order)
    assert A_bar.dtype == torch.float64 and B_bar.dtype == torch.float64
    ad, bd = scipy_discretize(order, theta, dt, method)
    # Measured: zoh <= 5.5e-13 (d=64, theta=0.37, dt=1, norm 1.1e4),
    # euler <= 5.7e-14 (entries up to 343), bilinear <= 1.5e-15.
    np.testing.assert_allclose(A_bar[0].numpy(), ad, rtol=0, atol=1e-12)
    np.testing.assert_allclose(B_bar[0].numpy(), bd, rtol=0, atol=1e-12)


def test_discretize_euler_is_scipy_euler():
    """scipy's method='euler' and gbt(alpha=0) agree; check the 'euler' spelling too."""
    A, B = (np.array(m) for m in paper_A_B(6))
    ad, bd, *_ = cont2discrete((A / 2.0, B[:, None] / 2.0, np.eye(6), np.zeros((6, 1))), 0.1, method="euler")
    A_bar, B_bar = discretize(6, 2.0, 0.1, "euler")
    np.testing.assert_allclose(A_bar[0].numpy(), ad, rtol=0, atol=1e-14)
    np.testing.assert_allclose(B_bar[0].numpy(), bd[:, 0], rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", DISCRETIZERS)
@pytest.mark.parametrize("order", [1, 4, 12, 64], ids=lambda d: f"d{d}")
def test_discretize_theta_vector_is_a_batch(method, order):
    # theta/dt = 6, 280, 5e4, 2e6: order^2 * dt/theta stays outside the band [0.004, 0.05] where
    # matrix_exp's batch-of-one path is off by > 1e-15, for the per-value calls (the band itself
    # is covered by test_discretize_zoh_first_order_closed_form and the xfail grid cases).
    thetas = [0.3, 14.0, 2500.0, 1e5]
    dt = 0.05
    A_bar, B_bar = discretize(order, torch.tensor(thetas, dtype=torch.float64), dt, method)
    assert A_bar.shape == (len(thetas), order, order) and B_bar.shape == (len(thetas), order)
    for i, theta in enumerate(thetas):
        ad, bd = scipy_discretize(order, theta, dt, method)
        np.testing.assert_allclose(A_bar[i].numpy(), ad, rtol=0, atol=1e-12)
        np.testing.assert_allclose(B_bar[i].numpy(), bd, rtol=0, atol=1e-12)
        a1, b1 = discretize(order, theta, dt, method)
        # Measured: batch vs scipy <= 3.0e-13 (d=64, theta=0.3), batch vs per-value <= 1.2e-15.
        np.testing.assert_allclose(A_bar[i].numpy(), a1[0].numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(B_bar[i].numpy(), b1[0].numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "h",
    [1e-6, 1e-3, 2e-3,
     0.01, 0.02, 0.04,
     0.06, 0.1, 1.0, 5.0],
    ids=lambda h: f"dt/theta={h:g}")
def test_discretize_zoh_first_order_closed_form(h):
    """order 1: theta m' = -m + u, so A_bar = exp(-h), B_bar = 1 - exp(-h) with h = dt/theta.
    Without discretize's workaround, torch's matrix_exp gives 8.1e-14, 2.6e-12 and 8.2e-11 for a
    scalar theta at 0.01, 0.02 and 0.04; a batch of two is exact to 3.3e-16 at every h."""
    theta = 2.5
    dt = h * theta
    want_a, want_b = math.exp(-h), -math.expm1(-h)
    A2, B2 = discretize(1, [theta, theta], dt, "zoh")  # batch of two: not affected
    np.testing.assert_allclose(A2.numpy().ravel(), want_a, rtol=0, atol=1e-15)
    np.testing.assert_allclose(B2.numpy().ravel(), want_b, rtol=0, atol=1e-15)
    A1, B1 = discretize(1, theta, dt, "zoh")
    np.testing.assert_allclose(A1.item(), want_a, rtol=0, atol=1e-15)
    np.testing.assert_allclose(B1.item(), want_b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("theta", [0.0, -1.0, [1.0, -0.5], [2.0, 0.0]], ids=str)
def test_discretize_bad_theta(theta):
    with pytest.raises(ValueError, match="theta"):
        discretize(4, torch.tensor(theta, dtype=torch.float64))
    with pytest.raises(ValueError, match="theta"):
        discretize(4, theta)


@pytest.mark.parametrize("method", ["ZOH", "foh", "", "backward_diff"])
def test_discretize_bad_method(method):
    with pytest.raises(ValueError, match="method"):
        discretize(4, 1.0, 0.1, method)


@pytest.mark.parametrize("dt", [0.0, -0.1, float("nan")], ids=str)
def test_discretize_bad_dt(dt):
    with pytest.raises(ValueError, match="dt"):
        discretize(4, 1.0, dt)


@pytest.mark.parametrize("method", DISCRETIZERS)
def test_discretize_gradcheck_theta(method):
    theta = torch.tensor([0.7, 1.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda th: discretize(4, th, 0.1, method), (theta,))


@pytest.mark.parametrize("method", DISCRETIZERS)
def test_discretize_gradcheck_scalar_theta(method):
    theta = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda th: discretize(3, th, 0.25, method), (theta,))


# ----------------------------------------------------------------------------- impulse response


@pytest.mark.parametrize("length", [1, 2, 7, 64, 100])
@pytest.mark.parametrize("method", DISCRETIZERS)
def test_impulse_response_matches_loop(method, length):
    thetas = [0.8, 3.0]
    A_bar, B_bar = discretize(6, torch.tensor(thetas, dtype=torch.float64), 0.1, method)
    H = impulse_response(A_bar, B_bar, length)
    assert H.shape == (2, length, 6)
    for i in range(len(thetas)):
        ref = loop_powers(A_bar[i].numpy(), B_bar[i].numpy(), length)
        # Measured <= 4.0e-15 relative to the peak.
        np.testing.assert_allclose(H[i].numpy(), ref, rtol=0, atol=1e-14 * np.abs(ref).max())


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 13, 16, 17, 33])
def test_power_sequence_matches_loop(length):
    gen = torch.Generator().manual_seed(1234)
    k, n, c = 3, 5, 2
    M = torch.randn(k, n, n, generator=gen, dtype=torch.float64)
    M = M / torch.linalg.matrix_norm(M, ord=2)[:, None, None] * 0.97  # spectral norm < 1
    v = torch.randn(k, n, c, generator=gen, dtype=torch.float64)
    P = power_sequence(M, v, length)
    assert P.shape == (k, length, n, c)
    for i in range(k):
        ref = loop_powers(M[i].numpy(), v[i].numpy(), length)
        # Measured <= 1.3e-16 relative to the peak.
        np.testing.assert_allclose(P[i].numpy(), ref, rtol=0, atol=1e-15 * np.abs(ref).max())


def test_power_sequence_bad_length():
    with pytest.raises(ValueError, match="length"):
        power_sequence(torch.eye(2, dtype=torch.float64)[None], torch.ones(1, 2, 1, dtype=torch.float64), 0)


@pytest.mark.parametrize(
    "order,theta,dt,method,tol",
    [
        (4, 1.0, 0.05, "zoh", 1e-10),
        (12, [0.5, 2.0], 0.01, "bilinear", 1e-6),
        (1, 10.0, 1.0, "euler", 1e-8),
        (32, 3.0, 0.01, "zoh", 1e-8),
        (8, [0.2, 1.0, 5.0], 0.02, "zoh", 1e-12),
    ],
    ids=["d4-zoh", "d12-bilinear-2theta", "d1-euler", "d32-zoh", "d8-zoh-3theta"],
)
def test_impulse_response_length(order, theta, dt, method, tol):
    A_bar, B_bar = discretize(order, theta, dt, method)
    L = impulse_response_length(A_bar, B_bar, tol)
    horizon = 16 * L  # four times longer than the function's own horizon
    sizes = np.zeros(horizon)
    for i in range(A_bar.shape[0]):
        ref = loop_powers(A_bar[i].numpy(), B_bar[i].numpy(), horizon)
        sizes = np.maximum(sizes, np.abs(ref).max(axis=1))
    peak = sizes.max()
    assert sizes[L:].max() <= tol * peak, "response past L is not below tol * peak"
    assert sizes[L - 1] > tol * peak, "L - 1 would already satisfy the criterion: L is not minimal"


def test_impulse_response_length_capped():
    A_bar, B_bar = discretize(16, 2.0, 0.01, "zoh")
    L = impulse_response_length(A_bar, B_bar, 1e-10)
    assert L > 40
    assert impulse_response_length(A_bar, B_bar, 1e-10, max_length=40) == 40


# ----------------------------------------------------------------------------- readout


def test_pade_helper_matches_scipy_pade():
    """Cross-check the test's own closed-form Pade coefficients against scipy.interpolate.pade."""
    xs = np.array([0.1, 0.7, 1.5, -0.4, 2.0 + 1.0j])
    for d in range(1, 8):
        taylor = [(-1.0) ** k / math.factorial(k) for k in range(2 * d)]
        num, den = scipy.interpolate.pade(taylor, d, d - 1)
        assert num.order == d - 1 and den.order == d
        # Measured relative difference <= 1.2e-15.
        np.testing.assert_allclose(pade_exp_neg(d, xs), num(xs) / den(xs), rtol=5e-15)


@pytest.mark.parametrize("order", list(range(1, 11)), ids=lambda d: f"d{d}")
@pytest.mark.parametrize("theta", [1.0, 0.37, 12.5], ids=lambda t: f"theta{t:g}")
def test_readout_at_theta_is_pade_of_delay(order, theta):
    """C(theta) (sI - A/theta)^-1 B/theta == [d-1/d] Pade approximant of exp(-theta s)."""
    C = legendre_readout(order, [theta], theta)
    assert C.shape == (1, order) and C.dtype == torch.float64
    C = C[0].numpy()
    # s = i omega with omega * theta from 0.01 to 50, plus points off the imaginary axis.
    x = np.array([0.01j, 0.3j, 1j, 2.5j, 7j, 20j, 50j, -3j, 0.5 + 2j, -0.3 + 1j, 2.0, 0.4 - 5j])
    s = x / theta
    got = np.array([transfer(order, theta, C, si) for si in s])
    want = pade_exp_neg(order, theta * s)
    # Measured max relative error over this grid: 5.0e-15 (orders 1..10, all thetas).
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("frac", [0.0, 0.25, 0.5, 0.75, 1.0], ids=lambda f: f"delay{f:g}theta")
def test_readout_approximates_delay_at_low_frequency(frac):
    """|C(theta') H(s) - exp(-theta' s)| falls with the order at a fixed low frequency
    (theta' = 0: the readout of u(t), transfer function -> 1)."""
    theta = 1.7
    s = 2.0j / theta  # omega * theta = 2
    errs = []
    for order in (1, 2, 4, 8, 12):
        C = legendre_readout(order, [frac * theta], theta)[0].numpy()
        errs.append(abs(transfer(order, theta, C, s) - np.exp(-frac * theta * s)))
    # Measured (omega*theta = 2), orders 1, 2, 4, 8, 12:
    #   delay 0:       8.9e-1 4.9e-1 1.8e-2 9.5e-7 6.2e-12
    #   delay theta/4: 6.8e-1 1.4e-1 6.7e-3 7.7e-8 9.3e-13
    #   delay theta:   8.0e-1 1.5e-1 1.6e-4 4.6e-13 1.6e-16
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-2] < 2e-6, errs
    assert errs[-1] < 1e-11, errs


def test_readout_matches_explicit_shifted_legendre():
    """C[q, i] = P~_i(theta'_q / theta), P~_i(r) = (-1)^i sum_j C(i,j) C(i+j,j) (-r)^j (paper eq. 3)."""
    theta = 3.0
    delays = [0.0, 0.3, 1.1, 1.5, 2.9, 3.0]
    order = 9
    C = legendre_readout(order, delays, theta).numpy()
    assert C.shape == (len(delays), order)
    for q, dq in enumerate(delays):
        r = dq / theta
        for i in range(order):
            # Exact rational arithmetic at the same float r (the alternating float sum would lose
            # ~1e-11 to cancellation).
            rq = Fraction(r)
            ref = float((-1) ** i * sum(math.comb(i, j) * math.comb(i + j, j) * (-rq) ** j for j in range(i + 1)))
            assert abs(C[q, i] - ref) <= 1e-15, (q, i, C[q, i], ref)  # measured <= 2.4e-16


@pytest.mark.parametrize("delays", [[-0.1], [0.5, 2.0001], [-1e-9, 1.0], [3.0], [float("nan")], [[0.0, 1.0]]],
                         ids=str)
def test_readout_bad_delays(delays):
    with pytest.raises(ValueError, match="delays"):
        legendre_readout(4, delays, 2.0)


@pytest.mark.parametrize("theta", [0.0, -1.0])
def test_readout_bad_theta(theta):
    with pytest.raises(ValueError, match="theta"):
        legendre_readout(4, [0.0], theta)


# ----------------------------------------------------------------------------- time domain


def _band_limited_signal():
    rng = np.random.default_rng(0)
    freqs = np.array([0.3, 0.7, 1.1, 1.6, 2.2, 3.0])  # Hz, with theta = 1 s
    amps = rng.uniform(0.5, 1.0, freqs.size)
    phases = rng.uniform(0.0, 2 * np.pi, freqs.size)

    def u(t):
        t = np.asarray(t, dtype=np.float64)
        return (amps * np.sin(2 * np.pi * freqs * t[..., None] + phases)).sum(-1)

    return u


def test_decode_band_limited_signal_at_delays():
    """Simulate m_t = A_bar m_{t-1} + B_bar u_t (zoh, fine dt) and decode u(t - theta')."""
    theta, dt, T = 1.0, 2e-4, 3.0
    u = _band_limited_signal()
    n = int(round(T / dt))
    t = np.arange(1, n + 1) * dt
    u_t = u(t)
    delays = np.array([0.0, 0.25, 0.5, 0.75, 1.0]) * theta
    keep = t >= 2.0 * theta  # after the start-up transient (u switches on at t = 0)
    # zoh holds u_t over (t - dt, t]; the held staircase is u shifted by dt/2 to second order,
    # so the memory represents u(tau + dt/2) (measured: without the shift the error floor is
    # ~1e-2 * max|u| at dt = 1e-3, with it the error keeps falling with the order).
    target = u(t[keep][:, None] - delays[None, :] + dt / 2)
    scale = np.abs(u_t).max()
    errs = {}
    for order in (4, 8, 16, 32):
        A_bar, B_bar = discretize(order, theta, dt, "zoh")
        A_bar, B_bar = A_bar[0].numpy(), B_bar[0].numpy()
        C = legendre_readout(order, delays, theta).numpy()
        m = np.zeros(order)
        decoded = np.empty((n, delays.size))
        for step in range(n):
            m = A_bar @ m + B_bar * u_t[step]
            decoded[step] = C @ m
        errs[order] = np.abs(decoded[keep] - target).max(axis=0) / scale
    # Measured max error / max|u| per delay (0, theta/4, theta/2, 3theta/4, theta):
    #   d=4:  6.5e-1 5.8e-1 6.7e-1 7.0e-1 8.0e-1
    #   d=8:  4.6e-1 2.2e-1 4.1e-1 5.0e-1 5.1e-1
    #   d=16: 2.7e-3 6.6e-4 4.9e-4 2.2e-4 1.3e-4
    #   d=32: 3.4e-5 5.6e-7 3.7e-7 8.1e-7 5.4e-6
    orders = sorted(errs)
    for a, b in zip(orders, orders[1:]):
        assert np.all(errs[b] < errs[a]), (a, b, errs)
    assert np.all(errs[16] < 5e-3), errs[16]
    assert np.all(errs[32] < np.array([7e-5, 2e-6, 2e-6, 2e-6, 1e-5])), errs[32]
