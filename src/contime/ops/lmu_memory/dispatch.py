"""Which implementation computes the memory of every step: the Triton Toeplitz product on CUDA where it
applies, the chunk scan on the CPU (one shared A_bar), the FFT convolution everywhere else. All compute the same
function (each tested against the reference loop)."""

from __future__ import annotations

import math

import torch

from ..triton_env import triton_available
from .chunk_scan import chunk_length, linear_memory_chunk_scan
from .common import under_transform, zero_input_response
from .fft import linear_memory_fft, projected_memory_fft

# The Toeplitz product costs O(T^2) per channel against the FFT's O(T log T): beyond this length the FFT wins
# whatever the constant factors.
TOEPLITZ_MAX_TIME = 2048
# CUDA's grid limit on axes 1 and 2: the Toeplitz "rows" forward puts one (sequence, dimension) row per program
# on axis 2.
MAX_ROWS = 65535


def use_triton_memory(u: torch.Tensor, A_bar: torch.Tensor, precision: str = "ieee", needs_grad: bool = False) -> bool:
    """True for float32 CUDA inputs, one shared A_bar, at most TOEPLITZ_MAX_TIME steps and MAX_ROWS
    (sequence, dimension) rows, with Triton there; and, in "ieee" precision, only when no gradient is wanted.

    Measured at the psMNIST shape on an H100 (``contime bench``): forward 0.517 ms against 0.826 ms for the
    FFT, but forward + backward 2.54 ms against 1.98 ms in "ieee" (the gradient kernel's float32 products),
    and 0.953 ms in "tf32x3".
    """
    if precision == "ieee" and needs_grad:
        return False
    return (u.device.type == "cuda" and u.dtype == torch.float32 and A_bar.shape[0] == 1
            and u.shape[1] <= TOEPLITZ_MAX_TIME and u.shape[0] * u.shape[2] <= MAX_ROWS
            and triton_available())


def use_chunk_scan(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor | None = None,
                   m0: torch.Tensor | None = None, H: torch.Tensor | None = None) -> bool:
    """True for CPU inputs with one shared A_bar (``chunk_scan``), unless a gradient to A_bar, B_bar or H is
    wanted (a trained theta changes A_bar every step, and each new A_bar costs the chunk operator's float64 build:
    0.66 s at order 256 on this CPU, about the FFT's whole forward and backward), or forward-mode AD or a
    torch.func transform is at work (``common.under_transform``).

    Measured on this project's CPU (one thread, float32, a /tmp script timing both; forward / forward + backward,
    FFT then chunk scan, ms): batch 32, 1,000 steps, order 16: 5.4 / 10.2 against 2.0 / 4.5; order 64: 14.7 / 28.2
    against 9.6 / 20.9; batch 8, 10,000 steps, order 64: 65.2 / 204.1 against 22.5 / 48.3; batch 16, 784 steps,
    order 256, 4 memory dimensions: 144.4 / 565.3 against 165.4 / 300.8 (the forward slower here; faster in an
    earlier run, 170.2 against 161.4); the psMNIST shape (batch 100, 784 steps, order 256): 224.6 / 713.4 against
    204.9 / 369.0; batch 1, 100,000 steps, order 256: 1,050.5 / 2,032.7 against 276.2 / 552.4. On CUDA it is
    not timed yet, so the FFT stays there.
    """
    return (u.device.type == "cpu" and A_bar.shape[0] == 1 and not _wants_grad(A_bar, B_bar, H)
            and not under_transform(u, A_bar, B_bar, m0, H))


def toeplitz_precision(precision: str) -> str:
    """The Toeplitz product's precision for an LMU's ``kernel_precision``. "mixed" means tf32 wherever a rounding
    does not compound (``contime.ops.lmu_cell.core_triton.product_precisions``): the Toeplitz product has no
    recurrence (each output is one sum over the impulse response), so it is "tf32" here."""
    return "tf32" if precision == "mixed" else precision


def _wants_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _outside_autocast(fn):
    """Run a convolution outside autocast, on float32 operands: cuFFT takes half precision only for powers of
    two and no bfloat16 at all, the Triton kernels take float32, and a long convolution in bfloat16 would lose
    the memory's precision anyway. Outputs are float32 then (autocast's ops accept them)."""
    def wrapped(*args, **kwargs):
        device_type = next(a for a in args if torch.is_tensor(a)).device.type
        if not torch.is_autocast_enabled(device_type):
            return fn(*args, **kwargs)
        widen = lambda a: a.float() if torch.is_tensor(a) and a.dtype in (torch.float16, torch.bfloat16) else a  # noqa: E731
        with torch.autocast(device_type, enabled=False):
            return fn(*(widen(a) for a in args), **kwargs)
    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


