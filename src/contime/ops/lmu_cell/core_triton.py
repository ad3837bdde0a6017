"""The sequential core of the fused LMU cell as two persistent Triton kernels (forward and backward).

One program owns ``BLOCK_B`` sequences of the batch for the whole sequence: the recurrence never leaves the
kernel, and the weights (well under 1 MB at the psMNIST shape) stay in the L2 cache across steps. Each step
runs in phases, each a set of blocked matrix products over chunks of the state; the states it needs from
the previous phase are read back from the output buffers that it just wrote, after a block-wide barrier
(sequences never interact, so no program waits for another).

The kernels fill exactly the buffers that ``core_torch`` fills; ``contime.ops.lmu_cell`` holds the
equations. ``precision`` is Triton's ``input_precision`` of every product: "ieee" (float32 products), "tf32x3" (three
tf32 products, near float32) or "tf32" (the tensor cores' float32 mode, about 1e-3 relative error per product).

Under ``TRITON_INTERPRET=1`` the same kernels run on the CPU with numpy, which is how the tests check them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl



@triton.jit
def _tile(ptr, rows, cols, n_rows, n_cols, row_stride):
    """Load ptr[rows, cols] of a row-major matrix, zero outside (n_rows, n_cols)."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _state(ptr, rows, cols, n_rows, n_cols, row_stride):
    """Like ``_tile``, for a state written earlier in this launch: read through L2, never a stale L1 line."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")


@triton.jit
def _put(ptr, value, rows, cols, n_rows, n_cols, row_stride):
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], value, mask=mask)


@triton.jit
def _lmu_cell_forward_kernel(
        ux_ptr, xh_ptr, AT_ptr, Bm_ptr, Eh_ptr, Em_ptr, Wm_ptr, Wh_ptr,  # inputs
        H_ptr, M_ptr, U_ptr,  # outputs: H_ext (T+1, B, H), M_ext (T+1, B, N), U (T, B, D)
        T, B, HID, N, D,
        BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_EH: tl.constexpr, HAS_EM: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    rk = tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    for t in range(T):
        h_prev = H_ptr + t * B * HID
        m_prev = M_ptr + t * B * N
        m_new = M_ptr + (t + 1) * B * N
        h_new = H_ptr + (t + 1) * B * HID
        # Phase 1: u_t = ux_t + h_{t-1} E_h + m_{t-1} E_m, (BLOCK_B, BLOCK_D).
        u = _tile(ux_ptr + t * B * D, rb, rd, B, D, D)
        if HAS_EH:
            for k0 in range(0, HID, BLOCK_K):
                u += tl.dot(_state(h_prev, rb, k0 + rk, B, HID, HID), _tile(Eh_ptr, k0 + rk, rd, HID, D, D),
                            input_precision=PRECISION)
        if HAS_EM:
            for k0 in range(0, N, BLOCK_K):
                u += tl.dot(_state(m_prev, rb, k0 + rk, B, N, N), _tile(Em_ptr, k0 + rk, rd, N, D, D),
                            input_precision=PRECISION)
        _put(U_ptr + t * B * D, u, rb, rd, B, D, D)
        # Phase 2: m_t = m_{t-1} A^T + u_t Bm, one column chunk at a time.
        for j0 in range(0, N, BLOCK_N):
            acc = tl.dot(u, _tile(Bm_ptr, rd, j0 + rn, D, N, N), input_precision=PRECISION)
            for k0 in range(0, N, BLOCK_K):
                acc += tl.dot(_state(m_prev, rb, k0 + rk, B, N, N), _tile(AT_ptr, k0 + rk, j0 + rn, N, N, N),
                              input_precision=PRECISION)
            _put(m_new, acc, rb, j0 + rn, B, N, N)
        tl.debug_barrier()  # every chunk of m_t is written before any thread reads it back
        # Phase 3: h_t = act(xh_t + m_t W_m + h_{t-1} W_h).
        for j0 in range(0, HID, BLOCK_N):
            acc = _tile(xh_ptr + t * B * HID, rb, j0 + rn, B, HID, HID)
            for k0 in range(0, N, BLOCK_K):
                acc += tl.dot(_state(m_new, rb, k0 + rk, B, N, N), _tile(Wm_ptr, k0 + rk, j0 + rn, N, HID, HID),
                              input_precision=PRECISION)
            for k0 in range(0, HID, BLOCK_K):
                acc += tl.dot(_state(h_prev, rb, k0 + rk, B, HID, HID),
                              _tile(Wh_ptr, k0 + rk, j0 + rn, HID, HID, HID), input_precision=PRECISION)
            if RELU:
                h = tl.maximum(acc, 0.0)
            else:
                h = 2.0 * tl.sigmoid(2.0 * acc) - 1.0  # tanh
            _put(h_new, h, rb, j0 + rn, B, HID, HID)
        tl.debug_barrier()  # h_t complete before step t + 1 reads it


@triton.jit
def _lmu_cell_backward_kernel(
        gh_ptr, gm_ptr, H_ptr, A_ptr, BmT_ptr, EhT_ptr, EmT_ptr, WmT_ptr, WhT_ptr,  # inputs
        DP_ptr, DM_ptr, DU_ptr,  # outputs (T+1, B, .), entry T zero on entry
        T, B, HID, N, D,
        BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_EH: tl.constexpr, HAS_EM: tl.constexpr, HAS_GM: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    rk = tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    for step in range(T):
        t = T - 1 - step
        dp_next = DP_ptr + (t + 1) * B * HID
        dm_next = DM_ptr + (t + 1) * B * N
        du_next = DU_ptr + (t + 1) * B * D
        dp_now = DP_ptr + t * B * HID
        dm_now = DM_ptr + t * B * N
        # Phase 1: dp_t = (gh_t + dp_{t+1} W_h^T + du_{t+1} E_h^T) * act'(h_t).
        if HAS_EH:
            du_later = _state(du_next, rb, rd, B, D, D)
        for j0 in range(0, HID, BLOCK_N):
            acc = _tile(gh_ptr + t * B * HID, rb, j0 + rn, B, HID, HID)
            for k0 in range(0, HID, BLOCK_K):
                acc += tl.dot(_state(dp_next, rb, k0 + rk, B, HID, HID),
                              _tile(WhT_ptr, k0 + rk, j0 + rn, HID, HID, HID), input_precision=PRECISION)
            if HAS_EH:
                acc += tl.dot(du_later, _tile(EhT_ptr, rd, j0 + rn, D, HID, HID), input_precision=PRECISION)
            h = _tile(H_ptr + (t + 1) * B * HID, rb, j0 + rn, B, HID, HID)
            if RELU:
                acc = tl.where(h > 0, acc, 0.0)
            else:
                acc = acc * (1.0 - h * h)
            _put(dp_now, acc, rb, j0 + rn, B, HID, HID)
        tl.debug_barrier()
        # Phase 2: dm_t = gm_t + dm_{t+1} A + du_{t+1} E_m^T + dp_t W_m^T.
        if HAS_EM:
            du_later = _state(du_next, rb, rd, B, D, D)
        for j0 in range(0, N, BLOCK_N):
            if HAS_GM:
                acc = _tile(gm_ptr + t * B * N, rb, j0 + rn, B, N, N)
            else:
                acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, N, BLOCK_K):
                acc += tl.dot(_state(dm_next, rb, k0 + rk, B, N, N), _tile(A_ptr, k0 + rk, j0 + rn, N, N, N),
                              input_precision=PRECISION)
            if HAS_EM:
                acc += tl.dot(du_later, _tile(EmT_ptr, rd, j0 + rn, D, N, N), input_precision=PRECISION)
            for k0 in range(0, HID, BLOCK_K):
                acc += tl.dot(_state(dp_now, rb, k0 + rk, B, HID, HID),
                              _tile(WmT_ptr, k0 + rk, j0 + rn, HID, N, N), input_precision=PRECISION)
            _put(dm_now, acc, rb, j0 + rn, B, N, N)
        tl.debug_barrier()
        # Phase 3: du_t = dm_t Bm^T.
        du = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, N, BLOCK_K):
            du += tl.dot(_state(dm_now, rb, k0 + rk, B, N, N), _tile(BmT_ptr, k0 + rk, rd, N, D, D),
                         input_precision=PRECISION)
        _put(DU_ptr + t * B * D, du, rb, rd, B, D, D)
        tl.debug_barrier()


def _blocks(D: int, block_b: int, block_k: int, block_n: int):
    return dict(BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(D)))


def _dummy(like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros(1)


def forward_core(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, relu: bool, precision: str = "ieee",
                 block_b: int = 16, block_k: int = 32, block_n: int = 64, num_warps: int = 4):
    """Same contract as ``core_torch.forward_core``; every tensor float32 and contiguous on one device."""
    time, batch, D = ux.shape
    hidden, N = W_h.shape[0], A_T.shape[0]
    H_ext = ux.new_empty(time + 1, batch, hidden)
    M_ext = ux.new_empty(time + 1, batch, N)
    U = torch.empty_like(ux)
    H_ext[0], M_ext[0] = h0, m0
    grid = (triton.cdiv(batch, block_b),)
    _lmu_cell_forward_kernel[grid](
        ux, xh, A_T, Bm, _dummy(ux) if E_h is None else E_h, _dummy(ux) if E_m is None else E_m, W_m, W_h,
        H_ext, M_ext, U, time, batch, hidden, N, D, **_blocks(D, block_b, block_k, block_n),
        HAS_EH=E_h is not None, HAS_EM=E_m is not None, RELU=relu, PRECISION=precision, num_warps=num_warps)
    return H_ext, M_ext, U


def backward_core(grad_h, grad_m, H_ext, A_T, Bm, E_h, E_m, W_m, W_h, relu: bool, precision: str = "ieee",
                  block_b: int = 16, block_k: int = 32, block_n: int = 64, num_warps: int = 4):
    """Same contract as ``core_torch.backward_core``."""
    time, batch, hidden = grad_h.shape
    N, D = A_T.shape[0], Bm.shape[0]
    DP = grad_h.new_empty(time + 1, batch, hidden)
    DM = grad_h.new_empty(time + 1, batch, N)
    DU = grad_h.new_empty(time + 1, batch, D)
    DP[time], DM[time], DU[time] = 0, 0, 0  # nothing flows back from beyond the last step
    grid = (triton.cdiv(batch, block_b),)
    c = lambda x: x.t().contiguous()  # noqa: E731 - the kernels read every matrix row-major
    _lmu_cell_backward_kernel[grid](
        grad_h, _dummy(grad_h) if grad_m is None else grad_m, H_ext, c(A_T), c(Bm),
        _dummy(grad_h) if E_h is None else c(E_h), _dummy(grad_h) if E_m is None else c(E_m), c(W_m), c(W_h),
        DP, DM, DU, time, batch, hidden, N, D, **_blocks(D, block_b, block_k, block_n),
        HAS_EH=E_h is not None, HAS_EM=E_m is not None, HAS_GM=grad_m is not None, RELU=relu,
        PRECISION=precision, num_warps=num_warps)
    DP, DM, DU = DP[:time], DM[:time], DU[:time]
    # What flows into the initial state, as the torch core's carries.
    grad_h0 = DP[0] @ W_h.t()
    grad_m0 = DM[0] @ A_T.t()
    if E_h is not None:
        grad_h0 = torch.addmm(grad_h0, DU[0], E_h.t())
    if E_m is not None:
        grad_m0 = torch.addmm(grad_m0, DU[0], E_m.t())
    return DP, DM, DU, grad_h0, grad_m0
