"""The LMU memory in m spiking neurons, built with the Neural Engineering Framework (NEF).

The LMU paper (Voelker, Kajic, Eliasmith 2019) notes that its memory, theta dm/dt = A m + B u, "can be implemented
using m recurrently-connected Poisson spiking neurons", in O(m) time and memory, with error O(d / sqrt(m)).
``SpikingLMUMemory`` is that network:

* **Representation** (NEF principle 1). One population of m LIF neurons represents the d-dimensional state x in a
  ball of radius r. Neuron i has a unit encoder e_i, a gain g_i and a bias b_i, and receives the current
  J_i = g_i <e_i, x> / r + b_i. Its LIF rate is G(J) = 1 / (tau_ref + tau_rc ln(1 + 1 / (J - 1))) for J > 1, else 0.
  Gain and bias follow from a max rate (the rate at x = r e_i) and an intercept (where the neuron starts firing).
* **Decoding** (principle 2). Decoders D ``(m, d)`` give x_hat = D^T a from the activities a ``(m,)``; they solve a
  regularised least-squares problem on evaluation points in the ball, in its dual form (below).
* **Dynamics** (principle 3). The decoded x_hat goes through a recurrent transform A' and a lowpass synapse
  h(s) = 1 / (tau s + 1); the input goes through B' and the same synapse. Then tau dx/dt = -x + A' x + B' u, which is
  theta dx/dt = A x + B u for A' = tau A / theta + I, B' = tau B / theta ("lowpass" mapping). In discrete time the
  synapse is y_t = a y_{t-1} + (1 - a) w_t with a = exp(-dt / tau), and A' = (A_bar - a I) / (1 - a),
  B' = B_bar / (1 - a) make the network's state follow the ZOH-discretized memory m_t = A_bar m_{t-1} + B_bar u_t
  exactly ("discrete" mapping).

Neurons are "rate" (the LIF rate itself: the noiseless reference) or "poisson": per step a neuron emits a count
~ Poisson(rate * dt) and outputs count / dt (nengo's ``PoissonSpiking``). ``PoissonCounts`` draws the counts, on
the CPU by time rescaling, which needs random numbers only for the neurons that spike (5x cheaper than
``torch.poisson`` on every neuron for large layers) and gives exactly the same distribution.

Cost. The recurrent weights stay factored as encoders x transform x decoders (never the dense m x m matrix), and
the synapse filters the d-dimensional decoded value (it is linear, so that equals decoding filtered spikes). A step
is one (d -> m) encoding, m rates and samples, one (m -> d) decoding and d x d work: O(m) time and memory for
fixed d. The decoders solve D = A^T (A A^T + lambda I)^{-1} F with A the ``(n_eval, m)`` activities at the
evaluation points: an ``(n_eval, n_eval)`` system, built from chunks of neurons, so memory is O(n_eval * (n_eval +
chunk)) and never m x m.

Step order (the same as nengo's reference simulator, so ``to_nengo`` gives the same network): at step t the
neurons encode the synapse state y_{t-1} and fire; their decoded output x_hat_t and the input u_t enter the
synapse, y_t = a y_{t-1} + (1 - a) (A' x_hat_t + B' u_t); the readout synapse filters x_hat_t. So y_t follows m_t,
and x_hat_t, one step behind, m_{t-1}.

    net = SpikingLMUMemory(order=6, theta=1.0, n_neurons=4096, seed=0)
    u = band_limited_noise(4, 10_000, 0.001, 2.0, seed=1)        # (batch, steps)
    m_hat = net(u)                                               # (batch, steps, 6): decoded memory
    u_delayed = net.decode(m_hat, delays=[1.0])                  # (batch, steps, 1): u(t - theta)
    m_ref = net.reference(u)                                     # the exact LMU through the same readout
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import scipy.signal
import torch

from .data.delay import _check_int, band_limited_noise
from .legendre import discretize, legendre_readout, legt_matrices, power_sequence

NEURONS = ("poisson", "rate")
MAPPINGS = ("lowpass", "discrete")
SAMPLERS = ("auto", "rescale", "poisson")
# Neurons per chunk of the (n_eval, chunk) activity matrix while solving for decoders: bounds its memory.
_SOLVE_ELEMENTS = 1 << 22
_GRAM_BLOCKS = 6  # row blocks of the Gram matrix: 21 of 36 blocks computed
# Neurons x signals from which "auto" draws Poisson counts by time rescaling on the CPU (measured crossover ~2000).
_RESCALE_FROM = 4096


def lif_rate(J: torch.Tensor, tau_rc: float, tau_ref: float) -> torch.Tensor:
    """LIF firing rate in Hz of the current J (any shape): 1 / (tau_ref + tau_rc ln(1 + 1 / (J - 1))); 0 for J <= 1."""
    j = (J - 1.0).clamp_min(0.0)  # j = 0 -> 1/j = inf -> rate 0: no branch needed for silent neurons
    return 1.0 / (tau_ref + tau_rc * torch.log1p(1.0 / j))


def lif_gain_bias(max_rates: torch.Tensor, intercepts: torch.Tensor, tau_rc: float,
                  tau_ref: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gain and bias that make a LIF neuron start firing at ``intercepts`` and fire ``max_rates`` at 1.

    With J(x) = gain * x + bias: J = 1 (threshold) at the intercept, and G(J_max) = max_rate at x = 1, where
    1 / max_rate = tau_ref + tau_rc ln(1 + 1 / (J_max - 1)) gives
    J_max = 1 + 1 / (exp((1 / max_rate - tau_ref) / tau_rc) - 1).
    Then gain = (J_max - 1) / (1 - intercept) and bias = 1 - gain * intercept.

    Args:
        max_rates, intercepts: ``(m,)``; max rates below 1 / tau_ref, intercepts below 1.

    Returns:
        gain, bias: ``(m,)``.
    """
    j_max_minus_1 = 1.0 / torch.expm1((1.0 / max_rates - tau_ref) / tau_rc)
    gain = j_max_minus_1 / (1.0 - intercepts)
    return gain, 1.0 - gain * intercepts