@_outside_autocast
def memory_all_steps(u, A_bar, B_bar, m0, H, precision: str = "ieee") -> torch.Tensor:
    """m for every step, ``(batch, time, D, n)``; arguments as ``linear_memory_fft`` (H may be None)."""
    if use_triton_memory(u, A_bar, precision, _wants_grad(u, A_bar, B_bar, m0, H)):
        from .toeplitz import linear_memory_toeplitz
        return linear_memory_toeplitz(u, A_bar, B_bar, m0, impulse=H,
                                      precision=toeplitz_precision(precision))
    if use_chunk_scan(u, A_bar, B_bar, m0, H):
        return linear_memory_chunk_scan(u, A_bar, B_bar, m0, impulse=H)
    return linear_memory_fft(u, A_bar, B_bar, m0, impulse=H)


# The CPU's projection W m_t goes through the chunk scan (forming m, then one product) below this score,
# n (n + L + G) / (G log2(2 T)): the chunk scan's work per output over the projected FFT's (one memory
# dimension). Measured on this project's CPU (one thread, /tmp scripts, 21 shapes, forward + backward with W
# trained): below 40 the chunk scan was faster in 15 of 16 shapes, at 0.15x to 0.77x of the FFT's time. The
# exception was batch 32 x 300 steps, order 64, 64 outputs (score 17): 1.43x and 1.60x in two runs, 11 against
# 7 ms. From 43 to 162 the FFT was faster or even, 0.94x to 6.7x (the psMNIST shape, score 64: 1.30x).
CHUNK_PROJECTION_MAX_SCORE = 40.0


def projects_by_chunks(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, weight: torch.Tensor,
                       m0: torch.Tensor | None, H: torch.Tensor | None) -> bool:
    """Whether ``causal_projection`` takes the chunk scan: where ``use_chunk_scan`` holds, for one memory
    dimension, below CHUNK_PROJECTION_MAX_SCORE."""
    if u.shape[2] != 1 or not use_chunk_scan(u, A_bar, B_bar, m0, H) or under_transform(weight):
        return False
    time, G, n = u.shape[1], weight.shape[0], weight.shape[2]
    score = n * (n + chunk_length(time) + G) / (G * math.log2(2 * time))
    return score < CHUNK_PROJECTION_MAX_SCORE


@_outside_autocast
def causal_projection(u, A_bar, B_bar, weight, m0, H, precision: str = "ieee") -> torch.Tensor:
    """W m_t for every step, ``(batch, time, G)``; arguments as ``projected_memory_fft``.

    With one memory dimension on CUDA, the projected impulse response W H_s ``(time, G)`` is itself the
    kernel of a Toeplitz product, so only the G projected channels are ever written. On the CPU, where the
    order is small against G and log T (``projects_by_chunks``), the chunk scan forms m and one product
    projects it; elsewhere the FFT convolves u with W H_s, never forming m.
    """
    if use_triton_memory(u, A_bar, precision, _wants_grad(u, A_bar, B_bar, weight, m0, H)) and u.shape[2] == 1:
        from ...legendre import impulse_response
        from .toeplitz import causal_toeplitz
        time = u.shape[1]
        H = impulse_response(A_bar, B_bar, time) if H is None else H  # (1, T, n)
        kernel = H[0] @ weight[:, 0, :].t()  # (T, G)
        out = causal_toeplitz(u, kernel, toeplitz_precision(precision))[:, :, 0]  # (batch, T, G)
        if m0 is not None:
            out = out + torch.einsum("btdn,gdn->btg", zero_input_response(A_bar, m0, time), weight)
        return out
    if projects_by_chunks(u, A_bar, B_bar, weight, m0, H):
        memory = linear_memory_chunk_scan(u, A_bar, B_bar, m0, impulse=H)[:, :, 0]  # (batch, T, n)
        return memory @ weight[:, 0, :].t()
    return projected_memory_fft(u, A_bar, B_bar, weight, m0, impulse=H)
