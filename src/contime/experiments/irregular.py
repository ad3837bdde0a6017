"""Irregular time series: the Rough Transformer beside its baselines, on sinusoids and on UEA data.

    contime run sinusoid       100-class sinusoids (the Rough Transformer's synthetic task)
    contime run sinusoid-long  the same, the series after index 250 switched to f / 5 with more noise
    contime run uea            a UEA/UCR set bundled with aeon (--dataset JapaneseVowels, BasicMotions, ...)

Every run trains, for each seed, each model of ``--models``:
    RT           contime.RoughTransformer (signatures offline, computed once, unless points are redrawn)
    Transformer  the same encoder with one token per sample (baselines.TransformerBaseline)
    GRU          a GRU with time gaps as input
    NCDE         a Neural CDE (torchcde 0.2.5, RK4, one step per sample)
    LMU          the uniform LMU (samples taken as equally spaced), a GRU cell over memory and input
    LMU-dt       the time-aware LMU (memory advanced by the real gaps), the same cell
and reports the test accuracy of the best-validation epoch as mean +- std over seeds, seconds per epoch, and
the peak memory of one training step (CUDA: the allocator's peak; CPU: the peak of live tensors counted at
dispatch level; both above the memory held before the step).

Point dropping (``--drop 0.5``): each point of a series is removed with that probability (every series keeps
two). ``--drop-mode fixed`` draws the masks once per seed; ``redraw`` draws a fresh training mask at every
training step (validation and test masks stay fixed), in which case the RT computes its signatures online.

Splits: sinusoids 70/15/15 (stratified by the interleaved classes); UEA: aeon's train split, of which 20% (seeded)
validates, and aeon's test split tests. UEA values are standardised per channel with training statistics.
"""

from __future__ import annotations

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
from ..baselines import GRUBaseline, LMUBaseline, NeuralCDEBaseline, TransformerBaseline
from ..data.irregular import IrregularData, drop_mask
from ..data.sinusoids import sinusoid_classification
from ..data.uea import BUNDLED_CLASSIFICATION, load_uea
from ..rough_transformer import OfflineRoughTransformer, RoughTransformer
from ..signatures import SignatureConfig, precompute_features
from ..training import TrainConfig, Trainer
from ..training.distributed import resolve_device
from ..training.memory import peak_tensor_bytes
from .rundir import (OUT_DIR_OPTION, QUIET_OPTION, RESUME_OPTION, RUN_DIR_OPTION, command_console, experiment_command,
                     open_run_dir, parse_names, parse_seeds, positive_lr, write_metrics)

MODELS = ("RT", "Transformer", "GRU", "NCDE", "LMU", "LMU-dt")
TASKS = ("sinusoid", "sinusoid-long", "uea")
DROP_MODES = ("fixed", "redraw")

# Presets: the full runs and the quick ones (same code path, tiny sizes).
FULL = {
    "sinusoid": {"n_classes": 100, "n_per_class": 20, "length": 1000, "epochs": 30, "seeds": [0, 1, 2]},
    "sinusoid-long": {"n_classes": 100, "n_per_class": 20, "length": 1000, "epochs": 30, "seeds": [0, 1, 2]},
    "uea": {"epochs": 100, "seeds": [0, 1, 2]},
}
QUICK = {
    "sinusoid": {"n_classes": 4, "n_per_class": 6, "length": 120, "epochs": 2, "seeds": [0, 1]},
    "sinusoid-long": {"n_classes": 4, "n_per_class": 6, "length": 300, "epochs": 2, "seeds": [0, 1]},
    "uea": {"epochs": 2, "seeds": [0, 1], "max_train": 40},
}


class IrregularError(Exception):
    """A usage problem (unknown dataset, nothing to resume, other settings than the stored run)."""


