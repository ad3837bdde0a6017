"""What the hand-written backward passes of ``contime.ops`` share."""

from __future__ import annotations

import torch


def refuse_double_backward(what: str, use: str) -> None:
    """Raise inside a backward pass run with ``create_graph=True``: the saved tensors of a hand-written backward
    carry no graph, so a second derivative through it would come out as zero without a word. ``what`` names the
    operation, ``use`` the mode that differentiates twice."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"the {what} has no double backward (create_graph=True); use mode={use!r}")
