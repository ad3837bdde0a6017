"""The Legendre Memory Unit layer.

One step of the cell (Voelker et al. 2019, eq. 7-8), for memory dimension j:

    u_t  = x_t W_x + h_{t-1} W_h + m_{t-1} W_m + b          (each term optional)
    m_t^j = A_bar^j m_{t-1}^j + B_bar^j u_t^j                (the LegT memory, order n per dimension)
    h_t  = f([m_t, x_t], h_{t-1})                              (the hidden cell; x_t only if input_to_hidden)

When the memory depends only on the input (no hidden_to_memory, no memory_to_memory) it is a linear
time-invariant filter of u, so it can be computed for all steps at once ("fft", "conv") or, when only the
last output is needed and the hidden part is feedforward, as a single product ("final"). The plain loop
("recurrent") is the reference that every other mode is tested against.

Irregularly sampled series pass ``dt``, the time elapsed before each sample (in the unit of theta): step t
then uses A_bar(dt_t), B_bar(dt_t), the exact (zoh) update over that interval with the sample's input held
over it. The memory is then time-varying, so it runs as a loop with per-sequence matrices, whatever ``mode``
says; a dt that is the same constant c everywhere is the uniform LMU with theta / c, in every mode.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import hidden as hidden_ops
from .legendre import (DISCRETIZERS, can_read_values, discretize, discretize_steps, impulse_response,
                       under_vmap)
from .ops.lmu_memory import (
    apply_step_matrices,
    linear_memory_conv,
    linear_memory_final,
    linear_memory_varying,
    StepMatrices,
)
from .ops.lmu_cell import PRECISIONS as KERNEL_PRECISIONS
from .ops.lmu_cell import lmu_cell_convolution, lmu_cell_sequence, triton_available
from .ops.lmu_cell import convolution as convolution_algorithm
from .ops.lmu_memory.dispatch import causal_projection, memory_all_steps
from .ops.lmu_memory.common import apply_state_matrix, under_transform, zero_input_response
from .ops.lmu_memory.final import FINAL_CHUNK
from .ops.layout import time_major

MODES = ("auto", "recurrent", "fused", "fft", "conv", "final")
FUSED_ALGORITHMS = ("state", "convolution")
CPU_FUSED_MAX_WIDTH = 128  # on the CPU the fused cell beats the loop only for small layers (see resolve_mode)
# On the CPU "fft" beat the loop for GRU cells of 384 gate units (gates x hidden), even at 768 (0.93), but not
# at 636 at the psMNIST shape (see resolve_mode): the folded projection convolves one channel per gate unit.
# 512 is the largest size where it won everywhere measured, GRU and LSTM cells (before the LSTM's own call).
CPU_FFT_MAX_GATES = 512


def _leading_linear(cell):
    """(linear, rest) when the hidden part is ``nn.Linear`` or an ``nn.Sequential`` that starts with one (rest:
    the remaining modules, or None), else None."""
    if type(cell) is nn.Linear:
        return cell, None
    if type(cell) is nn.Sequential and len(cell) > 0 and type(cell[0]) is nn.Linear:
        return cell[0], (cell[1:] if len(cell) > 1 else None)
    return None


class LMUState(NamedTuple):
    """State carried between calls.

    memory: ``(batch, memory_d * order)``, flattened with index ``dim * order + k``.
    hidden: the hidden cell's state: ``(batch, hidden)``, LSTM's ``(h, c)`` tuple, or None without a hidden cell.
    """

    memory: torch.Tensor
    hidden: object = None


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _probability(name: str, value) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def _check_state_tensor(name: str, value, shape: tuple, layout: str, like: torch.Tensor) -> None:
    """A state tensor must be a float tensor of exactly ``shape`` on ``like``'s device, with finite values."""
    if not torch.is_tensor(value):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if not torch.is_floating_point(value):
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {layout}={tuple(shape)}, got {tuple(value.shape)}")
    if value.device != like.device:
        raise ValueError(f"{name} must be on x's device {like.device}, got {value.device}")


_SMALL = 1 << 16  # elements: _check_finite concatenates tensors up to this size


def _check_finite(named: list[tuple[str, torch.Tensor]]) -> None:
    """Raise naming the first of ``named`` that holds NaN or Inf. One host read for all of them (on a GPU, each
    read waits for the stream), and none where values cannot be read (``can_read_values``)."""
    if not named or not can_read_values(named[0][1]):
        return
    # Small tensors (a state, a step's x) in one reduction, since each op costs microseconds at that size; a
    # large one (a whole sequence) on its own rather than copied.
    small = [tensor.reshape(-1) for _, tensor in named if tensor.numel() <= _SMALL]
    finite = [torch.isfinite(tensor).all() for _, tensor in named if tensor.numel() > _SMALL]
    if small:
        finite.append(torch.isfinite(torch.cat(small) if len(small) > 1 else small[0]).all())
    if not bool(finite[0] if len(finite) == 1 else torch.stack(finite).all()):
        raise ValueError(f"{next(n for n, t in named if not bool(torch.isfinite(t).all()))} contains NaN or Inf")


def _refuse_dt_under_vmap(dt) -> None:
    if dt is not None and under_vmap():
        raise ValueError("dt cannot be given under torch.func.vmap: irregular steps group the distinct step "
                         "lengths (a shape that depends on values); call the layer on the whole batch instead")


class _Choice:
    """A setting of the LMU that must be one of ``choices``, checked whenever it is set (also after construction),
    then by the LMU's method named ``also``, if any. Stored as ``_<name>``."""

    def __init__(self, choices: tuple[str, ...], doc: str, also: str | None = None):
        self.choices, self.also, self.__doc__ = choices, also, doc

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, lmu, owner=None):
        return self if lmu is None else getattr(lmu, "_" + self.name)

    def __set__(self, lmu, value: str) -> None:
        if value not in self.choices:
            raise ValueError(f"{self.name} must be one of {self.choices}, got {value!r}")
        if self.also is not None:
            getattr(lmu, self.also)(value)
        setattr(lmu, "_" + self.name, value)


