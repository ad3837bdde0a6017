"""The Elman recurrence in one persistent Triton kernel per pass (the convolution kernels of
``contime.ops.lmu_cell.convolution_triton`` without their convolution): one barrier per step, where the torch
loop of ``manual`` launches a few kernels per step. No padding masks."""

from __future__ import annotations

import torch


class _PersistentElman(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projected, weight_hh, h0, relu, precision):
        from ..lmu_cell.convolution_triton import elman_forward
        W_h = weight_hh.t().contiguous()  # the kernels take h @ W_h
        H_ext = elman_forward(projected.contiguous(), W_h, h0.contiguous(), relu, precision)
        ctx.save_for_backward(H_ext, W_h)
        ctx.relu, ctx.precision = relu, precision
        return H_ext[1:].clone()

    @staticmethod
    def backward(ctx, grad_outputs):
        if torch.is_grad_enabled():  # create_graph=True: the saved tensors carry no graph, so refuse
            raise RuntimeError("the Elman recurrence has no double backward (create_graph=True); use mode='recurrent'")
        from ..lmu_cell.convolution_triton import elman_backward
        H_ext, W_h = ctx.saved_tensors
        DP, grad_h0 = elman_backward(grad_outputs.contiguous(), H_ext, W_h, ctx.relu, ctx.precision)
        grad_weight = DP.flatten(0, 1).t() @ H_ext[:-1].flatten(0, 1)  # d loss / d weight_hh, (hidden, hidden)
        return DP, grad_weight, grad_h0, None, None


def persistent_elman(projected: torch.Tensor, weight_hh: torch.Tensor, h0: torch.Tensor, relu: bool = False,
                     precision: str = "ieee") -> torch.Tensor:
    """``elman_recurrence`` without padding, in the Triton kernels (CUDA float32, or the interpreter).
    ``precision``: the kernels' products, "ieee", "tf32x3" or "tf32" ("mixed" is tf32 here)."""
    return _PersistentElman.apply(projected, weight_hh, h0, bool(relu), precision)
