"""A GRU or LSTM cell over a whole sequence: the library's own path against one call of torch's own RNN.

The library's path ("loop" below) is ``hidden.torch_cell_sequence`` over the batched input projection: a loop of
LSTM steps, or for a GRU cell the one-node recurrence of ``contime.ops.gru``.

This is the measurement behind ``contime.hidden.uses_torch_lstm`` (which cells run as one call of torch's LSTM,
and on which device). Forward + backward (inputs and the cell's parameters), minimum of --repeat calls after one
warm-up, float32, in the same process; also the largest difference between the two outputs.

    python benchmarks/torch_rnn_cells.py                          # CPU, batch 100 x 784 steps, 257 -> 212
    python benchmarks/torch_rnn_cells.py --device cuda --repeat 10
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from contime import hidden as hidden_ops


def one_call(cell: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``(batch, time, hidden)`` from torch.lstm / torch.gru with the cell's own weights, from a zero state."""
    if isinstance(cell, nn.LSTMCell):  # the library's own path
        return hidden_ops._torch_lstm_sequence(cell, inputs, None)[0]
    zeros = inputs.new_zeros(1, inputs.shape[0], cell.hidden_size)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    return torch.gru(inputs, zeros, weights, True, 1, 0.0, True, False, True)[0]


def loop(cell: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The library's path with the input projection batched (``recurrent_sequence`` without torch's LSTM): a loop of
    LSTM steps, or the GRU recurrence as one autograd node."""
    projected = nn.functional.linear(inputs.transpose(0, 1), cell.weight_ih, hidden_ops.input_bias(cell))
    return hidden_ops.torch_cell_sequence(cell, projected, None, None)[0]


def seconds(fn, device: torch.device, repeat: int) -> float:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    once()
    return min(once() for _ in range(repeat))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--time", type=int, default=784)
    parser.add_argument("--inputs", type=int, default=257)
    parser.add_argument("--hidden", type=int, default=212)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    inputs = torch.randn(args.batch, args.time, args.inputs, device=device, requires_grad=True)
    for cell_type in (nn.LSTMCell, nn.GRUCell):
        cell = cell_type(args.inputs, args.hidden).to(device)
        leaves = [inputs, *cell.parameters()]
        grad = torch.randn(args.batch, args.time, args.hidden, device=device)
        row = {"cell": cell_type.__name__, "device": str(device), "shape": vars(args),
               "max_abs_difference": (loop(cell, inputs) - one_call(cell, inputs)).abs().max().item()}
        for name, fn in (("loop", loop), ("one_call", one_call)):
            row[f"{name}_ms"] = 1e3 * seconds(lambda: torch.autograd.grad(fn(cell, inputs), leaves, grad), device,
                                              args.repeat)
        row["one_call_over_loop"] = row["one_call_ms"] / row["loop_ms"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
