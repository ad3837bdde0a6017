"""The sequential core of the fused LMU cell as two persistent Triton kernels (forward and backward).

The recurrence never leaves the kernel. Sequences never interact, so the batch is cut into blocks of
``BLOCK_B`` sequences; each block is served by a *group* of ``SPLIT`` programs that share every step's work by
columns: program k of a group computes the k-th, (k + SPLIT)-th, ... chunks of ``BLOCK_N`` columns of m_t and
of h_t. Each step has two phases (m_t, then h_t; in the backward pass dp_t, then dm_t), and the programs of a
group meet at a barrier after each phase: an atomic counter per group in global memory, bumped with release
semantics and polled with acquire semantics. States written by one program and read by another are loaded
with ``.cg`` (L2), but inside a loop feeding ``tl.dot`` Triton turns a load into an async copy whose cache mode
follows its width: 4-byte copies (batch or widths not multiples of 16, as at the psMNIST shape) go through L1
whatever the modifier (sm_90a SASS, read in a review of the convolution kernels). What makes every such read
see the other programs' writes is the barrier: the acquire poll compiles to a GPU-scope load followed by an L1
invalidation (CCTL.IVALL), and the release to MEMBAR.GPU before the add, with ``debug_barrier`` on both sides.
The weights (well under 1 MB at the psMNIST shape) stay in L2 across steps. A barrier is two halves
(``_group_arrive``, ``_group_wait``): a product that the group's next phase does not need runs between them,
while the member waits for the others (the resident kernels' docstrings say which).

Why split: one program per block of 16 sequences would do all of a step's 2.6 M multiply-adds (psMNIST shape)
on one SM while the other SMs idle; a group of SPLIT programs does it SPLIT times faster, at the cost of the
two barriers per step. All programs of a group must be resident at once: the launch keeps
``groups * SPLIT`` within the SM count, and the program id puts a group's members side by side.

The kernels fill exactly the buffers that ``core_torch`` fills; ``contime.ops.lmu_cell`` holds the
equations. ``precision`` sets Triton's ``input_precision`` of the products: "ieee" (float32 products), "tf32x3"
(three tf32 products, near float32), "tf32" (one; its ~1e-3 error per product compounds through the
recurrence: measured 15-24% relative error after 784 steps on an H100, so it is for experiments only), or
"mixed": tf32x3 for the memory's products, tf32 for the hidden cell's (see ``product_precisions``).

Tried and measured slower (H100, runs 7-9 of ``benchmarks/measured/issue6_h100``): one barrier per step, with
h_t computed from m_{t-1} (A_T W_m) + u_t (Bm W_m) so that m_t and h_t need only the previous step. The resident
forward then compiled to 32 registers with kilobytes of spills (one loaded state feeding several products kept
their converted copies alive together); with separate loads it compiled without spills for some tiles but still
ran 33 ms against these kernels' 15 ms (forward, h2m cell, psMNIST shape).

Under ``TRITON_INTERPRET=1`` the same kernels run on the CPU with numpy (programs one after another, so only
with SPLIT = 1, where the barrier never waits), which is how the tests check them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..triton_env import interpreting, launch_device


@triton.jit
def _tile(ptr, rows, cols, n_rows, n_cols, row_stride):
    """Load ptr[rows, cols] of a row-major matrix, zero outside (n_rows, n_cols)."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _state(ptr, rows, cols, n_rows, n_cols, row_stride):
    """Like ``_tile``, for a state written earlier in this launch (maybe by another program): ``.cg`` (L2) where
    Triton keeps the modifier; the group barrier's L1 invalidation covers the rest (module docstring)."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")


@triton.jit
def _put(ptr, value, rows, cols, n_rows, n_cols, row_stride):
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], value, mask=mask)


@triton.jit
def _add_product(acc, state_ptr, w_ptr, rows, cols, B, K, W_COLS, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """acc + state[rows, :K] @ w[:K, cols], in chunks of BLOCK_K: a (B, K) state written in this launch (read
    from L2) times a row-major (K, W_COLS) weight."""
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        acc += tl.dot(_state(state_ptr, rows, k0 + rk, B, K, K), _tile(w_ptr, k0 + rk, cols, K, W_COLS, W_COLS),
                      input_precision=PRECISION)
    return acc


@triton.jit
def _activation(pre, RELU: tl.constexpr):
    """h = act(pre): relu, or tanh."""
    if RELU:
        return tl.maximum(pre, 0.0)
    return 2.0 * tl.sigmoid(2.0 * pre) - 1.0  # tanh


@triton.jit
def _through_activation(grad, h, RELU: tl.constexpr):
    """d loss / d pre from d loss / d h, with act' written in terms of h = act(pre)."""
    if RELU:
        return tl.where(h > 0, grad, 0.0)
    return grad * (1.0 - h * h)


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    """a @ b. With one input dimension (D = 1, so BLOCK_D = 1) a product with E_h, E_m or Bm has an inner or outer
    size of 1: it is then a broadcast product, instead of a tensor-core product padded to 16 whose padded operand
    (a (256, 16) tile at the psMNIST shape) would stay live in registers for the whole sequence."""
    if b.shape[0] == 1:  # (M, 1) @ (1, N): an outer product
        return a * b
    elif b.shape[1] == 1:  # (M, K) @ (K, 1): a row reduction
        return tl.sum(a * tl.trans(b), axis=1, keep_dims=True)
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _program_in_group(sync_ptr, BLOCK_B: tl.constexpr):
    """(member, SPLIT, counter, rows): this program's place in its group (axis 0: which columns, of SPLIT
    members; axis 1: which BLOCK_B sequences), the group's barrier counter, and its sequences' row indices."""
    group = tl.program_id(1)
    return (tl.program_id(0), tl.num_programs(0), sync_ptr + group,
            group * BLOCK_B + tl.arange(0, BLOCK_B))


