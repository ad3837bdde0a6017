"""The Elman recurrence in one persistent Triton kernel per pass (the convolution kernels of
``contime.ops.lmu_cell.convolution_triton`` without their convolution): one barrier per step, where the torch
loop of ``manual`` launches a few kernels per step. No padding masks."""

from __future__ import annotations

import torch

from ..backward import refuse_double_backward


class _PersistentElman(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projected, weight_hh, h0, relu, precision):
        from ..lmu_cell.convolution_triton import elman_forward
        weight_hh = weight_hh.contiguous()
        # The kernels take h @ W_h, W_h = weight_hh.T; the backward's products read weight_hh itself.
        H_ext = elman_forward(projected.contiguous(), weight_hh.t().contiguous(), h0.contiguous(), relu, precision)
        ctx.save_for_backward(H_ext, weight_hh)
        ctx.relu, ctx.precision = relu, precision
        return H_ext[1:].clone()

    @staticmethod
    def backward(ctx, grad_outputs):
        refuse_double_backward("Elman recurrence", "recurrent")
        from ..lmu_cell.convolution_triton import elman_backward
        H_ext, weight_hh = ctx.saved_tensors
        need = ctx.needs_input_grad
        with torch.autocast(H_ext.device.type, enabled=False):  # float32 products even inside an autocast region
            DP, grad_h0 = elman_backward(grad_outputs.float().contiguous(), H_ext, weight_hh, ctx.relu, ctx.precision)
            grad_weight = DP.flatten(0, 1).t() @ H_ext[:-1].flatten(0, 1) if need[1] else None  # (hidden, hidden)
        return DP, grad_weight, grad_h0 if need[2] else None, None, None


def persistent_elman(projected: torch.Tensor, weight_hh: torch.Tensor, h0: torch.Tensor, relu: bool = False,
                     precision: str = "ieee") -> torch.Tensor:
    """``elman_recurrence`` without padding, in the Triton kernels (CUDA, or the interpreter): projected
    ``(T, B, H)``, weight_hh ``(H, H)`` (nn.RNNCell's), h0 ``(B, H)``, all float32 on one device -> h ``(T, B, H)``.
    ``precision``: the kernels' products, "ieee", "tf32x3" or "tf32" ("mixed" is tf32 here)."""
    from ..lmu_cell import PRECISIONS
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for name, x in (("projected", projected), ("weight_hh", weight_hh), ("h0", h0)):
        if x.dtype != torch.float32 or x.device != projected.device:
            raise ValueError(f"the persistent Elman kernels take float32 tensors on one device; {name} is {x.dtype} "
                             f"on {x.device}, projected on {projected.device}")
    time, batch, hidden = projected.shape
    if tuple(weight_hh.shape) != (hidden, hidden) or tuple(h0.shape) != (batch, hidden):
        raise ValueError(f"weight_hh must be {(hidden, hidden)} and h0 {(batch, hidden)} for projected "
                         f"{tuple(projected.shape)}; got {tuple(weight_hh.shape)} and {tuple(h0.shape)}")
    return _PersistentElman.apply(projected, weight_hh, h0, bool(relu), precision)
