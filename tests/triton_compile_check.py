"""Compile every Triton kernel of contime for a Hopper GPU (sm_90) without one: Triton builds the PTX and runs
its bundled ptxas on the CPU. Catches what the interpreter cannot, e.g. a tensor-core product with K < 16.

Run by tests/test_triton_compile.py in a subprocess (a subset; ``--full``: every tile and precision, minutes;
the tests otherwise set TRITON_INTERPRET=1, under which kernels are not compilable objects). Prints one
line per compiled variant; exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "0"

from contime.ops.lmu_cell import convolution_triton, core_triton  # noqa: E402
from contime.ops.lmu_memory import toeplitz  # noqa: E402
from contime.ops.triton_env import compile_for_gpu  # noqa: E402


def compile_kernel(kernel, constexprs: dict) -> None:
    compile_for_gpu(kernel, constexprs)
    print("compiled", kernel.__name__, constexprs, flush=True)


def main(full: bool) -> None:
    """``full``: every tile the autotuners try, in every precision (minutes); else one of each kernel, in the
    precisions where the code differs (seconds)."""
    flags = dict(HAS_EH=True, HAS_EM=True, RELU=False)
    precisions = ("ieee", "tf32x3", "tf32", "mixed") if full else ("ieee", "tf32x3", "mixed")
    for precision in precisions:
        products = core_triton.product_precisions(precision)
        # The smallest widths (N, H < 16 round up to 16) and the psMNIST ones; one input (BLOCK_D = 1: the
        # broadcast products) and several.
        shapes = ((16, 16), (16, 64), (256, 256)) if full else ((16, 16), (256, 256))
        widths = [n for n, _ in core_triton.RESIDENT_CONFIGS] if full else [16]
        for NP, HP in shapes:
            for block_n in widths:
                for block_d in (1, 16):
                    common = dict(BLOCK_B=16, BLOCK_N=block_n, BLOCK_D=block_d, NP=NP, HP=HP, **products)
                    compile_kernel(core_triton._lmu_cell_forward_resident_kernel, {**common, **flags})
                    compile_kernel(core_triton._lmu_cell_backward_resident_kernel,
                                   {**common, **flags, "HAS_GM": True})
        for block_k, block_n, _ in core_triton.CELL_CONFIGS[:None if full else 1]:
            for block_d in (1, 16):
                common = dict(BLOCK_B=16, BLOCK_K=block_k, BLOCK_N=block_n, BLOCK_D=block_d, **products)
                compile_kernel(core_triton._lmu_cell_forward_kernel, {**common, **flags})
                compile_kernel(core_triton._lmu_cell_backward_kernel, {**common, **flags, "HAS_GM": False})
        for block_n, block_k, block_s, _ in convolution_triton.CONFIGS[:None if full else 1]:
            for has_conv in (True, False):  # the convolution algorithm, and the plain Elman recurrence
                common = dict(BLOCK_B=16, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_S=block_s, HAS_CONV=has_conv,
                              HAS_EH=has_conv, RELU=False, PRECISION=products["PRECISION"])
                compile_kernel(convolution_triton._convolution_forward_kernel, common)
                compile_kernel(convolution_triton._convolution_backward_kernel,
                               {**common, "MEMBERS": 16 if has_conv else 1, "HAS_GU": has_conv})
        if precision == "mixed":  # the Toeplitz kernels run "mixed" as tf32
            continue
        for m, n, k, _, _ in toeplitz.ROWS_CONFIGS[:None if full else 1]:
            compile_kernel(toeplitz._toeplitz_forward_rows_kernel,
                           dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, PRECISION=precision))
        compile_kernel(toeplitz._toeplitz_forward_kernel, {**toeplitz._FORWARD_BLOCKS, "PRECISION": precision})
        compile_kernel(toeplitz._toeplitz_grad_u_kernel, {**toeplitz._GRAD_BLOCKS, "PRECISION": precision})


if __name__ == "__main__":
    try:
        main(full="--full" in sys.argv)
    except Exception as error:  # the failing variant is the last line printed before this
        print(f"FAILED: {error!r}"[:2000], flush=True)
        sys.exit(1)
