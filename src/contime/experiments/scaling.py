"""How the cost of an epoch grows with sequence length: Rough Transformer against the vanilla Transformer.

    contime run rt-scaling                   lengths 100, 300, 1,000, 3,000, 10,000
    contime run rt-scaling --quick           lengths 50, 100, 200 (the tests run this)

For each length L, 64 sinusoid series (the `sinusoid` task's generator, 10 classes) make one epoch of 4 training
steps of 16 series. Each model trains one warm-up step, then the epoch is timed; the peak memory of one training
step is measured as in the irregular experiments. Models:

    RT          signatures computed inside every step (online): the cost a user pays when points change
    RT-offline  signatures computed once (timed separately as ``signature_seconds``), then the encoder's epoch
    Transformer one token per sample: attention over L tokens

The growth exponent is the slope of log(seconds per epoch) against log(L) over the measured lengths (a least-
squares fit). A model whose epoch passes ``--budget`` seconds is not run at longer lengths (recorded as skipped).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from .. import __version__
from ..baselines import TransformerBaseline
from ..data.sinusoids import sinusoid_classification
from ..rough_transformer import OfflineRoughTransformer, RoughTransformer
from ..signatures import SignatureConfig, precompute_features
from ..training.distributed import resolve_device
from .fits import loglog_slope
from .irregular import peak_step_memory_mb
from .rundir import (OUT_DIR_OPTION, QUIET_OPTION, command_console, experiment_command, open_run_dir, parse_ints,
                     parse_names, result_record, write_metrics)

EXPERIMENT = "rt-scaling"
MODELS = ("RT", "RT-offline", "Transformer")
FULL_LENGTHS = [100, 300, 1000, 3000, 10000]
QUICK_LENGTHS = [50, 100, 200]
N_SERIES, BATCH, CLASSES = 64, 16, 10


class ScalingError(Exception):
    """A usage problem."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epoch(model: nn.Module, inputs: tuple, targets: torch.Tensor, device: torch.device) -> float:
    """Seconds for one epoch of Adam steps over ``inputs`` in batches of ``BATCH``, after one warm-up step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(index):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(*(t[index] for t in inputs)), targets[index])
        loss.backward()
        optimizer.step()

    step(slice(0, BATCH))
    _sync(device)
    start = time.perf_counter()
    for first in range(0, targets.shape[0], BATCH):
        step(slice(first, first + BATCH))
    _sync(device)
    return time.perf_counter() - start


def fit_exponent(lengths: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) on log(length); None with fewer than two distinct lengths."""
    exponent = loglog_slope(lengths, seconds)["exponent"]
    return None if math.isnan(exponent) else exponent


