"""The spiking LMU memory (contime.spiking) and `contime run spiking --quick`.

Sizes are small (m <= 200, d = 3, 1-1.5 s of input): the file runs in well under a minute on two cores.
"""

from __future__ import annotations

import json
import math

import nengo
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from contime.cli import app
from contime.data.delay import band_limited_noise
from contime.spiking import PoissonCounts, SpikingLMUMemory, lif_gain_bias, lif_rate

F64 = torch.float64


def make_net(**kwargs) -> SpikingLMUMemory:
    options = dict(order=3, theta=0.5, n_neurons=120, neuron="rate", dtype=F64, seed=2, n_eval=600)
    options.update(kwargs)
    return SpikingLMUMemory(**options)


@pytest.fixture(scope="module")
def signal():
    return band_limited_noise(2, 1500, 0.001, 3.0, seed=1)  # (2, 1500), unit RMS, up to 3 Hz


def run_nengo(net: SpikingLMUMemory, u: torch.Tensor, seed: int = 0):
    network = net.to_nengo(u, seed=seed)  # the network's seed drives nengo's spike RNG
    with nengo.Simulator(network, dt=net.dt, progress_bar=False) as sim:
        sim.run_steps(u.shape[-1])
    return np.array(sim.data[network.probe_decoded]), np.array(sim.data[network.probe_state])