# ------------------------------------------------------------------------------------------------ models
class RedrawnDrop(nn.Module):
    """Drops each valid point with probability ``rate`` afresh at every training forward pass; in eval mode the
    given mask is used as is. Wraps any ``model(values, times, mask)``."""

    def __init__(self, model: nn.Module, rate: float):
        super().__init__()
        self.model, self.rate = model, float(rate)

    def forward(self, values, times, mask):
        if self.training:
            mask = drop_mask(mask, self.rate)
        return self.model(values, times, mask)


def signature_config(config: dict[str, Any]) -> SignatureConfig:
    s = config["signature"]
    return SignatureConfig(depth=s["depth"], n_windows=s["n_windows"], views=tuple(s["views"]),
                           local_widths=tuple(s["local_widths"]), univariate=s["univariate"],
                           log_signature=s["log_signature"], basepoint=s["basepoint"])


def build_model(name: str, channels: int, classes: int, config: dict[str, Any]) -> nn.Module:
    """Model ``name`` of ``MODELS`` for ``channels`` inputs and ``classes`` outputs, sized by ``config``."""
    encoder = dict(d_model=config["d_model"], n_heads=config["n_heads"], n_layers=config["n_layers"],
                   dropout=config["dropout"])
    if name == "RT":
        return RoughTransformer(channels, classes, signature=signature_config(config), **encoder)
    if name == "Transformer":
        return TransformerBaseline(channels, classes, **encoder)
    if name == "GRU":
        return GRUBaseline(channels, classes, hidden_size=config["rnn_hidden"])
    if name == "NCDE":
        return NeuralCDEBaseline(channels, classes, hidden_size=config["cde_hidden"])
    if name in ("LMU", "LMU-dt"):
        aware = name == "LMU-dt"
        # The window spans the whole series: 1.0 in tau units, or the expected count of kept samples in steps.
        theta = 1.0 if aware else max(2.0, config["steps_kept"])
        return LMUBaseline(channels, classes, order=config["lmu_order"], memory_d=config["lmu_memory_d"],
                           hidden_size=config["rnn_hidden"], theta=theta, time_aware=aware,
                           hidden=config.get("lmu_hidden", "feedforward"))
    raise ValueError(f"model must be one of {list(MODELS)}, got {name!r}")


# -------------------------------------------------------------------------------------------------- data
@dataclass
class Splits:
    train: IrregularData
    val: IrregularData
    test: IrregularData
    classes: list[str]
    source: str

    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test),
                "length": int(self.train.times.shape[1]), "channels": self.train.channels,
                "n_classes": len(self.classes)}


def _standardise(splits: list[IrregularData], reference: IrregularData) -> list[IrregularData]:
    """Per-channel standardisation with the valid points of ``reference`` (the training split)."""
    points = reference.values[reference.mask]  # (points, C)
    mean, std = points.mean(0), points.std(0).clamp(min=1e-8)
    return [IrregularData((d.values - mean) / std, d.times, d.mask, d.targets) for d in splits]


def load_splits(config: dict[str, Any]) -> Splits:
    """The task's train, validation and test splits, before any point is dropped."""
    task, seed = config["task"], config["data_seed"]
    g = torch.Generator().manual_seed(seed)
    if task.startswith("sinusoid"):
        data = sinusoid_classification(config["n_per_class"], config["length"], n_classes=config["n_classes"],
                                       long=task == "sinusoid-long", seed=seed)
        # Classes are interleaved (series i has class i % n_classes), so contiguous blocks are stratified.
        n = len(data)
        per_class = config["n_per_class"]
        n_train = max(1, round(0.7 * per_class)) * config["n_classes"]
        n_val = max(1, round(0.15 * per_class)) * config["n_classes"]
        if n_train + n_val >= n:
            raise IrregularError(f"n_per_class={per_class} is too small for a 70/15/15 split; use at least 4")
        index = torch.arange(n)
        return Splits(data.subset(index[:n_train]), data.subset(index[n_train:n_train + n_val]),
                      data.subset(index[n_train + n_val:]), [f"f={10 + 4 * c}" for c in range(config["n_classes"])],
                      f"generated ({task}, seed {seed})")
    try:
        train, classes = load_uea(config["dataset"], "train")
        test, _ = load_uea(config["dataset"], "test", classes)
    except ValueError as err:
        raise IrregularError(str(err)) from err
    if config.get("max_train"):
        train = train.subset(torch.randperm(len(train), generator=g)[: config["max_train"]])
        test = test.subset(torch.arange(min(len(test), config["max_train"])))
    order = torch.randperm(len(train), generator=g)
    n_val = max(1, round(0.2 * len(train)))
    fit, val = train.subset(order[n_val:]), train.subset(order[:n_val])
    fit, val, test = _standardise([fit, val, test], fit)
    return Splits(fit, val, test, classes, f"aeon {config['dataset']}")


