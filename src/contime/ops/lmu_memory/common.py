"""Pieces shared by the linear-memory paths."""

from __future__ import annotations

import contextlib

import torch
from torch.autograd import forward_ad

from ...legendre import impulse_response, power_sequence


def apply_state_matrix(A_bar: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """A_bar @ m per memory dimension.

    Args:
        A_bar: ``(k, n, n)`` with k = 1 or D.
        m: ``(batch, D, n)``.

    Returns:
        ``(batch, D, n)``.
    """
    if A_bar.shape[0] == 1:
        return m @ A_bar[0].transpose(0, 1)
    return torch.einsum("bdm,dnm->bdn", m, A_bar)


def zero_input_response(A_bar: torch.Tensor, m0: torch.Tensor, length: int) -> torch.Tensor:
    """What the initial state contributes at each step: A_bar^(t+1) m0 for t < length.

    Args:
        A_bar: ``(k, n, n)``; m0: ``(batch, D, n)``.

    Returns:
        ``(batch, length, D, n)``, in m0's dtype.
    """
    batch, dims, n = m0.shape
    # Powers by repeated squaring in float64, cast once: in float32 they drift far more than a step-by-step loop.
    A64 = A_bar.to(torch.float64)
    first = apply_state_matrix(A64, m0.to(torch.float64))  # A_bar m0, the response at t = 0
    if A_bar.shape[0] == 1:
        columns = first.reshape(batch * dims, n).transpose(0, 1).unsqueeze(0)  # (1, n, batch*D)
        seq = power_sequence(A64, columns, length)  # (1, T, n, batch*D)
        return seq[0].reshape(length, n, batch, dims).permute(2, 0, 3, 1).to(m0.dtype)
    columns = first.permute(1, 2, 0)  # (D, n, batch)
    seq = power_sequence(A64, columns, length)  # (D, T, n, batch)
    return seq.permute(3, 1, 0, 2).to(m0.dtype)


def expand_dims(H: torch.Tensor, dims: int) -> torch.Tensor:
    """Broadcast a shared impulse response ``(1, L, n)`` to ``(D, L, n)``; leave a per-dimension one alone."""
    return H.expand(dims, -1, -1) if H.shape[0] == 1 else H


def check_causal_product_operands(u: torch.Tensor, kernel: torch.Tensor) -> None:
    """Refuse operands of a causal Toeplitz product other than u ``(batch, time, D)`` and kernel ``(time, C)``."""
    if u.ndim != 3 or kernel.ndim != 2 or kernel.shape[0] != u.shape[1]:
        raise ValueError(f"u must be (batch, time, D) and kernel (time, C) with the same time; got u "
                         f"{tuple(u.shape)}, kernel {tuple(kernel.shape)}")


def check_shared_system(name: str, A_bar: torch.Tensor, B_bar: torch.Tensor) -> None:
    """Refuse anything but one A_bar ``(1, n, n)`` and B_bar ``(1, n)`` shared by every memory dimension (what
    the Toeplitz-product paths need); ``name`` is the caller's, for the error."""
    if A_bar.ndim != 3 or A_bar.shape[0] != 1 or tuple(B_bar.shape) != (1, A_bar.shape[-1]):
        raise ValueError(f"{name} needs one shared A_bar (1, n, n) and B_bar (1, n) (k = 1); got k = "
                         f"{A_bar.shape[0]}: A_bar {tuple(A_bar.shape)}, B_bar {tuple(B_bar.shape)}; use "
                         "linear_memory_fft for per-dimension theta")


def memory_from_causal_product(product, name: str, u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                               m0: torch.Tensor | None, impulse: torch.Tensor | None) -> torch.Tensor:
    """The memory of every step from a causal Toeplitz product ``product(u, kernel)`` (kernel ``(T, n)``) with
    the shared impulse response, plus what m0 contributes. Shapes as in the package docstring; ``name`` is the
    caller's, for the error when A_bar is not shared (k != 1)."""
    check_shared_system(name, A_bar, B_bar)
    time = u.shape[1]
    H = impulse_response(A_bar, B_bar, time) if impulse is None else impulse  # (1, T, n)
    m = product(u, H[0])
    if m0 is not None:
        m = m + zero_input_response(A_bar, m0, time)
    return m


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device):
    """cuBLAS's float32 products in TF32 for "tf32" only, restoring the caller's setting afterwards; nothing
    changes for CPU tensors. Through ``fp32_precision``: reading the legacy ``allow_tf32`` after a caller set
    the new setting raises."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = previous


def under_transform(*tensors: torch.Tensor | None) -> bool:
    """Whether forward-mode AD (a dual tensor among ``tensors``) or a torch.func transform (vmap, jacrev, jvp,
    ...) is at work: autograd nodes without a jvp or vmap rule (the chunk scan's) cannot run then."""
    if torch._C._are_functorch_transforms_active():
        return True
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)
