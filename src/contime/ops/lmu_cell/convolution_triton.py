"""The convolution algorithm of the LMU cell (``convolution``) as two persistent Triton kernels.

As in ``core_triton``, the batch is cut into blocks of BLOCK_B sequences, each served by a group of SPLIT
programs that share the columns of h_t and meet at a barrier in global memory; here once per step:

- forward, step t: every member reads h_{t-1} whole, computes u_t = ux_t + h_{t-1} E_h itself (a row sum:
  member 0 also stores it), and for its columns of h_t adds h_{t-1} W_h and the convolution
  sum_{s<t} u_s K_{t-s} (one product per BLOCK_S earlier steps, u_s read back from U) + u_t K_0.
- backward, step t (from the last): every member reads dp_{t+1} whole and the members' partial sums of
  du_{t+1}, computes dp_t for its columns, and pushes them into the partial sums of every earlier input:
  ACC[member, s] += dp_t[cols] . K_{t-s}[cols] for s <= t (one product per BLOCK_S inputs). The sums for s
  are complete once step s is done. Pushing forward reads K (T x H, in L2) at each step; pulling the same sums
  from dp's history instead would read that history, (T - t) x B x H values per step, from memory.

The barrier is split in two (``_group_arrive``, ``_group_wait``), and the work that the group's next step does
not wait for runs between: in the forward, step t+1's sum over the inputs up to t for the member's first chunk
of columns (u_t from registers: member 0's store of it is seen by the others only after the barrier); in the
backward, the first chunk's pushes into the inputs before t (the sum of input t, which the next step reads,
is pushed before arriving). That sum grows with t; off the path from barrier to barrier it costs time only
where it outlasts the others' arrival (not yet timed on a GPU). A member with further chunks (fewer SMs than
columns / BLOCK_N) computes theirs on that path, as before.

Without the convolution (HAS_CONV False) the same kernels run a plain Elman recurrence, h_t = act(p_t +
h_{t-1} W_h): ``elman_forward`` / ``elman_backward``, the hidden part of the parallel LMU modes.

No weight stays on chip across steps (the resident kernels of ``core_triton`` spill with tensor-core products):
W_h and K are read from L2 at every step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .core_triton import (BLOCK_B, _activation, _add_product, _dummy, _group_arrive, _group_size, _group_wait,
                          _program_in_group, _put, _state, _through_activation, _tile, launch_autotuned,
                          product_precisions)

# BLOCK_N (columns of h per member), BLOCK_K (rows of W_h per product), BLOCK_S (earlier steps per product),
# warps; the autotuner picks on the GPU.
CONFIGS = [(16, 32, 32, 4), (16, 32, 64, 4), (32, 32, 32, 4), (16, 32, 32, 8), (32, 32, 64, 8), (16, 64, 64, 8)]


@triton.jit
def _earlier_inputs(acc, U_ptr, K_ptr, rb, b_ok, cols, c_ok, t, count, B, HID,
                    BLOCK_S: tl.constexpr, PRECISION: tl.constexpr):
    """acc + sum_{s < count} u_s K_{t-s}[cols]: step t's convolution over the inputs stored at steps before
    ``count`` (read back from U), one product per BLOCK_S of them."""
    rs = tl.arange(0, BLOCK_S)
    for s0 in range(0, count, BLOCK_S):
        s = s0 + rs
        earlier = s < count
        us = tl.load(U_ptr + s[None, :].to(tl.int64) * B + rb[:, None], mask=b_ok[:, None] & earlier[None, :],
                     other=0.0, cache_modifier=".cg")  # (BLOCK_B, BLOCK_S)
        ks = tl.load(K_ptr + (t - s)[:, None].to(tl.int64) * HID + cols[None, :],
                     mask=earlier[:, None] & c_ok[None, :], other=0.0)  # (BLOCK_S, BLOCK_N): K_{t-s}
        acc += tl.dot(us, ks, input_precision=PRECISION)
    return acc


@triton.jit
def _push(dp, mine, K_ptr, rb, b_ok, cols, c_ok, t, count, B, HID, BLOCK_S: tl.constexpr, PRECISION: tl.constexpr):
    """mine[s] += dp_t[cols] . K_{t-s}[cols] for s < count: step t's pushes into the partial sums of the inputs
    before ``count``, one product per BLOCK_S of them (mine: this member's (T, B) row of partial sums)."""
    rs = tl.arange(0, BLOCK_S)
    for s0 in range(0, count, BLOCK_S):
        s = s0 + rs
        ok = s < count
        k_t = tl.load(K_ptr + (t - s)[None, :].to(tl.int64) * HID + cols[:, None],
                      mask=c_ok[:, None] & ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_S): K_{t-s}^T
        sums = mine + s[None, :].to(tl.int64) * B + rb[:, None]
        keep = b_ok[:, None] & ok[None, :]
        so_far = tl.load(sums, mask=keep, other=0.0)
        tl.store(sums, so_far + tl.dot(dp, k_t, input_precision=PRECISION), mask=keep)


@triton.jit
def _convolution_forward_kernel(
        ux_ptr, xh_ptr, K_ptr, eh_ptr, Wh_ptr,  # inputs
        H_ptr, U_ptr, sync_ptr,  # outputs: H_ext (T+1, B, H) with H_ext[0] = h0, U (T, B); counters
        T, B, HID,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
        HAS_CONV: tl.constexpr, HAS_EH: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr):
    member, SPLIT, counter, rb = _program_in_group(sync_ptr, BLOCK_B)
    rk = tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    b_ok = rb < B
    own = member * BLOCK_N + rn  # the member's first chunk of columns (its only one when SPLIT BLOCK_N >= HID)
    own_ok = own < HID
    # sum_{s<t} u_s K_{t-s} for the first chunk, computed during the previous step's barrier (module docstring)
    ahead = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for t in range(T):
        tt = tl.cast(t, tl.int64)  # offsets of (T, B, H) buffers can pass 2**31
        h_prev = H_ptr + tt * B * HID
        if HAS_CONV:
            u = tl.load(ux_ptr + tt * B + rb, mask=b_ok, other=0.0)  # (BLOCK_B,)
            if HAS_EH:
                for k0 in range(0, HID, BLOCK_K):
                    eh = tl.load(eh_ptr + k0 + rk, mask=k0 + rk < HID, other=0.0)
                    u += tl.sum(_state(h_prev, rb, k0 + rk, B, HID, HID) * eh[None, :], axis=1)
            if member == 0:
                tl.store(U_ptr + tt * B + rb, u, mask=b_ok)
        for j0 in range(member * BLOCK_N, HID, SPLIT * BLOCK_N):
            cols = j0 + rn
            c_ok = cols < HID
            acc = _add_product(_tile(xh_ptr + tt * B * HID, rb, cols, B, HID, HID), h_prev, Wh_ptr, rb, cols, B, HID,
                               HID, BLOCK_K, PRECISION)
            if HAS_CONV:
                acc += u[:, None] * tl.load(K_ptr + cols, mask=c_ok, other=0.0)[None, :]  # s = t: K_0
                if j0 == member * BLOCK_N:
                    acc += ahead
                else:  # a further chunk (too few SMs for one member per chunk): its sum now
                    acc = _earlier_inputs(acc, U_ptr, K_ptr, rb, b_ok, cols, c_ok, t, t, B, HID, BLOCK_S, PRECISION)
            _put(H_ptr + (tt + 1) * B * HID, _activation(acc, RELU), rb, cols, B, HID, HID)
        _group_arrive(counter)  # all of this member's h_t written
        if HAS_CONV:
            if t + 1 < T:  # while the others arrive: step t+1's sum over the inputs up to t, for the first chunk
                # u_t from registers: member 0's store of it is seen by the others only after the barrier.
                ahead = u[:, None] * tl.load(K_ptr + HID + own, mask=own_ok, other=0.0)[None, :]  # s = t: K_1
                ahead = _earlier_inputs(ahead, U_ptr, K_ptr, rb, b_ok, own, own_ok, t + 1, t, B, HID, BLOCK_S,
                                        PRECISION)
        _group_wait(counter, (t + 1) * SPLIT)  # all of h_t written


@triton.jit
def _convolution_backward_kernel(
        gh_ptr, gu_ptr, H_ptr, K_ptr, eh_ptr, WhT_ptr,  # inputs
        DP_ptr, DU_ptr, ACC_ptr, sync_ptr,  # outputs (T+1, B, H) with DP[T] = 0, (T+1, B); (MEMBERS, T, B) zeros
        T, B, HID,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
        MEMBERS: tl.constexpr, HAS_CONV: tl.constexpr, HAS_EH: tl.constexpr, HAS_GU: tl.constexpr,
        RELU: tl.constexpr, PRECISION: tl.constexpr):
    member, SPLIT, counter, rb = _program_in_group(sync_ptr, BLOCK_B)
    rn = tl.arange(0, BLOCK_N)
    rm = tl.arange(0, MEMBERS)
    b_ok = rb < B
    mine = ACC_ptr + member * T * B  # this member's row of partial sums: (T, B)
    own = member * BLOCK_N + rn  # the member's first chunk of columns
    own_ok = own < HID
    dp_own = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)  # its dp_t, pushed into s < t during the barrier
    for step in range(T):
        t = T - 1 - step
        tt = tl.cast(t, tl.int64)  # offsets of (T, B, H) buffers can pass 2**31
        dp_next = DP_ptr + (tt + 1) * B * HID
        if HAS_CONV:  # du_{t+1}: every member's pushes into step t+1 are complete since the last barrier.
            later = t + 1 < T
            parts = tl.load(ACC_ptr + rm[:, None] * T * B + (tt + 1) * B + rb[None, :],
                            mask=(rm[:, None] < SPLIT) & b_ok[None, :] & later, other=0.0, cache_modifier=".cg")
            du_next = tl.sum(parts, axis=0)  # (BLOCK_B,)
            if HAS_GU:
                du_next += tl.load(gu_ptr + (tt + 1) * B + rb, mask=b_ok & later, other=0.0)
            if member == 0:
                tl.store(DU_ptr + (tt + 1) * B + rb, du_next, mask=b_ok)
        for j0 in range(member * BLOCK_N, HID, SPLIT * BLOCK_N):
            cols = j0 + rn
            c_ok = cols < HID
            g = _add_product(_tile(gh_ptr + tt * B * HID, rb, cols, B, HID, HID), dp_next, WhT_ptr, rb, cols, B, HID,
                             HID, BLOCK_K, PRECISION)
            if HAS_EH:
                g += du_next[:, None] * tl.load(eh_ptr + cols, mask=c_ok, other=0.0)[None, :]
            dp = _through_activation(g, _tile(H_ptr + (tt + 1) * B * HID, rb, cols, B, HID, HID), RELU)
            _put(DP_ptr + tt * B * HID, dp, rb, cols, B, HID, HID)
            if HAS_CONV:
                # Push dp_t into every earlier input's sum: ACC[member, s] += dp_t[cols] . K_{t-s}[cols], s <= t.
                # The next step reads the sums of s = t: pushed now. The first chunk's pushes into s < t wait
                # until this member has arrived at the barrier; a further chunk's go now.
                at_t = mine + tt * B + rb
                k_0 = tl.load(K_ptr + cols, mask=c_ok, other=0.0)
                tl.store(at_t, tl.load(at_t, mask=b_ok, other=0.0) + tl.sum(dp * k_0[None, :], axis=1), mask=b_ok)
                if j0 == member * BLOCK_N:
                    dp_own = dp
                else:  # inputs before t: other sums than the one just added to
                    _push(dp, mine, K_ptr, rb, b_ok, cols, c_ok, t, t, B, HID, BLOCK_S, PRECISION)
                tl.debug_barrier()  # the next column chunk adds to the same sums
        _group_arrive(counter)  # all of dp_t and the pushes into step t written
        if HAS_CONV:  # needed from step s - 1 on, after this member's next arrival
            _push(dp_own, mine, K_ptr, rb, b_ok, own, own_ok, t, t, B, HID, BLOCK_S, PRECISION)
        _group_wait(counter, (step + 1) * SPLIT)
    if HAS_CONV:
        if member == 0:  # du_0, now that every push has landed
            parts = tl.load(ACC_ptr + rm[:, None] * T * B + rb[None, :],
                            mask=(rm[:, None] < SPLIT) & b_ok[None, :], other=0.0, cache_modifier=".cg")
            du_first = tl.sum(parts, axis=0)
            if HAS_GU:
                du_first += tl.load(gu_ptr + rb, mask=b_ok, other=0.0)
            tl.store(DU_ptr + rb, du_first, mask=b_ok)