# ------------------------------------------------------------------------------------------------ building blocks
def test_gain_bias_match_nengo_and_put_the_intercept_and_max_rate_where_asked():
    generator = torch.Generator().manual_seed(0)
    max_rates = 200 + 200 * torch.rand(50, generator=generator, dtype=F64)
    intercepts = -1 + 2 * torch.rand(50, generator=generator, dtype=F64)
    gain, bias = lif_gain_bias(max_rates, intercepts, 0.02, 0.002)
    ref_gain, ref_bias = nengo.LIFRate(tau_rc=0.02, tau_ref=0.002).gain_bias(max_rates.numpy(), intercepts.numpy())
    np.testing.assert_allclose(gain.numpy(), ref_gain, rtol=1e-12)
    np.testing.assert_allclose(bias.numpy(), ref_bias, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(lif_rate(gain + bias, 0.02, 0.002).numpy(), max_rates.numpy(), rtol=1e-10)
    # J = 1 at the intercept: silent just below it, firing just above it.
    assert torch.all(lif_rate(gain * (intercepts - 1e-6) + bias, 0.02, 0.002) == 0)
    assert torch.all(lif_rate(gain * (intercepts + 1e-6) + bias, 0.02, 0.002) > 0)


def test_dual_form_decoders_equal_the_primal_regularised_least_squares():
    net = make_net(n_neurons=80, n_eval=300)
    A = net.rates(net.eval_points * net.radius)  # (n_eval, m)
    F = net.eval_points * net.radius
    primal = torch.linalg.solve(A.T @ A + net.reg_lambda * torch.eye(80, dtype=F64), A.T @ F)
    torch.testing.assert_close(net.decoders, primal, rtol=1e-7, atol=1e-9)
    assert net.reg_lambda == pytest.approx((0.1 * float(A.max())) ** 2 * 300)
    np.testing.assert_allclose(net.fit_error.numpy(), (A @ net.decoders - F).norm(dim=1).numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["rescale", "poisson"])
def test_poisson_counts_have_the_poisson_distribution(method):
    # 4 x 500 neurons with fixed intensities over 400 steps: 800,000 counts, ~1.2e5 spikes.
    generator = torch.Generator().manual_seed(3)
    lam = torch.linspace(0.0, 0.6, 2000, dtype=F64).reshape(4, 500)
    counts = PoissonCounts(4, 500, generator, method=method, dtype=F64)
    assert counts.method == method
    draws = torch.stack([counts(lam).clone() for _ in range(400)])  # (400, 4, 500)
    flat_lam, flat = lam.reshape(-1), draws.reshape(400, -1)
    assert torch.all(flat[:, flat_lam == 0] == 0)
    # Pooled moments over all neurons: mean and variance equal lam (standard errors ~ 0.2% of the totals).
    total = float(flat_lam.sum() * 400)
    assert float(flat.sum()) == pytest.approx(total, rel=4 * math.sqrt(total) / total)
    assert float(((flat - flat_lam) ** 2).sum()) == pytest.approx(total, rel=0.02)
    # P(0) = exp(-lam) and P(2) = lam^2 exp(-lam) / 2 in total, and no correlation between consecutive steps.
    zeros_expected = float(torch.exp(-flat_lam).sum() * 400)
    assert float((flat == 0).sum()) == pytest.approx(zeros_expected, abs=4 * math.sqrt(zeros_expected))
    twos_expected = float((flat_lam ** 2 * torch.exp(-flat_lam) / 2).sum() * 400)
    assert float((flat == 2).sum()) == pytest.approx(twos_expected, abs=4 * math.sqrt(twos_expected))
    centred = flat - flat_lam
    lag1 = float((centred[1:] * centred[:-1]).sum()) / float((centred ** 2).sum())
    assert abs(lag1) < 4 / math.sqrt(centred[1:].numel() * 0.4)


# ------------------------------------------------------------------------------------------------ rate network = LMU
@pytest.mark.parametrize("mapping", ["discrete", "lowpass"])
def test_rate_network_reproduces_the_lmu_within_the_decoders_fitting_error(signal, mapping):
    """With rate neurons the state error obeys e_t = A_bar e_{t-1} + (A_bar - aI) delta_t exactly, delta_t the
    static decoding error at the state the neurons encode; so ||e_t|| <= G max||delta|| with
    G = sum_k ||A_bar^k (A_bar - aI)||, and max||delta|| is the fitting error measured at the evaluation points."""
    net = make_net(mapping=mapping, n_neurons=200)
    _, state = net.simulate(signal)  # (2, 1500, 3)
    mapped = net.mapped_memory(signal)
    error = state - mapped

    # The identity itself, with delta measured where the network actually was.
    previous = torch.cat([torch.zeros_like(state[:, :1]), state[:, :-1]], dim=1)
    delta = (net.rates(previous.reshape(-1, 3)) @ net.decoders).reshape(previous.shape) - previous
    propagated = torch.zeros_like(error)
    e = torch.zeros_like(error[:, 0])
    kick = net.mapped_A_bar - net.synapse_a * torch.eye(3, dtype=F64)
    for t in range(error.shape[1]):
        e = e @ net.mapped_A_bar.T + delta[:, t] @ kick.T
        propagated[:, t] = e
    torch.testing.assert_close(error, propagated, rtol=0, atol=1e-10)

    # The bound from the static fit: the visited states decode no worse than the evaluation points' maximum.
    eps = float(net.fit_error.max())
    assert float(delta.norm(dim=-1).max()) <= eps
    gain = net.error_gain()
    assert float(error.norm(dim=-1).max()) <= gain * eps
    # The decoded readout (x_hat_t = y_{t-1} + delta_t, through the readout lowpass): within (G + 1) eps.
    decoded = net(signal)
    assert float((decoded - net.reference(signal, mapped)).norm(dim=-1).max()) <= (gain + 1) * eps

    lmu_gap = float((mapped - net.lmu_memory(signal)).norm(dim=-1).max())
    if mapping == "discrete":
        assert lmu_gap < 1e-12  # the discrete mapping implements the ZOH LMU exactly
    else:
        # The continuous mapping on the discrete synapse stretches theta by ~dt / (2 tau): a small O(dt/tau) gap.
        assert 0 < lmu_gap < 0.05 * float(mapped.norm(dim=-1).max())
    assert float((state - net.lmu_memory(signal)).norm(dim=-1).max()) <= gain * eps + lmu_gap


def test_more_neurons_decode_better(signal):
    errors = []
    for m in (30, 120):
        net = make_net(n_neurons=m)
        errors.append(float((net(signal) - net.reference(signal)).pow(2).mean().sqrt()))
    assert errors[1] < 0.6 * errors[0]


# ------------------------------------------------------------------------------------------------ nengo
@pytest.mark.parametrize("mapping", ["discrete", "lowpass"])
def test_nengo_export_matches_with_rate_neurons(signal, mapping):
    net = make_net(mapping=mapping, n_neurons=100, readout_tau=0.02)
    u = signal[:1, :800]
    decoded, state = net.simulate(u)
    nengo_decoded, nengo_state = run_nengo(net, u)
    # Measured: 4e-14. The ensemble's input at nengo's step t + 1 is our synapse state after step t.
    np.testing.assert_allclose(nengo_decoded, decoded[0].numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(nengo_state[1:], state[0, :-1].numpy(), rtol=0, atol=1e-9)


def test_nengo_export_agrees_with_poisson_neurons_in_distribution(signal):
    """Twenty-four spike realisations on each simulator: the RMS distance of the decoded memory from the rate network's
    (the spike noise) has the same mean on both, within 3 standard errors (measured: 0.236 and 0.241, SE 0.020)."""
    net = make_net(n_neurons=60, neuron="poisson", dtype=torch.float32)
    u = signal[:1, :800]
    rate = net.simulate(u, neuron="rate")[0][0, 300:]

    def noise(decoded) -> float:
        return float((torch.as_tensor(decoded)[300:] - rate).pow(2).sum(-1).mean().sqrt())

    runs = 24
    ours = [noise(net.simulate(u, generator=torch.Generator().manual_seed(s))[0][0]) for s in range(runs)]
    theirs = [noise(run_nengo(net, u, seed=s)[0]) for s in range(runs)]
    assert len(set(theirs)) == runs and len(set(ours)) == runs  # different realisations on each
    se = math.sqrt(np.var(ours, ddof=1) / runs + np.var(theirs, ddof=1) / runs)
    print(f"spike noise: ours {np.mean(ours):.4f}, nengo {np.mean(theirs):.4f}, SE of the difference {se:.4f}")
    assert abs(np.mean(ours) - np.mean(theirs)) < 3 * se
    assert se < 0.1 * np.mean(ours)  # sharp enough to catch a noise level off by sqrt(2)


def test_poisson_runs_with_both_mappings_and_samplers(signal):
    for mapping in ("discrete", "lowpass"):
        for sampler in ("rescale", "poisson"):
            net = make_net(mapping=mapping, neuron="poisson", sampler=sampler, dtype=torch.float32)
            decoded, state = net.simulate(signal[:, :600])
            assert decoded.shape == state.shape == (2, 600, 3) and decoded.dtype == F64
            assert bool(torch.isfinite(decoded).all())
            again, _ = net.simulate(signal[:, :600])
            torch.testing.assert_close(decoded, again)  # the default spike generator is seeded
            delayed = net.decode(decoded, [0.0, 0.25, 0.5])
            assert delayed.shape == (2, 600, 3)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, name", [
    ({"n_neurons": 2}, "n_neurons"),
    ({"theta": 0.0}, "theta"),
    ({"theta": -1.0}, "theta"),
    ({"tau": 0.0}, "tau"),
    ({"dt": 0.0}, "dt"),
    ({"dt": 0.2, "tau": 0.1, "mapping": "lowpass"}, "dt"),
    ({"neuron": "lif"}, "neuron"),
    ({"mapping": "euler"}, "mapping"),
    ({"max_rates": (200, 600)}, "max_rates"),
    ({"intercepts": (-2, 1)}, "intercepts"),
    ({"reg": 0}, "reg"),
    ({"seed": 1.7}, "seed"),
    ({"seed": -1}, "seed"),
    ({"theta": 1e-4, "n_eval": None}, "theta=0.0001 is too short for dt=0.001"),  # the default radius's noise
])
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_net(**kwargs)


