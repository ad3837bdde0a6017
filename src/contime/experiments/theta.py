"""Learning theta: backpropagation through the discretization finds a layer's time scale.

The LMU abstract claims that backpropagating through the discretized memory lets each layer learn its own time
scale. This experiment gives a layer a task whose right time scale is known, starts its theta ten times too small
and ten times too large, and watches theta during training.

Task. Input: band-limited white noise u (``contime.data.band_limited_noise``) with period N steps (it is a finite
Fourier series), holding only the frequencies k / N, k = 1 .. K. Target: the input delayed by D steps, u(t - D)
(exact, by the periodicity). Model: one ``contime.LMU`` memory of order d (one dimension, no input kernel, no
hidden cell, ``trainable_theta=True``, "fft" mode) and a **fixed** Legendre readout at the end of its window,
theta' = theta (``legendre_readout`` at r = theta'/theta = 1: all ones), so the model's output approximates
u(t - theta). Theta is the only trainable parameter.

Why this design has an identifiable optimum at theta = D. The output is (up to the order-d approximation)
u(t - theta), so the expected loss is E[(u(t - theta) - u(t - D))^2] = 2 sum_k p_k (1 - cos(2 pi k (theta - D) / N)),
with p_k the power at frequency k / N. Every term is zero at theta = D and grows with |theta - D| as long as
|theta - D| <= N / (2k); K is chosen so that N / (2K) exceeds 9 D, the distance from D to 10 D. So in every
realisation of the noise, not only on average, the loss decreases monotonically towards theta = D from both starts
(D / 10 and 10 D): there is no other local minimum to stop in. The alternative, a learned linear readout with
target delay D, is not identifiable: any theta >= D lets the readout decode u(t - D), so the loss is nearly flat
above D and theta need not move down. Because the memory is order d, the decoded u(t - theta) is an approximation,
so the loss minimum is measured too: the loss on a log-spaced grid of theta (``theta_grid_argmin``) is recorded
and plotted beside D; for the default settings it lies at D to within the grid's spacing.

Each step draws fresh sequences (a new seed per step), feeds the last ``prefix`` steps of the period before the
period itself (so the memory has a full window of the periodic signal for any theta <= prefix), and scores the
N steps of the period. The final loss is measured on held-out sequences.

The step size. The gradient with respect to theta differs by orders of magnitude between the two starts (the loss
is flat far below D, steep above it), and a fixed step in theta moves 2.5 -> 25 in a tenth of the steps that
250 -> 25 takes. Adam removes the gradient's scale; its step, about the learning rate, is then made relative:
before every step the theta group's learning rate is set to ``lr * theta``, so each step changes log theta by at
most about ``lr``. Both starts then need about log(10) / lr steps. ``lr`` follows a cosine decay to
``lr * min_lr_ratio``, so theta settles instead of jittering by ``lr`` around the minimum.

    contime run theta            # 2 x 300 steps, about 15 s on 2 CPU cores
    contime run theta --quick    # 2 x 150 steps on a shorter period, seconds
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from .. import __version__
from ..data.delay import band_limited_noise
from ..legendre import legendre_readout
from ..lmu import LMU
from .rundir import (OUT_DIR_OPTION, command_console, experiment_command, open_run_dir, positive_lr, result_record,
                     write_metrics)

EXPERIMENT = "theta"
STARTS = {"below": 0.1, "above": 10.0}  # initial theta as a multiple of the true delay
# A short second-moment memory: the gradient shrinks by orders of magnitude on the way down from 10 D, and with
# the usual beta2 = 0.999 the early, large gradients keep Adam's steps tiny near the minimum for hundreds of steps.
BETAS = (0.9, 0.9)

FULL = {"delay": 25, "order": 6, "period": 8192, "n_freqs": 16, "batch_size": 8, "steps": 300, "lr": 0.05,
        "min_lr_ratio": 0.02, "grid_points": 81, "n_eval": 16}
QUICK = {"delay": 25, "order": 6, "period": 4096, "n_freqs": 8, "batch_size": 4, "steps": 150, "lr": 0.08,
         "min_lr_ratio": 0.05, "grid_points": 21, "n_eval": 4}


class ThetaError(Exception):
    """A usage problem (nothing to resume, other settings than the stored run); the message says what to do."""


class DelayByTheta(nn.Module):
    """An LMU memory with a trainable theta and a fixed readout of u(t - theta): ``(batch, time)`` -> same.

    The readout decodes the end of the window, theta' = theta, whatever theta is: ``y = sum_i P~_i(1) m_i``.
    """

    def __init__(self, order: int, theta: float, mode: str = "fft"):
        super().__init__()
        self.lmu = LMU(1, 1, order, theta, None, input_kernel=False, trainable_theta=True, mode=mode)
        self.register_buffer("readout", legendre_readout(order, [1.0], 1.0)[0].to(torch.get_default_dtype()))

    @property
    def theta(self) -> nn.Parameter:
        return self.lmu.theta

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        memory, _ = self.lmu(u.unsqueeze(-1))  # (batch, time, order)
        return memory @ self.readout.to(memory.dtype)


def make_batch(config: dict[str, Any], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(n, prefix + N)`` (the period's last ``prefix`` steps, then the period) and targets ``(n, N)``,
    u(t - delay) for each step t of the period, float32."""
    period = config["period"]
    u = band_limited_noise(n, period, 1.0, config["n_freqs"] / period, seed=seed)  # (n, N) float64, periodic
    x = torch.cat([u[:, period - config["prefix"]:], u], dim=1)
    y = torch.roll(u, config["delay"], dims=1)  # y[:, t] = u[:, t - delay], periodically
    return x.float(), y.float()


