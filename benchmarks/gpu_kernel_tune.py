"""Block sizes of the Triton kernels at the psMNIST shape, on a GPU: prints one JSON line per configuration.

Fused LMU cell (hidden_to_memory, batch 100, 784 steps, order 256, hidden 212): forward and backward cores
for several (BLOCK_B, BLOCK_K, BLOCK_N, num_warps). Toeplitz memory: the forward for several tile shapes.
Times are medians of triton.testing.do_bench.
"""

from __future__ import annotations

import json

import torch
import triton
from triton.testing import do_bench

from contime.legendre import discretize, impulse_response
from contime.ops.lmu_cell import core_triton
from contime.ops.lmu_memory import toeplitz

T, B, n, H = 784, 100, 256, 212


def tune_cell():
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g) * 0.05  # noqa: E731
    ux, xh = r(T, B, 1), r(T, B, H)
    A, Bv = discretize(n, torch.tensor([784.0], dtype=torch.float64), 1.0, "zoh")
    A_T, Bm = A[0].t().contiguous().float().cuda(), Bv.float().cuda()
    E_h, E_m, W_m, W_h, m0, h0 = r(H, 1), None, r(n, H), r(H, H), r(B, n), r(B, H)
    gh = r(T, B, H)
    for block_b, block_k, block_n, warps in [(16, 32, 64, 4), (16, 64, 64, 4), (16, 32, 64, 8), (16, 64, 128, 8),
                                             (32, 32, 64, 4), (32, 64, 64, 8), (16, 128, 64, 8)]:
        for precision in ("ieee", "tf32"):
            kw = dict(block_b=block_b, block_k=block_k, block_n=block_n, num_warps=warps, precision=precision)
            try:
                fwd = do_bench(lambda: core_triton.forward_core(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, False,
                                                                **kw), warmup=20, rep=100)
                H_ext, _, _ = core_triton.forward_core(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, False, **kw)
                bwd = do_bench(lambda: core_triton.backward_core(gh, None, H_ext, A_T, Bm, E_h, E_m, W_m, W_h, False,
                                                                 **kw), warmup=20, rep=100)
                print(json.dumps({"kernel": "lmu-cell", **kw, "forward_ms": fwd, "backward_ms": bwd}), flush=True)
            except Exception as error:
                print(json.dumps({"kernel": "lmu-cell", **kw, "error": repr(error)[:300]}), flush=True)


def tune_toeplitz():
    A, Bv = discretize(n, torch.tensor([784.0], dtype=torch.float64), 1.0, "zoh")
    Hk = impulse_response(A, Bv, T)[0].float().cuda()
    u = torch.randn(B, T, 1, device="cuda")
    out = torch.empty(B, T, 1, n, device="cuda")
    for bm, bt, bc, bk, warps, stages in [(64, 4, 32, 32, 4, 2), (128, 4, 32, 32, 8, 2), (128, 2, 64, 32, 8, 3),
                                          (128, 8, 32, 32, 8, 3), (64, 2, 64, 64, 4, 3), (128, 4, 64, 32, 8, 3),
                                          (128, 1, 128, 32, 8, 3), (128, 4, 32, 64, 8, 3)]:
        for precision in ("ieee", "tf32x3", "tf32"):
            grid = (triton.cdiv(B, bm), triton.cdiv(T, bt) * triton.cdiv(n, bc))
            try:
                ms = do_bench(lambda: toeplitz._toeplitz_forward_kernel[grid](
                    u, Hk, out, B, T, n, 1, BLOCK_M=bm, BLOCK_T=bt, BLOCK_C=bc, BLOCK_K=bk, PRECISION=precision,
                    num_warps=warps, num_stages=stages), warmup=20, rep=100)
                print(json.dumps({"kernel": "toeplitz-forward", "BLOCK_M": bm, "BLOCK_T": bt, "BLOCK_C": bc,
                                  "BLOCK_K": bk, "num_warps": warps, "num_stages": stages, "precision": precision,
                                  "ms": ms}), flush=True)
            except Exception as error:
                print(json.dumps({"kernel": "toeplitz-forward", "BLOCK_M": bm, "precision": precision,
                                  "error": repr(error)[:300]}), flush=True)


if __name__ == "__main__":
    tune_cell()
    tune_toeplitz()
