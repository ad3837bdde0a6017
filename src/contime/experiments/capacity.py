"""The memory-capacity experiment of the LMU paper: LMU-0 against a trained LSTM and a trained LMU.

Every model reads white noise band-limited to 10 Hz and must output the input delayed by theta' in
{0, 1/4, 1/2, 3/4, 1} theta, with theta = 1 s sampled with T steps (dt = theta / T); each sequence is 2.5 T
steps long and is scored on the steps t >= T, where the window is full (the setup of ``contime run delay``,
whose functions this module reuses).

Models:
    LMU-0   the untrained order-100 LegT memory with the analytic Legendre readout, in float64 (evaluated by
            ``contime.experiments.delay.evaluate_t``), at T = 100, 1,000, 10,000 and 100,000.
    LSTM    ``nn.LSTM(1, 100)`` (forget-gate bias 1, as Keras initialises it) and a linear readout to the five
            delays, trained with Adam on the mean squared error over all five delays, at T = 25, 100, 400 and
            1,600. The LSTM is the expensive part: ~10 us per sequence and step for forward and backward on
            one CPU core, so the full run trains it for 40 epochs of 256 sequences (1,280 steps of 8).
    LMU     the same order-100 memory (``contime.LMU(1, 1, 100, theta=T, hidden_cell=None,
            input_kernel=False)``, "fft" mode) with a learned linear readout, trained like the LSTM.

The trained models use train / validation / test sequence sets; the test MSE per delay comes from the
weights of the best validation epoch. Every split keeps the noise's frequencies fixed in seconds, so all T
sample the same continuous signals: the test set (seed ``seed``) is the one LMU-0 is scored on, and the
training and validation sets use the seeds ``seed + 1,000,000`` and ``seed + 2,000,000``.

The claim: LMU-0's error does not grow from T = 100 to T = 100,000, while the LSTM's grows with T. The
verdict is computed from the numbers (``verdict``): LMU-0 holds if no T has an MSE above ``FLAT_TOLERANCE``
times that of its smallest T at any delay; the LSTM grows if its MSE, averaged over the delays, is at least
``GROWTH_FACTOR`` times larger at its largest T than at its smallest.

The plot ``mse_vs_delay.png`` puts the test MSE against theta'/theta on log-log axes, one curve per model and
T; the zero delay cannot sit on a log axis and is left out of the plot (it is in the table and metrics.json).

Run folder: ``config.json``, ``metrics.json`` (one record per model, T and delay), ``mse_vs_delay.png``,
``LMU-0/T<T>.json`` (each LMU-0 evaluation, reused on resume) and one folder per trained model and T
(``LSTM-T25``, ...) with the trainer's checkpoints, ``result.json`` and ``history.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from .. import __version__
from ..data.delay import band_limited_noise
from ..lmu import LMU
from ..training import TrainConfig, Trainer, count_parameters
from .delay import DELAY_FRACTIONS, DelayConfig, TResult, delay_steps, evaluate_t, sequence_steps
from .rundir import (OUT_DIR_OPTION, QUIET_OPTION, RESUME_OPTION, RUN_DIR_OPTION, command_console, experiment_command,
                     open_run_dir, parse_ints, parse_names, result_record, write_json_atomic, write_metrics)

EXPERIMENT = "capacity"
LMU0, LSTM_NAME, LMU_NAME = "LMU-0", "LSTM", "LMU"
MODELS = (LMU0, LSTM_NAME, LMU_NAME)
TRAINED = (LSTM_NAME, LMU_NAME)
LMU0_T_VALUES = (100, 1_000, 10_000, 100_000)
TRAINED_T_VALUES = (25, 100, 400, 1_600)
QUICK_LMU0_T_VALUES = (100, 1_000)
QUICK_TRAINED_T_VALUES = (25, 100)
# Seeds of the training and validation sequences: seed + offset (the test set uses the seed itself).
SPLIT_SEED_OFFSETS = {"train": 1_000_000, "val": 2_000_000, "test": 0}
FLAT_TOLERANCE = 1.5
GROWTH_FACTOR = 1.5
PLOT = "mse_vs_delay.png"


class CapacityError(Exception):
    """A usage problem (nothing to resume, other settings than the stored run); the message says what to do."""


@dataclass(frozen=True)
class CapacityConfig:
    """Configuration of one run (written to config.json; execution options such as threads stay out).

    Attributes:
        models: which of "LMU-0", "LSTM", "LMU" to run, in that order.
        order: Legendre order of LMU-0 and of the trained LMU's memory.
        lmu0_t_values: steps per window for LMU-0.
        t_values: steps per window for the trained models.
        lstm_units: LSTM hidden size.
        n_train, n_val, n_test: sequences per split (the test set is LMU-0's too; >= 10).
        batch_size: sequences per optimizer step.
        lstm_epochs, lmu_epochs: training epochs (the same for every T).
        lstm_lr, lmu_lr: peak Adam learning rates.
        schedule: learning-rate schedule, "constant" or "cosine" (to 0 at the last step).
        clip_grad_norm: gradient-norm clip, or None.
        seed: data seed (see the module docstring) and the seed of weights and batch order.
        max_freq, theta_seconds, sequence_factor, delays: the task, as in ``DelayConfig``.
        quick: whether this is the quick configuration (recorded only).
    """

    models: tuple[str, ...] = MODELS
    order: int = 100
    lmu0_t_values: tuple[int, ...] = LMU0_T_VALUES
    t_values: tuple[int, ...] = TRAINED_T_VALUES
    lstm_units: int = 100
    n_train: int = 256
    n_val: int = 32
    n_test: int = 10
    batch_size: int = 8
    lstm_epochs: int = 40
    lmu_epochs: int = 40
    lstm_lr: float = 1e-2
    lmu_lr: float = 3e-2
    schedule: str = "cosine"
    clip_grad_norm: Optional[float] = 1.0
    seed: int = 0
    max_freq: float = 10.0
    theta_seconds: float = 1.0
    sequence_factor: float = 2.5
    delays: tuple[float, ...] = DELAY_FRACTIONS
    quick: bool = False

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not self.models or any(m not in MODELS for m in self.models) or len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct names among {list(MODELS)}, got {list(self.models)!r}")
        object.__setattr__(self, "models", tuple(m for m in MODELS if m in self.models))
        for name in ("lstm_units", "n_train", "n_val", "batch_size", "lstm_epochs", "lmu_epochs"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("lstm_lr", "lmu_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        # The task's fields, the T values and their Nyquist limit, checked by the delay experiment's config.
        for t_values in (self.lmu0_t_values, self.t_values):
            self.delay_config(t_values)
        TrainConfig(epochs=1, batch_size=self.batch_size, lr=self.lstm_lr, schedule=self.schedule,
                    clip_grad_norm=self.clip_grad_norm, seed=self.seed)  # raises ValueError naming the field

    def delay_config(self, t_values: tuple[int, ...]) -> DelayConfig:
        """The delay experiment's configuration for ``t_values`` with this run's task and test set."""
        return DelayConfig(order=self.order, t_values=tuple(t_values), n_test=self.n_test, seed=self.seed,
                           max_freq=self.max_freq, theta_seconds=self.theta_seconds,
                           sequence_factor=self.sequence_factor, delays=tuple(self.delays), quick=self.quick)

    def epochs(self, model: str) -> int:
        return self.lstm_epochs if model == LSTM_NAME else self.lmu_epochs

    def lr(self, model: str) -> float:
        return self.lstm_lr if model == LSTM_NAME else self.lmu_lr

    @classmethod
    def preset(cls, quick: bool = False, **overrides: Any) -> "CapacityConfig":
        """The full configuration, or the quick one (a few seconds); ``None`` overrides are ignored."""
        base: dict[str, Any] = {}
        if quick:
            base = {"lmu0_t_values": QUICK_LMU0_T_VALUES, "t_values": QUICK_TRAINED_T_VALUES, "n_train": 16,
                    "n_val": 8, "lstm_epochs": 2, "lmu_epochs": 2, "quick": True}
        base.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("models", "lmu0_t_values", "t_values", "delays"):
            if key in base:
                base[key] = tuple(base[key])
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("models", "lmu0_t_values", "t_values", "delays"):
            out[key] = list(out[key])
        return out


# ------------------------------------------------------------------------------------------------- models
class DelayNetwork(nn.Module):
    """A sequence layer and a linear readout to the delayed inputs, on the steps where the window is full.

    Args:
        layer: called as ``layer(x)`` -> ``(y, state)`` with y ``(batch, time, features)``: ``nn.LSTM`` or
            ``contime.LMU`` (batch_first).
        features: size of y's last dimension.
        n_delays: outputs, one per delay.
        window: T; the output starts at step T.

    Shapes: x ``(batch, time, 1)`` -> ``(batch, time - T, n_delays)``.
    """

    def __init__(self, layer: nn.Module, features: int, n_delays: int, window: int):
        super().__init__()
        self.layer = layer
        self.readout = nn.Linear(features, n_delays)
        self.window = int(window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.layer(x)  # (batch, time, features)
        return self.readout(y[:, self.window:])  # (batch, time - T, n_delays)


def build_model(name: str, config: CapacityConfig, T: int) -> DelayNetwork:
    """The LSTM or the trained LMU for window T (weights drawn from the global RNG)."""
    q = len(config.delays)
    if name == LSTM_NAME:
        units = config.lstm_units
        layer = nn.LSTM(1, units, batch_first=True)
        with torch.no_grad():  # forget-gate bias 1 (gates ordered i, f, g, o), as Keras's unit_forget_bias
            layer.bias_ih_l0[units:2 * units] = 1.0
            layer.bias_hh_l0[units:2 * units] = 0.0
        return DelayNetwork(layer, config.lstm_units, q, T)
    if name == LMU_NAME:
        layer = LMU(1, 1, config.order, theta=T, hidden_cell=None, input_kernel=False, mode="fft")
        return DelayNetwork(layer, config.order, q, T)
    raise ValueError(f"name must be one of {list(TRAINED)}, got {name!r}")


# --------------------------------------------------------------------------------------------------- data
def make_split(config: CapacityConfig, T: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split for window T: x ``(n, 2.5 T, 1)`` and the delayed inputs y ``(n, 1.5 T, q)``, float32.

    y[s, t - T, k] = u_s[t - d_k] for the steps t >= T, with d_k = ``delay_steps``'s k-th delay in steps.
    """
    n = {"train": config.n_train, "val": config.n_val, "test": config.n_test}[split]
    delay_config = config.delay_config((T,))
    n_steps, lags = sequence_steps(delay_config, T), delay_steps(delay_config, T)
    u = band_limited_noise(n, n_steps, config.theta_seconds / T, config.max_freq,
                           seed=config.seed + SPLIT_SEED_OFFSETS[split])  # (n, N) float64
    y = torch.stack([u[:, T - lag:n_steps - lag] for lag in lags], dim=-1)  # (n, N - T, q)
    return u.unsqueeze(-1).float(), y.float()


# ------------------------------------------------------------------------------------------------ running
@dataclass
class CapacityRun:
    run_dir: Path
    config: CapacityConfig
    results: list[dict[str, Any]]
    verdict: dict[str, Any]


def _lmu0(config: CapacityConfig, run_dir: Path, console: Console) -> list[dict[str, Any]]:
    """LMU-0 at every T of ``lmu0_t_values`` (each evaluation cached as LMU-0/T<T>.json for resume)."""
    delay_config = config.delay_config(config.lmu0_t_values)
    cache = run_dir / LMU0
    cache.mkdir(exist_ok=True)
    records: list[dict[str, Any]] = []
    columns = (TextColumn("LMU-0 {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for T in config.lmu0_t_values:
            path = cache / f"T{T}.json"
            if path.is_file():
                r = TResult(**json.loads(path.read_text()))
                console.print(f"  LMU-0 T = {T:>7,}: reused {path.name}")
            else:
                r = evaluate_t(delay_config, T, progress)
                write_json_atomic(path, dataclasses.asdict(r))
                console.print(f"  LMU-0 T = {T:>7,}: {r.seconds:6.1f} s ({r.n_steps:,} steps x {config.n_test} "
                              f"sequences, batch {r.batch_size})")
            records += [result_record(LMU0, 0, "mse", r.mse[k], seconds_per_epoch=None, epochs=0, T=T,
                                      delay=float(fraction), delay_steps=r.delay_steps[k], n_test=config.n_test,
                                      seconds=r.seconds, order=config.order)
                        for k, fraction in enumerate(config.delays)]
    return records


def _trained(name: str, config: CapacityConfig, T: int, run_dir: Path, device: str, quiet: bool,
             console: Console) -> list[dict[str, Any]]:
    """Train one model at window T, pick the best validation epoch, and score it per delay on the test set."""
    train, val, test = (make_split(config, T, split) for split in ("train", "val", "test"))
    torch.manual_seed(config.seed)
    model = build_model(name, config, T)
    train_config = TrainConfig(epochs=config.epochs(name), batch_size=config.batch_size, lr=config.lr(name),
                               optimizer="adam", schedule=config.schedule, clip_grad_norm=config.clip_grad_norm,
                               seed=config.seed, device=device, quiet=quiet, checkpoint_every=0,
                               eval_batch_size=max(32, config.batch_size))
    trainer = Trainer(model, train_config, train, val, test, loss="mse", metric="mse",
                      run_dir=run_dir / f"{name}-T{T}", name=f"{name} T={T}", console=console)
    result = trainer.fit(resume=True)  # leaves the best-validation weights in the model
    prediction = trainer.predict(test[0]).double()  # (n_test, N - T, q)
    per_delay = (prediction - test[1].double()).pow(2).mean(dim=(0, 1)).tolist()  # (q,)
    lags = delay_steps(config.delay_config((T,)), T)
    return [result_record(name, count_parameters(model), "mse", per_delay[k],
                          seconds_per_epoch=result["seconds_per_epoch"], epochs=result["epochs"], T=T,
                          delay=float(fraction), delay_steps=lags[k], n_test=config.n_test,
                          n_train=config.n_train, n_val=config.n_val, best_epoch=result["best_epoch"],
                          val_mse=result["val_value"], test_mse_all=result["value"], device=result["device"])
            for k, fraction in enumerate(config.delays)]


def run_capacity(config: CapacityConfig, *, device: str = "cpu", quiet: bool = False, out_dir: str | Path = "runs",
                 resume: bool = False, run_dir: str | Path | None = None,
                 console: Console | None = None) -> CapacityRun:
    """Run every model of ``config.models``; print the table and the verdict; write metrics.json and the plot.

    ``device`` and ``quiet`` change how the run executes, not what it computes, so they stay out of config.json
    (a run may resume with other values). metrics.json is rewritten after every model and T.
    """
    console = console or Console()
    config_dict = {**config.to_dict(), "experiment": EXPERIMENT, "contime_version": __version__}
    try:
        path = open_run_dir(EXPERIMENT, config_dict, out_dir, resume=resume, run_dir=run_dir)
    except (FileNotFoundError, ValueError) as err:
        raise CapacityError(str(err)) from err
    console.print(f"[bold]capacity[/bold]: {', '.join(config.models)}; LMU-0 at T in {list(config.lmu0_t_values)}, "
                  f"trained at T in {list(config.t_values)} ({config.n_train} train / {config.n_val} val / "
                  f"{config.n_test} test sequences), torch threads {torch.get_num_threads()} -> {path}")

    results: list[dict[str, Any]] = []
    if LMU0 in config.models:
        results += _lmu0(config, path, console)
        write_metrics(path, EXPERIMENT, config_dict, results)
    for name in (m for m in TRAINED if m in config.models):
        for T in config.t_values:
            results += _trained(name, config, T, path, device, quiet, console)
            write_metrics(path, EXPERIMENT, config_dict, results)

    plot_mse(config, results, path / PLOT)
    check = verdict(results)
    console.print(results_table(config, results))
    console.print(check["line"])
    console.print(f"wrote {path}/config.json, metrics.json, {PLOT}")
    return CapacityRun(path, config, results, check)


# ------------------------------------------------------------------------------------------------ reports
def mse_by_model(results: list[dict[str, Any]]) -> dict[str, dict[int, dict[float, float]]]:
    """{model: {T: {delay: mse}}} from the records, in their order."""
    out: dict[str, dict[int, dict[float, float]]] = {}
    for r in results:
        out.setdefault(r["model"], {}).setdefault(r["T"], {})[r["delay"]] = r["value"]
    return out


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether LMU-0's error stays flat over T and the LSTM's grows with T, from the records.

    Returns ``{"lmu0_flat", "lstm_grows", "holds"}`` (None where a model lacks two T values), the ratios behind
    them, and ``line``: one sentence for the console.
    """
    table = mse_by_model(results)
    out: dict[str, Any] = {"lmu0_flat": None, "lmu0_worst_ratio": None, "lstm_grows": None, "lstm_growth": None}
    parts = []
    lmu0 = table.get(LMU0, {})
    if len(lmu0) >= 2:
        first = min(lmu0)
        worst = max(mse / lmu0[first][d] for T in lmu0 for d, mse in lmu0[T].items() if T != first)
        out["lmu0_worst_ratio"], out["lmu0_flat"] = worst, worst <= FLAT_TOLERANCE
        parts.append(f"LMU-0's MSE {'does not grow' if out['lmu0_flat'] else 'GROWS'} from T = {first:,} to "
                     f"{max(lmu0):,} (worst MSE ratio to T = {first:,} over all T and delays: {worst:.3g}, "
                     f"limit {FLAT_TOLERANCE:g})")
    lstm = table.get(LSTM_NAME, {})
    if len(lstm) >= 2:
        low, high = min(lstm), max(lstm)
        mean = {T: sum(v.values()) / len(v) for T, v in lstm.items()}
        growth = mean[high] / mean[low]
        out["lstm_growth"], out["lstm_grows"] = growth, growth >= GROWTH_FACTOR
        parts.append(f"the LSTM's mean MSE grows {growth:.3g}x from T = {low:,} ({mean[low]:.3g}) to T = {high:,} "
                     f"({mean[high]:.3g}): {'at least' if out['lstm_grows'] else 'NOT the'} {GROWTH_FACTOR:g}x "
                     f"needed")
    if out["lmu0_flat"] is None or out["lstm_grows"] is None:
        out["holds"] = None
        head = "Verdict: not decidable (needs LMU-0 and the LSTM at two T values or more)"
    else:
        out["holds"] = bool(out["lmu0_flat"] and out["lstm_grows"])
        head = "Verdict: the claim holds" if out["holds"] else "Verdict: the claim is NOT shown"
    out["line"] = head + (": " + "; ".join(parts) if parts else "") + "."
    return out


def results_table(config: CapacityConfig, results: list[dict[str, Any]]) -> Table:
    """Test MSE per model and T (rows) and delay (columns), with the parameters and the training time."""
    table = Table(title=f"capacity: test MSE of u(t - theta'), {config.max_freq:g} Hz noise, theta = "
                        f"{config.theta_seconds:g} s = T steps, {config.n_test} test sequences")
    table.add_column("model")
    table.add_column("T", justify="right")
    table.add_column("params", justify="right")
    for fraction in config.delays:
        table.add_column(f"{fraction:g}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("best", justify="right")
    table.add_column("s/epoch", justify="right")
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        by_key.setdefault((r["model"], r["T"]), []).append(r)
    previous = None
    for (model, T), records in by_key.items():
        if previous is not None and model != previous:
            table.add_section()
        previous = model
        first = records[0]
        values = [r["value"] for r in records]
        trained = first["epochs"] > 0
        table.add_row(model, f"{T:,}", f"{first['params']:,}", *[f"{v:.2e}" for v in values],
                      f"{sum(values) / len(values):.2e}",
                      f"{first['epochs']}", f"{first.get('best_epoch')}" if trained else "-",
                      f"{first['seconds_per_epoch']:.2f}" if trained else "-")
    return table


STYLES = {LMU0: ("Blues", "o", "-"), LSTM_NAME: ("Reds", "s", "--"), LMU_NAME: ("Greens", "^", ":")}


def plot_mse(config: CapacityConfig, results: list[dict[str, Any]], path: Path) -> Path:
    """PNG: test MSE against theta'/theta, log-log, one curve per model and T (delay 0 left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    table = mse_by_model(results)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for model, per_t in table.items():
        colormap, marker, line = STYLES[model]
        shades = plt.get_cmap(colormap)
        for i, (T, per_delay) in enumerate(sorted(per_t.items())):
            delays = [d for d in sorted(per_delay) if d > 0]
            shade = shades(0.45 + 0.5 * i / max(1, len(per_t) - 1))
            ax.loglog(delays, [per_delay[d] for d in delays], marker=marker, linestyle=line, color=shade,
                      label=f"{model}, T = {T:,}")
    shown = sorted({float(d) for d in config.delays if d > 0})
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(shown))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{d:g}" for d in shown]))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("delay theta' / theta (delay 0 not shown: log axis)")
    ax.set_ylabel("test MSE")
    ax.set_title(f"Delay capacity, {config.max_freq:g} Hz white noise, theta = T steps")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------- CLI
def command(
    quick: bool = typer.Option(False, "--quick", help="Trained models at T = 25 and 100 (16 sequences, 2 epochs), "
                               "LMU-0 at T = 100 and 1,000: seconds."),
    models: str = typer.Option(",".join(MODELS), "--models", help=f"Comma-separated, among {', '.join(MODELS)}."),
    lmu0_t_values: Optional[str] = typer.Option(None, "--lmu0-t-values",
                                                help="Steps per window for LMU-0; default 100,1000,10000,100000."),
    t_values: Optional[str] = typer.Option(None, "--t-values",
                                           help="Steps per window for the LSTM and LMU; default 25,100,400,1600."),
    order: Optional[int] = typer.Option(None, "--order", min=1, help="Legendre order of both LMUs (default 100)."),
    n_train: Optional[int] = typer.Option(None, "--n-train", min=1, help="Training sequences per T (default 256)."),
    n_val: Optional[int] = typer.Option(None, "--n-val", min=1, help="Validation sequences per T (default 32)."),
    n_test: Optional[int] = typer.Option(None, "--n-test", min=10, help="Test sequences per T (default 10)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Sequences per step (default 8)."),
    lstm_epochs: Optional[int] = typer.Option(None, "--lstm-epochs", min=1, help="Default 40."),
    lmu_epochs: Optional[int] = typer.Option(None, "--lmu-epochs", min=1, help="Default 40."),
    lstm_lr: Optional[float] = typer.Option(None, "--lstm-lr", help="Peak Adam learning rate (default 1e-2, "
                                            "cosine decay)."),
    lmu_lr: Optional[float] = typer.Option(None, "--lmu-lr", help="Peak Adam learning rate (default 3e-2, "
                                           "cosine decay)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the data, the weights and the batch order."),
    threads: int = typer.Option(1, "--threads", min=0, help="torch CPU threads during the run (0: torch's default). "
                                "One is the safest on a shared CPU: the LSTM's per-step products are small."),
    device: str = typer.Option("cpu", "--device", help="Trained models: cpu, auto, cuda or cuda:N."),
    resume: bool = RESUME_OPTION,
    run_dir: Optional[str] = RUN_DIR_OPTION,
    quiet: bool = QUIET_OPTION,
    out_dir: str = OUT_DIR_OPTION,
) -> None:
    """Delay capacity: LMU-0 (T = 100 .. 100,000) against a trained LSTM and LMU (T = 25 .. 1,600)."""
    names = parse_names(models, MODELS)
    try:
        TrainConfig(device=device)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--device")
    try:
        config = CapacityConfig.preset(
            quick, models=names, order=order, lmu0_t_values=parse_ints(lmu0_t_values, "--lmu0-t-values"),
            t_values=parse_ints(t_values, "--t-values"), n_train=n_train, n_val=n_val, n_test=n_test,
            batch_size=batch_size, lstm_epochs=lstm_epochs, lmu_epochs=lmu_epochs, lstm_lr=lstm_lr, lmu_lr=lmu_lr,
            seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err))
    console = command_console()
    with experiment_command(console, threads, CapacityError):
        run_capacity(config, device=device, quiet=quiet, out_dir=out_dir, resume=resume or run_dir is not None,
                     run_dir=run_dir, console=console)