def loss_of(model: DelayByTheta, x: torch.Tensor, y: torch.Tensor, prefix: int) -> torch.Tensor:
    """Mean squared error over the scored period (the steps after the prefix)."""
    return (model(x)[:, prefix:] - y).pow(2).mean()


def loss_landscape(config: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
    """The loss on ``grid_points`` log-spaced thetas from delay / 20 to delay * 20 (no training)."""
    delay, points = config["delay"], config["grid_points"]
    thetas = [delay * 20.0 ** (2.0 * k / (points - 1) - 1.0) for k in range(points)]
    model = DelayByTheta(config["order"], thetas[0])
    losses = []
    with torch.no_grad():
        for theta in thetas:
            model.theta.fill_(theta)
            losses.append(float(loss_of(model, x, y, config["prefix"])))
    return thetas, losses


def refine_minimum(config: dict[str, Any], x: torch.Tensor, y: torch.Tensor, low: float, high: float,
                   iterations: int = 30) -> float:
    """The loss-minimising theta in [low, high] by golden-section search (the loss is unimodal there)."""
    model = DelayByTheta(config["order"], low)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss_at(theta: float) -> float:
        model.theta.fill_(theta)
        return float(loss_of(model, x, y, config["prefix"]))

    with torch.no_grad():
        a, b = low, high
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        fc, fd = loss_at(c), loss_at(d)
        for _ in range(iterations):
            if fc < fd:
                b, d, fd = d, c, fc
                c = b - ratio * (b - a)
                fc = loss_at(c)
            else:
                a, c, fc = c, d, fd
                d = a + ratio * (b - a)
                fd = loss_at(d)
    return 0.5 * (a + b)


def cosine(step: int, steps: int, lr: float, min_ratio: float) -> float:
    progress = step / max(steps - 1, 1)
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_theta(config: dict[str, Any], start: str, eval_batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Train theta from ``STARTS[start] * delay``; returns its trajectory and the held-out loss before and after."""
    delay = config["delay"]
    theta0 = STARTS[start] * delay
    model = DelayByTheta(config["order"], theta0)
    optimizer = torch.optim.Adam([{"params": [model.theta], "lr": config["lr"] * theta0}], betas=BETAS)
    x_eval, y_eval = eval_batch
    with torch.no_grad():
        initial_loss = float(loss_of(model, x_eval, y_eval, config["prefix"]))
    thetas, losses = [theta0], []
    start_time = time.perf_counter()
    for step in range(config["steps"]):
        x, y = make_batch(config, config["batch_size"], seed=config["seed"] * 1_000_003 + 1 + step)
        loss = loss_of(model, x, y, config["prefix"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Relative step: Adam's update is about lr_group in theta, so lr * theta moves log theta by about lr.
        optimizer.param_groups[0]["lr"] = cosine(step, config["steps"], config["lr"], config["min_lr_ratio"]) * \
            float(model.theta.detach())
        optimizer.step()
        with torch.no_grad():
            model.theta.clamp_(min=1e-3)  # theta must stay > 0; never reached with the default settings
        thetas.append(float(model.theta.detach()))
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start_time
    with torch.no_grad():
        final_loss = float(loss_of(model, x_eval, y_eval, config["prefix"]))
    final = thetas[-1]
    return {"start": start, "theta_initial": theta0, "theta_final": final, "theta_true": float(delay),
            "log_error_initial": abs(math.log(theta0 / delay)), "log_error_final": abs(math.log(final / delay)),
            "initial_loss": initial_loss, "final_loss": final_loss, "seconds": seconds,
            "theta_trajectory": thetas, "loss_trajectory": losses}


def plot_theta(runs: list[dict[str, Any]], grid: tuple[list[float], list[float]], config: dict[str, Any],
               loss_min: float, path: Path) -> Path:
    """Left: theta per step (log y) for both starts, the true delay as a line. Right: the loss landscape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_theta, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    delay = config["delay"]
    for k, run in enumerate(runs):
        ax_theta.semilogy(run["theta_trajectory"], color=f"C{k}",
                          label=f"start {run['theta_initial']:g} ({run['start']})")
    ax_theta.axhline(delay, color="black", linestyle="--", label=f"true delay D = {delay}")
    ax_theta.axhline(loss_min, color="gray", linestyle=":", label=f"loss minimum {loss_min:.2f}")
    ax_theta.set_xlabel("optimizer step")
    ax_theta.set_ylabel("theta (steps)")
    ax_theta.set_title("theta during training (Adam, relative step)")
    ax_theta.grid(True, which="both", alpha=0.3)
    ax_theta.legend(fontsize=8)

    thetas, losses = grid
    ax_loss.loglog(thetas, losses, color="gray", marker=".", label="held-out loss")
    ax_loss.axvline(delay, color="black", linestyle="--", label="D")
    for k, run in enumerate(runs):
        ax_loss.plot([run["theta_initial"]], [run["initial_loss"]], marker="o", fillstyle="none", color=f"C{k}")
        ax_loss.plot([run["theta_final"]], [run["final_loss"]], marker="*", markersize=12, color=f"C{k}",
                     label=f"{run['start']}: final")
    ax_loss.set_xlabel("theta (steps)")
    ax_loss.set_ylabel("MSE of u(t - D)")
    ax_loss.set_title("loss landscape (o: start, *: end)")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def make_config(quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """The run's configuration (config.json): the full or quick preset with non-None ``overrides``."""
    config = dict(QUICK if quick else FULL)
    config.update({k: v for k, v in overrides.items() if v is not None and k in config})
    config["prefix"] = min(config["period"], 1 << math.ceil(math.log2(40 * config["delay"])))
    config.update({"experiment": EXPERIMENT, "quick": quick, "seed": overrides.get("seed") or 0,
                   "starts": dict(STARTS), "mode": "fft", "optimizer": "adam", "betas": list(BETAS), "theta_lr": "lr * theta (relative)",
                   "schedule": "cosine", "contime_version": __version__})
    return config


def check_config(config: dict[str, Any]) -> None:
    """Raise ValueError unless the task keeps the loss monotone between delay / 10 and 10 * delay."""
    reach = config["period"] / (2 * config["n_freqs"])
    if reach < 9 * config["delay"]:
        raise ValueError(f"period / (2 n_freqs) = {reach:g} must be >= 9 * delay = {9 * config['delay']}: otherwise "
                         f"the loss is not monotone between delay / 10 and 10 * delay")
    if config["n_freqs"] >= config["period"] // 2:
        raise ValueError(f"n_freqs must be below period / 2 = {config['period'] // 2}, got {config['n_freqs']}")


@dataclass
class ThetaRun:
    run_dir: Path
    config: dict[str, Any]
    results: list[dict[str, Any]]


def results_table(runs: list[dict[str, Any]], argmin: float, config: dict[str, Any]) -> Table:
    table = Table(title=f"Learning theta: target u(t - {config['delay']}), order {config['order']}, "
                        f"{config['steps']} Adam steps (held-out loss minimum: theta = {argmin:.3f})")
    for column in ("start", "theta 0", "theta end", "true", "|log err| 0", "|log err| end", "loss 0", "loss end",
                   "s"):
        table.add_column(column, justify="left" if column == "start" else "right")
    for run in runs:
        table.add_row(run["start"], f"{run['theta_initial']:.4g}", f"{run['theta_final']:.4g}",
                      f"{run['theta_true']:g}", f"{run['log_error_initial']:.3f}", f"{run['log_error_final']:.4f}",
                      f"{run['initial_loss']:.3e}", f"{run['final_loss']:.3e}", f"{run['seconds']:.1f}")
    return table


def run_theta(config: dict[str, Any], *, out_dir: str | Path = "runs", resume: bool = False,
              run_dir: str | Path | None = None, console: Console | None = None) -> ThetaRun:
    """Train theta from both starts; write metrics.json and theta.png. A resumed run starts the training over
    (it takes a minute) in the same folder, after checking that the settings are the stored ones."""
    console = console or Console()
    try:
        run_path = open_run_dir(EXPERIMENT, config, out_dir, resume=resume, run_dir=run_dir)
    except (FileNotFoundError, ValueError) as err:
        raise ThetaError(str(err)) from err
    console.print(f"[bold]theta[/bold]: target u(t - {config['delay']}), LMU order {config['order']}, noise with "
                  f"{config['n_freqs']} frequencies per period of {config['period']:,} steps, batch "
                  f"{config['batch_size']}, {config['steps']} steps per start -> {run_path}")
    eval_batch = make_batch(config, config["n_eval"], seed=config["seed"] * 1_000_003)  # the step seeds are > it
    grid = loss_landscape(config, *eval_batch)
    best = min(range(len(grid[1])), key=grid[1].__getitem__)
    argmin = refine_minimum(config, *eval_batch, grid[0][max(best - 1, 0)], grid[0][min(best + 1, len(grid[0]) - 1)])
    runs = []
    for start in STARTS:
        run = train_theta(config, start, eval_batch)
        console.print(f"  start {run['theta_initial']:g}: theta {run['theta_final']:.4g} after {config['steps']} "
                      f"steps ({run['seconds']:.1f} s), loss {run['initial_loss']:.3e} -> {run['final_loss']:.3e}")
        runs.append(run)
    results = [result_record(f"LMU theta from {run['start']}", 1, "mse", run["final_loss"], seconds_per_epoch=None,
                             epochs=0, steps=config["steps"], theta_loss_min=argmin,
                             log_error_final_vs_loss_min=abs(math.log(run['theta_final'] / argmin)), **run) for run in runs]
    write_metrics(run_path, EXPERIMENT, {**config, "landscape": {"theta": grid[0], "loss": grid[1],
                                                                  "theta_loss_min": argmin}}, results)
    plot_theta(runs, grid, config, argmin, run_path / "theta.png")
    console.print(results_table(runs, argmin, config))
    moved = all(r["log_error_final"] < r["log_error_initial"] for r in runs)
    console.print(f"theta moved towards the true delay from both sides: {'yes' if moved else 'NO'}")
    console.print(f"wrote {run_path}/metrics.json, theta.png")
    return ThetaRun(run_path, config, results)


def command(
    quick: bool = typer.Option(False, "--quick", help="150 steps per start on a shorter period: seconds."),
    delay: Optional[int] = typer.Option(None, "--delay", min=1, help=f"The true delay D in steps (default "
                                        f"{FULL['delay']}); theta starts at D / 10 and 10 D."),
    order: Optional[int] = typer.Option(None, "--order", min=1, help=f"Memory order (default {FULL['order']})."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help=f"Adam steps per start (default "
                                        f"{FULL['steps']})."),
    lr: Optional[float] = typer.Option(None, "--lr", callback=positive_lr,
                                       help=f"Peak relative step (> 0): the theta group's learning rate is lr * theta "
                                       f"(default {FULL['lr']:g})."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Fresh sequences per step."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the noise."),
    threads: int = typer.Option(1, "--threads", min=0, help="torch CPU threads during the run (0: torch's default)."),
    resume: bool = typer.Option(False, "--resume", help="Rerun into the newest run folder (same settings)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Rerun into this run folder (implies --resume)."),
    out_dir: str = OUT_DIR_OPTION,
) -> None:
    """Learn theta by backprop: from 10x too small and 10x too large, theta moves to the task's delay."""
    config = make_config(quick, delay=delay, order=order, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    try:
        check_config(config)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--delay")
    console = command_console()
    with experiment_command(console, threads, ThetaError):
        run_theta(config, out_dir=out_dir, resume=resume or run_dir is not None, run_dir=run_dir, console=console)
