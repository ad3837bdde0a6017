"""The persistent cell kernels with several programs per group, in Triton's interpreter with every program in a
thread of its own, so that a group's members really wait for each other at their barriers.

Triton's interpreter runs the programs of a grid one after another, so the unit tests run these kernels with
one program per group (SPLIT = 1), where a barrier never waits and a race between members cannot show. Here
each program runs in its own thread, in a random order, with random pauses around every atomic operation (the
barriers' arrivals and polls) and around some stores, so members reach each phase at different times. The
kernels then must still equal the torch cores (``core_torch``, ``convolution_torch``). A mistake in what is
written before a member arrives, or read before it waits, shows as a wrong value in most seeds: of four mistakes
planted on purpose in a review, three were caught (in 5 of 6, 6 of 6 and 4 of 4 seeds), and the fourth, the
convolution forward reading u_t back from memory before the barrier, in none of 4 (the pauses rarely land
there).

It replaces private parts of Triton's interpreter (pinned: triton 3.6.0), and sets a short thread switch
interval for the whole process: so it runs in a process of its own (tests/test_group_concurrency.py).

    python tests/group_concurrency_check.py KIND T B N H D BLOCK_N MEMBERS [--no-eh] [--no-em] [--seed S]

KIND: resident, chunked (the state algorithm's kernels), convolution, or elman (the convolution kernels without
their convolution). MEMBERS caps the programs per group; N is unused by the last two.
Prints one JSON line; exits 1 if any output or gradient is off by more than 1e-5 (relative).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import sys
import threading
import time

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from contime.bench.precision import relative_error  # noqa: E402
from contime.ops.lmu_cell import convolution_torch, convolution_triton, core_torch, core_triton  # noqa: E402

PAUSE_S = 0.002
_random = random.Random(0)
_random_lock = threading.Lock()


def pause(probability: float = 0.5, scale: float = PAUSE_S) -> None:
    with _random_lock:
        draw, seconds = _random.random(), _random.random() * scale
    if draw < probability:
        time.sleep(seconds)


def install_threaded_grid() -> None:
    """Every program of a launch in its own thread: the interpreter's builder keeps the program's index per
    thread, atomics and some stores pause at random, and a launch joins its threads (or fails on a deadlock)."""
    local = threading.local()
    builder = type(interpreter.interpreter_builder)
    builder.grid_idx = property(lambda self: getattr(local, "idx", None), lambda self, v: setattr(local, "idx", v))
    atomic, store = builder.create_atomic_rmw, builder.create_masked_store

    def paused_atomic(self, *args, **kwargs):
        pause()
        result = atomic(self, *args, **kwargs)
        pause()
        return result

    def paused_store(self, *args, **kwargs):
        pause(0.2)
        return store(self, *args, **kwargs)
    builder.create_atomic_rmw, builder.create_masked_store = paused_atomic, paused_store

    def launch(self, *args_dev, **kwargs):
        spec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in spec.args}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        for hook in self.pre_run_hooks:
            hook(*args_hst, **kwargs_hst)
        patched = interpreter._patch_lang(self.fn)
        errors = []
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {name: arg if name in self.constexprs else interpreter._implicit_cvt(arg)
                    for name, arg in args.items()}
            grid = self.grid(args) if callable(self.grid) else self.grid
            grid = tuple(grid) + (1,) * (3 - len(grid))
            interpreter.interpreter_builder.set_grid_dim(*grid)

            def program(x, y, z):
                try:
                    pause(0.8, 5 * PAUSE_S)
                    interpreter.interpreter_builder.set_grid_idx(x, y, z)
                    self.fn(**args)
                except BaseException as error:  # noqa: BLE001 - reported by the launching thread
                    errors.append(error)
            threads = [threading.Thread(target=program, args=(x, y, z), daemon=True)
                       for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
            with _random_lock:
                _random.shuffle(threads)
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
                if thread.is_alive():
                    raise RuntimeError("a program did not finish in 300 s: a barrier never released")
            if errors:
                raise errors[0]
        finally:
            patched.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)
    interpreter.GridExecutor.__call__ = launch
    # Rewriting a kernel for the interpreter is not thread-safe: one thread at a time.
    lock = threading.RLock()
    patch_lang, rewrite = interpreter._patch_lang, interpreter.InterpretedFunction.rewrite

    def locked(fn):
        def call(*args):
            with lock:
                return fn(*args)
        return call
    interpreter._patch_lang = locked(patch_lang)
    interpreter.InterpretedFunction.rewrite = locked(rewrite)
    sys.setswitchinterval(1e-5)  # switch threads often, so that members interleave finely


def use_tiles(block_n: int, members: int) -> None:
    """One tile per kernel (BLOCK_N = ``block_n``, small BLOCK_K and BLOCK_S: several chunks of each) and groups
    of up to ``members`` programs, in place of the interpreter's one program per group."""
    group = lambda batch, columns, block, device: max(1, min(triton.cdiv(columns, block), members))  # noqa: E731
    core_triton._group_size = convolution_triton._group_size = group
    core_triton._resident_widths = lambda batch, n, hidden, device: [block_n]
    core_triton.RESIDENT_CONFIGS = [(block_n, 4)]
    core_triton.CELL_CONFIGS = [(16, block_n, 4)]
    convolution_triton.CONFIGS = [(block_n, 16, 4, 4)]