def run_scaling(config: dict[str, Any], *, device: str = "cpu", out_dir: str | Path = "runs",
                console: Console | None = None) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    console = console or Console()
    target = resolve_device(device)
    run_path = open_run_dir(EXPERIMENT, config, out_dir)
    console.print(f"[bold]rt-scaling[/bold]: {N_SERIES} series per epoch, batches of {BATCH}, lengths "
                  f"{config['lengths']}, device {target}, torch threads {torch.get_num_threads()} -> {run_path}")
    signature = SignatureConfig(depth=config["depth"], n_windows=config["n_windows"])
    results: list[dict[str, Any]] = []
    stopped: set[str] = set()
    for length in config["lengths"]:
        data = sinusoid_classification(N_SERIES // CLASSES + 1, length, n_classes=CLASSES, seed=0)
        data = data.subset(torch.arange(N_SERIES))
        inputs = tuple(t.to(target) for t in data.inputs())
        targets = data.targets.to(target)
        for name in config["models"]:
            if name in stopped:
                results.append(result_record(name, 0, "seconds_per_epoch", float("nan"), epochs=0, length=length,
                                             skipped=f"the previous length took over {config['budget']} s"))
                continue
            torch.manual_seed(0)
            encoder = dict(d_model=config["d_model"], n_heads=4, n_layers=2, dropout=0.0)
            extra: dict[str, Any] = {}
            if name == "Transformer":
                model, model_inputs = TransformerBaseline(1, CLASSES, **encoder), inputs
            else:
                rt = RoughTransformer(1, CLASSES, signature=signature, **encoder)
                model, model_inputs = rt, inputs
                if name == "RT-offline":
                    _sync(target)
                    start = time.perf_counter()
                    model_inputs = precompute_features(*inputs, signature)
                    _sync(target)
                    extra["signature_seconds"] = time.perf_counter() - start
                    model = OfflineRoughTransformer(rt)
            model = model.to(target)
            try:
                memory = peak_step_memory_mb(model, tuple(t[:BATCH] for t in model_inputs), targets[:BATCH], target)
                seconds = time_epoch(model, model_inputs, targets, target)
            except (RuntimeError, MemoryError) as err:  # out of memory at this length: recorded, not hidden
                results.append(result_record(name, 0, "seconds_per_epoch", float("nan"), epochs=0, length=length,
                                             skipped=f"failed: {str(err).splitlines()[0][:200]}"))
                stopped.add(name)
                console.print(f"  L={length:>6} {name:<12} failed: {str(err).splitlines()[0][:120]}")
                continue
            params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            results.append(result_record(name, params, "seconds_per_epoch", seconds, seconds_per_epoch=seconds,
                                         epochs=1, length=length, peak_step_memory_mb=memory, **extra))
            memory_text = "-" if memory is None else f"{memory:.1f} MB"
            console.print(f"  L={length:>6} {name:<12} {seconds:8.3f} s/epoch  peak/step {memory_text}"
                          + (f"  (signatures {extra['signature_seconds']:.3f} s once)" if extra else ""))
            if seconds > config["budget"]:
                stopped.add(name)
            del model
            if target.type == "cuda":
                torch.cuda.empty_cache()
    exponents = {}
    for name in config["models"]:
        rows = [r for r in results if r["model"] == name and not r.get("skipped")]
        exponents[name] = fit_exponent([r["length"] for r in rows], [r["value"] for r in rows])
    write_metrics(run_path, EXPERIMENT, {**config, "exponents": exponents, "device": str(target)}, results)
    plot_scaling(results, exponents, run_path / "scaling.png")
    table = Table(title="seconds per epoch against length (growth exponent fitted on log-log)")
    table.add_column("model")
    for length in config["lengths"]:
        table.add_column(f"L={length:,}", justify="right")
    table.add_column("exponent", justify="right")
    for name in config["models"]:
        cells = []
        for length in config["lengths"]:
            row = next(r for r in results if r["model"] == name and r["length"] == length)
            cells.append("skipped" if row.get("skipped") else f"{row['value']:.3f}")
        exponent = exponents[name]
        table.add_row(name, *cells, "-" if exponent is None else f"{exponent:.2f}")
    console.print(table)
    console.print(f"wrote {run_path}/metrics.json, scaling.png")
    return run_path, results, exponents


def plot_scaling(results: list[dict[str, Any]], exponents: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for k, name in enumerate(exponents):
        rows = [r for r in results if r["model"] == name and not r.get("skipped")]
        if not rows:
            continue
        slope = exponents[name]
        label = name if slope is None else f"{name} (slope {slope:.2f})"
        ax_time.plot([r["length"] for r in rows], [r["value"] for r in rows], marker="o", color=f"C{k}", label=label)
        memory = [(r["length"], r["peak_step_memory_mb"]) for r in rows if r.get("peak_step_memory_mb")]
        if memory:
            ax_memory.plot(*zip(*memory), marker="o", color=f"C{k}", label=name)
    for ax, ylabel in ((ax_time, "seconds per epoch"), (ax_memory, "peak MB per training step")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def command(
    quick: bool = typer.Option(False, "--quick", help=f"Lengths {QUICK_LENGTHS}."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help=f"Comma-separated (default {FULL_LENGTHS})."),
    models: str = typer.Option(",".join(MODELS), "--models", help=f"Comma-separated, among {', '.join(MODELS)}."),
    budget: float = typer.Option(120.0, "--budget", min=0.0, help="Seconds per epoch after which a model stops."),
    device: str = typer.Option("cpu", "--device", help="cpu, auto, cuda or cuda:N."),
    threads: int = typer.Option(1, "--threads", min=0, help="torch CPU threads (0: torch's default)."),
    quiet: bool = QUIET_OPTION,
    out_dir: str = OUT_DIR_OPTION,
) -> None:
    """Seconds per epoch and peak memory against length (100 to 10,000): Rough Transformer vs Transformer."""
    names = parse_names(models, MODELS)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter(f"{device!r} asked for, but CUDA is not available here", param_hint="--device")
    chosen = parse_ints(lengths, "--lengths") or (QUICK_LENGTHS if quick else FULL_LENGTHS)
    if min(chosen) < 2:  # a series needs two points for a path
        raise typer.BadParameter(f"lengths must be >= 2, got {list(chosen)}", param_hint="--lengths")
    config = {"experiment": EXPERIMENT, "quick": quick, "models": names, "lengths": chosen,
              "budget": budget, "n_series": N_SERIES, "batch_size": BATCH, "depth": 3, "n_windows": 32,
              "d_model": 32 if quick else 64, "contime_version": __version__}
    console = command_console()
    with experiment_command(console, threads, ScalingError):
        run_scaling(config, device=device, out_dir=out_dir, console=console)
