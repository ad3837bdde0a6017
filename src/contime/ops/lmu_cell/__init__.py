"""The full LMU cell with an Elman (``nn.RNNCell``) hidden state, fused over time.

The recurrence, with time-major tensors, N = D * n memory values and H hidden units:

    u_t = ux_t + h_{t-1} E_h + m_{t-1} E_m          (B, D)   E_h, E_m optional (hidden/memory to memory)
    m_t = m_{t-1} A_T + u_t Bm                       (B, N)   A_T = the block-diagonal A_bar, transposed
    h_t = act(xh_t + m_t W_m + h_{t-1} W_h)          (B, H)   act = tanh or relu

ux and xh hold everything that depends on x only (input kernels and biases), computed for all steps at once
by the caller. The backward pass runs the same structure in reverse:

    dp_t = (gh_t + dp_{t+1} W_h^T + du_{t+1} E_h^T) * act'(h_t)
    dm_t = gm_t + dm_{t+1} A_T^T + du_{t+1} E_m^T + dp_t W_m^T
    du_t = dm_t Bm^T

and every weight gradient is then one matrix product over all steps and sequences at once.

Backends of the sequential part: "triton" (persistent kernels, CUDA or ``TRITON_INTERPRET=1``) and "torch"
(the same algorithm with torch ops, any device). ``lmu_cell_naive`` is the reference: a plain loop that
autograd differentiates. ``lmu_cell_convolution`` (module ``convolution``) computes the same cell, for one
memory input and no memory_to_memory, with the memory's feedback as a convolution over past inputs: one
barrier per step in its kernels instead of two.
"""

from __future__ import annotations

import importlib

import torch

from ..backward import refuse_double_backward
from ..triton_env import interpreting, triton_available

BACKENDS = ("auto", "torch", "triton")
PRECISIONS = ("ieee", "tf32x3", "tf32", "mixed")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """"auto": Triton for float32 on CUDA when installed, else torch ops."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and dtype == torch.float32 and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package; install it or use backend='torch'")
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(f"backend='triton' runs on CUDA tensors (or under TRITON_INTERPRET=1); "
                               f"got tensors on {device.type}")
        if dtype != torch.float32:
            raise ValueError(f"backend='triton' computes in float32; got {dtype} (use backend='torch')")
    return backend


def core_module(backend: str, algorithm: str = "core"):
    """The module that runs ``algorithm`` ("core": the state algorithm; "convolution") on ``backend``:
    ``{algorithm}_torch`` or ``{algorithm}_triton``."""
    return importlib.import_module(f".{algorithm}_{backend}", __name__)


def core_arguments(backend: str, precision: str, args: list) -> tuple[list, dict]:
    """``args`` as the backend's core takes them (the kernels index every buffer densely, torch ops take any
    strides), and its keyword arguments (only the kernels take a precision)."""
    if backend == "torch":
        return args, {}
    return [x if x is None else x.contiguous() for x in args], {"precision": precision}


class _LMUCellSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, relu, backend, precision):
        core = core_module(backend)
        args, extra = core_arguments(backend, precision, [ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0])
        H_ext, M_ext, U = core.forward_core(*args, relu, **extra)
        ctx.save_for_backward(H_ext, M_ext, U, A_T, Bm, E_h, E_m, W_m, W_h)
        ctx.relu, ctx.backend, ctx.extra = relu, backend, extra
        ctx.set_materialize_grads(False)
        # Copies, not views of the buffers: a caller may modify the outputs in place (e.g. ReLU(inplace=True)).
        return H_ext[1:].clone(), M_ext[1:].clone()

    @staticmethod
    def backward(ctx, grad_hs, grad_ms):
        refuse_double_backward("fused LMU cell", "recurrent")
        H_ext, M_ext, U, A_T, Bm, E_h, E_m, W_m, W_h = ctx.saved_tensors
        # The cell's dtype even where backward runs inside an autocast region (its products would be cast).
        with torch.autocast(H_ext.device.type, enabled=False):
            if grad_hs is None:
                grad_hs = torch.zeros_like(H_ext[1:])
            core = core_module(ctx.backend)
            DP, DM, DU, grad_h0, grad_m0 = core.backward_core(
                grad_hs.contiguous(), None if grad_ms is None else grad_ms.contiguous(), H_ext, A_T.contiguous(),
                Bm.contiguous(), E_h, E_m, W_m.contiguous(), W_h.contiguous(), ctx.relu, **ctx.extra)
            need = ctx.needs_input_grad
            flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731 - (T, B, C) -> (T*B, C)
            H_prev, M_prev, M = flat(H_ext[:-1]), flat(M_ext[:-1]), flat(M_ext[1:])
            dp, dm, du = flat(DP), flat(DM), flat(DU)
            grads = [
                DU if need[0] else None,
                DP if need[1] else None,
                M_prev.t() @ dm if need[2] else None,
                flat(U).t() @ dm if need[3] else None,
                H_prev.t() @ du if need[4] else None,
                M_prev.t() @ du if need[5] else None,
                M.t() @ dp if need[6] else None,
                H_prev.t() @ dp if need[7] else None,
                grad_m0 if need[8] else None,
                grad_h0 if need[9] else None,
            ]
            return (*grads, None, None, None)


def _check(name: str, x, shape: tuple) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def check_sequences(ux, xh) -> tuple[int, int, int, int]:
    """(time, batch, D, hidden) of the inputs ux ``(T, B, D)`` and xh ``(T, B, H)``, which must be 3-D with at least
    one step and one sequence; xh's own shape is checked by the caller against these."""
    for name, x in (("ux", ux), ("xh", xh)):
        if not torch.is_tensor(x) or x.ndim != 3:
            raise ValueError(f"{name} must be a 3-D (time, batch, features) tensor")
    time, batch, D = ux.shape
    if time < 1 or batch < 1:
        raise ValueError(f"ux must have at least one step and one sequence, got shape {tuple(ux.shape)}")
    return time, batch, D, xh.shape[-1]


