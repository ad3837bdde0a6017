"""``contime bench``: time the LMU's paths against nn.LSTM (cuDNN on CUDA) and the bandwidth floor.

    contime bench                                 psMNIST shape (batch 100, 784 steps, order 256, hidden 212), every path
    contime bench --quick                         a tiny shape, two repeats: seconds on a CPU
    contime bench --paths memory-fft,lmu-fft,lstm --passes forward
    contime bench --quick --precision             also the error table of float32 and autocast against float64
    contime bench --device cuda --cuda-graph      each pass timed as a CUDA graph replay (no host launch gaps)

Each (path, pass) is one table row and one JSON line appended to ``--out``; ``--precision`` adds one line per
(path, precision). "backward" times forward + backward together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.table import Table

from ..experiments.rundir import command_console
from ..training.distributed import resolve_device
from .paths import PASSES, PATHS, PSMNIST_SHAPE, QUICK_SHAPE, REFERENCE_PATH, BenchShape
from .precision import precision_rows
from .record import append_jsonl, run_metadata
from .runner import resolve_bandwidth, run_timings

QUICK_REPEAT = 2
QUICK_COPY_BYTES = 32 << 20


def _check_writable(out: str) -> None:
    """Before minutes of timings: ``--out`` must be a file that can be appended to (its folder is made)."""
    path = Path(out)
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{out} is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as err:
        raise typer.BadParameter(f"cannot append JSON lines to {out}: {err}", param_hint="--out") from err


def parse_choice_list(text: Optional[str], choices, option: str, what: str) -> list[str]:
    """A comma-separated subset of ``choices`` (order kept, repeats dropped); unknown names raise BadParameter
    naming ``option`` and listing the valid ones. None or empty selects all of ``choices``."""
    if text is None or not text.strip():
        return list(choices)
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise typer.BadParameter(f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; valid "
                                 f"{what + ('es' if what.endswith('s') else 's')}: "
                                 f"{', '.join(choices)}", param_hint=option)
    return names


def _positive(value, option: str, kind=int):
    if value is None:
        return None
    if not value > 0 or (kind is float and value == float("inf")):
        raise typer.BadParameter(f"must be > 0, got {value}", param_hint=option)
    return value


def _ms(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _ratio(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def timing_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("path", "kind", "pass", "ms", "min ms", "x LSTM", "floor ms", "of floor", "peak MB", "note"):
        table.add_column(column, justify="left" if column in ("path", "kind", "pass", "note") else "right")
    for r in rows:
        note = r.get("skipped") or r.get("error") or (f"layout {r['layout']}" if r.get("layout") else "")
        table.add_row(r["path"], r["kind"], "fwd+bwd" if r["pass"] == "backward" else r["pass"], _ms(r["ms"]),
                      _ms(r.get("min_ms")), _ratio(r.get("ratio_to_lstm")), _ms(r.get("floor_ms")),
                      _ratio(r.get("floor_fraction"), 3),
                      "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.1f}", note)
    return table


def precision_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("path", "precision", "output dtype", "output rel err", "grad rel err", "note"):
        table.add_column(column, justify="right" if "err" in column else "left")
    for r in rows:
        err = (lambda v: "-" if v is None else f"{v:.2e}")
        table.add_row(r["path"], r.get("precision") or "-", r.get("output_dtype") or "-", err(r.get("output_rel_err")),
                      err(r.get("grad_rel_err")), r.get("skipped") or r.get("error") or "")
    return table


def bench(
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (CUDA when available)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Sequences per batch (default 100; --quick 4)."),
    time_steps: Optional[int] = typer.Option(None, "--time", help="Sequence length (default 784; --quick 32)."),
    order: Optional[int] = typer.Option(None, "--order", help="Memory order n (default 256; --quick 16)."),
    hidden: Optional[int] = typer.Option(None, "--hidden",
                                         help="Hidden size of the LMU's RNNCell and the LSTM (default 212; --quick 12)."),
    theta: Optional[float] = typer.Option(None, "--theta", help="Memory window in steps (default 784; --quick 32)."),
    paths: Optional[str] = typer.Option(None, "--paths",
                                        help=f"Comma-separated paths (default all): {', '.join(PATHS)}. "
                                             f"'{REFERENCE_PATH}' is always added: every ratio needs it."),
    passes: str = typer.Option("forward,backward", "--passes",
                               help="Comma-separated: forward (no_grad), backward (forward + backward, timed together)."),
    repeat: Optional[int] = typer.Option(None, "--repeat", help="Timed calls per path and pass (default 5; --quick 2)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed calls before timing (>= 1)."),
    budget: float = typer.Option(30.0, "--budget",
                                 help="Seconds per path and pass: a path whose warm-up call shows that --repeat calls "
                                      "would take longer gets fewer (at least one)."),
    bandwidth: Optional[float] = typer.Option(None, "--bandwidth",
                                              help="Peak bandwidth in GB/s for the floor (default: the card's nominal "
                                                   "peak on known CUDA cards, else the measured copy rate)."),
    out: str = typer.Option("runs/bench.jsonl", "--out", help="JSON lines are appended here."),
    precision: bool = typer.Option(False, "--precision",
                                   help="Also measure each memory and cell path's error in float32 and under autocast "
                                        "(bfloat16; float16 on CUDA) against float64."),
    no_memory: bool = typer.Option(False, "--no-memory", help="Skip the peak-memory call."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph",
                                    help="Time each pass as replays of one CUDA graph, captured after the warm-up: the "
                                         "GPU's own time, without the host's launch gaps (CUDA only)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny shape and 2 repeats: seconds on a CPU."),
) -> None:
    """Milliseconds of each LMU path, its ratio to nn.LSTM (cuDNN on CUDA) and its fraction of the bandwidth floor."""
    console = command_console()
    base = QUICK_SHAPE if quick else PSMNIST_SHAPE
    for value, option in ((batch, "--batch"), (time_steps, "--time"), (order, "--order"), (hidden, "--hidden"),
                          (repeat, "--repeat"), (warmup, "--warmup")):
        _positive(value, option)
    _positive(theta, "--theta", float)
    _positive(budget, "--budget", float)
    _positive(bandwidth, "--bandwidth", float)
    shape = BenchShape(batch=batch or base.batch, time=time_steps or base.time, order=order or base.order,
                       hidden=hidden or base.hidden, theta=float(theta or base.theta))
    repeat = repeat or (QUICK_REPEAT if quick else 5)
    names = parse_choice_list(paths, list(PATHS), "--paths", "path")
    if REFERENCE_PATH not in names:
        names.append(REFERENCE_PATH)
    pass_names = parse_choice_list(passes, list(PASSES), "--passes", "pass")
    _check_writable(out)
    try:
        target = resolve_device(device)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--device")
    if cuda_graph and target.type != "cuda":
        raise typer.BadParameter(f"CUDA graphs need a CUDA device, got --device {device} ({target})",
                                 param_hint="--cuda-graph")

    meta = run_metadata(target, shape.as_dict(), torch.float32)
    bw = resolve_bandwidth(target, bandwidth, QUICK_COPY_BYTES if quick else None)
    console.print(f"[bold]contime bench[/bold]: {meta['device_name']} ({target}), torch {meta['torch']}, "
                  f"{meta['threads']} threads, git {meta['git']}, shape {shape.as_dict()}")
    console.print(f"floor bandwidth {bw['bandwidth_gbps']:.0f} GB/s ({bw['bandwidth_source']}); measured copy rate "
                  f"{bw['copy_gbps']:.1f} GB/s (read + written bytes)")

    def progress(row):
        text = row.get("skipped") or row.get("error") or f"{_ms(row['ms'])} ms ({row['repeat']} calls)"
        console.print(f"  {row['path']:<16} {row['pass']:<9} {text}", highlight=False)

    rows = run_timings(names, shape, target, pass_names, warmup=warmup, repeat=repeat, budget_s=budget,
                       bandwidth_gbps=bw["bandwidth_gbps"], measure_memory=not no_memory, cuda_graph=cuda_graph,
                       progress=progress)
    calls = "CUDA graph replays" if cuda_graph else "calls"
    console.print(timing_table(rows, f"{meta['device_name']}, float32, median of up to {repeat} {calls}; "
                                     f"x LSTM = ms / lstm ms (same pass); floor at {bw['bandwidth_gbps']:.0f} GB/s"))
    if target.type == "cpu" and meta.get("loadavg", 0) > 0.5:
        console.print(f"note: load average {meta['loadavg']:.2f} before the run; other work shares this CPU")
    records = [{**meta, **bw, "record": "timing", **r} for r in rows]

    if precision:
        console.print("precision: float64 reference, then float32 and autocast ...")
        prec = precision_rows(names, shape, target)
        console.print(precision_table(prec, "relative error against float64 (||out - ref|| / ||ref||)"))
        records += [{**meta, "record": "precision", **r} for r in prec]
    written = append_jsonl(out, records)
    console.print(f"wrote {written} JSON lines to {out}")
