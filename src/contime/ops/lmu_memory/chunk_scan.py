"""The memory by chunks: matrix products inside each chunk of L steps, the state passed from chunk to chunk.

Cut the steps into NB chunks of L (the last one padded with zeros). Let s_q be the memory at the end of chunk q
and s_{-1} = m0 (or 0). At step t = q L + tau of chunk q, with H_j = A^j B the impulse response,

    m_t = A^(tau+1) s_{q-1} + sum_{sigma <= tau} H_{tau-sigma} u_{qL+sigma}.

For every chunk at once that is ONE matrix product whose output already is the memory, laid out (row, step,
channel):

    M = [S_prev | U_chunks] @ [[P], [K]]            (R NB, n + L) @ (n + L, L n)
    P[c', (tau, c)] = (A^(tau+1))[c, c'],   K[sigma, (tau, c)] = H_{tau-sigma}[c] for sigma <= tau, else 0,

with rows (r, q), r = (sequence, memory dimension). The chunk states come first, in one of two forms:

- direct (few chunks): s_{q-1} = sum_{s < qL} u_s H_{qL-1-s} (+ m0's term m0 (A^(qL))^T) for every chunk at once,
  one product of the input (R, (NB - 1) L) by a block-Toeplitz matrix of H ((NB - 1) L, NB n). Each state is
  then one product with float64-built coefficients, and the forward is three ops instead of six (a scan's small
  ops cost a GPU launch each, against products of tens of microseconds at the psMNIST shape).
- doubling (many chunks, where that matrix would be large): e_q = sum_sigma u_{qL+sigma} H_{L-1-sigma} (a product
  with L columns), then s_q = A^L s_{q-1} + e_q, a scan over the NB chunks in ceil(log2 NB) doubling steps.

Work: R T n (n + L) multiply-adds for the large product, linear in T, against R T^2 n for the block-Toeplitz
GEMM (``block_gemm``; T / (n + L) = 2.2 times more at the psMNIST shape, L = 98). No value is rounded more
than a few times in a row (no compounding over the steps), so tf32 products keep about 1e-3 relative error.

Backward, with the adjoint lambda_t = sum_{t' >= t} g_{t'} A^(t'-t) (row vectors) and Lambda_q = lambda_{qL}:

    grad u_{qL+sigma} = sum_{tau >= sigma} g_{qL+tau} . H_{tau-sigma}  +  Lambda_{q+1} . H_{L-sigma}.

One product of the gradient's chunks (R NB, L n) by [Q | K^T] (L n, n + L), Q[(tau, c), c'] = (A^tau)[c, c'],
gives each chunk's own adjoint sum e'_q and the first term. Direct form: the second term is sum_{p > q} e'_p .
H_{pL-s} for s = qL + sigma, one product of e' (R, (NB - 1) n) by a block-Toeplitz matrix of H, and grad m0 =
sum_p e'_p A^(pL+1) one more. Doubling form: the reverse scan Lambda_q = e'_q + Lambda_{q+1} A^L, then a product
(R NB, n) by (n, L) for the second term, and grad m0 = Lambda_0 A. The gradient of H (a trained theta)
goes through the FFT (``toeplitz_kernel_gradient``), as for the other Toeplitz paths.

``precision``: "ieee" multiplies in float32; "tf32" lets cuBLAS use TF32 tensor cores (about 1e-3 relative
error); "tf32x3" splits each float32 operand into a tf32 high part and the rest and sums three tf32 products
(hi hi + hi lo + lo hi), close to float32 on tensor cores. On the CPU "tf32" changes nothing and "tf32x3" does
its three float32 products.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import NamedTuple

import torch

from ...legendre import impulse_response, power_sequence
from .common import check_shared_system, matmul_precision, under_transform, zero_input_response
from .fft import causal_fft_product, toeplitz_kernel_gradient

PRECISIONS = ("ieee", "tf32", "tf32x3")
# The direct form's largest matrix, ((NB - 1) L, NB n): up to this many entries (32 MB in float32; 1.4 M at the
# psMNIST shape); beyond, doubling steps.
DIRECT_MAX_ENTRIES = 1 << 23


def direct_states(blocks: int, n: int, L: int, rows: int) -> bool:
    """Whether NB = ``blocks`` chunks of ``rows`` sequences get their states in the direct form (module
    docstring): where its products cost at most half of the memory's own (NB n T against T n (n + L)
    multiply-adds per row) and its matrix, read on every call, is no larger than the memory it serves (rows NB L n
    entries) nor DIRECT_MAX_ENTRIES; else by doubling steps. Measured on this project's CPU (one thread, forward +
    backward): where the matrix was 1.9x to 3.9x the memory, the direct form took 1.1x to 1.8x the doubling's
    time; where it was 0.07x to 0.44x, the two were even."""
    entries = (blocks - 1) * L * blocks * n
    return (blocks > 1 and 2 * blocks <= n + L and entries <= DIRECT_MAX_ENTRIES
            and entries <= rows * blocks * L * n)


def chunk_length(time: int) -> int:
    """L: about an eighth of the sequence (the scan's matrix stays small), between 16 and 128 steps; a divisor of
    ``time`` within a quarter of that where there is one, so that no step is padded (a padded last chunk costs a
    copy of the whole memory, and of its gradient)."""
    target = min(time, max(16, min(128, -(-time // 8))))
    divisors = [L for L in range(max(16, (3 * target) // 4), min(128, (5 * target) // 4) + 1) if time % L == 0]
    return min(divisors, key=lambda L: (abs(L - target), -L)) if divisors else target


# ------------------------------------------------------------------------------------------- products
def split_tf32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) with hi = x rounded to tf32's 10 mantissa bits (exactly representable, so the tensor cores read it
    unchanged) and lo = x - hi (exact in float32, at most 2^-11 |x|). Where rounding would overflow or x is not
    finite, hi = x and lo = 0 (an infinity stays one, instead of inf - inf)."""
    bits = x.contiguous().view(torch.int32)
    hi = ((bits + 0x1000) & -0x2000).view(torch.float32)  # round half away from zero, clear the low 13 bits
    finite = torch.isfinite(hi)
    hi = torch.where(finite, hi, x)
    return hi, torch.where(finite, x - hi, 0.0)


def product(x: torch.Tensor, w: torch.Tensor, precision: str, memo: dict | None = None) -> torch.Tensor:
    """x @ w with ``precision``'s products (module docstring); x ``(..., K)``, w ``(K, N)``, same dtype.

    tf32x3 arranges its three products by which side is large: a small x (the forward, whose output is the large
    memory) makes one product with three times the inner size, [x_hi | x_hi | x_lo] @ [w_hi; w_lo; w_hi], so
    the output is written once; a large x (the backward's gradient) is read once per part, x_hi @ [w_hi | w_lo]
    and x_lo @ w_hi, and only the small outputs are added. ``memo`` (an operator's) keeps w's parts for a
    constant w: at the psMNIST shape the split and stacked forward weight is 106 MB to write on every call."""
    if precision == "tf32x3" and x.dtype == torch.float32:
        x_hi, x_lo = split_tf32(x)
        stacked_inner = x[..., 0].numel() * w.shape[1] >= x.numel()  # the output is at least as large as x
        key = (w.data_ptr(), w.stride(), stacked_inner)
        parts = None if memo is None else memo.get(key)
        if parts is None:
            w_hi, w_lo = split_tf32(w)
            parts = (torch.cat([w_hi, w_lo, w_hi]),) if stacked_inner else (torch.cat([w_hi, w_lo], dim=1), w_hi)
            if memo is not None:
                memo[key] = parts
        with matmul_precision("tf32", x.device):
            if stacked_inner:
                return torch.cat([x_hi, x_hi, x_lo], dim=-1) @ parts[0]
            both = x_hi @ parts[0]
            n = w.shape[1]
            return (both[..., n:] + x_lo @ parts[1]) + both[..., :n]  # the small terms first: one rounding less
    with matmul_precision("tf32" if precision == "tf32" else "ieee", x.device):
        return x @ w


# ------------------------------------------------------------------------------------------- the operator
class ChunkScan(NamedTuple):
    """How the states pass over NB chunks: the direct form's four matrices, or the doubling form's powers."""

    starts: torch.Tensor | None  # ((NB - 1) L, NB n): [s, (q, c)] = H_{qL-1-s}[c] for s < qL, else 0
    earlier: torch.Tensor | None  # ((NB - 1) n, (NB - 1) L): [(p, c), s] = H_{pL-s}[c] for s < pL, p >= 1, else 0
    from_m0: torch.Tensor | None  # (n, NB n): block q = (A^(qL))^T
    to_m0: torch.Tensor | None  # (NB n, n): block p = A^(pL+1)
    doubling: tuple[torch.Tensor, ...]  # A^(L 2^k), k = 0, 1, ... while 2^k < NB (doubling form), else ()
    memo: dict  # ``product``'s tf32x3 parts of these matrices (they live and go with this scan)


class ChunkOperator(NamedTuple):
    """The matrices of one (A, B, L) in the op's dtype, built in float64 and cast once; ``scans`` holds the
    ChunkScan of each (chunk count NB, form) met so far (built on first use by ``scan_for``), ``memo`` the tf32x3 parts
    of the two weights (built on first use by ``product``)."""

    forward_weight: torch.Tensor  # (n + L, L n): [[P], [K]]
    chunk_end: torch.Tensor  # (L, n): H_{L-1-sigma}, the response at the chunk's end to its input sigma
    backward_weight: torch.Tensor  # (L n, n + L): [Q | K^T]
    next_response: torch.Tensor  # (n, L): H_{L-sigma}, read by the next chunk's adjoint
    state_matrix: torch.Tensor  # (n, n): A, for grad m0
    source: tuple[torch.Tensor, torch.Tensor]  # A (n, n) and B (n,) in float64: H again, A^L for the scans
    scans: dict
    memo: dict  # ``product``'s tf32x3 parts of the two weights


def build_operator(A_bar: torch.Tensor, B_bar: torch.Tensor, L: int, dtype: torch.dtype) -> ChunkOperator:
    """The ChunkOperator of A_bar ``(n, n)`` and B_bar ``(n,)`` for chunks of L steps."""
    A, B = A_bar.detach().to(torch.float64), B_bar.detach().to(torch.float64)
    n = A.shape[0]
    eye = torch.eye(n, dtype=torch.float64, device=A.device)
    powers = power_sequence(A[None], eye[None], L + 1)[0]  # (L + 1, n, n): A^0 .. A^L
    H = powers @ B  # (L + 1, n): H_0 .. H_L
    lag = torch.arange(L, device=A.device)[None, :] - torch.arange(L, device=A.device)[:, None]  # [sigma, tau]
    K = torch.where((lag >= 0)[..., None], H[lag.clamp(min=0)], 0.0)  # (L, L, n): [sigma, tau, c]
    P = powers[1:].permute(2, 0, 1)  # (n, L, n): [c', tau, c] = (A^(tau+1))[c, c']
    forward_weight = torch.cat([P.reshape(n, L * n), K.reshape(L, L * n)])
    backward_weight = torch.cat([powers[:L].reshape(L * n, n), K.permute(1, 2, 0).reshape(L * n, L)], dim=1)
    return ChunkOperator(forward_weight.to(dtype), H[:L].flip(0).to(dtype), backward_weight.to(dtype),
                         H[L - torch.arange(L, device=A.device)].t().to(dtype), A.to(dtype), (A, B), {}, {})


def scan_for(op: ChunkOperator, blocks: int, rows: int) -> ChunkScan:
    """The operator's ChunkScan for NB = ``blocks`` chunks of ``rows`` sequences, in the form ``direct_states``
    picks, built in float64 on first use (the last four are kept)."""
    A, B = op.source
    n, L = A.shape[0], op.chunk_end.shape[0]
    key = (blocks, direct_states(blocks, n, L, rows))
    if key in op.scans:
        op.scans[key] = op.scans.pop(key)  # most recently used last
        return op.scans[key]
    dtype = op.state_matrix.dtype
    step = torch.linalg.matrix_power(A, L)  # A^L: from one chunk's end to the next
    if key[1]:
        H = impulse_response(A[None], B[None], (blocks - 1) * L + 1)[0]  # H_0 .. H_{(NB-1) L}
        s = torch.arange((blocks - 1) * L, device=A.device)
        q = torch.arange(blocks, device=A.device)
        lag = q[None, :] * L - 1 - s[:, None]  # [s, q]
        starts = torch.where((lag >= 0)[..., None], H[lag.clamp(min=0)], 0.0).reshape(len(s), blocks * n)
        lag = q[1:, None] * L - s[None, :]  # [p, s], p >= 1
        earlier = torch.where((lag >= 1)[..., None], H[lag.clamp(min=0)], 0.0)  # [p, s, c]
        earlier = earlier.permute(0, 2, 1).reshape((blocks - 1) * n, len(s))
        eye = torch.eye(n, dtype=torch.float64, device=A.device)
        chunk_powers = power_sequence(step[None], eye[None], blocks)[0]  # (NB, n, n): (A^L)^0 .. ^(NB-1)
        from_m0 = chunk_powers.permute(2, 0, 1).reshape(n, blocks * n)  # [c', (q, c)] = (A^(qL))[c, c']
        to_m0 = (chunk_powers @ A).reshape(blocks * n, n)  # [(p, c'), c] = (A^(pL+1))[c', c]
        scan = ChunkScan(starts.to(dtype), earlier.to(dtype), from_m0.to(dtype), to_m0.to(dtype), (), {})
    else:
        squares = [step]
        while 2 ** len(squares) < blocks:
            squares.append(squares[-1] @ squares[-1])
        scan = ChunkScan(None, None, None, None, tuple(s.to(dtype) for s in squares), {})
    if len(op.scans) >= 4:
        op.scans.pop(next(iter(op.scans)))  # the least recently used
    op.scans[key] = scan
    return scan


_BY_IDENTITY: OrderedDict = OrderedDict()
_BY_VALUE: OrderedDict = OrderedDict()
CACHE_SIZE = 4  # operators per cache (each about 70 MB at order 256, L = 98, float32)


def cached_operator(A_bar: torch.Tensor, B_bar: torch.Tensor, L: int, dtype: torch.dtype) -> ChunkOperator:
    """``build_operator`` of A_bar ``(1, n, n)`` and B_bar ``(1, n)``, reused (building costs n^3 L float64
    multiply-adds: 0.66 s at order 256, L = 98 on this project's CPU). Least recently used entries go first.

    First by identity: the same live tensors at the same version (an LMU with a fixed theta passes the same ones
    on every call; the entry goes when either tensor is freed). Writes that bypass the version counter
    (``A_bar.data.mul_``, a numpy view) are not seen, as with any cache keyed on versions. Then, on the CPU only,
    by value: the matrices' bytes, so new tensors with the same values (an LMU under inference mode rebuilds
    A_bar on every call) hit too. On a GPU reading the values would cost a device synchronization per call."""
    # Inference tensors keep no version counter: only their values can say they are unchanged.
    identity = None if A_bar.is_inference() or B_bar.is_inference() else \
        (id(A_bar), A_bar._version, id(B_bar), B_bar._version, L, dtype)
    hit = _BY_IDENTITY.get(identity)
    if hit is not None and hit[0]() is A_bar and hit[1]() is B_bar:
        _BY_IDENTITY.move_to_end(identity)
        return hit[2]
    if A_bar.device.type == "cpu":
        value = (A_bar.detach().numpy().tobytes(), B_bar.detach().numpy().tobytes(), tuple(A_bar.shape),
                 A_bar.dtype, L, dtype)
        if value not in _BY_VALUE:
            _store(_BY_VALUE, value, build_operator(A_bar[0], B_bar[0], L, dtype))
        _BY_VALUE.move_to_end(value)
        operator = _BY_VALUE[value]
    else:
        operator = build_operator(A_bar[0], B_bar[0], L, dtype)
    if identity is not None:
        forget = lambda _: _BY_IDENTITY.pop(identity, None)  # noqa: E731
        _store(_BY_IDENTITY, identity, (weakref.ref(A_bar, forget), weakref.ref(B_bar, forget), operator))
    return operator


def _store(cache: OrderedDict, key, value) -> None:
    """cache[key] = value, dropping the least recently used entries beyond CACHE_SIZE."""
    cache[key] = value
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


def clear_cache() -> None:
    """Forget every cached operator."""
    _BY_IDENTITY.clear()
    _BY_VALUE.clear()


# ------------------------------------------------------------------------------------------- the scan
def scan_chunks(y: torch.Tensor, scan: ChunkScan, precision: str, reverse: bool = False) -> torch.Tensor:
    """z_q = sum_{p <= q} y_p (A^(L (q-p)))^T, or with ``reverse`` z_q = sum_{p >= q} y_p A^(L (p-q)), by the
    doubling form's ceil(log2 NB) steps.

    Args:
        y: ``(R, NB, n)`` row vectors.

    Returns:
        ``(R, NB, n)``.
    """
    blocks = y.shape[1]
    for k, power in enumerate(scan.doubling):
        shift = 2 ** k
        if shift >= blocks:
            break
        if reverse:
            y = torch.cat([y[:, :-shift] + product(y[:, shift:], power, precision), y[:, -shift:]], dim=1)
        else:
            y = torch.cat([y[:, :shift], y[:, shift:] + product(y[:, :-shift], power.t(), precision)], dim=1)
    return y


# ------------------------------------------------------------------------------------------- autograd
def _pad_steps(x: torch.Tensor, length: int) -> torch.Tensor:
    """x ``(R, time, ...)`` with zero steps appended up to ``length``; x itself (no copy of the memory's size)
    when nothing is missing."""
    missing = length - x.shape[1]
    if missing == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], missing, *x.shape[2:])], dim=1)


