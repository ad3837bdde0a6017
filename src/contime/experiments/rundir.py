"""Run directories shared by all experiments.

Every run writes to ``<base>/<experiment>/<timestamp>/`` (base ``runs`` by default):

    config.json    the full configuration of the run
    metrics.json   {"experiment": str, "config": {...}, "results": [record, ...]}
    *.png          plots

A record holds at least ``model`` (str), ``params`` (trainable parameter count), ``metric`` (its name, e.g.
"mse"), ``value``, ``seconds_per_epoch`` (null when nothing is trained) and ``epochs``; experiments add
their own keys (e.g. ``T`` and ``delay``). JSON files are written atomically: to a temporary file in the
same folder, then ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console

from ..training.checkpoint import write_json_atomic  # noqa: F401  (re-exported for the experiments)

RESULT_KEYS = ("model", "params", "metric", "value", "seconds_per_epoch", "epochs")


def create_run_dir(experiment: str, base_dir: str | os.PathLike = "runs",
                   timestamp: str | None = None) -> Path:
    """Create and return a fresh ``base_dir/experiment/timestamp`` folder.

    Args:
        experiment: experiment name, a single path component (e.g. "delay").
        base_dir: parent of all runs.
        timestamp: folder name; default the local time as ``YYYYmmdd-HHMMSS``. If that folder already
            exists (two runs in the same second), ``-1``, ``-2``, ... is appended.
    """
    if not isinstance(experiment, str) or not experiment or Path(experiment).name != experiment \
            or experiment in (".", ".."):
        raise ValueError(f"experiment must be a non-empty name without path separators, got {experiment!r}")
    stamp = timestamp or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = Path(base_dir) / experiment
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        path = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a fresh run folder under {parent} for timestamp {stamp}")


def result_record(model: str, params: int, metric: str, value: float, *, seconds_per_epoch: float | None = None,
                  epochs: int = 0, **extra: Any) -> dict[str, Any]:
    """One entry of ``metrics.json``'s results; ``extra`` keys (e.g. ``T=1000``) follow the required ones."""
    record = {"model": str(model), "params": int(params), "metric": str(metric), "value": float(value),
              "seconds_per_epoch": None if seconds_per_epoch is None else float(seconds_per_epoch),
              "epochs": int(epochs)}
    record.update(extra)
    return record


def _check_results(results) -> list[dict[str, Any]]:
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"results must be a list of dicts, got {type(results).__name__}")
    for i, record in enumerate(results):
        if not isinstance(record, dict):
            raise TypeError(f"results[{i}] must be a dict, got {type(record).__name__}")
        missing = [key for key in RESULT_KEYS if key not in record]
        if missing:
            raise ValueError(f"results[{i}] lacks the keys {missing}; every record needs {list(RESULT_KEYS)}")
        value = record["value"]
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"results[{i}]['value'] must be finite, got {value}")
    return list(results)


def write_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``run_dir/config.json``."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    return write_json_atomic(Path(run_dir) / "config.json", config)


