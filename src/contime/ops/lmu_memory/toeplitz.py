"""The memory as a causal Toeplitz matrix product, in Triton: m_t = sum_{j <= t} H_{t-j} u_j.

For each memory dimension the convolution is a matrix product whose second operand is the impulse response
read along skewed indices: out[r, (t, c)] = sum_j u[r, j] * K[t - j, c], with rows r = (sequence, dimension),
columns (step, channel) and the inner index the source step j. Each tile of the output is one ``tl.dot``
loop over j <= t, so the tensor cores do the work (``precision="tf32"``) and the output is written once: the
memory's write of B * T * D * n values is the only large memory traffic. K is small (T x C) and stays in L2.

The gradient of u is the transposed product, out[r, j] = sum_{(t, c), t >= j} g[r, t, c] * K[t - j, c], split
over ranges of t so that the grid fills the chip; the gradient of K (when theta or a projection is trained)
goes through torch's FFT.

``precision`` is Triton's ``input_precision``: "ieee" (float32 products), "tf32x3" (three tf32 products,
close to float32) or "tf32" (one, about 1e-3 relative error).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backward import refuse_double_backward
from ..triton_env import interpreting, launch_device
from .common import check_causal_product_operands, memory_from_causal_product
from .dispatch import MAX_ROWS
from .fft import toeplitz_kernel_gradient

PRECISIONS = ("ieee", "tf32x3", "tf32")


@triton.jit
def _toeplitz_forward_kernel(u_ptr, k_ptr, out_ptr, R, T, C, D,
                             BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                             BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """out[b, t, d, c] = sum_{j <= t} u[b, j, d] K[t - j, c]; rows r = b * D + d."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    c_blocks = tl.cdiv(C, BLOCK_C)
    t_block = pid_n // c_blocks
    c_block = pid_n % c_blocks
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_T * BLOCK_C)
    t = t_block * BLOCK_T + cols // BLOCK_C
    c = c_block * BLOCK_C + cols % BLOCK_C
    row_ok = rows < R
    rows = rows.to(tl.int64)  # output offsets can pass 2**31
    u_rows = (rows // D) * (T * D) + rows % D
    col_ok = (t < T) & (c < C)
    acc = tl.zeros((BLOCK_M, BLOCK_T * BLOCK_C), dtype=tl.float32)
    t_end = tl.minimum((t_block + 1) * BLOCK_T, T)  # causal: sources after the tile's last step add nothing
    for j0 in range(0, t_end, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)
        a = tl.load(u_ptr + u_rows[:, None] + j[None, :] * D, mask=row_ok[:, None] & (j < T)[None, :], other=0.0)
        s = t[None, :] - j[:, None]  # (BLOCK_K, BLOCK_T * BLOCK_C): the lag of each (source, column)
        b = tl.load(k_ptr + s * C + c[None, :], mask=(s >= 0) & col_ok[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
    out_rows = (rows // D) * (T * D * C) + (rows % D) * C
    tl.store(out_ptr + out_rows[:, None] + (t.to(tl.int64) * (D * C) + c)[None, :], acc,
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _toeplitz_forward_rows_kernel(u_ptr, k_ptr, out_ptr, R, T, C, D,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                  PRECISION: tl.constexpr):
    """The same product with the roles swapped: rows (sequence, step), inner index the lag s, so the impulse
    response is a plain row-major operand K[s, c] and only u is read along skewed indices u[b, t - s, d]."""
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    r = tl.program_id(2).to(tl.int64)  # one (sequence, dimension) row of u per program; offsets can pass 2**31
    t = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)
    c = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)
    u_row = (r // D) * (T * D) + r % D
    t_ok = t < T
    c_ok = c < C
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    s_end = tl.minimum((pid_t + 1) * BLOCK_M, T)  # causal: lags beyond the tile's last step reach before t = 0
    for s0 in range(0, s_end, BLOCK_K):
        s = s0 + tl.arange(0, BLOCK_K)
        source = t[:, None] - s[None, :]
        a = tl.load(u_ptr + u_row + source * D, mask=(source >= 0) & t_ok[:, None], other=0.0)
        b = tl.load(k_ptr + s[:, None] * C + c[None, :], mask=(s < T)[:, None] & c_ok[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
    out_row = (r // D) * (T * D * C) + (r % D) * C
    tl.store(out_ptr + out_row + t[:, None].to(tl.int64) * (D * C) + c[None, :], acc,
             mask=t_ok[:, None] & c_ok[None, :])


@triton.jit
def _toeplitz_grad_u_kernel(g_ptr, k_ptr, out_ptr, R, T, C, D, T_PER_SPLIT,
                            BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_T: tl.constexpr,
                            BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """partial[split, r, j] = sum over this split's t >= j of sum_c g[b, t, d, c] K[t - j, c]."""
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    split = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    row_ok = rows < R
    rows = rows.to(tl.int64)  # offsets can pass 2**31
    g_rows = (rows // D) * (T * D * C) + (rows % D) * C
    kk = tl.arange(0, BLOCK_T * BLOCK_C)
    acc = tl.zeros((BLOCK_M, BLOCK_J), dtype=tl.float32)
    t_start = tl.maximum(split * T_PER_SPLIT, pid_j * BLOCK_J)  # t < j contributes nothing
    t_stop = tl.minimum((split + 1) * T_PER_SPLIT, T)
    for t0 in range(t_start, t_stop, BLOCK_T):
        t = t0 + kk // BLOCK_C
        t_ok = t < t_stop
        for c0 in range(0, C, BLOCK_C):
            c = c0 + kk % BLOCK_C
            ok = t_ok & (c < C)
            a = tl.load(g_ptr + g_rows[:, None] + (t.to(tl.int64) * (D * C) + c)[None, :],
                        mask=row_ok[:, None] & ok[None, :],
                        other=0.0)
            s = t[:, None] - j[None, :]  # (BLOCK_T * BLOCK_C, BLOCK_J)
            b = tl.load(k_ptr + s * C + c[:, None], mask=(s >= 0) & ok[:, None] & (j < T)[None, :], other=0.0)
            acc += tl.dot(a, b, input_precision=PRECISION)
    tl.store(out_ptr + split.to(tl.int64) * R * T + rows[:, None] * T + j[None, :], acc,
             mask=row_ok[:, None] & (j < T)[None, :])


_FORWARD_BLOCKS = dict(BLOCK_M=64, BLOCK_T=4, BLOCK_C=32, BLOCK_K=32)
# Tiles of the "rows" forward tried by the autotuner on a GPU: BLOCK_M, BLOCK_N, BLOCK_K, warps, stages.
ROWS_CONFIGS = [(128, 128, 32, 8, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 256, 32, 8, 3),
                (64, 64, 64, 4, 3), (128, 128, 64, 8, 2)]
_TUNED: dict = {}


def _rows_launcher():
    """The "rows" forward behind Triton's autotuner on a GPU; the first tile in the interpreter."""
    if interpreting():
        m, n, k, warps, stages = ROWS_CONFIGS[0]
        return lambda grid, **kw: _toeplitz_forward_rows_kernel[grid](BLOCK_M=m, BLOCK_N=n, BLOCK_K=k,
                                                                      num_warps=warps, num_stages=stages, **kw)
    if "rows" not in _TUNED:
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
                   for m, n, k, w, st in ROWS_CONFIGS]
        # The batch (R) is left out of the key: a new batch size would retune every tile.
        _TUNED["rows"] = triton.autotune(configs=configs, key=["T", "C", "D", "PRECISION"])(
            _toeplitz_forward_rows_kernel)
    tuned = _TUNED["rows"]
    return lambda grid, **kw: tuned[grid](**kw)
FORWARD_KERNELS = ("rows", "columns")
_GRAD_BLOCKS = dict(BLOCK_M=64, BLOCK_J=64, BLOCK_T=2, BLOCK_C=32)


class _CausalToeplitz(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, kernel, precision, forward_kernel):
        with launch_device(u.device):
            return _CausalToeplitz._forward(ctx, u, kernel, precision, forward_kernel)

    @staticmethod
    def _forward(ctx, u, kernel, precision, forward_kernel):
        batch, time, D = u.shape
        C = kernel.shape[1]
        u, kernel = u.contiguous(), kernel.contiguous()
        out = u.new_empty(batch, time, D, C)
        if forward_kernel == "rows":
            grid = lambda meta: (triton.cdiv(time, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_N"]),  # noqa: E731
                                 batch * D)
            _rows_launcher()(grid, u_ptr=u, k_ptr=kernel, out_ptr=out, R=batch * D, T=time, C=C, D=D,
                             PRECISION=precision)
        else:
            blocks = _FORWARD_BLOCKS
            grid = (triton.cdiv(batch * D, blocks["BLOCK_M"]),
                    triton.cdiv(time, blocks["BLOCK_T"]) * triton.cdiv(C, blocks["BLOCK_C"]))
            _toeplitz_forward_kernel[grid](u, kernel, out, batch * D, time, C, D, **blocks, PRECISION=precision)
        ctx.save_for_backward(u, kernel)
        ctx.precision = precision
        return out

    @staticmethod
    def backward(ctx, grad):
        with launch_device(ctx.saved_tensors[0].device):
            return _CausalToeplitz._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        refuse_double_backward("Toeplitz memory", "fft")
        u, kernel = ctx.saved_tensors
        batch, time, D = u.shape
        C = kernel.shape[1]
        grad = grad.contiguous()
        grad_u = grad_kernel = None
        if ctx.needs_input_grad[0]:
            blocks = _GRAD_BLOCKS
            rows = batch * D
            tiles = triton.cdiv(rows, blocks["BLOCK_M"]) * triton.cdiv(time, blocks["BLOCK_J"])
            # Split the sum over t until the grid has a few programs per SM's worth of tiles.
            splits = max(1, min(16, 512 // max(tiles, 1), triton.cdiv(time, blocks["BLOCK_T"])))
            per_split = triton.cdiv(triton.cdiv(time, splits), blocks["BLOCK_T"]) * blocks["BLOCK_T"]
            splits = triton.cdiv(time, per_split)
            partial = u.new_empty(splits, rows, time)
            grid = (triton.cdiv(rows, blocks["BLOCK_M"]), triton.cdiv(time, blocks["BLOCK_J"]), splits)
            _toeplitz_grad_u_kernel[grid](grad, kernel, partial, rows, time, C, D, per_split, **blocks,
                                          PRECISION=ctx.precision)
            grad_u = partial.sum(0).view(batch, D, time).transpose(1, 2)
        if ctx.needs_input_grad[1]:
            grad_kernel = toeplitz_kernel_gradient(grad, u)
        return grad_u, grad_kernel, None, None


def causal_toeplitz(u: torch.Tensor, kernel: torch.Tensor, precision: str = "ieee",
                    forward_kernel: str = "rows") -> torch.Tensor:
    """out[b, t, d, c] = sum_{j <= t} u[b, j, d] kernel[t - j, c].

    Args:
        u: ``(batch, time, D)`` float32; kernel: ``(time, C)`` float32, on the same device (CUDA, or any under
            ``TRITON_INTERPRET=1``).
        precision: "ieee", "tf32x3" or "tf32".
        forward_kernel: "rows" (rows are (sequence, step); the default) or "columns" (rows are sequences,
            columns (step, channel)): two tilings of the same product.

    Returns:
        ``(batch, time, D, C)``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if forward_kernel not in FORWARD_KERNELS:
        raise ValueError(f"forward_kernel must be one of {FORWARD_KERNELS}, got {forward_kernel!r}")
    check_causal_product_operands(u, kernel)
    if u.shape[0] * u.shape[2] > MAX_ROWS:
        raise ValueError(f"causal_toeplitz takes at most {MAX_ROWS} (sequence, dimension) rows, got "
                         f"{u.shape[0] * u.shape[2]} (u {tuple(u.shape)}); use linear_memory_fft")
    if u.dtype != torch.float32 or kernel.dtype != torch.float32:
        raise ValueError(f"the Toeplitz kernel computes in float32; got u {u.dtype}, kernel {kernel.dtype}")
    return _CausalToeplitz.apply(u, kernel, precision, forward_kernel)


def linear_memory_toeplitz(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                           m0: torch.Tensor | None = None, *, impulse: torch.Tensor | None = None,
                           precision: str = "ieee", forward_kernel: str = "rows") -> torch.Tensor:
    """The memory of every step as one Triton Toeplitz product. Shapes as in the package docstring; A_bar
    must be shared (k = 1): per-dimension thetas have one impulse response each (use ``linear_memory_fft``)."""
    return memory_from_causal_product(lambda x, kernel: causal_toeplitz(x, kernel, precision, forward_kernel),
                                      "linear_memory_toeplitz", u, A_bar, B_bar, m0, impulse)