def _chunk_states(chunks: torch.Tensor, m0: torch.Tensor | None, op: ChunkOperator, scan: ChunkScan,
                  precision: str) -> torch.Tensor:
    """s_{q-1}, the memory before each chunk: chunks ``(R, NB, L)`` of the input, m0 ``(batch, D, n)`` or None ->
    ``(R, NB, n)``, in the scan's form (module docstring)."""
    rows, blocks, L = chunks.shape
    n = op.state_matrix.shape[0]
    if scan.starts is not None:
        starts = product(chunks.reshape(rows, blocks * L)[:, :-L], scan.starts, precision, scan.memo)  # (R, NB n)
        if m0 is not None:
            starts = starts + product(m0.reshape(rows, n), scan.from_m0, precision, scan.memo)
        return starts.view(rows, blocks, n)
    ends = product(chunks[:, :-1], op.chunk_end, precision)  # (R, NB - 1, n): e_q
    first = chunks.new_zeros(rows, 1, n) if m0 is None else m0.reshape(rows, 1, n)
    return scan_chunks(torch.cat([first, ends], dim=1), scan, precision)


class _ChunkScanMemory(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, kernel, m0, op, L, precision):
        """kernel: H ``(time, n)``, or None where no gradient reaches it (the operator holds what the forward
        needs; a second derivative rebuilds H from A and B)."""
        batch, time, D = u.shape
        n = op.state_matrix.shape[0]
        blocks = -(-time // L)
        rows = u.permute(0, 2, 1).reshape(batch * D, time)
        chunks = _pad_steps(rows, blocks * L).reshape(batch * D, blocks, L)
        with torch.autocast(u.device.type, enabled=False):
            starts = _chunk_states(chunks, m0, op, scan_for(op, blocks, batch * D), precision)  # s_{q-1}
            M = product(torch.cat([starts, chunks], dim=2), op.forward_weight, precision, op.memo)  # (R, NB, L n)
        ctx.save_for_backward(u, kernel, m0)
        ctx.op, ctx.L, ctx.precision = op, L, precision
        # A copy only where the last chunk was padded or D > 1; else M already is (B, T, D, n).
        return M.view(batch, D, blocks * L, n)[:, :, :time].permute(0, 2, 1, 3).contiguous()

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: the operator is a constant here, so go through the FFT
            return _ChunkScanMemory._differentiable_backward(ctx, grad)
        u, _, _ = ctx.saved_tensors
        grad = grad.to(u.dtype)  # the gradient of an autocast region may come back in its dtype
        batch, time, D = u.shape
        n = ctx.op.state_matrix.shape[0]
        blocks = -(-time // ctx.L)
        grad_u = grad_kernel = grad_m0 = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            grad_u, grad_m0 = _ChunkScanMemory._adjoint(ctx, grad, batch, time, D, n, blocks)
        if ctx.needs_input_grad[1]:
            grad_kernel = toeplitz_kernel_gradient(grad, u)
        return grad_u, grad_kernel, grad_m0, None, None, None

    @staticmethod
    def _differentiable_backward(ctx, grad):
        """The same gradients as a graph (for a second derivative): the function again in plain torch ops, the
        FFT product plus m0's zero-input response, differentiated with ``create_graph``."""
        u, kernel, m0 = ctx.saved_tensors
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[:3]) if need]
        inputs = [(u, kernel, m0)[i] for i in wanted]
        if kernel is None:
            A64, B64 = ctx.op.source
            kernel = impulse_response(A64[None], B64[None], u.shape[1])[0].to(u.dtype)
        out = causal_fft_product(u, kernel[None])
        if m0 is not None:
            out = out + zero_input_response(ctx.op.state_matrix[None], m0, u.shape[1])
        found = torch.autograd.grad(out, inputs, grad.to(out.dtype), create_graph=True, allow_unused=True)
        grads = [None, None, None]
        for i, g in zip(wanted, found):
            grads[i] = g
        return (*grads, None, None, None)

    @staticmethod
    def _adjoint(ctx, grad, batch, time, D, n, blocks):
        """(grad u, grad m0) through the reverse chunk scan; None where not wanted."""
        op, L, precision = ctx.op, ctx.L, ctx.precision
        grad_u = grad_m0 = None
        with torch.autocast(grad.device.type, enabled=False):
            G = grad.permute(0, 2, 1, 3).reshape(batch * D, time, n)
            G = _pad_steps(G, blocks * L).reshape(batch * D, blocks, L * n)  # a copy only for a strided grad
            Y = product(G, op.backward_weight, precision, op.memo)  # (R, NB, n + L)
            scan = scan_for(op, blocks, batch * D)
            if scan.starts is not None:  # the direct form: from each chunk's own adjoint sum e'_p straight on
                sums = Y[..., :n].reshape(batch * D, blocks * n)
                if ctx.needs_input_grad[0]:
                    grad_chunks = Y[..., n:].clone().view(batch * D, blocks * L)
                    grad_chunks[:, :-L] += product(sums[:, n:], scan.earlier, precision, scan.memo)
                if ctx.needs_input_grad[2]:
                    grad_m0 = product(sums, scan.to_m0, precision, scan.memo)
            else:
                adjoint = scan_chunks(Y[..., :n], scan, precision, reverse=True)  # (R, NB, n): Lambda_q
                if ctx.needs_input_grad[0]:
                    grad_chunks = Y[..., n:].clone()
                    grad_chunks[:, :-1] += product(adjoint[:, 1:], op.next_response, precision)
                if ctx.needs_input_grad[2]:
                    grad_m0 = product(adjoint[:, 0], op.state_matrix, precision)
            if ctx.needs_input_grad[0]:
                grad_u = grad_chunks.view(batch, D, blocks * L)[:, :, :time].transpose(1, 2)
            if grad_m0 is not None:
                grad_m0 = grad_m0.view(batch, D, n)
        return grad_u, grad_m0


