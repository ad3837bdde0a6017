"""Speed of the LMU's execution modes on the psMNIST shape, against nn.LSTM in the same process.

Paths timed (all float32, batch 100, length 784, one input, 10-way head on the last output, cross-entropy):

    lmu:<mode>   the psMNIST LMU of Voelker et al. 2019: order 256, theta 784, nn.RNNCell(212) hidden cell fed
                 [m_t, x_t]; one path per ``lmu.valid_modes()`` (recurrent, conv, fft), same module, ``lmu.mode`` set.
    plmu:<mode>  the parallel LMU of Chilkuri & Eliasmith (ICML 2021): linear memory, memory_d 1, order 468,
                 theta 784, feedforward hidden Linear(469, 346) + ReLU on the last step; "final" and "fft".
    lstm         nn.LSTM(1, H) with H chosen so its parameter count (with the head) is closest to lmu's.

For each path: forward time (no_grad) and training-step time (zero_grad, forward, loss, backward, Adam step),
median of --reps repetitions after warm-up (fewer for a path whose warm-up shows they would exceed --budget s).
Ratios: training step against lstm, and against the TensorFlow LMU training step measured earlier (--tf-ref,
1.29 s on the 2-core CPU box; the aim is a step <= tf_ref / 3).
Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU, the peak of the tensor bytes allocated during one
training step minus those freed, from torch.profiler(profile_memory=True) (memory already live before the step,
such as parameters and the batch, is not counted).

Usage (``make bench`` runs the first with THP_MEM_ALLOC_ENABLE=1, as the ``contime`` command does: see
``contime.host_memory``; every record says which was used):
    python benchmarks/lmu_modes.py                 # full run, a few minutes on 2 CPU cores
    python benchmarks/lmu_modes.py --quick         # tiny shape, seconds: checks that the script works
    python benchmarks/lmu_modes.py --modes fft lstm --reps 3 --profile
Writes one JSON line per measurement to --out (default benchmarks/results/lmu_modes.jsonl, appended).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from contime import LMU
from contime.host_memory import host_memory_settings

TF_REFERENCE_S = 1.29  # keras-lmu psMNIST LMU training step (batch 100), TensorFlow, this machine's CPU


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int = 100
    length: int = 784
    classes: int = 10
    order: int = 256  # psMNIST LMU
    theta: float = 784.0
    hidden: int = 212
    p_order: int = 468  # parallel LMU
    p_theta: float = 784.0
    p_hidden: int = 346


QUICK = Shape(batch=8, length=32, order=16, theta=32.0, hidden=12, p_order=24, p_theta=32.0, p_hidden=20)


class LMUClassifier(nn.Module):
    def __init__(self, lmu: LMU, classes: int):
        super().__init__()
        self.lmu = lmu
        self.head = nn.Linear(lmu.output_size, classes)

    def forward(self, x):  # x: (batch, time, 1) -> logits (batch, classes)
        y, _ = self.lmu(x)  # (batch, hidden): return_sequences=False
        return self.head(y)


class LSTMClassifier(nn.Module):
    def __init__(self, hidden: int, classes: int):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):  # x: (batch, time, 1) -> logits (batch, classes)
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def n_params(model: nn.Module) -> int:
    """Trainable parameters (theta is a frozen parameter here and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lstm_params(hidden: int, classes: int) -> int:
    return 4 * hidden * (1 + hidden + 2) + hidden * classes + classes


def matching_lstm_hidden(target: int, classes: int) -> int:
    return min(range(1, 2048), key=lambda h: abs(lstm_params(h, classes) - target))


def build_paths(s: Shape):
    """name -> (model, mode or None). Models are shared between the modes of one LMU."""
    lmu = LMU(1, 1, s.order, s.theta, nn.RNNCell(s.order + 1, s.hidden), input_to_hidden=True,
              return_sequences=False)
    lmu_model = LMUClassifier(lmu, s.classes)
    plmu = LMU(1, 1, s.p_order, s.p_theta, nn.Sequential(nn.Linear(s.p_order + 1, s.p_hidden), nn.ReLU()),
               input_to_hidden=True, return_sequences=False)
    plmu_model = LMUClassifier(plmu, s.classes)
    lstm_model = LSTMClassifier(matching_lstm_hidden(n_params(lmu_model), s.classes), s.classes)
    paths = {f"lmu:{mode}": (lmu_model, mode) for mode in lmu.valid_modes()}
    paths.update({f"plmu:{mode}": (plmu_model, mode) for mode in ("final", "fft")})
    paths["lstm"] = (lstm_model, None)
    return paths


def select(paths, wanted):
    """Keep the paths named in ``wanted``: a full name (lmu:fft), a model (plmu) or a mode (fft)."""
    if not wanted:
        return list(paths)
    tokens = {t for w in wanted for t in w.split(",") if t}
    keep = [p for p in paths if p in tokens or p.split(":")[0] in tokens or p.split(":")[-1] in tokens]
    if not keep:
        raise SystemExit(f"--modes {sorted(tokens)} matches none of {list(paths)}")
    return keep


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def once(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def timed(fn, device, warmup: int, reps: int, budget: float) -> list[float]:
    """Times of ``reps`` calls after ``warmup`` untimed ones (at least one); fewer calls (never fewer than one)
    when the last warm-up shows that ``reps`` would take longer than ``budget`` seconds."""
    t_warm = 0.0
    for _ in range(max(1, warmup)):
        t_warm = once(fn, device)
    reps = max(1, min(reps, int(budget / max(t_warm, 1e-9))))
    return [once(fn, device) for _ in range(reps)]


def cpu_peak_bytes(fn) -> int:
    """Peak of (allocated - freed) tensor bytes over one call, in op order, from the profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    return max(itertools.accumulate((d for _, d in deltas), initial=0))


def peak_bytes(fn, device) -> int:
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    return cpu_peak_bytes(fn)


def make_step(model, x, labels):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def forward():
        with torch.no_grad():
            model(x)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()

    return forward, train_step


def profile_step(name, fn, device, rows: int):
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=activities) as prof:
        fn()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nProfile of one training step, {name} (top {rows} ops by self time):")
    print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def git_revision() -> str | None:
    """The library's commit, with "+dirty" when src/ has uncommitted changes (the numbers depend on it)."""
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def fmt_s(t):
    return "-" if t is None else (f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.3f} s")


def fmt_x(r):
    return "-" if r is None else f"{r:.2f}x"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per path and phase (default 5)")
    ap.add_argument("--budget", type=float, default=20.0,
                    help="seconds per path and phase: slow paths get fewer reps (min 1), judged from the warm-up "
                         "(default 20)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1, min 1)")
    ap.add_argument("--quick", action="store_true", help="tiny shape, finishes in seconds (checks the script)")
    ap.add_argument("--modes", nargs="*", default=None,
                    help="subset: path names (lmu:fft), models (lmu, plmu, lstm) or modes (recurrent, conv, fft, "
                         "final); default all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf-ref", type=float, default=TF_REFERENCE_S,
                    help="TensorFlow LMU training step in seconds to compare against (default 1.29)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--profile", type=int, nargs="?", const=15, default=0, metavar="ROWS",
                    help="profile one training step of the fastest lmu and plmu paths; print the top ROWS ops")
    ap.add_argument("--out", default="benchmarks/results/lmu_modes.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    shape = QUICK if args.quick else Shape()
    reps = max(1, args.reps)
    paths = build_paths(shape)
    names = select(paths, args.modes)
    x = torch.rand(shape.batch, shape.length, 1, device=device)  # pixel-like values in [0, 1)
    labels = torch.randint(0, shape.classes, (shape.batch,), device=device)
    for model, _ in paths.values():
        model.to(device)

    run = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "device": str(device),
           "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "dtype": "float32",
           "quick": args.quick, "shape": dataclasses.asdict(shape), "command": " ".join(sys.argv),
           "git": git_revision(),
           "loadavg": os.getloadavg()[0],  # before we start: other processes on the box skew CPU timings
           **host_memory_settings()}  # huge pages halve CPU step times here (contime.host_memory)
    print(f"contime {run['git']}, torch {run['torch']}, {run['device']} ({run['card'] or platform.machine()}), "
          f"{run['threads']} threads, load average {run['loadavg']:.2f}, shape {dataclasses.asdict(shape)}, "
          f"THP_MEM_ALLOC_ENABLE={run['thp_mem_alloc_enable']} (kernel: {run['transparent_hugepage']})")

    results = {}
    for name in names:
        model, mode = paths[name]
        if mode is not None:
            model.lmu.mode = mode
        model.train()
        forward, train_step = make_step(model, x, labels)
        t0 = time.perf_counter()
        fwd = timed(forward, device, args.warmup, reps, args.budget)
        peak = None if args.no_memory else peak_bytes(train_step, device)  # also an untimed warm-up
        step = timed(train_step, device, args.warmup, reps, args.budget)
        results[name] = {"path": name, "model": name.split(":")[0], "mode": mode, "params": n_params(model),
                         "forward_s": statistics.median(fwd), "train_step_s": statistics.median(step),
                         "forward_all_s": fwd, "train_step_all_s": step, "reps": [len(fwd), len(step)],
                         "warmup": max(1, args.warmup),
                         "peak_bytes": peak}
        print(f"  {name:14s} forward {fmt_s(results[name]['forward_s']):>10s} ({len(fwd)} reps)  "
              f"train step {fmt_s(results[name]['train_step_s']):>10s} ({len(step)} reps)  "
              f"[{time.perf_counter() - t0:.1f} s]",
              flush=True)

    lstm_step = results.get("lstm", {}).get("train_step_s")
    lstm_fwd = results.get("lstm", {}).get("forward_s")
    aim = args.tf_ref / 3
    for r in results.values():
        r["step_vs_lstm"] = r["train_step_s"] / lstm_step if lstm_step else None  # > 1: slower than the LSTM
        r["forward_vs_lstm"] = r["forward_s"] / lstm_fwd if lstm_fwd else None
        r["speedup_vs_tf"] = args.tf_ref / r["train_step_s"]  # > 1: faster than the TensorFlow LMU
        r["meets_aim"] = r["train_step_s"] <= aim

    print_table(results, args.tf_ref, aim, paths)
    if device.type == "cpu" and run["loadavg"] > 0.5:
        print(f"warning: load average {run['loadavg']:.2f} before the run: other work shares the CPU, "
              "so these times are inflated")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in results.values():
            for phase in ("forward", "train_step"):
                f.write(json.dumps({**run, "path": r["path"], "model": r["model"], "mode": r["mode"],
                                    "phase": phase, "median_s": r[f"{phase}_s"], "times_s": r[f"{phase}_all_s"],
                                    "reps": r["reps"][phase == "train_step"], "warmup": r["warmup"],
                                    "params": r["params"],
                                    "peak_bytes": r["peak_bytes"] if phase == "train_step" else None,
                                    "vs_lstm": r[f"{'step' if phase == 'train_step' else phase}_vs_lstm"],
                                    "tf_ref_s": args.tf_ref if phase == "train_step" else None,
                                    "speedup_vs_tf": r["speedup_vs_tf"] if phase == "train_step" else None})
                        + "\n")
    print(f"wrote {2 * len(results)} lines to {out}")

    if args.profile:
        for model_name in ("lmu", "plmu"):
            timed_paths = [r for r in results.values() if r["model"] == model_name]
            if timed_paths:
                best = min(timed_paths, key=lambda r: r["train_step_s"])
                model, mode = paths[best["path"]]
                model.lmu.mode = mode
                profile_step(best["path"], make_step(model, x, labels)[1], device, args.profile)


def print_table(results, tf_ref, aim, paths):
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        for r in results.values():
            print(r)
        return
    table = Table(title=f"LMU modes vs nn.LSTM (median; TF LMU step {tf_ref:.2f} s, aim <= {aim:.2f} s)")
    for col in ("path", "params", "forward", "train step", "step / LSTM", "TF / step", "aim", "peak mem"):
        table.add_column(col, justify="left" if col == "path" else "right", no_wrap=True)
    for r in results.values():
        mem = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2 ** 20:.1f} MiB"
        table.add_row(r["path"], f"{r['params']:,}", fmt_s(r["forward_s"]), fmt_s(r["train_step_s"]),
                      fmt_x(r["step_vs_lstm"]), fmt_x(r["speedup_vs_tf"]), "yes" if r["meets_aim"] else "no", mem)
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    if "lstm" in results:
        print(f"lstm hidden size {paths['lstm'][0].lstm.hidden_size}, matched to lmu's parameter count")


if __name__ == "__main__":
    main()
