"""The LMU's hidden part: whatever the user passed as ``hidden_cell``, behind one interface.

Three kinds:
    "none"         no hidden cell: the output is the memory itself;
    "feedforward"  a module called as ``cell(input)``, applied at each step;
    "recurrent"    a module called as ``cell(input, state)`` like ``nn.RNNCell``, ``nn.GRUCell``, ``nn.LSTMCell``;
                   it returns the new state, either ``h`` or a tuple whose first item is ``h``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .ops.elman import elman_recurrence
from .ops.gru import gru_recurrence

TORCH_CELLS = (nn.RNNCell, nn.GRUCell, nn.LSTMCell)


def cell_kind(cell: nn.Module | None) -> str:
    """Classify a hidden cell: by type for torch's cells, else by how many arguments its forward takes."""
    if cell is None:
        return "none"
    if not isinstance(cell, nn.Module):
        raise TypeError(f"hidden_cell must be an nn.Module or None, got {type(cell).__name__}")
    if isinstance(cell, nn.RNNBase):  # runs a whole sequence and returns (output, state): not one step
        raise TypeError(f"hidden_cell must be a one-step cell, got nn.{type(cell).__name__}, which runs whole "
                        f"sequences; use nn.{type(cell).__name__}Cell")
    if isinstance(cell, nn.RNNCellBase):
        return "recurrent"
    params = [p for p in inspect.signature(cell.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return "recurrent" if len(params) >= 2 else "feedforward"


def declared_input_size(cell: nn.Module) -> int | None:
    """The input width a hidden cell declares: ``input_size`` of torch's cells, ``in_features`` of an
    ``nn.Linear`` or of the ``nn.Linear`` that starts an ``nn.Sequential``; None for other modules (and for a
    lazy module, whose width is set by its first call)."""
    if isinstance(cell, nn.RNNCellBase):
        return cell.input_size
    if type(cell) is nn.Sequential and len(cell) > 0:
        cell = cell[0]
    return cell.in_features if type(cell) is nn.Linear else None


def cell_output_size(cell: nn.Module, kind: str, in_features: int) -> int:
    """Size of h: from ``hidden_size`` or ``out_features`` when the cell has one, else from a dry run."""
    for name in ("hidden_size", "out_features"):
        size = getattr(cell, name, None)
        if isinstance(size, int):
            return size
    like = next(cell.parameters(), torch.zeros(()))
    probe = torch.zeros(2, in_features, dtype=like.dtype, device=like.device)
    was_training = cell.training
    cell.eval()
    try:
        with torch.no_grad():
            out = cell(probe, None) if kind == "recurrent" else cell(probe)
    finally:
        cell.train(was_training)
    h = out[0] if isinstance(out, tuple) else out
    return int(h.shape[-1])


def hidden_of(state):
    """h from a recurrent cell's state: the state itself, or its first item (LSTM's (h, c))."""
    return state[0] if isinstance(state, tuple) else state


def masked_update(valid: torch.Tensor, new, old):
    """Keep ``old`` where ``valid`` (batch, 1) is False, for tensors or tuples of tensors; old may be None."""
    if old is None:
        return new
    if isinstance(new, tuple):
        return tuple(masked_update(valid, n, o) for n, o in zip(new, old))
    return torch.where(valid, new, old)


def input_bias(cell: nn.Module) -> torch.Tensor | None:
    """The bias that ``torch_cell_sequence`` expects in its projected input, ``(gates*hidden,)`` or None: for
    ``nn.RNNCell`` and ``nn.LSTMCell`` both biases (each step adds them to the same pre-activation, so they are
    added once for all steps rather than at every step), for ``nn.GRUCell`` ``bias_ih`` alone (its ``bias_hh``
    is scaled by the reset gate)."""
    if cell.bias_ih is None:
        return None
    return cell.bias_ih if isinstance(cell, nn.GRUCell) else cell.bias_ih + cell.bias_hh


def _recurrence_inputs(cell: nn.Module, projected: torch.Tensor, state):
    """``projected`` contiguous and h0, both in the dtype of ``projected`` and the cell's weights promoted: under
    autocast the projection may come in bfloat16 while the weights stay float32, and the recurrences' products
    (written into preallocated steps) take one dtype."""
    dtype = torch.promote_types(projected.dtype, cell.weight_hh.dtype)
    projected = projected.to(dtype).contiguous()
    h0 = projected.new_zeros(projected.shape[1], cell.hidden_size) if state is None else state.to(dtype)
    return projected, h0


def _elman_steps(cell: nn.RNNCell, projected: torch.Tensor, state, lengths: torch.Tensor | None):
    """``nn.RNNCell`` through the one-node Elman recurrence. Same contract as ``torch_cell_sequence``."""
    projected, h0 = _recurrence_inputs(cell, projected, state)
    valid = _valid_steps(projected.shape[0], lengths, projected)
    h = elman_recurrence(projected, cell.weight_hh, h0, valid, relu=cell.nonlinearity == "relu")
    return h.transpose(0, 1), h[-1]


def _gru_steps(cell: nn.GRUCell, projected: torch.Tensor, state, lengths: torch.Tensor | None):
    """``nn.GRUCell`` through the one-node GRU recurrence. Same contract as ``torch_cell_sequence``."""
    projected, h0 = _recurrence_inputs(cell, projected, state)
    valid = _valid_steps(projected.shape[0], lengths, projected)
    h = gru_recurrence(projected, cell.weight_hh, cell.bias_hh, h0, valid)
    return h.transpose(0, 1), h[-1]


def _valid_steps(time: int, lengths: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``(time, batch, 1)`` bool, True where a step is within its sequence's length; None without lengths."""
    if lengths is None:
        return None
    return (torch.arange(time, device=like.device)[:, None] < lengths[None, :])[..., None]


def torch_cell_sequence(cell: nn.Module, projected: torch.Tensor, state, lengths: torch.Tensor | None):
    """Run one of torch's own cells over a sequence whose input projection is already computed.

    Args:
        cell: ``nn.RNNCell``, ``nn.GRUCell`` or ``nn.LSTMCell``.
        projected: ``(time, batch, gates*hidden)``, ``inputs @ cell.weight_ih.T + input_bias(cell)``,
            time-major so that each step reads one contiguous block.
        state: as the cell takes it, or None.
        lengths: ``(batch,)`` or None; the state stops changing past each length.

    Returns:
        h for every step ``(batch, time, hidden)`` (held past each length) and the final state.
    """
    if isinstance(cell, nn.RNNCell):
        return _elman_steps(cell, projected, state, lengths)
    if isinstance(cell, nn.GRUCell):
        return _gru_steps(cell, projected, state, lengths)
    # nn.LSTMCell: a loop of its steps (on the CPU without lengths, recurrent_sequence runs torch's own LSTM).
    time, batch, _ = projected.shape
    if state is None:
        zeros = projected.new_zeros(batch, cell.hidden_size)
        state = (zeros, zeros)
    outputs = []
    # unbind, not projected[t]: the backward of one indexing per step writes a zero gradient the size of the
    # whole sequence at every step, O(time^2) (57 s against 1.6 s for the loop mode, GRUCell(212) at the
    # psMNIST shape on this CPU); unbind's backward stacks the steps' gradients once.
    for t, gates_x in enumerate(projected.unbind(0)):
        i, f, g, o = (gates_x + nn.functional.linear(state[0], cell.weight_hh)).chunk(4, dim=-1)  # biases: in gates_x
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        new = (torch.sigmoid(o) * torch.tanh(c), c)
        if lengths is not None:
            new = masked_update((t < lengths)[:, None], new, state)
        state = new
        outputs.append(state[0])
    return torch.stack(outputs, dim=1), state


def uses_torch_lstm(cell: nn.Module, device: torch.device | str, padded: bool) -> bool:
    """Whether ``recurrent_sequence`` runs ``cell`` as one call of torch's own LSTM (oneDNN on the CPU) instead of
    a loop of cell calls: an ``nn.LSTMCell`` on the CPU, in a call without ``lengths`` (``padded`` False).

    Measured on this project's CPU (2 threads, huge pages; ``benchmarks/torch_rnn_cells.py``), forward + backward
    over batch 100 x 784 steps, LSTMCell(257, 212): 1.13-1.19 s against 1.98-2.12 s for the loop in two runs;
    float32 outputs within 6.3e-7 of it. A GRUCell there took 1.82-2.05 s against 1.70-1.98 s, so GRU cells keep
    the loop. On CUDA, cuDNN is not timed yet (the same script with ``--device cuda``): the loop runs there.
    """
    return type(cell) is nn.LSTMCell and not padded and torch.device(device).type == "cpu"


def _torch_lstm_sequence(cell: nn.LSTMCell, inputs: torch.Tensor, state):
    """``nn.LSTMCell`` over a whole ``(batch, time, in_features)`` sequence in one call of torch's LSTM, with the
    cell's own weights (same layout and gate order as ``nn.LSTM``'s first layer).

    Outside autocast, in the weights' dtype: the cell, called step by step, keeps its state in that dtype
    under CPU autocast, while torch.lstm is on autocast's bfloat16 list (its bfloat16 state then fails in a
    later call without autocast)."""
    dtype = cell.weight_hh.dtype
    if state is None:
        zeros = inputs.new_zeros(1, inputs.shape[0], cell.hidden_size, dtype=dtype)
        state = (zeros, zeros)
    else:
        state = (state[0].unsqueeze(0).to(dtype), state[1].unsqueeze(0).to(dtype))
    weights = [cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if cell.bias else [])
    with torch.autocast(inputs.device.type, enabled=False):
        h, h_last, c_last = torch.lstm(inputs.to(dtype), state, weights, cell.bias, 1, 0.0, cell.training, False,
                                       True)
    return h, (h_last[0], c_last[0])


def recurrent_sequence(cell: nn.Module, inputs: torch.Tensor, state, lengths: torch.Tensor | None,
                       fast: bool = True):
    """Run a recurrent cell over a whole input sequence.

    Args:
        inputs: ``(batch, time, in_features)``.
        state: the cell's state before the first step, or None.
        lengths: ``(batch,)`` or None; the state stops changing past each length.
        fast: use the batched input projection for torch's own cells, or torch's own LSTM where
            ``uses_torch_lstm`` says (exact same math).

    Returns:
        h for every step ``(batch, time, hidden)`` and the final state.
    """
    if fast and uses_torch_lstm(cell, inputs.device, lengths is not None):
        return _torch_lstm_sequence(cell, inputs, state)
    if fast and type(cell) in TORCH_CELLS:
        # One product for all steps, time-major.
        projected = nn.functional.linear(inputs.transpose(0, 1), cell.weight_ih, input_bias(cell))
        return torch_cell_sequence(cell, projected, state, lengths)
    outputs = []
    for t, inputs_t in enumerate(inputs.unbind(1)):  # unbind: see torch_cell_sequence
        new = cell(inputs_t, state)
        if lengths is not None:
            new = masked_update((t < lengths)[:, None], new, state)
        state = new
        outputs.append(hidden_of(state))
    return torch.stack(outputs, dim=1), state


def apply_feedforward(cell: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Apply a feedforward cell to every step at once: ``(batch, time, F)`` -> ``(batch, time, H)``."""
    batch, time, features = inputs.shape
    out = cell(inputs.reshape(batch * time, features))
    return out.reshape(batch, time, -1)
