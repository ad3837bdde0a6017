"""What the one-node recurrences (``ops.elman``, ``ops.gru``) share: the in-place activation of one step, the
dtype check of their inputs, and the recurrent weight's gradient."""

from __future__ import annotations

import numpy
import torch


def in_place_activation(outputs: torch.Tensor, relu: bool):
    """The activation (tanh, or ReLU), applied in place to one step's block of a tensor like ``outputs``.

    tanh comes from numpy on the CPU (float32 or float64, not while torch.compile traces): for one (100, 212)
    float32 step on this project's CPU, torch's tanh (Sleef, within 0.51 ulp over 5e7 samples) took 38.6 us and
    numpy's (SIMD, within 1.37 ulp) 8.8 us, which took the Elman forward at the psMNIST shape from 109-115 ms
    to 70-84 ms (two runs alternated, 9 rounds). The block shares its memory with the numpy array.
    """
    if relu:
        return lambda block: block.clamp_min_(0)
    if (outputs.device.type == "cpu" and outputs.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling()):
        def numpy_tanh(block: torch.Tensor) -> torch.Tensor:
            if block.dtype != outputs.dtype:  # a product made in another dtype (autocast)
                return block.tanh_()
            array = block.numpy()
            numpy.tanh(array, out=array)
            return block
        return numpy_tanh
    return lambda block: block.tanh_()


def check_same_dtype(**tensors: torch.Tensor | None) -> None:
    """The recurrences write each step's products into preallocated tensors, so their inputs must share one dtype
    (under autocast, the caller casts): raise naming the arguments otherwise."""
    given = {name: t.dtype for name, t in tensors.items() if t is not None}
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{name} {str(dtype).replace('torch.', '')}" for name, dtype in given.items())
        raise ValueError(f"the recurrence's tensors must share one dtype, got {listed}")


def recurrent_weight_gradient(grad_pre: torch.Tensor, outputs: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """sum_t grad_pre[t]^T h_{t-1} for a recurrence h_t = f(... + h_{t-1} W^T): ``(gates, hidden)`` from grad_pre
    ``(time, batch, gates)``, outputs ``(time, batch, hidden)`` and h0 ``(batch, hidden)``, as two products (no
    copy of the states to put h0 in front of them)."""
    grad_weight = grad_pre[0].t() @ h0
    if grad_pre.shape[0] > 1:
        grad_weight = grad_weight.addmm_(grad_pre[1:].flatten(0, 1).t(), outputs[:-1].flatten(0, 1))
    return grad_weight
