"""What a backward pass will run: the autograd nodes behind a tensor, for tests of how a sequence is split."""

from __future__ import annotations

import torch


def backward_node_names(output: torch.Tensor) -> list[str]:
    """Names of every node in the autograd graph behind ``output`` (one entry per node)."""
    names, seen, stack = [], set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names
