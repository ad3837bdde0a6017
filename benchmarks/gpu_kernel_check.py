"""Correctness of the Triton kernels on a real GPU, against float64 references (run by gpu_kernels.sh).

The unit tests run the same kernels through Triton's interpreter on the CPU; this checks the compiled
kernels, at the psMNIST shape, for every precision. Prints one JSON line per check:
{"check", "precision", "what", "relative_error"} with ||got - ref|| / ||ref|| in float64.

    python benchmarks/gpu_kernel_check.py [check_cell check_chunk_scan ...]
    CHECK_PRECISIONS=ieee,tf32 python benchmarks/gpu_kernel_check.py ...   # only these precisions (each one
                                                                            # costs a round of autotuning)
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

import contime
from contime.bench.precision import relative_error
from contime.legendre import discretize, impulse_response
from contime.ops.lmu_cell import lmu_cell_convolution, lmu_cell_naive, lmu_cell_sequence
from contime.ops.elman import elman_recurrence
from contime.ops.elman.persistent import persistent_elman
from contime.ops.lmu_memory import linear_memory_fft
from contime.ops.lmu_memory.toeplitz import causal_toeplitz

PRECISIONS = ("ieee", "tf32x3", "tf32")
# tf32 compounds through a recurrence (measured 0.16): not checked. "mixed" keeps the memory's products in tf32x3.
RECURRENT_PRECISIONS = ("ieee", "tf32x3", "mixed")
# The convolution kernels: no product compounds through the memory, so tf32 is the case to measure. Every
# precision costs a round of autotuning (a minute or more on the device), hence no tf32x3 here.
CONVOLUTION_PRECISIONS = ("ieee", "tf32")
ONLY = [p for p in os.environ.get("CHECK_PRECISIONS", "").split(",") if p]  # empty: every precision of a check
failures = []


def report(check, precision, what, got, ref, bound):
    error = relative_error(got.cpu(), ref.cpu())
    ok = error < bound and bool(torch.isfinite(got).all())
    print(json.dumps({"check": check, "precision": precision, "what": what, "relative_error": error,
                      "bound": bound, "ok": ok}), flush=True)
    if not ok:
        failures.append((check, precision, what, error))


def bound_for(precision):
    return {"ieee": 1e-5, "tf32x3": 1e-5, "tf32": 1e-2, "mixed": 1e-2}[precision]


def compare(check, inputs64, reference, candidate, names, precisions, scale=1.0):
    """``reference(*leaves)`` in float64 against ``candidate(precision, *leaves)`` in float32 on the GPU, both
    returning a tuple of outputs: every output and the gradient of every input (``inputs64``) for random
    output weights, reported under ``names`` (outputs first), bound ``bound_for(precision) * scale``."""
    leaves64 = [t.clone().requires_grad_() for t in inputs64]
    outputs = reference(*leaves64)
    weights = [torch.randn_like(o) for o in outputs]
    ref = [*outputs, *torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs, weights)), leaves64)]
    for precision in [p for p in precisions if p in ONLY] if ONLY else precisions:
        leaves = [t.float().cuda().requires_grad_() for t in inputs64]
        outputs = candidate(precision, *leaves)
        loss = sum((o * w.float().cuda()).sum() for o, w in zip(outputs, weights))
        got = [*outputs, *torch.autograd.grad(loss, leaves)]
        for name, a, b in zip(names, got, ref):
            report(check, precision, name, a.detach(), b.detach(), bound_for(precision) * scale)


def legt(n, theta=784.0):
    """A_bar ``(1, n, n)``, B_bar ``(1, n)`` of the LegT memory (zoh, dt = 1), float64."""
    return discretize(n, torch.tensor([theta], dtype=torch.float64), 1.0, "zoh")


def check_cell(time=64, batch=100, n=256, hidden=212):
    torch.manual_seed(1)
    scale = 0.05
    shapes = [(time, batch, 1), (time, batch, hidden), (n, n), (1, n), (hidden, 1), (n, 1), (n, hidden),
              (hidden, hidden), (batch, n), (batch, hidden)]
    args64 = [torch.randn(s, dtype=torch.float64) * scale for s in shapes]
    A, B = legt(n)
    args64[2], args64[3] = A[0].t().clone(), B.clone()
    compare("fused-cell", args64, lmu_cell_naive,
            lambda precision, *leaves: lmu_cell_sequence(*leaves, backend="triton", precision=precision),
            ["hs", "ms", "ux", "xh", "A_T", "Bm", "E_h", "E_m", "W_m", "W_h", "m0", "h0"], RECURRENT_PRECISIONS)


def check_convolution_cell(time=64, batch=100, n=256, hidden=212):
    """The convolution algorithm (hidden_to_memory, no E_m) against the state loop in float64: hs, every memory
    state (from the inputs us) and the gradients."""
    torch.manual_seed(5)
    scale = 0.05
    shapes = [(time, batch, 1), (time, batch, hidden), (hidden, 1), (n, hidden), (hidden, hidden), (batch, hidden)]
    inputs = [torch.randn(s, dtype=torch.float64) * scale for s in shapes]  # ux, xh, E_h, W_m, W_h, h0
    A, B = legt(n)
    A_T, Bm = A[0].t().contiguous(), B.clone()
    H = impulse_response(A, B, time)[0]  # (T, n): H_j = Bm A_T^j
    zeros = torch.zeros(batch, n, dtype=torch.float64)

    def reference(ux, xh, E_h, W_m, W_h, h0):
        return lmu_cell_naive(ux, xh, A_T, Bm, E_h, None, W_m, W_h, zeros, h0)

    def candidate(precision, ux, xh, E_h, W_m, W_h, h0):
        Hc = H.float().cuda()
        hs, us = lmu_cell_convolution(ux, xh, Hc, E_h, W_m, W_h, h0, backend="triton", precision=precision)
        return hs, causal_toeplitz(us.transpose(0, 1).contiguous(), Hc, "ieee")[:, :, 0].transpose(0, 1)

    compare("convolution-cell", inputs, reference, candidate, ["hs", "ms", "ux", "xh", "E_h", "W_m", "W_h", "h0"],
            CONVOLUTION_PRECISIONS)


def check_elman(time=784, batch=100, hidden=212):
    """The persistent Elman kernels (the parallel modes' RNNCell) against the torch loop in float64."""
    torch.manual_seed(6)
    projected = torch.randn(time, batch, hidden, dtype=torch.float64) * 0.5
    weight = torch.randn(hidden, hidden, dtype=torch.float64) * 0.9 / hidden ** 0.5
    h0 = torch.randn(batch, hidden, dtype=torch.float64) * 0.5
    compare("elman-784", [projected, weight, h0], lambda *leaves: (elman_recurrence(*leaves, backend="torch"),),
            lambda precision, *leaves: (persistent_elman(*leaves, precision=precision),),
            ["hs", "projected", "weight_hh", "h0"], ("ieee", "tf32"), scale=10)


def check_lmu_fused_mode(time=784, batch=100, n=256, hidden=212):
    torch.manual_seed(2)
    lmu = contime.LMU(1, 1, n, 784.0, nn.RNNCell(n, hidden), hidden_to_memory=True, return_sequences=False)
    lmu64 = lmu.double()
    x = torch.randn(batch, time, 1, dtype=torch.float64)
    lmu64.mode = "recurrent"
    y_ref, state_ref = lmu64(x)
    runs = [("state", p) for p in RECURRENT_PRECISIONS] + [("convolution", p) for p in CONVOLUTION_PRECISIONS]
    for algorithm, precision in runs:
        lmu32 = contime.LMU(1, 1, n, 784.0, nn.RNNCell(n, hidden), hidden_to_memory=True, return_sequences=False,
                            mode="fused", kernel_precision=precision, fused_algorithm=algorithm)
        lmu32.load_state_dict({k: v.float() for k, v in lmu64.state_dict().items()})
        lmu32 = lmu32.cuda()
        with torch.no_grad():
            y, state = lmu32(x.float().cuda())
        check = f"lmu-fused-{algorithm}-784"
        report(check, precision, "y", y, y_ref.detach(), bound_for(precision) * 10)
        report(check, precision, "memory", state.memory, state_ref.memory.detach(), bound_for(precision) * 10)


def check_toeplitz(time=784, batch=100, n=256):
    torch.manual_seed(3)
    A, B = legt(n)
    H = impulse_response(A, B, time)
    compare("toeplitz-memory", [torch.randn(batch, time, 1, dtype=torch.float64)],
            lambda u: (linear_memory_fft(u, A, B, impulse=H),),
            lambda precision, u: (causal_toeplitz(u, H[0].float().cuda(), precision),), ["m", "grad_u"], PRECISIONS)


def check_chunk_scan(time=784, batch=100, n=256):
    """The chunk-scan memory (cuBLAS products, no Triton) in each precision, outputs and grad u, with m0; given
    the float64 matrices, as the LMU gives them."""
    from contime.ops.lmu_memory.chunk_scan import PRECISIONS as CHUNK_PRECISIONS, linear_memory_chunk_scan
    torch.manual_seed(5)
    A, B = legt(n)
    m0 = torch.randn(batch, 1, n, dtype=torch.float64) * 0.1
    A_gpu, B_gpu, m0_gpu = A.cuda(), B.cuda(), m0.float().cuda()
    compare("chunk-scan-memory", [torch.randn(batch, time, 1, dtype=torch.float64)],
            lambda u: (linear_memory_fft(u, A, B, m0),),
            lambda precision, u: (linear_memory_chunk_scan(u, A_gpu, B_gpu, m0_gpu, precision=precision),),
            ["m", "grad_u"], CHUNK_PRECISIONS)


def check_lmu_projected(time=784, batch=100, n=256, hidden=212):
    torch.manual_seed(4)
    lmu64 = contime.LMU(1, 1, n, 784.0, nn.RNNCell(n + 1, hidden), input_to_hidden=True,
                        return_sequences=False).double()
    x = torch.randn(batch, time, 1, dtype=torch.float64)
    lmu64.mode = "fft"
    y_ref, _ = lmu64(x)
    for precision in PRECISIONS:
        lmu32 = contime.LMU(1, 1, n, 784.0, nn.RNNCell(n + 1, hidden), input_to_hidden=True,
                            return_sequences=False, mode="fft", kernel_precision=precision)
        lmu32.load_state_dict({k: v.float() for k, v in lmu64.state_dict().items()})
        with torch.no_grad():
            y, _ = lmu32.cuda()(x.float().cuda())
        report("lmu-fft-projected-784", precision, "y", y, y_ref.detach(), bound_for(precision) * 10)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    from contime.ops.lmu_cell import core_triton
    print(json.dumps({"programs_per_group": {n: core_triton._group_size(100, 256, n, torch.device("cuda"))
                                             for n in (32, 64, 128)}}), flush=True)
    checks = {f.__name__: f for f in (check_cell, check_convolution_cell, check_elman, check_toeplitz,
                                      check_chunk_scan, check_lmu_projected, check_lmu_fused_mode)}
    for check in [checks[name] for name in sys.argv[1:]] or checks.values():
        try:
            check()
        except Exception as error:  # report and go on: one broken check must not hide the others
            print(json.dumps({"check": check.__name__, "error": repr(error)}), flush=True)
            failures.append((check.__name__, repr(error)))
    from contime.ops.lmu_memory import toeplitz
    tuned = {**{f"toeplitz-{k}": v for k, v in toeplitz._TUNED.items()},
             **{f"cell-{k}": v for k, v in core_triton._TUNED.items() if isinstance(k, str)}}
    print(json.dumps({"best_configs": {name: str(getattr(t, "best_config", None)) for name, t in tuned.items()}}),
          flush=True)
    print(json.dumps({"failures": len(failures)}))
    sys.exit(1 if failures else 0)