@triton.jit
def _group_arrive(counter_ptr):
    """The first half of ``_group_barrier``: announce that this program's stores so far are written. Work placed
    between this and ``_group_wait`` overlaps the wait for the group's other members (it must not write what
    they read before the barrier)."""
    tl.debug_barrier()  # this program's stores are issued before it announces them
    tl.atomic_add(counter_ptr, 1, sem="release")


@triton.jit
def _group_wait(counter_ptr, target):
    """The second half: wait until the group's programs have arrived ``target`` times in all."""
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire")
    while seen < target:
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _group_barrier(counter_ptr, target):
    """Wait until every program of the group has arrived here as often as ``target / SPLIT`` times."""
    _group_arrive(counter_ptr)
    _group_wait(counter_ptr, target)


@triton.jit
def _stage_product(target_ptr, state_ptr, w_ptr, rb, rn, member, SPLIT, B, K, BLOCK_B: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """target[rows, cols] = state[rows, :K] @ w[:K, cols] for this member's column chunks of a (K, K) weight: a
    term of a later phase (m_t A^T, dp_t W_h^T), staged in its own columns while the group arrives."""
    for j0 in range(member * BLOCK_N, K, SPLIT * BLOCK_N):
        acc = _add_product(tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32), state_ptr, w_ptr, rb, j0 + rn, B, K, K,
                           BLOCK_K, PRECISION)
        _put(target_ptr, acc, rb, j0 + rn, B, K, K)


