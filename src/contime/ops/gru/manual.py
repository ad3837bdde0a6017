"""The GRU recurrence of ``nn.GRUCell`` as one autograd node.

torch's GRUCell step, with the input projection x_t W_ih^T + b_ih precomputed for every step (``projected``):

    r_t = sigmoid(x_r + h W_hr^T + b_hr)
    z_t = sigmoid(x_z + h W_hz^T + b_hz)
    n_t = tanh(x_n + r_t * (h W_hn^T + b_hn))
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}          (h_{t-1} kept where a padded step is not valid)

Autograd over a Python loop of these records about a dozen nodes per step; this records one for the whole
sequence. The forward pass keeps r, z, n and the recurrent part of n's pre-activation for every step; the
backward pass runs the adjoint step by step (one product per step), and the recurrent weight's gradient, a sum
over steps, is one product at the end.
"""

from __future__ import annotations

import torch

from ..backward import refuse_double_backward
from ..recurrence import check_same_dtype, in_place_activation, recurrent_weight_gradient


class _GRURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projected, weight_hh, bias_hh, h0, valid):
        with torch.autocast(projected.device.type, enabled=False):  # the products in the inputs' dtype
            time, batch, _ = projected.shape
            hidden = h0.shape[1]
            outputs = projected.new_empty((time, batch, hidden))
            # r, z, n and h W_hn^T + b_hn of every step, for the backward pass.
            gates = projected.new_empty((time, batch, 3 * hidden))
            recurrent_n = projected.new_empty((time, batch, hidden))
            w_t = weight_hh.t()
            tanh = in_place_activation(gates, relu=False)
            h = h0
            for t in range(time):
                recurrent = torch.mm(h, w_t) if bias_hh is None else torch.addmm(bias_hh, h, w_t)  # (batch, 3H)
                x_rz, x_n = projected[t].split([2 * hidden, hidden], dim=1)
                rz = torch.sigmoid(x_rz + recurrent[:, :2 * hidden], out=gates[t, :, :2 * hidden])
                r, z = rz[:, :hidden], rz[:, hidden:]
                recurrent_n[t] = recurrent[:, 2 * hidden:]
                n = tanh(torch.addcmul(x_n, r, recurrent_n[t], out=gates[t, :, 2 * hidden:]))
                new = torch.addcmul(n, z, h - n)  # (1 - z) n + z h
                if valid is None:
                    outputs[t] = new
                else:
                    torch.where(valid[t], new, h, out=outputs[t])
                h = outputs[t]
            ctx.save_for_backward(outputs, gates, recurrent_n, weight_hh, h0, valid)
            ctx.has_bias = bias_hh is not None
            return outputs

    @staticmethod
    def backward(ctx, grad_outputs):
        refuse_double_backward("GRU recurrence", "recurrent")
        with torch.autocast(grad_outputs.device.type, enabled=False):  # the products in the inputs' dtype
            outputs, gates, recurrent_n, weight_hh, h0, valid = ctx.saved_tensors
            time, batch, hidden = outputs.shape
            grad_projected = torch.empty_like(gates)  # d loss / d (x_r, x_z, x_n) for every step
            grad_recurrent = torch.empty_like(gates)  # d loss / d (h W_h^T + b_h) for every step
            grad_h = grad_outputs[time - 1]  # d loss / d h_t, all paths
            for t in range(time - 1, -1, -1):
                h_prev = h0 if t == 0 else outputs[t - 1]
                r, z, n = gates[t].split(hidden, dim=1)
                if valid is not None:  # a padded step copies h_{t-1}: only valid rows reach the gates
                    keep = valid[t].to(grad_h.dtype)
                    grad_skip = grad_h * (1 - keep)
                    grad_h = grad_h * keep
                grad_x_r, grad_x_z, grad_x_n = grad_projected[t].split(hidden, dim=1)
                # n: d/d pre-activation = dh (1 - z) (1 - n^2)
                torch.mul(grad_h * (1 - z), 1 - n * n, out=grad_x_n)
                # z: dh (h_prev - n) z (1 - z)
                torch.mul(grad_h * (h_prev - n), z * (1 - z), out=grad_x_z)
                # r: d pre_n * (h W_hn^T + b_hn) * r (1 - r)
                torch.mul(grad_x_n * recurrent_n[t], r * (1 - r), out=grad_x_r)
                g_r, g_z, g_n = grad_recurrent[t].split(hidden, dim=1)
                g_r.copy_(grad_x_r)
                g_z.copy_(grad_x_z)
                torch.mul(grad_x_n, r, out=g_n)
                through = grad_h * z  # h_t's direct dependence on h_{t-1}
                if valid is not None:
                    through = through + grad_skip
                grad_h = torch.addmm(through, grad_recurrent[t], weight_hh)  # d loss / d h_{t-1} from this step
                if t > 0:
                    grad_h = grad_h + grad_outputs[t - 1]
            grad_h0 = grad_h
            grad_weight = recurrent_weight_gradient(grad_recurrent, outputs, h0)
            grad_bias = grad_recurrent.sum(dim=(0, 1)) if ctx.has_bias else None
            return grad_projected, grad_weight, grad_bias, grad_h0, None


def gru_recurrence(projected: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor | None, h0: torch.Tensor,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """``nn.GRUCell``'s recurrence over a precomputed input projection, as one autograd node.

    Args:
        projected: ``(time, batch, 3 * hidden)``, x_t W_ih^T + b_ih (gates in torch's order r, z, n).
        weight_hh: ``(3 * hidden, hidden)``; bias_hh: ``(3 * hidden,)`` or None.
        h0: ``(batch, hidden)``.
        valid: ``(time, batch, 1)`` bool, or None for all steps valid; h is held where it is False.

    Returns:
        h for every step, ``(time, batch, hidden)``.
    """
    check_same_dtype(projected=projected, weight_hh=weight_hh, bias_hh=bias_hh, h0=h0)
    return _GRURecurrence.apply(projected, weight_hh, bias_hh, h0, valid)
