"""Where a persistent kernel's step goes: the fused LMU cell's ingredients timed one by one on the GPU.

The resident cell kernels (``contime.ops.lmu_cell.core_triton``) spend about 20 us per step at the psMNIST shape
on an H100 (15.4 ms over 784 steps, two phases each), where their arithmetic is about 1 us (ptxas: 786 FFMA
per thread per step for BLOCK_N 16). This kernel has the same grid (groups of BLOCK_B sequences, one member per
BLOCK_N columns of a 256-wide state), the same barrier (``_group_barrier``) and the same loads, and runs a number
of phases with each ingredient switched on or off:

- ``barrier``: the group barrier alone;
- ``load``: + every member reads the whole (BLOCK_B, N) state that the others wrote (L2, after the barrier's L1
  invalidation) and writes its own columns;
- ``dot-ieee`` / ``dot-tf32``: + that state times the member's resident (N, BLOCK_N) weight, as the cell does;
- ``nobarrier-dot-ieee``: the same work with no barrier (wrong values, the time of the rest);
- ``overlap-dot-ieee`` / ``overlap-dot-tf32``: the split barrier of the cell kernels: the member writes its
  columns, arrives, then runs the product on a second load of the state while the others arrive, then waits
  (the product's result goes out with the next phase's write).

One JSON line per (variant, BLOCK_N) with the microseconds per phase; the cell has two phases per step, cuDNN's
LSTM one (11.8 us per step forward on the H100 of run 6). Made for the GPU; under ``TRITON_INTERPRET=1`` it
runs at a tiny size on the CPU (a check of the code, not a timing):

    python benchmarks/step_latency.py                 # CUDA: psMNIST widths, 1,568 phases
    TRITON_INTERPRET=1 python benchmarks/step_latency.py --quick
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl

from contime.ops.lmu_cell.core_triton import (_group_arrive, _group_barrier, _group_wait, _program_in_group, _put,
                                              _state, _tile, available_sms)
from contime.ops.triton_env import interpreting

VARIANTS = {  # name: (barrier: none, whole or split; load; dot precision or None)
    "barrier": ("whole", False, None),
    "load": ("whole", True, None),
    "dot-ieee": ("whole", True, "ieee"),
    "dot-tf32": ("whole", True, "tf32"),
    "nobarrier-dot-ieee": ("none", True, "ieee"),
    "overlap-dot-ieee": ("split", True, "ieee"),
    "overlap-dot-tf32": ("split", True, "tf32"),
}


@triton.jit
def _phases_kernel(state_ptr, w_ptr, sync_ptr, T, B, N,
                   BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, NP: tl.constexpr,
                   BARRIER: tl.constexpr, LOAD: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """T phases over three (B, N) state buffers: phase p reads buffer p % 3 whole and writes this member's
    columns of the next one (three, so that a member still reading in its split barrier's shadow never sees a
    faster member write there). BARRIER: "none", "whole" or "split"."""
    member, SPLIT, counter, rb = _program_in_group(sync_ptr, BLOCK_B)
    rn_all = tl.arange(0, NP)
    cols = member * BLOCK_N + tl.arange(0, BLOCK_N)
    weight = _tile(w_ptr, rn_all, cols, N, N, N)  # (NP, BLOCK_N), held for the whole launch
    out = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for p in range(T):
        source = state_ptr + (p % 3) * B * N
        target = state_ptr + ((p + 1) % 3) * B * N
        if BARRIER == "split":
            # As the cell kernels: write, arrive, the product of a second load while the others arrive, wait.
            x = _state(source, rb, rn_all, B, N, N)
            _put(target, out + tl.sum(x, axis=1, keep_dims=True), rb, cols, B, N, N)
            _group_arrive(counter)
            out = tl.dot(_state(source, rb, rn_all, B, N, N), weight, input_precision=PRECISION)
            _group_wait(counter, (p + 1) * SPLIT)
        else:
            if LOAD:
                x = _state(source, rb, rn_all, B, N, N)  # (BLOCK_B, NP)
                if DOT:
                    out = tl.dot(x, weight, input_precision=PRECISION)
                else:
                    # Keep the whole load alive without a product: one sum per row, spread over the columns.
                    out = out * 0.5 + tl.sum(x, axis=1, keep_dims=True)
                _put(target, out, rb, cols, B, N, N)
            if BARRIER == "whole":
                _group_barrier(counter, (p + 1) * SPLIT)


def time_variant(variant: str, block_n: int, warps: int, batch: int, order: int, phases: int,
                 repeat: int) -> float | None:
    """Microseconds per phase, the median of ``repeat`` launches after one warm-up; None in the interpreter."""
    barrier, load, precision = VARIANTS[variant]
    device = torch.device("cpu" if interpreting() else "cuda")
    state = torch.randn(3, batch, order, device=device) * 0.01
    weight = torch.randn(order, order, device=device) * (1.0 / order)
    groups = triton.cdiv(batch, 16)
    split = 1 if interpreting() else triton.cdiv(order, block_n)
    if not interpreting() and groups * split > available_sms(device):
        raise ValueError(f"{groups} groups x {split} members exceed the SMs")
    times = []
    for call in range(repeat + 1):
        counters = torch.zeros(groups, dtype=torch.int32, device=device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        _phases_kernel[(split, groups)](state, weight, counters, phases, batch, order, BLOCK_B=16,
                                        BLOCK_N=order if interpreting() else block_n,
                                        NP=triton.next_power_of_2(order), BARRIER=barrier, LOAD=load,
                                        DOT=precision is not None, PRECISION=precision or "ieee", num_warps=warps)
        if device.type == "cuda":
            end.record()
            torch.cuda.synchronize()
            if call:
                times.append(start.elapsed_time(end) * 1e3 / phases)
    return sorted(times)[len(times) // 2] if times else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--order", type=int, default=256)
    parser.add_argument("--phases", type=int, default=1568, help="two per step of 784")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tiles", default="16:8,32:8,64:16",
                        help="BLOCK_N:warps pairs (the resident kernels' tiles, and a group of 4 members)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="batch 4, order 16, 4 phases, one call")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.order, args.phases, args.repeat, args.tiles = 4, 16, 4, 1, "16:4"
    device_name = "interpreter" if interpreting() else torch.cuda.get_device_name()
    for variant in args.variants.split(","):
        for tile in args.tiles.split(","):
            block_n, warps = (int(x) for x in tile.split(":"))
            us = time_variant(variant, block_n, warps, args.batch, args.order, args.phases, args.repeat)
            print(json.dumps({"device": device_name, "variant": variant, "BLOCK_N": block_n, "warps": warps,
                              "batch": args.batch, "order": args.order, "phases": args.phases,
                              "us_per_phase": us}), flush=True)


if __name__ == "__main__":
    main()
