"""Only the last memory state: one product with the time-reversed impulse response, or, for long sequences,
the same product chunk by chunk with the state carried between chunks (memory independent of the length)."""

from __future__ import annotations

import torch

from ...legendre import impulse_response
from .common import apply_state_matrix

# Steps per chunk of the streaming path; ``linear_memory_final`` streams when the sequence is longer.
FINAL_CHUNK = 4096


def linear_memory_final(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                        m0: torch.Tensor | None = None, lengths: torch.Tensor | None = None, *,
                        impulse: torch.Tensor | None = None, chunk: int | None = FINAL_CHUNK) -> torch.Tensor:
    """m at the last valid step: sum_s H_s u_{len-1-s} (+ A_bar^len m0).

    Args:
        u, A_bar, B_bar, m0: as in the package docstring.
        lengths: ``(batch,)`` valid steps per sequence, in [1, time]; None means all ``time``.
        impulse: ``(k, L, n)`` with L >= time (L >= chunk when streaming), or None to build it.
        chunk: sequences longer than this stream through ``linear_memory_final_chunked`` with this many
            steps per chunk; None always takes the one product over the whole length (H for every step).

    Returns:
        ``(batch, D, n)``.
    """
    batch, time, dims = u.shape
    if chunk is not None and time > chunk:
        return linear_memory_final_chunked(u, A_bar, B_bar, m0, lengths, chunk=chunk, impulse=impulse)
    H = impulse_response(A_bar, B_bar, time) if impulse is None else impulse[:, :time]  # (k, T, n)
    if lengths is None:
        reversed_u = u.flip(1)
    else:
        # reversed_u[b, s] = u[b, len_b - 1 - s] for s < len_b, else 0: each sequence ends at its own length.
        s = torch.arange(time, device=u.device)
        index = lengths[:, None] - 1 - s[None, :]
        valid = index >= 0
        reversed_u = torch.gather(u, 1, index.clamp(min=0)[..., None].expand(-1, -1, dims))
        reversed_u = reversed_u * valid[..., None].to(u.dtype)
    if H.shape[0] == 1:
        m = torch.einsum("btd,tn->bdn", reversed_u, H[0])
    else:
        m = torch.einsum("btd,dtn->bdn", reversed_u, H)
    if m0 is not None:
        m = m + _advance(A_bar, m0, lengths, time)
    return m


