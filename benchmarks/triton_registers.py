"""Registers and spills of the fused LMU cell's kernels, per tile, from ptxas on this machine (no GPU).

A kernel that spills keeps part of its state in local memory (off chip): every step then pays for the round
trip. The autotuner picks tiles by time on the GPU; this shows beforehand which tiles compile cleanly.

    python benchmarks/triton_registers.py                    # psMNIST widths (N 256, H 212), D = 1
    python benchmarks/triton_registers.py --precision mixed --d 2 --out runs/registers.jsonl

Prints one JSON line per (configuration, kernel, tile).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ["TRITON_INTERPRET"] = "0"

from contime.ops.lmu_cell import convolution_triton, core_triton  # noqa: E402
from contime.ops.triton_env import compile_for_gpu, register_usage  # noqa: E402

# The two LMUs of `contime bench`: the full cell (h_{t-1} feeds the memory) and the psMNIST one (x alone does).
CONFIGURATIONS = {"cell": dict(HAS_EH=True, HAS_EM=False), "psmnist": dict(HAS_EH=False, HAS_EM=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="ieee", choices=("ieee", "tf32x3", "tf32", "mixed"))
    parser.add_argument("--order", type=int, default=256, help="N, the memory size")
    parser.add_argument("--hidden", type=int, default=212)
    parser.add_argument("--d", type=int, default=1, help="D, the memory's input dimensions")
    parser.add_argument("--styles", default="resident,chunked,convolution",
                        help="comma-separated: resident, chunked (the state algorithm), convolution")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args()
    widths = dict(NP=core_triton._padded(args.order), HP=core_triton._padded(args.hidden),
                  BLOCK_D=core_triton._input_width(args.d), BLOCK_B=core_triton.BLOCK_B)
    styles = {"resident": ([{"BLOCK_N": n, **widths} for n, _ in core_triton.RESIDENT_CONFIGS],
                           [w for _, w in core_triton.RESIDENT_CONFIGS],
                           core_triton._lmu_cell_forward_resident_kernel,
                           core_triton._lmu_cell_backward_resident_kernel),
              "chunked": ([{"BLOCK_K": k, "BLOCK_N": n, "BLOCK_D": widths["BLOCK_D"], "BLOCK_B": widths["BLOCK_B"]}
                           for k, n, _ in core_triton.CELL_CONFIGS], [w for _, _, w in core_triton.CELL_CONFIGS],
                          core_triton._lmu_cell_forward_kernel, core_triton._lmu_cell_backward_kernel)}
    styles["convolution"] = ([{"BLOCK_N": n, "BLOCK_K": k, "BLOCK_S": s, "BLOCK_B": widths["BLOCK_B"]}
                              for n, k, s, _ in convolution_triton.CONFIGS],
                             [w for *_, w in convolution_triton.CONFIGS],
                             convolution_triton._convolution_forward_kernel,
                             convolution_triton._convolution_backward_kernel)
    for style in args.styles.split(","):
        tiles, warps_of, forward, backward = styles[style]
        convolution = style == "convolution"
        precisions = core_triton.product_precisions(args.precision)
        if convolution:  # one precision for all its products, and no memory_to_memory
            precisions = {"PRECISION": precisions["PRECISION"]}
        for name, flags in CONFIGURATIONS.items():
            if convolution:
                flags = {"HAS_EH": flags["HAS_EH"], "HAS_CONV": True}
            backward_flags = {"MEMBERS": 16, "HAS_GU": True} if convolution else {"HAS_GM": False}
            for tile, warps in zip(tiles, warps_of):
                common = dict(**tile, RELU=False, **flags, **precisions)
                for kernel, extra in ((forward, {}), (backward, backward_flags)):
                    usage = register_usage(compile_for_gpu(kernel, {**common, **extra}, num_warps=warps))
                    report(args.out, {"style": style, "configuration": name, "kernel": kernel.__name__,
                                      "precision": args.precision, "order": args.order, "hidden": args.hidden,
                                      "d": args.d, **{k.lower(): v for k, v in tile.items()}, "warps": warps,
                                      **usage})


def report(out: str | None, record: dict) -> None:
    """Print ``record`` as a JSON line, and append it to ``out``."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