def _grid(batch: int, hidden: int, device: torch.device):
    groups = triton.cdiv(batch, BLOCK_B)
    return lambda meta: (_group_size(batch, hidden, meta["BLOCK_N"], device), groups)


def _configs():
    return [({"BLOCK_N": n, "BLOCK_K": k, "BLOCK_S": s}, w) for n, k, s, w in CONFIGS]


def forward_core(ux, xh, K, E_h, W_h, h0, relu: bool, precision: str = "ieee"):
    """Same contract as ``convolution_torch.forward_core`` (every tensor float32 and contiguous on one device):
    H_ext ``(T+1, B, H)`` and U ``(T, B, 1)``; without a convolution (ux, K and E_h None) a plain Elman
    recurrence, and U None."""
    time, batch, hidden = xh.shape
    H_ext = xh.new_empty(time + 1, batch, hidden)
    U = None if K is None else torch.empty_like(ux)
    H_ext[0] = h0
    counters = torch.zeros(triton.cdiv(batch, BLOCK_B), dtype=torch.int32, device=xh.device)
    dummy = _dummy(xh)
    # No product here multiplies a memory state: "mixed" is tf32 throughout.
    launch_autotuned("convolution-forward" if K is not None else "elman-forward", _convolution_forward_kernel,
                     _configs(), _grid(batch, hidden, xh.device), xh.device, ["HID", "PRECISION"],
                     ux_ptr=dummy if ux is None else ux, xh_ptr=xh, K_ptr=dummy if K is None else K,
                     eh_ptr=dummy if E_h is None else E_h, Wh_ptr=W_h, H_ptr=H_ext, U_ptr=dummy if U is None else U,
                     sync_ptr=counters, T=time, B=batch, HID=hidden, BLOCK_B=BLOCK_B, HAS_CONV=K is not None,
                     HAS_EH=E_h is not None, RELU=relu, PRECISION=product_precisions(precision)["PRECISION"])
    return H_ext, U