def test_dt_above_tau_is_fine_for_the_discrete_mapping():
    net = make_net(dt=0.2, tau=0.1, theta=5.0, n_neurons=20, n_eval=100)
    assert net.simulate(torch.zeros(1, 5))[0].shape == (1, 5, 3)


@pytest.mark.parametrize("u, message", [
    (torch.zeros(10), "shape"),
    (torch.zeros(2, 3, 4), "shape"),
    (torch.zeros(2, 0), "shape"),
    (torch.tensor([[0.0, float("nan")]]), "NaN"),
    (torch.tensor([[0.0, float("inf")]]), "finite"),
])
def test_bad_inputs_are_named(u, message):
    net = make_net(n_neurons=10, n_eval=50)
    with pytest.raises(ValueError, match=message):
        net(u)


def test_reference_refuses_a_memory_of_another_length():
    net = make_net(n_neurons=10, n_eval=50)
    u = torch.zeros(2, 30)
    with pytest.raises(ValueError, match=r"memory must have u's \(batch, steps\)=\(2, 30\), got \(2, 20\)"):
        net.reference(u, memory=torch.zeros(2, 20, 3))
    with pytest.raises(ValueError, match=r"memory must be \(batch, steps, order=3\)"):
        net.reference(u, memory=torch.zeros(2, 30))
    torch.testing.assert_close(net.reference(u, memory=net.lmu_memory(u)), net.reference(u))


