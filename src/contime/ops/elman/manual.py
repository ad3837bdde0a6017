"""Elman recurrence as one autograd node.

Autograd over a Python loop records several nodes per step; this records one for the whole sequence.
The forward loop runs without autograd, and the backward loop does one matrix product per step. The
weight gradient, a sum over steps, becomes a single matrix product over all steps at the end.
"""

from __future__ import annotations

import torch


class _ElmanRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projected, weight_hh, h0, valid, relu):
        time = projected.shape[0]
        outputs = torch.empty_like(projected)
        h = h0
        w_t = weight_hh.t()
        for t in range(time):
            new = torch.addmm(projected[t], h, w_t)
            new = torch.relu_(new) if relu else torch.tanh_(new)
            if valid is not None:
                new = torch.where(valid[t], new, h)
            outputs[t] = new
            h = outputs[t]
        ctx.save_for_backward(outputs, weight_hh, h0, valid)
        ctx.relu = relu
        return outputs

    @staticmethod
    def backward(ctx, grad_outputs):
        outputs, weight_hh, h0, valid = ctx.saved_tensors
        time = outputs.shape[0]
        grad_pre = torch.empty_like(outputs)
        carry = torch.zeros_like(h0)  # d loss / d h_t from later steps
        for t in range(time - 1, -1, -1):
            grad_h = grad_outputs[t] + carry
            h = outputs[t]
            local = (h > 0).to(h.dtype) if ctx.relu else 1 - h * h
            if valid is None:
                grad_pre[t] = grad_h * local
                carry = grad_pre[t] @ weight_hh
            else:
                # A padded step copies h_{t-1}: its gradient passes straight through.
                keep = valid[t].to(h.dtype)
                grad_pre[t] = grad_h * local * keep
                carry = grad_pre[t] @ weight_hh + grad_h * (1 - keep)
        previous = torch.cat([h0.unsqueeze(0), outputs[:-1]], dim=0)
        grad_weight = grad_pre.flatten(0, 1).t() @ previous.flatten(0, 1)
        return grad_pre, grad_weight, carry, None, None


def elman_recurrence(projected: torch.Tensor, weight_hh: torch.Tensor, h0: torch.Tensor,
                     valid: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """h_t = act(projected_t + h_{t-1} @ weight_hh.T), held at h_{t-1} where ``valid`` is False.

    Args:
        projected: ``(time, batch, hidden)``, the input projection with both biases added.
        weight_hh: ``(hidden, hidden)``.
        h0: ``(batch, hidden)``.
        valid: ``(time, batch, 1)`` bool, or None for all steps valid.
        relu: ReLU instead of tanh.

    Returns:
        h for every step, ``(time, batch, hidden)``.
    """
    return _ElmanRecurrence.apply(projected, weight_hh, h0, valid, relu)