def uniform_ball(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, d)`` float64 points uniform in the unit ball (direction uniform, radius U^(1/d))."""
    points = uniform_sphere(n, d, generator)
    radii = torch.rand(n, 1, generator=generator, dtype=torch.float64) ** (1.0 / d)
    return points * radii


def uniform_sphere(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, d)`` float64 unit vectors, uniform on the sphere."""
    points = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return points / points.norm(dim=1, keepdim=True)


def linear_memory(A_bar: torch.Tensor, B_bar: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """States of m_t = A_bar m_{t-1} + B_bar u_t from m_{-1} = 0, in float64.

    Args:
        A_bar: ``(d, d)``; B_bar: ``(d,)``; u: ``(batch, steps)``.

    Returns:
        ``(batch, steps, d)`` float64 on u's device.
    """
    a, b = A_bar.double().cpu().numpy(), B_bar.double().cpu().numpy()
    x = u.detach().double().cpu().numpy()
    out = np.empty(x.shape + (a.shape[0],))
    m = np.zeros((x.shape[0], a.shape[0]))
    a_t = a.T.copy()
    for t in range(x.shape[1]):  # d is small: a loop of tiny products is faster than a long FFT convolution
        m = m @ a_t + x[:, t:t + 1] * b
        out[:, t] = m
    return torch.from_numpy(out).to(u.device)


def lowpass(x: torch.Tensor, tau: float, dt: float) -> torch.Tensor:
    """Nengo's discrete lowpass along axis 1: z_t = a z_{t-1} + (1 - a) x_t, a = exp(-dt / tau); tau = 0: a copy.

    Args:
        x: ``(batch, steps, ...)``; filtered in float64 (scipy's lfilter: the same two products and sum per step).

    Returns:
        same shape, float64, on x's device.
    """
    if tau == 0:
        return x.double().clone()
    a = math.exp(-dt / tau)
    out = scipy.signal.lfilter([1.0 - a], [1.0, -a], x.detach().double().cpu().numpy(), axis=1)
    return torch.from_numpy(out).to(x.device)


def memory_radius(order: int, theta: float, dt: float, u: torch.Tensor) -> float:
    """The largest state norm ||m_t|| of the exact (ZOH) LMU memory on the inputs ``u`` ``(batch, steps)``."""
    A_bar, B_bar = discretize(order, float(theta), dt, "zoh")
    return float(linear_memory(A_bar[0], B_bar[0], u).norm(dim=-1).max())


def default_cutoff(order: int, theta: float) -> float:
    """order / (6 theta) Hz: a band of white noise the order-d memory holds well (it decodes u(t - theta) to
    3%, 0.3% and 0.4% of the RMS for d = 3, 6 and 12 at theta = 1 s); the default radius is measured on it."""
    return order / (6.0 * theta)


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_range(name: str, value, low: float, high: float) -> tuple[float, float]:
    """A pair (lo, hi) with low <= lo <= hi <= high and lo < high; draws are uniform in [lo, hi)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}") from None
    if not (low <= lo <= hi <= high and lo < high):
        raise ValueError(f"{name} must satisfy {low:g} <= low <= high <= {high:g} (low < {high:g}), got {value!r}")
    return lo, hi


class PoissonCounts:
    """Spike counts of ``batch x m`` Poisson neurons, one step at a time: counts_t ~ Poisson(lam_t), independent
    across neurons and steps given the intensities lam_t = rate * dt.

    "rescale" (time rescaling): each neuron keeps the residual of the Exp(1) gap to the next event of a unit-rate
    Poisson process; a step lowers it by lam and counts every event it passes, drawing a fresh gap for each. The
    counts of a unit-rate process over consecutive intervals of lengths lam_t are independent Poisson(lam_t) (also
    when lam_t depends on earlier counts: the process has independent increments), and only the neurons that
    spike need random numbers. "poisson": ``torch.poisson`` on every neuron. "auto": rescale on the CPU for
    batch * m >= 4096 (below it, the dozen small operations of a rescaled step cost more than sampling every
    neuron at ~35 ns each); poisson elsewhere (on CUDA, sampling is cheap and the nonzero() sync is not).

    Args:
        batch, m: the shape ``(batch, m)`` of the intensities.
        generator: the RNG, on ``device``.
    """

    def __init__(self, batch: int, m: int, generator: torch.Generator, *, method: str = "auto",
                 dtype: torch.dtype = torch.float32, device="cpu"):
        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {SAMPLERS}, got {method!r}")
        self.shape, self.generator, self.dtype, self.device = (batch, m), generator, dtype, torch.device(device)
        if method == "auto":
            method = "rescale" if self.device.type == "cpu" and batch * m >= _RESCALE_FROM else "poisson"
        self.method = method
        if method == "rescale":
            self.residual = self._exponential(batch * m)  # (batch * m,): the gap left to each neuron's next spike
            self.counts = torch.zeros(batch * m, dtype=dtype, device=self.device)
            self.one = torch.ones((), dtype=dtype, device=self.device)

    def __call__(self, lam: torch.Tensor) -> torch.Tensor:
        """Counts ``(batch, m)`` in ``dtype`` for the intensities lam ``(batch, m)`` (>= 0, finite)."""
        if self.method == "poisson":
            return torch.poisson(lam, generator=self.generator)
        residual, counts = self.residual, self.counts
        residual.sub_(lam.reshape(-1))
        fired = torch.where(residual <= 0)[0]
        counts.zero_()
        while fired.numel():  # a neuron can spike more than once in a step (rarely, for lam < 1)
            counts.index_put_((fired,), self.one, accumulate=True)
            residual.index_add_(0, fired, self._exponential(fired.numel()))
            fired = fired[residual[fired] <= 0]
        return counts.view(self.shape)

    def _exponential(self, n: int) -> torch.Tensor:
        """n Exp(1) samples, -log(1 - U) with U in [0, 1): finite (``exponential_`` is 5x slower on the CPU)."""
        uniform = torch.rand(n, generator=self.generator, dtype=self.dtype, device=self.device)
        return uniform.neg_().log1p_().neg_()


class SpikingLMUMemory:
    """The LMU memory theta dm/dt = A m + B u as m recurrently connected LIF (rate or Poisson) neurons.

    Args:
        order: memory order d.
        theta: window length in seconds, > 0.
        n_neurons: m >= d.
        tau: time constant of the recurrent (and input) lowpass synapse, seconds.
        dt: simulation step, seconds (< tau for the "lowpass" mapping).
        neuron: "poisson" (Poisson spikes at the LIF rate) or "rate" (the LIF rate).
        mapping: "lowpass" (principle 3 for the continuous system) or "discrete" (the ZOH system on the
            discretized synapse; exact in discrete time).
        radius: radius r of the represented ball, in state units; None: ``memory_radius`` on unit-RMS white
            noise band-limited to ``default_cutoff(order, theta)`` (4 signals of 10 theta, seed 0).
        readout_tau: time constant of the readout synapse on the decoded memory (0: none); default ``tau``.
        max_rates, intercepts: ranges of the uniform distributions of max rates (Hz) and intercepts.
        tau_rc, tau_ref: LIF membrane and refractory time constants, seconds.
        n_eval: evaluation points for the decoders (uniform in the ball); default clip(500 d, 750, 2500).
        eval_points: ``(n, d)`` points in state units to fit the decoders on instead (e.g. states the memory
            visits on its input process); needs ``radius``.
        reg: L2 regularisation as a fraction of the largest activity: lambda = (reg * max(A))^2 * n_eval.
        seed: seeds the encoders, gains, biases, evaluation points and the spikes.
        device, dtype: where and in what precision the neurons are simulated (the d-dimensional synapse
            states are float64).
        sampler: how Poisson counts are drawn (``PoissonCounts``): "rescale", "poisson" or "auto"; all draw
            exactly Poisson(rate * dt) counts, at different speeds.

    Attributes:
        encoders ``(m, d)`` unit rows, gain ``(m,)``, bias ``(m,)``, max_rates ``(m,)``, intercepts ``(m,)``,
        decoders ``(m, d)`` (state units), recurrent ``(d, d)`` A', input ``(d,)`` B', all float64 on the CPU;
        fit_error ``(n_eval,)``: ||x_hat - x|| of the static decoding at the evaluation points.
    """

    def __init__(self, order: int, theta: float, n_neurons: int, *, tau: float = 0.1, dt: float = 0.001,
                 neuron: str = "poisson", mapping: str = "discrete", radius: Optional[float] = None,
                 readout_tau: Optional[float] = None, max_rates=(200.0, 400.0), intercepts=(-1.0, 1.0),
                 tau_rc: float = 0.02, tau_ref: float = 0.002, n_eval: Optional[int] = None, reg: float = 0.1,
                 eval_points: Optional[torch.Tensor] = None,
                 seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32, sampler: str = "auto"):
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        if isinstance(n_neurons, bool) or not isinstance(n_neurons, int) or n_neurons < order:
            raise ValueError(f"n_neurons must be an integer >= order = {order} (one neuron per dimension at least), "
                             f"got {n_neurons!r}")
        self.theta = _check_positive("theta", theta)
        self.tau = _check_positive("tau", tau)
        self.dt = _check_positive("dt", dt)
        if neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if mapping == "lowpass" and self.dt >= self.tau:
            raise ValueError(f"dt = {dt} must be < tau = {tau} for the 'lowpass' mapping (it maps the continuous "
                             "system and needs the synapse to be slow against the step); use mapping='discrete'")
        self.tau_rc = _check_positive("tau_rc", tau_rc)
        if isinstance(tau_ref, bool) or not isinstance(tau_ref, (int, float)) or not 0 <= tau_ref < math.inf:
            raise ValueError(f"tau_ref must be a finite number >= 0, got {tau_ref!r}")
        self.tau_ref = float(tau_ref)
        top_rate = math.inf if self.tau_ref == 0 else 1.0 / self.tau_ref
        self.max_rate_range = _check_range("max_rates", max_rates, 1e-9, top_rate)
        self.intercept_range = _check_range("intercepts", intercepts, -1.0, 1.0)
        self.reg = _check_positive("reg", reg)
        if readout_tau is None:
            readout_tau = self.tau
        if isinstance(readout_tau, bool) or not isinstance(readout_tau, (int, float)) \
                or not 0 <= readout_tau < math.inf:
            raise ValueError(f"readout_tau must be a finite number >= 0, got {readout_tau!r}")
        if n_eval is None:
            n_eval = int(np.clip(500 * order, 750, 2500))
        if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 1:
            raise ValueError(f"n_eval must be an integer >= 1, got {n_eval!r}")
        if eval_points is not None:
            eval_points = self._check_eval_points(eval_points, order, radius)
            n_eval = eval_points.shape[0]
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.order, self.n_neurons, self.neuron, self.mapping = order, n_neurons, neuron, mapping
        self.readout_tau, self.n_eval, self.seed = float(readout_tau), n_eval, _check_int("seed", seed, 0)
        self.device, self.dtype = torch.device(device), dtype
        self.sampler = sampler
        self.radius = self._default_radius() if radius is None else _check_positive("radius", radius)

        generator = torch.Generator().manual_seed(self.seed)
        self._make_neurons(generator)
        self._solve_decoders(generator, eval_points)
        self._map_dynamics()
        self._spike_seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        self._cache_device_tensors()

    # ---------------------------------------------------------------- construction

    @staticmethod
    def _check_eval_points(points, order: int, radius: Optional[float]) -> torch.Tensor:
        points = torch.as_tensor(points).detach().to("cpu", torch.float64)
        if points.ndim != 2 or points.shape[1] != order or points.shape[0] < 1:
            raise ValueError(f"eval_points must have shape (n, order={order}), got {tuple(points.shape)}")
        if not bool(torch.isfinite(points).all()):
            raise ValueError("eval_points must be finite")
        if radius is None:
            raise ValueError("eval_points need an explicit radius (they are given in state units)")
        return points

    def _default_radius(self) -> float:
        cutoff = default_cutoff(self.order, self.theta)
        if not cutoff < 0.5 / self.dt:
            raise ValueError(f"theta={self.theta:g} is too short for dt={self.dt:g} to pick the default radius: its "
                             f"test noise (order / (6 theta) = {cutoff:g} Hz) lies above the Nyquist frequency "
                             f"{0.5 / self.dt:g} Hz; give radius=, a longer theta or a smaller dt")
        steps = max(int(round(10 * self.theta / self.dt)), 2)
        u = band_limited_noise(4, steps, self.dt, default_cutoff(self.order, self.theta), seed=0)
        return memory_radius(self.order, self.theta, self.dt, u)

    def _make_neurons(self, generator: torch.Generator) -> None:
        """Encoders uniform on the sphere, max rates and intercepts uniform, gain and bias from them."""
        m = self.n_neurons
        self.encoders = uniform_sphere(m, self.order, generator)
        lo, hi = self.max_rate_range
        self.max_rates = lo + (hi - lo) * torch.rand(m, generator=generator, dtype=torch.float64)
        lo, hi = self.intercept_range
        self.intercepts = lo + (hi - lo) * torch.rand(m, generator=generator, dtype=torch.float64)
        self.gain, self.bias = lif_gain_bias(self.max_rates, self.intercepts, self.tau_rc, self.tau_ref)

    def rates(self, x: torch.Tensor) -> torch.Tensor:
        """LIF rates in Hz ``(n, m)`` (float64) of the neurons at states x ``(n, d)`` in state units."""
        return self._rates_unit(x.double() / self.radius, slice(None))

    def _rates_unit(self, x_unit: torch.Tensor, neurons: slice) -> torch.Tensor:
        J = (x_unit @ self.encoders[neurons].T) * self.gain[neurons] + self.bias[neurons]
        return lif_rate(J, self.tau_rc, self.tau_ref)

    def _chunks(self) -> list[slice]:
        size = max(1, _SOLVE_ELEMENTS // self.n_eval)
        return [slice(start, min(start + size, self.n_neurons)) for start in range(0, self.n_neurons, size)]

    def _solve_decoders(self, generator: torch.Generator, eval_points=None) -> None:
        """D = A^T (A A^T + lambda I)^-1 F on evaluation points uniform in the ball (dual form: no m x m matrix).

        A ``(n_eval, m)`` holds the rates at the points, F ``(n_eval, d)`` the points in state units, and
        lambda = (reg * max(A))^2 * n_eval (noise of reg * max(A) on every rate). At the evaluation points
        A D = (A A^T) alpha = F - lambda alpha, so the static fitting error is -lambda alpha.
        """
        if eval_points is None:
            self.eval_points = uniform_ball(self.n_eval, self.order, generator)  # in the unit ball
        else:
            self.eval_points = eval_points / self.radius
        # In float64 on the simulation device (the Gram matrix is the cost: n_eval^2 m), results back on the CPU.
        device = self.device
        points = self.eval_points.to(device)
        neurons_on_device = [t.to(device) for t in (self.encoders, self.gain, self.bias)]

        def activities(neurons: slice) -> torch.Tensor:  # (n_eval, chunk) rates at the evaluation points
            encoders, gain, bias = (t[neurons] for t in neurons_on_device)
            return lif_rate((points @ encoders.T) * gain + bias, self.tau_rc, self.tau_ref)

        chunks = self._chunks()
        gram = torch.zeros(self.n_eval, self.n_eval, dtype=torch.float64, device=device)
        # Only the blocks on and above the diagonal: the Gram matrix is symmetric, so this saves ~40% of its cost.
        size = -(-self.n_eval // _GRAM_BLOCKS)
        blocks = [slice(s, min(s + size, self.n_eval)) for s in range(0, self.n_eval, size)]
        top = 0.0
        for neurons in chunks:
            chunk = activities(neurons)
            for i, rows in enumerate(blocks):
                for cols in blocks[i:]:
                    gram[rows, cols].addmm_(chunk[rows], chunk[cols].T)
            top = max(top, float(chunk.max()))
        gram = gram.triu() + gram.triu(1).T
        self.reg_lambda = (self.reg * top) ** 2 * self.n_eval
        gram.diagonal().add_(self.reg_lambda)
        targets = points * self.radius
        alpha = torch.cholesky_solve(targets, torch.linalg.cholesky(gram))  # (n_eval, d)
        self.decoders = torch.empty(self.n_neurons, self.order, dtype=torch.float64)
        for neurons in chunks:
            self.decoders[neurons] = (activities(neurons).T @ alpha).cpu()
        self.fit_error = (self.reg_lambda * alpha).norm(dim=1).cpu()  # ||A D - F|| per point, state units

    def _map_dynamics(self) -> None:
        """The recurrent transform A' ``(d, d)`` and input transform B' ``(d,)`` for the chosen mapping."""
        self.synapse_a = math.exp(-self.dt / self.tau)
        self.lmu_A_bar, self.lmu_B_bar = (t[0] for t in discretize(self.order, self.theta, self.dt, "zoh"))
        if self.mapping == "lowpass":
            A, B = legt_matrices(self.order)
            self.recurrent = self.tau * A / self.theta + torch.eye(self.order, dtype=torch.float64)
            self.input = self.tau * B / self.theta
        else:
            eye = torch.eye(self.order, dtype=torch.float64)
            self.recurrent = (self.lmu_A_bar - self.synapse_a * eye) / (1.0 - self.synapse_a)
            self.input = self.lmu_B_bar / (1.0 - self.synapse_a)
        # What the network computes with perfect decoding: y_t = a y_{t-1} + (1 - a)(A' y_{t-1} + B' u_t).
        eye = torch.eye(self.order, dtype=torch.float64)
        self.mapped_A_bar = self.synapse_a * eye + (1.0 - self.synapse_a) * self.recurrent
        self.mapped_B_bar = (1.0 - self.synapse_a) * self.input

    def _cache_device_tensors(self) -> None:
        """Simulation copies: scaled encoders (d, m), bias - 1, decoders / dt (m, d), rate constants per step."""
        device, dtype = self.device, self.dtype
        self._enc = ((self.encoders * (self.gain / self.radius)[:, None]).T).to(device, dtype).contiguous()
        self._bias_minus_1 = (self.bias - 1.0).to(device, dtype)
        self._dec_per_dt = (self.decoders / self.dt).to(device, dtype).contiguous()
        a = self.synapse_a
        self._rec_t = ((1.0 - a) * self.recurrent).T.to(device)  # float64, acts on row vectors
        self._in = ((1.0 - a) * self.input).to(device)

    # ---------------------------------------------------------------- simulation

    def _check_input(self, u) -> torch.Tensor:
        u = torch.as_tensor(u)
        if u.ndim != 2 or u.shape[0] < 1 or u.shape[1] < 1:
            raise ValueError(f"u must have shape (batch, steps) with batch, steps >= 1, got {tuple(u.shape)}")
        if not (u.dtype.is_floating_point or u.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"u must be a real-valued tensor, got dtype {u.dtype}")
        if not bool(torch.isfinite(u).all()):
            raise ValueError("u must be finite: it holds NaN or infinite values")
        return u.to(self.device, torch.float64)

    def __call__(self, u) -> torch.Tensor:
        """The decoded memory ``(batch, steps, d)`` (float64) of the inputs u ``(batch, steps)``."""
        return self.simulate(u)[0]

    @torch.no_grad()
    def simulate(self, u, *, neuron: Optional[str] = None,
                 generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on u ``(batch, steps)`` (one row per signal, one column per step of dt).

        Args:
            neuron: "poisson" or "rate" for this run (same neurons and decoders); default the network's.
            generator: the spike RNG on the simulation device; default one seeded from ``seed`` (reproducible).

        Returns:
            decoded: ``(batch, steps, d)`` float64, the decoded memory through the readout synapse (x_hat_t
                follows m_{t-1}; ``reference`` lines up the exact memory with it).
            state: ``(batch, steps, d)`` float64, the recurrent synapse state y_t (follows m_t).
        """
        neuron = self.neuron if neuron is None else neuron
        if neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
        u = self._check_input(u)
        batch, steps = u.shape
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(self._spike_seed)
        decode = self._make_decoder(batch, neuron, generator)
        # Time-major buffers, so that step t writes one contiguous (batch, d) slice in place.
        x_hats = torch.empty(steps, batch, self.order, dtype=torch.float64, device=self.device)
        states = torch.empty_like(x_hats)
        drive = u.T[:, :, None] * self._in  # (steps, batch, d): (1 - a) B' u_t
        y = torch.zeros(batch, self.order, dtype=torch.float64, device=self.device)
        k_ref, k_rc, a = self.tau_ref / self.dt, self.tau_rc / self.dt, self.synapse_a
        for t in range(steps):
            j = torch.addmm(self._bias_minus_1, y.to(self.dtype), self._enc)  # J - 1, (batch, m)
            # rate * dt = 1 / (tau_ref/dt + tau_rc/dt * log1p(1/(J - 1))), in place; J <= 1 gives 0.
            lam = j.clamp_min_(0.0).reciprocal_().log1p_().mul_(k_rc).add_(k_ref).reciprocal_()
            x_hat = x_hats[t]
            x_hat.copy_(decode(lam))
            # y_t = a y_{t-1} + (1 - a)(A' x_hat_t + B' u_t)
            y = torch.addmm(drive[t], x_hat, self._rec_t, out=states[t]).add_(y, alpha=a)
        decoded = lowpass(x_hats.transpose(0, 1), self.readout_tau, self.dt)
        return decoded, states.transpose(0, 1).contiguous()

    def _make_decoder(self, batch: int, neuron: str, generator: torch.Generator):
        """A function from rate * dt ``(batch, m)`` to the decoded output D^T (counts / dt) ``(batch, d)``."""
        dec = self._dec_per_dt
        if neuron == "rate":
            return lambda lam: lam @ dec
        counts = PoissonCounts(batch, self.n_neurons, generator, method=self.sampler, dtype=self.dtype,
                               device=self.device)
        return lambda lam: counts(lam) @ dec

    # ---------------------------------------------------------------- references and readout

    def lmu_memory(self, u) -> torch.Tensor:
        """The exact non-spiking memory m_t = A_bar m_{t-1} + B_bar u_t (ZOH) ``(batch, steps, d)`` float64."""
        return linear_memory(self.lmu_A_bar, self.lmu_B_bar, self._check_input(u))

    def mapped_memory(self, u) -> torch.Tensor:
        """The linear system the network implements with perfect decoding ``(batch, steps, d)``: the LMU for
        the "discrete" mapping; for "lowpass", A_bar = aI + (1 - a) A', B_bar = (1 - a) B', off by O(dt / tau)."""
        return linear_memory(self.mapped_A_bar, self.mapped_B_bar, self._check_input(u))

    def reference(self, u, memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What ``simulate``'s decoded output would be with perfect decoding: the memory (default ``lmu_memory``)
        one step late (x_hat_t follows m_{t-1}) through the readout synapse. ``(batch, steps, d)`` float64."""
        if memory is None:
            memory = self.lmu_memory(u)
        elif not torch.is_tensor(memory) or memory.ndim != 3 or memory.shape[-1] != self.order:
            got = tuple(memory.shape) if torch.is_tensor(memory) else type(memory).__name__
            raise ValueError(f"memory must be (batch, steps, order={self.order}), got {got}")
        elif tuple(memory.shape[:2]) != tuple(self._check_input(u).shape):
            raise ValueError(f"memory must have u's (batch, steps)={tuple(self._check_input(u).shape)}, "
                             f"got {tuple(memory.shape[:2])}")
        return lowpass(delay_steps(memory, 1), self.readout_tau, self.dt)

    def decode(self, memory: torch.Tensor, delays, theta: Optional[float] = None) -> torch.Tensor:
        """u(t - theta') for each delay theta' in [0, theta] from a memory trajectory ``(..., d)`` -> ``(..., q)``."""
        C = legendre_readout(self.order, delays, self.theta if theta is None else theta)
        return memory @ C.T.to(memory.device, memory.dtype)

    def error_gain(self, tol: float = 1e-12) -> float:
        """G = sum_k ||A_bar^k (A_bar - aI)||_2 for the mapped system: a static decoding error of at most eps
        at every step keeps ||y_t - mapped m_t|| <= G eps (e_t = A_bar e_{t-1} + (A_bar - aI) delta_t).
        Summed in blocks of 1024 terms until a term falls below ``tol`` times the first."""
        A = self.mapped_A_bar[None]
        powers = power_sequence(A, torch.eye(self.order, dtype=torch.float64)[None], 1024)[0]  # A^0 .. A^1023
        jump = torch.linalg.matrix_power(self.mapped_A_bar, 1024)
        term = self.mapped_A_bar - self.synapse_a * torch.eye(self.order, dtype=torch.float64)
        first, total = float(torch.linalg.matrix_norm(term, 2)), 0.0
        for _ in range(100_000):
            sizes = torch.linalg.matrix_norm(powers @ term, 2)  # (1024,)
            total += float(sizes.sum())
            if float(sizes[-1]) < tol * first:
                return total
            term = jump @ term
        raise RuntimeError("error_gain: the mapped system does not decay")

    def parameter_bytes(self) -> int:
        """Bytes of the simulation tensors that grow with m (scaled encoders, bias, decoders)."""
        return sum(t.numel() * t.element_size() for t in (self._enc, self._bias_minus_1, self._dec_per_dt))

    # ---------------------------------------------------------------- nengo

    def to_nengo(self, u, *, seed: Optional[int] = None):
        """The same network as a ``nengo.Network``, fed one signal u ``(steps,)`` or ``(1, steps)``.

        Args:
            seed: the network's seed (default the memory's ``seed``); nengo draws the Poisson spikes from it.

        Returns a network with the attributes ``ensemble``, ``input_node``, ``probe_decoded`` (the decoded memory
        through the readout synapse: row t equals ``simulate``'s decoded[:, t]) and ``probe_state`` (the ensemble's
        input: row t + 1 equals ``simulate``'s state[:, t]). Run it with ``nengo.Simulator(net, dt=self.dt)``.
        """
        import nengo

        u = torch.as_tensor(u)
        if u.ndim == 1:
            u = u.reshape(1, -1)
        if u.ndim != 2 or u.shape[0] != 1:
            raise ValueError(f"u must be one signal, of shape (steps,) or (1, steps), got {tuple(u.shape)}")
        u = self._check_input(u)[0].cpu().numpy()
        base = nengo.LIFRate(tau_rc=self.tau_rc, tau_ref=self.tau_ref)
        neuron_type = nengo.PoissonSpiking(base) if self.neuron == "poisson" else base
        decoders = self.decoders.numpy()
        net = nengo.Network(seed=self.seed if seed is None else seed)
        with net:
            net.input_node = nengo.Node(nengo.processes.PresentInput(u[:, None], self.dt), label="u")
            net.ensemble = nengo.Ensemble(
                self.n_neurons, self.order, radius=self.radius, encoders=self.encoders.numpy(),
                gain=self.gain.numpy(), bias=self.bias.numpy(), neuron_type=neuron_type,
                eval_points=self.eval_points.numpy() * self.radius, label="lmu")
            synapse = nengo.Lowpass(self.tau)
            nengo.Connection(net.input_node, net.ensemble, transform=self.input.numpy()[:, None], synapse=synapse)
            nengo.Connection(net.ensemble, net.ensemble, transform=self.recurrent.numpy(), synapse=synapse,
                             solver=nengo.solvers.NoSolver(decoders))
            readout = nengo.Node(size_in=self.order, label="decoded")
            # The readout synapse on the connection, probed at its output: the same step as ``simulate``'s z_t
            # (a synapse on the probe itself would lag one step).
            connection = nengo.Connection(net.ensemble, readout, solver=nengo.solvers.NoSolver(decoders),
                                          synapse=nengo.Lowpass(self.readout_tau) if self.readout_tau > 0 else None)
            net.probe_decoded = nengo.Probe(connection, "output", synapse=None)
            net.probe_state = nengo.Probe(net.ensemble, "input", synapse=None)
        return net


def delay_steps(x: torch.Tensor, k: int) -> torch.Tensor:
    """x delayed by k steps along axis 1, zeros before the start: out[:, t] = x[:, t - k]."""
    out = torch.zeros_like(x)
    if k < x.shape[1]:
        out[:, k:] = x[:, :x.shape[1] - k]
    return out