def linear_memory_final_chunked(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                                m0: torch.Tensor | None = None, lengths: torch.Tensor | None = None, *,
                                chunk: int = FINAL_CHUNK, impulse: torch.Tensor | None = None) -> torch.Tensor:
    """The last state of ``linear_memory_final``, streamed over chunks of ``C = min(chunk, time)`` steps.

    Per chunk ending at step e, with the state ``x`` after the previous chunk:
        x <- A_bar^C x + sum_{s<C} H_s u_{e-s}
    so only H for C steps ``(k, C, n)`` and A_bar^C ``(k, n, n)`` are held, never anything of length time.

    ``lengths``: the sequences are right-aligned, i.e. sequence b is read as if it had ``time - len_b`` zero
    inputs in front, so that every sequence ends on the last step. Zero inputs before the first real one
    leave a zero state zero, so the state after the last chunk is exactly every sequence's state after its
    own last valid step. The chunks are read with a gather per chunk (no shifted copy of all of u), except
    where a gradient reaches u: then one gather and one split (see ``_chunks``).
    The first chunk is the partial one (``time mod C`` steps, or C, using H_0 .. H_(width-1)), so every
    later chunk ends C steps after the previous one and the last one ends on the last step.

    m0 contributes A_bar^len_b m0_b, added at the end exactly as in ``linear_memory_final``.

    Precision: A_bar^C and (unless given) H are built in float64 from A_bar, B_bar (H then cast to u's
    dtype), and the carried state stays in float64: float32 powers drift over long sequences.

    Memory: O(batch*C*D + k*C*n + k*n*n + batch*D*n) for tensors it creates, whatever the length (under
    no_grad; with grad, autograd keeps each chunk's input and state for the backward pass). Differentiable
    with respect to u, A_bar, B_bar (gradients flow through H and A_bar^C) and m0.

    Args:
        u, A_bar, B_bar, m0: as in the package docstring: ``(batch, time, D)``, ``(k, n, n)``, ``(k, n)``,
            ``(batch, D, n)`` or None.
        lengths: ``(batch,)`` valid steps per sequence, in [1, time]; None means all ``time``.
        chunk: steps per chunk, >= 1.
        impulse: ``(k, L, n)`` with L >= C, H_s = A_bar^s B_bar if the caller already has it (its first C
            steps are used), or None to build it.

    Returns:
        ``(batch, D, n)`` in u's dtype.
    """
    time = u.shape[1]
    if time < 1:
        raise ValueError(f"time must be >= 1, got {time}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    size = min(chunk, time)
    A64 = A_bar.to(torch.float64)
    if impulse is None:
        H = impulse_response(A64, B_bar.to(torch.float64), size).to(u.dtype)  # (k, C, n)
    else:
        if impulse.shape[1] < size:
            raise ValueError(f"impulse has {impulse.shape[1]} steps, the chunks need {size}")
        H = impulse[:, :size].to(u.dtype)
    # Reversed once, so a chunk's contribution at its end is sum_j H_rev[j] u[start + j], no flip per chunk.
    H_rev = H.flip(1)
    power = torch.linalg.matrix_power(A64, size)  # A_bar^C, (k, n, n), float64
    first = time - (time - 1) // size * size  # steps in the first (partial or full) chunk, in [1, C]
    widths = [first] + [size] * ((time - first) // size)
    state = None  # (batch, D, n) float64; None is the zero state
    for piece in _chunks(u, lengths, widths):
        width = piece.shape[1]
        kernel = H_rev[:, size - width:]  # (k, width, n): H_{width-1} .. H_0
        if kernel.shape[0] == 1:
            contribution = torch.einsum("btd,tn->bdn", piece, kernel[0])
        else:
            contribution = torch.einsum("btd,dtn->bdn", piece, kernel)
        contribution = contribution.to(torch.float64)
        # The width of every chunk after the first is C, so A_bar^C carries the state over it.
        state = contribution if state is None else apply_state_matrix(power, state) + contribution
    m = state.to(u.dtype)
    if m0 is not None:
        m = m + _advance(A_bar, m0, lengths, time)
    return m


def _chunks(u: torch.Tensor, lengths: torch.Tensor | None, widths: list[int]):
    """u's steps in consecutive chunks of ``widths`` steps, ``(batch, width, D)`` each, every sequence
    right-aligned (zeros in front of a shorter one) so that all end at the last position.

    Where a gradient reaches u, the chunks come from one split (of one gather, with lengths): cutting each chunk
    out by itself would cost, in the backward pass, a zero gradient the size of all of u per chunk, O(time^2 / C).
    Otherwise each chunk is gathered by itself, so that nothing the size of u is made.
    """
    batch, time, dims = u.shape
    if lengths is None:
        yield from u.split(widths, dim=1)  # views
        return
    shift = (time - lengths.to(device=u.device, dtype=torch.long))[:, None]

    def gather(start, stop):  # positions [start, stop) of every sequence, (batch, stop - start, D)
        index = torch.arange(start, stop, device=u.device)[None, :] - shift  # < 0 before sequence b starts
        piece = torch.gather(u, 1, index.clamp(min=0)[..., None].expand(-1, -1, dims))
        return piece * (index >= 0)[..., None].to(u.dtype)

    if torch.is_grad_enabled() and u.requires_grad:
        yield from gather(0, time).split(widths, dim=1)
        return
    start = 0
    for width in widths:
        yield gather(start, start + width)
        start += width


def _advance(A_bar: torch.Tensor, m0: torch.Tensor, lengths: torch.Tensor | None, time: int) -> torch.Tensor:
    """A_bar^len_b m0_b for each sequence b, by binary powers: log2(time) products, O(batch) memory.

    Args:
        A_bar: ``(k, n, n)``; m0: ``(batch, D, n)``.
        lengths: ``(batch,)`` integers in [0, time], or None for ``time`` steps each.
        time: the sequence length, known on the host, so that the number of products needs no read of
            ``lengths`` (a synchronization on a GPU).

    Returns:
        ``(batch, D, n)`` in m0's dtype (computed in float64, like ``zero_input_response``).
    """
    state = m0.to(torch.float64)
    power = A_bar.to(torch.float64)  # A_bar^(2^bit)
    remaining = (lengths.clone() if lengths is not None
                 else torch.full_like(m0[:, 0, 0], time, dtype=torch.long))
    for _ in range(int(time).bit_length()):
        take = (remaining % 2 == 1)[:, None, None]
        state = torch.where(take, apply_state_matrix(power, state), state)
        remaining = remaining // 2
        power = power @ power
    return state.to(m0.dtype)
