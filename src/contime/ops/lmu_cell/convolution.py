"""The LMU cell with one memory input (D = 1) and no memory_to_memory, its memory feedback as a convolution.

The memory is linear in its input, so m_t = sum_{s<=t} u_s H_{t-s} (+ what m0 contributes), with the impulse
response H_j = Bm A_T^j ``(T, N)``. What the hidden state reads from it, m_t W_m, is then a convolution of the
past inputs u with K_j = H_j W_m ``(T, H)``, and the cell needs no memory state at all:

    u_t = ux_t + h_{t-1} E_h                                   (B, 1)   E_h optional (hidden_to_memory)
    h_t = act(xh_t + h_{t-1} W_h + sum_{s<=t} u_s K_{t-s})     (B, H)

Each step depends on the previous one through h alone, so a GPU kernel needs one barrier per step instead of
two (m_t, then h_t), and no product ever multiplies a state by A_T: K is built in float64 by the caller, so
tf32 products round each step's sum once instead of compounding through 784 products with a rounded A_T
(K = H W_m, from the impulse response that the caller builds in float64 and casts once).
The price is O(t) work at step t instead of O(N): O(T^2) over a sequence (``MAX_TIME``).

The backward pass, with dp_t = d loss / d pre-activation and du_t = d loss / d u_t:

    dp_t = (gh_t + dp_{t+1} W_h^T + du_{t+1} E_h^T) * act'(h_t)
    du_t = gu_t + sum_{t'>=t} dp_{t'} . K_{t'-t}               (a sum over the hidden units too)

where gu is what flows back from the memory's own outputs (the caller computes them from u: every state, or
only the last, with the linear memory ops). The gradient of K is a correlation of dp with u (by FFT), of
E_h and W_h one product each over all steps; the caller's autograd takes K's gradient on to W_m, H and theta.

Backends: "torch" (``convolution_torch``: a loop of torch ops, any device) and "triton" (``convolution_triton``:
one persistent kernel each way). The reference is ``contime.ops.lmu_cell.lmu_cell_naive``, with the memory
carried as a state.
"""

from __future__ import annotations

import torch

from ..backward import refuse_double_backward
from ..lmu_memory.fft import toeplitz_kernel_gradient
from . import PRECISIONS, _check, check_same_place, check_sequences, core_arguments, core_module, resolve_backend

MAX_TIME = 4096  # O(T^2): beyond this the state algorithm (O(T N) per sequence) is the better choice


class _ConvolutionCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ux, xh, K, E_h, W_h, h0, relu, backend, precision):
        core = core_module(backend, "convolution")
        args, extra = core_arguments(backend, precision, [ux, xh, K, E_h, W_h, h0])
        H_ext, U = core.forward_core(*args, relu, **extra)
        _, _, K, E_h, W_h, _ = args  # the contiguous copies: the kernels read them densely in the backward too
        ctx.save_for_backward(H_ext, U, K, E_h, W_h)
        ctx.relu, ctx.backend, ctx.extra = relu, backend, extra
        ctx.set_materialize_grads(False)
        return H_ext[1:].clone(), U

    @staticmethod
    def backward(ctx, grad_hs, grad_us):
        refuse_double_backward("fused LMU cell", "recurrent")
        H_ext, U, K, E_h, W_h = ctx.saved_tensors
        # The cell's dtype even where backward runs inside an autocast region (its products would be cast).
        with torch.autocast(H_ext.device.type, enabled=False):
            if grad_hs is None:
                grad_hs = torch.zeros_like(H_ext[1:])
            core = core_module(ctx.backend, "convolution")
            DP, DU, grad_h0 = core.backward_core(
                grad_hs.contiguous(), None if grad_us is None else grad_us.contiguous(), H_ext, K.contiguous(), E_h,
                W_h.contiguous(), ctx.relu, **ctx.extra)
            need = ctx.needs_input_grad
            flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731 - (T, B, C) -> (T*B, C)
            H_prev = flat(H_ext[:-1])
            # d loss / d K[s] = sum_{t, b} dp_t u_{t-s}: a correlation, by FFT (batch-first for the helper).
            grad_K = toeplitz_kernel_gradient(DP.transpose(0, 1)[:, :, None], U.transpose(0, 1)) if need[2] else None
            grad_E_h = H_prev.t() @ flat(DU) if need[3] else None
            grad_W_h = H_prev.t() @ flat(DP) if need[4] else None
            return (DU if need[0] else None, DP if need[1] else None, grad_K, grad_E_h, grad_W_h,
                    grad_h0 if need[5] else None, None, None, None)


def check_arguments(ux, xh, H, E_h, W_m, W_h, h0) -> None:
    """Every shape must agree exactly: nothing is broadcast."""
    time, batch, D, hidden = check_sequences(ux, xh)
    if D != 1:
        raise ValueError(f"the convolution algorithm takes one memory input: ux must be (time, batch, 1), "
                         f"got {tuple(ux.shape)}")
    if time > MAX_TIME:
        raise ValueError(f"the convolution algorithm costs O(T^2): at most {MAX_TIME} steps, got {time}")
    N = H.shape[-1] if torch.is_tensor(H) else -1
    _check("xh", xh, (time, batch, hidden))
    _check("H", H, (time, N))
    _check("W_m", W_m, (N, hidden))
    _check("W_h", W_h, (hidden, hidden))
    _check("h0", h0, (batch, hidden))
    if E_h is not None:
        _check("E_h", E_h, (hidden, 1))
    check_same_place(ux, dict(xh=xh, H=H, E_h=E_h, W_m=W_m, W_h=W_h, h0=h0))


def lmu_cell_convolution(ux, xh, H, E_h, W_m, W_h, h0, *, relu: bool = False, backend: str = "auto",
                         precision: str = "ieee"):
    """Run the LMU cell with its memory feedback as a convolution (equations in the module docstring).

    Args:
        ux: ``(T, B, 1)``; xh: ``(T, B, H)``, with what m0 contributes already added (m0 A_T^(t+1) W_m);
        H: ``(T, N)``, the impulse response Bm A_T^j (build it in float64, then cast); E_h: ``(H, 1)`` or None;
        W_m: ``(N, H)``; W_h: ``(H, H)``; h0: ``(B, H)``.
        relu: relu instead of tanh.
        backend: "auto", "torch" or "triton" (``contime.ops.lmu_cell.resolve_backend``).
        precision: the Triton products, as in ``lmu_cell_sequence``; "mixed" is tf32 here (no product
            compounds through the memory).

    Returns:
        hs ``(T, B, H)`` and us ``(T, B, 1)``: h_t and the memory's input u_t for every step. The memory's
        states follow from us by the linear memory ops (every state, or only the last).
    """
    check_arguments(ux, xh, H, E_h, W_m, W_h, h0)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    backend = resolve_backend(backend, ux.device, ux.dtype)
    with torch.autocast(ux.device.type, enabled=False):  # K in the cell's dtype, not autocast's
        K = H @ W_m  # (T, H): what an input reaches the pre-activation with, j steps later
    return _ConvolutionCell.apply(ux, xh, K, E_h, W_h, h0, bool(relu), backend, precision)