def check_same_place(ux, named: dict) -> None:
    """Every tensor of ``named`` (name -> tensor or None) on ux's device, in ux's dtype."""
    for name, x in named.items():
        if x is not None and (x.device != ux.device or x.dtype != ux.dtype):
            raise ValueError(f"{name} is {x.dtype} on {x.device}, but ux is {ux.dtype} on {ux.device}: all tensors "
                             "of the fused LMU cell must share one device and one dtype")


def check_arguments(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0) -> None:
    """Every shape must agree exactly: nothing is broadcast."""
    time, batch, D, hidden = check_sequences(ux, xh)
    N = Bm.shape[-1] if torch.is_tensor(Bm) else -1  # the memory size, D * order
    _check("xh", xh, (time, batch, hidden))
    _check("Bm", Bm, (D, N))
    _check("A_T", A_T, (N, N))
    _check("W_m", W_m, (N, hidden))
    _check("W_h", W_h, (hidden, hidden))
    _check("m0", m0, (batch, N))
    _check("h0", h0, (batch, hidden))
    if E_h is not None:
        _check("E_h", E_h, (hidden, D))
    if E_m is not None:
        _check("E_m", E_m, (N, D))
    check_same_place(ux, dict(xh=xh, A_T=A_T, Bm=Bm, E_h=E_h, E_m=E_m, W_m=W_m, W_h=W_h, m0=m0, h0=h0))


def lmu_cell_sequence(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, *, relu: bool = False,
                      backend: str = "auto", precision: str = "ieee"):
    """Run the fused LMU cell over a sequence (equations in the module docstring).

    Args:
        ux: ``(T, B, D)``; xh: ``(T, B, H)``; A_T: ``(N, N)``; Bm: ``(D, N)``; E_h: ``(H, D)`` or None;
        E_m: ``(N, D)`` or None; W_m: ``(N, H)``; W_h: ``(H, H)``; m0: ``(B, N)``; h0: ``(B, H)``.
        relu: relu instead of tanh.
        backend: "auto", "torch" or "triton" (see ``resolve_backend``).
        precision: products in "ieee" float32, "tf32x3" (three tf32 products, near float32), "tf32", or "mixed"
            (tf32x3 for the memory's products, tf32 for the hidden cell's; ``core_triton.product_precisions``).
            Triton backend only; torch follows its own ``torch.backends.cuda.matmul.allow_tf32``.

    Returns:
        hs ``(T, B, H)`` and ms ``(T, B, N)``: h_t and m_t for every step.
    """
    check_arguments(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    backend = resolve_backend(backend, ux.device, ux.dtype)
    return _LMUCellSequence.apply(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, bool(relu), backend, precision)


def lmu_cell_naive(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, *, relu: bool = False):
    """Reference: the equations step by step, differentiated by autograd. Same contract as
    ``lmu_cell_sequence``."""
    activation = torch.relu if relu else torch.tanh
    h, m = h0, m0
    hs, ms = [], []
    for u, xh_t in zip(ux.unbind(0), xh.unbind(0)):  # unbind: per-step indexing has an O(T^2) backward
        if E_h is not None:
            u = u + h @ E_h
        if E_m is not None:
            u = u + m @ E_m
        m = m @ A_T + u @ Bm
        h = activation(xh_t + m @ W_m + h @ W_h)
        hs.append(h)
        ms.append(m)
    return torch.stack(hs), torch.stack(ms)


from .convolution import lmu_cell_convolution  # noqa: E402 - it reads this module's checks

__all__ = ["lmu_cell_sequence", "lmu_cell_naive", "lmu_cell_convolution", "triton_available", "resolve_backend",
           "BACKENDS", "PRECISIONS"]
