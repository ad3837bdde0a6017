"""Long sequences: time and peak memory of the LMU's linear memory from 1,000 to 1,000,000 steps.

Paths (the memory op alone, batch --batch, one memory dimension, order --order, under torch.no_grad):

    fft       ``linear_memory_fft``: every state, (batch, time, 1, order), one FFT convolution.
    chunk     ``linear_memory_chunk_scan``: every state, by chunks of L steps (``chunk_length``: about T / 8
              within 16 to 128, a divisor of T where one is near) with the state passed by a scan over chunks;
              linear in the length.
    stream    ``linear_memory_final_chunked``: the last state only, chunks of --chunk steps with the state
              carried between them; its memory should not grow with the length.
    whole     ``linear_memory_final(..., chunk=None)``: the last state as one product with the impulse
              response of the whole length (what "final" did before streaming); memory grows with the length.

A_bar, B_bar: ``contime.legendre.discretize(order, theta, 1.0, "zoh")`` with theta = the length (the window
spans the sequence) unless --theta is given, cast to --dtype. Each op builds its own impulse response, as when
called with ``impulse=None``.

Time: median of --repeats calls after one warm-up call (CUDA: synchronized before and after; a path whose
warm-up exceeds --budget seconds gets one timed call). Peak memory: bytes of the tensors the call creates that
are alive at once, inputs (u, A_bar, B_bar) excluded; CUDA: torch.cuda.max_memory_allocated after
reset_peak_memory_stats, minus what was allocated before; CPU: ``contime.training.memory.peak_tensor_bytes``
(one extra call, not timed). A measurement whose up-front estimate exceeds --max-bytes is skipped with a note
(e.g. fft at 1e6 steps, order 256: a (1, 2e6, 256) real output and its complex spectra, ~11 GB in float32).

The growth exponents of time and peak memory against the length come from ``contime.experiments.fits.
loglog_slope`` over the lengths >= --fit-from (below, fixed costs such as building H dominate).

Usage:
    python benchmarks/long_sequences.py --device cpu --max-length 100000        # ~1 min on 2 CPU cores
    python benchmarks/long_sequences.py --device cuda --out benchmarks/results/long_sequences.jsonl
Prints a table; with --out, appends one JSON line per measurement (or skip) and one per fitted exponent.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time as clock
from pathlib import Path

import torch

from contime.experiments.fits import loglog_slope
from contime.legendre import discretize
from contime.ops.lmu_memory import (linear_memory_chunk_scan, linear_memory_fft, linear_memory_final,
                                    linear_memory_final_chunked)
from contime.ops.lmu_memory.chunk_scan import chunk_length
from contime.ops.lmu_memory.fft import fft_length
from contime.ops.lmu_memory.final import FINAL_CHUNK
from contime.bench.timing import peak_bytes, synchronize

PATHS = ("fft", "chunk", "stream", "whole")
LENGTHS = (1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000)


def next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def estimate_bytes(path: str, length: int, batch: int, order: int, chunk: int, itemsize: int) -> int:
    """Rough upper estimate of the peak bytes a call creates, to skip what cannot fit before trying it.

    Building H (k, L, n) by doubling holds about 4 * next_pow2(L) * n numbers at its peak (old and new
    columns side by side plus the product)."""
    def impulse(steps: int, size: int) -> int:
        return 4 * next_power_of_two(steps) * order * size
    if path == "fft":
        n_fft = fft_length(2 * length - 1)
        spectra = 2 * (n_fft // 2 + 1) * order * 2 * itemsize * (1 + batch)  # H's and the product's
        padded = n_fft * order * itemsize * (1 + batch)  # H zero-padded for its transform, the irfft output
        return max(impulse(length, itemsize), length * order * itemsize + spectra + padded)
    if path == "chunk":  # the states (twice where a padded last chunk must be cut off), the operator in float64
        L = chunk_length(length)
        blocks = -(-length // L)
        states = batch * blocks * L * order * itemsize * (1 if batch == 1 else 2)
        return states + 4 * (L + 1) * order * order * 8 + 2 * (order + L) * L * order * itemsize
    if path == "stream":
        size = min(chunk, length)
        return impulse(size, 8) + 2 * batch * size * itemsize + 4 * order * order * 8
    return impulse(length, itemsize) + 3 * batch * length * itemsize  # whole: H, the reversed and moved u


def call_time(fn, device: torch.device) -> float:
    synchronize(device)
    start = clock.perf_counter()
    fn()
    synchronize(device)
    return clock.perf_counter() - start


def path_call(path: str, u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, chunk: int):
    if path == "fft":
        return lambda: linear_memory_fft(u, A_bar, B_bar)
    if path == "chunk":
        return lambda: linear_memory_chunk_scan(u, A_bar, B_bar)
    if path == "stream":
        return lambda: linear_memory_final_chunked(u, A_bar, B_bar, chunk=chunk)
    return lambda: linear_memory_final(u, A_bar, B_bar, chunk=None)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--max-length", type=int, default=None, help="drop the lengths above this")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--order", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--theta", type=float, default=None, help="default: the length")
    parser.add_argument("--chunk", type=int, default=FINAL_CHUNK, help="steps per chunk of the stream path")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=20.0, help="one timed call when the warm-up exceeds it (s)")
    parser.add_argument("--max-bytes", type=float, default=None,
                        help="skip what is estimated to need more; default 4 GiB on CPU, 80%% of the GPU's memory")
    parser.add_argument("--fit-from", type=int, default=10_000, help="fit the exponents on lengths >= this")
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here (default: print only)")
    args = parser.parse_args(argv)
    if args.max_length is not None:
        args.lengths = [n for n in args.lengths if n <= args.max_length]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.max_bytes is None:
        args.max_bytes = (0.8 * torch.cuda.get_device_properties(0).total_memory if args.device == "cuda"
                          else 4 * 2 ** 30)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    common = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
              or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "order": args.order, "batch": args.batch, "dtype": args.dtype, "chunk": args.chunk,
              "date": datetime.datetime.now().isoformat(timespec="seconds")}
    records = []
    print(f"# {common['device']}, torch {common['torch']}, {common['threads']} threads, order {args.order}, "
          f"batch {args.batch}, {args.dtype}, chunk {args.chunk}, no_grad; peak = tensors created by the call")
    print(f"{'path':8} {'length':>9} {'time (s)':>10} {'peak (MB)':>10} {'est. (MB)':>10} {'input (MB)':>10}")
    generator = torch.Generator().manual_seed(0)
    for length in args.lengths:
        theta = float(length) if args.theta is None else args.theta
        A64, B64 = discretize(args.order, theta, 1.0, "zoh")
        A_bar, B_bar = A64.to(device, dtype), B64.to(device, dtype)
        u = torch.randn(args.batch, length, 1, generator=generator, dtype=dtype).to(device)
        for path in args.paths:
            record = dict(common, kind="measurement", path=path, length=length, theta=theta,
                          input_bytes=u.nbytes,
                          estimate_bytes=estimate_bytes(path, length, args.batch, args.order, args.chunk, itemsize))
            if record["estimate_bytes"] > args.max_bytes:
                record.update(kind="skipped", reason=f"estimated {record['estimate_bytes'] / 1e6:.0f} MB > "
                                                     f"--max-bytes {args.max_bytes / 1e6:.0f} MB")
                print(f"{path:8} {length:>9} skipped: {record['reason']}")
                records.append(record)
                continue
            fn = path_call(path, u, A_bar, B_bar, args.chunk)
            with torch.no_grad():
                warm = call_time(fn, device)  # also the first call's one-off costs (CUDA kernels, caches)
                repeats = 1 if warm > args.budget else args.repeats
                times = [call_time(fn, device) for _ in range(repeats)]
                peak = peak_bytes(fn, device)
            record.update(time_s=statistics.median(times), times_s=times, warmup_s=warm, peak_bytes=peak)
            records.append(record)
            print(f"{path:8} {length:>9} {record['time_s']:>10.4f} {peak / 1e6:>10.2f} "
                  f"{record['estimate_bytes'] / 1e6:>10.2f} {u.nbytes / 1e6:>10.2f}")
            del fn
        del u
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"# growth exponents (log-log slope over lengths >= {args.fit_from})")
    for path in args.paths:
        done = [r for r in records if r["path"] == path and r["kind"] == "measurement"
                and r["length"] >= args.fit_from]
        for quantity in ("time_s", "peak_bytes"):
            fit = loglog_slope([r["length"] for r in done], [r[quantity] for r in done]) if done else \
                {"exponent": float("nan"), "se": float("nan"), "points": 0}
            records.append(dict(common, kind="fit", path=path, quantity=quantity, fit_from=args.fit_from,
                                lengths=[r["length"] for r in done], **fit))
            print(f"{path:8} {quantity:10} exponent {fit['exponent']:7.3f} (se {fit['se']:.3f}, "
                  f"{fit['points']} points)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            for record in records:
                handle.write(json.dumps(record, default=str).replace("NaN", "null") + "\n")
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