def partial_sums(members: int, time: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The backward kernel's (MEMBERS, T, B) partial sums of du, zeros (the autotuner re-zeroes them per trial)."""
    return like.new_zeros(members, time, batch)


def backward_core(grad_h, grad_u, H_ext, K, E_h, W_h, relu: bool, precision: str = "ieee", W_hT=None):
    """Same contract as ``convolution_torch.backward_core``: DP ``(T, B, H)``, DU ``(T, B, 1)`` (None without a
    convolution) and the gradient of h0. ``W_hT``: W_h.T contiguous, where the caller has it."""
    if K is None and E_h is not None:
        raise ValueError("E_h feeds the memory's input u, which only the convolution (K) reads: pass K")
    time, batch, hidden = grad_h.shape
    device = grad_h.device
    members = max(_grid(batch, hidden, device)({"BLOCK_N": n})[0] for n, _, _, _ in CONFIGS)
    DP = grad_h.new_empty(time + 1, batch, hidden)
    DP[time] = 0  # nothing flows back from beyond the last step
    dummy = _dummy(grad_h)
    DU = None if K is None else grad_h.new_empty(time + 1, batch)
    ACC = dummy if K is None else partial_sums(triton.next_power_of_2(members), time, batch, grad_h)
    counters = torch.zeros(triton.cdiv(batch, BLOCK_B), dtype=torch.int32, device=device)
    W_hT = W_h.t().contiguous() if W_hT is None else W_hT
    launch_autotuned("convolution-backward" if K is not None else "elman-backward", _convolution_backward_kernel,
                     _configs(), _grid(batch, hidden, device), device, ["HID", "PRECISION"],
                     reset=("sync_ptr", "ACC_ptr"), gh_ptr=grad_h, gu_ptr=dummy if grad_u is None else grad_u,
                     H_ptr=H_ext, K_ptr=dummy if K is None else K, eh_ptr=dummy if E_h is None else E_h, WhT_ptr=W_hT,
                     DP_ptr=DP, DU_ptr=dummy if DU is None else DU, ACC_ptr=ACC, sync_ptr=counters, T=time, B=batch,
                     HID=hidden, BLOCK_B=BLOCK_B, MEMBERS=ACC.shape[0], HAS_CONV=K is not None,
                     HAS_EH=E_h is not None, HAS_GU=grad_u is not None, RELU=relu,
                     PRECISION=product_precisions(precision)["PRECISION"])
    DP = DP[:time]
    grad_h0 = DP[0] @ W_hT
    if DU is not None:
        DU = DU[:time, :, None]
        if E_h is not None:
            grad_h0 = torch.addmm(grad_h0, DU[0], E_h.t())
    return DP, DU, grad_h0


def elman_forward(projected, W_h, h0, relu: bool, precision: str = "ieee"):
    """The Elman recurrence h_t = act(p_t + h_{t-1} W_h) with the same kernel, no convolution: projected
    ``(T, B, H)``, W_h ``(H, H)`` (h @ W_h), h0 ``(B, H)`` -> H_ext ``(T+1, B, H)``."""
    return forward_core(None, projected, None, None, W_h, h0, relu, precision)[0]


def elman_backward(grad_h, H_ext, W_hT, relu: bool, precision: str = "ieee"):
    """The Elman recurrence's backward, given W_hT = W_h.T contiguous (nn.RNNCell's weight_hh): DP ``(T, B, H)``
    (d loss / d p_t) and the gradient of h0."""
    DP, _, grad_h0 = backward_core(grad_h, None, H_ext, None, None, W_hT.t(), relu, precision, W_hT=W_hT)
    return DP, grad_h0
