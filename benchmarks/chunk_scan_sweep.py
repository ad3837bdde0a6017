"""The chunk-scan memory's chunk length L and precision at the psMNIST shape, beside the FFT in the same run.

One JSON line per (precision, L) with the median milliseconds of the forward (no gradient) and of forward +
backward (the input's gradient), the ratio to the FFT's, the fraction of the write floor (the 80 MB of states
at ``--bandwidth`` GB/s), and which scan over chunks ran (one dense product or doubling steps). Made for the GPU
(``gpu_kernels.sh``, step "sweep"); ``--device cpu --quick`` checks it here.

    python benchmarks/chunk_scan_sweep.py --device cuda
"""

from __future__ import annotations

import argparse
import json

import torch

from contime.bench.timing import time_call
from contime.legendre import discretize, impulse_response
from contime.ops.lmu_memory import chunk_scan, linear_memory_fft


def timed(fn, u, grad, device, repeat):
    """(forward ms, forward + backward ms), medians."""
    def forward():
        with torch.no_grad():
            fn(u)

    def both():
        fn(u).backward(grad)
        u.grad = None

    return (time_call(forward, device, warmup=2, repeat=repeat)["median_ms"],
            time_call(both, device, warmup=2, repeat=repeat)["median_ms"])


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
    u = torch.randn(args.batch, args.time, 1, device=device, requires_grad=True)
    grad = torch.randn(args.batch, args.time, 1, args.order, device=device)
    floor_ms = grad.numel() * 4 / (args.bandwidth * 1e9) * 1e3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    fft = timed(lambda x: linear_memory_fft(x, A, B, impulse=H), u, grad, device, args.repeat)
    print(json.dumps({"device": name, "path": "fft", "forward_ms": fft[0], "forward_backward_ms": fft[1],
                      "floor_ms": floor_ms}), flush=True)
    for precision in args.precisions.split(","):
        for L in (int(x) for x in args.lengths.split(",")):
            run = lambda x: chunk_scan.linear_memory_chunk_scan(x, A, B, impulse=H, precision=precision,  # noqa: E731
                                                                block=L)
            forward, both = timed(run, u, grad, device, args.repeat)
            blocks = -(-args.time // min(L, args.time))
            dense = (blocks * args.order) ** 2 <= chunk_scan.DENSE_SCAN_MAX_ENTRIES
            print(json.dumps({"device": name, "path": "chunk-scan", "precision": precision, "L": L,
                              "scan": "dense" if dense else "doubling", "forward_ms": forward,
                              "forward_backward_ms": both, "forward_vs_fft": forward / fft[0],
                              "forward_backward_vs_fft": both / fft[1], "forward_floor_fraction": floor_ms / forward,
                              "forward_backward_floor_fraction": 2 * floor_ms / both}), flush=True)
            chunk_scan.clear_cache()  # each L builds its own operator; keep the device's memory flat


if __name__ == "__main__":
    main()
