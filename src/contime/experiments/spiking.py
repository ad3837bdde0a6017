"""The spiking LMU: the memory in m Poisson neurons, and how its error and cost grow with m and d.

The LMU paper claims that its memory "can be implemented using m recurrently-connected Poisson spiking neurons",
in O(m) time and memory, with error O(d / sqrt(m)). This experiment builds ``contime.spiking.SpikingLMUMemory``
networks (LIF rates as Poisson intensities, the "discrete" mapping by default) over a grid of m and d and measures:

* Error. Input: unit-RMS white noise band-limited to ``cutoff`` Hz (2 Hz: the order-12 memory decodes u(t - 1 s)
  from it to 0.4%), ``signals`` signals of ``duration`` s per seed. Each network decodes u(t - theta) from its
  decoded memory; the first theta + 5 tau seconds (memory filling, filters settling) are not scored. The error's
  RMS, divided by the input's RMS (nrmse), is taken against (a) the non-spiking LMU of the same order (the exact
  ZOH memory, through the same readout synapse and step) and (b) the ideal delay u(t - theta) (through the same
  synapse). The rate-neuron network (same neurons and decoders) gives the part of (a) that is not spike noise:
  the static decoding error, amplified by the recurrence.
* Fits. log(nrmse vs LMU) against log(m) by least squares over every (m, seed), per order: the exponent with its
  standard error (the claim is -1/2); the same for the rate network and for the spike-noise part
  sqrt(poisson^2 - rate^2). Growth with d: a joint fit log nrmse = c + alpha log m + beta log d (claim: alpha =
  -1/2, beta = 1) and nrmse * sqrt(m) per order.
* Cost. Seconds per simulated step (all signals of a seed at once; the fastest seed per m, as other jobs on the
  machine only add time) and memory (the simulation's parameter tensors plus ``peak_tensor_bytes`` of a short
  simulation: every tensor that grows with m) against m, with fitted exponents (claim: 1) over all m and, for time,
  over the three largest (a step has a fixed cost of ~16 torch calls, ~0.03 ms, that small layers do not hide), and
  an affine fit seconds = fixed + per_neuron * m.
* Nengo. For ``nengo_neurons`` at order ``nengo_order`` the same network goes to nengo's reference simulator
  (``SpikingLMUMemory.to_nengo``): seconds per step of both on single signals, and the nrmse of ``repeats`` spike
  realisations per signal on each, compared pairwise per signal (the two should agree in distribution).

    contime run spiking --threads 1      m = 256 .. 65,536, d = 3, 6, 12, 3 seeds, 2 x 10 s signals: ~10 minutes
                                         on 2 CPU cores
    contime run spiking --quick          m = 64, 128, 256, d = 3, 6, 1 seed, 2.5 s signals: seconds
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..data.delay import band_limited_noise
from ..spiking import MAPPINGS, SpikingLMUMemory, delay_steps, linear_memory, lowpass, memory_radius
from ..legendre import discretize
from ..training.memory import peak_tensor_bytes
from .fits import least_squares, loglog_slope
from .rundir import (OUT_DIR_OPTION, QUIET_OPTION, command_console, experiment_command, open_run_dir, parse_ints,
                     parse_seeds, result_record, write_metrics)

EXPERIMENT = "spiking"
EVAL_POINTS = ("ball", "states")

FULL = {"neurons": [256, 1024, 4096, 16384, 65536], "orders": [3, 6, 12], "seeds": [0, 1, 2], "duration": 10.0,
        "signals": 2, "nengo_neurons": [256, 1024, 4096], "nengo_order": 6, "repeats": 5, "memory_steps": 20}
QUICK = {"neurons": [64, 128, 256], "orders": [3, 6], "seeds": [0], "duration": 2.5, "signals": 2,
         "nengo_neurons": [64, 128], "nengo_order": 3, "repeats": 2, "memory_steps": 20}
# Shared by both presets: the paper's theta = 1 s, nengo's dt and a 100 ms synapse.
COMMON = {"theta": 1.0, "dt": 0.001, "tau": 0.1, "cutoff": 2.0, "mapping": "discrete", "eval_points": "ball",
          "reg": 0.1}


class SpikingError(Exception):
    """A usage problem; the message says what to do."""


# ------------------------------------------------------------------------------------------------ measuring
def nrmse(estimate: torch.Tensor, target: torch.Tensor, scale: float) -> float:
    """RMS of ``estimate - target`` over every entry, divided by ``scale``."""
    return float((estimate - target).pow(2).mean().sqrt()) / scale


class Task:
    """The inputs of one seed and the references every network of one order is scored against.

    Attributes:
        u: ``(signals, steps)`` float64 inputs; ``warmup``: unscored steps; ``rms``: RMS of u over the scored steps;
        radius: the ball's radius (largest ideal state norm on a separate draw of the same input process);
        lmu: ``(signals, scored, 1)`` the exact LMU's u(t - theta) through the readout; ideal: the true delay.
    """

    def __init__(self, config: dict[str, Any], order: int, seed: int):
        theta, dt = config["theta"], config["dt"]
        self.order, self.seed = order, seed
        steps = int(round(config["duration"] / dt))
        self.u = band_limited_noise(config["signals"], steps, dt, config["cutoff"], seed=1000 + seed)
        self.warmup = int(round((theta + 5 * config["tau"]) / dt))
        if self.warmup >= steps:
            raise SpikingError(f"duration {config['duration']} s must exceed theta + 5 tau = {self.warmup * dt:g} s")
        self.rms = float(self.u[:, self.warmup:].pow(2).mean().sqrt())
        # The radius comes from another draw of the input process, the same for every seed of this order.
        probe = band_limited_noise(4, max(steps, int(round(10 * theta / dt))), dt, config["cutoff"], seed=999)
        self.radius = memory_radius(order, theta, dt, probe)
        self.eval_states = self._state_sample(config, probe)
        self.memory = None  # filled by the first network: the exact LMU through its readout

    def _state_sample(self, config: dict[str, Any], probe: torch.Tensor) -> Optional[torch.Tensor]:
        """Ideal memory states on the probe draw (after its first theta), for ``eval_points="states"``."""
        if config["eval_points"] != "states":
            return None
        A_bar, B_bar = discretize(self.order, config["theta"], config["dt"], "zoh")
        skip = int(round(config["theta"] / config["dt"]))
        states = linear_memory(A_bar[0], B_bar[0], probe)[:, skip:].reshape(-1, self.order)
        n_eval = int(np.clip(500 * self.order, 750, 2500))
        pick = torch.randperm(states.shape[0], generator=torch.Generator().manual_seed(self.seed))[:n_eval]
        return states[pick]

    def delayed(self, net: SpikingLMUMemory, memory: torch.Tensor) -> torch.Tensor:
        """u(t - theta) ``(signals, scored, 1)`` decoded from a memory trajectory, scored steps only."""
        return net.decode(memory[:, self.warmup:], [net.theta])

    def references(self, net: SpikingLMUMemory) -> tuple[torch.Tensor, torch.Tensor]:
        """(LMU's u(t - theta), ideal u(t - theta)), each ``(signals, scored, 1)``, as the readout sees them."""
        if self.memory is None:
            self.memory = self.delayed(net, net.reference(self.u))
            lag = int(round(net.theta / net.dt)) + 1  # x_hat_t follows m_{t-1}, which holds u(t - 1 - theta/dt)
            ideal = lowpass(delay_steps(self.u[:, :, None], lag), net.readout_tau, net.dt)
            self.ideal = ideal[:, self.warmup:].to(self.memory.device)
        return self.memory, self.ideal


def build(config: dict[str, Any], task: Task, m: int, device: torch.device) -> tuple[SpikingLMUMemory, float]:
    """The network of one (order, m, seed) and its construction time in seconds."""
    start = time.perf_counter()
    net = SpikingLMUMemory(task.order, config["theta"], m, tau=config["tau"], dt=config["dt"],
                           mapping=config["mapping"], radius=task.radius, reg=config["reg"], seed=task.seed,
                           device=device, eval_points=task.eval_states)
    return net, time.perf_counter() - start


def timed_simulation(net: SpikingLMUMemory, u: torch.Tensor, neuron: str,
                     generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, float]:
    """The decoded memory of a run and its seconds per step."""
    _sync(net.device)
    start = time.perf_counter()
    decoded, _ = net.simulate(u, neuron=neuron, generator=generator)
    _sync(net.device)
    return decoded, (time.perf_counter() - start) / u.shape[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_bytes(net: SpikingLMUMemory, u: torch.Tensor, steps: int) -> int:
    """Bytes that grow with m: the simulation's parameter tensors plus the peak of tensors alive in a short run."""
    if net.device.type == "cuda":
        torch.cuda.synchronize(net.device)
        before = torch.cuda.memory_allocated(net.device)
        torch.cuda.reset_peak_memory_stats(net.device)
        net.simulate(u[:, :steps])
        torch.cuda.synchronize(net.device)
        peak = torch.cuda.max_memory_allocated(net.device) - before
    else:
        _, peak = peak_tensor_bytes(lambda: net.simulate(u[:, :steps]))
    return net.parameter_bytes() + peak


def measure(config: dict[str, Any], task: Task, m: int, device: torch.device) -> dict[str, Any]:
    """Errors, time and memory of one (order, m, seed): the Poisson network and the rate network."""
    net, build_seconds = build(config, task, m, device)
    lmu, ideal = task.references(net)
    decoded, seconds = timed_simulation(net, task.u, "poisson")
    rate_decoded, rate_seconds = timed_simulation(net, task.u, "rate")
    estimate, rate_estimate = task.delayed(net, decoded), task.delayed(net, rate_decoded)
    reference_state = net.reference(task.u)[:, task.warmup:]
    state_scale = float(reference_state.pow(2).sum(-1).mean().sqrt())
    return {
        "order": task.order, "n_neurons": m, "seed": task.seed,
        "nrmse_lmu": nrmse(estimate, lmu, task.rms), "nrmse_ideal": nrmse(estimate, ideal, task.rms),
        "rate_nrmse_lmu": nrmse(rate_estimate, lmu, task.rms),
        "rate_nrmse_ideal": nrmse(rate_estimate, ideal, task.rms),
        "lmu_nrmse_ideal": nrmse(lmu, ideal, task.rms),
        "state_nrmse_lmu": float((decoded[:, task.warmup:] - reference_state).pow(2).sum(-1).mean().sqrt())
        / state_scale,
        "fit_error_rms": float(net.fit_error.pow(2).mean().sqrt()) / net.radius,
        "radius": net.radius, "n_eval": net.n_eval, "build_seconds": build_seconds,
        "seconds_per_step": seconds, "rate_seconds_per_step": rate_seconds, "batch": task.u.shape[0],
        "memory_bytes": memory_bytes(net, task.u, config["memory_steps"]), "parameter_bytes": net.parameter_bytes(),
    }


# ------------------------------------------------------------------------------------------------ nengo
def compare_nengo(config: dict[str, Any], m: int, device: torch.device) -> dict[str, Any]:
    """Seconds per step and error distributions of our simulator and nengo's on the same exported network.

    Both run every signal alone, ``repeats`` times with different spike seeds; errors are paired by signal and
    repeat, and ``t_paired`` is the mean difference over its standard error.
    """
    import nengo

    task = Task(config, config["nengo_order"], 0)
    net, _ = build(config, task, m, device)
    lmu, _ = task.references(net)
    ours, theirs, ours_seconds, theirs_seconds = [], [], [], []
    for i in range(task.u.shape[0]):
        signal = task.u[i:i + 1]
        for repeat in range(config["repeats"]):
            generator = torch.Generator(device=net.device).manual_seed(10_000 + 100 * i + repeat)
            decoded, seconds = timed_simulation(net, signal, "poisson", generator)
            ours.append(nrmse(task.delayed(net, decoded), lmu[i:i + 1], task.rms))
            ours_seconds.append(seconds)
            network = net.to_nengo(signal, seed=20_000 + 100 * i + repeat)  # its seed drives nengo's spike RNG
            with nengo.Simulator(network, dt=net.dt, progress_bar=False) as sim:
                start = time.perf_counter()
                sim.run_steps(signal.shape[1])
                theirs_seconds.append((time.perf_counter() - start) / signal.shape[1])
                probed = torch.from_numpy(np.array(sim.data[network.probe_decoded], dtype=np.float64))[None]
            theirs.append(nrmse(task.delayed(net, probed.to(net.device)), lmu[i:i + 1], task.rms))
    diff = np.asarray(theirs) - np.asarray(ours)
    se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    ours_step, theirs_step = float(np.median(ours_seconds)), float(np.median(theirs_seconds))
    return {"order": task.order, "n_neurons": m, "runs": len(ours), "ours_nrmse": ours, "nengo_nrmse": theirs,
            "ours_mean": float(np.mean(ours)), "nengo_mean": float(np.mean(theirs)),
            "ours_std": float(np.std(ours, ddof=1)) if len(ours) > 1 else 0.0,
            "nengo_std": float(np.std(theirs, ddof=1)) if len(theirs) > 1 else 0.0,
            "t_paired": float(diff.mean() / se) if se > 0 else 0.0,
            "ours_seconds_per_step": ours_step, "nengo_seconds_per_step": theirs_step,
            "speedup": theirs_step / ours_step}


# ------------------------------------------------------------------------------------------------ fits
def affine_time(sizes: list[int], seconds: list[float]) -> dict[str, float]:
    """seconds per step = fixed + per_neuron * m by least squares: the fixed cost of a step and the cost per neuron."""
    coef, se = least_squares([np.asarray(sizes, dtype=float)], np.asarray(seconds, dtype=float))
    return {"seconds_fixed": float(coef[0]), "seconds_per_neuron": float(coef[1]), "se_per_neuron": float(se[1])}


def fit_all(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exponents of error, time and memory against m per order, and the joint fit in m and d."""
    fits: dict[str, Any] = {"per_order": {}}
    for order in sorted({r["order"] for r in rows}):
        mine = [r for r in rows if r["order"] == order]
        ms = [r["n_neurons"] for r in mine]
        # The spike-noise part is defined only where spikes add error over rates; the runs left out are counted.
        noise = [(r["n_neurons"], math.sqrt(r["nrmse_lmu"] ** 2 - r["rate_nrmse_lmu"] ** 2)) for r in mine
                 if r["nrmse_lmu"] > r["rate_nrmse_lmu"]]
        # Time: the fastest seed per m (other jobs on the machine only ever add time); memory: every run.
        sizes = sorted(set(ms))
        fastest = [min(r["seconds_per_step"] for r in mine if r["n_neurons"] == m) for m in sizes]
        top = [r for r in mine if r["n_neurons"] in sizes[-3:]]
        fits["per_order"][str(order)] = {
            "error": loglog_slope(ms, [r["nrmse_lmu"] for r in mine]),
            "rate_error": loglog_slope(ms, [r["rate_nrmse_lmu"] for r in mine]),
            "noise_error": loglog_slope([n for n, _ in noise], [e for _, e in noise]),
            "noise_error_runs_left_out": len(mine) - len(noise),
            "error_times_sqrt_m": float(np.exp(np.mean([math.log(r["nrmse_lmu"] * math.sqrt(r["n_neurons"]))
                                                        for r in mine]))),
            "time": loglog_slope(sizes, fastest),
            "time_largest": loglog_slope(sizes[-3:], fastest[-3:]),
            "time_affine": affine_time(sizes, fastest),
            "memory": loglog_slope(ms, [r["memory_bytes"] for r in mine]),
            "memory_largest": loglog_slope([r["n_neurons"] for r in top], [r["memory_bytes"] for r in top]),
        }
    y = np.log([r["nrmse_lmu"] for r in rows])
    log_m = np.log([float(r["n_neurons"]) for r in rows])
    log_d = np.log([float(r["order"]) for r in rows])
    if len({r["order"] for r in rows}) > 1 and len({r["n_neurons"] for r in rows}) > 1:
        coef, se = least_squares([log_m, log_d], y)
        fits["joint"] = {"exponent_m": float(coef[1]), "se_m": float(se[1]), "exponent_d": float(coef[2]),
                         "se_d": float(se[2]), "points": len(y)}
    return fits


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (an undetermined fit) replaced by None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_errors(rows: list[dict[str, Any]], fits: dict[str, Any], path: Path) -> Path:
    """nrmse against the LMU vs m, log-log: Poisson (points per seed, mean line, fit) and rate network per d."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for k, order in enumerate(sorted({r["order"] for r in rows})):
        mine = [r for r in rows if r["order"] == order]
        ms = sorted({r["n_neurons"] for r in mine})
        mean = [np.exp(np.mean([np.log(r["nrmse_lmu"]) for r in mine if r["n_neurons"] == m])) for m in ms]
        rate = [np.exp(np.mean([np.log(r["rate_nrmse_lmu"]) for r in mine if r["n_neurons"] == m])) for m in ms]
        fit = fits["per_order"][str(order)]["error"]
        ax.loglog([r["n_neurons"] for r in mine], [r["nrmse_lmu"] for r in mine], ".", color=f"C{k}", alpha=0.5)
        ax.loglog(ms, mean, "o-", color=f"C{k}", label=f"d={order} Poisson: slope {fit['exponent']:.3f} "
                                                     f"± {fit['se']:.3f}")
        ax.loglog(ms, rate, "s--", color=f"C{k}", alpha=0.6, markersize=4, label=f"d={order} rate neurons")
        if math.isfinite(fit["exponent"]):
            grid = np.array([ms[0], ms[-1]], dtype=float)
            ax.loglog(grid, np.exp(fit["intercept"]) * grid ** fit["exponent"], ":", color=f"C{k}")
    if rows:
        ms = np.array(sorted({r["n_neurons"] for r in rows}), dtype=float)
        anchor = np.exp(np.mean(np.log([r["nrmse_lmu"] for r in rows if r["n_neurons"] == ms[0]])))
        ax.loglog(ms, anchor * (ms / ms[0]) ** -0.5, color="gray", linewidth=0.8, label="slope -1/2")
    ax.set_xlabel("neurons m")
    ax.set_ylabel("nrmse of u(t - θ) vs the non-spiking LMU")
    ax.set_title("Spiking LMU: error against m (dotted: least-squares fits)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_cost(rows: list[dict[str, Any]], nengo_rows: list[dict[str, Any]], fits: dict[str, Any],
              path: Path) -> Path:
    """Left: seconds per step vs m per d (and nengo's). Right: memory bytes vs m per d."""
    plt = _plt()
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for k, order in enumerate(sorted({r["order"] for r in rows})):
        mine = [r for r in rows if r["order"] == order]
        ms = sorted({r["n_neurons"] for r in mine})
        fastest = [min(r["seconds_per_step"] for r in mine if r["n_neurons"] == m) for m in ms]
        memory = [max(r["memory_bytes"] for r in mine if r["n_neurons"] == m) for m in ms]
        per_order = fits["per_order"][str(order)]
        ax_time.loglog(ms, fastest, "o-", color=f"C{k}", label=f"d={order}, batch {mine[0]['batch']} (fastest seed): "
                                                             f"slope {per_order['time']['exponent']:.2f}")
        ax_mem.loglog(ms, memory, "o-", color=f"C{k}", label=f"d={order}: slope {per_order['memory']['exponent']:.2f}")
    if nengo_rows:
        ns = [r["n_neurons"] for r in nengo_rows]
        order = nengo_rows[0]["order"]
        ax_time.loglog(ns, [r["ours_seconds_per_step"] for r in nengo_rows], "^-", color="black",
                       label=f"ours, d={order}, one signal")
        ax_time.loglog(ns, [r["nengo_seconds_per_step"] for r in nengo_rows], "v--", color="gray",
                       label=f"nengo reference, d={order}, one signal")
    for ax, label in ((ax_time, "seconds per step"), (ax_mem, "bytes (parameters + simulation peak)")):
        ax.set_xlabel("neurons m")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_time.set_title("time per simulated step")
    ax_mem.set_title("memory")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ run
def make_config(quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """The run's configuration (config.json): the full or quick preset with non-None ``overrides``."""
    config = {**(QUICK if quick else FULL), **COMMON}
    config.update({k: v for k, v in overrides.items() if v is not None and k in config})
    config.update({"experiment": EXPERIMENT, "quick": quick, "contime_version": __version__})
    return config


def check_config(config: dict[str, Any]) -> None:
    """Raise SpikingError for settings the run cannot use."""
    if min(config["neurons"]) < max(config["orders"]):
        raise SpikingError(f"every neuron count must be >= every order: neurons {config['neurons']}, orders "
                           f"{config['orders']}")
    if config["nengo_neurons"] and min(config["nengo_neurons"]) < config["nengo_order"]:
        raise SpikingError(f"nengo neuron counts must be >= the nengo order {config['nengo_order']}")
    warmup = config["theta"] + 5 * config["tau"]
    if config["duration"] <= warmup:
        raise SpikingError(f"--duration {config['duration']:g} s must exceed theta + 5 tau = {warmup:g} s (the "
                           "unscored start)")
    if config["mapping"] not in MAPPINGS:
        raise SpikingError(f"mapping must be one of {MAPPINGS}, got {config['mapping']!r}")
    if config["eval_points"] not in EVAL_POINTS:
        raise SpikingError(f"eval points must be one of {EVAL_POINTS}, got {config['eval_points']!r}")


def results_table(rows: list[dict[str, Any]], fits: dict[str, Any]) -> Table:
    table = Table(title="Spiking LMU: nrmse of u(t - θ) (vs LMU, vs ideal delay), mean over seeds; cost per step")
    for column in ("d", "m", "Poisson vs LMU", "rate vs LMU", "Poisson vs ideal", "LMU vs ideal", "err·√m",
                   "ms/step", "MiB"):
        table.add_column(column, justify="right")
    for order in sorted({r["order"] for r in rows}):
        for m in sorted({r["n_neurons"] for r in rows if r["order"] == order}):
            cell = [r for r in rows if r["order"] == order and r["n_neurons"] == m]

            def mean(key):
                return sum(r[key] for r in cell) / len(cell)

            table.add_row(str(order), f"{m:,}", f"{mean('nrmse_lmu'):.4f}", f"{mean('rate_nrmse_lmu'):.4f}",
                          f"{mean('nrmse_ideal'):.4f}", f"{mean('lmu_nrmse_ideal'):.4f}",
                          f"{mean('nrmse_lmu') * math.sqrt(m):.2f}", f"{mean('seconds_per_step') * 1e3:.3f}",
                          f"{mean('memory_bytes') / 2 ** 20:.2f}")
    return table


def fits_table(fits: dict[str, Any]) -> Table:
    table = Table(title="Fitted exponents against m (least squares on log-log, ± standard error)")
    for column in ("d", "Poisson error", "rate error", "spike-noise part", "err·√m", "time", "time (3 largest m)",
                   "step: fixed ms + ns/neuron", "memory"):
        table.add_column(column, justify="right")

    def show(fit):
        if not math.isfinite(fit["exponent"]):
            return "-"
        return f"{fit['exponent']:.3f} ± {fit['se']:.3f}" if math.isfinite(fit["se"]) else f"{fit['exponent']:.3f}"

    for order, fit in fits["per_order"].items():
        affine = fit["time_affine"]
        table.add_row(order, show(fit["error"]), show(fit["rate_error"]), show(fit["noise_error"]),
                      f"{fit['error_times_sqrt_m']:.2f}", show(fit["time"]), show(fit["time_largest"]),
                      f"{affine['seconds_fixed'] * 1e3:.3f} + {affine['seconds_per_neuron'] * 1e9:.1f}",
                      show(fit["memory"]))
    return table


def nengo_table(nengo_rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Same network in nengo's reference simulator (one signal per run)")
    for column in ("d", "m", "ours ms/step", "nengo ms/step", "speedup", "ours nrmse", "nengo nrmse", "paired t"):
        table.add_column(column, justify="right")
    for r in nengo_rows:
        table.add_row(str(r["order"]), f"{r['n_neurons']:,}", f"{r['ours_seconds_per_step'] * 1e3:.3f}",
                      f"{r['nengo_seconds_per_step'] * 1e3:.3f}", f"{r['speedup']:.2f}x",
                      f"{r['ours_mean']:.4f} ± {r['ours_std']:.4f}", f"{r['nengo_mean']:.4f} ± {r['nengo_std']:.4f}",
                      f"{r['t_paired']:+.2f}")
    return table


def run_spiking(config: dict[str, Any], *, out_dir: str | Path = "runs", device: str = "cpu",
                console: Console | None = None, quiet: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """Measure every (order, m, seed) and the nengo comparison; write metrics.json and two plots."""
    console = console or Console()
    check_config(config)
    device = torch.device(device)
    run_path = open_run_dir(EXPERIMENT, config, out_dir)
    console.print(f"[bold]spiking[/bold]: m = {config['neurons']}, d = {config['orders']}, seeds {config['seeds']}, "
                  f"{config['signals']} x {config['duration']:g} s of {config['cutoff']:g} Hz noise, theta "
                  f"{config['theta']:g} s, {config['mapping']} mapping -> {run_path}")
    started = time.perf_counter()
    rows = []
    for order in config["orders"]:
        for seed in config["seeds"]:
            task = Task(config, order, seed)
            for m in config["neurons"]:
                row = measure(config, task, m, device)
                rows.append(row)
                if not quiet:
                    console.print(f"  d={order} m={m:>6,} seed {seed}: nrmse vs LMU {row['nrmse_lmu']:.4f} (rate "
                                  f"{row['rate_nrmse_lmu']:.4f}), vs ideal {row['nrmse_ideal']:.4f}; "
                                  f"{row['seconds_per_step'] * 1e3:.3f} ms/step, build {row['build_seconds']:.1f} s "
                                  f"[{time.perf_counter() - started:.0f} s]")
    nengo_rows = []
    for m in config["nengo_neurons"]:
        nengo_rows.append(compare_nengo(config, m, device))
        if not quiet:
            r = nengo_rows[-1]
            console.print(f"  nengo d={r['order']} m={m:,}: {r['nengo_seconds_per_step'] * 1e3:.3f} vs ours "
                          f"{r['ours_seconds_per_step'] * 1e3:.3f} ms/step [{time.perf_counter() - started:.0f} s]")
    fits = fit_all(rows)
    results = [result_record(f"spiking d={r['order']} m={r['n_neurons']}", r["n_neurons"], "nrmse", r["nrmse_lmu"],
                             seconds_per_epoch=None, epochs=0, **r) for r in rows]
    results += [result_record(f"nengo d={r['order']} m={r['n_neurons']}", r["n_neurons"], "nrmse", r["nengo_mean"],
                              seconds_per_epoch=None, epochs=0, **r) for r in nengo_rows]
    results += [result_record(f"fit d={order}", 0, "error_exponent_m", fit["error"]["exponent"], seconds_per_epoch=None,
                              epochs=0, order=int(order), claim=-0.5, **{k: v for k, v in fit.items()})
                for order, fit in fits["per_order"].items()]
    seconds = time.perf_counter() - started
    write_metrics(run_path, EXPERIMENT, finite_json({**config, "fits": fits, "wall_seconds": seconds}),
                  finite_json(results))
    plot_errors(rows, fits, run_path / "error_vs_neurons.png")
    plot_cost(rows, nengo_rows, fits, run_path / "cost_vs_neurons.png")
    console.print(results_table(rows, fits))
    console.print(fits_table(fits))
    if "joint" in fits:
        joint = fits["joint"]
        console.print(f"joint fit: nrmse ~ m^({joint['exponent_m']:.3f} ± {joint['se_m']:.3f}) "
                      f"d^({joint['exponent_d']:.3f} ± {joint['se_d']:.3f})  (claim: m^-0.5 d^1)")
    if nengo_rows:
        console.print(nengo_table(nengo_rows))
    console.print(f"wrote {run_path}/metrics.json, error_vs_neurons.png, cost_vs_neurons.png ({seconds:.0f} s)")
    return run_path, results


def command(
    quick: bool = typer.Option(False, "--quick", help="m = 64, 128, 256, d = 3, 6, one seed, short signals."),
    neurons: Optional[str] = typer.Option(None, "--neurons", help="Neuron counts, e.g. 256,4096 (default "
                                          f"{','.join(map(str, FULL['neurons']))})."),
    orders: Optional[str] = typer.Option(None, "--orders", help="Memory orders, e.g. 3,6,12."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds, e.g. 0,1,2 (networks and inputs)."),
    nengo_neurons: Optional[str] = typer.Option(None, "--nengo-neurons", help="Neuron counts run in nengo too "
                                                "(default 256,1024,4096)."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.1, help="Seconds per input signal."),
    mapping: Optional[str] = typer.Option(None, "--mapping", help="discrete (exact ZOH) or lowpass (continuous)."),
    eval_points: Optional[str] = typer.Option(None, "--eval-points", help="ball (uniform, the NEF default) or "
                                              "states (the ideal memory's states on the input process)."),
    device: str = typer.Option("cpu", "--device", help="Simulation device (cpu, cuda)."),
    threads: int = typer.Option(1, "--threads", min=0, help="torch CPU threads during the run (0: torch's default)."),
    quiet: bool = QUIET_OPTION,
    out_dir: str = OUT_DIR_OPTION,
) -> None:
    """The LMU memory in m Poisson neurons: error against m and d (claim O(d/sqrt(m))), cost (claim O(m)), nengo."""
    config = make_config(quick, neurons=parse_ints(neurons, "--neurons"), orders=parse_ints(orders, "--orders"),
                         seeds=parse_seeds(seeds), nengo_neurons=parse_ints(nengo_neurons, "--nengo-neurons"),
                         duration=duration, mapping=mapping, eval_points=eval_points)
    console = command_console()
    with experiment_command(console, threads, SpikingError):
        run_spiking(config, out_dir=out_dir, device=device, console=console, quiet=quiet)
