"""The autotuned Triton kernels at the psMNIST shape, on a GPU: one JSON line per kernel and precision with the
median time of the chosen tile and the autotuner's timing of every tile it tried.

Fused LMU cell (hidden_to_memory, batch 100, 784 steps, order 256, hidden 212): forward and backward cores, of
the state algorithm and of the convolution one.
Toeplitz memory forward: the "rows" (autotuned) and "columns" tilings. Times: triton.testing.do_bench medians.
"""

from __future__ import annotations

import json

import torch
from triton.testing import do_bench

from contime.legendre import discretize, impulse_response
from contime.ops.lmu_cell import convolution_triton, core_triton
from contime.ops.lmu_memory import toeplitz

T, B, n, H = 784, 100, 256, 212


def timings_of(tuned):
    return {str(config): float(ms if not isinstance(ms, (list, tuple)) else ms[0])
            for config, ms in getattr(tuned, "configs_timings", {}).items()}


def tune_cell():
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g) * 0.05  # noqa: E731
    ux, xh = r(T, B, 1), r(T, B, H)
    A, Bv = discretize(n, torch.tensor([784.0], dtype=torch.float64), 1.0, "zoh")
    A_T, Bm = A[0].t().contiguous().float().cuda(), Bv.float().cuda()
    E_h, E_m, W_m, W_h, m0, h0 = r(H, 1), None, r(n, H), r(H, H), r(B, n), r(B, H)
    gh = r(T, B, H)
    # The resident kernels with tensor-core products spill kilobytes (benchmarks/triton_registers.py): not tuned.
    for style, precision in (("resident", "ieee"), ("chunked", "ieee"), ("chunked", "mixed"), ("chunked", "tf32x3")):
        kw = dict(precision=precision, style=style)
        fwd = do_bench(lambda: core_triton.forward_core(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, False, **kw),
                       warmup=50, rep=300)
        H_ext, _, _ = core_triton.forward_core(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, False, **kw)
        bwd = do_bench(lambda: core_triton.backward_core(gh, None, H_ext, A_T, Bm, E_h, E_m, W_m, W_h, False, **kw),
                       warmup=50, rep=300)
        print(json.dumps({"kernel": "lmu-cell", "style": style, "precision": precision, "forward_ms": fwd,
                          "backward_ms": bwd, "forward_tiles": timings_of(core_triton._TUNED["forward"]),
                          "backward_tiles": timings_of(core_triton._TUNED["backward"])}), flush=True)


def tune_convolution():
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g) * 0.05  # noqa: E731
    ux, xh, K, E_h, W_h, h0, gh = r(T, B, 1), r(T, B, H), r(T, H), r(H, 1), r(H, H), r(B, H), r(T, B, H)
    for precision in ("ieee", "tf32"):
        fwd = do_bench(lambda: convolution_triton.forward_core(ux, xh, K, E_h, W_h, h0, False, precision),
                       warmup=50, rep=300)
        H_ext, _ = convolution_triton.forward_core(ux, xh, K, E_h, W_h, h0, False, precision)
        bwd = do_bench(lambda: convolution_triton.backward_core(gh, None, H_ext, K, E_h, W_h, False, precision),
                       warmup=50, rep=300)
        print(json.dumps({"kernel": "lmu-cell-convolution", "precision": precision, "forward_ms": fwd,
                          "backward_ms": bwd,
                          "forward_tiles": timings_of(core_triton._TUNED["convolution-forward"]),
                          "backward_tiles": timings_of(core_triton._TUNED["convolution-backward"])}), flush=True)


def tune_toeplitz():
    A, Bv = discretize(n, torch.tensor([784.0], dtype=torch.float64), 1.0, "zoh")
    Hk = impulse_response(A, Bv, T)[0].float().cuda()
    u = torch.randn(B, T, 1, device="cuda")
    for precision in ("ieee", "tf32x3", "tf32"):
        for layout in ("rows", "columns"):
            ms = do_bench(lambda: toeplitz.causal_toeplitz(u, Hk, precision, layout), warmup=50, rep=300)
            tiles = timings_of(toeplitz._TUNED["rows"]) if layout == "rows" else {}
            print(json.dumps({"kernel": "toeplitz-forward", "layout": layout, "precision": precision, "ms": ms,
                              "tiles": tiles}), flush=True)


if __name__ == "__main__":
    import sys
    parts = sys.argv[1:] or ["cell", "convolution", "toeplitz"]
    if "cell" in parts:
        tune_cell()
    if "convolution" in parts:
        tune_convolution()
    if "toeplitz" in parts:
        tune_toeplitz()