def dropped(data: IrregularData, rate: float, seed: int) -> IrregularData:
    """``data`` with points dropped at ``rate`` by a mask drawn from ``seed``."""
    if rate == 0.0:
        return data
    return data.with_mask(drop_mask(data.mask, rate, torch.Generator().manual_seed(seed)))


# ------------------------------------------------------------------------------------------------ memory
def peak_step_memory_mb(model: nn.Module, inputs: tuple, targets: torch.Tensor, device: torch.device) -> float:
    """Peak memory (MB) of one training step (forward, cross-entropy, backward) on ``device``, above what
    was allocated before it (parameters and inputs excluded).

    CUDA: the caching allocator's peak. CPU: the peak of live tensor memory counted at dispatch level
    (``contime.training.memory``), the CPU analogue of the allocator's figure.
    """
    model.train()
    inputs = tuple(t.to(device) for t in inputs)
    targets = targets.to(device)

    def step():
        loss = nn.functional.cross_entropy(model(*inputs), targets)
        loss.backward()
        model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _, peak = peak_tensor_bytes(step)
    return peak / 2**20


# ------------------------------------------------------------------------------------------------ report
def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per model: mean and sample std of the test accuracy over seeds, mean seconds per epoch and peak memory."""
    summary: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        values = torch.tensor([r["value"] for r in rows], dtype=torch.float64)
        memory = [r["peak_step_memory_mb"] for r in rows if r.get("peak_step_memory_mb") is not None]
        summary[name] = {
            "mean": float(values.mean()), "std": float(values.std()) if len(rows) > 1 else 0.0, "n_seeds": len(rows),
            "params": rows[0]["params"], "epochs": [r["epochs"] for r in rows], "seconds_per_epoch": float(sum(r["seconds_per_epoch"] for r in rows) / len(rows)),
            "peak_step_memory_mb": float(sum(memory) / len(memory)) if memory else None}
    return summary


def results_table(summary: dict[str, dict[str, float]], title: str) -> Table:
    table = Table(title=title)
    for column in ("model", "params", "test accuracy", "seeds", "epochs", "s / epoch", "peak MB / step"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, s in summary.items():
        memory = "-" if s["peak_step_memory_mb"] is None else f"{s['peak_step_memory_mb']:.1f}"
        spread = f" +- {100 * s['std']:.2f}" if s["n_seeds"] > 1 else ""  # one seed has no spread to show
        table.add_row(name, f"{s['params']:,}", f"{100 * s['mean']:.2f}{spread}%",
                      str(s["n_seeds"]), ",".join(map(str, s["epochs"])), f"{s['seconds_per_epoch']:.2f}", memory)
    return table


def plot_summary(summary: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Bar chart: test accuracy (mean +- std over seeds) per model, seconds per epoch beside it (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    ax_acc.bar(names, [100 * summary[n]["mean"] for n in names], yerr=[100 * summary[n]["std"] for n in names],
               color=[f"C{k}" for k in range(len(names))], capsize=4)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title(title)
    ax_time.bar(names, [summary[n]["seconds_per_epoch"] for n in names], color=[f"C{k}" for k in range(len(names))])
    ax_time.set_yscale("log")
    ax_time.set_ylabel("seconds per epoch")
    for ax in (ax_acc, ax_time):
        ax.tick_params(axis="x", rotation=30)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------- run
@dataclass
class IrregularRun:
    run_dir: Path
    config: dict[str, Any]
    results: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]


def make_config(task: str, quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """The run's configuration (config.json) for ``task``: the preset, with the non-None ``overrides``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    preset = dict((QUICK if quick else FULL)[task])
    for key, value in overrides.items():
        if value is not None:
            preset[key] = value
    drop = float(preset.get("drop", 0.0))
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    drop_mode = preset.get("drop_mode", "fixed")
    if drop_mode not in DROP_MODES:
        raise ValueError(f"drop_mode must be one of {DROP_MODES}, got {drop_mode!r}")
    models = list(preset.get("models") or MODELS)
    dataset = preset.get("dataset") or ("JapaneseVowels" if task == "uea" else None)
    length = preset.get("length")
    univariate = preset.get("univariate", task == "uea")
    config = {
        "experiment": task, "task": task, "quick": quick, "dataset": dataset, "models": models,
        "seeds": list(preset["seeds"]), "data_seed": 0, "drop": drop, "drop_mode": drop_mode,
        "n_classes": preset.get("n_classes"), "n_per_class": preset.get("n_per_class"), "length": length,
        "max_train": preset.get("max_train"),
        "epochs": preset["epochs"], "batch_size": preset.get("batch_size", 32), "lr": preset.get("lr", 1e-3),
        "optimizer": "adam", "schedule": "cosine", "min_lr_ratio": 0.05, "clip_grad_norm": 1.0,
        "max_steps_per_epoch": preset.get("max_steps_per_epoch"), "time_budget": preset.get("time_budget"),
        "online": bool(preset.get("online", False)),
        "signature": {"depth": preset.get("depth", 3), "n_windows": preset.get("n_windows", 32),
                      "views": ["global", "local"], "local_widths": [], "univariate": bool(univariate),
                      "log_signature": bool(preset.get("log_signature", False)),
                      "basepoint": bool(preset.get("basepoint", task == "uea"))},
        "d_model": 32 if quick else 64, "n_heads": 4, "n_layers": 2, "dropout": 0.1,
        "rnn_hidden": 32 if quick else 64, "cde_hidden": 16 if quick else 32,
        "lmu_order": 16 if quick else 32, "lmu_memory_d": 4, "lmu_hidden": preset.get("lmu_hidden", "gru"),
        "contime_version": __version__,
    }
    return config