class LMU(nn.Module):
    """Legendre Memory Unit over a whole sequence.

    Args:
        input_size: features per step of x.
        memory_d: number of memory dimensions D (each a separate LegT memory of the given order).
        order: order n of each memory (Legendre polynomials up to degree n - 1).
        theta: window length in steps; a number, or a sequence of D numbers (one per memory dimension).
        hidden_cell: None, a feedforward module, or a recurrent cell (see ``contime.hidden``).
        hidden_to_memory: feed h_{t-1} into u_t.
        memory_to_memory: feed m_{t-1} into u_t.
        input_to_hidden: feed x_t into the hidden cell beside m_t.
        trainable_theta: learn theta by backprop through the discretization (every mode supports it).
        discretizer: "zoh", "euler" or "bilinear".
        input_kernel: project x to the memory's D inputs; if False, x feeds the memory directly
            (then input_size must equal memory_d).
        use_bias: add a bias to u.
        dropout: dropout on x before the memory (one mask per sequence, as in keras).
        recurrent_dropout: dropout on h_{t-1} before it feeds the memory.
        return_sequences: return every step's output, else only the last (valid) one.
        batch_first: x is ``(batch, time, features)``; else ``(time, batch, features)``.
        mode: "auto", "recurrent", "fused", "fft", "conv" or "final". "fused" (an ``nn.RNNCell`` hidden cell
            only) runs the whole cell as one autograd node: a persistent Triton kernel on CUDA, the same
            algorithm in torch ops elsewhere (see ``contime.ops.lmu_cell``).
        kernel_precision: the products of the Triton kernels on CUDA (the "fused" mode, and "fft" where a
            Toeplitz kernel replaces the FFT): "ieee" (float32), "tf32x3" (near float32), "tf32", or "mixed"
            (tf32 except for the fused memory's state products, which stay tf32x3). Measured at the psMNIST
            shape on an H100 (``contime bench --precision``): tf32 costs the Toeplitz memory ~8e-4 relative
            error, but compounds through the fused recurrence to 0.16 (outputs) and 0.35 (gradients); tf32x3
            keeps it at 2.5e-5 / 5.9e-5.
        conv_tol: the "conv" mode cuts the impulse response where it stays below this fraction of its peak.
        fused_algorithm: how the "fused" mode computes the cell. "state" carries the memory as a state (two
            barriers per step in the GPU kernels); "convolution" (memory_d == 1, no memory_to_memory) feeds h
            the memory as a convolution of past inputs with K_j = H_j W_m, so each step depends on the previous
            one through h alone (one barrier per step, O(T^2) work; sequences longer than 4,096 steps take the
            "state" algorithm, which computes the same); see ``contime.ops.lmu_cell.convolution``.

    Shapes:
        x: ``(batch, time, input_size)``; lengths: ``(batch,)`` ints in [1, time].
        dt (irregular sampling, optional): ``(batch, time)`` step lengths > 0 in the unit of theta; see ``forward``.
        y: ``(batch, time, output_size)``, or ``(batch, output_size)`` if not return_sequences.
        output_size is the hidden size, or ``memory_d * order`` without a hidden cell.
    """

    def __init__(self, input_size: int, memory_d: int, order: int, theta, hidden_cell: nn.Module | None = None, *,
                 hidden_to_memory: bool = False, memory_to_memory: bool = False, input_to_hidden: bool = False,
                 trainable_theta: bool = False, discretizer: str = "zoh", input_kernel: bool = True,
                 use_bias: bool = False, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 return_sequences: bool = True, batch_first: bool = True, mode: str = "auto",
                 conv_tol: float = 1e-10, kernel_precision: str = "ieee", fused_algorithm: str = "state"):
        super().__init__()
        self.input_size = _positive_int("input_size", input_size)
        self.memory_d = _positive_int("memory_d", memory_d)
        self.order = _positive_int("order", order)
        if discretizer not in DISCRETIZERS:
            raise ValueError(f"discretizer must be one of {DISCRETIZERS}, got {discretizer!r}")
        self.discretizer = discretizer
        self.hidden_kind = hidden_ops.cell_kind(hidden_cell)
        if self.hidden_kind == "none" and (hidden_to_memory or input_to_hidden):
            raise ValueError("hidden_to_memory and input_to_hidden need a hidden_cell; hidden_cell is None")
        if not input_kernel and input_size != memory_d:
            raise ValueError(f"input_kernel=False feeds x straight into the memory, so input_size ({input_size}) "
                             f"must equal memory_d ({memory_d})")
        self.hidden_to_memory = bool(hidden_to_memory)
        self.memory_to_memory = bool(memory_to_memory)
        self.input_to_hidden = bool(input_to_hidden)
        self.return_sequences = bool(return_sequences)
        self.batch_first = bool(batch_first)
        self.dropout = _probability("dropout", dropout)
        self.recurrent_dropout = _probability("recurrent_dropout", recurrent_dropout)
        # Settings checked by their setters (below), also when changed after construction.
        self.conv_tol = conv_tol
        self.kernel_precision = kernel_precision
        self.fused_algorithm = fused_algorithm

        self.theta = nn.Parameter(self._theta_tensor(theta), requires_grad=bool(trainable_theta))
        memory_size = self.memory_d * self.order
        hidden_in = memory_size + (input_size if self.input_to_hidden else 0)
        declared = None if hidden_cell is None else hidden_ops.declared_input_size(hidden_cell)
        if declared is not None and declared != hidden_in:
            fed = f"memory_d*order={memory_size}" + (f" + input_size={input_size}" if self.input_to_hidden else "")
            hint = ("; input_to_hidden=True would feed it x as well"
                    if not self.input_to_hidden and declared == memory_size + input_size else "")
            raise ValueError(f"hidden_cell takes {declared} input features, but the LMU feeds it {hidden_in} "
                             f"({fed}){hint}")
        self.hidden_cell = hidden_cell
        self.output_size = (memory_size if self.hidden_kind == "none"
                            else hidden_ops.cell_output_size(hidden_cell, self.hidden_kind, hidden_in))
        if self.output_size < 1:
            raise ValueError(f"hidden_cell must have at least one output unit, got {self.output_size}")

        self.input_kernel = nn.Parameter(torch.empty(input_size, memory_d)) if input_kernel else None
        self.hidden_kernel = nn.Parameter(torch.empty(self.output_size, memory_d)) if hidden_to_memory else None
        self.memory_kernel = nn.Parameter(torch.empty(memory_size, memory_d)) if memory_to_memory else None
        self.bias = nn.Parameter(torch.zeros(memory_d)) if use_bias else None
        self.reset_parameters()

        self.mode = mode
        self._system_cache: dict = {}

    # ------------------------------------------------------------------------------- checked settings
    mode = _Choice(MODES, "The execution mode asked for (see the class docstring); ``resolve_mode`` tells what "
                          "\"auto\" picks.", also="_check_mode_valid")
    kernel_precision = _Choice(KERNEL_PRECISIONS, "The Triton kernels' product precision on CUDA.")
    fused_algorithm = _Choice(FUSED_ALGORITHMS, "How the \"fused\" mode computes the cell.",
                              also="_check_fused_algorithm")

    def _check_mode_valid(self, mode: str) -> None:
        """An explicit mode must compute this configuration (which flags set after construction may change)."""
        if mode != "auto" and mode not in self.valid_modes():
            raise ValueError(f"mode={mode!r} is not valid for this configuration; valid modes: {self.valid_modes()}"
                             + self._why_not_parallel())

    def _check_fused_algorithm(self, value: str) -> None:
        if value == "convolution" and (self.memory_d != 1 or self.memory_to_memory):
            raise ValueError("fused_algorithm='convolution' needs memory_d == 1 and no memory_to_memory, got "
                             f"memory_d={self.memory_d}, memory_to_memory={self.memory_to_memory}")

    @property
    def conv_tol(self) -> float:
        """The "conv" mode's cut of the impulse response, a fraction of its peak in [0, 1)."""
        return self._conv_tol

    @conv_tol.setter
    def conv_tol(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"conv_tol must be a float, got {type(value).__name__}")
        if not 0.0 <= value < 1.0:  # NaN fails too; 1 or more would cut the response to nothing
            raise ValueError(f"conv_tol must be in [0, 1), got {value}")
        self._conv_tol = float(value)

    # ----------------------------------------------------------------------------------------- setup
    def _theta_tensor(self, theta) -> torch.Tensor:
        values = torch.as_tensor(theta, dtype=torch.float64).reshape(-1).clone()
        if values.numel() not in (1, self.memory_d):
            raise ValueError(f"theta must be a number or have memory_d={self.memory_d} values, got {values.numel()}")
        if not torch.all(torch.isfinite(values) & (values > 0)):
            raise ValueError(f"theta must be finite and > 0, got {values.tolist()}")
        return values.to(torch.get_default_dtype())

    def reset_parameters(self) -> None:
        """Xavier-uniform kernels and a zero bias."""
        for kernel in (self.input_kernel, self.hidden_kernel, self.memory_kernel):
            if kernel is not None:
                nn.init.xavier_uniform_(kernel)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _why_not_parallel(self) -> str:
        if self.hidden_to_memory or self.memory_to_memory:
            return " (hidden_to_memory or memory_to_memory makes the memory depend on its own past outputs)"
        if self.return_sequences:
            return " ('final' needs return_sequences=False)"
        return " ('final' needs a feedforward hidden cell or none)"

    def valid_modes(self) -> tuple[str, ...]:
        """The execution modes that compute this configuration exactly, fastest last."""
        modes = ["recurrent"]
        if type(self.hidden_cell) is nn.RNNCell:
            modes.append("fused")
        if not (self.hidden_to_memory or self.memory_to_memory):
            modes += ["conv", "fft"]
            if not self.return_sequences and self.hidden_kind != "recurrent":
                modes.append("final")
        return tuple(modes)

    def resolve_mode(self, device: torch.device | str | None = None, padded: bool = False) -> str:
        """The mode a forward call on ``device`` will use (``mode="auto"``: the fastest valid one, as measured).

        - "final" when valid (one product, no loop).
        - "fused" for an ``nn.RNNCell`` on CUDA with Triton: at the psMNIST shape on an H100 (``contime
          bench``), forward + backward took 21.7 ms against 23.4 ms for cuDNN's LSTM in the same run, and in
          an earlier run 78.6 ms for "fft"; with hidden_to_memory, 28.6 ms against 512 ms for the loop.
        - On the CPU, "fused" (its torch twin) where the memory feeds back (hidden/memory to memory) and the
          layer is small (memory and hidden sizes up to 128), where per-step overhead dominates: forward +
          backward 0.37x to 0.59x the loop's time (batch 32, 500 steps, one thread). At the psMNIST size (256
          and 212, 784 steps) the loop was faster (1.07 s against 1.19 s), so it runs there.
        - On the CPU without feedback, "fft" for an ``nn.RNNCell`` and an ``nn.LSTMCell`` (whose sequence is then
          one call of torch's LSTM: ``hidden.uses_torch_lstm``), and for an ``nn.GRUCell`` with at most
          CPU_FFT_MAX_GATES gate units (gates x hidden); the loop for larger ones and other recurrent cells.
          Forward + backward, "fft" over the loop, with THP_MEM_ALLOC_ENABLE=1 (``contime.host_memory``) and
          without, minimum of 5 to 10 calls, 2 threads (/tmp script, two rounds): RNNCell(212) at the psMNIST
          shape 0.37-0.60 (without: 0.87-1.04, and 1.14 in a training step of benchmarks/lmu_modes.py, about
          even); RNNCell(64), order 64, batch 32 x 500 steps 0.24-0.34; 8 x 4,000 steps 0.12-0.13;
          GRUCell(128) 0.70-0.83 and LSTMCell(128) 0.71-0.86 at batch 32 x 500;
          GRUCell(256) 0.93; but GRUCell(212) and LSTMCell(212) at the psMNIST shape 1.03-1.15 and 1.46 (one
          round, with the variable). Through torch's LSTM, the LSTMCells went to 0.23 and 0.58 (one round).
          With the GRU cell as one autograd node (``contime.ops.gru``; order 64, batch 32 x 500 steps unless
          said, minimum of 5, two runs): GRUCell(128) 0.73-0.84, padded 0.45-0.56; GRUCell(256) 0.64-0.96;
          GRUCell(64) on 16 padded series of 29 steps 0.59-0.69; GRUCell(212) at the psMNIST shape (order 256)
          1.22-1.54, so the limit of CPU_FFT_MAX_GATES stays.
        - Otherwise "fft".

        ``padded``: for a call with ``lengths``. torch's LSTM takes none, so an LSTM cell of more than
        CPU_FFT_MAX_GATES gate units then keeps the loop on the CPU (its folded loop was the 1.46 above).

        A call (``forward``) still takes the loop where the hidden cell has hooks or a transform is at work,
        whatever this says (``_needs_cell_calls``).
        """
        if self.mode != "auto":
            self._check_mode_valid(self.mode)  # flags such as return_sequences may have changed since
            return self.mode
        # "fused" has no padding masks: a call with lengths takes the next choice (see forward)
        return self._auto_mode(device, allow_fused=not padded, padded=padded)

    def _auto_mode(self, device, allow_fused: bool, padded: bool = False) -> str:
        modes = [m for m in self.valid_modes() if allow_fused or m != "fused"]
        on_cpu = device is None or torch.device(device).type == "cpu"
        feedback = self.hidden_to_memory or self.memory_to_memory
        small = max(self.memory_d * self.order, self.output_size) <= CPU_FUSED_MAX_WIDTH
        if "final" in modes:
            return "final"
        if "fused" in modes and (on_cpu and feedback and small or not on_cpu and triton_available()):
            return "fused"
        if "fft" in modes and not (on_cpu and self.hidden_kind == "recurrent"
                                   and not self._fft_beats_loop_on_cpu(padded)):
            return "fft"
        return "recurrent"

    def _fft_beats_loop_on_cpu(self, padded: bool) -> bool:
        """For a recurrent hidden cell: whether "fft" was measured faster than the loop on the CPU (see
        ``resolve_mode``): an ``nn.RNNCell`` (one autograd node for the recurrence), an LSTM cell that runs as
        torch's LSTM (``hidden.uses_torch_lstm``), or a GRU or padded LSTM cell (whose projection "fft" folds)
        with at most CPU_FFT_MAX_GATES gate units."""
        cell = self.hidden_cell
        if type(cell) is nn.RNNCell or hidden_ops.uses_torch_lstm(cell, "cpu", padded):
            return True
        return type(cell) in (nn.GRUCell, nn.LSTMCell) and cell.weight_ih.shape[0] <= CPU_FFT_MAX_GATES

    def _reads_cell_weights(self, mode: str) -> bool:
        """Whether ``mode`` computes the hidden cell from its weights instead of calling it: "fused", and "fft"
        or "conv" with torch's RNN cells (and "fft" with a leading ``nn.Linear``), whose products are batched
        over all steps. The cell's hooks do not run there, and its ops have no forward-mode AD."""
        if mode == "fused":
            return True
        if mode in ("fft", "conv") and type(self.hidden_cell) in hidden_ops.TORCH_CELLS:
            return True
        return mode == "fft" and _leading_linear(self.hidden_cell) is not None

    def _needs_cell_calls(self, mode: str, x: torch.Tensor) -> bool:
        """Whether this call must call the hidden cell step by step rather than run ``mode``: a module that
        ``mode`` computes from its weights has forward hooks or pre-hooks (old-style weight_norm, pruning,
        probes), or global ones are registered, or forward-mode AD or a torch.func transform is at work (the
        batched paths' custom autograd nodes have no jvp or vmap rule). ``mode="auto"`` then takes the loop.
        Never where ``mode`` calls the cell anyway."""
        if not self._reads_cell_weights(mode):
            return False
        hooks = (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
                 or self._bypassed_modules_have_hooks(mode))
        return bool(hooks) or under_transform(x, *self.hidden_cell.parameters())

    def _bypassed_modules_have_hooks(self, mode: str) -> bool:
        """Whether a module that ``mode`` computes from its weights, without calling it, has forward hooks or
        pre-hooks of its own: the whole cell for torch's cells; for a feedforward part that starts with
        ``nn.Linear`` (folded in "fft"), that Linear and the ``nn.Sequential`` around it, since the modules after
        it are still called. For a ``mode`` that reads the cell's weights (``_reads_cell_weights``): both callers
        ask that first."""
        cell = self.hidden_cell
        leading = _leading_linear(cell) if mode == "fft" else None  # None for torch's cells
        modules = {cell, leading[0]} if leading is not None else set(cell.modules())
        return any(m._forward_hooks or m._forward_pre_hooks for m in modules)

    def _refuse_skipping_the_cell(self, mode: str, x: torch.Tensor) -> None:
        """Where ``mode="auto"`` would call the cell step by step (``_needs_cell_calls``), an explicit mode that
        reads the cell's weights refuses, naming the way out: the cell's own hooks would be skipped without a word
        (an old-style weight_norm would then train on a stale weight), and its autograd nodes have no
        forward-mode AD or vmap rule (torch's message would speak of autograd.Function internals). Global hooks,
        which tools register for every module, are left to them."""
        if self.mode == "auto" or not self._reads_cell_weights(mode):
            return
        if self._bypassed_modules_have_hooks(mode):
            raise ValueError(f"mode={mode!r} computes hidden_cell from its weights without calling it, so the "
                             f"forward hooks on hidden_cell (or a module in it) would not run; use "
                             f"mode='recurrent', or mode='auto', which calls a hooked cell step by step")
        if under_transform(x, *self.hidden_cell.parameters()):
            raise ValueError(f"mode={mode!r} has no forward-mode AD or torch.func (vmap, jvp, jacfwd) rule for "
                             f"hidden_cell; use mode='recurrent', or mode='auto', which takes the loop there")

    def _fused_unsupported(self, lengths) -> str | None:
        """Why the "fused" mode cannot run this call, or None: it has no padding masks and no per-sequence
        recurrent dropout."""
        if lengths is not None:
            return "lengths (padded batches)"
        if self.training and self.recurrent_dropout > 0 and self.hidden_to_memory:
            return "recurrent_dropout in training"
        return None

    def discretized(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A_bar ``(k, n, n)`` and B_bar ``(k, n)``, k = 1 or memory_d; built in float64, cast to ``dtype``."""
        A_bar, B_bar = discretize(self.order, self.theta.to(torch.float64), 1.0, self.discretizer)
        dtype = dtype or self.theta.dtype
        return A_bar.to(dtype), B_bar.to(dtype)

    def _system(self, dtype: torch.dtype, length: int | None, time_scale: float = 1.0,
                matrix_dtype: torch.dtype | None = None):
        """(A_bar, B_bar, H) for this call; H ``(k, length, n)`` is None when ``length`` is None.

        ``time_scale`` c != 1 discretizes with theta / c: the system of a series whose every step lasts c.
        ``matrix_dtype``: A_bar and B_bar in this dtype rather than ``dtype`` (float64 where an op raises A_bar
        to high powers itself).

        Reused across calls while theta is unchanged and no gradient to theta is wanted: rebuilding the
        matrix exponential and the impulse response costs far more than a short forward pass.
        """
        # Never cache while a gradient to theta is wanted; the key holds everything the matrices depend on.
        # (theta made under inference mode has no version counter to key on.)
        cacheable = not (torch.compiler.is_compiling() or self.theta.is_inference()
                         or (torch.is_grad_enabled() and self.theta.requires_grad))
        matrix_dtype = matrix_dtype or dtype
        key = (self.theta._version, self.theta.data_ptr(), self.theta.device, dtype, matrix_dtype, length,
               self.order, self.discretizer, time_scale) if cacheable else None
        if key is not None and key in self._system_cache:
            return self._system_cache[key]
        if key is not None and torch.is_inference_mode_enabled():
            # Built as ordinary tensors, so that the cache also serves later calls that save them for a
            # backward pass (inference tensors cannot be saved). Rebuilding at every call made step() under
            # inference mode 56x slower than under no_grad (order 128, this CPU, a review's /tmp script).
            with torch.inference_mode(False), torch.no_grad():
                return self._system(dtype, length, time_scale, matrix_dtype)
        if time_scale == 1.0:
            A64, B64 = self.discretized(torch.float64)
        else:
            A64, B64 = discretize(self.order, self.theta.to(torch.float64) / time_scale, 1.0, self.discretizer)
        A_bar, B_bar = A64.to(matrix_dtype), B64.to(matrix_dtype)
        # The power series in float64, cast once: float32 powers drift over long sequences.
        H = None if length is None else impulse_response(A64, B64, length).to(dtype)
        if key is not None:
            if len(self._system_cache) >= 4:
                self._system_cache.clear()
            self._system_cache[key] = (A_bar, B_bar, H)
        return A_bar, B_bar, H

    def _step_system(self, dt: torch.Tensor, dtype: torch.dtype):
        """Per-sample matrices for step lengths ``dt`` (any shape): built in float64 for the distinct values
        only, cast once. Returns A_bar ``(U, k, n, n)``, B_bar ``(U, k, n)`` and the index ``dt.shape``."""
        A64, B64, index = discretize_steps(self.order, self.theta.to(torch.float64), dt, self.discretizer)
        return A64.to(dtype), B64.to(dtype), index

    # ------------------------------------------------------------------------------------ validation
    def _check_x(self, x: torch.Tensor, name: str = "x", ndim: int = 3) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
        if x.ndim != ndim:
            layout = "(batch, time, input_size)" if self.batch_first else "(time, batch, input_size)"
            expected = layout if ndim == 3 else "(batch, input_size)"
            raise ValueError(f"{name} must be {ndim}-D {expected}, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name} must have input_size={self.input_size} features in its last dimension, "
                             f"got {x.shape[-1]}")
        if x.numel() == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
        self._check_dtype(x, name)
        # Its values (NaN, Inf) are checked with the state's, in one read: _check_state.

    def _check_dtype(self, x: torch.Tensor, name: str) -> None:
        """x must come in the dtype of the layer's weights (theta aside: it is read in float64), except under
        autocast, which casts each product itself. Otherwise the first product fails deep inside torch."""
        if torch.is_autocast_enabled(x.device.type):
            return
        weights = self._first_weights()
        if len({w.dtype for _, w in weights}) > 1:
            listed = ", ".join(f"{part} {str(w.dtype).replace('torch.', '')}" for part, w in weights)
            raise TypeError(f"the layer's weights come in mixed dtypes ({listed}): convert the whole layer, "
                            f"lmu.to(dtype)")
        if weights and x.dtype != weights[0][1].dtype:
            raise TypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}, but the layer's weights are "
                            f"{str(weights[0][1].dtype).replace('torch.', '')}: convert one to the other "
                            f"(x.to(dtype) or lmu.to(dtype)), or use torch.autocast")

    def _first_weights(self) -> list[tuple[str, torch.Tensor]]:
        """The weights that x (or the memory, in x's dtype) meets first: the input kernel, and the hidden cell's
        first floating-point parameter; none for a bare memory (its theta is read in float64 whatever x is)."""
        weights = [] if self.input_kernel is None else [("input_kernel", self.input_kernel)]
        if self.hidden_cell is not None:
            first = next((p for p in self.hidden_cell.parameters() if p.is_floating_point()), None)
            weights += [] if first is None else [("hidden_cell", first)]
        return weights

    @staticmethod
    def _check_lengths(lengths, batch: int, time: int, device) -> torch.Tensor | None:
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths, device=device)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.dtype.is_complex:
            raise TypeError(f"lengths must hold integers, got {lengths.dtype}")
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape (batch,)=({batch},), got {tuple(lengths.shape)}")
        if can_read_values(lengths) and not bool(((lengths >= 1) & (lengths <= time)).all()):
            raise ValueError(f"lengths must lie in [1, time={time}], got {lengths.tolist()}")
        return lengths.long()

    @staticmethod
    def _check_dt_shape(dt, shape: tuple, layout: str) -> None:
        """dt must be a float tensor of exactly ``shape`` (named ``layout`` in the message): never broadcast."""
        if not torch.is_tensor(dt):
            raise TypeError(f"dt must be a torch.Tensor, got {type(dt).__name__}")
        if not torch.is_floating_point(dt):
            raise TypeError(f"dt must have a floating-point dtype, got {dt.dtype}")
        if tuple(dt.shape) != tuple(shape):
            raise ValueError(f"dt must have shape {layout}={tuple(shape)}, one step length per sample, "
                             f"got {tuple(dt.shape)}")

    @staticmethod
    def _check_dt_values(dt, like: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor | None:
        """dt (already of the right shape) must be finite and > 0 where ``valid`` (bool, dt's shape) is True.

        The other entries (padding) are replaced by the first step of their sequence, so they add no
        distinct value to discretize. Returns dt on ``like``'s device in its own float dtype, or None.
        """
        if dt is None:
            return None
        dt = dt.to(like.device)
        if valid is not None:
            dt = torch.where(valid, dt, dt[:, :1])
        if can_read_values(dt) and not bool(torch.all(torch.isfinite(dt) & (dt > 0))):
            raise ValueError("dt must be finite and > 0 at every (unpadded) step")
        return dt

    @staticmethod
    def _constant_step(dt: torch.Tensor) -> float | None:
        """The common value if every entry of dt is the same (and dt needs no gradient), else None."""
        if dt.requires_grad and torch.is_grad_enabled():
            return None  # the uniform path would not pass a gradient back to each entry of dt
        first = dt.reshape(-1)[0]
        return float(first) if bool((dt == first).all()) else None

    def _check_state(self, state, batch: int, like: torch.Tensor, x_name: str = "x") -> LMUState:
        """The state to start from (zeros for None), after checking it, and the values of it and of x (``like``,
        named ``x_name``): NaN or Inf in either is refused, skipped where values cannot be read (while
        torch.compile traces, under vmap, during CUDA graph capture)."""
        memory_size = self.memory_d * self.order
        if state is None:
            _check_finite([(x_name, like)])
            return LMUState(like.new_zeros(batch, memory_size), None)
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError("state must be an LMUState (memory, hidden) or a 2-tuple like it, "
                            f"got {type(state).__name__}" + (f" of {len(state)}" if isinstance(state, tuple) else ""))
        memory, hidden = state
        _check_state_tensor("state.memory", memory, (batch, memory_size), "(batch, memory_d*order)", like)
        hidden_parts = self._hidden_state_parts(hidden)
        for name, part in hidden_parts:
            _check_state_tensor(name, part, (batch, self.output_size), "(batch, hidden)", like)
        _check_finite([(x_name, like), ("state.memory", memory)] + hidden_parts)
        return LMUState(memory.to(like.dtype), hidden)

    def _hidden_state_parts(self, hidden) -> list[tuple[str, torch.Tensor]]:
        """The tensors of ``state.hidden`` with their names, after checking its structure: None without a hidden
        cell; (h, c) for an ``nn.LSTMCell``; one tensor for torch's other cells and for a feedforward part (its
        last output); a tensor or a tuple of tensors (or None) for a recurrent cell of your own, each tensor
        ``(batch, hidden)``. None (start from zeros) wherever there is a hidden cell."""
        if hidden is None:
            return []
        if self.hidden_kind == "none":
            raise ValueError(f"state.hidden must be None when there is no hidden_cell, got {type(hidden).__name__}")
        if isinstance(self.hidden_cell, nn.LSTMCell):
            if not isinstance(hidden, tuple) or len(hidden) != 2:
                got = f"a tuple of {len(hidden)}" if isinstance(hidden, tuple) else type(hidden).__name__
                raise TypeError(f"state.hidden of an nn.LSTMCell must be a tuple (h, c), got {got}")
            return [("state.hidden[0] (h)", hidden[0]), ("state.hidden[1] (c)", hidden[1])]
        one_tensor = self.hidden_kind == "feedforward" or type(self.hidden_cell) in hidden_ops.TORCH_CELLS
        if isinstance(hidden, tuple) and one_tensor:
            raise TypeError("state.hidden of this hidden_cell must be one tensor (batch, hidden), got a tuple")
        if isinstance(hidden, tuple):  # a cell of your own: its None parts are its business
            return [(f"state.hidden[{i}]", part) for i, part in enumerate(hidden) if part is not None]
        return [("state.hidden", hidden)]

    # --------------------------------------------------------------------------------------- forward
    def _dropout_masks(self, batch: int, like: torch.Tensor):
        """Masks drawn once per call (shared across steps), so every mode sees the same ones."""
        input_mask = recurrent_mask = None
        if self.training and self.dropout > 0:
            input_mask = nn.functional.dropout(like.new_ones(batch, 1, self.input_size), self.dropout)
        if self.training and self.recurrent_dropout > 0 and self.hidden_to_memory:
            recurrent_mask = nn.functional.dropout(like.new_ones(batch, self.output_size), self.recurrent_dropout)
        return input_mask, recurrent_mask

    def _input_drive(self, x: torch.Tensor, input_mask) -> torch.Tensor:
        """The part of u that comes from x (and the bias): ``(batch, time, memory_d)``."""
        if input_mask is not None:
            x = x * input_mask
        u = x @ self.input_kernel if self.input_kernel is not None else x
        return u + self.bias if self.bias is not None else u

    def _hidden_input(self, memory: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Input to the hidden cell: ``(..., memory_d*order [+ input_size])``."""
        return torch.cat([memory, x], dim=-1) if self.input_to_hidden else memory

    def _cell_step(self, x_t, u_x_t, state: LMUState, A_bar, B_bar, recurrent_mask):
        """One step of the full cell. x_t: (batch, input_size); u_x_t: (batch, memory_d). Returns (y_t, state)."""
        memory, hidden = state
        u = u_x_t
        if self.hidden_to_memory:
            h_prev = hidden_ops.hidden_of(hidden) if hidden is not None else memory.new_zeros(
                memory.shape[0], self.output_size)
            if recurrent_mask is not None:
                h_prev = h_prev * recurrent_mask
            u = u + h_prev @ self.hidden_kernel
        if self.memory_to_memory:
            u = u + memory @ self.memory_kernel
        m = memory.reshape(-1, self.memory_d, self.order)
        if A_bar.ndim == 4:  # a step length per sequence: A_bar (batch, k, n, n), B_bar (batch, k, n)
            m = apply_step_matrices(A_bar, m) + u[..., None] * B_bar
        else:
            m = apply_state_matrix(A_bar, m) + u[..., None] * B_bar
        memory = m.reshape(-1, self.memory_d * self.order)
        if self.hidden_kind == "none":
            return memory, LMUState(memory, None)
        inp = self._hidden_input(memory, x_t)
        if self.hidden_kind == "feedforward":
            h = self.hidden_cell(inp)
            return h, LMUState(memory, h)
        hidden = self.hidden_cell(inp, hidden)
        return hidden_ops.hidden_of(hidden), LMUState(memory, hidden)

    def _forward_recurrent(self, x, u_x, state, A_bar, B_bar, lengths, recurrent_mask):
        """The loop. A_bar, B_bar: ``(k, n, n)``, ``(k, n)`` for every step, or (irregular steps) A_bar a
        ``StepMatrices`` giving each step's ``(batch, k, n, n)``, ``(batch, k, n)``, and B_bar None."""
        per_step = isinstance(A_bar, StepMatrices)
        outputs = []
        # unbind, not x[:, t]: one indexing per step costs an O(time) zero gradient per step in the backward pass.
        for t, (x_t, u_x_t) in enumerate(zip(x.unbind(1), u_x.unbind(1))):
            A_t, B_t = A_bar[t] if per_step else (A_bar, B_bar)
            y_t, new = self._cell_step(x_t, u_x_t, state, A_t, B_t, recurrent_mask)
            if lengths is not None and t > 0:
                valid = (t < lengths)[:, None]
                new = LMUState(hidden_ops.masked_update(valid, new.memory, state.memory),
                               hidden_ops.masked_update(valid, new.hidden, state.hidden))
            state = new
            outputs.append(y_t)
        return torch.stack(outputs, dim=1), state

    def _forward_parallel(self, mode, x, u_x, state, A_bar, B_bar, H, lengths, starts_at_zero):
        batch, time, _ = x.shape
        m0 = None if starts_at_zero else state.memory.reshape(batch, self.memory_d, self.order)
        if mode == "final":
            memory = linear_memory_final(u_x, A_bar, B_bar, m0, lengths, impulse=H).reshape(batch, -1)
            if self.hidden_kind == "none":
                return memory, LMUState(memory, None)
            x_last = x[:, -1] if lengths is None else x[torch.arange(batch, device=x.device), lengths - 1]
            h = self.hidden_cell(self._hidden_input(memory, x_last))
            return h, LMUState(memory, h)
        # Folding the cell's input projection into the convolution needs the cell as a loop; torch's own
        # LSTM takes the memory itself and is the faster of the two where it runs (hidden.uses_torch_lstm).
        if (mode == "fft" and type(self.hidden_cell) in hidden_ops.TORCH_CELLS
                and not hidden_ops.uses_torch_lstm(self.hidden_cell, x.device, lengths is not None)):
            return self._forward_fft_folded(x, u_x, state, A_bar, B_bar, H, m0, lengths)
        if mode == "fft" and _leading_linear(self.hidden_cell) is not None:
            return self._forward_fft_folded_linear(x, u_x, state, A_bar, B_bar, H, m0, lengths)
        if mode == "fft":
            memories = memory_all_steps(u_x, A_bar, B_bar, m0, H, self.kernel_precision)
        else:
            memories = linear_memory_conv(u_x, A_bar, B_bar, m0, self.conv_tol, impulse=H)
        return self._outputs_of_memories(x, memories, state, lengths)

    def _outputs_of_memories(self, x, memories, state, lengths):
        """Outputs and final state from the memory of every step, ``(batch, time, memory_d, order)``."""
        batch, time, _ = x.shape
        memories = memories.reshape(batch, time, -1)  # (batch, time, memory_d*order)
        last = (slice(None), -1) if lengths is None else (torch.arange(batch, device=x.device), lengths - 1)
        final_memory = memories[last]
        if self.hidden_kind == "none":
            return memories, LMUState(final_memory, None)
        inputs = self._hidden_input(memories, x)
        if self.hidden_kind == "feedforward":
            h = hidden_ops.apply_feedforward(self.hidden_cell, inputs)
            return h, LMUState(final_memory, h[last])
        h, hidden = hidden_ops.recurrent_sequence(self.hidden_cell, inputs, state.hidden, lengths)
        return h, LMUState(final_memory, hidden)

    def _forward_fft_folded(self, x, u_x, state, A_bar, B_bar, H, m0, lengths):
        """fft mode for torch's RNN cells: the cell's input projection is folded into the convolution,
        so the (batch, time, memory_d*order) memory is never formed; only its last state is."""
        batch = x.shape[0]
        cell = self.hidden_cell
        memory_size = self.memory_d * self.order
        weight_memory = cell.weight_ih[:, :memory_size].reshape(-1, self.memory_d, self.order)
        # Time-major: the cell's loop then reads one contiguous (batch, gates) block per step. The copy into
        # that layout is a fresh tensor, so W_x x_t and the bias are accumulated into it in place: one pass
        # each over the (time, batch, gates) block instead of a new block per term.
        projected = time_major(causal_projection(u_x, A_bar, B_bar, weight_memory, m0, H, self.kernel_precision))
        if self.input_to_hidden:
            # On the tensor itself, batched over time: an in-place product on a flattened view would make
            # autograd copy the whole gradient in the backward pass (CopySlices).
            x_steps = x.transpose(0, 1).to(projected.dtype)  # (time, batch, input)
            weight_x = cell.weight_ih[:, memory_size:].t().to(projected.dtype)  # (input, gates)
            projected.baddbmm_(x_steps, weight_x.expand(x_steps.shape[0], -1, -1))
        bias = hidden_ops.input_bias(cell)
        if bias is not None:
            projected.add_(bias)
        h, hidden = hidden_ops.torch_cell_sequence(cell, projected, state.hidden, lengths)
        final_memory = linear_memory_final(u_x, A_bar, B_bar, m0, lengths, impulse=H).reshape(batch, -1)
        return h, LMUState(final_memory, hidden)

    def _forward_fft_folded_linear(self, x, u_x, state, A_bar, B_bar, H, m0, lengths):
        """fft mode for a feedforward hidden part that starts with ``nn.Linear``: its weight is folded into the
        convolution (W m_t = sum_s (W H_s) u_{t-s}), so the (batch, time, memory_d*order) memory is never
        written; only the linear layer's outputs are, then the rest of the hidden part runs on them."""
        batch = x.shape[0]
        linear, rest = _leading_linear(self.hidden_cell)
        memory_size = self.memory_d * self.order
        weight_memory = linear.weight[:, :memory_size].reshape(-1, self.memory_d, self.order)
        out = causal_projection(u_x, A_bar, B_bar, weight_memory, m0, H, self.kernel_precision)  # (B, T, G)
        if self.input_to_hidden:
            out = out + x @ linear.weight[:, memory_size:].t()
        if linear.bias is not None:
            out = out + linear.bias
        h = out if rest is None else hidden_ops.apply_feedforward(rest, out)
        last = (slice(None), -1) if lengths is None else (torch.arange(batch, device=x.device), lengths - 1)
        final_memory = linear_memory_final(u_x, A_bar, B_bar, m0, lengths, impulse=H).reshape(batch, -1)
        return h, LMUState(final_memory, h[last])

    def _uses_convolution(self, time: int) -> bool:
        """Whether the "fused" mode runs the convolution algorithm for ``time`` steps: as asked, up to its
        O(T^2) limit (``convolution.MAX_TIME``); the state algorithm computes the same beyond it."""
        return self.fused_algorithm == "convolution" and time <= convolution_algorithm.MAX_TIME

    def _forward_fused(self, x, u_x, state, A_bar, B_bar, H, starts_at_zero):
        """The "fused" mode: the whole cell as one autograd node (``contime.ops.lmu_cell``), time-major. H: the
        impulse response ``(1, time, n)`` where the convolution algorithm runs (``_uses_convolution``), else
        None (the state algorithm)."""
        cell = self.hidden_cell
        D, n = self.memory_d, self.order
        N = D * n
        eye = torch.eye(D, dtype=A_bar.dtype, device=A_bar.device)
        if A_bar.shape[0] == 1:  # one A_bar for all dimensions: block-diagonal copies
            A_T = A_bar[0].t() if D == 1 else torch.kron(eye, A_bar[0].t().contiguous())
            Bm = torch.kron(eye, B_bar[0][None])  # (D, N): row d holds B_bar in block d
        else:
            A_T = torch.block_diag(*A_bar.transpose(1, 2).unbind(0))
            Bm = torch.block_diag(*B_bar[:, None].unbind(0))
        xs = x.transpose(0, 1)  # (time, batch, input_size)
        # What reaches the pre-activation from x and the biases, (time, batch, hidden): without input_to_hidden
        # a broadcast view of the biases (nothing of that size is written on the CPU).
        bias = x.new_zeros(self.output_size)
        for b in (cell.bias_ih, cell.bias_hh):
            if b is not None:
                bias = bias + b
        if self.input_to_hidden:
            xh = torch.addmm(bias, xs.reshape(-1, self.input_size), cell.weight_ih[:, N:].t()).view(
                *xs.shape[:2], self.output_size)
        else:
            xh = bias.expand(*xs.shape[:2], self.output_size)
        h0 = state.hidden if state.hidden is not None else x.new_zeros(x.shape[0], self.output_size)
        args = [u_x.transpose(0, 1), xh, A_T, Bm, self.hidden_kernel, self.memory_kernel, cell.weight_ih[:, :N].t(),
                cell.weight_hh.t(), state.memory, h0]
        # Under autocast the products above come out in a lower precision than the weights: the recurrence
        # itself runs in the widest dtype among its operands (float32 for float32 weights), as one node.
        dtype = cell.weight_hh.dtype
        for tensor in args:
            if tensor is not None:
                dtype = torch.promote_types(dtype, tensor.dtype)
        args = [t if t is None else t.to(dtype) for t in args]
        relu = cell.nonlinearity == "relu"
        if H is not None:
            ux, xh, _, _, E_h, _, W_m, W_h, m0, h0 = args
            m0 = None if starts_at_zero else m0[:, None]  # (batch, 1, n)
            A_bar, B_bar = A_bar.to(dtype), B_bar.to(dtype)
            with torch.autocast(x.device.type, enabled=False):
                if m0 is not None:  # what m0 contributes to every step's m_t W_m, added to the input drive
                    xh = xh + (zero_input_response(A_bar, m0, ux.shape[0])[:, :, 0] @ W_m).transpose(0, 1)
                hs, us = lmu_cell_convolution(ux, xh, H[0].to(dtype), E_h, W_m, W_h, h0, relu=relu,
                                              backend="auto", precision=self.kernel_precision)
                memory = linear_memory_final(us.transpose(0, 1), A_bar, B_bar, m0, impulse=H.to(dtype))
            return hs.transpose(0, 1), LMUState(memory.reshape(memory.shape[0], -1), hs[-1])
        with torch.autocast(x.device.type, enabled=False):
            hs, ms = lmu_cell_sequence(*args, relu=relu, backend="auto", precision=self.kernel_precision)
        return hs.transpose(0, 1), LMUState(ms[-1], hs[-1])

    def _forward_varying(self, x, u_x, state, dt, lengths, recurrent_mask, starts_at_zero):
        """Irregular steps: dt ``(batch, time)``, each sample with its own A_bar(dt), B_bar(dt).

        A memory fed only by the input is computed first by its own loop (a batched matrix-vector product
        per step), then the hidden part over all steps at once as in the parallel modes; with
        hidden_to_memory or memory_to_memory the whole cell runs step by step.
        """
        batch = x.shape[0]
        A_u, B_u, index = self._step_system(dt, x.dtype)
        if self.hidden_to_memory or self.memory_to_memory:
            return self._forward_recurrent(x, u_x, state, StepMatrices(A_u, B_u, index), None, lengths,
                                           recurrent_mask)
        m0 = None if starts_at_zero else state.memory.reshape(batch, self.memory_d, self.order)
        memories = linear_memory_varying(u_x, A_u, B_u, index, m0)
        return self._outputs_of_memories(x, memories, state, lengths)

    def forward(self, x: torch.Tensor, state: LMUState | tuple | None = None,
                lengths: torch.Tensor | None = None, dt: torch.Tensor | None = None) -> tuple[torch.Tensor, LMUState]:
        """Run the LMU over a sequence.

        Args:
            x: ``(batch, time, input_size)`` (``(time, batch, input_size)`` if not batch_first).
            state: an ``LMUState`` from a previous call, to continue a sequence; None starts from zeros.
            lengths: ``(batch,)`` valid steps per sequence for a padded batch. Padding never reaches the
                state, and outputs at padded steps are zero.
            dt: ``(batch, time)`` (``(time, batch)`` if not batch_first), finite floats > 0: the time elapsed
                before each sample, in the unit of theta (dt[:, 0]: from the state to the first sample).
                Sample t's input is held over that interval. None means every step lasts 1 (the uniform
                LMU). Entries past ``lengths`` are ignored. If every entry is the same c, the uniform
                system with theta / c runs in the chosen mode (exactly the call without dt when c == 1);
                otherwise a loop with per-sample matrices runs, whatever ``mode`` says. dt may require
                grad: then it always takes that loop, each entry getting its own gradient.

        Returns:
            y: ``(batch, time, output_size)``, or ``(batch, output_size)`` if not return_sequences
               (the output at each sequence's last valid step).
            state: the ``LMUState`` after each sequence's last valid step.
        """
        self._check_x(x)
        _refuse_dt_under_vmap(dt)
        if dt is not None:  # shape checked as given, before the time-major layout is turned batch-first
            self._check_dt_shape(dt, tuple(x.shape[:2]), "(batch, time)" if self.batch_first else "(time, batch)")
        if not self.batch_first:
            x = x.transpose(0, 1)
            dt = None if dt is None else dt.transpose(0, 1)
        batch, time, _ = x.shape
        lengths = self._check_lengths(lengths, batch, time, x.device)
        valid = None if lengths is None else torch.arange(time, device=x.device)[None, :] < lengths[:, None]
        dt = self._check_dt_values(dt, x, valid)
        time_scale = 1.0 if dt is None else self._constant_step(dt)
        starts_at_zero = state is None
        state = self._check_state(state, batch, x)
        mode = "varying" if time_scale is None else self.resolve_mode(x.device, padded=lengths is not None)
        if self.mode == "auto" and self._needs_cell_calls(mode, x):
            mode = "recurrent"
        self._refuse_skipping_the_cell(mode, x)
        if mode == "fused" and self._fused_unsupported(lengths):
            if self.mode == "fused":
                raise ValueError(f"mode='fused' does not support {self._fused_unsupported(lengths)}; "
                                 f"use mode='recurrent' or 'auto'")
            mode = self._auto_mode(x.device, allow_fused=False)
        if mode != "varying":  # uniform steps (of length time_scale): the LMU's own modes
            # "final" streams sequences longer than FINAL_CHUNK: H for one chunk only, not the whole length.
            convolution = mode == "fused" and self._uses_convolution(time)
            length = (None if mode == "recurrent" or mode == "fused" and not convolution  # loops need no H
                      else min(time, FINAL_CHUNK) if mode == "final" else time)
            # Streaming raises A_bar to the chunk length: from the float64 matrices, not their cast (float32,
            # order 64, theta 8,000, 20,000 steps: 1.6e-5 relative error from the cast, 4.6e-7 without it).
            streams = mode == "final" and time > FINAL_CHUNK
            # The fft mode's memory may be the chunk scan, which raises A_bar to powers up to its chunk length:
            # from the float64 matrices too (order 128, theta 5,000, 5,000 steps: 5.4e-6 relative error with
            # the cast, 3.8e-7 without; every other consumer there reads A_bar in float64 anyway).
            wide = streams or mode == "fft"
            A_bar, B_bar, H = self._system(x.dtype, length, time_scale, torch.float64 if wide else None)
        input_mask, recurrent_mask = self._dropout_masks(batch, x)
        u_x = self._input_drive(x, input_mask)
        step_is_valid = None
        if lengths is not None:
            step_is_valid = (torch.arange(time, device=x.device)[None, :] < lengths[:, None])[..., None]
            # Zeroed, not just ignored: in an FFT, padding would otherwise leak in at rounding level.
            u_x = u_x * step_is_valid.to(u_x.dtype)

        if mode == "varying":
            y, state = self._forward_varying(x, u_x, state, dt, lengths, recurrent_mask, starts_at_zero)
        elif mode == "recurrent":
            y, state = self._forward_recurrent(x, u_x, state, A_bar, B_bar, lengths, recurrent_mask)
        elif mode == "fused":
            y, state = self._forward_fused(x, u_x, state, A_bar, B_bar, H, starts_at_zero)
        else:
            y, state = self._forward_parallel(mode, x, u_x, state, A_bar, B_bar, H, lengths, starts_at_zero)
        if mode != "final":  # "final" already returns the last step only
            if lengths is not None:
                y = y * step_is_valid.to(y.dtype)
            if not self.return_sequences:
                y = y[:, -1] if lengths is None else y[torch.arange(batch, device=x.device), lengths - 1]
        if self.return_sequences and not self.batch_first:
            y = y.transpose(0, 1)
        return y, state

    def step(self, x_t: torch.Tensor, state: LMUState | tuple | None = None,
             dt: torch.Tensor | None = None) -> tuple[torch.Tensor, LMUState]:
        """Advance one step, for streaming: x_t ``(batch, input_size)`` -> y_t ``(batch, output_size)``, state.

        Equal to ``forward`` on the sequence, one sample at a time (in eval mode: in training, each call draws
        its own dropout masks, where ``forward`` draws one per sequence). ``dt`` ``(batch,)``: the time since
        each sequence's previous sample, as in ``forward``; None means 1.
        """
        self._check_x(x_t, "x_t", ndim=2)
        batch = x_t.shape[0]
        _refuse_dt_under_vmap(dt)
        if dt is not None:
            self._check_dt_shape(dt, (batch,), "(batch,)")
        dt = self._check_dt_values(dt, x_t)
        time_scale = 1.0 if dt is None else self._constant_step(dt)
        state = self._check_state(state, batch, x_t, "x_t")
        if time_scale is None:
            A_u, B_u, index = self._step_system(dt, x_t.dtype)
            A_bar, B_bar = A_u[index], B_u[index]  # (batch, k, n, n), (batch, k, n)
        else:
            A_bar, B_bar, _ = self._system(x_t.dtype, None, time_scale)
        input_mask, recurrent_mask = self._dropout_masks(x_t.shape[0], x_t)
        u_x = self._input_drive(x_t[:, None], input_mask)[:, 0]
        return self._cell_step(x_t, u_x, state, A_bar, B_bar, recurrent_mask)

    def __setstate__(self, state):
        """Unpickle, also an LMU pickled before ``mode`` and its siblings became checked properties (their
        values were then plain attributes)."""
        for name in ("mode", "kernel_precision", "fused_algorithm", "conv_tol"):
            if name in state:
                state["_" + name] = state.pop(name)
        super().__setstate__(state)

    def __getstate__(self):
        """Pickled (torch.save, copy.deepcopy, joblib) without the system cache: it is rebuilt on demand, and
        its impulse responses can outweigh the parameters."""
        state = dict(super().__getstate__())
        state["_system_cache"] = {}
        return state

    def extra_repr(self) -> str:
        theta = self.theta.detach().cpu().tolist()
        return (f"input_size={self.input_size}, memory_d={self.memory_d}, order={self.order}, "
                f"theta={theta[0] if len(theta) == 1 else theta}, hidden={self.hidden_kind}, "
                f"mode={self.mode!r}, discretizer={self.discretizer!r}")
