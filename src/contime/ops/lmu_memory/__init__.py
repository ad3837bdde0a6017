"""The LMU's linear memory m_t = A_bar m_{t-1} + B_bar u_t, computed several ways.

All functions share one contract:
    u:      (batch, time, D)   input to the memory, one channel per memory dimension
    A_bar:  (k, n, n)          discretized state matrix, k = 1 (shared) or k = D (one theta per dimension)
    B_bar:  (k, n)
    m0:     (batch, D, n) or None, the state before the first step
    impulse: (k, time, n) or None, H_s = A_bar^s B_bar if the caller already has it
and return the memory for every step, (batch, time, D, n), except ``final`` and its streaming form
``final_chunked`` (memory independent of the length), which return (batch, D, n), and
``projected_memory_fft``, which returns W m_t, (batch, time, G), without forming m.

``naive`` is the reference loop; every other path is tested against it. ``chunk_scan`` computes the memory by
chunks, the state passed from chunk to chunk, as one dense matrix product plus a short scan (the CPU's choice;
see ``dispatch``); ``block_gemm`` computes the same convolution as one dense matrix product over the whole
history (see their docstrings).

``varying`` holds the time-varying memory of irregularly sampled series (a step length per sample), where
A_bar and B_bar are indexed per (batch, step); see its docstring.
"""

from .block_gemm import linear_memory_block_gemm
from .chunk_scan import linear_memory_chunk_scan
from .conv import linear_memory_conv
from .fft import linear_memory_fft, projected_memory_fft
from .final import linear_memory_final, linear_memory_final_chunked
from .naive import linear_memory_naive
from .varying import StepMatrices, apply_step_matrices, linear_memory_varying, linear_memory_varying_naive

__all__ = ["linear_memory_naive", "linear_memory_fft", "linear_memory_chunk_scan", "linear_memory_block_gemm",
           "linear_memory_conv", "linear_memory_final", "linear_memory_final_chunked", "projected_memory_fft",
           "linear_memory_varying", "linear_memory_varying_naive", "apply_step_matrices", "StepMatrices"]