def run_irregular(config: dict[str, Any], *, device: str = "cpu", quiet: bool = False, out_dir: str | Path = "runs",
                  resume: bool = False, run_dir: str | Path | None = None,
                  console: Console | None = None) -> IrregularRun:
    """Train and test every model for every seed of ``config``; write metrics.json and accuracy.png."""
    console = console or Console()
    task = config["task"]
    splits = load_splits(config)
    try:
        run_path = open_run_dir(task, config, out_dir, resume=resume, run_dir=run_dir)
    except (FileNotFoundError, ValueError) as err:
        raise IrregularError(str(err)) from err
    sizes = splits.sizes()
    title = f"{task}{' ' + config['dataset'] if task == 'uea' else ''}, drop {config['drop']:.0%} ({config['drop_mode']})"
    console.print(f"[bold]{title}[/bold] ({splits.source}): {sizes['n_train']} / {sizes['n_val']} / {sizes['n_test']} "
                  f"series, up to {sizes['length']} points, {sizes['channels']} channel(s), {sizes['n_classes']} "
                  f"classes; torch threads {torch.get_num_threads()} -> {run_path}")
    steps_kept = (1.0 - config["drop"]) * float(splits.train.mask.sum(1).float().mean())
    model_config = {**config, "steps_kept": steps_kept}

    target = resolve_device(device)
    results: list[dict[str, Any]] = []
    for seed in config["seeds"]:
        val, test = dropped(splits.val, config["drop"], 10_000 + seed), dropped(splits.test, config["drop"], 20_000 + seed)
        redraw = config["drop_mode"] == "redraw" and config["drop"] > 0
        train = splits.train if redraw else dropped(splits.train, config["drop"], seed)
        for name in config["models"]:
            torch.manual_seed(seed)
            model = build_model(name, sizes["channels"], sizes["n_classes"], model_config)
            extra: dict[str, Any] = {}
            parts = [d.inputs() for d in (train, val, test)]
            if name == "RT" and not (redraw or config["online"]):
                start = time.perf_counter()
                parts = [precompute_features(*p, model.signature) for p in parts]
                extra["signature_seconds"] = time.perf_counter() - start
                extra["signatures"] = "offline"
                model = OfflineRoughTransformer(model)
            elif name == "RT":
                extra["signatures"] = "online"
            if redraw:
                model = RedrawnDrop(model, config["drop"])
            probe = tuple(t[: config["batch_size"]] for t in parts[0])
            memory = peak_step_memory_mb(model.to(target), probe, train.targets[: config["batch_size"]], target)
            train_config = TrainConfig(
                epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"], optimizer="adam",
                schedule=config["schedule"], min_lr_ratio=config["min_lr_ratio"],
                clip_grad_norm=config["clip_grad_norm"], seed=seed, max_steps_per_epoch=config["max_steps_per_epoch"],
                device=device, quiet=quiet, eval_batch_size=64, checkpoint_every=0, time_budget=config["time_budget"])
            label = f"{name} seed {seed}"
            trainer = Trainer(model, train_config, (parts[0], train.targets), (parts[1], val.targets),
                              (parts[2], test.targets), loss="cross_entropy", metric="accuracy",
                              run_dir=run_path / f"{name}-seed{seed}", name=label, console=console)
            result = trainer.fit(resume=True)
            results.append({**result, "model": name, "seed": seed, "peak_step_memory_mb": memory,
                            "drop": config["drop"], "drop_mode": config["drop_mode"], **extra, **sizes})
            summary = summarise(results)
            write_metrics(run_path, task, {**config, "summary": summary}, results)

    summary = summarise(results)
    plot_summary(summary, run_path / "accuracy.png", title)
    console.print(results_table(summary, f"{title}: test accuracy of the best-validation epoch"))
    console.print(f"wrote {run_path}/metrics.json, accuracy.png")
    return IrregularRun(run_path, config, results, summary)