@triton.jit
def _lmu_cell_forward_kernel(
        ux_ptr, xh_ptr, AT_ptr, Bm_ptr, Eh_ptr, Em_ptr, Wm_ptr, Wh_ptr,  # inputs
        H_ptr, M_ptr, U_ptr, sync_ptr,  # outputs: H_ext (T+1, B, H), M_ext (T+1, B, N), U (T, B, D); counters
        T, B, HID, N, D,
        BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_EH: tl.constexpr, HAS_EM: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr, MEMORY_PRECISION: tl.constexpr):
    member, SPLIT, counter, rb = _program_in_group(sync_ptr, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    rk = tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    # m0 A^T into this member's columns of M[1] (m0 was written to M[0] before the launch).
    _stage_product(M_ptr + B * N, M_ptr, AT_ptr, rb, rn, member, SPLIT, B, N, BLOCK_B, BLOCK_K, BLOCK_N,
                   MEMORY_PRECISION)
    tl.debug_barrier()  # other threads of this program read it back at the first step
    for t in range(T):
        tt = tl.cast(t, tl.int64)  # offsets of (T, B, .) buffers can pass 2**31
        h_prev = H_ptr + tt * B * HID
        m_prev = M_ptr + tt * B * N
        m_new = M_ptr + (tt + 1) * B * N
        h_new = H_ptr + (tt + 1) * B * HID
        # Phase 1: u_t = ux_t + h_{t-1} E_h + m_{t-1} E_m, (BLOCK_B, BLOCK_D); small, so every member computes it.
        u = _tile(ux_ptr + tt * B * D, rb, rd, B, D, D)
        if HAS_EH:
            for k0 in range(0, HID, BLOCK_K):
                u += _mm(_state(h_prev, rb, k0 + rk, B, HID, HID), _tile(Eh_ptr, k0 + rk, rd, HID, D, D),
                         MEMORY_PRECISION)
        if HAS_EM:
            for k0 in range(0, N, BLOCK_K):
                u += _mm(_state(m_prev, rb, k0 + rk, B, N, N), _tile(Em_ptr, k0 + rk, rd, N, D, D), MEMORY_PRECISION)
        if member == 0:
            _put(U_ptr + tt * B * D, u, rb, rd, B, D, D)
        # Phase 2: this member's column chunks of m_t = m_{t-1} A^T (left there at the last barrier) + u_t Bm.
        for j0 in range(member * BLOCK_N, N, SPLIT * BLOCK_N):
            acc = _tile(m_new, rb, j0 + rn, B, N, N) + _mm(u, _tile(Bm_ptr, rd, j0 + rn, D, N, N), MEMORY_PRECISION)
            _put(m_new, acc, rb, j0 + rn, B, N, N)
        _group_arrive(counter)  # this member's columns of m_t written
        # While the others arrive: xh_t + h_{t-1} W_h into this member's columns of h_t (read by none before
        # the next barrier).
        for j0 in range(member * BLOCK_N, HID, SPLIT * BLOCK_N):
            acc = _tile(xh_ptr + tt * B * HID, rb, j0 + rn, B, HID, HID)
            _put(h_new, _add_product(acc, h_prev, Wh_ptr, rb, j0 + rn, B, HID, HID, BLOCK_K, PRECISION),
                 rb, j0 + rn, B, HID, HID)
        _group_wait(counter, (2 * t + 1) * SPLIT)  # all of m_t written
        # Phase 3: this member's column chunks of h_t = act(xh_t + h_{t-1} W_h + m_t W_m).
        for j0 in range(member * BLOCK_N, HID, SPLIT * BLOCK_N):
            acc = _add_product(_tile(h_new, rb, j0 + rn, B, HID, HID), m_new, Wm_ptr, rb, j0 + rn, B, N, HID,
                               BLOCK_K, PRECISION)
            _put(h_new, _activation(acc, RELU), rb, j0 + rn, B, HID, HID)
        _group_arrive(counter)  # this member's columns of h_t written
        if t + 1 < T:  # m_t A^T into this member's columns of m_{t+1} (read by none before its barrier)
            _stage_product(M_ptr + (tt + 2) * B * N, m_new, AT_ptr, rb, rn, member, SPLIT, B, N, BLOCK_B, BLOCK_K,
                           BLOCK_N, MEMORY_PRECISION)
        _group_wait(counter, (2 * t + 2) * SPLIT)  # all of h_t written


@triton.jit
def _lmu_cell_backward_kernel(
        gh_ptr, gm_ptr, H_ptr, A_ptr, BmT_ptr, EhT_ptr, EmT_ptr, WmT_ptr, WhT_ptr,  # inputs
        DP_ptr, DM_ptr, DU_ptr, sync_ptr,  # outputs (T+1, B, .), entry T zero on entry; counters
        T, B, HID, N, D,
        BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_EH: tl.constexpr, HAS_EM: tl.constexpr, HAS_GM: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr, MEMORY_PRECISION: tl.constexpr):
    member, SPLIT, counter, rb = _program_in_group(sync_ptr, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    rk = tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    du_later = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)  # du_{t+1}: every member keeps its own copy
    # dp_T W_h^T = 0 into this member's columns of DP[T - 1], where each step finds the term it needs.
    for j0 in range(member * BLOCK_N, HID, SPLIT * BLOCK_N):
        _put(DP_ptr + (T - 1) * B * HID, tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32), rb, j0 + rn, B, HID, HID)
    tl.debug_barrier()  # other threads of this program read it back at the first step
    for step in range(T):
        t = T - 1 - step
        tt = tl.cast(t, tl.int64)  # offsets of (T, B, .) buffers can pass 2**31
        dm_next = DM_ptr + (tt + 1) * B * N
        dp_now = DP_ptr + tt * B * HID
        dm_now = DM_ptr + tt * B * N
        # Phase 1: dp_t = (gh_t + dp_{t+1} W_h^T (left there at the last barrier) + du_{t+1} E_h^T) * act'(h_t),
        # this member's chunks.
        for j0 in range(member * BLOCK_N, HID, SPLIT * BLOCK_N):
            acc = _tile(gh_ptr + tt * B * HID, rb, j0 + rn, B, HID, HID) + _tile(dp_now, rb, j0 + rn, B, HID, HID)
            if HAS_EH:
                acc += _mm(du_later, _tile(EhT_ptr, rd, j0 + rn, D, HID, HID), MEMORY_PRECISION)
            h = _tile(H_ptr + (tt + 1) * B * HID, rb, j0 + rn, B, HID, HID)
            _put(dp_now, _through_activation(acc, h, RELU), rb, j0 + rn, B, HID, HID)
        _group_arrive(counter)  # this member's columns of dp_t written
        # While the others arrive: gm_t + dm_{t+1} A + du_{t+1} E_m^T into this member's columns of dm_t (read by
        # none before the next barrier).
        for j0 in range(member * BLOCK_N, N, SPLIT * BLOCK_N):
            if HAS_GM:
                acc = _tile(gm_ptr + tt * B * N, rb, j0 + rn, B, N, N)
            else:
                acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            acc = _add_product(acc, dm_next, A_ptr, rb, j0 + rn, B, N, N, BLOCK_K, MEMORY_PRECISION)
            if HAS_EM:
                acc += _mm(du_later, _tile(EmT_ptr, rd, j0 + rn, D, N, N), MEMORY_PRECISION)
            _put(dm_now, acc, rb, j0 + rn, B, N, N)
        _group_wait(counter, (2 * step + 1) * SPLIT)  # all of dp_t written
        # Phase 2: dm_t = (the above) + dp_t W_m^T, this member's chunks.
        for j0 in range(member * BLOCK_N, N, SPLIT * BLOCK_N):
            acc = _add_product(_tile(dm_now, rb, j0 + rn, B, N, N), dp_now, WmT_ptr, rb, j0 + rn, B, HID, N,
                               BLOCK_K, PRECISION)
            _put(dm_now, acc, rb, j0 + rn, B, N, N)
        _group_arrive(counter)  # this member's columns of dm_t written
        if t > 0:  # dp_t W_h^T into this member's columns of dp_{t-1} (read by none before its barrier)
            _stage_product(dp_now - B * HID, dp_now, WhT_ptr, rb, rn, member, SPLIT, B, HID, BLOCK_B, BLOCK_K,
                           BLOCK_N, PRECISION)
        _group_wait(counter, (2 * step + 2) * SPLIT)  # all of dm_t written
        # Phase 3: du_t = dm_t Bm^T, small: every member computes it; one stores it.
        du = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, N, BLOCK_K):
            du += _mm(_state(dm_now, rb, k0 + rk, B, N, N), _tile(BmT_ptr, k0 + rk, rd, N, D, D),
                      MEMORY_PRECISION)
        if member == 0:
            _put(DU_ptr + tt * B * D, du, rb, rd, B, D, D)
        du_later = du


