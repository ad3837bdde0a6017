"""The memory as one dense matrix product (cuBLAS on a GPU): the causal Toeplitz product in block form.

Cut the steps into NB blocks of L (the last one padded with zeros): output step t = I L + i, source step
j = (I - k) L + l. With l' = L - 1 - l,

    m[r, I L + i, c] = sum_{k <= I} sum_{l'} u[r, (I - k) L + L - 1 - l'] H[k L + i + l' + 1 - L, c]

is one matrix product  M = U_blocks @ H_skew  where rows r = (sequence b, dimension d) and

    U_blocks[(r, I), (k, l')] = u[r, (I - k) L + L - 1 - l'], zero for k > I      (R NB, NB L)
    H_skew[(k, l'), (i, c)]  = H[k L + i + l' + 1 - L, c], zero for a negative lag (NB L, L C)

Row (k, l') of H_skew is the L consecutive rows of H that start at lag k L + l' + 1 - L, so H_skew is an
unfold of the zero-padded H. M ``(R NB, L C)`` is the memory itself, laid out as (r, t, c): nothing is
rearranged afterwards when D = 1. The product does the causal triangle's zeros too (twice the useful
multiply-adds), but as one large GEMM it runs at the library's speed. The gradient of u is the transposed
product followed by a deterministic gather-and-sum along the block diagonals; the gradient of H goes
through the FFT (``toeplitz_kernel_gradient``).

``precision`` "ieee" multiplies in float32; "tf32" lets cuBLAS use TF32 tensor cores (about 1e-3 relative
error; on the CPU it changes nothing). Under ``torch.autocast`` the products still run in the inputs' dtype
(a long convolution in bfloat16 would lose the memory's precision).

Memory: U_blocks and the gradient's gather hold R T^2 / L values each, H_skew L T C: for long sequences the
FFT or the Triton kernel is leaner.
"""

from __future__ import annotations

import functools

import torch

from ..backward import refuse_double_backward
from .common import check_causal_product_operands, matmul_precision, memory_from_causal_product
from .fft import toeplitz_kernel_gradient

PRECISIONS = ("ieee", "tf32")


def block_length(time: int) -> int:
    """L: the whole sequence up to 32 steps; else a divisor of ``time`` between 16 and 64 closest to 32 (no
    padded steps), else 32."""
    if time <= 32:
        return max(time, 1)
    divisors = [size for size in range(16, 65) if time % size == 0]
    return min(divisors, key=lambda size: (abs(size - 32), size)) if divisors else 32


@functools.lru_cache(maxsize=8)  # built once per shape: a handful of tiny kernels per call would cost as much as the GEMM
def _source_index(blocks: int, L: int, device: torch.device) -> torch.Tensor:
    """``(NB, NB L)``: the padded step read by U_blocks[(., I), (k, l')], or NB L (a zero) where k > I."""
    I = torch.arange(blocks, device=device)[:, None, None]
    k = torch.arange(blocks, device=device)[None, :, None]
    lp = torch.arange(L, device=device)[None, None, :]
    source = (I - k) * L + L - 1 - lp
    return torch.where(k <= I, source, blocks * L).reshape(blocks, blocks * L)


@functools.lru_cache(maxsize=8)
def _diagonal_index(blocks: int, L: int, device: torch.device) -> torch.Tensor:
    """``(NB L, NB)``: for source step s = p L + L - 1 - l', the entries (I = k + p, k, l') of a flattened
    ``(NB, NB L)`` gradient of U_blocks that read it, or NB NB L (a zero) where k + p >= NB."""
    s = torch.arange(blocks * L, device=device)[:, None]
    k = torch.arange(blocks, device=device)[None, :]
    p, lp = s // L, L - 1 - s % L
    flat = (k + p) * (blocks * L) + k * L + lp
    return torch.where(k + p < blocks, flat, blocks * blocks * L)


def _skewed_kernel(kernel: torch.Tensor, blocks: int, L: int) -> torch.Tensor:
    """H_skew ``(NB L, L C)`` from the kernel ``(T, C)``."""
    time, C = kernel.shape
    padded = torch.cat([kernel.new_zeros(L, C), kernel, kernel.new_zeros(blocks * L - time, C)])  # (L + NB L, C)
    windows = padded.unfold(0, L, 1)[1:1 + blocks * L]  # (NB L, C, L): rows q + 1 .. q + L of padded
    return windows.transpose(1, 2).reshape(blocks * L, L * C)


