"""Run one LMU forward in time and another backward, and concatenate their outputs."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .lmu import LMU


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence within its own length; padding stays at the end.

    Args:
        x: ``(batch, time, features)``; lengths: ``(batch,)`` or None.
    """
    if lengths is None:
        return x.flip(1)
    time = x.shape[1]
    steps = torch.arange(time, device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (batch, time)
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


class BidirectionalLMU(nn.Module):
    """A forward LMU and a backward LMU over the same input; outputs concatenated on the feature axis.

    Args:
        forward_lmu: the LMU run forward in time.
        backward_lmu: the LMU run on the reversed sequence; default a fresh deep copy of ``forward_lmu``
            with its parameters reset.

    Shapes: as ``LMU``, with ``output_size`` the sum of both. The state is a pair (forward, backward).
    """

    def __init__(self, forward_lmu: LMU, backward_lmu: LMU | None = None):
        super().__init__()
        if not isinstance(forward_lmu, LMU):
            raise TypeError(f"forward_lmu must be a contime.LMU, got {type(forward_lmu).__name__}")
        if backward_lmu is None:
            backward_lmu = copy.deepcopy(forward_lmu)
            for module in backward_lmu.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        if not isinstance(backward_lmu, LMU):
            raise TypeError(f"backward_lmu must be a contime.LMU, got {type(backward_lmu).__name__}")
        for flag in ("input_size", "batch_first", "return_sequences"):
            if getattr(forward_lmu, flag) != getattr(backward_lmu, flag):
                raise ValueError(f"forward_lmu and backward_lmu must agree on {flag}")
        self.forward_lmu = forward_lmu
        self.backward_lmu = backward_lmu
        self.output_size = forward_lmu.output_size + backward_lmu.output_size

    def forward(self, x: torch.Tensor, state=None, lengths: torch.Tensor | None = None,
                dt: torch.Tensor | None = None):
        """x: ``(batch, time, input_size)``; state: (forward_state, backward_state) or None; dt: ``(batch, time)``
        time since the previous sample (see ``LMU.forward``), or None for equal steps.

        The backward LMU reads the series reversed, so its gaps are reversed too: its step j > 0 (original sample
        n - 1 - j) follows original sample n - j after dt[n - j]; its first step keeps dt[0].
        """
        state_f, state_b = (None, None) if state is None else state
        y_f, state_f = self.forward_lmu(x, state_f, lengths, dt=dt)
        time_axis = 1 if self.forward_lmu.batch_first else 0
        as_batch_first = (lambda t: t) if time_axis == 1 else (lambda t: t.transpose(0, 1))
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=x.device)
        x_rev = as_batch_first(reverse_padded(as_batch_first(x), lengths))
        dt_rev = None
        if dt is not None:
            gaps = as_batch_first(dt)  # (batch, time); shapes were checked by the forward LMU
            reversed_gaps = reverse_padded(gaps[..., None], lengths)[..., 0]  # [j] = dt[n - 1 - j]
            dt_rev = as_batch_first(torch.cat([gaps[:, :1], reversed_gaps[:, :-1]], dim=1))
        y_b, state_b = self.backward_lmu(x_rev, state_b, lengths, dt=dt_rev)
        if self.forward_lmu.return_sequences:
            y_b = as_batch_first(reverse_padded(as_batch_first(y_b), lengths))
        return torch.cat([y_f, y_b], dim=-1), (state_f, state_b)