@triton.jit
def _lmu_cell_forward_resident_kernel(
        ux_ptr, xh_ptr, AT_ptr, Bm_ptr, Eh_ptr, Em_ptr, Wm_ptr, Wh_ptr, H_ptr, M_ptr, U_ptr, sync_ptr,
        T, B, HID, N, D,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr, HP: tl.constexpr,
        HAS_EH: tl.constexpr, HAS_EM: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr, MEMORY_PRECISION: tl.constexpr):
    """The forward with each member's weight columns held on chip for the whole sequence: member k owns the
    k-th chunk of BLOCK_N columns of m and of h (the group has cdiv(max(N, H), BLOCK_N) members), so a step
    is five products and two barriers. NP, HP: N and H rounded up to powers of two.

    Two of the three large products run while the member waits for its group, between its arrival at a barrier
    and the last member's: h_{t-1} W_h (h_{t-1} is read when the step begins), and m_t A_T, the next step's
    memory less its input term, which waits in the member's columns of M[t + 2] until the next step adds
    u_{t+1} Bm. Only m_t W_m stays on the path from one barrier to the next. Each of the two products of m_t
    has a load of its own: carried in registers instead, or one load feeding both, made ptxas spill kilobytes
    in every tile (benchmarks/triton_registers.py; as written, the same four tiles as before are free of
    spills, and 16 / 4 too)."""
    member, SPLIT, counter, rb = _program_in_group(sync_ptr, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    rn_all = tl.arange(0, NP)
    rh_all = tl.arange(0, HP)
    cols = member * BLOCK_N + tl.arange(0, BLOCK_N)
    A_cols = _tile(AT_ptr, rn_all, cols, N, N, N)  # (NP, BLOCK_N)
    B_cols = _tile(Bm_ptr, rd, cols, D, N, N)  # (BLOCK_D, BLOCK_N)
    Wm_cols = _tile(Wm_ptr, rn_all, cols, N, HID, HID)  # (NP, BLOCK_N)
    Wh_cols = _tile(Wh_ptr, rh_all, cols, HID, HID, HID)  # (HP, BLOCK_N)
    if HAS_EH:
        Eh = _tile(Eh_ptr, rh_all, rd, HID, D, D)  # (HP, BLOCK_D)
    if HAS_EM:
        Em = _tile(Em_ptr, rn_all, rd, N, D, D)  # (NP, BLOCK_D)
    # m0 A_T into this member's columns of M[1] (m0 itself was written to M[0] before the launch).
    _put(M_ptr + B * N, tl.dot(_tile(M_ptr, rb, rn_all, B, N, N), A_cols, input_precision=MEMORY_PRECISION),
         rb, cols, B, N, N)
    tl.debug_barrier()  # other threads of this program read it back at the first step
    for t in range(T):
        tt = tl.cast(t, tl.int64)  # offsets of (T, B, .) buffers can pass 2**31
        h_prev = _state(H_ptr + tt * B * HID, rb, rh_all, B, HID, HID)  # (BLOCK_B, HP)
        u = _tile(ux_ptr + tt * B * D, rb, rd, B, D, D)
        if HAS_EH:
            u += _mm(h_prev, Eh, MEMORY_PRECISION)
        if HAS_EM:
            u += _mm(_state(M_ptr + tt * B * N, rb, rn_all, B, N, N), Em, MEMORY_PRECISION)
        if member == 0:
            _put(U_ptr + tt * B * D, u, rb, rd, B, D, D)
        # m_t = m_{t-1} A_T (this member's columns, from the last barrier) + u_t Bm
        m = _tile(M_ptr + (tt + 1) * B * N, rb, cols, B, N, N) + _mm(u, B_cols, MEMORY_PRECISION)
        _put(M_ptr + (tt + 1) * B * N, m, rb, cols, B, N, N)
        _group_arrive(counter)  # this member's columns of m_t written
        pre = _tile(xh_ptr + tt * B * HID, rb, cols, B, HID, HID) + tl.dot(h_prev, Wh_cols, input_precision=PRECISION)
        _group_wait(counter, (2 * t + 1) * SPLIT)  # all of m_t written
        pre += tl.dot(_state(M_ptr + (tt + 1) * B * N, rb, rn_all, B, N, N), Wm_cols, input_precision=PRECISION)
        _put(H_ptr + (tt + 1) * B * HID, _activation(pre, RELU), rb, cols, B, HID, HID)
        _group_arrive(counter)  # this member's columns of h_t written
        if t + 1 < T:  # m_t A_T for the next step; nobody reads M[t + 2] before its barrier
            _put(M_ptr + (tt + 2) * B * N, tl.dot(_state(M_ptr + (tt + 1) * B * N, rb, rn_all, B, N, N), A_cols,
                                                  input_precision=MEMORY_PRECISION), rb, cols, B, N, N)
        _group_wait(counter, (2 * t + 2) * SPLIT)  # all of h_t written


@triton.jit
def _lmu_cell_backward_resident_kernel(
        gh_ptr, gm_ptr, H_ptr, A_ptr, BmT_ptr, EhT_ptr, EmT_ptr, WmT_ptr, WhT_ptr, DP_ptr, DM_ptr, DU_ptr, sync_ptr,
        T, B, HID, N, D,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr, HP: tl.constexpr,
        HAS_EH: tl.constexpr, HAS_EM: tl.constexpr, HAS_GM: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr, MEMORY_PRECISION: tl.constexpr):
    """The backward counterpart of ``_lmu_cell_forward_resident_kernel``: dm_{t+1} A and dp_t W_h^T (the next
    step's, carried in registers: no spills in the four tiles of before, nor at 32 / 4 and 64 / 8) run while the
    member waits at a barrier, dp_t W_m^T between the barriers."""
    member, SPLIT, counter, rb = _program_in_group(sync_ptr, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    rn_all = tl.arange(0, NP)
    rh_all = tl.arange(0, HP)
    cols = member * BLOCK_N + tl.arange(0, BLOCK_N)
    WhT_cols = _tile(WhT_ptr, rh_all, cols, HID, HID, HID)  # (HP, BLOCK_N)
    A_cols = _tile(A_ptr, rn_all, cols, N, N, N)  # (NP, BLOCK_N)
    WmT_cols = _tile(WmT_ptr, rh_all, cols, HID, N, N)  # (HP, BLOCK_N)
    BmT = _tile(BmT_ptr, rn_all, rd, N, D, D)  # (NP, BLOCK_D)
    if HAS_EH:
        EhT_cols = _tile(EhT_ptr, rd, cols, D, HID, HID)  # (BLOCK_D, BLOCK_N)
    if HAS_EM:
        EmT_cols = _tile(EmT_ptr, rd, cols, D, N, N)
    du_later = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    carried = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)  # dp_{t+1} W_h^T, this member's columns (0 at the end)
    for step in range(T):
        t = T - 1 - step
        tt = tl.cast(t, tl.int64)  # offsets of (T, B, .) buffers can pass 2**31
        dm_next = _state(DM_ptr + (tt + 1) * B * N, rb, rn_all, B, N, N)
        dp = _tile(gh_ptr + tt * B * HID, rb, cols, B, HID, HID) + carried
        if HAS_EH:
            dp += _mm(du_later, EhT_cols, MEMORY_PRECISION)
        dp = _through_activation(dp, _tile(H_ptr + (tt + 1) * B * HID, rb, cols, B, HID, HID), RELU)
        _put(DP_ptr + tt * B * HID, dp, rb, cols, B, HID, HID)
        _group_arrive(counter)  # this member's columns of dp_t written
        dm = tl.dot(dm_next, A_cols, input_precision=MEMORY_PRECISION)
        if HAS_GM:
            dm += _tile(gm_ptr + tt * B * N, rb, cols, B, N, N)
        if HAS_EM:
            dm += _mm(du_later, EmT_cols, MEMORY_PRECISION)
        _group_wait(counter, (2 * step + 1) * SPLIT)  # all of dp_t written
        dm += tl.dot(_state(DP_ptr + tt * B * HID, rb, rh_all, B, HID, HID), WmT_cols, input_precision=PRECISION)
        _put(DM_ptr + tt * B * N, dm, rb, cols, B, N, N)
        _group_arrive(counter)  # this member's columns of dm_t written
        carried = tl.dot(_state(DP_ptr + tt * B * HID, rb, rh_all, B, HID, HID), WhT_cols,
                         input_precision=PRECISION)  # for dp_{t-1}
        _group_wait(counter, (2 * step + 2) * SPLIT)  # all of dm_t written
        dm_now = _state(DM_ptr + tt * B * N, rb, rn_all, B, N, N)
        du = _mm(dm_now, BmT, MEMORY_PRECISION)
        if member == 0:
            _put(DU_ptr + tt * B * D, du, rb, rd, B, D, D)
        du_later = du


# Tile shapes tried by the autotuner on a GPU (per batch, hidden, memory and input size); the interpreter
# takes the first.
# BLOCK_K, BLOCK_N, warps of the chunked kernels. ptxas (benchmarks/triton_registers.py) at the psMNIST widths,
# D = 1: with 4 warps only 32 / 16 / 4 compiles without spills in both precisions ("ieee" and "mixed"); with 8
# warps 32 / 32 does too, and 32 / 16 in "mixed" (20-28 bytes of spills in "ieee").
CELL_CONFIGS = [(32, 32, 4), (64, 32, 4), (32, 16, 4), (32, 64, 4), (32, 32, 8), (32, 16, 8), (32, 64, 8)]
# BLOCK_N, warps of the resident kernels. The weights they hold grow with BLOCK_N and are spread over the warps:
# ptxas (benchmarks/triton_registers.py, from the CPU) finds 16 / 4, 16 / 8, 16 / 16, 32 / 8 and 32 / 16 free of
# spills at the psMNIST widths with D = 1 in float32, while the forward at 32 / 4 and 64 / 8 spills over a
# kilobyte (their backward does not). Which is fastest is measured by the autotuner on the GPU.
RESIDENT_CONFIGS = [(16, 4), (16, 8), (16, 16), (32, 4), (32, 8), (32, 16), (64, 8), (64, 16)]
RESIDENT_MAX_WIDTH = 256  # N and H (rounded up to powers of two) up to which the weights stay on chip
BLOCK_B = 16  # the smallest row count of a tensor-core product
STYLES = ("auto", "resident", "chunked")
DEFAULT_STYLE = "auto"


def _padded(size: int) -> int:
    """A state width as the kernels hold it: the next power of two, at least 16 (a tensor-core product needs
    K >= 16; the masks zero the padding)."""
    return max(16, triton.next_power_of_2(size))


def _input_width(D: int) -> int:
    """BLOCK_D: 1 for one input dimension (``_mm`` then broadcasts instead of padding a product), else padded."""
    return 1 if D == 1 else _padded(D)


def product_precisions(precision: str) -> dict:
    """The kernels' input precisions for ``precision``: PRECISION for the hidden cell's products (W_h, W_m) and
    MEMORY_PRECISION for the memory's (A_T, Bm, E_h, E_m). "mixed" runs the memory's in tf32x3: A_T multiplies
    the state at every step, so a tf32 rounding of it compounds over the sequence (the whole cell in tf32
    measured 0.16 relative error after 784 steps on an H100), while the hidden products' rounding is added once
    per step and squashed by the activation, as in cuDNN's TF32 LSTM."""
    if precision == "mixed":
        return {"PRECISION": "tf32", "MEMORY_PRECISION": "tf32x3"}
    return {"PRECISION": precision, "MEMORY_PRECISION": precision}


def _dummy(like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros(1)


def available_sms(device: torch.device) -> int:
    """The SMs this process can hold programs on at once: all of the device's, or under MPS with
    ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` that share of them (the device still reports all, and a group whose
    members cannot all be resident would wait forever at its barrier)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    share = os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    if share:
        try:
            sms = max(1, int(sms * min(float(share), 100.0) / 100.0))
        except ValueError:
            pass  # not a number: CUDA ignores it too
    return sms


def _group_size(batch: int, columns: int, block_n: int, device: torch.device) -> int:
    """Programs per group of BLOCK_B sequences: one per chunk of ``block_n`` columns of the widest state, but
    never more programs than SMs (members of a group wait for each other, so all must be resident at once);
    1 in the interpreter, which runs programs one after another."""
    if interpreting() or device.type != "cuda":
        return 1
    groups = triton.cdiv(batch, BLOCK_B)
    return max(1, min(triton.cdiv(columns, block_n), available_sms(device) // groups))


_TUNED: dict = {}


def _resident_widths(batch: int, N: int, hidden: int, device: torch.device) -> list[int]:
    """The BLOCK_N of the resident kernels that fit: weights of at most RESIDENT_MAX_WIDTH rows, and a grid of
    groups * cdiv(max(N, H), BLOCK_N) programs that the SMs hold at once. In the interpreter (programs run one
    after another) only one member per group: BLOCK_N covers the widest state."""
    NP, HP = _padded(N), _padded(hidden)
    if max(NP, HP) > RESIDENT_MAX_WIDTH:
        return []
    if interpreting() or device.type != "cuda":
        return [max(NP, HP)]
    groups = triton.cdiv(batch, BLOCK_B)
    sms = available_sms(device)
    return [n for n, _ in RESIDENT_CONFIGS if groups * triton.cdiv(max(N, hidden), n) <= sms]


def wants_resident(style: str, precisions: dict) -> bool:
    """Whether ``style`` asks for the resident kernels with these ``product_precisions``. With tensor-core
    products they spill in every tile at the psMNIST widths (ptxas: 1.2-13 KB of spill stores per thread in
    tf32x3, 40 B-5 KB in "mixed"; benchmarks/triton_registers.py), so "auto" keeps them for "ieee" products,
    where four tiles compile without spills."""
    tensor_cores = any(p != "ieee" for p in precisions.values())
    return style == "resident" or style == "auto" and not tensor_cores


def _launch(chunked_kernel, resident_kernel, name: str, style: str, sizes: tuple, device: torch.device,
            **kwargs):
    """``sizes`` = (batch, N, H). Launch the resident kernel where it fits (``style`` "auto" or "resident"), else
    the chunked one; behind Triton's autotuner on a GPU (its trial runs reset the barrier counters), plain in the
    interpreter."""
    batch, N, hidden = sizes
    style = style or DEFAULT_STYLE
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    groups = triton.cdiv(batch, BLOCK_B)
    resident = wants_resident(style, {k: kwargs[k] for k in ("PRECISION", "MEMORY_PRECISION")})
    widths = _resident_widths(batch, N, hidden, device) if resident else []
    if style == "resident" and not widths:
        raise ValueError(f"the resident kernels need N and H <= {RESIDENT_MAX_WIDTH} and a grid the SMs hold; "
                         f"got N={N}, H={hidden}, batch={batch}")
    if widths:
        kernel, extra = resident_kernel, {"NP": _padded(N), "HP": _padded(hidden)}
        configs = [({"BLOCK_N": n}, w) for n, w in RESIDENT_CONFIGS if n in widths] or [({"BLOCK_N": widths[0]}, 4)]
        grid = lambda meta: (triton.cdiv(max(N, hidden), meta["BLOCK_N"]), groups)  # noqa: E731
    else:
        kernel, extra = chunked_kernel, {}
        configs = [({"BLOCK_K": k, "BLOCK_N": n}, w) for k, n, w in CELL_CONFIGS]
        grid = lambda meta: (_group_size(batch, max(N, hidden), meta["BLOCK_N"], device), groups)  # noqa: E731
    launch_autotuned(name, kernel, configs, grid, device, ["HID", "N", "D", "PRECISION", "MEMORY_PRECISION"],
                     **kwargs, **extra)


def launch_autotuned(name: str, kernel, configs: list, grid, device: torch.device, tune_key: list,
                     reset: tuple = ("sync_ptr",), **kwargs):
    """Launch a kernel with a group barrier behind Triton's autotuner on a GPU, or with the first of ``configs``
    ((meta, warps) pairs) in the interpreter. ``tune_key``: the arguments whose values retune; leave the batch
    out (a last partial batch would retune everything). ``reset``: the buffers zeroed before each trial run (the
    barrier counters, and any buffer the kernel accumulates into)."""
    if interpreting():
        meta, warps = configs[0]
        kernel[grid(meta)](**kwargs, **meta, num_warps=warps)
        return
    key = (name, kernel.__name__, tuple(sorted(str(c) for c in configs)))
    if key not in _TUNED:
        _TUNED[key] = triton.autotune(configs=[triton.Config(meta, num_warps=w) for meta, w in configs],
                                      key=tune_key, reset_to_zero=list(reset))(kernel)
    _TUNED[name] = _TUNED[key]  # the last one used, for gpu_kernel_tune.py
    with launch_device(device):
        _TUNED[key][grid](**kwargs)


def forward_core(ux, xh, A_T, Bm, E_h, E_m, W_m, W_h, m0, h0, relu: bool, precision: str = "ieee",
                 style: str | None = None):
    """Same contract as ``core_torch.forward_core``; every tensor float32 and contiguous on one device.
    ``style``: "resident" (weights on chip; where they fit), "chunked", or "auto" (resident where it fits, for
    "ieee" products only; see ``_launch``); None: ``DEFAULT_STYLE``."""
    time, batch, D = ux.shape
    if time < 1:  # the kernels write m0 A_T into M[1] before their first step
        raise ValueError(f"the fused cell needs at least one step, got ux of shape {tuple(ux.shape)}")
    hidden, N = W_h.shape[0], A_T.shape[0]
    H_ext = ux.new_empty(time + 1, batch, hidden)
    M_ext = ux.new_empty(time + 1, batch, N)
    U = torch.empty_like(ux)
    H_ext[0], M_ext[0] = h0, m0
    counters = torch.zeros(triton.cdiv(batch, BLOCK_B), dtype=torch.int32, device=ux.device)
    dummy = _dummy(ux)
    _launch(_lmu_cell_forward_kernel, _lmu_cell_forward_resident_kernel, "forward", style, (batch, N, hidden),
            ux.device, ux_ptr=ux, xh_ptr=xh, AT_ptr=A_T, Bm_ptr=Bm, Eh_ptr=dummy if E_h is None else E_h,
            Em_ptr=dummy if E_m is None else E_m, Wm_ptr=W_m, Wh_ptr=W_h, H_ptr=H_ext, M_ptr=M_ext, U_ptr=U,
            sync_ptr=counters, T=time, B=batch, HID=hidden, N=N, D=D, BLOCK_B=BLOCK_B, BLOCK_D=_input_width(D),
            HAS_EH=E_h is not None, HAS_EM=E_m is not None, RELU=relu, **product_precisions(precision))
    return H_ext, M_ext, U


def backward_core(grad_h, grad_m, H_ext, A_T, Bm, E_h, E_m, W_m, W_h, relu: bool, precision: str = "ieee",
                  style: str | None = None):
    """Same contract as ``core_torch.backward_core``; ``style`` as in ``forward_core``."""
    time, batch, hidden = grad_h.shape
    N, D = A_T.shape[0], Bm.shape[0]
    DP = grad_h.new_empty(time + 1, batch, hidden)
    DM = grad_h.new_empty(time + 1, batch, N)
    DU = grad_h.new_empty(time + 1, batch, D)
    DP[time], DM[time], DU[time] = 0, 0, 0  # nothing flows back from beyond the last step
    counters = torch.zeros(triton.cdiv(batch, BLOCK_B), dtype=torch.int32, device=grad_h.device)
    c = lambda x: x.t().contiguous()  # noqa: E731 - the kernels read every matrix row-major
    dummy = _dummy(grad_h)
    _launch(_lmu_cell_backward_kernel, _lmu_cell_backward_resident_kernel, "backward", style,
            (batch, N, hidden), grad_h.device, gh_ptr=grad_h, gm_ptr=dummy if grad_m is None else grad_m,
            H_ptr=H_ext, A_ptr=c(A_T), BmT_ptr=c(Bm), EhT_ptr=dummy if E_h is None else c(E_h),
            EmT_ptr=dummy if E_m is None else c(E_m), WmT_ptr=c(W_m), WhT_ptr=c(W_h), DP_ptr=DP, DM_ptr=DM,
            DU_ptr=DU, sync_ptr=counters, T=time, B=batch, HID=hidden, N=N, D=D, BLOCK_B=BLOCK_B,
            BLOCK_D=_input_width(D), HAS_EH=E_h is not None, HAS_EM=E_m is not None, HAS_GM=grad_m is not None,
            RELU=relu, **product_precisions(precision))
    DP, DM, DU = DP[:time], DM[:time], DU[:time]
    # What flows into the initial state, as the torch core's carries.
    grad_h0 = DP[0] @ W_h.t()
    grad_m0 = DM[0] @ A_T.t()
    if E_h is not None:
        grad_h0 = torch.addmm(grad_h0, DU[0], E_h.t())
    if E_m is not None:
        grad_m0 = torch.addmm(grad_m0, DU[0], E_m.t())
    return DP, DM, DU, grad_h0, grad_m0