def linear_memory_chunk_scan(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor,
                             m0: torch.Tensor | None = None, *, impulse: torch.Tensor | None = None,
                             precision: str = "ieee", block: int | None = None) -> torch.Tensor:
    """The memory of every step by chunks (module docstring). Shapes as in the package docstring; A_bar must be
    shared (k = 1).

    Args:
        impulse: H ``(1, time, n)``, A_bar^s B_bar, or None. Only its gradient is used (by FFT), for a trained
            theta: the values come from A_bar and B_bar, which it must match. When None it is built only if A_bar
            or B_bar wants a gradient (at a million steps H alone is 1 GB in float32).
        precision: "ieee", "tf32" or "tf32x3" (module docstring).
        block: L, the steps per chunk (default ``chunk_length(time)``).

    Returns:
        ``(batch, time, D, n)``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, time, D), got shape {tuple(u.shape)}")
    check_shared_system("linear_memory_chunk_scan", A_bar, B_bar)
    if under_transform(u, A_bar, B_bar, m0, impulse):
        raise ValueError("linear_memory_chunk_scan has no forward-mode AD or torch.func rule; use "
                         "linear_memory_fft (plain torch ops) there")
    batch, time, D = u.shape
    n = A_bar.shape[-1]
    if time < 1:
        raise ValueError(f"u must have at least one step, got shape {tuple(u.shape)}")
    if m0 is not None and (tuple(m0.shape) != (batch, D, n) or m0.dtype != u.dtype or m0.device != u.device):
        raise ValueError(f"m0 must be (batch, D, n) = {(batch, D, n)} in u's dtype and device; got "
                         f"{tuple(m0.shape)}, {m0.dtype} on {m0.device}")
    L = chunk_length(time) if block is None else block
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")
    L = min(L, time)
    H = impulse
    if H is None and torch.is_grad_enabled() and (A_bar.requires_grad or B_bar.requires_grad):
        H = impulse_response(A_bar, B_bar, time).to(u.dtype)  # the path of A_bar's and B_bar's gradients
    if H is not None and H.shape != (1, time, n):
        raise ValueError(f"impulse must be (1, time, n) = {(1, time, n)}, got {tuple(H.shape)}")
    if H is not None and (u.dtype != H.dtype or u.device != H.device):
        raise ValueError(f"u and impulse must share dtype and device; got u {u.dtype} on {u.device}, impulse "
                         f"{H.dtype} on {H.device}")
    op = cached_operator(A_bar, B_bar, L, u.dtype)
    # m0's term depends on A_bar: when A_bar is trained it goes through autograd outside (the operator is a
    # constant to the autograd node); otherwise the scan starts from m0, at no extra cost.
    m0_outside = m0 is not None and torch.is_grad_enabled() and A_bar.requires_grad
    m = _ChunkScanMemory.apply(u, None if H is None else H[0], None if m0_outside else m0, op, L, precision)
    if m0_outside:
        m = m + zero_input_response(A_bar, m0, time)
    return m