# ------------------------------------------------------------------------------------------------ commands
def _command(task: str):
    """The typer command of ``task`` (one function per task, sharing every option)."""

    def command(
        quick: bool = typer.Option(False, "--quick", help="A tiny version of the same run, seconds per model."),
        dataset: Optional[str] = typer.Option(None, "--dataset", help=("UEA/UCR set bundled with aeon: "
                                              + ", ".join(BUNDLED_CLASSIFICATION) + " (default JapaneseVowels)")
                                              if task == "uea" else "Only for `uea`."),
        drop: float = typer.Option(0.0, "--drop", min=0.0, max=0.99, help="Probability of dropping each point."),
        drop_mode: str = typer.Option("fixed", "--drop-mode", help="fixed (masks drawn once per seed) or redraw "
                                      "(a new training mask every step)."),
        models: str = typer.Option(",".join(MODELS), "--models", help=f"Comma-separated, among {', '.join(MODELS)}."),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds (default 0,1,2)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs per model and seed."),
        length: Optional[int] = typer.Option(None, "--length", min=2, help="Points per sinusoid series."),
        n_per_class: Optional[int] = typer.Option(None, "--n-per-class", min=4, help="Sinusoid series per class."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Default 32."),
        lr: Optional[float] = typer.Option(None, "--lr", callback=positive_lr,
                                           help="Peak Adam learning rate (> 0; default 1e-3)."),
        n_windows: Optional[int] = typer.Option(None, "--windows", min=1, help="RT tokens per series (default 32)."),
        depth: Optional[int] = typer.Option(None, "--depth", min=1, help="RT signature depth (default 3)."),
        univariate: Optional[bool] = typer.Option(None, "--univariate/--multivariate",
                                                  help="RT: one signature per channel (default for uea)."),
        log_signature: bool = typer.Option(False, "--log-signature", help="RT: log-signatures."),
        basepoint: Optional[bool] = typer.Option(None, "--basepoint/--no-basepoint", help="RT: paths start at the "
                                                 "origin, so signatures see levels (default for uea)."),
        online: bool = typer.Option(False, "--online", help="RT: signatures inside the model, every step."),
        lmu_hidden: str = typer.Option("gru", "--lmu-hidden", help="The LMU baselines' hidden layer: gru (over "
                                       "memory and input, every step) or feedforward (on the final memory)."),
        max_steps_per_epoch: Optional[int] = typer.Option(None, "--max-steps-per-epoch", min=1),
        time_budget: Optional[float] = typer.Option(None, "--time-budget", min=0.0, help="Seconds per model and "
                                                    "seed: no new epoch starts after (the epochs done are recorded)."),
        device: str = typer.Option("cpu", "--device", help="cpu, auto, cuda or cuda:N."),
        threads: int = typer.Option(1, "--threads", min=0, help="torch CPU threads (0: torch's default)."),
        resume: bool = RESUME_OPTION,
        run_dir: Optional[str] = RUN_DIR_OPTION,
        quiet: bool = QUIET_OPTION,
        out_dir: str = OUT_DIR_OPTION,
    ) -> None:
        if dataset is not None and task != "uea":
            raise typer.BadParameter("only `contime run uea` takes a dataset", param_hint="--dataset")
        if drop_mode not in DROP_MODES:
            raise typer.BadParameter(f"choose fixed or redraw, got {drop_mode!r}", param_hint="--drop-mode")
        if lmu_hidden not in ("gru", "feedforward"):
            raise typer.BadParameter(f"choose gru or feedforward, got {lmu_hidden!r}", param_hint="--lmu-hidden")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise typer.BadParameter(f"{device!r} asked for, but CUDA is not available here", param_hint="--device")
        config = make_config(task, quick, dataset=dataset, drop=drop, drop_mode=drop_mode, models=parse_names(models, MODELS),
                             seeds=parse_seeds(seeds), epochs=epochs, length=length,
                             n_per_class=n_per_class, batch_size=batch_size, lr=lr, n_windows=n_windows, depth=depth,
                             univariate=univariate, log_signature=log_signature or None, basepoint=basepoint,
                             online=online or None, lmu_hidden=lmu_hidden,
                             max_steps_per_epoch=max_steps_per_epoch, time_budget=time_budget)
        if task == "sinusoid-long" and config["length"] <= 251:
            raise typer.BadParameter("the long variant needs more than 251 points", param_hint="--length")
        console = command_console()
        with experiment_command(console, threads, IrregularError):
            run_irregular(config, device=device, quiet=quiet, out_dir=out_dir, resume=resume or run_dir is not None,
                          run_dir=run_dir, console=console)

    command.__doc__ = {
        "sinusoid": "100-class sinusoids: Rough Transformer vs Transformer, GRU, Neural CDE, LMU and time-aware LMU.",
        "sinusoid-long": "Sinusoids whose second part switches to f/5: the same models, long-range dependence.",
        "uea": "A UEA/UCR set bundled with aeon: the same models, accuracy mean +- std over seeds.",
    }[task]
    return command


COMMANDS = {task: _command(task) for task in TASKS}
EXPERIMENT = "sinusoid"
command = COMMANDS["sinusoid"]