def write_metrics(run_dir: str | os.PathLike, experiment: str, config: dict[str, Any],
                  results: list[dict[str, Any]]) -> Path:
    """Write ``run_dir/metrics.json`` as ``{"experiment", "config", "results"}`` after checking each record."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    payload = {"experiment": str(experiment), "config": config, "results": _check_results(results)}
    return write_json_atomic(Path(run_dir) / "metrics.json", payload)


def parse_ints(text: Optional[str], name: str) -> Optional[list[int]]:
    """A comma-separated list of positive integers from a command-line option (None stays None)."""
    if text is None:
        return None
    try:
        values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a comma-separated list of integers, got {text!r}", param_hint=name)
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"expected integers >= 1, got {text!r}", param_hint=name)
    return values


def parse_seeds(text: Optional[str], option: str = "--seeds") -> Optional[list[int]]:
    """Distinct integer seeds >= 0 from a comma-separated option (None stays None)."""
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise typer.BadParameter(f"expected distinct integers >= 0, got {text!r}", param_hint=option)
    return seeds


def parse_names(text: str, choices, option: str = "--models") -> list[str]:
    """A comma-separated choice of names from an option, matched without regard to case and returned as spelled in
    ``choices``: ``"lmu,LSTM"`` -> ``["LMU", "LSTM"]``. Unknown, missing or repeated names raise
    ``typer.BadParameter``."""
    lookup = {c.lower(): c for c in choices}
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n.lower() not in lookup]
    if not names or unknown:
        raise typer.BadParameter(f"choose among {', '.join(choices)}; got {text!r}", param_hint=option)
    if len({n.lower() for n in names}) != len(names):
        raise typer.BadParameter(f"a name is given twice in {text!r}", param_hint=option)
    return [lookup[n.lower()] for n in names]


def open_run_dir(experiment: str, config: dict[str, Any], base_dir: str | os.PathLike = "runs",
                 resume: bool = False, run_dir: str | os.PathLike | None = None) -> Path:
    """The folder a run writes to, fresh or resumed, with ``config.json`` written or checked.

    Args:
        experiment: experiment name.
        config: the run's configuration (JSON-serialisable).
        base_dir: parent of all runs.
        resume: continue the newest run of this experiment under ``base_dir`` whose config.json equals
            ``config`` (so a resumed run computes what the killed one would have, and a later start that failed
            with other settings does not hide it), or ``run_dir`` when given.
        run_dir: an explicit run folder to continue (implies resume).

    Raises:
        FileNotFoundError: nothing to resume. ValueError: the stored config differs (names the keys).
    """
    if run_dir is None and not resume:
        path = create_run_dir(experiment, base_dir)
        write_config(path, config)
        return path
    if run_dir is not None:
        path = Path(run_dir)
    else:
        runs = sorted(p for p in (Path(base_dir) / experiment).glob("*") if (p / "config.json").is_file())
        if not runs:
            raise FileNotFoundError(f"resume: no run of {experiment!r} with a config.json under {base_dir}")
        wanted = _as_json(config)
        same = [p for p in runs if _stored_config(p) == wanted]
        path = (same or runs)[-1]  # none the same: the newest, whose differing keys the error names
    stored_file = path / "config.json"
    if not stored_file.is_file():
        raise FileNotFoundError(f"run_dir {path} has no config.json to resume from")
    stored = _stored_config(path)
    wanted = _as_json(config)
    differing = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if differing:
        raise ValueError(f"resume: the configuration differs from the stored run {path} in {differing}; "
                         "start a new run instead")
    return path


def _stored_config(run: Path) -> Any:
    return json.loads((run / "config.json").read_text())


def _as_json(config: dict[str, Any]) -> Any:
    return json.loads(json.dumps(config))  # the same normalisation as the stored copy (tuples become lists)


def command_console() -> Console:
    """The console an experiment command prints to: wide enough for its tables when the output is a log file
    (rich would otherwise crop them to 80 columns)."""
    return Console() if sys.stdout.isatty() else Console(width=132)


@contextlib.contextmanager
def experiment_command(console: Console, threads: int | None, *errors: type[Exception]):
    """Around an experiment's run in its command: ``threads`` torch threads (0/None keeps the current count;
    restored afterwards), and the experiment's own ``errors`` shown as one red line with exit code 2."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    except errors as err:
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        raise typer.Exit(code=2)
    finally:
        torch.set_num_threads(previous)


def positive_lr(value: float | None) -> float | None:
    """typer callback of every command's ``--lr``: a learning rate must be > 0 (0 trains nothing; typer's ``min``
    would let 0 through, and a check inside a run comes after its folder is made)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


# Command-line options every experiment command shares (typer reads these as parameter defaults).
RESUME_OPTION = typer.Option(False, "--resume", help="Continue the newest run in --out-dir (same settings).")
RUN_DIR_OPTION = typer.Option(None, "--run-dir", help="Continue this run folder (implies --resume).")
QUIET_OPTION = typer.Option(False, "--quiet", help="No progress bars; one line per epoch.")
OUT_DIR_OPTION = typer.Option("runs", "--out-dir", help="Base folder for run outputs.")