def errors(kind: str, T: int, B: int, N: int, H: int, D: int, with_eh: bool, with_em: bool) -> dict[str, float]:
    """Relative error of every output of the forward and backward cores against the torch cores, float32."""
    draw = lambda *shape: torch.randn(*shape) * 0.3  # noqa: E731
    found = {}
    if kind == "elman":  # the convolution kernels without their convolution, against a loop and autograd
        xh, W_h, h0 = draw(T, B, H).requires_grad_(), draw(H, H), draw(B, H).requires_grad_()
        hs, h = [], h0
        for t in range(T):
            h = torch.tanh(xh[t] + h @ W_h)
            hs.append(h)
        ref = torch.stack(hs)
        H_ext = convolution_triton.elman_forward(xh.detach(), W_h, h0.detach(), False)
        grad_h = draw(T, B, H)
        dp, grad_h0 = convolution_triton.elman_backward(grad_h, torch.cat([h0.detach()[None], ref.detach()]),
                                                        W_h.t().contiguous(), False)
        ref_dp, ref_h0 = torch.autograd.grad(ref, [xh, h0], grad_h)
        return {"forward_h": relative_error(H_ext[1:], ref.detach()), "backward_dp": relative_error(dp, ref_dp),
                "backward_h0": relative_error(grad_h0, ref_h0)}
    if kind == "convolution":
        ux, xh, K, W_h, h0 = draw(T, B, 1), draw(T, B, H), draw(T, H), draw(H, H), draw(B, H)
        E_h = draw(H, 1) if with_eh else None
        got = convolution_triton.forward_core(ux, xh, K, E_h, W_h, h0, False)
        ref = convolution_torch.forward_core(ux, xh, K, E_h, W_h, h0, False)
        found.update(forward_h=relative_error(got[0], ref[0]), forward_u=relative_error(got[1], ref[1]))
        grad_h, grad_u = draw(T, B, H), draw(T, B, 1)
        got = convolution_triton.backward_core(grad_h, grad_u, ref[0], K, E_h, W_h, False)
        ref = convolution_torch.backward_core(grad_h, grad_u, ref[0], K, E_h, W_h, False)
        found.update({f"backward_{name}": relative_error(g, r) for name, g, r in zip(("dp", "du", "h0"), got, ref)})
        return found
    ux, xh, A_T, Bm = draw(T, B, D), draw(T, B, H), draw(N, N), draw(D, N)
    E_h = draw(H, D) if with_eh else None
    E_m = draw(N, D) if with_em else None
    W_m, W_h, m0, h0 = draw(N, H), draw(H, H), draw(B, N), draw(B, H)
    got = core_triton.forward_core(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, False, "ieee", style=kind)
    ref = core_torch.forward_core(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, False)
    found.update({f"forward_{name}": relative_error(g, r) for name, g, r in zip(("h", "m", "u"), got, ref)})
    grad_h, grad_m = draw(T, B, H), draw(T, B, N)
    got = core_triton.backward_core(grad_h, grad_m, ref[0], A_T, Bm, E_h, E_m, W_m, W_h, False, "ieee", style=kind)
    ref = core_torch.backward_core(grad_h, grad_m, ref[0], A_T, Bm, E_h, E_m, W_m, W_h, False)
    names = ("dp", "dm", "du", "h0", "m0")
    found.update({f"backward_{name}": relative_error(g, r) for name, g, r in zip(names, got, ref)})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("resident", "chunked", "convolution", "elman"))
    for name in ("T", "B", "N", "H", "D", "block_n", "members"):
        parser.add_argument(name, type=int)
    parser.add_argument("--no-eh", action="store_true", help="leave out E_h (hidden_to_memory)")
    parser.add_argument("--no-em", action="store_true", help="leave out E_m (memory_to_memory)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _random.seed(args.seed)
    torch.manual_seed(args.seed)
    install_threaded_grid()
    use_tiles(args.block_n, args.members)
    found = errors(args.kind, args.T, args.B, args.N, args.H, args.D, not args.no_eh, not args.no_em)
    bad = sorted(name for name, value in found.items() if not value < 1e-5)
    print(json.dumps({"case": sys.argv[1:], "errors": found, "bad": bad}), flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