def test_nengo_export_takes_one_signal():
    net = make_net(n_neurons=10, n_eval=50)
    with pytest.raises(ValueError, match="one signal"):
        net.to_nengo(torch.zeros(2, 10))


# ------------------------------------------------------------------------------------------------ the experiment
def test_quick_run_writes_metrics_with_the_fitted_exponents(tmp_path):
    result = CliRunner().invoke(app, ["run", "spiking", "--quick", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = list((tmp_path / "spiking").iterdir())
    for name in ("config.json", "metrics.json", "error_vs_neurons.png", "cost_vs_neurons.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = metrics["config"]
    assert metrics["experiment"] == "spiking" and config["quick"] is True
    assert config["neurons"] == [64, 128, 256] and config["orders"] == [3, 6]
    fits = config["fits"]
    for order in ("3", "6"):
        error = fits["per_order"][order]["error"]
        assert math.isfinite(error["exponent"]) and error["se"] > 0 and error["points"] == 3
        assert math.isfinite(fits["per_order"][order]["time"]["exponent"])
    assert math.isfinite(fits["joint"]["exponent_m"]) and math.isfinite(fits["joint"]["exponent_d"])
    records = {r["model"]: r for r in metrics["results"]}
    for order in (3, 6):
        for m in (64, 128, 256):
            record = records[f"spiking d={order} m={m}"]
            assert record["params"] == m and record["metric"] == "nrmse" and record["epochs"] == 0
            assert record["seconds_per_epoch"] is None
            assert record["value"] == record["nrmse_lmu"] > 0
            assert record["seconds_per_step"] > 0 and record["memory_bytes"] > 0
        assert records[f"fit d={order}"]["value"] == fits["per_order"][str(order)]["error"]["exponent"]
    for m in (64, 128):
        nengo_record = records[f"nengo d=3 m={m}"]
        assert nengo_record["runs"] == 4 and nengo_record["speedup"] > 0
        assert len(set(nengo_record["ours_nrmse"])) == len(set(nengo_record["nengo_nrmse"])) == 4
    assert "joint fit" in result.output


@pytest.mark.parametrize("args, message", [
    (["--duration", "1.0"], "--duration"),
    (["--mapping", "euler"], "mapping"),
    (["--neurons", "2", "--orders", "3"], "neuron count"),
])
def test_quick_run_rejects_bad_options(tmp_path, args, message):
    result = CliRunner().invoke(app, ["run", "spiking", "--quick", "--out-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "spiking").exists()  # checked before a run folder is made
