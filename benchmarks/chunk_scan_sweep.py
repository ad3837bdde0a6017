"""The chunk-scan memory's chunk length L and precision at the psMNIST shape, beside the FFT in the same run.

One JSON line per (precision, L) with the median milliseconds of the forward (no gradient) and of forward +
backward (the input's gradient), the ratio to the FFT's, the fraction of the write floor (the 80 MB of states
at ``--bandwidth`` GB/s), and the form of the chunk states (direct or doubling). On CUDA each is also timed as
replays of a CUDA graph (``*_graph_ms``): the GPU's own time, without the host's launch gaps, which bound a few
small products at this size. Made for the GPU (``gpu_kernels.sh``, step "sweep"); ``--device cpu --quick``
checks it here.

    python benchmarks/chunk_scan_sweep.py --device cuda
"""

from __future__ import annotations

import argparse
import json

import torch

from contime.bench.paths import Case
from contime.bench.timing import graph_replay, time_call
from contime.legendre import discretize, impulse_response
from contime.ops.lmu_memory import chunk_scan, linear_memory_fft


def timed(fn, u, grad, device, repeat) -> dict:
    """Median ms of the forward (no gradient) and of forward + backward (the bench's passes, ``Case.pass_fn``);
    on CUDA also of their graph replays."""
    case = Case(run=fn, input=u)
    times = {}
    for name, call in (("forward", case.pass_fn("forward")), ("forward_backward", case.pass_fn("backward", grad))):
        times[f"{name}_ms"] = time_call(call, device, warmup=2, repeat=repeat)["median_ms"]
        if device.type == "cuda":
            times[f"{name}_graph_ms"] = time_call(graph_replay(call, device, 2), device, repeat=repeat)["median_ms"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--time", type=int, default=784)
    parser.add_argument("--order", type=int, default=256)
    parser.add_argument("--lengths", default="16,28,49,56,98,112,196")
    parser.add_argument("--precisions", default="tf32,ieee,tf32x3")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--bandwidth", type=float, default=3350.0, help="GB/s for the write floor (H100 SXM)")
    parser.add_argument("--quick", action="store_true", help="batch 4, 64 steps, order 16, 2 calls")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.time, args.order, args.repeat, args.lengths = 4, 64, 16, 2, "8,16,64"
    device = torch.device(args.device)
    A64, B64 = discretize(args.order, torch.tensor([float(args.time)], dtype=torch.float64), 1.0, "zoh")
    A, B = A64.float().to(device), B64.float().to(device)
    H = impulse_response(A64, B64, args.time).float().to(device)
    u = torch.randn(args.batch, args.time, 1, device=device)
    grad = torch.randn(args.batch, args.time, 1, args.order, device=device)
    floor_ms = grad.numel() * 4 / (args.bandwidth * 1e9) * 1e3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    fft = timed(lambda x: linear_memory_fft(x, A, B, impulse=H), u, grad, device, args.repeat)
    print(json.dumps({"device": name, "path": "fft", **fft, "floor_ms": floor_ms}), flush=True)
    for precision in args.precisions.split(","):
        for L in (int(x) for x in args.lengths.split(",")):
            run = lambda x: chunk_scan.linear_memory_chunk_scan(x, A, B, impulse=H, precision=precision,  # noqa: E731
                                                                block=L)
            times = timed(run, u, grad, device, args.repeat)
            blocks = -(-args.time // min(L, args.time))
            form = ("one chunk" if blocks == 1 else "direct"
                    if chunk_scan.direct_states(blocks, args.order, L, args.batch) else "doubling")
            ratios = {f"{key[:-3]}_vs_fft": value / fft[key] for key, value in times.items()}
            floors = {f"{key[:-3]}_floor_fraction": floor_ms * (2 if "backward" in key else 1) / value
                      for key, value in times.items()}
            print(json.dumps({"device": name, "path": "chunk-scan", "precision": precision, "L": L, "states": form,
                              **times, **ratios, **floors}), flush=True)
            chunk_scan.clear_cache()  # each L builds its own operator; keep the device's memory flat


if __name__ == "__main__":
    main()
