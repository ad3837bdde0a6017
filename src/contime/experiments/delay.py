"""The delay (capacity) experiment of the LMU paper for the untrained memory, "LMU-0".

An order-d LegT memory (the ``contime.LMU`` layer without input kernel or hidden cell, no training) reads
white noise band-limited to 10 Hz. The window is theta = 1 s, sampled with T steps (dt = theta / T), so
the layer's theta is T steps; each sequence is 2.5 T steps long. The analytic Legendre readout
(``contime.legendre_readout``) decodes u(t - theta') for five delays theta' in {0, 1/4, 1/2, 3/4, 1} theta,
and the test MSE against the true delayed input is taken over the steps t >= T, where the window is full.

The claim: the memory is a continuous-time system, so its error does not grow with T (the number of steps
in the window), here from 100 to 100,000.

A delay theta' is rounded to a whole number of steps d = round(theta' / theta * T); the readout and the target
u[t - d] both use that d (exact for the default T values, which are multiples of 4).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import __version__
from ..data.delay import band_limited_noise
from ..legendre import legendre_readout
from ..lmu import LMU
from .rundir import (OUT_DIR_OPTION, command_console, create_run_dir, parse_ints, result_record, write_config,
                     write_metrics)

EXPERIMENT = "delay"
MODEL = "LMU-0"
FULL_T_VALUES = (100, 1_000, 10_000, 100_000)
QUICK_T_VALUES = (100, 1_000)
DELAY_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
# The "fft" memory holds a few float64 / complex128 tensors of (batch, ~2 * steps, order) at once; measured
# peak resident memory is about 1 GB per sequence at order 100 and 250,000 steps, i.e. ~40 bytes per
# (step, order) entry. The estimate below uses 48 and a budget of 6 GiB to choose the batch size.
BYTES_PER_ENTRY = 48
MEMORY_BUDGET = 6 * 2**30


@dataclass(frozen=True)
class DelayConfig:
    """Configuration of one run (written to config.json).

    Attributes:
        order: Legendre order d of the memory.
        t_values: steps per window theta (the layer's theta in steps), one evaluation each.
        n_test: test sequences per T (>= 10).
        seed: data seed. The noise keeps the same frequencies for every T (k / (sequence_factor * theta),
            up to max_freq: 25 of them by default), drawn with this seed for every T, so each T samples the
            same continuous signals: the comparison across T is paired, and the quick run sees the full
            run's data.
        max_freq: band limit of the input noise in Hz.
        theta_seconds: window length theta in seconds (dt = theta_seconds / T).
        sequence_factor: sequence length in units of theta (2.5 T steps).
        delays: delays theta' as fractions of theta, in [0, 1].
        batch_size: sequences per forward call; 0 picks the largest that fits ``MEMORY_BUDGET``.
        quick: whether this is the quick configuration (recorded only).
    """

    order: int = 100
    t_values: tuple[int, ...] = FULL_T_VALUES
    n_test: int = 10
    seed: int = 0
    max_freq: float = 10.0
    theta_seconds: float = 1.0
    sequence_factor: float = 2.5
    delays: tuple[float, ...] = DELAY_FRACTIONS
    batch_size: int = 0
    quick: bool = False

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.order) or self.order < 1:
            raise ValueError(f"order must be an int >= 1, got {self.order!r}")
        if not self.t_values or not all(is_int(t) and t >= 1 for t in self.t_values):
            raise ValueError(f"t_values must be a non-empty list of ints >= 1, got {self.t_values!r}")
        if len(set(self.t_values)) != len(self.t_values):
            raise ValueError(f"t_values must not repeat a value, got {self.t_values!r}")
        if not is_int(self.n_test) or self.n_test < 10:
            raise ValueError(f"n_test must be an int >= 10, got {self.n_test!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if not is_int(self.batch_size) or self.batch_size < 0:
            raise ValueError(f"batch_size must be an int >= 0 (0 = automatic), got {self.batch_size!r}")
        if not self.delays or not all(0.0 <= float(f) <= 1.0 for f in self.delays):
            raise ValueError(f"delays must be fractions of theta in [0, 1], got {self.delays!r}")
        if not self.sequence_factor > 1.0:
            raise ValueError(f"sequence_factor must be > 1 (steps after the window fills), "
                             f"got {self.sequence_factor!r}")
        if not (self.max_freq > 0 and self.theta_seconds > 0):
            raise ValueError(f"max_freq and theta_seconds must be > 0, got {self.max_freq!r}, "
                             f"{self.theta_seconds!r}")
        # A window of T steps lasts theta_seconds, so a step is theta_seconds / T: the noise's band limit must
        # stay below that sampling's Nyquist frequency, T / (2 theta_seconds).
        too_few = [t for t in self.t_values if not self.max_freq < t / (2 * self.theta_seconds)]
        if too_few:
            raise ValueError(f"t_values must exceed 2 * max_freq * theta_seconds = "
                             f"{2 * self.max_freq * self.theta_seconds:g} steps per window (to sample "
                             f"{self.max_freq:g} Hz noise above its Nyquist rate), got {too_few}")

    @classmethod
    def preset(cls, quick: bool = False, **overrides: Any) -> "DelayConfig":
        """The full configuration, or the quick one (T = 100 and 1,000); ``None`` overrides are ignored."""
        base: dict[str, Any] = {"t_values": QUICK_T_VALUES, "quick": True} if quick else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        if "t_values" in base:
            base["t_values"] = tuple(base["t_values"])
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["t_values"] = list(self.t_values)
        out["delays"] = list(self.delays)
        return out


@dataclass
class TResult:
    """The outcome for one T: MSE per delay, the delays in steps, and timings."""

    T: int
    n_steps: int
    delay_steps: list[int]
    mse: list[float]
    seconds: float
    batch_size: int


@dataclass
class DelayRun:
    run_dir: Path
    config: DelayConfig
    per_t: list[TResult]
    results: list[dict[str, Any]]


def sequence_steps(config: DelayConfig, T: int) -> int:
    return int(round(config.sequence_factor * T))


def delay_steps(config: DelayConfig, T: int) -> list[int]:
    return [int(round(f * T)) for f in config.delays]


def auto_batch_size(config: DelayConfig, T: int) -> int:
    """Sequences per forward call: as many as fit the memory budget, split evenly over the calls."""
    if config.batch_size:
        return min(config.batch_size, config.n_test)
    per_sequence = BYTES_PER_ENTRY * sequence_steps(config, T) * config.order
    largest = max(1, min(config.n_test, MEMORY_BUDGET // per_sequence))
    n_calls = math.ceil(config.n_test / largest)
    return math.ceil(config.n_test / n_calls)


def evaluate_t(config: DelayConfig, T: int, progress: Progress | None = None) -> TResult:
    """Test MSE per delay for one T (window theta = T steps), averaged over sequences and steps t >= T."""
    start = time.perf_counter()
    n_steps = sequence_steps(config, T)
    lags = delay_steps(config, T)
    u = band_limited_noise(config.n_test, n_steps, config.theta_seconds / T, config.max_freq,
                           seed=config.seed)  # (S, N), the same signals for every T
    layer = LMU(1, 1, config.order, theta=T, hidden_cell=None, input_kernel=False, mode="fft").double()
    readout_t = legendre_readout(config.order, lags, float(T)).T.contiguous()  # (order, q)
    batch_size = auto_batch_size(config, T)
    squared = torch.zeros(len(lags), dtype=torch.float64)  # (q,) sum of squared errors
    count = 0
    task = progress.add_task(f"T = {T:,}", total=config.n_test) if progress is not None else None
    with torch.inference_mode():
        for first in range(0, config.n_test, batch_size):
            ub = u[first:first + batch_size]  # (b, N)
            memory, _ = layer(ub.unsqueeze(-1))  # (b, N, order)
            decoded = memory[:, T:] @ readout_t  # (b, N - T, q): steps t >= T only
            del memory
            for q, lag in enumerate(lags):
                target = ub[:, T - lag:n_steps - lag]  # (b, N - T): u[t - lag]
                squared[q] += (decoded[..., q] - target).pow(2).sum()
            count += decoded.shape[0] * decoded.shape[1]
            if progress is not None:
                progress.advance(task, ub.shape[0])
    if progress is not None:
        progress.remove_task(task)
    mse = (squared / count).tolist()
    return TResult(T, n_steps, lags, mse, time.perf_counter() - start, batch_size)


def results_table(config: DelayConfig, per_t: list[TResult]) -> Table:
    """Test MSE per delay (rows) and T (columns), with the seconds per T in the last row."""
    table = Table(title=f"{MODEL}: test MSE of u(t - theta'), order {config.order}, "
                        f"{config.max_freq:g} Hz noise, {config.n_test} sequences per T")
    table.add_column("theta' / theta", justify="right")
    for r in per_t:
        table.add_column(f"T = {r.T:,}", justify="right")
    for q, fraction in enumerate(config.delays):
        table.add_row(f"{fraction:g}", *[f"{r.mse[q]:.3e}" for r in per_t], end_section=q == len(config.delays) - 1)
    table.add_row("seconds", *[f"{r.seconds:.1f}" for r in per_t])
    return table


def plot_mse(config: DelayConfig, per_t: list[TResult], path: Path) -> Path:
    """PNG of the MSE against theta'/theta, one curve per T, log y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for r in per_t:
        ax.semilogy(config.delays, r.mse, marker="o", label=f"T = {r.T:,}")
    ax.set_xlabel("delay theta' / theta")
    ax.set_ylabel("test MSE")
    ax.set_title(f"{MODEL}, order {config.order}, {config.max_freq:g} Hz white noise")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_delay(config: DelayConfig, out_dir: str | Path = "runs", console: Console | None = None) -> DelayRun:
    """Run the experiment, print the table, and write config.json, metrics.json and mse_vs_delay.png."""
    console = console or Console()
    run_dir = create_run_dir(EXPERIMENT, out_dir)
    config_dict = {**config.to_dict(), "experiment": EXPERIMENT, "model": MODEL, "contime_version": __version__,
                   "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}
    write_config(run_dir, config_dict)
    console.print(f"[bold]delay[/bold]: {MODEL}, order {config.order}, T in {list(config.t_values)}, "
                  f"{config.n_test} sequences per T -> {run_dir}")

    per_t: list[TResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for T in config.t_values:
            r = evaluate_t(config, T, progress)
            per_t.append(r)
            console.print(f"  T = {T:>7,}: {r.seconds:6.1f} s ({r.n_steps:,} steps x {config.n_test} sequences, "
                          f"batch {r.batch_size})")

    results = [result_record(MODEL, 0, "mse", r.mse[q], seconds_per_epoch=None, epochs=0, T=r.T,
                             delay=float(fraction), delay_steps=r.delay_steps[q], seconds=r.seconds,
                             n_test=config.n_test, order=config.order)
               for r in per_t for q, fraction in enumerate(config.delays)]
    write_metrics(run_dir, EXPERIMENT, config_dict, results)
    plot_mse(config, per_t, run_dir / "mse_vs_delay.png")

    console.print(results_table(config, per_t))
    if len(per_t) > 1:
        first, last = per_t[0], per_t[-1]
        ratios = [last.mse[q] / first.mse[q] for q in range(len(config.delays))]
        console.print(f"MSE(T = {last.T:,}) / MSE(T = {first.T:,}) per delay: "
                      + ", ".join(f"{x:.3g}" for x in ratios) + "  (< 1: the error does not grow with T)")
    console.print(f"wrote {run_dir}/config.json, metrics.json, mse_vs_delay.png")
    return DelayRun(run_dir, config, per_t, results)


def command(
    quick: bool = typer.Option(False, "--quick", help="T = 100 and 1,000 only; runs in seconds."),
    order: int = typer.Option(100, "--order", min=1, help="Legendre order of the memory."),
    t_values: Optional[str] = typer.Option(
        None, "--t-values", help="Comma-separated steps per window, each above 2 * max_freq * theta_seconds (20 by default, "
        "so that the noise is sampled above its Nyquist rate); default 100,1000,10000,100000 (with --quick: 100,1000)."),
    n_test: int = typer.Option(10, "--n-test", min=10, help="Test sequences per T."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base random seed."),
    batch_size: int = typer.Option(0, "--batch-size", min=0,
                                   help="Sequences per forward call; 0 fits a ~6 GiB memory budget."),
    out_dir: str = OUT_DIR_OPTION,
) -> None:
    """Delay capacity of the untrained LMU memory (LMU-0) on 10 Hz white noise, T = 100 .. 100,000."""
    try:
        config = DelayConfig.preset(quick, order=order, t_values=parse_ints(t_values, "--t-values"),
                                    n_test=n_test, seed=seed, batch_size=batch_size)
    except ValueError as err:
        raise typer.BadParameter(str(err))
    run_delay(config, out_dir, command_console())