class _BlockGemmToeplitz(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, kernel, L, precision):
        batch, time, D = u.shape
        C = kernel.shape[1]
        blocks = -(-time // L)
        padded_time = blocks * L
        rows = u.permute(0, 2, 1).reshape(batch * D, time)  # (R, T)
        rows = torch.nn.functional.pad(rows, (0, padded_time - time + 1))  # (R, NB L + 1), a zero at the end
        U_blocks = rows[:, _source_index(blocks, L, u.device)]  # (R, NB, NB L)
        with torch.autocast(u.device.type, enabled=False), matmul_precision(precision, u.device):
            M = U_blocks.reshape(batch * D * blocks, padded_time) @ _skewed_kernel(kernel, blocks, L)  # (R NB, L C)
        ctx.save_for_backward(u, kernel)  # not H_skew: L times larger, and cheap to rebuild
        ctx.L, ctx.precision = L, precision
        # A copy only where the last block was padded or D > 1; else M already is (B, T, D, C).
        return M.view(batch, D, padded_time, C)[:, :, :time].permute(0, 2, 1, 3).contiguous()

    @staticmethod
    def backward(ctx, grad):
        refuse_double_backward("block-GEMM memory", "fft")
        u, kernel = ctx.saved_tensors
        grad = grad.to(u.dtype)  # the gradient of an autocast region may come back in its dtype
        batch, time, D = u.shape
        L, C = ctx.L, kernel.shape[1]
        blocks = -(-time // L)
        padded_time = blocks * L
        grad_u = grad_kernel = None
        if ctx.needs_input_grad[0]:
            G = grad.permute(0, 2, 1, 3).reshape(batch * D, time, C)
            G = torch.nn.functional.pad(G, (0, 0, 0, padded_time - time))  # (R, NB L, C)
            with matmul_precision(ctx.precision, u.device):
                grad_blocks = G.reshape(batch * D * blocks, L * C) @ _skewed_kernel(kernel, blocks, L).t()
            flat = torch.nn.functional.pad(grad_blocks.view(batch * D, blocks * padded_time), (0, 1))
            grad_rows = flat[:, _diagonal_index(blocks, L, u.device)].sum(-1)  # (R, NB L)
            grad_u = grad_rows[:, :time].view(batch, D, time).transpose(1, 2)
        if ctx.needs_input_grad[1]:
            grad_kernel = toeplitz_kernel_gradient(grad, u)
        return grad_u, grad_kernel, None, None


def block_gemm_toeplitz(u: torch.Tensor, kernel: torch.Tensor, precision: str = "ieee",
                        block: int | None = None) -> torch.Tensor:
    """out[b, t, d, c] = sum_{j <= t} u[b, j, d] kernel[t - j, c], as one matrix product.

    Args:
        u: ``(batch, time, D)``; kernel: ``(time, C)``, same dtype and device (any: CPU or CUDA).
        precision: "ieee" or "tf32" (cuBLAS's TF32 tensor cores).
        block: L, the steps per block (default ``block_length(time)``).

    Returns:
        ``(batch, time, D, C)``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    check_causal_product_operands(u, kernel)
    if u.dtype != kernel.dtype or u.device != kernel.device:
        raise ValueError(f"u and kernel must share dtype and device; got u {u.dtype} on {u.device}, kernel "
                         f"{kernel.dtype} on {kernel.device}")
    L = block_length(u.shape[1]) if block is None else block
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")
    return _BlockGemmToeplitz.apply(u, kernel, L, precision)


def linear_memory_block_gemm(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                             m0: torch.Tensor | None = None, *, impulse: torch.Tensor | None = None,
                             precision: str = "ieee", block: int | None = None) -> torch.Tensor:
    """The memory of every step as one block-Toeplitz matrix product. Shapes as in the package docstring;
    A_bar must be shared (k = 1)."""
    return memory_from_causal_product(lambda x, kernel: block_gemm_toeplitz(x, kernel, precision, block),
                                      "linear_memory_block_gemm", u, A_bar, B_bar, m0, impulse)
