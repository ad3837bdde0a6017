"""Speed of the time-aware LMU, ``lmu(x, dt=...)``, against the uniform LMU on the same shape.

Shape (float32): batch 32, length 500, one input, order 64, theta 500. Models:

    memory   memory-only LMU (input kernel, no hidden cell): uniform runs "fft", irregular the linear loop
    rnn      nn.RNNCell(64) hidden cell fed [m_t, x_t]: uniform runs the CPU's auto choice (the loop), irregular
             the linear memory loop followed by the cell over all steps
    rnn-h2m  as rnn, with hidden_to_memory: both run the full cell loop (skip with --models memory rnn)

Step lengths:

    uniform  dt=None: today's LMU
    grid     each sequence keeps a random 50% of the points of a unit grid of length 1000, so dt is a small
             integer (about 15 distinct values in the batch): the common case of dropped samples
    random   dt uniform in [0.5, 1.5], every one of the 16,000 steps distinct: the worst case, where each step
             needs its own 65x65 matrix exponential

For each (model, steps): forward time (no_grad) and forward+backward time (loss = mean of y^2, gradients to the
weights; theta fixed unless --trainable-theta), median of --reps runs after --warmup untimed ones (fewer runs
when the warm-up shows they would exceed --budget seconds). Ratios are against the uniform LMU of the same model.
The time to discretize the distinct steps (``discretize_steps``, float64) is printed on its own line.

Usage:
    python benchmarks/lmu_dt.py                 # full run, a few minutes on 2 CPU cores
    python benchmarks/lmu_dt.py --quick         # tiny shape: checks that the script works
    python benchmarks/lmu_dt.py --threads 1 --steps uniform grid
Appends one JSON line per measurement to --out (default benchmarks/results/lmu_dt.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from contime import LMU
from contime.legendre import discretize_steps


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int = 32
    length: int = 500
    order: int = 64
    theta: float = 500.0
    hidden: int = 64


QUICK = Shape(batch=4, length=40, order=8, theta=40.0, hidden=8)


def build_models(s: Shape, trainable_theta: bool) -> dict[str, LMU]:
    common = dict(trainable_theta=trainable_theta)
    return {
        "memory": LMU(1, 1, s.order, s.theta, **common),
        "rnn": LMU(1, 1, s.order, s.theta, nn.RNNCell(s.order + 1, s.hidden), input_to_hidden=True, **common),
        "rnn-h2m": LMU(1, 1, s.order, s.theta, nn.RNNCell(s.order + 1, s.hidden), input_to_hidden=True,
                       hidden_to_memory=True, **common),
    }


def make_steps(s: Shape, generator: torch.Generator) -> dict[str, torch.Tensor | None]:
    grid = torch.stack([torch.randperm(2 * s.length, generator=generator)[:s.length].sort().values
                        for _ in range(s.batch)]).float()  # kept points of a unit grid twice as long
    grid_dt = torch.diff(grid, dim=1, prepend=torch.full((s.batch, 1), -1.0))  # first sample 1 after the start
    random_dt = 0.5 + torch.rand(s.batch, s.length, generator=generator)
    return {"uniform": None, "grid": grid_dt, "random": random_dt}


def once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed(fn, warmup: int, reps: int, budget: float) -> list[float]:
    """``reps`` timed calls after ``warmup`` untimed ones (at least one); fewer (min 2) when the warm-up shows
    that ``reps`` would take longer than ``budget`` seconds."""
    t_warm = 0.0
    for _ in range(max(1, warmup)):
        t_warm = once(fn)
    reps = max(2, min(reps, int(budget / max(t_warm, 1e-9))))
    return [once(fn) for _ in range(reps)]


def fmt_s(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="timed runs per measurement (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1, min 1)")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds per measurement before reps are cut")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--models", nargs="*", default=["memory", "rnn", "rnn-h2m"])
    ap.add_argument("--steps", nargs="*", default=["uniform", "grid", "random"])
    ap.add_argument("--trainable-theta", action="store_true", help="also backpropagate to theta")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/lmu_dt.jsonl")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = QUICK if args.quick else Shape()
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(shape.batch, shape.length, 1, generator=generator)
    steps = make_steps(shape, generator)
    models = build_models(shape, args.trainable_theta)
    run = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "threads": torch.get_num_threads(), "loadavg": os.getloadavg()[0], "shape": dataclasses.asdict(shape),
           "trainable_theta": args.trainable_theta}
    print(f"torch {run['torch']}, {run['cpu_count']} CPUs, {run['threads']} threads, load average "
          f"{run['loadavg']:.2f}, shape {run['shape']}, trainable theta {args.trainable_theta}")

    theta64 = torch.tensor([shape.theta], dtype=torch.float64)
    for name in args.steps:
        if steps[name] is not None:
            dt = steps[name]
            t = statistics.median(timed(lambda: discretize_steps(shape.order, theta64, dt), 1, 3, args.budget))
            print(f"  discretize {name:7s}: {dt.unique().numel():6d} distinct steps in {fmt_s(t)}")

    rows = []
    for model_name in args.models:
        lmu = models[model_name]
        params = [p for p in lmu.parameters() if p.requires_grad]
        for steps_name in args.steps:
            dt = steps[steps_name]

            def forward():
                with torch.no_grad():
                    lmu(x, dt=dt)

            def forward_backward():
                for p in params:
                    p.grad = None
                y, _ = lmu(x, dt=dt)
                y.pow(2).mean().backward()

            fwd = timed(forward, args.warmup, args.reps, args.budget)
            both = timed(forward_backward, args.warmup, args.reps, args.budget)
            rows.append({"model": model_name, "steps": steps_name, "forward_s": statistics.median(fwd),
                         "forward_backward_s": statistics.median(both), "forward_all_s": fwd,
                         "forward_backward_all_s": both})
            print(f"  {model_name:8s} {steps_name:8s} forward {fmt_s(rows[-1]['forward_s']):>9s} ({len(fwd)} runs)"
                  f"  forward+backward {fmt_s(rows[-1]['forward_backward_s']):>9s} ({len(both)} runs)", flush=True)

    base = {r["model"]: r for r in rows if r["steps"] == "uniform"}
    print(f"\n{'model':8s} {'steps':8s} {'forward':>10s} {'vs uniform':>10s} {'fwd+bwd':>10s} {'vs uniform':>10s}")
    for r in rows:
        b = base.get(r["model"])
        r["forward_ratio"] = r["forward_s"] / b["forward_s"] if b else None
        r["forward_backward_ratio"] = r["forward_backward_s"] / b["forward_backward_s"] if b else None
        ratio = (lambda v: "-" if v is None else f"{v:.2f}x")
        print(f"{r['model']:8s} {r['steps']:8s} {fmt_s(r['forward_s']):>10s} {ratio(r['forward_ratio']):>10s} "
              f"{fmt_s(r['forward_backward_s']):>10s} {ratio(r['forward_backward_ratio']):>10s}")
    if run["loadavg"] > 0.5:
        print(f"note: load average {run['loadavg']:.2f} before the run: other work shares the CPU")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in rows:
            f.write(json.dumps({**run, **r}) + "\n")
    print(f"wrote {len(rows)} lines to {out}")


if __name__ == "__main__":
    main()
