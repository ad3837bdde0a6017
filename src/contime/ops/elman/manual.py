"""Elman recurrence as one autograd node.

Autograd over a Python loop records several nodes per step; this records one for the whole sequence.
Each step costs two kernels forward (addmm, tanh) and two backward (mul, addmm); the derivative of the
activation and the weight gradient, a sum over steps, are computed for all steps at once.
"""

from __future__ import annotations

import torch

from ..backward import refuse_double_backward
from ..recurrence import check_same_dtype, in_place_activation, recurrent_weight_gradient


class _ElmanRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projected, weight_hh, h0, valid, relu):
        with torch.autocast(projected.device.type, enabled=False):  # the products in the inputs' dtype
            time = projected.shape[0]
            outputs = torch.empty_like(projected)
            h = h0
            w_t = weight_hh.t()
            activation = in_place_activation(outputs, relu)
            for t in range(time):
                if valid is None:
                    activation(torch.addmm(projected[t], h, w_t, out=outputs[t]))
                else:
                    torch.where(valid[t], activation(torch.addmm(projected[t], h, w_t)), h, out=outputs[t])
                h = outputs[t]
            ctx.save_for_backward(outputs, weight_hh, h0, valid)
            ctx.relu = relu
            return outputs

    @staticmethod
    def backward(ctx, grad_outputs):
        refuse_double_backward("Elman recurrence", "recurrent")
        with torch.autocast(grad_outputs.device.type, enabled=False):  # the products in the inputs' dtype
            outputs, weight_hh, h0, valid = ctx.saved_tensors
            time = outputs.shape[0]
            # grad_outputs is often a strided view (of a batch-first gradient): left as it is, since each step's
            # product reads its (batch, hidden) rows through strides, and a contiguous copy took 23 ms at the
            # psMNIST shape on this CPU.
            # d act / d pre-activation for every step at once; a padded step passes nothing through it.
            local = ((outputs > 0).to(outputs.dtype) if ctx.relu
                     else torch.addcmul(outputs.new_ones(()), outputs, outputs, value=-1))
            if valid is not None:
                keep = valid.to(outputs.dtype)
                local = local * keep
                skip = 1 - keep  # a padded step copies h_{t-1}: its gradient goes straight through
            grad_pre = torch.empty_like(outputs)
            grad_h = grad_outputs[time - 1]  # d loss / d h_t, all paths
            for t in range(time - 1, -1, -1):
                torch.mul(grad_h, local[t], out=grad_pre[t])
                if t == 0:
                    break
                if valid is None:
                    grad_h = torch.addmm(grad_outputs[t - 1], grad_pre[t], weight_hh)
                else:
                    grad_h = torch.addmm(grad_outputs[t - 1] + grad_h * skip[t], grad_pre[t], weight_hh)
            grad_h0 = grad_pre[0] @ weight_hh
            if valid is not None:
                grad_h0 = grad_h0 + grad_h * skip[0]
            grad_weight = recurrent_weight_gradient(grad_pre, outputs, h0)
            return grad_pre, grad_weight, grad_h0, None, None


# What backend="auto" takes on CUDA in float32: "torch" until the persistent kernels are timed on a GPU (they
# have been checked in Triton's interpreter and compiled for sm_90a only); "triton" to use them there.
CUDA_BACKEND = "torch"


def elman_recurrence(projected: torch.Tensor, weight_hh: torch.Tensor, h0: torch.Tensor,
                     valid: torch.Tensor | None = None, relu: bool = False, backend: str = "auto") -> torch.Tensor:
    """h_t = act(projected_t + h_{t-1} @ weight_hh.T), held at h_{t-1} where ``valid`` is False.

    Args:
        projected: ``(time, batch, hidden)``, the input projection with both biases added.
        weight_hh: ``(hidden, hidden)``.
        h0: ``(batch, hidden)``.
        valid: ``(time, batch, 1)`` bool, or None for all steps valid.
        relu: ReLU instead of tanh.
        backend: "torch" (this module's loop, one autograd node), "triton" (``persistent``: one kernel per
            pass; no ``valid``) or "auto": ``CUDA_BACKEND`` for float32 CUDA tensors without ``valid``, else
            "torch".

    Returns:
        h for every step, ``(time, batch, hidden)``.
    """
    from ..lmu_cell import resolve_backend, triton_available
    check_same_dtype(projected=projected, weight_hh=weight_hh, h0=h0)
    if backend == "auto":
        eligible = (valid is None and projected.device.type == "cuda" and projected.dtype == torch.float32
                    and triton_available())
        backend = CUDA_BACKEND if eligible else "torch"
    backend = resolve_backend(backend, projected.device, projected.dtype)
    if backend == "triton":
        if valid is not None:
            raise ValueError("backend='triton' has no padding masks: valid must be None")
        from .persistent import persistent_elman
        return persistent_elman(projected, weight_hh, h0, relu)
    return _ElmanRecurrence.apply(projected, weight_hh, h0, valid, relu)
